"""Keystroke to ghost text through `codelm lsp`: held-out files retyped character by character.

    .venv/bin/python bench/lsp.py [--run runs/spec-small] [--files DIR] [--n-files 6] [--sites 2]
        [--lines 2] [--cps 6] [--fast 1] [--peer-url URL [--peer-model NAME]] [--quick] [--verbose]

(--quick: one trace of one line, about 30 s; the defaults: 12 traces, about 10 minutes.
A peer's API key comes from $CODELM_PEER_API_KEY, never the command line, which is printed.)

A trace opens a held-out Python file (default: the `rich` package, which no corpus here
reads) with `--lines` consecutive lines of a function body removed (one line holding their
indentation stays), then types them back a character at a time over stdio, as an editor
would: each keystroke an incremental `textDocument/didChange` and an automatic
`textDocument/inlineCompletion`, a still pending request cancelled (`$/cancelRequest`, as
VS Code does) when the next keystroke comes, Enter inserting the next line's indentation
(auto-indent). Pauses are real sleeps drawn from a typing model (`--cps` characters per
second on average, log-normal jitter, `--line-pause` more at a line's end; `--fast` divides
them), since debounce and cancellation are part of what is measured. The workspace is the
files' folder, indexed by the server for repository context.

Reported per setup: time from keystroke to ghost text (p50, p95) over the completions
shown, i.e. non-empty answers that arrived before the next keystroke; the share of
keystrokes that got one; the accept rate, the share of shown completions whose first line
is the file's real text up to the end of the line (or, for one that starts with a newline
at a line's end, whose next line is the real next line); the same with repository context
off (`workspace/didChangeConfiguration`, same traces, same server) and the gain; the first
line's similarity to the real one, context on minus off, paired over the keystrokes both
passes showed, with a 95% bootstrap interval (`paired_gain`); the share
of shown completions that duplicate the suffix; from the server's `codelm/stats`: the
share of requests cancelled, how fast cancelled generations stopped, and answers from
the suggestion cache (the same cursor again, or typing along a suggestion shown).
Setups, side by side in one run: `codelm lsp RUN` (the model in the server's process);
`codelm lsp --server URL` against a `codelm serve RUN` this bench starts (the HTTP path);
with --peer-url, the same against any OpenAI-compatible /v1/completions server.
Goals on 2 CPU cores with `small` int8: p50 <= 150 ms, p95 <= 400 ms, duplication <= 1%,
retrieval raises the accept rate. Shown completions are never accepted into the document,
so every setup types the same traces. The traces and the two measures of a shown
completion (`accepted`, `duplicates_suffix`) are pure functions in bench/lsp_traces.py;
the JSON-RPC client and a session's plumbing are bench/lsp_client.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lsp_client import Rpc, initialize_params, stop, wait_index, warm_up  # noqa: E402
from lsp_traces import (  # noqa: E402  (bench/lsp_traces.py)
    Key,
    Trace,
    accepted,
    after_insert,
    apply_edit,
    choose_traces,
    duplicates_suffix,
    from_utf16,
    ghost_of,
    similarity,
    utf16_len,
)
from serve import pct, start_server, stop_server  # noqa: E402  (bench/serve.py)

CANCELLED = -32800  # LSP's RequestCancelled


# ---------- replaying traces ----------


@dataclass
class Tally:
    """What one pass over the traces saw from the client's side, and the server's counters."""

    context: bool
    keys: int = 0
    shown: int = 0
    accepted: int = 0
    duplicated: int = 0
    empty: int = 0  # answered with no item before the next keystroke
    late: int = 0  # no answer before the next keystroke
    ends: int = 0  # keystrokes at a line's end, where the typist pauses
    ends_shown: int = 0
    cancels: int = 0  # $/cancelRequest sent
    cancel_acks: int = 0  # requests answered with RequestCancelled
    latency: list[float] = field(default_factory=list)
    similarity: list[float] = field(default_factory=list)  # of each shown first line to the real one
    by_key: dict[int, float] = field(default_factory=dict)  # the same, by keystroke of the pass
    errors: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def item_edit(item: dict, lines: list[str], cursor: tuple[int, int]) -> tuple[str, tuple, tuple]:
    """An inline completion item's text and range in code points (the cursor when it has none)."""
    insert = item.get("insertText", "")
    insert = insert.get("value", "") if isinstance(insert, dict) else insert
    rng = item.get("range")
    if not rng:
        return insert, cursor, cursor
    pos = [rng["start"], rng["end"]]
    start, end = ((p["line"], from_utf16(lines[p["line"]], p["character"])) for p in pos)
    return insert, start, end


