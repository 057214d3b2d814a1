#!/usr/bin/env bash
# Stop the TorchServe started by scripts/serve.sh. Idempotent.
source "$(dirname "$0")/lib.sh"
cd "$REPO"
PATH="$REPO/.venv/bin:$PATH" torchserve --stop --foreground
rm -f "$TS_KEY_FILE"
