#!/usr/bin/env python3
"""Bounded loopback load test for `glm5 serve` (standard library only).

Streams `/v1/completions` requests with random token-id prompts (so any model works, even one
with random weights) and reports, as one JSON object per phase:

  single    one streaming client: decode tok/s of a single stream
  clients   N concurrent streaming clients: aggregate decode tok/s, and its ratio to single
  soak      M clients for S seconds, each sending request after request: requests, failures
  prefix    time to first token of a request with a P-token prefix, then of a second request
            sharing that prefix (prefix cache), and the ratio

    glm5 serve --model bench/weights/glm5-bench-q8_0.gguf --tokenizer models/glm5-tiny &
    python scripts/load_test.py --url http://127.0.0.1:8080 --clients 16 --soak-clients 32 --soak-secs 600
"""
import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse


def stream_completion(url, prompt, max_tokens, timeout=600):
    """One streaming /v1/completions request: (ok, first-token time, end time, tokens)."""
    u = urllib.parse.urlparse(url)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.7, "top_k": 40,
                       "stream": True, "logprobs": 0})
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return False, None, time.perf_counter(), 0, f"HTTP {r.status}: {r.read()[:200]!r}"
        first, tokens, done = None, 0, False
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                return False, first, time.perf_counter(), tokens, str(ev["error"])
            ch = ev["choices"][0]
            # One logprobs entry per sampled token (text may be empty for ids a borrowed
            # tokenizer cannot spell).
            if ch.get("logprobs"):
                tokens += len(ch["logprobs"]["tokens"])
                if first is None:
                    first = time.perf_counter()
        return done, first - t0 if first else None, time.perf_counter() - t0, tokens, None if done else "no [DONE]"
    except Exception as e:  # noqa: BLE001 - any failure counts as a failed request
        return False, None, time.perf_counter() - t0, 0, repr(e)
    finally:
        conn.close()


def prompt_ids(rng, n, vocab):
    return [rng.randrange(100, vocab) for _ in range(n)]


def run_clients(url, n, prompt_len, max_tokens, vocab, seed):
    """n clients at once, one request each; aggregate decode tok/s over the decode phase."""
    results = [None] * n
    rng = random.Random(seed)
    prompts = [prompt_ids(rng, prompt_len, vocab) for _ in range(n)]
    start = time.perf_counter()

    def go(i):
        results[i] = stream_completion(url, prompts[i], max_tokens)

    ts = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    failed = [r[4] for r in results if not r[0]]
    tokens = sum(r[3] for r in results)
    # Decode phase: from the last first token to the last end (all streams decoding together)
    # would undercount; use tokens after each stream's first over the whole window instead.
    firsts = [start + r[1] for r in results if r[1] is not None]
    ends = [start + r[2] for r in results]
    window = max(ends) - min(firsts) if firsts else float("nan")
    after_first = tokens - len(firsts)
    return {"clients": n, "tokens": tokens, "failed": len(failed), "errors": failed[:3],
            "wall_s": round(max(ends) - start, 2), "decode_window_s": round(window, 2),
            "aggregate_decode_tok_s": round(after_first / window, 2) if window > 0 else None,
            "mean_ttft_s": round(sum(r[1] for r in results if r[1]) / max(1, len(firsts)), 3)}


def soak(url, n, secs, prompt_len, max_tokens, vocab):
    stop = time.perf_counter() + secs
    counts = {"requests": 0, "failed": 0, "tokens": 0}
    errors = []
    lock = threading.Lock()

    def client(i):
        rng = random.Random(1000 + i)
        while time.perf_counter() < stop:
            ok, _, _, toks, err = stream_completion(url, prompt_ids(rng, rng.randrange(8, prompt_len + 1), vocab),
                                                    rng.randrange(8, max_tokens + 1))
            with lock:
                counts["requests"] += 1
                counts["tokens"] += toks
                if not ok:
                    counts["failed"] += 1
                    errors.append(err)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    el = time.perf_counter() - t0
    return {"clients": n, "seconds": round(el, 1), **counts, "errors": errors[:3],
            "tokens_per_s": round(counts["tokens"] / el, 2)}


def prefix(url, n, vocab):
    rng = random.Random(7)
    shared = prompt_ids(rng, n, vocab)
    a = stream_completion(url, shared + prompt_ids(rng, 16, vocab), 4)
    b = stream_completion(url, shared + prompt_ids(rng, 16, vocab), 4)
    return {"prefix_tokens": n, "first_ttft_s": round(a[1], 3), "second_ttft_s": round(b[1], 3),
            "speedup": round(a[1] / b[1], 1), "failed": int(not a[0]) + int(not b[0])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--soak-clients", type=int, default=32)
    ap.add_argument("--soak-secs", type=float, default=0, help="0 skips the soak phase")
    ap.add_argument("--prefix-tokens", type=int, default=2000, help="0 skips the prefix phase")
    ap.add_argument("--phases", default="single,clients,soak,prefix")
    a = ap.parse_args()
    phases = a.phases.split(",")
    out = {}
    if "single" in phases:
        out["single"] = run_clients(a.url, 1, a.prompt_tokens, a.max_tokens, a.vocab, 1)
        print(json.dumps({"single": out["single"]}), flush=True)
    if "clients" in phases:
        out["clients"] = run_clients(a.url, a.clients, a.prompt_tokens, a.max_tokens, a.vocab, 2)
        if "single" in out and out["single"]["aggregate_decode_tok_s"]:
            out["clients"]["vs_single"] = round(out["clients"]["aggregate_decode_tok_s"]
                                                / out["single"]["aggregate_decode_tok_s"], 2)
        print(json.dumps({"clients": out["clients"]}), flush=True)
    if "soak" in phases and a.soak_secs > 0:
        out["soak"] = soak(a.url, a.soak_clients, a.soak_secs, a.prompt_tokens, a.max_tokens, a.vocab)
        print(json.dumps({"soak": out["soak"]}), flush=True)
    if "prefix" in phases and a.prefix_tokens > 0:
        out["prefix"] = prefix(a.url, a.prefix_tokens, a.vocab)
        print(json.dumps({"prefix": out["prefix"]}), flush=True)


if __name__ == "__main__":
    main()
