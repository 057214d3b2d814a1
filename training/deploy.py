"""Serve a registered adapter as a TorchServe version of `sd` (scripts/deploy_version.sh), and keep
which versions are deployed and which is the default in ``<model store>/versions.json``, so
scripts/serve.sh brings them back after scripts/stop.sh.

``python -m training.deploy archive NAME VERSION`` fetches version VERSION of the MLflow registered
model ``sd-lora-NAME``, and writes ``<store>/sd-NAME-vVERSION.mar``: sd's handler and its
model-config.yaml rendered for the adapter's base profile, with the adapter inside the archive and
the base weights referenced by path (not copied). It prints the TorchServe version (``NAME-vVERSION``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STATE = "versions.json"
ADAPTER_DIR = "adapter"  # inside the archive; handler.adapter names it


def torchserve_version(name: str, version: str) -> str:
    return f"{name}-v{version}"


def archive(name: str, version: str, store: Path, data_dir: Path, weights_root: Path) -> tuple[str, Path]:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    registered = f"sd-lora-{name}"
    try:
        source = MlflowClient().get_model_version(registered, version).source
    except Exception as exc:  # MlflowException: no such model or version
        raise SystemExit(f"error: no version {version} of {registered} in {uri} ({exc})") from None
    ts_version = torchserve_version(name, version)
    with tempfile.TemporaryDirectory() as staging_dir:
        staging = Path(staging_dir)
        extra = staging / "extra"
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(extra))
        downloaded = extra / Path(source).name
        if downloaded != extra / ADAPTER_DIR:
            downloaded.rename(extra / ADAPTER_DIR)
        meta = json.loads((extra / ADAPTER_DIR / "adapter.json").read_text())
        rendered = staging / "model-config.yaml"
        # the same renderer scripts/archive.sh uses: sd's yaml for the adapter's base profile
        subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "render_model_config.py"),
                str(REPO / "models" / "sd" / "model-config.yaml"),
                meta["base_profile"],
                str(weights_root),
                str(rendered),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        config = yaml.safe_load(rendered.read_text())
        config["handler"]["adapter"] = ADAPTER_DIR
        config["handler"]["model_name"] = f"sd@{ts_version}"
        rendered.write_text(yaml.safe_dump(config, sort_keys=False))
        out = staging / "out"
        out.mkdir()
        subprocess.run(
            [
                str(REPO / ".venv" / "bin" / "torch-model-archiver"),
                "--model-name",
                "sd",
                "--version",
                ts_version,
                "--handler",
                str(REPO / "handlers" / "text_to_image.py"),
                "--extra-files",
                str(extra),
                "--config-file",
                str(staging / "model-config.yaml"),
                "--export-path",
                str(out),
                "--force",
            ],
            check=True,
        )
        target = store / f"sd-{ts_version}.mar"
        shutil.move(str(out / "sd.mar"), target)
    return ts_version, target


def load_state(store: Path) -> dict:
    path = store / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def save_state(store: Path, state: dict) -> None:
    path = store / STATE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=REPO / "model_store")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("archive", help="archive version VERSION of sd-lora-NAME; print its TorchServe version")
    build.add_argument("name")
    build.add_argument("version")
    build.add_argument("--data-dir", type=Path, default=REPO / "data")
    build.add_argument("--weights-root", type=Path, default=REPO / "model_store" / "weights")
    record = commands.add_parser("record", help="remember a deployed version (its archive file)")
    record.add_argument("model")
    record.add_argument("version")
    record.add_argument("archive")
    forget = commands.add_parser("forget", help="forget a deployed version")
    forget.add_argument("model")
    forget.add_argument("version")
    default = commands.add_parser("set-default", help="remember the default version")
    default.add_argument("model")
    default.add_argument("version")
    listing = commands.add_parser(
        "list", help="print 'model version archive' per deployed version, then 'model default version' lines"
    )
    del listing
    args = parser.parse_args(argv)
    store: Path = args.store
    if args.command == "archive":
        ts_version, target = archive(args.name, args.version, store, args.data_dir, args.weights_root)
        print(ts_version, target.name)
        return 0
    state = load_state(store)
    if args.command == "record":
        state.setdefault(args.model, {}).setdefault("versions", {})[args.version] = args.archive
    elif args.command == "forget":
        state.get(args.model, {}).get("versions", {}).pop(args.version, None)
        if state.get(args.model, {}).get("default") == args.version:
            state[args.model].pop("default")
    elif args.command == "set-default":
        state.setdefault(args.model, {})["default"] = args.version
    elif args.command == "list":
        for model, entry in sorted(state.items()):
            for version, mar in sorted(entry.get("versions", {}).items()):
                print(model, version, mar)
        for model, entry in sorted(state.items()):
            if entry.get("default"):
                print(model, "default", entry["default"])
        return 0
    save_state(store, state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
