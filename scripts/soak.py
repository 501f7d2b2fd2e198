#!/usr/bin/env python3
"""Soak test for `glm5 serve` (standard library only): mixed traffic from many clients for a
bounded time, then one JSON line with the outcome.

Each client loops over random scenarios: chat (plain, streamed, forced tool call), completions
(streamed), the Responses API (streamed), Anthropic messages, a client that disconnects
mid-stream, an oversize body (413 expected), malformed JSON (400 expected). Reported: requests
and unexpected outcomes per scenario, the server's RSS after warm-up (first 20% of the run) as
min/max and growth, and whether every sequence was freed at the end (/metrics running and
queued back to 0, cancelled requests counted).

    python3 scripts/soak.py --bin target/release/glm5 --clients 32 --secs 3600 \\
        [--model bench/weights/glm5-bench --tokenizer models/glm5-tiny]
"""
import argparse
import http.client
import json
import random
import socket
import subprocess
import threading
import time
import urllib.request

TOOLS = [{"type": "function", "function": {"name": "get_verse", "parameters": {"type": "object",
          "properties": {"book": {"type": "string"}, "chapter": {"type": "integer"}}}}}]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, path, body, stream=False, disconnect=False, raw=None):
    """(status, ok-to-the-end) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    data = raw if raw is not None else json.dumps(body)
    conn.request("POST", path, data, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if disconnect:
        r.read(64)
        conn.sock.close()
        return r.status, True
    text = r.read().decode(errors="replace")
    conn.close()
    if r.status != 200:
        return r.status, True
    if stream:
        return r.status, ("[DONE]" in text or "message_stop" in text or "response.completed" in text
                          or "response.incomplete" in text)
    json.loads(text)
    return r.status, True


def scenarios(max_body):
    user = [{"role": "user", "content": "And God said, Let there be light."}]
    return {
        "chat": (lambda p: call(p, "/v1/chat/completions", {"messages": user, "max_tokens": 32}), 200),
        "chat_stream": (lambda p: call(p, "/v1/chat/completions",
                                       {"messages": user, "max_tokens": 32, "stream": True}, stream=True), 200),
        "chat_tool": (lambda p: call(p, "/v1/chat/completions",
                                     {"messages": user, "max_tokens": 48, "tools": TOOLS,
                                      "tool_choice": "required"}), 200),
        "completions_stream": (lambda p: call(p, "/v1/completions",
                                              {"prompt": "In the beginning", "max_tokens": 32, "stream": True},
                                              stream=True), 200),
        "responses_stream": (lambda p: call(p, "/v1/responses",
                                            {"input": "Read Genesis 1:3.", "max_output_tokens": 32,
                                             "stream": True}, stream=True), 200),
        "anthropic": (lambda p: call(p, "/v1/messages", {"messages": user, "max_tokens": 32}), 200),
        "disconnect": (lambda p: call(p, "/v1/chat/completions",
                                      {"messages": user, "max_tokens": 400, "stream": True}, disconnect=True), 200),
        "oversize": (lambda p: call(p, "/v1/chat/completions", None,
                                    raw='{"messages": [{"role": "user", "content": "' + "x" * (max_body + 10) + '"}]}'),
                     413),
        "malformed": (lambda p: call(p, "/v1/chat/completions", None, raw='{"messages": [}'), 400),
    }


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model")
    ap.add_argument("--tokenizer")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--secs", type=float, default=600)
    ap.add_argument("--server-log", default="soak-server.log", help="the server's stderr")
    a = ap.parse_args()
    port, max_body = free_port(), 1 << 20
    cmd = [a.bin, "serve", "--port", str(port), "--max-body", str(max_body), "--max-seqs", "16"]
    if a.model:
        cmd += ["--model", a.model]
    if a.tokenizer:
        cmd += ["--tokenizer", a.tokenizer]
    log = open(a.server_log, "w")
    server = subprocess.Popen(cmd, stderr=log)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            break
        except OSError:
            time.sleep(0.5)
    cases = scenarios(max_body)
    counts = {k: [0, 0] for k in cases}  # requests, unexpected
    examples = {}
    lock = threading.Lock()
    end = time.time() + a.secs

    def client(seed):
        rng = random.Random(seed)
        while time.time() < end:
            name = rng.choice(list(cases))
            fn, want = cases[name]
            try:
                status, ok = fn(port)
                bad = status != want or not ok
                why = f"HTTP {status}, complete={ok}"
            except Exception as e:  # a refused or broken connection is a failure too
                bad, why = True, repr(e)
            with lock:
                counts[name][0] += 1
                if bad:
                    counts[name][1] += 1
                    examples.setdefault(name, why)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    samples = []
    while any(t.is_alive() for t in threads):
        samples.append((time.time() - t0, rss_kb(server.pid)))
        time.sleep(5)
    for t in threads:
        t.join()
    # Every sequence freed: running and queued back to zero.
    freed, cancelled = False, None
    for _ in range(120):
        if server.poll() is not None:
            break
        if metric(port, "glm5_running_sequences") == 0 and metric(port, "glm5_queue_depth") == 0:
            freed = True
            cancelled = metric(port, "glm5_requests_cancelled_total")
            break
        time.sleep(0.5)
    warm = [kb for t, kb in samples if t >= 0.2 * a.secs] or [kb for _, kb in samples]
    out = {
        "secs": a.secs, "clients": a.clients,
        "requests": sum(c[0] for c in counts.values()),
        "unexpected": sum(c[1] for c in counts.values()),
        "per_scenario": counts, "examples": examples,
        "rss_after_warmup_mb": [round(min(warm) / 1024, 1), round(max(warm) / 1024, 1)],
        "rss_growth_pct": round(100 * (warm[-1] - warm[0]) / max(1, warm[0]), 2),
        "all_sequences_freed": freed,
        "cancelled": cancelled,
        "server_alive": server.poll() is None,
        "server_exit": server.poll(),
    }
    server.terminate()
    server.wait(timeout=60)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
