#!/usr/bin/env bash
# Build model weights for a profile: scripts/build_models.sh --profile tiny|arch|pretrained [--models ...]
source "$(dirname "$0")/lib.sh"
exec "$PY" "$REPO/scripts/build_models.py" "$@"
