#!/usr/bin/env bash
# The main job on the tiny profile: build, archive, start TorchServe with every model and the
# pipeline, run a prompt and a real photograph through the pipeline, interpret the photograph (priors ->
# new images ranked by CLIP), and save the pictures.
source "$(dirname "$0")/lib.sh"
cd "$REPO"
profile="${PROFILE:-tiny}"
out="$REPO/outputs"
mkdir -p "$out"

"$REPO/scripts/build_models.sh" --profile "$profile"
"$REPO/scripts/archive.sh" --profile "$profile" 2>&1 | grep -v '^WARNING' >&2
"$REPO/scripts/serve.sh"

client=("$PY" -m client --url "$(inference_url)" --management-url "$(management_url)" --key-file "$TS_KEY_FILE" --out "$out")
say ""
say "== pipeline on a prompt (generate -> analyze -> segment -> describe regions, + depth and pose)"
"${client[@]}" pipeline "a red bicycle leaning against a brick wall" --texts bicycle wall street person tree \
  --priors depth pose --seed 7 --name prompt
say ""
say "== pipeline on a real photograph (scikit-image's astronaut sample)"
"$PY" -c 'import sys; from PIL import Image; from skimage import data; Image.fromarray(data.astronaut()).save(sys.argv[1])' \
  "$out/astronaut.png"
"${client[@]}" pipeline --image "$out/astronaut.png" --texts astronaut flag rocket person sky \
  --priors depth pose --name photo

say ""
say "== interpret the photograph (caption + depth + pose priors -> ControlNet samples -> ranked by CLIP)"
# 192x192 and 10 steps: the samples are looked at as thumbnails, and the tiny weights give noise at any size
"${client[@]}" interpret "$out/astronaut.png" --priors depth pose --samples 2 --seed 7 --width 192 --height 192 \
  --steps 10 --name interpret

say ""
say "Pictures and JSON are in $out/ (prompt_*.png, photo_*.png, interpret_*.png; interpret_contact_sheet.png"
say "shows the photo, its priors and the samples in rank order with their scores)."
if [ "$profile" = tiny ]; then
  say "NOTE: the tiny profile has small random weights, so generated images are noise, and captions, labels"
  say "and rankings are arbitrary;"
  say "it shows the serving path, not model quality. For real results (needs internet and time):"
  say "  scripts/stop.sh && PROFILE=pretrained scripts/demo.sh"
fi
say "TorchServe is still running (scripts/stop.sh stops it)."
say ""
say "== the studio: a web page to upload a picture, see its caption and priors, interpret it and choose the best"
"$REPO/scripts/studio.sh" start
say "Open $("$PY" -m studio url) in a browser (scripts/studio.sh stop stops it)."
