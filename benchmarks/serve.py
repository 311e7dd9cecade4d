"""Serving throughput and latency, batched vs one at a time: `python -m benchmarks.serve`.

Starts `python -m apps.serve` twice on loopback ports: as users run it (up to 32 answers share
each step of the sampling loop) and with --max-batch 1 (answers one at a time, the others queue),
on the same model. For 1, 8 and 32 concurrent streaming clients it reports requests/s, tokens/s,
and the median and 95th percentile of the time to the first token and of the whole request.
The two servers take turns for each client count, so load from elsewhere on a shared machine
slows both alike. Bounded: each measurement stops starting requests after --seconds.

The model is --model DIR, or by default a randomly initialised model at the tiny preset's size
(4 layers, width 128, 4096-token vocabulary): its answers rarely end early, so every request
does about the same work (--max-tokens tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

try:  # the HTTP client the openai package brings: httpx2 in its current releases, httpx before
    import httpx2 as httpx
except ImportError:
    import httpx


def tiny_preset_model(out: Path) -> Path:
    """A random model at the tiny preset's size with a BPE trained on Python's own docs."""
    from pydoc_data.topics import topics

    from pipeline.config.loader import load_config
    from pipeline.lm.model import build_model
    from pipeline.lm.tokenizer import train_tokenizer

    cfg = load_config("configs/tiny.yaml")
    tok = train_tokenizer([topics[k] for k in sorted(topics)], vocab_size=cfg.tokenizer.vocab_size)
    model = build_model(cfg.model, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@contextmanager
def server(model: Path, *args: str):
    cmd = [sys.executable, "-m", "apps.serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://\S+/", line)
        if not match:
            raise SystemExit(f"the server did not start: {line!r}")
        yield match.group(0).rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def one_request(http, url: str, body: dict) -> tuple[float, float, int]:
    """(seconds to the first token, seconds to the end, tokens) of one streamed answer."""
    start = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and any(c.get("finish_reason") or c["delta"].get("content")
                                       for c in chunk["choices"]):
                first = time.perf_counter() - start
    end = time.perf_counter() - start
    return first if first is not None else end, end, tokens


async def measure(url: str, clients: int, seconds: float, max_tokens: int) -> tuple[list, float]:
    """Each client sends streaming requests back to back until `seconds` have passed:
    ([(ttft, latency, tokens) per request], wall seconds)."""
    model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "Explain what len does in Python."}],
            "max_tokens": max_tokens, "temperature": 1.0, "stream": True, "stream_options": {"include_usage": True}}
    results, deadline = [], time.perf_counter() + seconds

    async def client(http):
        while time.perf_counter() < deadline:
            results.append(await one_request(http, url, body))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await one_request(http, url, {**body, "max_tokens": 2})  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return results, time.perf_counter() - start


def summary(clients: int, results: list, wall: float) -> dict:
    ttft, latency = [r[0] for r in results], [r[1] for r in results]
    return {"clients": clients, "requests": len(results), "seconds": wall,
            "requests_per_s": len(results) / wall, "tokens_per_s": sum(r[2] for r in results) / wall,
            "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
            "latency_p50": percentile(latency, 50), "latency_p95": percentile(latency, 95)}


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model directory (default: a random model at the tiny preset's size)")
    ap.add_argument("--clients", default="1,8,32", help="concurrent streaming clients, comma-separated")
    ap.add_argument("--seconds", type=float, default=8.0,
                    help="per measurement, over its rounds: no new requests after this")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per measurement (default 2)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else tiny_preset_model(Path(tmp) / "bench")
        rows = []
        with server(model, "--max-batch", "32") as batched, server(model, "--max-batch", "1") as sequential:
            for clients in [int(c) for c in args.clients.split(",")]:
                runs = {"batched": ([], 0.0), "one at a time": ([], 0.0)}
                for _ in range(args.rounds):  # the two servers take turns: shared-machine load hits both
                    for name, url in (("batched", batched), ("one at a time", sequential)):
                        results, wall = asyncio.run(measure(url, clients, args.seconds / args.rounds,
                                                            args.max_tokens))
                        runs[name] = (runs[name][0] + results, runs[name][1] + wall)
                for name, (results, wall) in runs.items():
                    row = {"server": name, **summary(clients, results, wall)}
                    rows.append(row)
                    print(f"{clients:3d} clients  {name:13s} {row['requests']:4d} requests  "
                          f"{row['requests_per_s']:6.1f} req/s  {row['tokens_per_s']:7.0f} tokens/s  "
                          f"TTFT p50 {row['ttft_p50'] * 1000:6.0f} ms  p95 {row['ttft_p95'] * 1000:6.0f} ms  "
                          f"latency p50 {row['latency_p50'] * 1000:6.0f} ms  p95 {row['latency_p95'] * 1000:6.0f} ms",
                          flush=True)
                pair = rows[-2:]
                print(f"{'':16s}batched / one at a time: {pair[0]['tokens_per_s'] / pair[1]['tokens_per_s']:.2f}x "
                      "tokens/s", flush=True)
    print(f"({args.max_tokens} tokens per answer, {args.seconds:g} s per measurement, loopback, "
          f"{os.cpu_count()} CPUs; model: {args.model or 'random, tiny preset size'})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
