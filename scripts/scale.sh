#!/usr/bin/env bash
# Set a model's worker count: scripts/scale.sh NAME MIN [MAX]. Waits until the workers are up.
source "$(dirname "$0")/lib.sh"
name="${1:?usage: scale.sh NAME MIN [MAX]}"; min="${2:?usage: scale.sh NAME MIN [MAX]}"; max="${3:-$2}"
[[ "$min" =~ ^[0-9]+$ && "$max" =~ ^[0-9]+$ && "$max" -ge "$min" ]] || die "MIN and MAX must be integers with MAX >= MIN"
say "scaling $name to min $min, max $max workers"
api management PUT "/models/$name?min_worker=$min&max_worker=$max&synchronous=true" >/dev/null \
  || die "could not scale $name"
api management GET "/models/$name" | "$PY" -c '
import json, sys
m = json.load(sys.stdin)[0]
print("%s: %d workers (min %d, max %d)" % (m["modelName"], len(m["workers"]), m["minWorkers"], m["maxWorkers"]))'
