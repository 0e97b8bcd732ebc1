"""Editor latency on this CPU, side by side with llama.cpp on the same weights, in one run.

    .venv/bin/python bench/latency.py [--run RUN] [--sessions 6] [--reps 3] [--no-llama]

1. Time to first token, cold, at 128, 512 and 1,024 prompt tokens: `small` with random
   weights (codelm int8 against llama.cpp q8_0 of the same model, exported with
   `codelm export --format gguf`).
2. Per keystroke: typing replayed through held-out files (bench/held_out.py's packages
   that no corpus here reads). A session types one line of a function body a character at
   a time, at about 500 tokens of context; each keystroke asks for a fill-in-the-middle
   completion of up to 16 tokens, greedy, on `small`. codelm with its prefix cache on and
   off, in PSM and SPM order; llama.cpp with its prompt cache (llama-cpp-python's
   `generate` keeps the last prompt's KV and evaluates only what follows the common
   prefix) and without (reset before each request). First token and the whole completion.
3. Decoding with prompt-lookup speculation on and off, on completions of held-out
   functions by a trained run (`--run`; its acceptance depends on what the model writes,
   so random weights would say nothing): codelm's drafts of up to 4 tokens, llama.cpp's
   `LlamaPromptLookupDecoding` (num_pred_tokens 4), tokens/s over the new tokens.
4. PSM against SPM on the trained run: greedy fill-in-the-middle of one held-out body
   line, exact match and edit similarity of the line.
Medians over --reps with min and max; engines alternate within each repetition, so that
noise from other processes hits all of them. The bench installs llama-cpp-python on first
use (see bench/interop.py); --no-llama leaves it out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, summary  # noqa: E402
from held_out import function_prompts, held_out  # noqa: E402
from interop import corpus_tokenizer, llama_cpp, make_run  # noqa: E402

from codelm.evaluate.line_completion import body_lines, similarity  # noqa: E402
from codelm.generate.config import SamplingConfig  # noqa: E402
from codelm.generate.engine import Engine, Row, Sampler  # noqa: E402
from codelm.generate.generator import complete, load_run, text_row  # noqa: E402
from codelm.generate.prefix import PrefixCache  # noqa: E402
from codelm.generate.prompts import Prompt, plan  # noqa: E402
from codelm.generate.quantize import describe, prepare_model  # noqa: E402
from codelm.generate.stopping import StopConfig  # noqa: E402
from codelm.interop.gguf import export_gguf  # noqa: E402

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=16, repetition_penalty=1.0, dry_multiplier=0.0)
RAW = StopConfig(block_end=False, max_repeats=0)  # every request decodes its 16 tokens
ONE_LINE = StopConfig(max_lines=1)


def sessions(texts: list[str], tok, count: int, context: int) -> list[list[tuple[str, str]]]:
    """(prefix, suffix) at each keystroke of typing one body line, at about `context`
    tokens of prefix and the next ten lines as the suffix."""
    out = []
    for text in texts:
        lines = body_lines(text)
        if not lines:
            continue
        all_lines = text.split("\n")
        n = lines[len(lines) // 2]
        line = all_lines[n]
        indent = line[: len(line) - len(line.lstrip())]
        if len(line.strip()) < 12:
            continue
        start = n
        while start > 0 and len(tok.encode("\n".join(all_lines[start - 1 : n]))) < context:
            start -= 1
        before = "\n".join(all_lines[start:n]) + "\n" + indent
        after = "\n" + "\n".join(all_lines[n + 1 : n + 11])
        typed = line.strip()
        out.append([(before + typed[:i], after) for i in range(1, len(typed) + 1)])
        if len(out) == count:
            break
    return out


def ours_once(model, tok, prompt: Prompt, prefixes: PrefixCache | None) -> tuple[float, float]:
    """Seconds to the first token (planning and tokenizing included) and to the whole
    completion; no drafts, as llama.cpp's requests here have none."""
    t0 = time.perf_counter()
    planned = plan(tok, prompt, model.cfg.block_size, GREEDY.max_new_tokens)
    row = text_row(tok, prompt, planned, Sampler.of(GREEDY), RAW, GREEDY.max_new_tokens)
    engine = Engine(model, 1, frozenset(), None, tok.vocab_size, prefixes)  # random weights: no early end
    engine.add([row])
    t1 = time.perf_counter()
    while engine.active:
        engine.step()
    return t1 - t0, time.perf_counter() - t0


def llama_once(llm, ids: list[int], reuse: bool, new: int = 16) -> tuple[float, float]:
    if not reuse:
        llm.reset()
    t0 = time.perf_counter()
    gen = llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0)
    next(gen)
    t1 = time.perf_counter()
    for _ in range(new - 1):
        next(gen)
    return t1 - t0, time.perf_counter() - t0


