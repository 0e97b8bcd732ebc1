"""Load test and soak of `codelm serve`: streaming clients, malformed requests, clients that hang up.

    .venv/bin/python bench/serve_load.py [--run RUN] [--clients 64] [--seconds 120] [--minutes 30]
                                         [--max-batch 16] [--json OUT]

Starts `codelm serve` as a subprocess on 127.0.0.1 (bench/serve.py's helpers; a random `tiny`
model without --run); `--clients` asyncio clients send requests back to back: a warm-up
(`--warmup` s, then on until the server's prompt cache is 90% full and its memory grew under
1% in 30 s, at most `--warmup-max` s: the cache filling up and the heap reaching its working
size do not count),
then the measured `--seconds` (`--minutes 30`: the soak). 80% of the requests are streamed
completions, prompts of mixed lengths (8 characters to past the context, whose end the
server keeps); 10% are malformed (bad JSON, wrong types,
unknown fields, negative max_tokens, a prompt over the limit, a wrong content type, ...);
10% hang up mid-stream (after one to three events; a quarter after 5-100 ms, most of
those before the answer starts).

It prints p50/p95/p99/min/max of the time to first token, of the time per token after the
first (each request's mean) and of the gaps between streamed events (one event may carry
several tokens: drafting); requests/s and completion tokens/s of the good requests; the
errors by kind; the server's RSS after the warm-up, at its peak and at the end. Then the
goals, PASS or FAIL (exit status 1 if one fails): no 5xx and no error event in a stream;
every malformed request answered by a 4xx with a one-line JSON message; no 4xx to a good
request and no transport error; every hung-up request's slot freed (/health: active 0 and
queue_depth 0 within `--drain` s, the scheduler counted the cancellations and accounts for
every job: submitted = completed + cancelled + timed out + errors); RSS growth under 5%
from the end of the warm-up (the prompt cache, 256 MB by default, fills during it; growth
that stops later is the heap's high-water mark, growth that goes on over `--minutes 30` a
leak); the server still up. Latency depends on the machine, the load beside it and
--max-batch: compare runs of the same settings on the same machine. Traffic goes to
127.0.0.1 only, bounded in time and count; the server is stopped at the end, on Ctrl-C
and on an error too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import random
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import machine, rss_kib
from serve import pct, random_run, start_server, stop_server  # bench/ is on sys.path

JSON = "application/json"
MAX_PROMPT_CHARS = 200_000  # ServeConfig's default, which start_server leaves as it is
SERVER_ERRORS = ("server_5xx", "server_error_event")
GOLDEN = (5**0.5 - 1) / 2
ENDS = ("completed", "cancelled", "timed_out", "errors")  # how a scheduler job ends


@dataclass
class Plan:
    """What the clients send: the settings, the server's context, and text to cut prompts from."""

    args: argparse.Namespace
    source: str
    context: int = 256


@dataclass
class Tally:
    started: int = 0
    served: int = 0  # good requests streamed to [DONE]
    tokens: int = 0  # their completion tokens
    prompt_tokens: list[int] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    per_token: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    malformed: int = 0
    malformed_ok: int = 0  # answered by a 4xx with a one-line JSON message
    disconnects: int = 0  # hung up mid-stream, after some events
    early_disconnects: int = 0  # hung up before the answer started
    ended_first: int = 0  # meant to hang up, but the completion ended before
    errors: dict[str, list[str]] = field(default_factory=dict)

    def error(self, kind: str, message: str) -> None:
        self.errors.setdefault(kind, []).append(message[:300])


def prompt(rng: random.Random, plan: Plan) -> str:
    """A slice of library source, log-uniformly 8 characters to about four contexts long."""
    n = int(math.exp(rng.uniform(math.log(8), math.log(4 * plan.context))))
    start = rng.randrange(len(plan.source) - n)
    return plan.source[start : start + n]


