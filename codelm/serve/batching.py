"""The server's step-level scheduler: continuous (dynamic) batching of completions.

One thread owns the model. Each turn of its loop it
1. drops rows whose client went away (`Job.cancel()`) or whose deadline passed,
2. admits waiting jobs into the free slots of a `SlotDecoder` (one batched prefill),
3. runs one decode step for every active row, samples each row with its own
   settings (temperature, top-p, top-k, seed), applies its stop sequences and
   stop rule, and hands each row's new text to its request.
So a request that arrives while a batch runs joins it at the next step, and a
finished row frees its slot for a waiting one at once.

Requests come in through `submit` (all rows of a request or none; past
`max_queue` waiting rows it raises `QueueFull`) and results go out as `Event`s
through each job's `sink`, called on the scheduler thread: the API layer passes
them to its event loop. An exception inside a step fails the rows of that step
with an "error" event and the loop goes on.

It does not preempt, prioritise, chunk long prefills or share prompt prefixes
between requests. `max_batch=1` serves one row at a time: the baseline that
bench/serve.py compares against.
"""

from __future__ import annotations

import collections
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from codelm.generate.healing import Healing
from codelm.generate.sampling import SamplingConfig, penalize, sample
from codelm.generate.stopping import StopRule
from codelm.model import Transformer
from codelm.serve.decoder import SlotDecoder
from codelm.serve.text import TextState
from codelm.tokenizer import CodeTokenizer


@dataclass
class TokenInfo:
    token: int
    logprob: float  # under the model's unfiltered distribution; nan for a prompt's first token
    top: list[tuple[int, float]] | None = None  # the most likely tokens at this position


@dataclass
class Event:
    kind: str  # start | delta | done | error
    index: int  # the job's index in its request
    text: str = ""  # new completion text (delta, done)
    tokens: list[TokenInfo] = field(default_factory=list)  # the tokens `text` completes
    # done: a stop rule's name (end_of_text, stop_string, block_end, repetition, ...),
    # length, context_full or timeout
    stop_rule: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_info: list[TokenInfo] | None = None  # start, when the job asked for prompt logprobs
    error: str = ""


@dataclass(eq=False)
class Job:
    """One completion to generate (one choice of a request)."""

    prompt: list[int]
    max_new_tokens: int  # 0 only scores the prompt
    sampling: SamplingConfig
    sink: Callable[[Event], None]
    index: int = 0
    rules: Sequence[StopRule] = ()  # codelm.generate.stopping rules on the completion's text
    logprobs: int | None = None  # alternatives per token (0: the chosen token only); None: off
    prompt_logprobs: bool = False
    deadline: float = math.inf  # time.monotonic() past which it ends with stop rule "timeout"
    cancelled: bool = False
    healing: Healing | None = None  # the first token re-spells the prompt's cut end (healing.py)

    @property
    def prompt_tokens(self) -> int:
        """The prompt's tokens as sent, the one that healing took off included (for usage)."""
        return len(self.prompt) + (self.healing is not None)

    def cancel(self) -> None:
        self.cancelled = True  # read by the scheduler thread at its next turn


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class _Row:
    job: Job
    text: TextState
    gen: torch.Generator | None
    infos: list[TokenInfo] = field(default_factory=list)
    given: int = 0  # infos already handed out
    generated: int = 0
    last: int = -1  # the token to feed at the next step
    cut: bool = False  # a rule cut the text
    seen: torch.Tensor | None = None  # (1, V) tokens generated so far, for the repetition penalty
    started: float = field(default_factory=time.monotonic)