def score(
    t: Tally, fut: asyncio.Future, t0: float, text: str, cursor: tuple[int, int], key: Key, verbose: bool
) -> None:
    """Count the answer to the request a keystroke sent, as seen when the next one comes."""
    if not fut.done():
        t.late += 1
        return
    if fut.exception() is not None:
        t.errors.append(str(fut.exception()))
        return
    arrived, msg = fut.result()
    if "error" in msg:
        t.errors.append(str(msg["error"]))
        return
    result = msg.get("result") or []
    items = result.get("items", []) if isinstance(result, dict) else result
    if not items:
        t.empty += 1
        return
    lines = text.split("\n")
    insert, start, end = item_edit(items[0], lines, cursor)
    ghost = None
    if start[0] == cursor[0] and start[1] <= cursor[1]:
        ghost = ghost_of(lines[cursor[0]], start[1], cursor[1], insert)
    ok = ghost is not None and accepted(ghost, key.rest, key.next_line)
    dup = duplicates_suffix(text, start, end, insert)
    t.shown += 1
    t.ends_shown += not key.rest
    t.accepted += ok
    t.similarity.append(similarity(ghost, key.rest, key.next_line) if ghost is not None else 0.0)
    t.by_key[t.keys] = t.similarity[-1]  # both passes type the same keys in the same order
    t.duplicated += dup
    t.latency.append(arrived - t0)
    if verbose:
        flags = ("accept " if ok else "") + ("DUP" if dup else "")
        print(f"    {1e3 * (arrived - t0):6.0f} ms {insert!r:50.50} real {key.rest!r:30.30} {flags}")


async def settle(sent: list[tuple[int, asyncio.Future]], t: Tally) -> None:
    """Wait for every request's answer; count RequestCancelled and other errors."""
    futs = [f for _, f in sent]
    await asyncio.wait(futs, timeout=60)
    for f in futs:
        if not f.done():
            t.errors.append("no answer within 60 s of the trace's end")
            f.cancel()
        elif f.exception() is None and "error" in f.result()[1]:
            err = f.result()[1]["error"]
            if err.get("code") == CANCELLED:
                t.cancel_acks += 1
            elif str(err) not in t.errors:
                t.errors.append(str(err))


async def replay(rpc: Rpc, trace: Trace, t: Tally, fast: float, verbose: bool) -> None:
    """Type one trace: per key, cancel the pending request, send the change, ask, wait the pause."""
    uri = Path(trace.path).as_uri()
    text, cursor = trace.start, trace.cursor
    doc = {"uri": uri, "languageId": "python", "version": 0, "text": text}
    rpc.notify("textDocument/didOpen", {"textDocument": doc})
    sent: list[tuple[int, asyncio.Future]] = []
    for version, key in enumerate(trace.keys, 1):
        if sent and not sent[-1][1].done():
            rpc.notify("$/cancelRequest", {"id": sent[-1][0]})
            t.cancels += 1
        t0 = time.perf_counter()
        at = {"line": cursor[0], "character": utf16_len(text.split("\n")[cursor[0]][: cursor[1]])}
        text = apply_edit(text, cursor, cursor, key.text)
        cursor = after_insert(cursor, key.text)
        change = {"range": {"start": at, "end": at}, "text": key.text}
        rpc.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": version}, "contentChanges": [change]},
        )
        here = {"line": cursor[0], "character": utf16_len(text.split("\n")[cursor[0]][: cursor[1]])}
        params = {"textDocument": {"uri": uri}, "position": here, "context": {"triggerKind": 2}}
        sent.append(rpc.request("textDocument/inlineCompletion", params))
        t.keys += 1
        t.ends += not key.rest
        await asyncio.sleep(max(0.0, t0 + key.pause / fast - time.perf_counter()))
        score(t, sent[-1][1], t0, text, cursor, key, verbose)
    if not sent[-1][1].done():  # the user moves on
        rpc.notify("$/cancelRequest", {"id": sent[-1][0]})
        t.cancels += 1
    rpc.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    await settle(sent, t)


# ---------- one server: start, warm up, two passes, stop ----------

COUNTERS = ("requests", "cache_hits", "cancelled", "superseded", "shown", "accepted")


async def session(cmd: list[str], traces: list[Trace], args: argparse.Namespace, log, env: dict) -> dict:
    """One server: warm up, index, then every trace with repository context on, then off."""
    env = {k: v for k, v in os.environ.items() if k != "CODELM_API_KEY"} | env
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=pipe, stdout=pipe, stderr=log, env=env, limit=1 << 24
    )
    settings = dict(args.settings)
    rpc = Rpc(proc, settings)
    try:
        await rpc.call("initialize", initialize_params(args.root, settings), timeout=600)
        rpc.notify("initialized", {})
        await warm_up(rpc, args.root)
        index, waited = await wait_index(rpc)
        passes = []
        for context in (True, False):
            rpc.settings = {**settings, "context": context}
            rpc.notify("workspace/didChangeConfiguration", {"settings": {"codelm": rpc.settings}})
            before = await rpc.call("codelm/stats")
            t = Tally(context)
            for trace in traces:
                if args.verbose:
                    print(f"  {Path(trace.path).name}:{trace.line + 1} context {'on' if context else 'off'}")
                await replay(rpc, trace, t, args.fast, args.verbose)
            after = await rpc.call("codelm/stats")
            t.stats = {**after, **{k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS}}
            passes.append(t)
        return {"passes": passes, "index": index, "index_s": waited}
    finally:
        await stop(rpc, proc)


