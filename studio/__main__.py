"""``python -m studio serve|export DIR|url [--config studio/studio.yaml]`` (scripts/studio.sh runs these)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .settings import DEFAULT_CONFIG, SettingsError, load_studio_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio", description=__doc__)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the studio's yaml (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the web app (foreground)")
    export = commands.add_parser("export", help="write the chosen samples as an imagefolder dataset")
    export.add_argument("out", type=Path)
    commands.add_parser("url", help="print the page's address")
    args = parser.parse_args(argv)
    try:
        settings = load_studio_settings(args.config)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "url":
        print(settings.url)
        return 0
    if args.command == "export":
        from .export import ExportError, export_dataset
        from .store import Store

        if not (settings.data_path / "studio.db").exists():
            print(f"error: no studio data at {settings.data_path} (nothing was recorded yet)", file=sys.stderr)
            return 1
        try:
            manifest = export_dataset(Store(settings.data_path), args.out)
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if not manifest["rows"]:
            print("note: no sample has been chosen yet: the dataset is empty", file=sys.stderr)
        print(json.dumps({key: manifest[key] for key in ("export_id", "rows")} | {"out": str(args.out)}))
        return 0
    import uvicorn

    from .app import create_app

    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=3
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
