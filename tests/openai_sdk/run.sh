#!/usr/bin/env bash
# The openai SDK (pinned in requirements.txt, installed from PyPI into a virtualenv) against a
# real `vidgen serve` with the built-in model. Needs python3 with venv, and the release build
# (`cargo build --release`). .ci/run runs it after the cargo tests.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${VIDGEN_TEST_VENV:-target/openai-sdk-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r tests/openai_sdk/requirements.txt

DATA="$(mktemp -d)"
LOG="$DATA/serve.log"
KEY="test-key-$RANDOM"
cleanup() {
  if [ -n "${SERVER:-}" ] && kill -0 "$SERVER" 2>/dev/null; then kill -KILL "$SERVER" || true; fi
  rm -rf "$DATA"
}
trap cleanup EXIT

target/release/vidgen serve --port 0 --data-dir "$DATA/data" --api-key "$KEY" \
  --poll-after-ms 200 >"$LOG" 2>&1 &
SERVER=$!
ADDR=""
for _ in $(seq 1 100); do
  ADDR="$(sed -n 's/^vidgen serve: listening on //p' "$LOG")"
  if [ -n "$ADDR" ] && curl -sf "$ADDR/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
if [ -z "$ADDR" ]; then
  echo "the server did not start:"; cat "$LOG"; exit 1
fi

VIDGEN_BASE_URL="$ADDR/v1" VIDGEN_API_KEY="$KEY" "$VENV/bin/python" tests/openai_sdk/test_videos.py

# SIGTERM: a clean exit
kill -TERM "$SERVER"
for _ in $(seq 1 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVER" 2>/dev/null; then echo "the server ignored SIGTERM"; cat "$LOG"; exit 1; fi
wait "$SERVER" && echo "ok  SIGTERM: clean exit" || { echo "exit status $? after SIGTERM"; cat "$LOG"; exit 1; }
SERVER=""
