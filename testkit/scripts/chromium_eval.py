#!/usr/bin/env python3
"""Evaluates a JavaScript expression in a page loaded by headless Chromium and prints its value
as JSON: the DevTools protocol over --remote-debugging-pipe (fds 3 and 4, messages ended by NUL),
so no port and no websocket library.

usage: chromium_eval.py URL WIDTHxHEIGHT WAIT_MS EXPRESSION [SCREENSHOT.png]

With SCREENSHOT, the page as it is once the expression's value is ready is saved there (PNG).
"""
import json, os, subprocess, sys, time

url, size, wait_ms, expression = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
shot = sys.argv[5] if len(sys.argv) > 5 else None
width, height = size.split("x")
import fcntl


def high(fd):
    """The fd moved above 9, so fds 3 and 4 are free for Chromium's ends."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


to_chrome_r, to_chrome_w = map(high, os.pipe())
from_chrome_r, from_chrome_w = map(high, os.pipe())
# Chromium reads commands on fd 3 and writes answers on fd 4.
os.dup2(to_chrome_r, 3)
os.dup2(from_chrome_w, 4)
proc = subprocess.Popen(
    ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
     "--remote-debugging-pipe", "--autoplay-policy=no-user-gesture-required", f"--window-size={width},{height}", "about:blank"],
    pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for fd in (3, 4, to_chrome_r, from_chrome_w):
    os.close(fd)
buffered = b""
next_id = 0


def call(method, params=None, session=None):
    global next_id, buffered
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    os.write(to_chrome_w, json.dumps(msg).encode() + b"\0")
    while True:
        while b"\0" not in buffered:
            chunk = os.read(from_chrome_r, 65536)
            if not chunk:
                sys.exit("chromium closed the pipe")
            buffered += chunk
        raw, buffered = buffered.split(b"\0", 1)
        answer = json.loads(raw)
        if answer.get("id") == next_id:
            if "error" in answer:
                sys.exit(f"{method}: {answer['error']}")
            return answer["result"]


try:
    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    call("Emulation.setDeviceMetricsOverride",
         {"width": int(width), "height": int(height), "deviceScaleFactor": 1, "mobile": True}, session)
    call("Page.navigate", {"url": url}, session)
    time.sleep(wait_ms / 1000)
    result = call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session)
    if "exceptionDetails" in result:
        sys.exit(f"the expression failed: {result['exceptionDetails']}")
    if shot:
        import base64
        png = call("Page.captureScreenshot", {"format": "png"}, session)["data"]
        with open(shot, "wb") as f:
            f.write(base64.b64decode(png))
    print(json.dumps(result["result"].get("value")))
finally:
    try:
        call("Browser.close")
    except SystemExit:
        pass
    proc.wait(timeout=10)
