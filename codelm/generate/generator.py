"""Completions of text prompts, through the one decoding engine (engine.py).

- `generate` streams one completion: iterate it for text pieces as they become
  final (no stop rule takes them back later); `.completion` holds the result.
  `complete` is the same path, drained.
- `generate_batch` runs several prompts of different lengths and n samples of
  each in one batch; a prompt is prefilled once and its cache row copied.
- `generate_ids` is the same engine on raw token ids, without text or stop rules.
- A prompt ending inside what training saw as one token is healed (prompts.plan,
  healing.py): its last token is taken off and the first new token re-spells it.
- `load_run` loads a run for generation; best-of-n ranking is in best.py.
Every entry point drafts tokens by prompt lookup (`draft`, speculate.py; 0 turns it off:
the output is the same either way) and takes an optional `prefixes` cache (prefix.py)
that reuses the keys and values of earlier prompts across calls.
This module does not choose tokens (sampling.py) nor decide stops (stopping.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from codelm.errors import CodelmError
from codelm.generate.config import SamplingConfig
from codelm.generate.engine import Engine, Row, Sampler
from codelm.generate.prefix import PrefixCache
from codelm.generate.prompts import Planned, Prompt, as_prompt, fenced, plan
from codelm.generate.speculate import DRAFT
from codelm.generate.stopping import DEFAULT_STOPS, StopConfig, build_rules
from codelm.generate.text import TextState
from codelm.generate.trace import TraceStep
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer


@dataclass
class Step:
    token: int
    logprob: float  # log-probability of the chosen token under the model (temperature 1)


@dataclass
class Completion:
    text: str
    # end_of_text | stop_string | fence | block_end | max_lines | repetition | length | context_full
    stop_reason: str
    # The generated ids that make `text`, an end token included; where a rule or a trim cut
    # the text, those past the cut are left out (the last one may reach past it).
    tokens: list[int]
    logprobs: list[float]  # of each token in `tokens`, under the model (temperature 1)
    prompt: Prompt | None = None
    dropped_tokens: int = 0  # prompt tokens left out to fit the context
    trace: list[TraceStep] | None = None
    healed: str = ""  # the prompt's end that tokens[0] re-spells (healing.py); not in `text`
    cached_tokens: int = 0  # prompt tokens whose keys and values came from `prefixes`
    # parses | trimmed (cut back to whole code) | unparsed (nothing parses), whole.py;
    # "" where trimming is off (StopConfig.trim).
    syntax: str = ""

    @property
    def truncated(self) -> bool:
        return self.dropped_tokens > 0

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / max(len(self.logprobs), 1)

    @property
    def code(self) -> str:
        """Prompt and completion together (in FIM: prefix, middle and suffix)."""
        return self.text if self.prompt is None else self.prompt.code(self.text)


def text_row(
    tok: CodeTokenizer,
    prompt: Prompt,
    planned: Planned,
    sampler: Sampler,
    stops: StopConfig,
    max_new_tokens: int,
    **kw,
) -> Row:
    """An engine row for `prompt` as `plan` laid it out, with its text and stop rules."""
    fim, after = prompt.mode == "fim", prompt.suffix or ""
    rules = build_rules(stops, prompt.text, tok.decode, fim, after, fenced(tok, prompt))
    skip = planned.healing.size if planned.healing else 0
    text = TextState(tok.token_bytes, rules, skip=skip)
    allowed = planned.healing.allowed if planned.healing else None
    return Row(planned.ids, max_new_tokens, sampler, text, allowed, **kw)


def _plans(
    model: Transformer, tok: CodeTokenizer, prompts: Sequence[str | Prompt], cfg: SamplingConfig
) -> list[tuple[Prompt, Planned]]:
    if not prompts:
        raise CodelmError("give at least one prompt")
    return [(p, plan(tok, p, model.cfg.block_size, cfg.max_new_tokens)) for p in map(as_prompt, prompts)]


def _engine(
    model: Transformer, tok: CodeTokenizer, rows: list[Row], prefixes: PrefixCache | None, draft: int
) -> Engine:
    """An engine sized for `rows`: its cache holds no more than they can reach."""
    longest = max(len(r.prompt) + r.max_new_tokens for r in rows)
    max_len = min(model.cfg.block_size, longest)
    return Engine(model, len(rows), tok.stop_ids, max_len, tok.vocab_size, prefixes, draft)


def _result(row: Row, prompt: Prompt, planned: Planned) -> Completion:
    assert row.text is not None
    kept = row.text.kept()
    return Completion(
        row.text.text,
        row.reason or "length",
        row.tokens[:kept],
        row.logprobs[:kept],
        prompt,
        planned.dropped,
        row.steps if row.trace else None,
        planned.healed,
        row.cached,
        row.text.syntax,
    )


def generate_batch(
    model: Transformer,
    tok: CodeTokenizer,
    prompts: Sequence[str | Prompt],
    cfg: SamplingConfig = SamplingConfig(),
    stops: StopConfig = DEFAULT_STOPS,
    n: int = 1,
    trace: str = "",
    greedy_first: bool = False,
    prefixes: PrefixCache | None = None,
    draft: int = DRAFT,
) -> list[list[Completion]]:
    """`n` completions of each prompt, all in one batch. With `greedy_first`, the first
    sample of each prompt is greedy (best-of-n then never does worse than greedy)."""
    if n < 1:
        raise CodelmError("give at least one sample")
    plans = _plans(model, tok, prompts, cfg)
    device = model.norm_f.weight.device
    sampler = Sampler.of(cfg, device)
    rows = [
        text_row(
            tok,
            p,
            pl,
            sampler.greedy() if greedy_first and j == 0 else sampler,
            stops,
            cfg.max_new_tokens,
            trace=trace,
        )
        for p, pl in plans
        for j in range(n)
    ]
    engine = _engine(model, tok, rows, prefixes, draft)
    engine.add(rows)
    while engine.active:
        engine.step()
    return [[_result(rows[i * n + j], p, pl) for j in range(n)] for i, (p, pl) in enumerate(plans)]


class Stream:
    """Iterate for the completion's text, piece by piece; `completion` is set at the end."""

    def __init__(self, engine: Engine, row: Row, prompt: Prompt, planned: Planned):
        self._engine, self._row, self.prompt, self.planned = engine, row, prompt, planned
        self.dropped = planned.dropped  # prompt tokens left out to fit the context
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        row, text = self._row, self._row.text
        assert text is not None
        self._engine.add([row])
        while True:
            piece, _ = text.take(final=row.done)
            if piece:
                yield piece
            if row.done:
                break
            self._engine.step()
        self.completion = _result(row, self.prompt, self.planned)


