"""The web page in a real browser: headless Chromium, driven through chromedriver's WebDriver
HTTP API (standard library only), opens `vidgen serve`'s page, submits a prompt, waits for the
video to finish and play (`readyState >= 2`) and saves a screenshot.

Run by run.sh with VIDGEN_PAGE_URL (a server without an API key, so the page follows progress
by server-sent events), CHROMEDRIVER_URL and SCREENSHOT (where to save the PNG).
"""

import base64
import json
import os
import time
import urllib.request

PAGE = os.environ["VIDGEN_PAGE_URL"]
DRIVER = os.environ["CHROMEDRIVER_URL"]
SCREENSHOT = os.environ["SCREENSHOT"]


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(DRIVER + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["value"]


def wait(what, fn, timeout=120):
    started = time.time()
    while True:
        value = fn()
        if value:
            print(f"ok  {what} ({time.time() - started:.1f}s)")
            return value
        if time.time() - started > timeout:
            raise AssertionError(f"timed out: {what}")
        time.sleep(0.25)


session = call("POST", "/session", {"capabilities": {"alwaysMatch": {
    "browserName": "chrome",
    "goog:chromeOptions": {
        "binary": os.environ.get("CHROMIUM", "/usr/bin/chromium"),
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1000,900", "--autoplay-policy=no-user-gesture-required"],
    },
}}})["sessionId"]
try:
    s = f"/session/{session}"

    def script(code):
        return call("POST", f"{s}/execute/sync", {"script": code, "args": []})

    def element(css):
        found = call("POST", f"{s}/element", {"using": "css selector", "value": css})
        return next(iter(found.values()))

    call("POST", f"{s}/url", {"url": PAGE})
    wait("the page says the server is ready", lambda: script("return document.getElementById('ready').textContent") == "ready")
    call("POST", f"{s}/element/{element('#prompt')}/value", {"text": "a red ball bounces on the floor"})
    call("POST", f"{s}/element/{element('#submit')}/click", {})
    wait("a job card appears", lambda: script("return document.querySelectorAll('.job').length") >= 1)
    wait("the job completes (progress by server-sent events)",
         lambda: script("return !!document.querySelector('.job.status-completed')"))
    state = wait("the video plays (readyState >= 2)", lambda: script(
        "const v = document.querySelector('.job video');"
        "return v && v.readyState >= 2 ? {readyState: v.readyState, w: v.videoWidth, h: v.videoHeight, error: v.error && v.error.code} : null"))
    assert (state["w"], state["h"]) == (64, 64), state
    png = base64.b64decode(call("GET", f"{s}/screenshot"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with open(SCREENSHOT, "wb") as f:
        f.write(png)
    print(f"ok  screenshot saved to {SCREENSHOT} ({len(png)} bytes)")
finally:
    call("DELETE", f"/session/{session}")
print("browser checks passed")
