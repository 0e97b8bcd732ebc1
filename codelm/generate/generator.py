"""The decoding loop: prefill the prompts once, then one token per row per step from the KV cache.

- `generate` streams one completion: iterate it for text pieces as they become
  final (no stop rule takes them back later); `.completion` holds the result.
  `complete` is the same path, drained.
- `generate_batch` runs several prompts of different lengths (left padded, see
  kv_cache.py) and n samples of each in one batch; a prompt is prefilled once
  and its cache copied to its n rows.
- `generate_ids` is the same loop on raw token ids, without text or stop rules.
- A prompt ending inside what training saw as one token is healed (healing.py):
  its last token is taken off and the first new token must re-spell it.
- `best_of` (best.py) ranks n samples; `load_run` loads a run for generation.
This module does not choose tokens (sampling.py) nor decide stops (stopping.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from codelm.errors import CodelmError
from codelm.generate.healing import heal
from codelm.generate.prompts import Prompt, as_prompt, encode_prompt, prompt_room
from codelm.generate.sampling import SamplingConfig, penalize, sample
from codelm.generate.stopping import (
    DEFAULT_STOPS,
    EndOfText,
    StopConfig,
    StopRule,
    build_rules,
    first_stop,
    safe_length,
)
from codelm.generate.trace import TraceStep, logit_lens, top_candidates
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer


@dataclass
class Step:
    token: int
    logprob: float  # log-probability of the chosen token under the model (temperature 1)


@dataclass
class Completion:
    text: str
    # end_of_text | stop_string | block_end | max_lines | repetition | length | context_full
    # | parse_trim (best_of cut it back to the longest whole-line start that parses)
    stop_reason: str
    tokens: list[int]  # every generated id, an end token included; `text` may stop inside them
    logprobs: list[float]  # of each token in `tokens`, under the model (temperature 1)
    prompt: Prompt | None = None
    dropped_tokens: int = 0  # prompt tokens left out to fit the context
    trace: list[TraceStep] | None = None
    healed: str = ""  # the prompt's end that tokens[0] re-spells (healing.py); not in `text`

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


class _Row:
    """One completion in a batch: its tokens, its text so far and its stop state."""

    def __init__(
        self,
        rules: list[StopRule],
        decode: Callable[[Sequence[int]], str],
        end_ids: frozenset[int],
        healed: str = "",
    ):
        self.rules, self.decode, self.end_ids, self.healed = rules, decode, end_ids, healed
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.trace: list[TraceStep] = []
        self.text = ""
        self.released = 0  # characters of `text` already handed to a stream
        self.reason: str | None = None

    def push(self, token: int, logprob: float, trace: TraceStep | None) -> None:
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if trace is not None:
            self.trace.append(trace)
        ended = token in self.end_ids
        text = self.decode(self.tokens[:-1] if ended else self.tokens)[len(self.healed) :]
        hit = first_stop(self.rules, text, self.tokens)
        self.text = text if hit is None else text[: hit[1]]
        if hit is not None:
            self.reason = hit[0]

    def take(self) -> str:
        """The text that became final since the last call."""
        end = len(self.text)
        if self.reason is None:  # hold back what a rule may still cut, and half-decoded bytes
            end = min(safe_length(self.rules, self.text, self.tokens), len(self.text.rstrip("\ufffd")))
        piece = self.text[self.released : end]
        self.released = max(self.released, end)
        return piece


@torch.inference_mode()  # lighter than no_grad per op: +11% decode tokens/s for `small`
def _decode(
    model: Transformer,
    prompts: list[list[int]],
    rows: list[_Row],
    cfg: SamplingConfig,
    trace: str = "",  # "" | "top" | "lens"
    greedy_first: bool = False,
    first_allowed: torch.Tensor | None = None,
) -> Iterator[None]:
    """Run the batch: rows[i * n + j] is sample j of prompts[i]. Yields after each step.
    `first_allowed` (P, vocab) bool limits each prompt's first new token (healing.py)."""
    n = len(rows) // len(prompts)
    longest = max(len(p) for p in prompts)
    budget = min(cfg.max_new_tokens, model.cfg.block_size - longest)
    if budget <= 0:
        raise CodelmError(f"the prompt fills the model's whole context ({model.cfg.block_size} tokens)")
    device = model.norm_f.weight.device
    start = None  # left padding per prompt, only when lengths differ (the plain path is faster)
    if any(len(p) != longest for p in prompts):
        start = torch.tensor([longest - len(p) for p in prompts], device=device)
    idx = torch.tensor([[p[0]] * (longest - len(p)) + p for p in prompts], device=device)
    cache = model.new_cache(len(prompts), longest + budget, start)
    hidden: list[torch.Tensor] | None = [] if trace == "lens" else None
    logits = model(idx, cache, hidden, last_only=True)[:, -1]  # (P, V): the prefill
    if first_allowed is not None:
        logits = logits.masked_fill(~first_allowed.to(device), float("-inf"))
    if n > 1:
        cache, logits = cache.repeat_rows(n), logits.repeat_interleave(n, 0)
        hidden = None if hidden is None else [h[:, -1:].repeat_interleave(n, 0) for h in hidden]
    gen = None if cfg.seed is None else torch.Generator(device=device).manual_seed(cfg.seed)
    seen = torch.zeros_like(logits, dtype=torch.bool) if cfg.repetition_penalty != 1.0 else None
    for _ in range(budget):
        logp = logits.float().log_softmax(-1)
        nxt = sample(penalize(logits, seen, cfg.repetition_penalty) if seen is not None else logits, cfg, gen)
        if greedy_first:
            nxt[0] = logits[0].argmax()
        chosen = logp.gather(1, nxt[:, None])[:, 0].tolist()
        steps = _trace_steps(model, logp, nxt, hidden) if trace else [None] * len(rows)
        for row, token, lp, st in zip(rows, nxt.tolist(), chosen, steps, strict=True):
            if row.reason is None:
                row.push(token, lp, st)
        yield
        if all(row.reason is not None for row in rows):
            return
        if seen is not None:
            seen[torch.arange(len(rows), device=device), nxt] = True
        hidden = [] if trace == "lens" else None
        logits = model(nxt[:, None], cache, hidden)[:, -1]
    for row in rows:  # out of new tokens: the user's limit, or the model's context
        if row.reason is None:
            row.reason = "length" if budget == cfg.max_new_tokens else "context_full"


