"""What `codelm generate` prints: completions to stdout, notes to stderr.

One sample (optionally streamed as it is generated), n samples one after the
other, or the best of n that parses; with a trace, the trace table after each
completion. cli.py parses the arguments and calls `run_generate`.
"""

from __future__ import annotations

import sys
from typing import TextIO

from codelm.errors import CodelmError
from codelm.generate.best import best_of
from codelm.generate.config import SamplingConfig
from codelm.generate.generator import Completion, generate, generate_batch
from codelm.generate.prompts import Prompt
from codelm.generate.rerank import DEFAULT_RANK
from codelm.generate.stopping import StopConfig
from codelm.generate.trace import format_trace
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer


def read_prompt(text: str) -> str:
    """The prompt argument; "-" reads it from stdin."""
    return sys.stdin.read() if text == "-" else text


def run_generate(
    model: Transformer,
    tok: CodeTokenizer,
    prompt: Prompt,
    cfg: SamplingConfig,
    stops: StopConfig,
    n: int = 1,
    best: bool = False,
    stream: bool = False,
    trace: str = "",
    rank: str = DEFAULT_RANK,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> list[Completion]:
    """Generate and print as `codelm generate` does (to stdout and stderr unless given);
    return the completions printed."""
    out, err = out or sys.stdout, err or sys.stderr
    if n < 1:
        raise CodelmError(f"--n must be at least 1, got {n}")
    if best and n < 2:
        raise CodelmError("--best picks one of several samples: add --n 2 or more (--n 8, say)")
    if stream and n > 1 and not best:
        raise CodelmError("--stream shows one sample: drop --n, or add --best")
    if n > 1 and best:
        chosen, report = best_of(model, tok, prompt, n, cfg, stops, trace, rank)
        _show(chosen, tok, out, err)
        print(f"[{report.summary()}]", file=err)
        return [chosen]
    if n > 1:
        done = generate_batch(model, tok, [prompt], cfg, stops, n=n, trace=trace)[0]
        for i, c in enumerate(done, 1):
            print(f"# --- sample {i}/{n} (mean log-prob {c.mean_logprob:.3f}) ---", file=out)
            _show(c, tok, out, err)
        return done
    s = generate(model, tok, prompt, cfg, stops, trace)
    if s.dropped:
        _note_truncated(s.dropped, err)
    for piece in s:
        if stream:
            out.write(piece)
            out.flush()
    assert s.completion is not None
    _show(s.completion, tok, out, err, already_written=stream, noted=True)
    return [s.completion]


def _show(
    c: Completion,
    tok: CodeTokenizer,
    out: TextIO,
    err: TextIO,
    already_written: bool = False,
    noted: bool = False,
) -> None:
    if c.truncated and not noted:
        _note_truncated(c.dropped_tokens, err)
    if not already_written:
        out.write(c.text)
    if not c.text.endswith("\n"):
        out.write("\n")
    if c.trace:
        out.write(format_trace(c.trace, tok))
    syntax = {"trimmed": ", trimmed back to code that parses", "unparsed": ", does not parse"}
    print(f"[stop: {c.stop_reason}{syntax.get(c.syntax, '')}, {len(c.tokens)} tokens]", file=err)


def _note_truncated(dropped: int, err: TextIO) -> None:
    print(
        f"codelm: note: the prompt is longer than the model's context; its {dropped} oldest "
        "tokens were left out (in fill-in-the-middle the suffix is kept first)",
        file=err,
    )
