# Shared by the operator scripts: repo paths, config lookups, authenticated curl.
# shellcheck shell=bash
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
TS_CONFIG="${TS_CONFIG:-$REPO/config.properties}"
TS_KEY_FILE="${TS_KEY_FILE:-$REPO/key_file.json}"
MODEL_STORE="${MODEL_STORE:-$REPO/model_store}"
# what people make: the studio's runs and choices, MLflow's fine-tuning runs and registry (gitignored)
DATA_DIR="${DATA_DIR:-$REPO/data}"
# TorchServe keeps its pid file in $TMPDIR: a private one lets several servers coexist on one host.
export TMPDIR="${TS_RUN_DIR:-$REPO/.run}"

say() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

[ -x "$PY" ] || die "no Python environment at $REPO/.venv: run 'make setup' first"
mkdir -p "$TMPDIR"
# Every model the server registers is a folder models/<name>/ with a model-config.yaml: the one list
# (scripts/served_models.py). Models with weights come first; the light ones that call them (pipeline) last.
mapfile -t SERVED < <("$PY" "$REPO/scripts/served_models.py")

# config_value KEY: a key of config.properties (empty when unset)
config_value() { sed -n "s/^$1=//p" "$TS_CONFIG" | tail -n 1; }
inference_url() { config_value inference_address; }
management_url() { config_value management_address; }

# model_config NAME KEY: a top-level value of models/NAME/model-config.yaml
model_config() {
  "$PY" -c 'import sys, yaml; v = yaml.safe_load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' \
    "$REPO/models/$1/model-config.yaml" "$2"
}

# token inference|management: the current token from TorchServe's key file
token() {
  [ -f "$TS_KEY_FILE" ] || die "no key file at $TS_KEY_FILE: is TorchServe running (scripts/serve.sh)?"
  "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["key"])' "$TS_KEY_FILE" "$1"
}

# rotate inference|management: ask TorchServe for a new token with the API key (rewrites the key file)
rotate() {
  curl -sf -o /dev/null -H "Authorization: Bearer $(token API)" "$(management_url)/token?type=$1" \
    || die "could not rotate the $1 token (is the API key in $TS_KEY_FILE current?)"
}

# api inference|management METHOD PATH [curl args...]: prints the body; fails on HTTP >= 400.
# TorchServe 0.12 refuses a bad or expired token with 400 InvalidKeyException (not 401): then the
# key file is read again, and if it still holds the refused token (expired), the token is rotated
# with the API key before the one retry.
api() {
  local kind=$1 method=$2 path=$3; shift 3
  local base; base=$([ "$kind" = management ] && management_url || inference_url)
  local out code attempt sent
  out=$(mktemp)
  for attempt in 1 2; do
    sent=$(token "$kind")
    code=$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H "Authorization: Bearer $sent" \
      "$@" "$base$path") || { rm -f "$out"; die "cannot reach TorchServe at $base"; }
    if [ "$attempt" = 1 ] && [ "$code" = 400 ] && grep -q InvalidKeyException "$out"; then
      [ "$(token "$kind")" = "$sent" ] && rotate "$kind"
      continue
    fi
    break
  done
  cat "$out"; rm -f "$out"
  [ "$code" -lt 400 ] || { say "$method $path -> HTTP $code"; return 1; }
}
