"""The studio's data without a server: settings, schema migration, transactions that leave nothing
half-way, and the imagefolder export (its layout and its content id)."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from PIL import Image

from studio.export import ExportError, export_dataset, export_id
from studio.settings import SettingsError, load_studio_settings
from studio.store import LATEST_VERSION, Store, StoreError, image_info, migrate

REPO = Path(__file__).resolve().parents[2]


def png(color: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def finished_run(store: Store, caption: str = "a red square", samples: int = 2) -> str:
    run_id = store.create_run(
        started_by="ada",
        source=image_info(png((200, 0, 0))),
        source_kind="upload",
        source_name="red.png",
        source_prompt=None,
        source_model=None,
        proposed_caption="a square",
        caption=caption,
        caption_edited=True,
        settings={"priors": ["depth"], "mode": "each", "samples": samples},
        priors={"depth": (image_info(png((90, 90, 90))), {"min": 0.0, "max": 1.0})},
    )
    assert store.finish_run(
        run_id,
        caption=caption,
        caption_edited=True,
        sd_model="sd 1.0",
        request_id="r1",
        best=1,
        timings={"generate_depth": 0.1},
        priors={},
        samples=[
            {
                "image": image_info(png((0, 10 * i, 200))),
                "seed": 7,
                "priors": ["depth"],
                "scores": {"caption": 0.2 + i / 10, "source": 0.5},
                "rank": samples - 1 - i,
            }
            for i in range(samples)
        ],
    )
    return run_id


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_studio_yaml_loads_and_refuses_unknown_keys(tmp_path):
    settings = load_studio_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8090)
    view = settings.interpret()  # interpret's defaults and limits, read from its yaml
    assert view.samples <= view.limits.max_samples
    config = yaml.safe_load((REPO / "studio" / "studio.yaml").read_text())
    config["limits"]["max_upload"] = 5
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SettingsError, match=r"limits\.max_upload: unknown key"):
        load_studio_settings(tmp_path / "bad.yaml")


def test_schema_is_versioned_and_a_newer_database_is_refused(tmp_path):
    store = Store(tmp_path)
    with store.connect() as db:
        assert [tuple(row) for row in db.execute("SELECT version FROM schema_version")] == [(LATEST_VERSION,)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert migrate(db) == LATEST_VERSION  # idempotent
    db = sqlite3.connect(tmp_path / "studio.db", isolation_level=None)
    db.execute("UPDATE schema_version SET version = ?", (LATEST_VERSION + 1,))
    db.close()
    with pytest.raises(StoreError, match="newer than this studio"):
        Store(tmp_path)


def test_a_version_1_database_is_migrated_and_keeps_its_runs(tmp_path):
    """A studio.db written before samples named their own sd version (schema 1): its samples take the
    run's sd_model; new samples keep their own."""
    from studio.store import MIGRATIONS, _statements

    db = sqlite3.connect(tmp_path / "studio.db", isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in _statements(MIGRATIONS[1]):
        db.execute(statement)
    db.execute("INSERT INTO schema_version (version) VALUES (1)")
    db.close()
    old = sqlite3.connect(tmp_path / "studio.db")
    old.execute("INSERT INTO images VALUES ('a' || hex(randomblob(31)), 'png', 1, 1, 1, '2026-01-01')")
    sha = old.execute("SELECT sha256 FROM images").fetchone()[0]
    old.execute(
        "INSERT INTO runs (id, created_at, started_by, status, source_sha256, source_kind, caption_edited, "
        "settings, sd_model) VALUES ('r', '2026-01-01', 'ada', 'done', ?, 'upload', 0, '{}', 'sd 1.0')",
        (sha,),
    )
    old.execute(
        "INSERT INTO samples (run_id, idx, image_sha256, seed, priors, rank) VALUES ('r', 0, ?, 1, '[]', 0)", (sha,)
    )
    old.commit()
    old.close()

    store = Store(tmp_path)
    assert store.run("r")["samples"][0]["sd_model"] == "sd 1.0"
    with store.connect() as db:
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == LATEST_VERSION == 2
    run_id = finished_run(store)
    assert {s["sd_model"] for s in store.run(run_id)["samples"]} == {"sd 1.0"}


def test_a_failed_run_creation_leaves_no_file_and_no_row(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(sqlite3.IntegrityError):  # an unknown source_kind fails the INSERT after the files are written
        store.create_run(
            started_by="",
            source=image_info(png((1, 2, 3))),
            source_kind="stolen",
            source_name=None,
            source_prompt=None,
            source_model=None,
            proposed_caption=None,
            caption=None,
            caption_edited=False,
            settings={},
            priors={"depth": (image_info(png((4, 5, 6))), {})},
        )
    assert files_under(store.images_dir) == []
    with store.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_deleting_a_run_removes_its_files_but_keeps_shared_ones(tmp_path):
    store = Store(tmp_path)
    first, second = finished_run(store), finished_run(store)  # the same pictures: stored once
    assert len(files_under(store.images_dir)) == 4
    store.set_choices(first, "ada", [(0, 5)])
    assert store.delete_run(first)
    assert len(files_under(store.images_dir)) == 4  # still named by the second run
    assert store.delete_run(second)
    assert files_under(store.images_dir) == []
    with store.connect() as db:
        assert db.execute("SELECT COUNT(*) FROM choices").fetchone()[0] == 0


def test_choices_replace_that_persons_earlier_ones_only(tmp_path):
    store = Store(tmp_path)
    run_id = finished_run(store)
    store.set_choices(run_id, "ada", [(0, 2), (1, 4)])
    store.set_choices(run_id, "grace", [(1, 5)])
    store.set_choices(run_id, "ada", [(1, 3)])
    assert [(c["chosen_by"], c["sample_idx"], c["rating"]) for c in store.run(run_id)["choices"]] == [
        ("ada", 1, 3),
        ("grace", 1, 5),
    ]
    with pytest.raises(StoreError, match="sample 9"):
        store.set_choices(run_id, "ada", [(9, 3)])
    assert len(store.run(run_id)["choices"]) == 2  # the refused call changed nothing


def test_export_is_an_imagefolder_with_a_content_id(tmp_path):
    store = Store(tmp_path / "data")
    run_id = finished_run(store, caption="a blue square on white")
    store.set_choices(run_id, "ada", [(0, 4), (1, 2)])
    store.set_choices(run_id, "grace", [(0, 5)])
    out = tmp_path / "dataset"
    manifest = export_dataset(store, out)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["chosen_by"], r["sample_index"], r["rating"]) for r in rows] == [
        ("ada", 0, 4),
        ("grace", 0, 5),
        ("ada", 1, 2),
    ]
    sample_files = {s["index"]: s["image_sha256"] for s in store.run(run_id)["samples"]}
    for row in rows:
        assert row["text"] == "a blue square on white" and row["run_id"] == run_id and row["caption_edited"]
        data = (out / row["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sample_files[row["sample_index"]]
        Image.open(io.BytesIO(data)).verify()
    files = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in out.iterdir() if path.name != "export.json"
    }
    assert manifest["export_id"] == export_id(files) == json.loads((out / "export.json").read_text())["export_id"]
    assert manifest["rows"] == 3
    # the same choices give the same id; another choice another id
    assert export_dataset(store, out)["export_id"] == manifest["export_id"]
    store.set_choices(run_id, "grace", [(0, 4)])
    assert export_dataset(store, out)["export_id"] != manifest["export_id"]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a studio export"):
        export_dataset(store, tmp_path / "elsewhere")


def test_studio_limits_fit_interprets(tmp_path):
    """The studio checks a caption against interpret's own limit (read from its yaml, not restated)."""
    settings = load_studio_settings()
    interpret = yaml.safe_load((REPO / settings.interpret_config).read_text())["handler"]
    assert settings.interpret().limits.max_caption_length == interpret["limits"]["max_caption_length"]
    assert settings.interpret().canny.model_dump() == interpret["canny"]