def _trace_steps(
    model: Transformer, logp: torch.Tensor, nxt: torch.Tensor, hidden: list[torch.Tensor] | None
) -> list[TraceStep]:
    tops = top_candidates(logp)
    lens = logit_lens(model, hidden) if hidden else [None] * len(tops)
    probs = logp.gather(1, nxt[:, None])[:, 0].exp().tolist()
    return [TraceStep(t, p, top, ln) for t, p, top, ln in zip(nxt.tolist(), probs, tops, lens, strict=True)]


def _setup(
    model: Transformer,
    tok: CodeTokenizer,
    prompts: Sequence[str | Prompt],
    n: int,
    cfg: SamplingConfig,
    stops: StopConfig,
) -> tuple[list[Prompt], list[list[int]], list[int], list[_Row], torch.Tensor | None]:
    """Prompts, their ids (healed), tokens dropped, one row per sample, and the masks of
    each prompt's first new token (None where no prompt was healed)."""
    if not prompts or n < 1:
        raise CodelmError("give at least one prompt and one sample")
    ps = [as_prompt(p) for p in prompts]
    room = prompt_room(model.cfg.block_size, cfg.max_new_tokens)
    encoded = [encode_prompt(tok, p, room) for p in ps]
    healed = [heal(tok, e.ids) for e in encoded]
    end_ids = frozenset(tok.special.values())  # any special token begins another frame
    rows = [
        _Row(
            build_rules(stops, p.text, end_ids, tok.decode, fim=p.mode == "fim"),
            tok.decode,
            end_ids,
            h.text if h else "",
        )
        for p, (_, h) in zip(ps, healed, strict=True)
        for _ in range(n)
    ]
    masks = None
    if any(h for _, h in healed):
        every = torch.ones(tok.vocab_size, dtype=torch.bool)
        masks = torch.stack([h.allowed if h else every for _, h in healed])
    return ps, [ids for ids, _ in healed], [e.dropped for e in encoded], rows, masks


