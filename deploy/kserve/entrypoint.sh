#!/bin/sh
# The predictor container's entry point (deploy/kserve/Dockerfile). KServe's kserve-torchserve
# runtime runs `torchserve --start ...`, which starts the server in the background and returns, and
# a container whose command returns is stopped: run it in the foreground instead, so the pod lives
# exactly as long as TorchServe does.
set -eu
if [ "${1:-}" = torchserve ]; then
  case " $* " in
    *" --foreground "*) ;;
    *) set -- "$@" --foreground ;;
  esac
fi
exec "$@"