def alternate(engines: dict, reps: int, warm: bool = True) -> dict[str, list]:
    """Each engine's results over `reps` rounds, engines alternating, after one warm-up round."""
    for fn in engines.values() if warm else ():
        fn()
    out: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(reps):
        for k, fn in engines.items():
            out[k].append(fn())
    return out


def report(title: str, results: dict[str, list[float]], unit: str, base: str | None = None) -> None:
    print(f"\n{title}")
    for k, v in results.items():
        ratio = ""
        if base is not None and k != base:
            ratio = f"  ({statistics.median(v) / statistics.median(results[base]):.2f}x {base})"
        print(f"  {k:38s} {summary(v)} {unit}{ratio}")


def cold(model, tok, llm, reps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for n in (128, 512, 1024):
        ids = torch.randint(300, tok.vocab_size, (n,), generator=gen).tolist()

        def ours(ids=ids) -> float:
            engine = Engine(model, 1, tok.stop_ids, len(ids) + 1, tok.vocab_size)
            t0 = time.perf_counter()
            engine.add([Row(ids, 1, Sampler.of(GREEDY))])
            return (time.perf_counter() - t0) * 1e3

        engines = {"codelm int8": ours}
        if llm is not None:
            engines["llama.cpp q8_0"] = lambda ids=ids: llama_once(llm, ids, reuse=False, new=1)[0] * 1e3
        report(
            f"1. time to first token, cold, {n} prompt tokens", alternate(engines, reps), "ms", "codelm int8"
        )


def typing(model, tok, llm, texts: list[str], count: int, reps: int) -> None:
    """Per-keystroke latency: mean ms over all keystrokes of all sessions, per repetition."""
    work = sessions(texts, tok, count, context=440)
    keys = sum(map(len, work))
    sizes = [len(plan(tok, Prompt(*s[0]), model.cfg.block_size, 16).ids) for s in work]
    print(f"\n2. typing: {len(work)} lines, {keys} keystrokes, prompts of {min(sizes)}-{max(sizes)} tokens")

    def ours(order: str, reuse: bool) -> tuple[float, float]:
        cache = PrefixCache(256 << 20) if reuse else None
        times = [ours_once(model, tok, Prompt(p, q, fim_order=order), cache) for s in work for p, q in s]
        return tuple(statistics.mean(t[i] for t in times) * 1e3 for i in (0, 1))

    def theirs(order: str, reuse: bool) -> tuple[float, float]:
        llm.reset()
        ids = [
            plan(tok, Prompt(p, q, fim_order=order), model.cfg.block_size, 16).ids for s in work for p, q in s
        ]
        times = [llama_once(llm, x, reuse) for x in ids]
        return tuple(statistics.mean(t[i] for t in times) * 1e3 for i in (0, 1))

    engines = {}
    for order in ("spm", "psm"):
        for reuse in (True, False):
            engines[f"codelm int8 {order}, reuse {'on' if reuse else 'off'}"] = (ours, order, reuse)
            if llm is not None:
                engines[f"llama.cpp q8_0 {order}, cache {'on' if reuse else 'off'}"] = (theirs, order, reuse)
    calls = {k: (lambda f=f, o=o, r=r: f(o, r)) for k, (f, o, r) in engines.items()}
    got = alternate(calls, reps, warm=False)
    report("   first token per keystroke", {k: [v[0] for v in vs] for k, vs in got.items()}, "ms")
    report("   16-token completion per keystroke", {k: [v[1] for v in vs] for k, vs in got.items()}, "ms")


def speculation(run: str, texts: list[str], work: Path, count: int, reps: int, use_llama: bool) -> None:
    model, tok = load_run(run, weights="auto")
    prompts = [tok.encode(p) for p, _ in function_prompts(texts, count)]
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=64, repetition_penalty=1.0, dry_multiplier=0.0)
    stats: dict[str, tuple[int, int, int]] = {}

    def ours(draft: int) -> float:
        new = seconds = steps = 0
        engine = Engine(model, 1, tok.stop_ids, None, tok.vocab_size, None, draft)
        for ids in prompts:
            row = Row([tok.bos_id, *ids], cfg.max_new_tokens, Sampler.of(cfg))
            engine.add([row])
            t0 = time.perf_counter()
            while engine.active:
                engine.step()
                steps += 1
            seconds += time.perf_counter() - t0
            new += len(row.tokens) - 1
        stats[f"codelm, draft {draft}"] = (new, steps, engine.kept, engine.drafted)
        return new / seconds

    engines = {"codelm, draft 0": lambda: ours(0), "codelm, draft 4": lambda: ours(4)}
    if use_llama:
        lc = llama_cpp()
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        gguf = work / "trained-q8_0.gguf"
        export_gguf(Path(run), gguf, "q8_0")
        threads = torch.get_num_threads()
        kw = dict(n_ctx=model.cfg.block_size, n_threads=threads, n_threads_batch=threads, verbose=False)
        plain = lc.Llama(str(gguf), **kw)
        drafting = lc.Llama(str(gguf), draft_model=LlamaPromptLookupDecoding(num_pred_tokens=4), **kw)

        def theirs(llm) -> float:
            new, seconds = 0, 0.0
            for ids in prompts:
                llm.reset()
                gen = llm.generate([tok.bos_id, *ids], top_k=1, temp=0.0, repeat_penalty=1.0)
                next(gen)
                t0 = time.perf_counter()
                for _, token in zip(range(cfg.max_new_tokens - 1), gen, strict=False):
                    new += 1
                    if token in tok.stop_ids:
                        break
                seconds += time.perf_counter() - t0
            return new / seconds

        engines["llama.cpp q8_0, no draft"] = lambda: theirs(plain)
        engines["llama.cpp q8_0, prompt lookup 4"] = lambda: theirs(drafting)
    print(f"\n3. speculation: {len(prompts)} held-out functions, greedy, up to 64 new tokens; {run}")
    print(f"   {describe(model)}")
    report("   decode tokens/s", alternate(engines, reps), "tok/s", "codelm, draft 0")
    for k, (new, steps, kept, drafted) in stats.items():
        per, share = new / max(steps, 1), kept / max(drafted, 1)
        kept_of = f"{kept} of {drafted} drafted tokens kept ({share:.0%})"
        print(f"   {k}: {new} tokens in {steps} steps, {per:.2f} per step, {kept_of}")