def _result(row: _Row, prompt: Prompt, dropped: int, trace: str) -> Completion:
    return Completion(
        row.text,
        row.reason or "length",
        row.tokens,
        row.logprobs,
        prompt,
        dropped,
        row.trace if trace else None,
        row.healed,
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
) -> list[list[Completion]]:
    """`n` completions of each prompt, all in one batch. With `greedy_first`, the first
    sample of each batch is greedy (best-of-n then never does worse than greedy)."""
    ps, ids, dropped, rows, masks = _setup(model, tok, prompts, n, cfg, stops)
    for _ in _decode(model, ids, rows, cfg, trace, greedy_first, masks):
        pass
    return [[_result(rows[i * n + j], p, dropped[i], trace) for j in range(n)] for i, p in enumerate(ps)]


class Stream:
    """Iterate for the completion's text, piece by piece; `completion` is set at the end."""

    def __init__(self, steps: Iterator[None], row: _Row, prompt: Prompt, dropped: int, trace: str):
        self._steps, self._row, self.prompt, self.dropped, self._trace = steps, row, prompt, dropped, trace
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        for _ in self._steps:
            if piece := self._row.take():
                yield piece
        if piece := self._row.take():  # the rest, now that the row has stopped
            yield piece
        self.completion = _result(self._row, self.prompt, self.dropped, self._trace)


def generate(
    model: Transformer,
    tok: CodeTokenizer,
    prompt: str | Prompt,
    cfg: SamplingConfig = SamplingConfig(),
    stops: StopConfig = DEFAULT_STOPS,
    trace: str = "",
) -> Stream:
    """Stream one completion of `prompt`. `trace`: "" | "top" (top-5 per token) | "lens"
    (also the logit lens). Errors in the prompt are raised here, before any streaming."""
    ps, ids, dropped, rows, masks = _setup(model, tok, [prompt], 1, cfg, stops)
    steps = _decode(model, ids, rows, cfg, trace, first_allowed=masks)
    return Stream(steps, rows[0], ps[0], dropped[0], trace)


def complete(
    model: Transformer,
    tok: CodeTokenizer,
    prompt: str | Prompt,
    cfg: SamplingConfig = SamplingConfig(),
    stops: StopConfig = DEFAULT_STOPS,
    trace: str = "",
) -> Completion:
    """Complete `prompt` (the streaming path, drained)."""
    stream = generate(model, tok, prompt, cfg, stops, trace)
    for _ in stream:
        pass
    assert stream.completion is not None
    return stream.completion


def generate_ids(
    model: Transformer,
    prompt: list[int],
    cfg: SamplingConfig,
    stop_ids: frozenset[int] = frozenset(),
) -> Iterator[Step]:
    """Yield sampled tokens one at a time, ending after a stop id or `max_new_tokens`."""
    if not prompt:
        raise CodelmError("empty prompt")
    row = _Row([EndOfText(stop_ids)], lambda ids: "", frozenset(stop_ids))
    for _ in _decode(model, [list(prompt)], [row], cfg):
        yield Step(row.tokens[-1], row.logprobs[-1])


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


def best_of(*args, **kwargs):  # type: ignore[no-untyped-def]
    """`codelm.generate.best.best_of`, also reachable from here."""
    from codelm.generate.best import best_of as run

    return run(*args, **kwargs)


def parses(code: str) -> bool:
    """Whether `code` parses as Python (see best.py)."""
    from codelm.generate.best import parses as check

    return check(code)
