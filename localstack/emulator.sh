#!/usr/bin/env bash
# Gives dev and tests an AWS endpoint.
#   start    use TETHER_AWS_ENDPOINT if set, else a LocalStack answering on :4566 with
#            dynamodb, sqs, s3 and secretsmanager up, else start the pinned moto
#            server on 127.0.0.1:${TETHER_EMULATOR_PORT:-4566}; write .tether/emulator.env
#   stop     stop the moto server this script started (never a LocalStack)
#   env      print .tether/emulator.env
#   install  only create .tether/venv and install localstack/requirements.txt
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=.tether
VENV=$STATE/venv
PORT="${TETHER_EMULATOR_PORT:-4566}"
mkdir -p "$STATE"

die() { echo "emulator.sh: $*" >&2; exit 1; }

install() {
  command -v python3 >/dev/null || die "python3 is required"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  fi
  local stamp="$VENV/.requirements.sha256"
  local want; want=$(sha256sum localstack/requirements.txt | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x "$VENV/bin/moto_server" ]; then
    echo "installing the moto server into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r localstack/requirements.txt \
      || die "pip install failed"
    echo "$want" > "$stamp"
  fi
}

write_env() { # endpoint kind
  cat > "$STATE/emulator.env" <<ENV
export AWS_ENDPOINT_URL=$1
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export TETHER_EMULATOR=$2
ENV
}

localstack_ready() {
  local health
  health=$(curl -fsS --max-time 2 http://127.0.0.1:4566/_localstack/health 2>/dev/null) || return 1
  python3 - "$health" <<'PY'
import json, sys
s = json.loads(sys.argv[1]).get("services", {})
ok = all(s.get(n) in ("available", "running") for n in ("dynamodb", "sqs", "s3", "secretsmanager"))
sys.exit(0 if ok else 1)
PY
}

moto_alive() { curl -fsS --max-time 2 "http://127.0.0.1:$PORT/moto-api/" >/dev/null 2>&1; }

start() {
  if [ -n "${TETHER_AWS_ENDPOINT:-}" ]; then
    write_env "$TETHER_AWS_ENDPOINT" external
    echo "emulator: using TETHER_AWS_ENDPOINT=$TETHER_AWS_ENDPOINT"; return
  fi
  if localstack_ready; then
    write_env http://127.0.0.1:4566 localstack
    echo "emulator: LocalStack answers on :4566 with dynamodb, sqs, s3 and secretsmanager; using it"; return
  fi
  if moto_alive; then
    write_env "http://127.0.0.1:$PORT" moto
    echo "emulator: moto server already running on 127.0.0.1:$PORT; reusing it"; return
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT is taken by something that is neither LocalStack nor moto; set TETHER_EMULATOR_PORT"
  fi
  install
  echo "emulator: no LocalStack reachable; starting the moto server on 127.0.0.1:$PORT"
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$STATE/emulator.log" 2>&1 &
  echo $! > "$STATE/emulator.pid"
  for _ in $(seq 1 150); do moto_alive && break; sleep 0.2; done
  moto_alive || die "moto did not answer within 30 s; see $STATE/emulator.log"
  write_env "http://127.0.0.1:$PORT" moto
}

stop() {
  if [ -f "$STATE/emulator.pid" ]; then
    kill "$(cat "$STATE/emulator.pid")" 2>/dev/null || true
    rm -f "$STATE/emulator.pid"
    echo "emulator: moto server stopped"
  else
    echo "emulator: nothing started by this script is running"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) cat "$STATE/emulator.env" ;;
  install) install ;;
  *) die "usage: emulator.sh start|stop|env|install" ;;
esac
