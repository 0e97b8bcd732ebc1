"""Load on `codelm serve`: concurrent streaming clients, with dynamic batching and without.

    .venv/bin/python bench/serve.py [--run RUN] [--clients 32] [--seconds 60] [--max-tokens 64]

Starts `codelm serve` as a subprocess on 127.0.0.1 (a free port), twice: with dynamic
batching (--max-batch = clients) and one request at a time (--max-batch 1). Each time
`--clients` clients stream completions back to back for `--seconds` (and at most
`--max-requests` requests), then it prints requests/s, completion tokens/s, p50/p99 time
to first token and total latency, the errors (must be 0), the mean batch the model ran,
and the speed-up of batching. A third mode runs the same completions in this process
through `codelm.generate.complete`, one after another, with the same settings: what
`codelm generate` costs per token, against which the server's one-at-a-time tokens/s
are compared (the server decodes through the same engine, plus HTTP and scheduling).
Without --run it serves a random `tiny`-preset model with a tokenizer trained on part of
the standard library: speed does not depend on the weights.

Traffic goes to 127.0.0.1 only, bounded in time and count, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import httpx

PROMPTS = [
    "def fibonacci(n):\n",
    "class Stack:\n    def __init__(self):\n",
    "import os\n\n\ndef list_files(root):\n",
    "def is_palindrome(s):\n",
    "def merge_sorted(a, b):\n    out = []\n",
    "def parse_args(argv):\n",
    "for i in range(10):\n",
    "def read_json(path):\n",
]


def random_run(out: Path, vocab: int = 4096) -> Path:
    """A run directory with a random `tiny` model and a tokenizer trained on stdlib files."""
    import torch

    from codelm.fsutil import atomic_write_json
    from codelm.model import ModelConfig, Transformer
    from codelm.model.io import save_weights
    from codelm.tokenizer import train_tokenizer

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:150]
    tok = train_tokenizer((f.read_text(errors="replace") for f in files), vocab_size=vocab)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size)
    atomic_write_json(out / "config.json", {"model": cfg.to_dict()})
    save_weights(Transformer(cfg), out / "model.safetensors")
    tok.save(out / "tokenizer.json")
    return out


def start_server(run: Path, max_batch: int, clients: int, weights: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "codelm", "serve", str(run), "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--max-batch", str(max_batch), "--max-queue", str(4 * clients), "--timeout", "600"]
    cmd += ["--weights", weights]
    env = {k: v for k, v in os.environ.items() if k != "CODELM_API_KEY"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the server names its URL on stderr once it listens
        seen.append(line.strip())
        if found := re.search(r"at (http://127\.0\.0\.1:\d+)", line):
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, found.group(1)
    proc.kill()
    raise SystemExit("the server did not start: " + " | ".join(seen[-5:]))


async def client(
    http: httpx.AsyncClient, i: int, args: argparse.Namespace, stop_at: float, out: dict
) -> None:
    k = 0
    while time.monotonic() < stop_at and out["started"] < args.max_requests:
        out["started"] += 1
        body = {
            "prompt": PROMPTS[(i + k) % len(PROMPTS)],
            "max_tokens": args.max_tokens,
            "temperature": 0.2,
            "seed": i * 1000 + k,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        k += 1
        t0, first, tokens = time.perf_counter(), None, 0
        try:
            async with http.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    msg = json.loads(line[6:])
                    if "error" in msg:
                        raise RuntimeError(msg["error"]["message"])
                    if first is None and msg["choices"]:
                        first = time.perf_counter() - t0
                    if msg.get("usage"):
                        tokens = msg["usage"]["completion_tokens"]
        except Exception as e:  # counted, reported, and the run goes on
            out["errors"].append(f"{type(e).__name__}: {e}")
            continue
        out["ttft"].append(first if first is not None else float("nan"))
        out["latency"].append(time.perf_counter() - t0)
        out["tokens"] += tokens


def tally() -> dict:
    return {"started": 0, "errors": [], "ttft": [], "latency": [], "tokens": 0}


async def load(url: str, args: argparse.Namespace) -> dict:
    out = tally()
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600), limits=limits) as http:
        warm = argparse.Namespace(**{**vars(args), "max_tokens": 4})
        await client(http, 0, warm, time.monotonic() + 1, tally())  # one short request, not counted
        t0 = time.monotonic()
        stop_at = t0 + args.seconds
        await asyncio.gather(*(client(http, i, args, stop_at, out) for i in range(args.clients)))
        out["elapsed"] = time.monotonic() - t0
        stats = (await http.get("/health")).json()["stats"]
    out["mean_batch"] = stats["rows_stepped"] / max(stats["steps"], 1)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def summarize(name: str, r: dict) -> dict:
    done = len(r["latency"])
    row = {
        "mode": name,
        "requests": done,
        "errors": len(r["errors"]),
        "req_per_s": done / r["elapsed"],
        "tokens_per_s": r["tokens"] / r["elapsed"],
        "ttft_p50_ms": 1000 * pct(r["ttft"], 50),
        "ttft_p99_ms": 1000 * pct(r["ttft"], 99),
        "latency_p50_ms": 1000 * pct(r["latency"], 50),
        "latency_p99_ms": 1000 * pct(r["latency"], 99),
        "mean_batch": r["mean_batch"],
    }
    if r["errors"]:
        row["first_errors"] = r["errors"][:3]
    return row


def run_generate(run: Path, args: argparse.Namespace) -> dict:
    """The same completions, one after another, through `complete` in this process."""
    from codelm.generate import SamplingConfig, StopConfig, complete, load_run

    model, tok = load_run(run, weights=args.weights)
    stops = StopConfig(block_end=False, max_repeats=0)  # the API's defaults
    out, k = tally(), 0
    complete(
        model,
        tok,
        PROMPTS[0],
        SamplingConfig(max_new_tokens=4, repetition_penalty=1.0, dry_multiplier=0.0),
        stops,
    )  # warm
    t0 = time.monotonic()
    while time.monotonic() < t0 + args.seconds and k < args.max_requests:
        cfg = SamplingConfig(
            temperature=0.2,
            max_new_tokens=args.max_tokens,
            seed=k,
            repetition_penalty=1.0,
            dry_multiplier=0.0,
        )
        t = time.perf_counter()
        done = complete(model, tok, PROMPTS[k % len(PROMPTS)], cfg, stops)
        out["latency"].append(time.perf_counter() - t)
        out["ttft"].append(float("nan"))
        out["tokens"] += len(done.tokens)
        k += 1
    out["elapsed"], out["mean_batch"] = time.monotonic() - t0, 1.0
    return out


def run_mode(run: Path, max_batch: int, args: argparse.Namespace) -> dict:
    proc, url = start_server(run, max_batch, args.clients, args.weights)
    try:
        return asyncio.run(load(url, args))
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a server `start_server` started: politely, then for good after 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="a run directory (default: a random tiny model)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0, help="per mode")
    ap.add_argument("--max-requests", type=int, default=100_000, help="per mode, a hard bound")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--weights", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    from common import machine  # bench/, the script's own folder, is on sys.path

    print(machine())
    with tempfile.TemporaryDirectory(prefix="codelm-bench-serve-") as tmp:
        run = Path(args.run) if args.run else random_run(Path(tmp))
        print(
            f"{args.clients} streaming clients x {args.seconds:.0f} s per mode, max_tokens {args.max_tokens}"
        )
        rows = [summarize("dynamic batching", run_mode(run, args.clients, args))]
        rows.append(summarize("one at a time", run_mode(run, 1, args)))
        rows.append(summarize("codelm generate", run_generate(run, args)))
    cols = ["req_per_s", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms"]
    print(f"{'mode':<18}{'requests':>9}{'errors':>7}" + "".join(f"{c:>16}" for c in cols) + f"{'batch':>7}")
    for r in rows:
        cells = "".join(f"{r[c]:>16,.1f}" for c in cols)
        print(f"{r['mode']:<18}{r['requests']:>9}{r['errors']:>7}{cells}{r['mean_batch']:>7.1f}")
    speedup = rows[0]["req_per_s"] / max(rows[1]["req_per_s"], 1e-9)
    print(f"dynamic batching speed-up (requests/s): {speedup:.2f}x")
    per_token = rows[1]["tokens_per_s"] / max(rows[2]["tokens_per_s"], 1e-9)
    print(f"server one at a time / codelm generate (tokens/s): {per_token:.2f}x")
    for r in rows:
        for e in r.get("first_errors", []):
            print(f"error ({r['mode']}): {e}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"modes": rows, "speedup": speedup, "args": vars(args)}, indent=2)
        )
    if any(r.get("errors") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
