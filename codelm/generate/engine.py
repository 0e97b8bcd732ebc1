"""The one decoding engine: rows of a KV cache, one completion each, one model forward per step.

Every caller decodes through it: `generate`, `complete`, `generate_batch`,
best-of-n and `generate_ids` (generator.py), evaluation, and the server's
scheduler (codelm.serve), which adds rows as requests arrive and removes them
as they finish or are cancelled. A `Row` is one completion: its prompt ids, its
sampler, its incremental byte-exact text with its stop rules (text.py), and what
it produced. The engine
1. `add`s rows: one right-padded prefill for their distinct prompts (n samples
   of a prompt are prefilled once and the cache row copied), then each row's
   first token, limited by healing's mask (healing.py);
2. `step`s: one token per active row through `Transformer.forward` at per-row
   positions, then each row's next token;
3. retires each row as it ends: end of text (any special token), a text rule
   (stop string, block end, max lines, repetition), `length` or `context_full`.
   The last active row moves into a retired row's slot, so the active rows stay
   0..n-1 and a step reads one contiguous view of the cache.

Rows that share a `Sampler` are sampled together (a seeded batch is reproducible
as a whole); the server gives each request its own. This module does not lay out
prompts (prompts.py) nor decide what text a stop rule cuts (stopping.py).

Two things make it faster without changing what it produces:
- `prefixes` (prefix.py): a prompt that shares a token prefix with a recent sequence
  copies that prefix's keys and values and prefills only the rest. Rows that retire
  store theirs. A prompt whose every token is scored (the API's echo) or traced through
  the logit lens is prefilled whole.
- `draft` (speculate.py): each step drafts up to `draft` tokens per row by prompt lookup
  (fewer while a row's drafts are rejected) and verifies them in the same forward pass;
  a row keeps the drafts the model agrees with and one token of its own. Steps draw no
  drafts while a row records alternatives or a trace (those are per position), nor while
  more than `draft_rows` rows are active (SPECULATE_ROWS, measured in speculate.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from codelm.generate.config import SamplingConfig
from codelm.generate.prefix import Entry, PrefixCache
from codelm.generate.sampling import apply_dry, penalize, sample
from codelm.generate.speculate import SPECULATE_ROWS, Lookup, verify
from codelm.generate.text import TextState
from codelm.generate.trace import TraceStep, logit_lens, top_candidates
from codelm.model import Transformer
from codelm.model.kv_cache import KVCache

Alternatives = list[tuple[int, float]]  # (token, log-probability), most likely first


@dataclass(eq=False)
class Sampler:
    """How tokens are chosen for the rows that share it."""

    cfg: SamplingConfig
    gen: torch.Generator | None = None

    @classmethod
    def of(cls, cfg: SamplingConfig, device: torch.device | str = "cpu") -> Sampler:
        gen = None if cfg.seed is None else torch.Generator(device=device).manual_seed(cfg.seed)
        return cls(cfg, gen)

    def greedy(self) -> Sampler:
        return Sampler(replace(self.cfg, temperature=0.0))


@dataclass(eq=False)
class Row:
    """One completion being generated."""

    prompt: list[int]  # the ids the model reads (healed, fitted to the context)
    max_new_tokens: int  # 0 only scores the prompt
    sampler: Sampler
    text: TextState | None = None  # None: ids only, no text and no text rules
    allowed: torch.Tensor | None = None  # (vocab,) bool: what the first token may be (healing)
    top: int = 0  # alternatives recorded per token (the API's logprobs)
    score_prompt: bool = False  # also score each prompt token (the API's echo with logprobs)
    trace: str = ""  # "" | "top" | "lens" (trace.py)
    tokens: list[int] = field(default_factory=list)  # every generated id, an end token included
    logprobs: list[float] = field(default_factory=list)  # of each, under the model (temperature 1)
    tops: list[Alternatives | None] = field(default_factory=list)
    steps: list[TraceStep] = field(default_factory=list)
    prompt_scores: list[tuple[float, Alternatives | None]] | None = None  # of prompt tokens 1..
    reason: str | None = None  # why it ended (see the module docstring)
    seen: torch.Tensor | None = None  # (vocab,) bool, for the repetition penalty
    cached: int = 0  # prompt tokens whose keys and values came from the prefix cache
    lookup: Lookup | None = None  # drafts for speculative steps

    @property
    def done(self) -> bool:
        return self.reason is not None


class Engine:
    """Up to `rows` completions decoded together on `model`; `special` ids end a row.
    `vocab`: sample only ids below it, where the model has more rows than its tokenizer has
    tokens (Qwen2.5's embedding is padded from 151,665 tokens to 151,936 rows).
    `prefixes`: reuse prompts' keys and values (it may outlive the engine and serve the
    next one on the same model); `draft`: tokens drafted per row and step (0: none), while
    at most `draft_rows` rows are active."""

    def __init__(
        self,
        model: Transformer,
        rows: int,
        special: frozenset[int],
        max_len: int | None = None,
        vocab: int | None = None,
        prefixes: PrefixCache | None = None,
        draft: int = 0,
        draft_rows: int = SPECULATE_ROWS,
    ):
        self.model, self.special = model, special
        self.vocab = vocab if vocab is not None and vocab < model.cfg.vocab_size else None
        self.prefixes, self.draft, self.draft_rows = prefixes, draft, draft_rows
        self.drafted = self.kept = 0  # draft tokens proposed and kept, over the engine's life
        self.cache = model.new_cache(rows, max_len)
        self.active: list[Row] = []  # active[i] lives in cache row i
        self._next: torch.Tensor | None = None  # (n, 1) the last tokens, while no row came or went

    @property
    def free(self) -> int:
        return self.cache.k.size(1) - len(self.active)

    @torch.inference_mode()  # lighter than no_grad per op: +11% decode tokens/s for `small`
    def add(self, rows: list[Row]) -> list[Row]:
        """Prefill `rows` into free cache rows and choose their first tokens; returns the
        rows that ended at once (already retired)."""
        if len(rows) > self.free:
            raise ValueError(f"{len(rows)} rows for {self.free} free cache rows")
        if any(not r.prompt or len(r.prompt) > self.cache.max_len for r in rows):
            raise ValueError("a prompt is empty or longer than the cache")
        first = len(self.active)
        distinct: dict[tuple[int, ...], int] = {}
        which = [distinct.setdefault(tuple(r.prompt), len(distinct)) for r in rows]
        prompts = [list(p) for p in distinct]
        score = any(r.score_prompt for r in rows)
        hidden: list[torch.Tensor] | None = [] if any(r.trace == "lens" for r in rows) else None
        matches: list[tuple[int, Entry | None]] = [(0, None)] * len(prompts)
        if self.prefixes is not None and not score and hidden is None:
            matches = [self._match(p) for p in prompts]
        cached = [m for m, _ in matches]
        if any(cached):  # (P, 1, V): each prompt after its reused prefix, alone
            each = [self._prefill_after(p, first + d, *matches[d]) for d, p in enumerate(prompts)]
            logits = torch.cat(each)
            lens = torch.tensor([len(p) for p in prompts], device=self.cache.device)
        else:
            logits, lens = self._prefill(prompts, first, score, hidden)  # (P, T or 1, V), (P,)
        for slot in range(len(rows) - 1, -1, -1):  # back to front: a source is never overwritten
            if which[slot] != slot:
                self.cache.copy_row(first + which[slot], first + slot)
        self.active += rows
        self._next = None
        for r, d in zip(rows, which, strict=True):
            r.cached = cached[d]
            if r.score_prompt:
                r.prompt_scores = _score(logits[d, : len(r.prompt)], r.prompt, r.top)
        sel = torch.tensor(which, device=logits.device)  # each row's prompt
        at = (lens - 1) if score else torch.zeros_like(lens)
        last = logits[sel, at[sel]]  # (R, V)
        if hidden is not None:
            hidden = [h[sel, (lens - 1)[sel]][:, None] for h in hidden]
        return self._choose(first, last, hidden, fresh=True)

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """One token for every active row (more where drafts are kept); returns the rows that
        ended (already retired)."""
        if not self.active:
            return []
        drafts = self._drafts()
        if drafts is not None:
            return self._speculate(drafts)
        idx = self._next
        if idx is None:
            idx = torch.tensor([[r.tokens[-1]] for r in self.active], device=self.cache.device)
        hidden: list[torch.Tensor] | None = [] if any(r.trace == "lens" for r in self.active) else None
        logits = self.model(idx, self._view(), hidden=hidden)[:, -1]
        return self._choose(0, logits, hidden, fresh=False)

    def remove(self, row: Row) -> None:
        """Free `row`'s cache row; the last active row moves into it."""
        self._next = None
        slot, last = self.active.index(row), len(self.active) - 1
        if self.prefixes is not None:  # what the row's cache holds: its prompt, then its tokens
            held = (row.prompt + row.tokens)[: int(self.cache.lens[slot])]
            self.prefixes.store(held, self.cache.k[:, slot], self.cache.v[:, slot])
        if slot != last:
            self.cache.copy_row(last, slot)
            self.active[slot] = self.active[last]
        self.cache.set_length(last, 0)
        self.active.pop()

    def clear(self) -> None:
        self.active, self._next = [], None
        self.cache.set_lengths([0] * len(self.cache.lens))

    def _prefill(
        self, prompts: list[list[int]], first: int, every: bool, hidden: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over the distinct prompts, right padded, into cache rows first..;
        logits at every position when `every`, else at each prompt's last."""
        width = max(len(p) for p in prompts)
        device = self.cache.device
        idx = torch.tensor([p + [p[-1]] * (width - len(p)) for p in prompts], device=device)
        lens = torch.tensor([len(p) for p in prompts], device=device)
        view = self.cache.rows(first, len(prompts))
        view.set_lengths([0] * len(prompts))
        logits = self.model(idx, view, hidden=hidden, at=None if every else lens - 1)
        view.set_lengths([len(p) for p in prompts])  # the padding's keys are overwritten later
        return logits, lens

    def _match(self, prompt: list[int]) -> tuple[int, Entry | None]:
        """The longest stored prefix of `prompt` that this cache can take: all but the last
        token at most, since the last one's logits are what the prefill is for."""
        assert self.prefixes is not None
        m, entry = self.prefixes.match(prompt)
        k = self.cache.k
        if entry is None or entry.k.dtype != k.dtype or entry.k.shape[:2] != (k.size(0), k.size(2)):
            return 0, None
        return min(m, len(prompt) - 1), entry

    def _prefill_after(self, prompt: list[int], slot: int, m: int, entry: Entry | None) -> torch.Tensor:
        """Cache row `slot` gets `entry`'s first m positions, then the rest of `prompt` in one
        forward; logits (1, 1, V) at its last token."""
        view = self.cache.rows(slot, 1)
        if m:
            assert entry is not None
            view.k[:, 0, :, :m] = entry.k[:, :, :m]
            view.v[:, 0, :, :m] = entry.v[:, :, :m]
        view.set_lengths([m])
        rest = torch.tensor([prompt[m:]], device=self.cache.device)
        return self.model(rest, view, at=torch.tensor([len(prompt) - m - 1], device=self.cache.device))

    def _view(self) -> KVCache:
        """The cache rows of the active rows, 0..n-1."""
        n = len(self.active)
        return self.cache if n == len(self.cache.lens) else self.cache.rows(0, n)

    def _drafts(self) -> list[list[int]] | None:
        """Each active row's draft for a speculative step, or None for a plain step."""
        if not self.draft or len(self.active) > self.draft_rows or any(r.top or r.trace for r in self.active):
            return None
        limit = min(self.cache.max_len, self.model.cfg.block_size)
        k = min(self.draft, limit - 1 - int(self.cache.lens[: len(self.active)].max()))
        drafts = []
        for r in self.active:
            if r.lookup is None:
                r.lookup = Lookup(r.prompt + r.tokens, most=self.draft)
            drafts.append(r.lookup.draft(min(k, r.max_new_tokens - len(r.tokens) - 1)))
        return drafts if any(drafts) else None

    def _speculate(self, drafts: list[list[int]]) -> list[Row]:
        """Feed each row's last token and its draft in one forward; keep what verify keeps."""
        rows, T = self.active, 1 + max(len(d) for d in drafts)
        pad = [[r.tokens[-1]] * (T - 1 - len(d)) for r, d in zip(rows, drafts, strict=True)]
        idx = [[r.tokens[-1], *d, *more] for r, d, more in zip(rows, drafts, pad, strict=True)]
        view = self._view()
        before = view.lens.copy()
        logits = self.model(torch.tensor(idx, device=self.cache.device), view)  # (n, T, V)
        if self.vocab is not None:
            logits = logits[..., : self.vocab]
        logp = logits.float().log_softmax(-1)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(id(r.sampler), []).append(i)
        emitted: list[list[int]] = [[] for _ in rows]
        for members in groups.values():
            cfg, gen = rows[members[0]].sampler.cfg, rows[members[0]].sampler.gen
            seen = None
            if cfg.repetition_penalty != 1.0:
                seen = torch.stack([_seen(rows[i], logits.size(-1), logits.device) for i in members])
            histories = [rows[i].tokens for i in members]
            picks = verify(logits[members], [drafts[i] for i in members], cfg, gen, seen, histories)
            for i, toks in zip(members, picks, strict=True):
                emitted[i] = toks
        ended = []
        for i, (r, toks) in enumerate(zip(rows, emitted, strict=True)):
            lps = logp[i, torch.arange(len(toks)), torch.tensor(toks)].tolist()
            taken = 0
            for t, lp in zip(toks, lps, strict=True):
                self._accept(r, t, lp, None, None)
                taken += 1
                if r.done:
                    ended.append(r)
                    break
            kept = min(taken, len(toks) - 1)  # drafts taken (the row's own last token is never fed)
            view.lens[i] = before[i] + 1 + kept  # keys kept: the last token's, then those drafts'
            self.drafted, self.kept = self.drafted + len(drafts[i]), self.kept + kept
            if drafts[i] and r.lookup is not None:
                r.lookup.feedback(len(drafts[i]), kept)
        for r in ended:
            self.remove(r)
        self._next = None
        return ended

    def _choose(
        self, first: int, logits: torch.Tensor, hidden: list[torch.Tensor] | None, fresh: bool
    ) -> list[Row]:
        """Next token for rows first.. from their logits (R, V); retire those that end."""
        rows = self.active[first : first + len(logits)]
        if self.vocab is not None:  # rows no token maps to: never sampled, not in the softmax
            logits = logits[:, : self.vocab]
        logp = logits.float().log_softmax(-1)
        if all(r.sampler is rows[0].sampler for r in rows):  # generate, best-of-n: one sampler
            picks = self._sample(rows, logits, fresh)
        else:  # the server: a sampler per request
            groups: dict[int, list[int]] = {}
            for i, r in enumerate(rows):
                groups.setdefault(id(r.sampler), []).append(i)
            picks = torch.zeros(len(rows), dtype=torch.long, device=logits.device)
            for members in groups.values():
                picks[members] = self._sample([rows[i] for i in members], logits[members], fresh)
        chosen = logp.gather(1, picks[:, None])[:, 0].tolist()
        steps: dict[int, TraceStep] = {}
        if any(r.trace for r in rows):
            traced = [i for i, r in enumerate(rows) if r.trace]
            steps = dict(zip(traced, _trace(self.model, logp, picks, hidden, traced), strict=True))
        ended = []
        for i, (r, token) in enumerate(zip(rows, picks.tolist(), strict=True)):
            if r.max_new_tokens == 0:
                r.reason = "length"
            else:
                top = None
                if r.top:
                    values, ids = logp[i].topk(r.top)
                    top = list(zip(ids.tolist(), values.tolist(), strict=True))
                self._accept(r, token, chosen[i], top, steps.get(i))
            if r.done:
                ended.append(r)
        for r in ended:
            self.remove(r)
        self._next = picks[:, None] if first == 0 and not ended else None
        return ended

    def _sample(self, rows: list[Row], logits: torch.Tensor, fresh: bool) -> torch.Tensor:
        """Tokens (R,) for rows sharing one sampler."""
        cfg, gen = rows[0].sampler.cfg, rows[0].sampler.gen
        if fresh and any(r.allowed is not None for r in rows):  # healing: the first token's choices
            every = torch.ones(logits.size(-1), dtype=torch.bool)
            masks = torch.stack([every if r.allowed is None else r.allowed for r in rows])
            logits = logits.masked_fill(~masks.to(logits.device), -math.inf)
        if cfg.repetition_penalty != 1.0:
            seen = torch.stack([_seen(r, logits.size(-1), logits.device) for r in rows])
            logits = penalize(logits, seen, cfg.repetition_penalty)
        return sample(apply_dry(logits, [r.tokens for r in rows], cfg), cfg, gen)

    def _accept(
        self, r: Row, token: int, logprob: float, top: Alternatives | None, step: TraceStep | None
    ) -> None:
        r.tokens.append(token)
        r.logprobs.append(logprob)
        r.tops.append(top)
        if r.lookup is not None:
            r.lookup.extend((token,))
        if step is not None:
            r.steps.append(step)
        if r.seen is not None:
            r.seen[token] = True
        if token in self.special:  # end of text, or a token that opens another frame
            r.reason = "end_of_text"
        elif r.text is not None and (why := r.text.add(token)) is not None:
            r.reason = why  # the rule cut the text: no dangling byte is left to flush
            return
        elif len(r.tokens) >= r.max_new_tokens:
            r.reason = "length"
        elif len(r.prompt) + len(r.tokens) > min(self.model.cfg.block_size, self.cache.max_len):
            r.reason = "context_full"
        if r.done and r.text is not None:
            r.text.finish()  # flush a character left incomplete; trim to whole code (whole.py)


def _seen(r: Row, vocab: int, device: torch.device) -> torch.Tensor:
    if r.seen is None:
        r.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
    return r.seen


def _trace(
    model: Transformer,
    logp: torch.Tensor,
    picks: torch.Tensor,
    hidden: list[torch.Tensor] | None,
    rows: list[int],
) -> list[TraceStep]:
    """Trace steps of the chosen tokens of `rows` (indices into logp's rows)."""
    if not rows:
        return []
    sub = logp[rows]
    tops = top_candidates(sub)
    lens = logit_lens(model, [h[rows] for h in hidden]) if hidden else [None] * len(rows)
    probs = sub.gather(1, picks[rows][:, None])[:, 0].exp().tolist()
    chosen = picks[rows].tolist()
    return [TraceStep(t, p, top, ln) for t, p, top, ln in zip(chosen, probs, tops, lens, strict=True)]


def _score(logits: torch.Tensor, prompt: list[int], top: int) -> list[tuple[float, Alternatives | None]]:
    """Log-probability of each prompt token after the first given the ones before it,
    with the `top` most likely alternatives at each position."""
    lp = logits[:-1].float().log_softmax(-1)  # (T - 1, V): row t predicts token t + 1
    ids = torch.tensor(prompt[1:], device=lp.device)
    chosen = lp.gather(1, ids[:, None])[:, 0].tolist()
    tops: list[Alternatives | None] = [None] * len(chosen)
    if top:
        values, top_ids = lp.topk(top, dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(top_ids.tolist(), values.tolist(), strict=True)]
    return list(zip(chosen, tops, strict=True))
