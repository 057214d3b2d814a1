#!/usr/bin/env bash
# Archive models into the model store: scripts/archive.sh [--profile tiny|arch|pretrained] [NAME ...]
# Each <name>.mar holds its handler, handlers/common and its model-config.yaml with
# handler.weights_dir pointing at model_store/weights/<profile>/...: weights are never zipped.
source "$(dirname "$0")/lib.sh"

profile="${PROFILE:-tiny}"
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --store) MODEL_STORE="$2"; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) names+=("$1"); shift ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=("${MODELS[@]}" pipeline)
weights_root="${WEIGHTS_ROOT:-$REPO/model_store/weights}"
mkdir -p "$MODEL_STORE"

archive_workflow() {
  # the workflow's function nodes import the stage code, the client and handlers/common
  local stage; stage=$(mktemp -d)
  mkdir -p "$stage/extra/handlers"
  cp "$REPO/handlers/__init__.py" "$stage/extra/handlers/"
  cp -r "$REPO/handlers/common" "$stage/extra/handlers/"
  cp -r "$REPO/workflows" "$REPO/client" "$stage/extra/"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  say "archiving workflow pipeline -> $MODEL_STORE/pipeline.war"
  # the workflow archiver copies extra files flat, so the packages travel as one zip on sys.path
  (cd "$stage/extra" && "$PY" -m zipfile -c "$stage/pipeline_packages.zip" handlers workflows client)
  "$REPO/.venv/bin/torch-workflow-archiver" --workflow-name pipeline --spec-file "$REPO/workflows/pipeline.yaml" \
    --handler "$REPO/workflows/pipeline_workflow.py" --extra-files "$stage/pipeline_packages.zip" \
    --export-path "$MODEL_STORE" -f
  rm -rf "$stage"
}

for name in "${names[@]}"; do
  yaml="$REPO/models/$name/model-config.yaml"
  [ -f "$yaml" ] || die "unknown model '$name' (no $yaml)"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/extra/handlers"
  cp "$REPO/handlers/__init__.py" "$stage/extra/handlers/"
  cp -r "$REPO/handlers/common" "$stage/extra/handlers/"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  handler=$("$PY" "$REPO/scripts/render_model_config.py" "$yaml" "$profile" "$weights_root" \
    "$stage/model-config.yaml") || exit 1
  read -r handler packages <<<"$handler"
  for package in $packages; do cp -r "$REPO/$package" "$stage/extra/"; done
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  say "archiving $name ($profile weights) -> $MODEL_STORE/$name.mar"
  "$REPO/.venv/bin/torch-model-archiver" --model-name "$name" --version 1.0 \
    --handler "$REPO/handlers/$handler.py" --extra-files "$stage/extra" \
    --config-file "$stage/model-config.yaml" --export-path "$MODEL_STORE" --force
  rm -rf "$stage"; trap - EXIT
  if [ "$name" = pipeline ]; then archive_workflow; fi
done
