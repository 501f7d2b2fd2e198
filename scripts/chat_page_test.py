#!/usr/bin/env python3
"""The chat page of `glm5 serve` in headless Chromium (Debian's chromium + chromium-driver),
driven through ChromeDriver's W3C WebDriver HTTP API with the standard library only.

Starts the server on the bundled model, opens `/`, sends a message and checks that the answer
streams in (the text is seen growing before the turn ends), that the reasoning is folded, that
the stats line appears, and that Stop ends a long answer. Exits non-zero on the first failure.

    apt-get install chromium chromium-driver
    python3 scripts/chat_page_test.py --bin target/release/glm5
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, what):
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"{what} exited with {proc.returncode}")
            time.sleep(0.1)
    sys.exit(f"{what} did not come up")


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


class Driver:
    def __init__(self, base):
        self.base = base
        self.sid = None

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["value"]

    def start(self, profile):
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium", "args": args}}}}
        self.sid = self.call("POST", "/session", caps)["sessionId"]

    def s(self, path, body=None, method="POST"):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def find(self, css):
        el = self.s("/element", {"using": "css selector", "value": css})
        return next(iter(el.values()))

    def js(self, script):
        return self.s("/execute/sync", {"script": script, "args": []})

    def quit(self):
        if self.sid:
            self.call("DELETE", f"/session/{self.sid}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    a = ap.parse_args()
    port, dport = free_port(), free_port()
    server = subprocess.Popen([a.bin, "serve", "--port", str(port), "--ctx", "2048", "--threads", "2"])
    driver_proc = subprocess.Popen(["/usr/bin/chromedriver", f"--port={dport}"], stdout=subprocess.DEVNULL)
    d = Driver(f"http://127.0.0.1:{dport}")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server, "glm5 serve")
        wait_http(f"http://127.0.0.1:{dport}/status", driver_proc, "chromedriver")
        with tempfile.TemporaryDirectory() as profile:
            d.start(profile)
            d.s("/url", {"url": f"http://127.0.0.1:{port}/"})
            check(d.s("/title", method="GET") == "glm5", "the page loads")
            for _ in range(50):
                if "glm5-tiny" in d.js("return document.getElementById('model').textContent"):
                    break
                time.sleep(0.1)
            check("glm5-tiny" in d.js("return document.getElementById('model').textContent"),
                  "the page shows the served model")

            # Thinking on: reasoning arrives folded, then the answer, streamed.
            d.js("document.getElementById('max-tokens').value = '200'")
            # Every change to the conversation's text is counted: a streamed answer makes many.
            d.js("""window.updates = 0;
                new MutationObserver((ms) => { window.updates += ms.length; })
                  .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});""")
            d.s(f"/element/{d.find('#input')}/value", {"text": "And God said, Let there be light."})
            d.s(f"/element/{d.find('#send')}/click", {})
            seen, grew, done = [], False, False
            t0 = time.time()
            while time.time() - t0 < 60:
                state = d.js("""const m = document.querySelectorAll('.assistant');
                    const last = m[m.length - 1];
                    return last ? [last.querySelector('.reasoning div').textContent,
                                   last.querySelector('.answer').textContent,
                                   last.querySelector('.stats').textContent,
                                   last.querySelector('.reasoning').open,
                                   last.querySelector('.reasoning').hidden] : null;""")
                if state:
                    total = len(state[0]) + len(state[1])
                    if total > 0 and not state[2]:
                        grew = True  # text on the page before the turn ended
                    seen.append(total)
                    if state[2]:
                        done = True
                        break
                time.sleep(0.02)
            check(done, f"the turn ends with its stats: {state}")
            updates = d.js("return window.updates")
            # The tiny model answers in ~50 ms, faster than a look can catch it half done; the
            # page changing once per streamed piece is the evidence (a whole answer: 2 changes).
            check(updates > 10, f"text appeared while streaming ({updates} page updates; "
                                f"partial text seen: {grew}; lengths {seen[:4]}...{seen[-2:]})")
            check(state[0] and not state[4] and not state[3], "the reasoning is shown, folded")
            check("generated" in state[2], f"stats: {state[2]}")

            # Stop: a long answer is cut off and the page can be used again. The tiny model may
            # end a turn on its own within a second, so this tries a few times.
            d.js("document.getElementById('max-tokens').value = '100000'")
            metrics = f"http://127.0.0.1:{port}/metrics"

            def cancelled():
                text = urllib.request.urlopen(metrics).read().decode()
                return int(next(l.split()[1] for l in text.splitlines()
                                if l.startswith("glm5_requests_cancelled_total ")))

            stats, stopped_on_server = None, False
            for attempt in range(10):
                before = cancelled()
                d.s(f"/element/{d.find('#input')}/value", {"text": "Tell me everything, chapter by chapter."})
                d.s(f"/element/{d.find('#send')}/click", {})
                clicked = d.js("""const b = document.getElementById('stop');
                    if (b.hidden) return false; b.click(); return true;""")
                for _ in range(200):
                    if d.js("return document.getElementById('stop').hidden && !document.getElementById('input').disabled"):
                        break
                    time.sleep(0.05)
                stats = d.js("const s = document.querySelectorAll('.stats'); return s[s.length - 1].textContent")
                # The answer may have been complete on the server before the click landed; then
                # nothing is left to cancel, and another try is needed.
                for _ in range(40):
                    stopped_on_server = cancelled() > before
                    if stopped_on_server:
                        break
                    time.sleep(0.05)
                if clicked and stats == "stopped" and stopped_on_server:
                    break
            check(stats == "stopped", f"Stop ends the answer: {stats!r}")
            check(stopped_on_server, "the server cancelled the stopped request")
    finally:
        d.quit() if d.sid else None
        driver_proc.terminate()
        server.terminate()
        server.wait(timeout=30)
    print("chat page: all checks passed")


if __name__ == "__main__":
    main()
