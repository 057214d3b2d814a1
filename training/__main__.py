"""``python -m training --data DIR [--steps N --rank R --lr X --batch B --name NAME --profile P]``

Trains a LoRA adapter on `sd`'s UNet from an imagefolder dataset and records the run in MLflow
(tracking and registry in ``data/mlflow.db``, artifacts in ``data/mlruns/``): parameters, the loss
per step, sample images every K steps for fixed prompts and seeds, the loss on a fixed batch before
and after, base-vs-adapter CLIP scores on held-out prompts, the dataset's export id, and the adapter,
registered as a new version of ``sd-lora-<name>``. ``scripts/deploy_version.sh NAME VERSION``
serves that version. Defaults: training/finetune.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from .dataset import DatasetError, load_dataset
from .lora import (
    TrainConfig,
    clip_scores,
    fixed_batch_loss,
    generate,
    load_pipeline,
    native_resolution,
    save_adapter,
    train,
)

REPO = Path(__file__).resolve().parent.parent
# TrainConfig's fields that come from the flags as they are; the resolution may come from the weights
HYPERPARAMETERS = tuple(field.name for field in fields(TrainConfig) if field.name != "resolution")
DEFAULTS = Path(__file__).with_name("finetune.yaml")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = yaml.safe_load(DEFAULTS.read_text())
    parser = argparse.ArgumentParser(
        prog="scripts/finetune.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="imagefolder dataset (metadata.jsonl + images)")
    parser.add_argument("--name", default="default", help="the adapter's name: registered model sd-lora-NAME")
    parser.add_argument("--steps", type=int, default=defaults["steps"])
    parser.add_argument("--rank", type=int, default=defaults["rank"])
    parser.add_argument("--lr", dest="learning_rate", type=float, default=defaults["lr"])
    parser.add_argument("--batch", dest="batch_size", type=int, default=defaults["batch"])
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--profile", default=defaults["profile"], choices=("tiny", "arch", "pretrained"))
    parser.add_argument("--resolution", type=int, default=defaults["resolution"])
    parser.add_argument("--held-out", type=int, default=defaults["held_out"])
    parser.add_argument("--sample-every", type=int, default=defaults["sample_every"])
    parser.add_argument("--sample-steps", type=int, default=defaults["sample_steps"])
    parser.add_argument("--experiment", default=defaults["experiment"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="where mlflow.db and mlruns/ live (scripts/finetune.sh: $DATA_DIR, default data/)",
    )
    parser.add_argument("--weights-root", type=Path, default=REPO / "model_store" / "weights")
    args = parser.parse_args(argv)
    args.sample_prompts = list(defaults["sample_prompts"])
    for flag, value in (("steps", args.steps), ("rank", args.rank), ("batch", args.batch_size)):
        if value < 1:
            parser.error(f"--{flag} must be >= 1")
    if not args.learning_rate > 0:
        parser.error("--lr must be > 0")
    return args


def tracking(data_dir: Path, experiment: str) -> Any:
    """MLflow on SQLite (tracking and model registry), artifacts in data/mlruns/ (the file store is
    deprecated for tracking; the artifact location is set on the experiment)."""
    import mlflow

    data_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{(data_dir / 'mlflow.db').resolve()}")
    mlflow.set_registry_uri(f"sqlite:///{(data_dir / 'mlflow.db').resolve()}")
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=(data_dir / "mlruns").resolve().as_uri())
    mlflow.set_experiment(experiment)
    return mlflow


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        dataset = load_dataset(args.data)
    except DatasetError as exc:  # before anything is loaded, trained or recorded
        print(f"error: bad dataset: {exc}", file=sys.stderr)
        return 2
    weights = args.weights_root / args.profile / "sd"
    if not (weights / "model_index.json").is_file():
        print(
            f"error: no sd weights at {weights}: run scripts/build_models.sh --profile {args.profile}", file=sys.stderr
        )
        return 2
    train_examples, held_out = dataset.split(args.held_out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(weights, device)
    resolution = args.resolution or native_resolution(pipe)
    # the flags carry TrainConfig's names (--lr is learning_rate, --batch batch_size)
    config = TrainConfig(**{name: getattr(args, name) for name in HYPERPARAMETERS}, resolution=resolution)
    sample_seeds = list(range(len(args.sample_prompts)))
    registered = f"sd-lora-{args.name}"

    mlflow = tracking(args.data_dir, args.experiment)
    from tqdm.auto import tqdm

    with mlflow.start_run(run_name=f"{args.name}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params(
            {
                **asdict(config),
                "profile": args.profile,
                "base_weights": str(weights),
                "dataset": str(dataset.root.resolve()),
                "examples": len(train_examples),
                "held_out": len(held_out),
                "device": str(device),
            }
        )
        mlflow.set_tags({"export_id": dataset.export_id, "adapter_name": args.name})
        mlflow.log_metric("fixed_batch_loss_before", fixed_batch_loss(pipe, train_examples, resolution, args.seed))
        held_out_prompts = [example.text for example in held_out] or args.sample_prompts[:1]
        base_images = generate(
            pipe, held_out_prompts, sample_seeds[:1] * len(held_out_prompts), args.sample_steps, resolution
        )

        bar = tqdm(total=args.steps, desc=f"LoRA {args.name}", unit="step")
        started = time.perf_counter()

        def on_step(step: int, loss: float) -> None:
            mlflow.log_metric("loss", loss, step=step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if args.sample_every and (step % args.sample_every == 0 or step == args.steps):
                for i, image in enumerate(
                    generate(pipe, args.sample_prompts, sample_seeds, args.sample_steps, resolution)
                ):
                    mlflow.log_image(image, f"samples/step{step:06d}_prompt{i}.png")

        losses = train(pipe, train_examples, config, on_step)
        bar.close()
        seconds = time.perf_counter() - started
        mlflow.log_metric("steps_per_second", args.steps / seconds)
        mlflow.log_metric("fixed_batch_loss_after", fixed_batch_loss(pipe, train_examples, resolution, args.seed))

        adapter_images = generate(
            pipe, held_out_prompts, sample_seeds[:1] * len(held_out_prompts), args.sample_steps, resolution
        )
        clip_weights = args.weights_root / args.profile / "clip"
        if (clip_weights / "config.json").is_file():
            base = clip_scores(clip_weights, base_images, held_out_prompts)
            adapted = clip_scores(clip_weights, adapter_images, held_out_prompts)
            mlflow.log_metric("clip_score_base", sum(base) / len(base))
            mlflow.log_metric("clip_score_adapter", sum(adapted) / len(adapted))
        for i, (before, after) in enumerate(zip(base_images, adapter_images)):
            mlflow.log_image(before, f"evaluation/prompt{i}_base.png")
            mlflow.log_image(after, f"evaluation/prompt{i}_adapter.png")

        with tempfile.TemporaryDirectory() as staging:
            adapter_dir = Path(staging) / "adapter"
            save_adapter(pipe, adapter_dir)
            (adapter_dir / "adapter.json").write_text(
                json.dumps(
                    {
                        "name": args.name,
                        "base_profile": args.profile,
                        "rank": args.rank,
                        "run_id": run.info.run_id,
                        "export_id": dataset.export_id,
                    },
                    indent=2,
                )
            )
            mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
        version = register(registered, run.info, dataset.export_id)
        print(
            json.dumps(
                {
                    "run_id": run.info.run_id,
                    "registered_model": registered,
                    "version": version,
                    "loss_first": losses[0],
                    "loss_last": losses[-1],
                    "steps_per_second": round(args.steps / seconds, 3),
                }
            )
        )
    return 0


def register(name: str, run: Any, export_id: str) -> str:
    """The run's adapter directory as a new version of the registered model ``name``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    with contextlib.suppress(MlflowException):  # it exists: this run is its next version
        client.create_registered_model(name, description="LoRA adapters for sd (scripts/finetune.sh)")
    version = client.create_model_version(
        name, source=f"{run.artifact_uri}/adapter", run_id=run.run_id, tags={"export_id": export_id}
    )
    return str(version.version)


if __name__ == "__main__":
    sys.exit(main())
