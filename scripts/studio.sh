#!/usr/bin/env bash
# The studio (studio/): a web page on the interpreter, on the address in studio/studio.yaml
# (127.0.0.1:8090). It talks to TorchServe as a client (scripts/serve.sh starts that; the token stays in
# the app). Idempotent: start reuses a running studio, stop is a no-op when none runs.
#   scripts/studio.sh start        start it in the background (pid in .run/studio.pid, log in .run/studio.log)
#   scripts/studio.sh stop         stop it
#   scripts/studio.sh status       say whether it runs and whether it reaches TorchServe (exit 3: not running)
#   scripts/studio.sh export DIR   write the chosen samples as a Hugging Face imagefolder dataset in DIR
# STUDIO_CONFIG names another yaml (the tests give each studio its own port and data folder).
source "$(dirname "$0")/lib.sh"
cd "$REPO"
config="${STUDIO_CONFIG:-$REPO/studio/studio.yaml}"
pid_file="$TMPDIR/studio.pid"
log_file="$TMPDIR/studio.log"
studio() { "$PY" -m studio --config "$config" "$@"; }

running() { [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; }
# /healthz answers 200 (TorchServe reachable) or 503 (not): either way the app is up
health_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/healthz" 2>/dev/null || true; }

command="${1:-start}"
case "$command" in
  start|status) url=$(studio url) || die "cannot read $config" ;;
esac

case "$command" in
  start)
    if running; then
      say "the studio is already running at $url (pid $(cat "$pid_file"))"
      exit 0
    fi
    say "starting the studio at $url ($config, log in $log_file)"
    nohup "$PY" -m studio --config "$config" serve > "$log_file" 2>&1 &
    echo $! > "$pid_file"
    code=""
    for _ in $(seq 1 60); do
      running || { tail -20 "$log_file" >&2; rm -f "$pid_file"; die "the studio exited at start (see $log_file)"; }
      code=$(health_code)
      case "$code" in 200|503) break ;; esac
      sleep 0.5
    done
    case "$code" in
      200) say "studio: $url" ;;
      503) say "studio: $url (TorchServe is not reachable yet: start it with scripts/serve.sh)" ;;
      *) tail -20 "$log_file" >&2; die "the studio did not answer at $url within 30 s (see $log_file)" ;;
    esac
    ;;
  stop)
    if running; then
      pid=$(cat "$pid_file")
      kill "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && { say "the studio did not stop in 10 s; killing it"; kill -9 "$pid"; }
      say "stopped the studio (pid $pid)"
    else
      say "the studio is not running"
    fi
    rm -f "$pid_file"
    ;;
  status)
    if ! running; then say "the studio is not running"; exit 3; fi
    case "$(health_code)" in
      200) say "the studio is running at $url (pid $(cat "$pid_file")); TorchServe is reachable" ;;
      503) say "the studio is running at $url (pid $(cat "$pid_file")); TorchServe is NOT reachable" ;;
      *) say "the studio's process runs (pid $(cat "$pid_file")) but $url/healthz does not answer" ;;
    esac
    ;;
  export)
    [ $# -eq 2 ] || die "usage: scripts/studio.sh export DIR"
    studio export "$2"
    ;;
  *) die "usage: scripts/studio.sh [start|stop|status|export DIR]" ;;
esac
