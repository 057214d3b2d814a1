"""What the studio keeps: runs, their priors and samples, and people's choices, in SQLite; images as files.

Layout of the data folder (studio.yaml ``data_dir``)::

    studio.db                  SQLite (WAL): schema_version, images, runs, run_priors, samples, choices
    images/<aa>/<sha256>.<ext> every picture once, named by the sha256 of its bytes

A picture's file is written (to a temporary name, then renamed) before the row that names it, and a
transaction that fails removes the files it had just created, so no row ever names a missing file
and a refused request leaves nothing behind. Deleting a run deletes its rows, then the files no row
names any more.

Schema changes go in :data:`MIGRATIONS`: migration N takes a database from version N-1 to N, inside
the transaction that records the new version. A database newer than the code is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE images (
        sha256 TEXT PRIMARY KEY,
        ext TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        started_by TEXT NOT NULL,           -- the name typed on the page ('' when none)
        status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'cancelled', 'interrupted')),
        error TEXT,
        source_sha256 TEXT NOT NULL REFERENCES images(sha256),
        source_kind TEXT NOT NULL CHECK (source_kind IN ('upload', 'generated')),
        source_name TEXT,                   -- the uploaded file's name
        source_prompt TEXT,                 -- the prompt that generated the source (source_kind 'generated')
        source_model TEXT,                  -- the sd model/version that generated it
        proposed_caption TEXT,              -- what the caption model said before the person edited it
        caption TEXT,                       -- the caption the samples were made from (interpret's caption.text)
        caption_edited INTEGER NOT NULL,    -- 1: the person's caption was sent (interpret's caption.edited)
        settings TEXT NOT NULL,             -- JSON: priors, mode, samples, scales, seed, steps as sent
        sd_model TEXT,                      -- the sd model/version that made the samples
        request_id TEXT,                    -- interpret's request_id
        best INTEGER,                       -- interpret's best (a sample index)
        timings TEXT                        -- JSON: interpret's timings
    );
    CREATE INDEX runs_created ON runs(created_at);
    CREATE TABLE run_priors (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        type TEXT NOT NULL,
        image_sha256 TEXT NOT NULL REFERENCES images(sha256),
        origin TEXT NOT NULL CHECK (origin IN ('studio', 'interpret')),  -- computed before the run, or by it
        details TEXT NOT NULL,              -- JSON: the prior's other fields (pose's people, depth's min/max)
        PRIMARY KEY (run_id, type)
    );
    CREATE TABLE samples (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,               -- the position in interpret's samples (request order)
        image_sha256 TEXT NOT NULL REFERENCES images(sha256),
        seed INTEGER,
        priors TEXT NOT NULL,               -- JSON list of the prior types that made it
        score_caption REAL,
        score_source REAL,
        rank INTEGER NOT NULL,
        PRIMARY KEY (run_id, idx)
    );
    CREATE TABLE choices (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        sample_idx INTEGER NOT NULL,
        chosen_by TEXT NOT NULL,
        rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
        created_at TEXT NOT NULL,
        FOREIGN KEY (run_id, sample_idx) REFERENCES samples(run_id, idx) ON DELETE CASCADE,
        UNIQUE (run_id, sample_idx, chosen_by)
    );
    """,
    # 2: a run may compare several sd versions (one interpret call each): each sample names its own
    2: """
    ALTER TABLE samples ADD COLUMN sd_model TEXT;  -- the sd model/version that made it (NULL: the run's sd_model)
    """,
}
LATEST_VERSION = max(MIGRATIONS)
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}


class StoreError(RuntimeError):
    pass


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    ext: str
    width: int
    height: int
    data: bytes


