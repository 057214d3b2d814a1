"""The README's control pictures: ``python benchmarks/control_pictures.py`` writes docs/control_<type>_tiny.png.

scikit-image's astronaut (the demo's photograph, scripts/demo.sh) -> its control image (``depth``'s
and ``pose``'s ``control_image``, handlers/common/edges.py ``canny_edges``) -> ``sd`` with that
control, each handler in-process on the tiny profile; each picture is photograph | control image |
generated image. Tiny random weights: the depth map and keypoints are noise and the generated
image is noise (canny edges are real: they need no model).
"""

from __future__ import annotations

import benchlib as bl  # first: it puts tests/ and scripts/ on the path, as for every benchmark
from harness import load_handler, png_b64, run_batch
from PIL import Image
from skimage import data

from handlers.common import decode_png
from handlers.common.edges import canny_edges
from handlers.depth_estimator import DepthEstimator
from handlers.pose_estimator import PoseEstimator
from handlers.text_to_image import TextToImage

SIDE = 128
bl.ensure_weights("tiny", ["depth", "pose", "sd"])
photo = Image.fromarray(data.astronaut()).resize((256, 256), Image.Resampling.LANCZOS)
controls = {}
[(status, depth)] = run_batch(load_handler(DepthEstimator, "depth"), [{"image": png_b64(photo)}])
assert status == 200, depth
controls["depth"] = decode_png(depth["control_image"]).convert("RGB")
[(status, pose)] = run_batch(load_handler(PoseEstimator, "pose"), [{"image": png_b64(photo)}])
assert status == 200, pose
controls["pose"] = decode_png(pose["control_image"]).convert("RGB")
controls["canny"] = canny_edges(photo)
sd = load_handler(TextToImage, "sd")
for kind, control in controls.items():
    [(status, out)] = run_batch(
        sd,
        [
            {
                "prompt": "an astronaut in a white suit",
                "seed": 7,
                "steps": 10,
                "width": SIDE,
                "height": SIDE,
                "control": [{"type": kind, "image": png_b64(control)}],
            }
        ],
    )
    assert status == 200, out
    sheet = Image.new("RGB", (3 * SIDE, SIDE))
    sheet.paste(photo.resize((SIDE, SIDE)), (0, 0))
    sheet.paste(control.resize((SIDE, SIDE)), (SIDE, 0))
    sheet.paste(decode_png(out["images"][0]).convert("RGB"), (2 * SIDE, 0))
    path = bl.REPO / "docs" / f"control_{kind}_tiny.png"
    sheet.save(path, optimize=True)
    print(path)
