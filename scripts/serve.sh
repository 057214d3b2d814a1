#!/usr/bin/env bash
# Start TorchServe from the repo root with config.properties and register every archive in the
# model store (models first, then the pipeline workflow). Idempotent: a running server is reused.
source "$(dirname "$0")/lib.sh"
cd "$REPO"

ping_ok() {
  [ -f "$TS_KEY_FILE" ] || return 1
  curl -sf -H "Authorization: Bearer $(token inference)" "$(inference_url)/ping" 2>/dev/null | grep -q Healthy
}

if ping_ok; then
  say "TorchServe is already running at $(inference_url)"
else
  command -v java >/dev/null || die "Java 17+ is required (Debian: apt-get install openjdk-17-jre-headless)"
  ls "$MODEL_STORE"/*.mar >/dev/null 2>&1 || die "no archives in $MODEL_STORE: run scripts/archive.sh first"
  # TorchServe writes key_file.json (and logs/) into the directory it starts in: start it in the
  # key file's directory ($REPO by default), so a private TS_KEY_FILE is where the tokens land
  # and another server's key file is never overwritten
  run_in="$(dirname "$TS_KEY_FILE")"
  mkdir -p "$run_in"
  say "starting TorchServe ($TS_CONFIG, model store $MODEL_STORE, logs in $run_in/logs)"
  rm -f "$TS_KEY_FILE"
  # workers inherit these: the pipeline calls the models on this server's ports with its key file
  export TS_CONFIG_FILE="$TS_CONFIG" TS_KEY_FILE
  # the stores are given explicitly: config.properties' relative ones would resolve against $run_in
  (cd "$run_in" && PATH="$REPO/.venv/bin:$PATH" torchserve --start --ncs --ts-config "$TS_CONFIG" \
    --model-store "$MODEL_STORE" --workflow-store "$MODEL_STORE" > "$TMPDIR/torchserve.out" 2>&1) \
    || { cat "$TMPDIR/torchserve.out" >&2; die "TorchServe did not start"; }
  for _ in $(seq 1 120); do ping_ok && break; sleep 1; done
  ping_ok || { tail -20 "$run_in/logs/ts_log.log" >&2 2>/dev/null; die "TorchServe did not become healthy within 120 s"; }
  say "TorchServe is up at $(inference_url)"
fi

for name in "${SERVED[@]}"; do
  if [ -f "$MODEL_STORE/$name.mar" ]; then "$REPO/scripts/register.sh" "$name"; fi
done
# versions deployed with deploy_version.sh, and the chosen defaults (model_store/versions.json)
while read -r model version mar; do
  if [ "$version" = default ]; then
    api management PUT "/models/$model/$mar/set-default" >/dev/null && say "$model: default version $mar"
  elif ! api management GET "/models/$model/$version" >/dev/null 2>&1; then
    say "registering $model version $version from $mar"
    api management POST "/models?url=$mar&synchronous=true" >/dev/null || say "warning: could not register $mar"
  fi
done < <("$PY" -m training.deploy --store "$MODEL_STORE" list)
if [ -f "$MODEL_STORE/pipeline.war" ]; then "$REPO/scripts/register.sh" --workflow pipeline; fi
say "ready: inference $(inference_url), management $(management_url), metrics $(config_value metrics_address)"
