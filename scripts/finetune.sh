#!/usr/bin/env bash
# Train a LoRA adapter for sd on an imagefolder dataset, tracked in MLflow (data/mlflow.db):
#   scripts/finetune.sh --data DIR [--steps N --rank R --lr X --batch B --name NAME --profile P]
# Defaults: training/finetune.yaml. Prints the registered model version (sd-lora-NAME) to deploy
# with scripts/deploy_version.sh NAME VERSION. `--help` lists every flag.
source "$(dirname "$0")/lib.sh"
cd "$REPO"
exec "$PY" -m training --data-dir "$DATA_DIR" "$@"
