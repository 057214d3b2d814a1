#!/usr/bin/env bash
# Remove one version of a model: scripts/unregister.sh MODEL VERSION. TorchServe refuses to remove
# the default version: set another default first (scripts/set_default.sh).
source "$(dirname "$0")/lib.sh"
model="${1:?usage: unregister.sh MODEL VERSION}"
version="${2:?usage: unregister.sh MODEL VERSION}"
if ! api management GET "/models/$model/$version" >/dev/null 2>&1; then
  say "$model version $version is not registered"
else
  api management DELETE "/models/$model/$version" >/dev/null \
    || die "TorchServe refused to remove $model version $version (the default cannot be removed: set another default first)"
  say "$model version $version removed"
fi
"$PY" -m training.deploy --store "$MODEL_STORE" forget "$model" "$version"
