#!/usr/bin/env bash
# LocalStack in host mode (no Docker), for bin/test's LocalStack lane.
#   install     create .tether/localstack-venv from localstack/requirements-host.txt
#               with Python 3.13 (exit 3 when no Python 3.13 is found)
#   start PORT  start it on 127.0.0.1:PORT with SQS, S3 and Secrets Manager, wait
#               until those answer (their health says "available"), write its pid
#               to .tether/localstack-host.pid; its log is .tether/localstack-host.log
#   stop        stop what start started
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tether/localstack-venv
REQ=localstack/requirements-host.txt
PID=.tether/localstack-host.pid

python313() {
  for p in "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.13*/bin/python3 \
           "$(command -v python3.13 2>/dev/null || true)"; do
    [ -n "$p" ] && [ -x "$p" ] \
      && "$p" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 13) else 1)' 2>/dev/null \
      && { echo "$p"; return 0; }
  done
  return 1
}

case "${1:-}" in
  install)
    want=$(sha256sum "$REQ" | cut -d' ' -f1)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$want" ]; then
      exit 0
    fi
    py=$(python313) || { echo "localstack/host.sh: LocalStack 2026.3.0 needs Python 3.13 (none found on PATH or in pyenv)" >&2; exit 3; }
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
    echo "$want" > "$VENV/.requirements.sha256"
    ;;
  start)
    port="${2:?usage: host.sh start PORT}"
    mkdir -p .tether
    GATEWAY_LISTEN="127.0.0.1:$port" SERVICES=sqs,s3,secretsmanager DEBUG=0 \
      setsid "$VENV/bin/python" -m localstack.runtime.main >.tether/localstack-host.log 2>&1 &
    echo $! > "$PID"
    for _ in $(seq 1 120); do
      if curl -fsS --max-time 2 "http://127.0.0.1:$port/_localstack/health" 2>/dev/null \
        | python3 -c 'import json,sys; s=json.load(sys.stdin)["services"]; sys.exit(0 if all(s.get(n) in ("available","running") for n in ("sqs","s3","secretsmanager")) else 1)' 2>/dev/null; then
        exit 0
      fi
      kill -0 "$(cat "$PID")" 2>/dev/null || { echo "localstack/host.sh: LocalStack exited; see .tether/localstack-host.log" >&2; tail -n 20 .tether/localstack-host.log >&2; exit 1; }
      sleep 1
    done
    echo "localstack/host.sh: LocalStack did not answer on :$port within 120 s" >&2
    exit 1
    ;;
  stop)
    if [ -f "$PID" ]; then
      kill -- "-$(cat "$PID")" 2>/dev/null || kill "$(cat "$PID")" 2>/dev/null || true
      rm -f "$PID"
    fi
    ;;
  *) echo "usage: localstack/host.sh install | start PORT | stop" >&2; exit 2 ;;
esac