# ---------- setups side by side, the table ----------


def run_setup(name: str, cmd: list[str], traces: list[Trace], args: argparse.Namespace, env: dict) -> dict:
    print(f"\n{name}: {shlex.join(cmd)}", flush=True)
    with tempfile.NamedTemporaryFile("w+", prefix="codelm-bench-lsp-", suffix=".log") as log:
        try:
            out = asyncio.run(session(cmd, traces, args, log, env))
        except Exception as e:
            log.seek(0)
            tail = "\n".join(log.read().splitlines()[-20:])
            raise SystemExit(f"{name} failed: {type(e).__name__}: {e}\nserver stderr:\n{tail}") from e
        log.seek(0)
        for line in log.read().splitlines():
            if line.startswith("codelm lsp:"):  # the server names its model and weights
                print(f"  {line}")
    index = out["index"]
    print(
        f"  index: {index.get('files', '?')} files, {index.get('chunks', '?')} chunks, {out['index_s']:.1f} s"
    )
    for t in out["passes"]:
        s = t.stats
        lat = s.get("latency_ms", {})
        print(
            f"  context {'on ' if t.context else 'off'}: {t.keys} keystrokes, {t.shown} shown,"
            f" {t.empty} empty, {t.late} late; {t.cancels} cancels sent,"
            f" {t.cancel_acks} answered RequestCancelled;"
            f" server: {s.get('requests')} requests, {s.get('superseded')} superseded,"
            f" {s.get('cancelled')} cancelled, {s.get('cache_hits')} cache hits,"
            f" latency p50 {lat.get('p50')} p95 {lat.get('p95')} ms"
        )
        for e in t.errors[:3]:
            print(f"  error: {e}")
    return out


def figures(r: dict) -> dict:
    """One setup's numbers: from the context-on pass, but the accept rate also without context."""
    on, off = r["passes"]
    s, cancel_stop = on.stats, on.stats.get("cancel_stop_ms") or {}
    rate = lambda t: t.accepted / t.shown if t.shown else float("nan")  # noqa: E731
    requests = max(s.get("requests", 0), 1)
    return {
        "p50 ms": 1e3 * pct(on.latency, 50),
        "p95 ms": 1e3 * pct(on.latency, 95),
        "shown": on.shown / max(on.keys, 1),
        "at ends": on.ends_shown / max(on.ends, 1),
        "accept": rate(on),
        "no ctx": rate(off),
        "gain": rate(on) - rate(off),
        "sim": sum(on.similarity) / max(len(on.similarity), 1),
        "sim no ctx": sum(off.similarity) / max(len(off.similarity), 1),
        "dup": on.duplicated / max(on.shown, 1),
        "cancelled": s.get("cancelled", 0) / requests,
        "stop ms": f"{cancel_stop['p50']:.0f}/{cancel_stop['p95']:.0f}" if cancel_stop.get("n") else "-",
        "cache hits": s.get("cache_hits", 0) / requests,
    }


def paired_gain(on: Tally, off: Tally, draws: int = 2000) -> tuple[int, float, float, float]:
    """Context on minus off, first-line similarity, over the keystrokes both passes showed a
    suggestion for: (their count, the mean difference, a 95% bootstrap interval). Each
    pass shows a different set (a late answer is not shown), so the two means above differ
    by that too; pairing leaves only what the context changed."""
    diffs = np.array([on.by_key[k] - off.by_key[k] for k in on.by_key.keys() & off.by_key.keys()])
    if not len(diffs):
        return 0, float("nan"), float("nan"), float("nan")
    means = np.random.default_rng(0).choice(diffs, (draws, len(diffs))).mean(axis=1)
    return len(diffs), float(diffs.mean()), *map(float, np.percentile(means, [2.5, 97.5]))