class Scheduler:
    """Continuous batching of `Job`s on one model, in a thread of its own."""

    def __init__(
        self,
        model: Transformer,
        tok: CodeTokenizer,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_tokens: int = 4096,  # prompt tokens prefilled per turn (one job at least)
    ):
        self.model, self.tok = model, tok
        self.max_batch, self.max_queue, self.prefill_tokens = max_batch, max_queue, prefill_tokens
        self.dec = SlotDecoder(model, max_batch)
        self.bytes_of = tok.token_bytes
        self.special = frozenset(tok.special.values())
        self._waiting: collections.deque[Job] = collections.deque()
        self._rows: list[_Row] = []  # index == slot in self.dec
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._job_seconds = 1.0  # moving average of a job's run time, for Retry-After
        self.stats = dict.fromkeys(
            ("submitted", "completed", "cancelled", "timed_out", "errors", "tokens", "steps", "rows_stepped"),
            0,
        )

    # -- the API side -----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="codelm-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._rows)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free, from the queue length and recent job times."""
        waves = (len(self._waiting) + len(self._rows)) / self.max_batch
        return max(1, math.ceil(waves * self._job_seconds))

    def submit(self, jobs: list[Job]) -> None:
        with self._cv:
            if len(self._waiting) + len(jobs) > self.max_queue:
                raise QueueFull(self.retry_after())
            self._waiting.extend(jobs)
            self.stats["submitted"] += len(jobs)
            self._cv.notify()

    # -- the scheduler thread ----------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._waiting and not self._rows:
                    self._cv.wait()
                if self._stopping:
                    return
                admit = self._take_waiting()
            try:
                self._sweep()
                if admit:
                    self._admit(admit)
                if self._rows:
                    self._step()
            except Exception as e:  # a bug or an out-of-memory: fail these rows, keep serving
                traceback.print_exc(file=sys.stderr)
                jobs = dict.fromkeys([*admit, *(r.job for r in self._rows)])  # each job once
                self._fail(list(jobs), f"internal error: {type(e).__name__}: {e}")

    def _take_waiting(self) -> list[Job]:
        """Waiting jobs for the free slots (called under the lock); drops cancelled and expired ones."""
        now, out, tokens = time.monotonic(), [], 0
        while self._waiting and len(self._rows) + len(out) < self.max_batch:
            if out and tokens + len(self._waiting[0].prompt) > self.prefill_tokens:
                break  # the rest waits for the next turn, after one decode step
            job = self._waiting.popleft()
            if job.cancelled:
                self.stats["cancelled"] += 1
            elif now > job.deadline:
                self.stats["timed_out"] += 1
                self._emit(job, Event("done", job.index, stop_rule="timeout"))
            else:
                out.append(job)
                tokens += len(job.prompt)
        return out

    def _sweep(self) -> None:
        now = time.monotonic()
        gone = [
            (slot, "cancelled" if r.job.cancelled else "timeout")
            for slot, r in enumerate(self._rows)
            if r.job.cancelled or now > r.job.deadline
        ]
        self._retire(gone)

    def _admit(self, jobs: list[Job]) -> None:
        logits = self.dec.prefill([j.prompt for j in jobs], [j.prompt_logprobs for j in jobs])
        first = len(self._rows)
        for job, lg in zip(jobs, logits, strict=True):
            gen = None
            if job.sampling.seed is not None:
                gen = torch.Generator(device=self.dec.device).manual_seed(job.sampling.seed)
            skip = job.healing.size if job.healing else 0
            row = _Row(job, TextState(self.bytes_of, job.rules, skip=skip), gen)
            if job.sampling.repetition_penalty != 1.0:
                row.seen = torch.zeros_like(lg[-1:], dtype=torch.bool)
            self._rows.append(row)
            info = self._score_prompt(job, lg) if job.prompt_logprobs else None
            self._emit(job, Event("start", job.index, prompt_tokens=job.prompt_tokens, prompt_info=info))
        last = [
            lg[-1] if j.healing is None else lg[-1].masked_fill(~j.healing.allowed.to(lg.device), -math.inf)
            for j, lg in zip(jobs, logits, strict=True)
        ]
        self._advance(first, torch.stack(last))

    def _step(self) -> None:
        logits = self.dec.step([r.last for r in self._rows])
        self.stats["steps"] += 1
        self.stats["rows_stepped"] += len(self._rows)
        self._advance(0, logits)

    def _advance(self, first: int, logits: torch.Tensor) -> None:
        """Sample for rows first.. (one logits row each), stream their text, retire finished rows."""
        rows = self._rows[first:]
        picks = self._choose(rows, logits)
        done = []
        for slot, (row, info) in enumerate(zip(rows, picks, strict=True), start=first):
            why = self._accept(row, info)
            if why is not None:
                done.append((slot, why))
            else:
                text, n = row.text.take(final=False)
                if text or (row.job.logprobs is not None and n > row.given):
                    self._emit(row.job, Event("delta", row.job.index, text, row.infos[row.given : n]))
                    row.given = n
        self._retire(done)

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> list[TokenInfo | None]:
        logprobs = logits.float().log_softmax(-1)
        picks: list[TokenInfo | None] = []
        greedy = logits.argmax(-1).tolist()
        for i, row in enumerate(rows):
            cfg = row.job.sampling
            if row.job.max_new_tokens == 0:
                picks.append(None)
                continue
            if row.seen is None:
                token = greedy[i] if cfg.temperature == 0 else int(sample(logits[i : i + 1], cfg, row.gen))
            else:
                row_logits = penalize(logits[i : i + 1], row.seen, cfg.repetition_penalty)
                token = int(sample(row_logits, cfg, row.gen))
                row.seen[0, token] = True
            top = None
            if row.job.logprobs:
                values, ids = logprobs[i].topk(row.job.logprobs)
                top = list(zip(ids.tolist(), values.tolist(), strict=True))
            picks.append(TokenInfo(token, float(logprobs[i, token]), top))
        return picks

    def _accept(self, row: _Row, info: TokenInfo | None) -> str | None:
        """Take the row's new token; return why the row ends, or None."""
        if info is None:
            return "length"
        row.generated += 1
        row.last = info.token
        if info.token in self.special:  # end-of-text, or a token that opens another frame
            return "end_of_text"
        row.infos.append(info)
        why = row.text.add(info.token)
        if why is not None:
            row.cut = True
            return why
        if row.generated >= row.job.max_new_tokens:
            return "length"
        if len(row.job.prompt) + row.generated > self.model.cfg.block_size:
            return "context_full"
        return None

    def _retire(self, done: list[tuple[int, str]]) -> None:
        for slot, why in sorted(done, reverse=True):  # the last slot first: removal moves it
            self._finish(self._rows[slot], why)
            self.dec.remove(slot)
            self._rows[slot] = self._rows[-1]
            self._rows.pop()

    def _finish(self, row: _Row, why: str) -> None:
        job = row.job
        self.stats["tokens"] += row.generated
        if why == "cancelled":
            self.stats["cancelled"] += 1
            return
        self.stats["timed_out" if why == "timeout" else "completed"] += 1
        self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.monotonic() - row.started)
        if not row.cut:  # a cut text has no dangling byte to flush
            row.text.finish()
        text, n = row.text.take(final=True)
        tokens = row.infos[row.given : n]
        ev = Event("done", job.index, text, tokens, why, job.prompt_tokens, row.generated)
        self._emit(job, ev)

    def _score_prompt(self, job: Job, logits: torch.Tensor) -> list[TokenInfo]:
        """Log-probability of each prompt token given the ones before it (echo with logprobs)."""
        lp = logits[:-1].float().log_softmax(-1)  # (T - 1, V): row t predicts token t + 1
        ids = torch.tensor(job.prompt[1:], device=lp.device)
        chosen = lp.gather(1, ids[:, None])[:, 0].tolist()
        tops: list[list[tuple[int, float]] | None] = [None] * len(chosen)
        if job.logprobs:
            values, top_ids = lp.topk(job.logprobs, dim=-1)
            tops = [
                list(zip(i, v, strict=True)) for i, v in zip(top_ids.tolist(), values.tolist(), strict=True)
            ]
        rest = [TokenInfo(t, c, top) for t, c, top in zip(job.prompt[1:], chosen, tops, strict=True)]
        return [TokenInfo(job.prompt[0], math.nan, None), *rest]

    def _fail(self, jobs: list[Job], message: str) -> None:
        self.stats["errors"] += len(jobs)
        self._rows.clear()
        self.dec.clear()
        for job in jobs:
            self._emit(job, Event("error", job.index, error=message))

    def _emit(self, job: Job, ev: Event) -> None:
        try:
            job.sink(ev)
        except Exception:  # the request's event loop is gone; nobody is listening
            job.cancel()
