#!/usr/bin/env bash
# Make VERSION the version /predictions/MODEL answers with: scripts/set_default.sh MODEL VERSION.
# Promote a fine-tune with it; roll back by setting the previous version (1.0: the base) again.
# The choice is remembered in the model store (versions.json), so serve.sh restores it.
source "$(dirname "$0")/lib.sh"
model="${1:?usage: set_default.sh MODEL VERSION}"
version="${2:?usage: set_default.sh MODEL VERSION}"
api management PUT "/models/$model/$version/set-default" >/dev/null \
  || die "could not make $version the default of $model (is it registered? GET /models/$model/all)"
"$PY" -m training.deploy --store "$MODEL_STORE" set-default "$model" "$version"
say "$model now answers with version $version by default"