def image_info(data: bytes) -> StoredImage:
    """Its sha256, format and size; raises ValueError when the bytes are not a picture PIL reads."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or ""
        width, height = image.size
        image.verify()
    if fmt not in IMAGE_FORMATS:
        raise ValueError(
            f"a {fmt or 'unknown'} file is not a picture format the studio keeps ({', '.join(sorted(IMAGE_FORMATS))})"
        )
    return StoredImage(hashlib.sha256(data).hexdigest(), IMAGE_FORMATS[fmt], width, height, data)


class Store:
    """One data folder. Thread-safe: each call opens its own connection (SQLite in WAL mode lets readers
    run beside the one writer; writers wait up to busy_timeout for each other)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.db_path = self.data_dir / "studio.db"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            migrate(db)

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=30000")
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[tuple[sqlite3.Connection, list[Path]]]:
        """BEGIN IMMEDIATE ... COMMIT, and the list of files :meth:`write_image` created in it. On any error:
        ROLLBACK, then remove those files (no row names them). Files are only created and removed while
        the write lock is held, so a file another transaction is about to name is never removed."""
        created: list[Path] = []
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db, created
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                if created:
                    db.execute("BEGIN IMMEDIATE")
                    for path in created:
                        self._remove_if_unreferenced(db, path.name.split(".", 1)[0])
                    db.execute("COMMIT")
                raise

    # --- images ---------------------------------------------------------------------------------
    def image_path(self, sha256: str, ext: str) -> Path:
        return self.images_dir / sha256[:2] / f"{sha256}.{ext}"

    def write_image(self, db: sqlite3.Connection, created: list[Path], image: StoredImage) -> str:
        """Inside :meth:`transaction`: the picture's file (written to a temporary name and renamed, if it is
        not there yet: then appended to ``created``) and its row. Returns its sha256."""
        path = self.image_path(image.sha256, image.ext)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
            partial.write_bytes(image.data)
            os.replace(partial, path)
            created.append(path)
        db.execute(
            "INSERT OR IGNORE INTO images (sha256, ext, width, height, bytes, created_at) VALUES (?,?,?,?,?,?)",
            (image.sha256, image.ext, image.width, image.height, len(image.data), now()),
        )
        return image.sha256

    def image_file(self, sha256: str) -> Path | None:
        with self.connect() as db:
            row = db.execute("SELECT ext FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            return None
        path = self.image_path(sha256, row["ext"])
        return path if path.exists() else None

    def _remove_if_unreferenced(self, db: sqlite3.Connection, sha256: str) -> None:
        referenced = db.execute(
            "SELECT 1 FROM runs WHERE source_sha256 = :s UNION ALL SELECT 1 FROM run_priors WHERE image_sha256 = :s "
            "UNION ALL SELECT 1 FROM samples WHERE image_sha256 = :s LIMIT 1",
            {"s": sha256},
        ).fetchone()
        if referenced:
            return
        row = db.execute("SELECT ext FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        if row is not None:
            db.execute("DELETE FROM images WHERE sha256 = ?", (sha256,))
        for path in (self.images_dir / sha256[:2]).glob(f"{sha256}.*"):
            path.unlink(missing_ok=True)

    # --- runs ---------------------------------------------------------------------------------
    def create_run(
        self,
        *,
        started_by: str,
        source: StoredImage,
        source_kind: str,
        source_name: str | None,
        source_prompt: str | None,
        source_model: str | None,
        proposed_caption: str | None,
        caption: str | None,
        caption_edited: bool,
        settings: dict[str, Any],
        priors: dict[str, tuple[StoredImage, dict[str, Any]]],
    ) -> str:
        """A new run (status ``running``) with its source and the priors the studio computed, in one go."""
        run_id = uuid.uuid4().hex
        with self.transaction() as (db, created):
            self.write_image(db, created, source)
            for image, _ in priors.values():
                self.write_image(db, created, image)
            db.execute(
                "INSERT INTO runs (id, created_at, started_by, status, source_sha256, source_kind, source_name, "
                "source_prompt, source_model, proposed_caption, caption, caption_edited, settings) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    now(),
                    started_by,
                    "running",
                    source.sha256,
                    source_kind,
                    source_name,
                    source_prompt,
                    source_model,
                    proposed_caption,
                    caption,
                    int(caption_edited),
                    json.dumps(settings),
                ),
            )
            for prior_type, (image, details) in priors.items():
                db.execute(
                    "INSERT INTO run_priors (run_id, type, image_sha256, origin, details) VALUES (?,?,?,?,?)",
                    (run_id, prior_type, image.sha256, "studio", json.dumps(details)),
                )
        return run_id

    def finish_run(
        self,
        run_id: str,
        *,
        caption: str | None,
        caption_edited: bool,
        sd_model: str | None,
        request_id: str | None,
        best: int | None,
        timings: dict[str, Any],
        priors: dict[str, tuple[StoredImage, dict[str, Any]]],
        samples: list[dict[str, Any]],
    ) -> bool:
        """Record a finished run's samples (each with ``image``: StoredImage) and the priors interpret computed.
        False (and nothing stored) when the run is no longer running (cancelled or deleted meanwhile)."""
        with self.transaction() as (db, created):
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row["status"] != "running":
                return False
            for sample in samples:
                self.write_image(db, created, sample["image"])
            for prior_type, (image, details) in priors.items():
                self.write_image(db, created, image)
                db.execute(
                    "INSERT OR IGNORE INTO run_priors (run_id, type, image_sha256, origin, details) VALUES (?,?,?,?,?)",
                    (run_id, prior_type, image.sha256, "interpret", json.dumps(details)),
                )
            for index, sample in enumerate(samples):
                db.execute(
                    "INSERT INTO samples (run_id, idx, image_sha256, seed, priors, score_caption, score_source, "
                    "rank, sd_model) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        run_id,
                        index,
                        sample["image"].sha256,
                        sample.get("seed"),
                        json.dumps(sample["priors"]),
                        sample["scores"].get("caption"),
                        sample["scores"].get("source"),
                        sample["rank"],
                        sample.get("sd_model"),
                    ),
                )
            db.execute(
                "UPDATE runs SET status = 'done', finished_at = ?, caption = ?, caption_edited = ?, "
                "sd_model = ?, request_id = ?, best = ?, timings = ? WHERE id = ?",
                (now(), caption, int(caption_edited), sd_model, request_id, best, json.dumps(timings), run_id),
            )
        return True

    def end_run(self, run_id: str, status: str, error: str | None = None) -> bool:
        """A running run ends without samples (failed, cancelled, interrupted). False if it was not running."""
        with self.transaction() as (db, _):
            changed = db.execute(
                "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE id = ? AND status = 'running'",
                (status, error, now(), run_id),
            ).rowcount
        return bool(changed)

    def interrupt_unfinished(self) -> int:
        """At start: runs left 'running' by a previous process that stopped mid-run."""
        with self.transaction() as (db, _):
            return db.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? WHERE status = 'running'",
                (now(), "the studio stopped while this run was in progress"),
            ).rowcount

    def delete_run(self, run_id: str) -> bool:
        with self.transaction() as (db, _):
            shas = [
                row[0]
                for row in db.execute(
                    "SELECT source_sha256 FROM runs WHERE id = :r "
                    "UNION SELECT image_sha256 FROM run_priors WHERE run_id = :r "
                    "UNION SELECT image_sha256 FROM samples WHERE run_id = :r",
                    {"r": run_id},
                )
            ]
            deleted = db.execute("DELETE FROM runs WHERE id = ?", (run_id,)).rowcount
            for sha in shas:
                self._remove_if_unreferenced(db, sha)
        return bool(deleted)

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            run = _run_dict(row)
            run["priors"] = {
                p["type"]: {
                    "image_sha256": p["image_sha256"],
                    "origin": p["origin"],
                    "details": json.loads(p["details"]),
                }
                for p in db.execute("SELECT * FROM run_priors WHERE run_id = ? ORDER BY type", (run_id,))
            }
            run["samples"] = [
                {
                    "index": s["idx"],
                    "image_sha256": s["image_sha256"],
                    "seed": s["seed"],
                    "priors": json.loads(s["priors"]),
                    "scores": {"caption": s["score_caption"], "source": s["score_source"]},
                    "rank": s["rank"],
                    "sd_model": s["sd_model"] or row["sd_model"],
                }
                for s in db.execute("SELECT * FROM samples WHERE run_id = ? ORDER BY idx", (run_id,))
            ]
            run["choices"] = [
                dict(c)
                for c in db.execute(
                    "SELECT id, sample_idx, chosen_by, rating, created_at FROM choices WHERE run_id = ? "
                    "ORDER BY chosen_by, sample_idx",
                    (run_id,),
                )
            ]
        return run

    def runs(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.connect() as db:
            rows = db.execute(
                "SELECT r.*, (SELECT COUNT(*) FROM samples s WHERE s.run_id = r.id) AS sample_count, "
                "(SELECT COUNT(*) FROM choices c WHERE c.run_id = r.id) AS choice_count "
                "FROM runs r ORDER BY r.created_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            {**_run_dict(row), "sample_count": row["sample_count"], "choice_count": row["choice_count"]} for row in rows
        ]

    # --- choices --------------------------------------------------------------------------------
    def set_choices(self, run_id: str, chosen_by: str, choices: list[tuple[int, int]]) -> None:
        """``chosen_by``'s choices for a run, (sample index, rating 1-5) each, replacing that person's earlier ones."""
        with self.transaction() as (db, _):
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(run_id)
            if row["status"] != "done":
                raise StoreError(f"run {run_id} is {row['status']}: only a finished run's samples can be chosen")
            known = {r[0] for r in db.execute("SELECT idx FROM samples WHERE run_id = ?", (run_id,))}
            for index, _ in choices:
                if index not in known:
                    raise StoreError(f"choices: sample {index} is not one of this run's samples")
            db.execute("DELETE FROM choices WHERE run_id = ? AND chosen_by = ?", (run_id, chosen_by))
            stamp = now()
            for index, rating in choices:
                db.execute(
                    "INSERT INTO choices (run_id, sample_idx, chosen_by, rating, created_at) VALUES (?,?,?,?,?)",
                    (run_id, index, chosen_by, rating, stamp),
                )

    def chosen_samples(self) -> list[dict[str, Any]]:
        """Every choice with its sample and run, oldest run first (the export's order)."""
        with self.connect() as db:
            rows = db.execute(
                "SELECT c.id AS choice_id, c.chosen_by, c.rating, c.created_at AS chosen_at, s.idx, s.seed, s.priors, "
                "s.score_caption, s.score_source, s.rank, s.image_sha256, i.ext, r.id AS run_id, r.caption, "
                "r.caption_edited, COALESCE(s.sd_model, r.sd_model) AS sd_model FROM choices c "
                "JOIN samples s ON s.run_id = c.run_id AND s.idx = c.sample_idx "
                "JOIN runs r ON r.id = c.run_id JOIN images i ON i.sha256 = s.image_sha256 "
                "ORDER BY r.created_at, r.id, s.idx, c.chosen_by"
            ).fetchall()
        return [dict(row) for row in rows]


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    run = dict(row)
    run["settings"] = json.loads(run["settings"])
    run["timings"] = json.loads(run["timings"]) if run["timings"] else None
    run["caption_edited"] = bool(run["caption_edited"])
    return run


def migrate(db: sqlite3.Connection) -> int:
    """Bring the database to :data:`LATEST_VERSION`, one migration per transaction. Returns the version."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    version = row[0] if row else 0
    if version > LATEST_VERSION:
        raise StoreError(
            f"studio.db has schema version {version}, newer than this studio's {LATEST_VERSION}: "
            "use the release that wrote it"
        )
    for target in range(version + 1, LATEST_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[target]):
                db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return LATEST_VERSION


def _statements(script: str) -> list[str]:
    """A migration's statements (executescript would COMMIT the open transaction first)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]