def fim_quality(run: str, texts: list[str], count: int) -> None:
    model, tok = load_run(run, weights="auto")
    cases = []
    for text in texts:
        lines = text.split("\n")
        for n in body_lines(text)[::7][:3]:
            line = lines[n]
            indent = line[: len(line) - len(line.lstrip())]
            before = "\n".join(lines[:n]) + "\n" + indent
            cases.append((before, line.strip(), "\n" + "\n".join(lines[n + 1 :])))
        if len(cases) >= count:
            break
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=48)
    print(f"\n4. fill in the middle of {len(cases)} held-out body lines, greedy, one line; {run}")
    for order in ("psm", "spm"):
        got = [complete(model, tok, Prompt(b, s, fim_order=order), cfg, ONE_LINE).text for b, _, s in cases]
        got = [g.split("\n")[0].strip() for g in got]
        exact = sum(g == t for g, (_, t, _) in zip(got, cases, strict=True)) / len(cases)
        sim = statistics.mean(similarity(g, t) for g, (_, t, _) in zip(got, cases, strict=True))
        print(f"   {order}: exact match {exact:.1%}, edit similarity {sim:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=None, help="a trained run for sections 3 and 4 (default: runs/demo/run)")
    ap.add_argument("--sessions", type=int, default=4, help="lines typed in section 2")
    ap.add_argument("--functions", type=int, default=30, help="held-out functions in section 3")
    ap.add_argument("--positions", type=int, default=60, help="held-out lines in section 4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--no-llama", action="store_true", help="codelm only")
    a = ap.parse_args()
    print(machine())
    cache = Path(tempfile.gettempdir()) / "codelm-bench-interop"
    cache.mkdir(exist_ok=True)
    tok = corpus_tokenizer(a.vocab, cache)
    texts = held_out(3_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = prepare_model(make_run("small", tok, work / "small", block=2048), "int8")
        print(f"small, random weights, vocab {a.vocab}: {describe(model)}")
        llm = None
        if not a.no_llama:
            lc = llama_cpp()
            export_gguf(work / "small", work / "small.gguf", "q8_0")
            threads = torch.get_num_threads()
            llm = lc.Llama(str(work / "small.gguf"), n_ctx=2048, n_batch=1024, n_threads=threads,
                           n_threads_batch=threads, verbose=False)  # fmt: skip
            info = lc.llama_print_system_info().decode().strip()
            print(f"llama.cpp (llama-cpp-python {lc.__version__}): {info}")
        cold(model, tok, llm, a.reps)
        typing(model, tok, llm, texts, a.sessions, a.reps)
        run = a.run or ("runs/demo/run" if Path("runs/demo/run/config.json").is_file() else None)
        if run is None:
            print("\n3-4 need a trained run: pass --run RUN (make demo writes runs/demo/run)")
            return
        speculation(run, texts, work, a.functions, a.reps, not a.no_llama)
        fim_quality(run, texts, a.positions)


if __name__ == "__main__":
    main()