def completion(rng: random.Random, text: str, max_tokens: int) -> dict[str, Any]:
    body = {"prompt": text, "max_tokens": max_tokens, "temperature": 0.8, "seed": rng.randrange(1 << 30)}
    return {**body, "stream": True, "stream_options": {"include_usage": True}}


def status_error(t: Tally, r: httpx.Response) -> None:
    kind = "server_5xx" if r.status_code >= 500 else "unexpected_4xx"
    t.error(kind, f"HTTP {r.status_code}: {r.text[:200]}")


async def good(http: httpx.AsyncClient, rng: random.Random, plan: Plan, t: Tally) -> None:
    """A streamed completion, read to [DONE]; times its events."""
    body = completion(rng, prompt(rng, plan), rng.randint(8, plan.args.max_tokens))
    t0, stamps, usage, done = time.perf_counter(), [], None, False
    async with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return status_error(t, r)
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                msg = json.loads(line[6:])
                if "error" in msg:
                    return t.error("server_error_event", msg["error"]["message"])
                if msg["choices"]:
                    stamps.append(time.perf_counter())
                usage = msg.get("usage") or usage
    if not done or usage is None or not stamps:
        return t.error("transport", "the stream ended without its usage and [DONE]")
    n = usage["completion_tokens"]
    t.served, t.tokens = t.served + 1, t.tokens + n
    t.prompt_tokens.append(usage["prompt_tokens"])
    t.ttft.append(stamps[0] - t0)
    t.gaps += [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    if n > 1 and len(stamps) > 1:
        t.per_token.append((stamps[-1] - stamps[0]) / (n - 1))


async def hang_up(http: httpx.AsyncClient, rng: random.Random, plan: Plan, t: Tally, early: bool) -> None:
    """A long completion whose client closes the connection after 1-3 events, or (`early`)
    after 5-100 ms, usually before the first event: a slot or a queue place to free."""
    body = completion(rng, prompt(rng, plan)[-200:], 256)
    want, seen, ended = rng.randint(1, 3), 0, False

    async def read() -> None:
        nonlocal seen, ended
        async with http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return status_error(t, r)
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    choices = json.loads(line[6:])["choices"]
                    ended = any(c["finish_reason"] for c in choices)
                    seen += 1
                    if ended or seen >= want:
                        return  # leaving `stream` unread closes the connection

    with contextlib.suppress(TimeoutError):  # the timeout is the hang-up itself
        await (asyncio.wait_for(read(), rng.uniform(0.005, 0.1)) if early else read())
    if ended:
        t.ended_first += 1
    elif seen:
        t.disconnects += 1
    else:
        t.early_disconnects += 1


def bad_body(rng: random.Random) -> tuple[str, bytes, str]:
    """A malformed request: (what is wrong, body, content type)."""
    ok = {"prompt": "def f(x):", "max_tokens": 8, "stream": rng.random() < 0.5}
    dump = lambda **kw: json.dumps({**ok, **kw}).encode()
    kinds = {
        "bad_json": lambda: (b'{"prompt": "def f(x):", "max_tokens": ', JSON),
        "not_utf8": lambda: (b'\xff\xfe{"prompt": 1}', JSON),
        "not_an_object": lambda: (b'["def f(x):"]', JSON),
        "wrong_type": lambda: (dump(max_tokens="8"), JSON),
        "wrong_prompt_type": lambda: (dump(prompt={"text": "x"}), JSON),
        "unknown_field": lambda: (dump(max_tokenz=8), JSON),
        "negative_max_tokens": lambda: (dump(max_tokens=-rng.randint(1, 100)), JSON),
        "nan_temperature": lambda: (b'{"prompt": "x", "temperature": NaN}', JSON),
        "token_id_out_of_range": lambda: (dump(prompt=[1, 10**9]), JSON),
        "huge_prompt": lambda: (dump(prompt="x" * (MAX_PROMPT_CHARS + 1)), JSON),
        "wrong_content_type": lambda: (dump(), "text/plain"),
        "no_content_type": lambda: (dump(), ""),
    }
    name = rng.choice(sorted(kinds))
    return (name, *kinds[name]())


def one_line_error(r: httpx.Response) -> bool:
    try:
        message = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(message, str) and bool(message) and "\n" not in message and "Traceback" not in message


async def malformed(http: httpx.AsyncClient, rng: random.Random, t: Tally) -> None:
    name, body, ctype = bad_body(rng)
    t.malformed += 1
    r = await http.post("/v1/completions", content=body, headers={"content-type": ctype})
    if r.status_code >= 500:
        status_error(t, r)
    elif 400 <= r.status_code < 500 and one_line_error(r):
        t.malformed_ok += 1
    else:
        t.error("malformed_not_4xx", f"{name}: HTTP {r.status_code}: {r.text[:200]}")


async def client(http: httpx.AsyncClient, i: int, plan: Plan, stop_at: float, t: Tally) -> None:
    a = plan.args
    rng = random.Random(a.seed * 100_003 + i)
    while time.monotonic() < stop_at and t.started < a.max_requests:
        # Kinds by a Weyl sequence over the requests in the order they start, not by chance:
        # the shares hold exactly, even in a short run, and a few requests already mix all kinds.
        x = (t.started * GOLDEN) % 1.0
        t.started += 1
        try:
            if x < a.malformed:
                await malformed(http, rng, t)
            elif x < a.malformed + a.disconnect:
                await hang_up(http, rng, plan, t, early=x < a.malformed + a.disconnect / 4)
            else:
                await good(http, rng, plan, t)
        except httpx.HTTPError as e:  # counted, reported, and the run goes on
            t.error("transport", f"{type(e).__name__}: {e}")


async def wait_idle(http: httpx.AsyncClient, seconds: float) -> tuple[bool, dict[str, Any]]:
    """Poll /health until no row runs and none waits (True), or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while True:
        health = (await http.get("/health")).json()
        if health["active"] == 0 and health["queue_depth"] == 0:
            return True, health
        if time.monotonic() > deadline:
            return False, health
        await asyncio.sleep(0.1)


async def phase(http: httpx.AsyncClient, plan: Plan, seconds: float, t: Tally) -> float:
    """All clients for `seconds` (then each finishes its request); the seconds it took."""
    t0 = time.monotonic()
    await asyncio.gather(*(client(http, i, plan, t0 + seconds, t) for i in range(plan.args.clients)))
    return time.monotonic() - t0


async def cache_fill(http: httpx.AsyncClient) -> float:
    """How full the server's prompt cache is (1.0 when it has none): it fills once, then
    recycles its bytes, so memory judged before it is full would count the cache as growth."""
    cache = (await http.get("/health")).json().get("prompt_cache")
    return 1.0 if not cache else cache["bytes"] / max(cache["max_bytes"], 1)


async def warm_up(http: httpx.AsyncClient, plan: Plan, pid: int) -> Tally:
    """The load for `--warmup` s, then in 5 s rounds until the prompt cache is 90% full and
    RSS grew under 1% over the last 30 s (the heap has reached its working size; before it
    does, growth is the allocator settling, not a leak), or `--warmup-max` s."""
    a, t, spent, seen = plan.args, Tally(), 0.0, collections.deque(maxlen=7)
    while True:
        spent += await phase(http, plan, min(a.warmup, 5.0) if spent else a.warmup, t)
        await wait_idle(http, a.drain)
        rss, fill = rss_kib(pid), await cache_fill(http)
        seen.append(rss)
        steady = len(seen) == seen.maxlen and rss < 1.01 * seen[0]  # 6 rounds: 30 s
        if (steady and fill >= 0.9) or spent >= a.warmup_max:
            break
    print(
        f"warm-up: {spent:.0f} s, {t.started} requests, prompt cache {fill:.0%} full, "
        f"server RSS {rss / 1024:,.0f} MiB"
    )
    return t


async def sample_rss(pid: int, out: list[int]) -> None:
    while True:
        out.append(rss_kib(pid))
        await asyncio.sleep(1.0)


async def load(url: str, pid: int, plan: Plan) -> dict[str, Any]:
    """Warm-up, the measured load with RSS sampled each second, then the drain and its checks."""
    args, n = plan.args, plan.args.clients
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60), limits=limits) as http:
        plan.context = (await http.get("/v1/models")).json()["data"][0]["context_length"]
        t = Tally(errors=(await warm_up(http, plan, pid)).errors)  # its errors count too
        start = (await http.get("/health")).json()
        before = start["stats"]
        rss: list[int] = []
        sampler = asyncio.create_task(sample_rss(pid, rss))
        try:
            elapsed = await phase(http, plan, args.seconds, t)
        finally:
            sampler.cancel()
        idle, health = await wait_idle(http, args.drain)
        rss.append(rss_kib(pid))
    after = health["stats"]
    delta = {k: after[k] - before[k] for k in after}
    heap = [h["heap"] for h in (start, health)]  # None where the server has no glibc
    r = {"elapsed": elapsed, "tally": t, "idle": idle, "health": health, "stats": delta, "rss": rss}
    return {**r, "heap": heap}


def spread(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/min/max in milliseconds (nan without values)."""
    ms = sorted(1000 * v for v in values) or [math.nan]
    return {"p50": pct(ms, 50), "p95": pct(ms, 95), "p99": pct(ms, 99), "min": ms[0], "max": ms[-1]}


def goals(r: dict[str, Any]) -> dict[str, bool]:
    t, stats, errors = r["tally"], r["stats"], r["tally"].errors
    ends = sum(stats[k] for k in ENDS)
    return {
        "no server error (5xx, error event)": not any(errors.get(k) for k in SERVER_ERRORS),
        "malformed requests answered 4xx, one-line message": t.malformed_ok == t.malformed,
        "no 4xx to a good request, no transport error": not errors.get("unexpected_4xx")
        and not errors.get("transport"),
        # A hung-up row that reached its end just before the server saw the hang-up counts as
        # completed, not cancelled: rare (256 tokens asked), so most must be cancelled.
        "hung-up requests cancelled, slots freed": r["idle"]
        and stats["cancelled"] >= 0.9 * t.disconnects
        and stats["submitted"] == ends,
        "server RSS growth < 5%": r["rss"][-1] < 1.05 * r["rss"][0],
        "server alive": r["alive"],
    }


def run_load(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Serve `run`, load it, check it; the server is stopped whatever happens."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[150:]  # not the tokenizer's
    plan = Plan(args, "\n".join(f.read_text(errors="replace") for f in files))
    proc, url = start_server(run, args.max_batch, args.clients, args.weights)
    try:
        r = asyncio.run(load(url, proc.pid, plan))
        r["alive"] = proc.poll() is None and r["health"]["status"] == "ok"
    finally:
        stop_server(proc)
    r["goals"] = goals(r)
    return r


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """The results as a JSON-able dict."""
    t: Tally = r["tally"]
    rss = {"start": r["rss"][0] / 1024, "peak": max(r["rss"]) / 1024, "end": r["rss"][-1] / 1024}
    tenths = [r["rss"][min(len(r["rss"]) - 1, len(r["rss"]) * k // 10)] / 1024 for k in range(11)]
    return {
        **{k: getattr(t, k) for k in ("started", "served", "tokens", "malformed", "malformed_ok")},
        **{k: getattr(t, k) for k in ("disconnects", "early_disconnects", "ended_first")},
        "seconds": r["elapsed"],
        "req_per_s": t.served / r["elapsed"],
        "tokens_per_s": t.tokens / r["elapsed"],
        "ttft_ms": spread(t.ttft),
        "per_token_ms": spread(t.per_token),
        "event_gap_ms": spread(t.gaps),
        "prompt_tokens": {"p50": pct(t.prompt_tokens, 50), "max": max(t.prompt_tokens, default=0)},
        "errors": {k: len(v) for k, v in t.errors.items()},
        "first_errors": {k: v[:3] for k, v in t.errors.items()},
        "scheduler": r["stats"],
        "idle_after_load": r["idle"],
        "rss_mib": rss,
        "rss_tenths_mib": tenths,  # at each tenth of the run: growth that flattens is no leak
        # glibc's heap after the warm-up and at the end: a leak grows the bytes in use; holes
        # left between allocations of every size (fragmentation) grow the free bytes
        "heap_mib": [None if h is None else {k: v / 2**20 for k, v in h.items()} for h in r["heap"]],
        "goals": r["goals"],
    }


def show(out: dict[str, Any]) -> None:
    print(
        f"{out['started']} requests in {out['seconds']:.1f} s: {out['served']} served to [DONE], "
        f"{out['malformed']} malformed, {out['disconnects']} hung up mid-stream, "
        f"{out['early_disconnects']} before the answer, {out['ended_first']} ended before the hang-up"
    )
    print(
        f"throughput: {out['req_per_s']:,.1f} requests/s, {out['tokens_per_s']:,.1f} completion tokens/s; "
        f"prompt tokens p50 {out['prompt_tokens']['p50']}, max {out['prompt_tokens']['max']}"
    )
    for name in ("ttft_ms", "per_token_ms", "event_gap_ms"):
        print(f"{name:<14}" + "  ".join(f"{k} {v:,.1f}" for k, v in out[name].items()))
    s = out["scheduler"]
    print(
        f"scheduler: {s['submitted']} jobs, " + ", ".join(f"{s[k]} {k}" for k in ENDS) + ", mean batch "
        f"{s['rows_stepped'] / max(s['steps'], 1):.1f}"
    )
    print("errors: " + (", ".join(f"{k} {n}" for k, n in out["errors"].items()) or "none"))
    print("".join(f"  {k}: {m}\n" for k, ms in out["first_errors"].items() for m in ms), end="")
    rss = out["rss_mib"]
    growth = 100 * (rss["end"] / rss["start"] - 1)
    print("server RSS (MiB): " + "  ".join(f"{k} {v:,.1f}" for k, v in rss.items()) + f" ({growth:+.1f}%)")
    print("  at each tenth of the run: " + " ".join(f"{v:,.0f}" for v in out["rss_tenths_mib"]))
    if None not in out["heap_mib"]:
        a, b = out["heap_mib"]
        used, free = (f"{a[k]:,.1f} -> {b[k]:,.1f}" for k in ("in_use", "free"))
        print(f"  glibc heap (MiB): in use {used}, free inside it {free}")
    for goal, ok in out["goals"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {goal}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="a run directory (default: a random tiny model)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=120.0, help="the measured load, after the warm-up")
    ap.add_argument("--minutes", type=float, default=None, help="the same in minutes: 30 for the soak")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds at least (see the docstring)")
    ap.add_argument("--warmup-max", type=float, default=300.0, help="seconds of warm-up at most")
    ap.add_argument("--drain", type=float, default=30.0, help="seconds the server gets to go idle")
    ap.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    ap.add_argument("--max-tokens", type=int, default=64, help="good requests ask for 8 to this")
    ap.add_argument("--malformed", type=float, default=0.1, help="share of malformed requests")
    ap.add_argument("--disconnect", type=float, default=0.1, help="share of requests that hang up")
    ap.add_argument("--max-requests", type=int, default=1_000_000, help="a hard bound per phase")
    ap.add_argument("--weights", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.minutes is not None:
        args.seconds = 60 * args.minutes
    return args


def main() -> None:
    args = parse_args()
    print(machine())
    print(f"{args.clients} clients x {args.seconds:.0f} s after a warm-up; --max-batch {args.max_batch}")
    with tempfile.TemporaryDirectory(prefix="codelm-bench-serve-load-") as tmp:
        run = Path(args.run) if args.run else random_run(Path(tmp))
        out = summarize(run_load(run, args))
    show(out)
    if args.json:
        Path(args.json).write_text(json.dumps({**out, "args": vars(args)}, indent=2))
    if not all(out["goals"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
