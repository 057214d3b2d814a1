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
[ ${#names[@]} -gt 0 ] || names=("${MODELS[@]}")
weights_root="${WEIGHTS_ROOT:-$REPO/model_store/weights}/$profile"
mkdir -p "$MODEL_STORE"

for name in "${names[@]}"; do
  yaml="$REPO/models/$name/model-config.yaml"
  [ -f "$yaml" ] || die "unknown model '$name' (no $yaml)"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/extra/handlers"
  cp "$REPO/handlers/__init__.py" "$stage/extra/handlers/"
  cp -r "$REPO/handlers/common" "$stage/extra/handlers/"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  handler=$("$PY" - "$yaml" "$weights_root" "$profile" "$stage/model-config.yaml" <<'PYEOF'
import sys, yaml
from pathlib import Path
source, weights_root, profile, target = sys.argv[1:]
config = yaml.safe_load(open(source))
handler = config["handler"]
weights = Path(weights_root) / handler["weights"]
if not weights.is_dir():
    sys.exit(f"error: no weights at {weights}: run scripts/build_models.sh --profile {profile} first")
handler["weights_dir"] = str(weights.resolve())
handler["profile"] = profile
yaml.safe_dump(config, open(target, "w"), sort_keys=False)
print(handler["module"])
PYEOF
  ) || exit 1
  say "archiving $name ($profile weights) -> $MODEL_STORE/$name.mar"
  "$REPO/.venv/bin/torch-model-archiver" --model-name "$name" --version 1.0 \
    --handler "$REPO/handlers/$handler.py" --extra-files "$stage/extra" \
    --config-file "$stage/model-config.yaml" --export-path "$MODEL_STORE" --force
  rm -rf "$stage"; trap - EXIT
done
