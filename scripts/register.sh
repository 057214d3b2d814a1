#!/usr/bin/env bash
# Register a model archive (scripts/register.sh NAME) or the workflow (scripts/register.sh --workflow NAME)
# from the model store, waiting for its workers. Idempotent: an already registered name is left alone.
source "$(dirname "$0")/lib.sh"

if [ "${1:-}" = --workflow ]; then
  name="${2:?usage: register.sh --workflow NAME}"
  if api management GET "/workflows/$name" >/dev/null 2>&1; then say "workflow $name is already registered"; exit 0; fi
  say "registering workflow $name from $name.war"
  api management POST "/workflows?url=$name.war" >/dev/null || die "could not register workflow $name (see logs/ts_log.log)"
  say "workflow $name registered"
  exit 0
fi

name="${1:?usage: register.sh NAME | --workflow NAME}"
[ -f "$MODEL_STORE/$name.mar" ] || die "no $MODEL_STORE/$name.mar: run scripts/archive.sh $name first"
if api management GET "/models/$name" >/dev/null 2>&1; then say "model $name is already registered"; exit 0; fi
say "registering $name from $name.mar (workers, batching and timeouts from its model-config.yaml)"
api management POST "/models?url=$name.mar&synchronous=true" >/dev/null \
  || die "could not register $name (see logs/model_log.log)"
say "model $name registered"