def generate(
    model: Transformer,
    tok: CodeTokenizer,
    prompt: str | Prompt,
    cfg: SamplingConfig = SamplingConfig(),
    stops: StopConfig = DEFAULT_STOPS,
    trace: str = "",
    prefixes: PrefixCache | None = None,
    draft: int = DRAFT,
) -> Stream:
    """Stream one completion of `prompt`. `trace`: "" | "top" (top-5 per token) | "lens"
    (also the logit lens). Errors in the prompt are raised here, before any streaming."""
    [(p, pl)] = _plans(model, tok, [prompt], cfg)
    row = text_row(
        tok, p, pl, Sampler.of(cfg, model.norm_f.weight.device), stops, cfg.max_new_tokens, trace=trace
    )
    return Stream(_engine(model, tok, [row], prefixes, draft), row, p, pl)


def complete(
    model: Transformer,
    tok: CodeTokenizer,
    prompt: str | Prompt,
    cfg: SamplingConfig = SamplingConfig(),
    stops: StopConfig = DEFAULT_STOPS,
    trace: str = "",
    prefixes: PrefixCache | None = None,
    draft: int = DRAFT,
) -> Completion:
    """Complete `prompt` (the streaming path, drained)."""
    stream = generate(model, tok, prompt, cfg, stops, trace, prefixes, draft)
    for _ in stream:
        pass
    assert stream.completion is not None
    return stream.completion


def generate_ids(
    model: Transformer,
    prompt: list[int],
    cfg: SamplingConfig,
    stop_ids: frozenset[int] = frozenset(),
    draft: int = DRAFT,
) -> Iterator[Step]:
    """Yield sampled tokens one at a time, ending after a stop id, `max_new_tokens` or
    the end of the context."""
    if not prompt:
        raise CodelmError("empty prompt")
    block = model.cfg.block_size
    if len(prompt) >= block:
        raise CodelmError(f"the prompt fills the model's whole context ({block} tokens)")
    row = Row(list(prompt), cfg.max_new_tokens, Sampler.of(cfg, model.norm_f.weight.device))
    engine = Engine(model, 1, frozenset(stop_ids), min(block, len(prompt) + cfg.max_new_tokens), draft=draft)
    engine.add([row])
    given = 0
    while True:
        for i in range(given, len(row.tokens)):  # a step may keep several drafted tokens
            yield Step(row.tokens[i], row.logprobs[i])
        given = len(row.tokens)
        if row.done:
            return
        engine.step()


def load_run(
    run: str | Path, device: str = "cpu", weights: str = "fp32"
) -> tuple[Transformer, CodeTokenizer]:
    """The model and tokenizer of a run directory. `weights` (quantize.py) other than the
    exact fp32 trades a little accuracy for decoding speed: "auto" is int8 on CPU."""
    from codelm.generate.quantize import prepare_model
    from codelm.model.io import load_model

    model = prepare_model(load_model(run, device), weights)
    tok = CodeTokenizer.load(Path(run) / "tokenizer.json")
    return model, tok  # type: ignore[return-value]
