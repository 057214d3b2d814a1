"""The studio in a real browser (Debian's Chromium, driven by Playwright) against the session's real tiny
TorchServe and a real studio process: the whole flow clicked through, the app restarted, the dataset
exported; bad uploads, TorchServe unreachable, and two people at once.

The tiny profile's weights are random: captions are strings of random tokens and samples are noise. The
tests assert what the studio promises (what is shown, sent, recorded and exported), not picture quality.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import threading

import requests
from PIL import Image
from studio_harness import OUTPUTS, REPO, tokens

TIMEOUT_MS = 180_000  # a run on the tiny profile takes seconds; the margin is for a busy 2-core machine


def new_page(browser, studio):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=studio.url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.on("dialog", lambda dialog: dialog.accept())
    return page


def upload(page, picture: bytes, name: str = "astronaut.png") -> None:
    page.set_input_files("#file", files=[{"name": name, "mimeType": "image/png", "buffer": picture}])
    page.click("#upload-form button")


def test_whole_flow_in_the_browser_survives_a_restart(server, make_studio, browser, picture):
    studio = make_studio(server)
    secrets = tokens(server.key_file)
    page = new_page(browser, studio)
    bodies: list[str] = []

    def keep_body(response):
        if "text/event-stream" not in (response.headers.get("content-type") or ""):
            with contextlib.suppress(Exception):  # a body the browser did not keep (a redirect): nothing to check
                bodies.append(response.body().decode("utf-8", "replace"))

    page.on("response", keep_body)
    page.goto("/")
    assert page.get_attribute("#health", "data-healthy") == "true"
    page.fill("#name", "ada")

    # 1-2: upload; the caption and each prior arrive as pictures
    upload(page, picture)
    page.wait_for_function("document.querySelector('#caption').value.length > 0")
    proposed = page.input_value("#caption")
    for prior in ("depth", "pose", "canny"):
        page.wait_for_selector(f".prior[data-prior={prior}][data-state=ready] img:not([hidden])")
        size = page.evaluate(f"document.querySelector('.prior[data-prior={prior}] img').naturalWidth")
        assert size == 128, f"{prior}: the prior is shown at the source's size"

    # 3: edit the caption, choose priors, mode and samples, interpret
    page.fill("#caption", "an astronaut in an orange suit")
    page.check("input[name=priors][value=canny]")
    page.uncheck("input[name=priors][value=pose]")
    page.check("input[name=mode][value=each]")
    page.select_option("#samples", "2")
    page.fill("#seed", "11")
    page.fill("#steps", "1")
    page.fill("input[name=scale-depth]", "2.5")
    page.click("#interpret-button")
    page.wait_for_function("document.querySelector('#message').innerText.startsWith('scales.depth:')")
    assert page.inner_text("#message") == "scales.depth: must be between 0 and 2.0, got 2.5"
    page.fill("input[name=scale-depth]", "0.8")
    page.click("#interpret-button")
    page.wait_for_selector("#run[data-status=running] #stages")  # progress while it runs
    page.wait_for_selector("#run[data-status=done] .sample", timeout=TIMEOUT_MS)
    run_id = page.get_attribute("#run", "data-run-id")
    assert page.url.endswith(f"/runs/{run_id}")

    # 4: the samples ranked with their scores: depth x 2 seeds, canny x 2 seeds
    cards = page.locator(".sample")
    assert cards.count() == 4
    ranks = [cards.nth(i).locator("figcaption b").first.inner_text() for i in range(4)]
    assert ranks == ["#1", "#2", "#3", "#4"]
    assert "caption 0." in cards.first.inner_text() or "caption -0." in cards.first.inner_text()
    assert "edited" in page.inner_text("#run-caption")

    # choose two, rate them, under ada's name
    first, second = (int(cards.nth(i).get_attribute("data-sample")) for i in (0, 2))
    page.check(f".sample[data-sample='{first}'] input[name=chosen]")
    page.select_option(f"select[name=rating-{first}]", "5")
    page.check(f".sample[data-sample='{second}'] input[name=chosen]")
    page.select_option(f"select[name=rating-{second}]", "3")
    page.click("#save-choices")
    page.wait_for_selector("#choices li[data-chosen-by=ada]")
    OUTPUTS.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUTS / "studio.png"), full_page=True)

    # what was sent and recorded
    run = studio.api("GET", f"/api/runs/{run_id}")
    assert run["caption"] == "an astronaut in an orange suit" and run["caption_edited"] is True
    assert run["proposed_caption"] == proposed
    assert run["settings"] == {
        "priors": ["depth", "canny"],
        "mode": "each",
        "samples": 2,
        "seed": 11,
        "steps": 1,
        "scales": {"depth": 0.8},
        "sd_versions": ["1.0"],  # the one registered, named: the record says exactly which weights
    }
    assert set(run["priors"]) == {"depth", "canny"}
    assert all(prior["origin"] == "studio" for prior in run["priors"].values())  # shown, then sent as prior_images
    assert run["sd_model"] == "sd@1.0"  # the version the page named
    assert sorted((s["priors"], s["seed"]) for s in run["samples"]) == [
        (["canny"], 11),
        (["canny"], 12),
        (["depth"], 11),
        (["depth"], 12),
    ]
    assert sorted(s["rank"] for s in run["samples"]) == [0, 1, 2, 3]
    assert sorted((c["sample_idx"], c["rating"], c["chosen_by"]) for c in run["choices"]) == sorted(
        [(first, 5, "ada"), (second, 3, "ada")]
    )
    with Image.open(
        studio.data_dir / "images" / run["samples"][0]["image_sha256"][:2] / f"{run['samples'][0]['image_sha256']}.png"
    ) as sample:
        assert sample.size == (128, 128)

    # the token never reached the browser
    bodies.append(page.content())
    bodies.append(requests.get(f"{studio.url}/api/runs/{run_id}/events", timeout=30).text)
    assert len(bodies) > 10
    for secret in secrets:
        assert not any(secret in body for body in bodies)

    # restart the app: the run and the choice are still there, on a fresh page
    page.context.close()
    studio.restart()
    page = new_page(browser, studio)
    page.goto("/")
    page.click(f".past-run[data-run-id='{run_id}'] a.open")
    page.wait_for_selector("#run[data-status=done]")
    assert page.locator(".sample").count() == 4
    assert "ada chose #1" in page.inner_text("#choices")
    assert "an astronaut in an orange suit" in page.inner_text("#run-caption")
    page.context.close()


def test_export_writes_the_chosen_samples_as_an_imagefolder(recorded, tmp_path):
    studio, run = recorded
    studio.api(
        "PUT",
        f"/api/runs/{run['id']}/choices",
        json={"chosen_by": "ada", "choices": [{"sample": 0, "rating": 4}, {"sample": 1, "rating": 2}]},
    )
    studio.api(
        "PUT", f"/api/runs/{run['id']}/choices", json={"chosen_by": "grace", "choices": [{"sample": 1, "rating": 5}]}
    )
    out = tmp_path / "dataset"
    result = subprocess.run(
        [str(REPO / "scripts" / "studio.sh"), "export", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "STUDIO_CONFIG": str(studio.config), "TS_RUN_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    manifest = json.loads((out / "export.json").read_text())
    assert printed["export_id"] == manifest["export_id"] and manifest["rows"] == 3
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["chosen_by"], r["sample_index"], r["rating"]) for r in rows] == [
        ("ada", 0, 4),
        ("ada", 1, 2),
        ("grace", 1, 5),
    ]
    recorded = {s["index"]: s["image_sha256"] for s in run["samples"]}
    for row in rows:
        assert row["text"] == run["caption"] and row["run_id"] == run["id"]
        data = (out / row["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == recorded[row["sample_index"]]
    listing = "".join(
        f"{name} {hashlib.sha256((out / name).read_bytes()).hexdigest()}\n"
        for name in sorted(path.name for path in out.iterdir() if path.name != "export.json")
    )
    assert manifest["export_id"] == hashlib.sha256(listing.encode()).hexdigest()


def test_bad_input_gets_a_clear_message_and_stores_nothing(server, make_studio, browser, picture):
    studio = make_studio(server, max_upload_bytes=60_000)
    page = new_page(browser, studio)
    page.goto("/")

    upload(page, b"this is a text file, not a picture", name="notes.png")
    page.wait_for_selector("#message.error")
    assert page.inner_text("#message").startswith("image: is not a picture the studio can read")

    noise = io.BytesIO()
    Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3)).save(noise, format="PNG")  # ~197 kB
    upload(page, noise.getvalue(), name="big.png")
    page.wait_for_function("document.querySelector('#message').innerText.includes('bytes')")
    assert page.inner_text("#message").startswith("image: ")
    assert "the largest picture the studio takes is 60000 bytes" in page.inner_text("#message")

    page.fill("#prompt", "")
    page.evaluate("document.querySelector('#prompt').required = false")
    page.click("#prompt-form button")
    page.wait_for_function("document.querySelector('#message').innerText.startsWith('prompt:')")
    assert page.inner_text("#message") == "prompt: is empty; type what the picture should show"

    # a picture generated from a prompt (sd), then a caption over interpret's limit
    page.fill("#prompt", "a lighthouse at dusk")
    page.fill("#prompt-seed", "5")
    page.click("#prompt-form button")
    page.wait_for_selector("#source:not([hidden])")
    assert page.inner_text("#source-about").startswith("generated by sd from “a lighthouse at dusk”")
    page.wait_for_function("document.querySelector('#caption').value.length > 0")
    page.fill("#caption", "x" * 301)
    page.evaluate("document.querySelector('#caption').dataset.max = 100000")  # past the page's own check
    page.click("#interpret-button")
    page.wait_for_function("document.querySelector('#message').innerText.startsWith('caption:')")
    assert page.inner_text("#message") == (
        "caption: is 301 characters; at most 300 (interpret's limits.max_caption_length)"
    )
    assert studio.api("GET", "/api/runs")["runs"] == []
    assert [p for p in (studio.data_dir / "images").rglob("*") if p.is_file()] == []

    response = requests.post(f"{studio.url}/api/runs", json={"draft_id": "nope", "priors": ["depth"]}, timeout=30)
    assert response.status_code == 404 and response.json()["message"].startswith("draft:")
    draft = studio.api("POST", "/api/drafts", files={"image": ("a.png", picture, "image/png")})["draft_id"]
    for versions, message in [
        ("1.0", "sd_versions: must be a list of sd's version names"),
        (["1.0", "1.0"], "sd_versions: each version may be chosen once"),
        (["1.0", "a", "b", "c"], "sd_versions: 4 chosen; a run compares at most 3 (limits.max_sd_versions)"),
        (["1.0", "lora-v9"], "sd_versions[1]: sd has no version 'lora-v9'; registered: 1.0"),
    ]:
        body = {"draft_id": draft, "priors": ["canny"], "mode": "each", "samples": 1, "sd_versions": versions}
        response = requests.post(f"{studio.url}/api/runs", json=body, timeout=30)
        assert response.status_code == 400 and response.json()["message"] == message, response.text
    assert studio.api("GET", "/api/runs")["runs"] == []
    response = requests.delete(f"{studio.url}/api/runs/abc", headers={"Origin": "http://evil.example"}, timeout=30)
    assert response.status_code == 403 and response.json()["message"].startswith("origin:")
    page.context.close()


def test_torchserve_unreachable_is_a_503_and_a_clear_message(recorded, make_studio, browser, picture):
    # a copy of a studio's data, TorchServe gone: past runs still open, new work says why it cannot be done
    with_torchserve, run = recorded
    studio = make_studio(None, name="without_torchserve", data_from=with_torchserve)
    response = requests.get(f"{studio.url}/healthz", timeout=30)
    assert response.status_code == 503
    assert response.json()["message"].startswith("TorchServe is not reachable at")
    page = new_page(browser, studio)
    page.goto(f"/runs/{run['id']}")
    assert page.get_attribute("#health", "data-healthy") == "false"
    assert "TorchServe is not reachable" in page.inner_text("#health")
    assert page.locator(".sample").count() == 2
    page.goto("/")
    upload(page, picture)
    page.wait_for_selector(".prior[data-prior=depth][data-state=failed]")
    assert "TorchServe is not reachable" in page.inner_text(".prior[data-prior=depth] .state")
    assert "TorchServe is not reachable" in page.inner_text("#caption-status")
    page.click("#interpret-button")
    page.wait_for_selector("#run[data-status=failed] #run-error")
    assert "TorchServe is not reachable" in page.inner_text("#run-error")
    page.context.close()


def test_two_people_at_once_both_have_their_runs_and_choices(server, make_studio, picture):
    studio = make_studio(server)
    runs: dict[str, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def person(name: str, seed: int) -> None:
        try:
            start.wait(timeout=30)
            run = studio.run_interpret(picture, started_by=name, priors=["depth"], samples=2, seed=seed, steps=1)
            assert run["status"] == "done", run
            runs[name] = run
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=person, args=(name, seed)) for name, seed in (("ada", 1), ("grace", 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    # both choose on both runs at the same moment
    choose = threading.Barrier(4)

    def choice(run_id: str, name: str, sample: int, rating: int) -> None:
        try:
            choose.wait(timeout=30)
            studio.api(
                "PUT",
                f"/api/runs/{run_id}/choices",
                json={"chosen_by": name, "choices": [{"sample": sample, "rating": rating}]},
            )
        except BaseException as exc:
            errors.append(exc)

    plan = [
        (runs[owner]["id"], name, sample, rating)
        for owner in ("ada", "grace")
        for name, sample, rating in (("ada", 0, 4), ("grace", 1, 5))
    ]
    threads = [threading.Thread(target=choice, args=args) for args in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    listed = {run["id"]: run for run in studio.api("GET", "/api/runs")["runs"]}
    assert {listed[runs[name]["id"]]["started_by"] for name in ("ada", "grace")} == {"ada", "grace"}
    for owner in ("ada", "grace"):
        run = studio.api("GET", f"/api/runs/{runs[owner]['id']}")
        assert run["settings"]["seed"] == {"ada": 1, "grace": 2}[owner]
        assert sorted((c["chosen_by"], c["sample_idx"], c["rating"]) for c in run["choices"]) == [
            ("ada", 0, 4),
            ("grace", 1, 5),
        ]


def test_a_run_can_be_cancelled_and_deleted(server, make_studio, browser, picture):
    studio = make_studio(server)
    page = new_page(browser, studio)
    page.goto("/")
    upload(page, picture)
    page.wait_for_selector(".prior[data-prior=depth][data-state=ready]")
    # long enough to cancel; small, because TorchServe cannot stop it and finishes it for nobody
    page.select_option("#samples", "2")
    page.fill("#steps", "20")
    page.uncheck("input[name=priors][value=pose]")
    page.click("#interpret-button")
    page.click("#run[data-status=running] #cancel")
    page.wait_for_selector("#run[data-status=cancelled]")
    run_id = page.get_attribute("#run", "data-run-id")
    run = studio.api("GET", f"/api/runs/{run_id}")
    assert run["status"] == "cancelled" and run["samples"] == []
    # a run in flight when the studio stops is recorded as interrupted, not left running
    draft = studio.api("POST", "/api/drafts", files={"image": ("p.png", picture, "image/png")})
    interrupted = studio.api(
        "POST",
        "/api/runs",
        json={"draft_id": draft["draft_id"], "priors": ["depth"], "mode": "each", "samples": 1, "steps": 20},
    )["run_id"]
    studio.restart()
    run = studio.api("GET", f"/api/runs/{interrupted}")
    assert run["status"] == "interrupted" and run["error"] == "the studio stopped while this run was in progress"
    page.reload()
    page.click("#run button.delete")
    page.wait_for_function(f"!document.querySelector(\".past-run[data-run-id='{run_id}']\")")
    assert requests.get(f"{studio.url}/api/runs/{run_id}", timeout=30).status_code == 404
    assert [p for p in (studio.data_dir / "images").rglob("*") if p.is_file()]  # the source: the other run's too
    studio.api("DELETE", f"/api/runs/{interrupted}")
    assert [p for p in (studio.data_dir / "images").rglob("*") if p.is_file()] == []
    page.context.close()
