#!/usr/bin/env bash
# `vidgen serve` with the built-in model, driven by real clients:
#   1. the official openai Python SDK (pinned in requirements.txt, installed from PyPI into a
#      virtualenv) — test_openai_sdk.py;
#   2. a real browser: headless Chromium through chromedriver (Debian's `chromium` and
#      `chromium-driver`) — test_browser.py, which saves target/serve-page.png.
# Needs the release build (`cargo build --release`), python3 with venv, curl, ffprobe, and the
# two Debian packages; .ci/run installs them and runs this after the cargo tests.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${VIDGEN_TEST_VENV:-target/serve-test-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r tests/serve/requirements.txt

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# start_server NAME ARGS... : runs `vidgen serve --port 0` and sets ADDR once /readyz answers
start_server() {
  local name="$1"; shift
  target/release/vidgen serve --port 0 --data-dir "$TMP/$name" "$@" >"$TMP/$name.log" 2>&1 &
  SERVER=$!
  PIDS+=("$SERVER")
  ADDR=""
  for _ in $(seq 1 150); do
    ADDR="$(sed -n 's/^vidgen serve: listening on //p' "$TMP/$name.log")"
    if [ -n "$ADDR" ] && curl -sf "$ADDR/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "the server did not start:"; cat "$TMP/$name.log"; exit 1
}

# 1. the openai SDK, with an API key
KEY="test-key-$RANDOM"
start_server sdk --api-key "$KEY" --poll-after-ms 200
VIDGEN_BASE_URL="$ADDR/v1" VIDGEN_API_KEY="$KEY" "$VENV/bin/python" tests/serve/test_openai_sdk.py
kill -TERM "$SERVER"
for _ in $(seq 1 100); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVER" 2>/dev/null; then echo "the server ignored SIGTERM"; cat "$TMP/sdk.log"; exit 1; fi
if wait "$SERVER"; then echo "ok  SIGTERM: clean exit"; else echo "exit status $? after SIGTERM"; exit 1; fi

# 2. the page in headless Chromium (no API key: progress comes by server-sent events)
start_server page
DRIVER_PORT=$((20000 + RANDOM % 20000))
chromedriver --port="$DRIVER_PORT" >"$TMP/chromedriver.log" 2>&1 &
PIDS+=($!)
disown $!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$DRIVER_PORT/status" >/dev/null 2>&1 && break; sleep 0.1; done
VIDGEN_PAGE_URL="$ADDR/" CHROMEDRIVER_URL="http://127.0.0.1:$DRIVER_PORT" SCREENSHOT="target/serve-page.png" \
  "$VENV/bin/python" tests/serve/test_browser.py