def table(results: dict[str, dict]) -> None:
    rows = {name: figures(r) for name, r in results.items()}
    cols = list(next(iter(rows.values())))
    width = max(map(len, rows)) + 2
    print("\n" + "setup".ljust(width) + "".join(f"{c:>11}" for c in cols))
    for name, f in rows.items():
        cells = [f"{v:.0f}" if c.endswith("ms") and isinstance(v, float) else v for c, v in f.items()]
        cells = [f"{100 * v:+.1f} pt" if c == "gain" else v for c, v in zip(cols, cells, strict=True)]
        cells = [f"{v:.1%}" if isinstance(v, float) else v for v in cells]
        print(name.ljust(width) + "".join(f"{c:>11}" for c in cells))
    print(
        "p50/p95: keystroke to ghost text, over shown completions; shown: of keystrokes (at ends: of"
        " those at a line's end); accept: of shown, context on (no ctx: off); dup: suffix duplicated,"
        " of shown; sim: mean similarity of a shown first line to the real one (difflib ratio, in %);"
        " cancelled, cache hits: of the server's requests; stop ms: p50/p95 from a cancel to"
        " the generation's end (the server's, warm-up included)"
    )
    for name, r in results.items():
        n, mean, lo, hi = paired_gain(*r["passes"])
        print(
            f"{name}: first-line similarity, context on minus off, over the {n} keystrokes both passes"
            f" showed: {100 * mean:+.1f} pt (95% bootstrap interval {100 * lo:+.1f} to {100 * hi:+.1f})"
        )
    first, f = next(iter(rows.items()))
    gain = round(100 * f["gain"], 1)
    checks = [
        f"p50 {f['p50 ms']:.0f} <= 150 ms {'met' if f['p50 ms'] <= 150 else 'NOT met'}",
        f"p95 {f['p95 ms']:.0f} <= 400 ms {'met' if f['p95 ms'] <= 400 else 'NOT met'}",
        f"duplication {f['dup']:.1%} <= 1% {'met' if f['dup'] <= 0.01 else 'NOT met'}",
        f"retrieval gain {gain:+.1f} pt > 0 {'met' if gain > 0 else 'NOT met'}",
    ]
    print(f"goals ({first}): " + "; ".join(checks))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/spec-small", help="a trained run (default: runs/spec-small)")
    ap.add_argument("--weights", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    ap.add_argument("--files", default=None, help="held-out code, the workspace root (default: rich)")
    ap.add_argument("--n-files", type=int, default=6)
    ap.add_argument("--sites", type=int, default=2, help="traces per file")
    ap.add_argument("--lines", type=int, default=2, help="lines typed per trace")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cps", type=float, default=6.0, help="typing speed, characters per second, mean")
    ap.add_argument("--line-pause", type=float, default=1.0, help="extra seconds at a line's end, mean")
    ap.add_argument("--fast", type=float, default=1.0, help="divide every pause by this")
    ap.add_argument("--settings", type=json.loads, default={}, help='codelm settings, JSON: {"maxLines": 1}')
    ap.add_argument("--no-http", action="store_true", help="leave out `codelm serve` + `codelm lsp --server`")
    ap.add_argument("--peer-url", default=None, help="another OpenAI-compatible server, e.g. llama.cpp's")
    ap.add_argument("--peer-model", default=None, help="its model id (its key: $CODELM_PEER_API_KEY)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: one file, one trace of one line")
    ap.add_argument("--verbose", action="store_true", help="print every shown completion")
    args = ap.parse_args()
    if args.quick:
        args.n_files, args.sites, args.lines = 1, 1, 1
    return args


def setups(args: argparse.Namespace, traces: list[Trace]) -> dict[str, dict]:
    """Each setup's results, one after the other: the model in `codelm lsp`, then through
    `codelm serve`, then the peer."""
    lsp = [sys.executable, "-m", "codelm", "lsp"]
    name = f"lsp {args.run}"
    results = {name: run_setup(name, [*lsp, args.run, "--weights", args.weights], traces, args, {})}
    if not args.no_http:
        proc, url = start_server(Path(args.run), 4, 4, args.weights)
        try:
            name = "lsp --server, codelm serve"
            results[name] = run_setup(name, [*lsp, "--server", url], traces, args, {})
        finally:
            stop_server(proc)
    if args.peer_url:
        cmd = [*lsp, "--server", args.peer_url, *(["--model", args.peer_model] if args.peer_model else [])]
        key = os.environ.get("CODELM_PEER_API_KEY")
        name = f"lsp --server {args.peer_url}"
        results[name] = run_setup(name, cmd, traces, args, {"CODELM_API_KEY": key} if key else {})
    return results


def main() -> None:
    from common import machine

    from codelm.data.sources import site_packages_root

    args = parse_args()
    print(machine())
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    root = args.root = Path(args.files or site_packages_root() / "rich").resolve()
    traces = choose_traces(root, args)
    keys = sum(len(t.keys) for t in traces)
    secs = sum(k.pause for t in traces for k in t.keys) / args.fast
    print(
        f"{len(traces)} traces in {len({t.path for t in traces})} files of {root}, {keys} keystrokes,"
        f" {secs:.0f} s of typing per pass; {args.cps} chars/s, line pause {args.line_pause} s,"
        f" fast x{args.fast}"
    )
    table(setups(args, traces))


if __name__ == "__main__":
    main()
