#!/usr/bin/env bash
# Archive models into the model store: scripts/archive.sh [--profile tiny|arch|pretrained] [--store DIR] [NAME ...]
# Each <name>.mar holds its handler's entry module and its model-config.yaml rendered for the
# profile (handler.weights_dir points at model_store/weights/<profile>/...: weights are never
# zipped). The code the handlers import (handlers/, workflows/, client/) is the installed package
# (`make setup`: pip install -e .), so no archive carries a second copy of it.
source "$(dirname "$0")/lib.sh"

profile="${PROFILE:-tiny}"
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --store) MODEL_STORE="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) names+=("$1"); shift ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=("${SERVED[@]}")
weights_root="${WEIGHTS_ROOT:-$REPO/model_store/weights}"
mkdir -p "$MODEL_STORE"
"$PY" -c 'import handlers, workflows, client' 2>/dev/null \
  || die "the project's package is not installed in $REPO/.venv: run 'make setup'"

for name in "${names[@]}"; do
  yaml="$REPO/models/$name/model-config.yaml"
  [ -f "$yaml" ] || die "unknown model '$name' (no $yaml)"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  workflow_args=()
  [ "$name" = pipeline ] && workflow_args=(--workflow "$REPO/workflows/pipeline.yaml" "$stage/pipeline.yaml")
  handler=$("$PY" "$REPO/scripts/render_model_config.py" "$yaml" "$profile" "$weights_root" \
    "$stage/model-config.yaml" "${workflow_args[@]}") || exit 1
  say "archiving $name ($profile weights) -> $MODEL_STORE/$name.mar"
  "$REPO/.venv/bin/torch-model-archiver" --model-name "$name" --version 1.0 \
    --handler "$REPO/handlers/$handler.py" --config-file "$stage/model-config.yaml" \
    --export-path "$MODEL_STORE" --force
  if [ "$name" = pipeline ]; then
    # the workflow's function nodes read the same rendered model-config.yaml, shipped beside them
    say "archiving workflow pipeline -> $MODEL_STORE/pipeline.war"
    "$REPO/.venv/bin/torch-workflow-archiver" --workflow-name pipeline --spec-file "$stage/pipeline.yaml" \
      --handler "$REPO/workflows/pipeline_workflow.py" --extra-files "$stage/model-config.yaml" \
      --export-path "$MODEL_STORE" -f
  fi
  rm -rf "$stage"; trap - EXIT
done
