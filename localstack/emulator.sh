#!/usr/bin/env bash
# Gives dev and tests an AWS endpoint.
#   start    use TETHER_AWS_ENDPOINT if set, else a LocalStack answering on :4566 with
#            dynamodb, sqs, s3 and secretsmanager up, else start the pinned moto
#            server on 127.0.0.1:${TETHER_EMULATOR_PORT:-4566}; write .tether/emulator.env.
#            A second start with the emulator still up reuses it.
#   stop     stop the moto server this script started (never a LocalStack, never a
#            server something else started)
#   env      print .tether/emulator.env
#   install  only create .tether/venv and install localstack/requirements.txt (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=.tether
VENV=$STATE/venv
REQUIREMENTS=localstack/requirements.txt
PORT="${TETHER_EMULATOR_PORT:-4566}"
LOCALSTACK=http://127.0.0.1:4566

die() { echo "emulator.sh: $*" >&2; exit 1; }
say() { echo "emulator: $*"; }

need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required on PATH ($2)"; }

install() {
  need python3 "Python 3.11 runs the moto server; Debian: apt-get install python3 python3-venv"
  python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || die "python3 is $(python3 -V 2>&1); the moto server needs Python >= 3.9 (3.11 is what the pins were made with)"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $(python3 -V 2>&1)"
    python3 -m venv "$VENV" \
      || { rm -rf "$VENV"; die "python3 -m venv failed: the venv module or ensurepip is missing (Debian: apt-get install python3-venv)"; }
  fi
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 \
    || die "pip is missing in $VENV (Debian: apt-get install python3-venv python3-pip, then rm -rf $VENV and retry)"
  # Skip pip entirely when this exact requirements file was installed already.
  local stamp="$VENV/.requirements.sha256" want
  want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/moto_server" ]; then
    say "moto server already installed in $VENV ($REQUIREMENTS unchanged)"
    return
  fi
  say "installing $REQUIREMENTS into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" \
    || die "pip install -r $REQUIREMENTS failed (is PyPI reachable?)"
  [ -x "$VENV/bin/moto_server" ] || die "pip finished but $VENV/bin/moto_server is missing"
  echo "$want" > "$stamp"
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

get() { curl -fsS --max-time 2 "$1" 2>/dev/null; }

# LocalStack at $1 with the four services Tether needs available or running.
localstack_ready() {
  local health
  health=$(get "$1/_localstack/health") || return 1
  command -v python3 >/dev/null 2>&1 || return 1
  python3 - "$health" <<'PY'
import json, sys
try:
    s = json.loads(sys.argv[1]).get("services", {})
except ValueError:
    sys.exit(1)
ok = all(s.get(n) in ("available", "running") for n in ("dynamodb", "sqs", "s3", "secretsmanager"))
sys.exit(0 if ok else 1)
PY
}

# A moto server answers its dashboard API.
moto_at() { get "$1/moto-api/" >/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid in .tether/emulator.pid, if it is a live moto server.
our_pid() {
  [ -f "$STATE/emulator.pid" ] || return 1
  local pid cmd
  pid=$(cat "$STATE/emulator.pid")
  [ -n "$pid" ] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  case "$cmd" in *moto_server*) echo "$pid" ;; *) return 1 ;; esac
}

start() {
  need curl "the script probes emulators over HTTP; Debian: apt-get install curl"
  if [ -n "${TETHER_AWS_ENDPOINT:-}" ]; then
    local kind=external
    curl -sS -o /dev/null --max-time 2 "$TETHER_AWS_ENDPOINT" 2>/dev/null \
      || echo "emulator.sh: warning: TETHER_AWS_ENDPOINT=$TETHER_AWS_ENDPOINT does not answer (yet)" >&2
    if localstack_ready "$TETHER_AWS_ENDPOINT"; then kind=localstack; elif moto_at "$TETHER_AWS_ENDPOINT"; then kind=moto; fi
    write_env "$TETHER_AWS_ENDPOINT" "$kind"
    say "using TETHER_AWS_ENDPOINT=$TETHER_AWS_ENDPOINT ($kind): it is set, so nothing is started"
    return
  fi
  if localstack_ready "$LOCALSTACK"; then
    write_env "$LOCALSTACK" localstack
    say "using LocalStack on $LOCALSTACK: it answers with dynamodb, sqs, s3 and secretsmanager available"
    return
  fi
  local endpoint="http://127.0.0.1:$PORT"
  if moto_at "$endpoint"; then
    write_env "$endpoint" moto
    if our_pid >/dev/null; then
      say "using the moto server this script started on $endpoint (pid $(our_pid)); it is still up"
    else
      say "using the moto server already answering on $endpoint (not started by this script: stop leaves it alone)"
    fi
    return
  fi
  if port_open "$PORT"; then
    die "127.0.0.1:$PORT is taken by something that is neither LocalStack (with dynamodb, sqs, s3, secretsmanager) nor moto; free it or set TETHER_EMULATOR_PORT"
  fi
  install
  say "no TETHER_AWS_ENDPOINT and no LocalStack on :4566; starting the moto server on $endpoint (log: $STATE/emulator.log)"
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$STATE/emulator.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$STATE/emulator.pid"
  local deadline=$((SECONDS + 30))
  until moto_at "$endpoint"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$STATE/emulator.pid"
      tail -n 20 "$STATE/emulator.log" >&2 || true
      die "the moto server exited at start; see $STATE/emulator.log"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill "$pid" 2>/dev/null || true
      rm -f "$STATE/emulator.pid"
      die "the moto server did not answer on $endpoint within 30 s; see $STATE/emulator.log"
    fi
    sleep 0.2
  done
  write_env "$endpoint" moto
  say "moto server up on $endpoint (pid $pid)"
}

stop() {
  local pid
  if pid=$(our_pid); then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$STATE/emulator.pid" "$STATE/emulator.env"
    say "moto server stopped (pid $pid)"
  else
    rm -f "$STATE/emulator.pid"
    say "no moto server started by this script is running; nothing to stop"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env)
    [ -f "$STATE/emulator.env" ] || die "no $STATE/emulator.env: run localstack/emulator.sh start first"
    cat "$STATE/emulator.env" ;;
  install) install ;;
  *) die "usage: emulator.sh start|stop|env|install" ;;
esac
