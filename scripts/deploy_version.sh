#!/usr/bin/env bash
# Serve version VERSION of the fine-tune NAME (MLflow model sd-lora-NAME) beside the running default:
#   scripts/deploy_version.sh NAME VERSION
# Archives sd with the adapter inside and the base weights referenced, registers it as a TorchServe
# version of sd, waits for its worker, and prints that version: POST /predictions/sd/<version>.
# The deployment is remembered in the model store (versions.json): serve.sh brings it back.
source "$(dirname "$0")/lib.sh"
name="${1:?usage: deploy_version.sh NAME VERSION}"
version="${2:?usage: deploy_version.sh NAME VERSION}"
read -r ts_version mar < <("$PY" -m training.deploy --store "$MODEL_STORE" archive "$name" "$version" \
  --data-dir "$DATA_DIR") \
  || die "could not archive version $version of sd-lora-$name"
if api management GET "/models/sd/$ts_version" >/dev/null 2>&1; then
  say "sd version $ts_version is already registered"
else
  say "registering sd version $ts_version from $mar (its own worker; base weights shared on disk, not in memory)"
  api management POST "/models?url=$mar&synchronous=true" >/dev/null \
    || die "could not register $mar (see logs/model_log.log)"
fi
"$PY" -m training.deploy --store "$MODEL_STORE" record sd "$ts_version" "$mar"
say "serving: POST $(inference_url)/predictions/sd/$ts_version (the default stays at /predictions/sd)"
echo "$ts_version"
