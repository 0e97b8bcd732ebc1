"""A step-level scheduler over the engine: continuous (dynamic) batching of completions
for the callers that serve many requests at once (`codelm serve`, `codelm lsp`).

One thread owns the model. Each turn of its loop it
1. drops rows whose client went away (`Job.cancel()`) or whose deadline passed,
2. admits waiting jobs as rows of the decoding engine (`codelm.generate.engine`:
   one batched prefill into its free cache rows),
3. runs one engine step for every active row (each sampled with its own
   settings: temperature, top-p, top-k, seed; each with its own stop rules) and
   hands each row's new text to its request.
It is a scheduler and nothing more: queue, admission, deadlines, cancellation
and events. The model, its cache, sampling, text and stop rules are the engine's,
the same that `codelm generate` decodes with.
So a request that arrives while a batch runs joins it at the next step, and a
finished row frees its slot for a waiting one at once.

Requests come in through `submit` (all rows of a request or none; past
`max_queue` waiting rows it raises `QueueFull`) and results go out as `Event`s
through each job's `sink`, called on the scheduler thread: the API layer passes
them to its event loop. An exception inside a step fails the rows of that step
with an "error" event and the loop goes on.

Prompt prefixes are shared between requests through the engine's prefix cache
(`prompt_cache_bytes`, generate/prefix.py): a request prefills only the tokens after
the longest prefix that an earlier request's keys and values cover, and its usage
counts them as cached. Steps draft tokens by prompt lookup (`draft`,
generate/speculate.py). It does not preempt, prioritise or chunk long prefills.
`max_batch=1` serves one row at a time: the baseline that bench/serve.py compares against.
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

from codelm.generate.config import SamplingConfig
from codelm.generate.engine import Engine, Row, Sampler
from codelm.generate.healing import Healing
from codelm.generate.prefix import PrefixCache
from codelm.generate.speculate import DRAFT
from codelm.generate.stopping import StopRule
from codelm.generate.text import TextState
from codelm.memory import give_back_free_memory
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer

# Seconds of work between two malloc_trim calls (memory.py): one took 0.1-1 ms on a
# 560 MiB server heap, so a call every 5 s costs nothing a client could see.
TRIM_EVERY = 5.0


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
    # length, context_full, timeout, or cancelled (sent when a cancelled row left the engine)
    stop_rule: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, those whose keys and values were reused
    completion_tokens: int = 0
    prompt_info: list[TokenInfo] | None = None  # start, when the job asked for prompt logprobs
    error: str = ""
    syntax: str = ""  # done, after a stop that cuts anywhere: parses | trimmed | unparsed (whole.py)


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
class _Live:
    """A job being decoded: its engine row and what was handed out."""

    job: Job
    row: Row
    given: int = 0  # tokens already handed out
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
        prompt_cache_bytes: int = 256 << 20,  # keys and values of recent prompts; 0: no reuse
        draft: int = DRAFT,  # tokens drafted per row and step; 0: none
    ):
        self.model, self.tok = model, tok
        self.max_batch, self.max_queue, self.prefill_tokens = max_batch, max_queue, prefill_tokens
        prefixes = PrefixCache(prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        self.engine = Engine(model, max_batch, tok.stop_ids, None, tok.vocab_size, prefixes, draft)
        self.bytes_of = tok.token_bytes
        self._waiting: collections.deque[Job] = collections.deque()
        self._rows: dict[Row, _Live] = {}  # the engine's active rows
        self._cv = threading.Condition()
        self._stopping = False
        self._running = False  # inside `run`, in whichever thread
        self._trimmed = time.monotonic()  # when free heap memory was last given back
        self._thread: threading.Thread | None = None
        self._job_seconds = 1.0  # moving average of a job's run time, for Retry-After
        self.stats = dict.fromkeys(
            ("submitted", "completed", "cancelled", "timed_out", "errors", "tokens", "steps", "rows_stepped"),
            0,
        )

    # -- the API side -----------------------------------------------------------------
    def start(self) -> None:
        """Run the scheduler in a thread of its own (tests, an app embedded in a program)."""
        self._thread = threading.Thread(target=self.run, name="codelm-scheduler", daemon=True)
        self._thread.start()

    def run(self, on_start: Callable[[], None] | None = None) -> None:
        """Run the scheduler in the calling thread until `stop()`; `on_start` runs once it is
        alive. `codelm serve` runs it in the main thread: torch's ops called from another
        thread ran 2.4x slower there (a `tiny` decode, 97 against 240 ms for 64 tokens,
        2 cores: that thread gets a new OpenMP team whose workers sleep between ops)."""
        self._running = True
        try:
            if on_start is not None:
                on_start()
            self._run()
        finally:
            self._running = False

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._running and not self._stopping

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
                self._give_back_memory()
            except Exception as e:  # a bug or an out-of-memory: fail these rows, keep serving
                traceback.print_exc(file=sys.stderr)
                jobs = dict.fromkeys([*admit, *(live.job for live in self._rows.values())])  # each once
                self._fail(list(jobs), f"internal error: {type(e).__name__}: {e}")

    def _give_back_memory(self) -> None:
        """Every TRIM_EVERY s of work, return the heap's free pages (memory.py): requests of
        every size leave holes that glibc would otherwise keep, and RSS would creep up."""
        now = time.monotonic()
        if now - self._trimmed >= TRIM_EVERY:
            self._trimmed = now
            give_back_free_memory()

    def _take_waiting(self) -> list[Job]:
        """Waiting jobs for the free slots (called under the lock); drops cancelled and expired ones."""
        now, out, tokens = time.monotonic(), [], 0
        while self._waiting and len(self._rows) + len(out) < self.max_batch:
            if out and tokens + len(self._waiting[0].prompt) > self.prefill_tokens:
                break  # the rest waits for the next turn, after one decode step
            job = self._waiting.popleft()
            if job.cancelled:
                self.stats["cancelled"] += 1
                self._emit(job, Event("done", job.index, stop_rule="cancelled"))
            elif now > job.deadline:
                self.stats["timed_out"] += 1
                self._emit(job, Event("done", job.index, stop_rule="timeout"))
            else:
                out.append(job)
                tokens += len(job.prompt)
        return out

    def _sweep(self) -> None:
        now = time.monotonic()
        for live in list(self._rows.values()):
            if live.job.cancelled or now > live.job.deadline:
                self.engine.remove(live.row)
                self._finish(live, "cancelled" if live.job.cancelled else "timeout")

    def _admit(self, jobs: list[Job]) -> None:
        lives = [_Live(job, self._row(job)) for job in jobs]
        self._rows.update((live.row, live) for live in lives)
        ended = self.engine.add([live.row for live in lives])
        for live in lives:
            job, scores = live.job, live.row.prompt_scores
            info = None
            if scores is not None:
                rest = [TokenInfo(t, lp, top) for t, (lp, top) in zip(job.prompt[1:], scores, strict=True)]
                info = [TokenInfo(job.prompt[0], math.nan, None), *rest]
            start = Event("start", job.index, prompt_tokens=job.prompt_tokens, cached_tokens=live.row.cached)
            start.prompt_info = info
            self._emit(job, start)
        self._hand_out(lives, ended)

    def _row(self, job: Job) -> Row:
        skip = job.healing.size if job.healing else 0
        text = TextState(self.bytes_of, job.rules, skip=skip)
        allowed = job.healing.allowed if job.healing else None
        sampler = Sampler.of(job.sampling, self.engine.cache.device)
        top, score = job.logprobs or 0, job.prompt_logprobs
        return Row(job.prompt, job.max_new_tokens, sampler, text, allowed, top=top, score_prompt=score)

    def _step(self) -> None:
        lives = list(self._rows.values())
        ended = self.engine.step()
        self.stats["steps"] += 1
        self.stats["rows_stepped"] += len(lives)
        self._hand_out(lives, ended)

    def _hand_out(self, lives: list[_Live], ended: list[Row]) -> None:
        """Stream each row's new text; end the rows that ended."""
        done = set(ended)
        for live in lives:
            if live.row in done:
                self._finish(live, live.row.reason or "length")
                continue
            assert live.row.text is not None
            text, n = live.row.text.take(final=False)
            if text or (live.job.logprobs is not None and n > live.given):
                self._emit(live.job, Event("delta", live.job.index, text, self._infos(live, n)))

    def _infos(self, live: _Live, n: int) -> list[TokenInfo]:
        """The tokens given..n of a row (never its end token), marked as handed out."""
        r = live.row
        out = [TokenInfo(r.tokens[i], r.logprobs[i], r.tops[i]) for i in range(live.given, n)]
        live.given = max(live.given, n)
        return out

    def _finish(self, live: _Live, why: str) -> None:
        job, row = live.job, live.row
        del self._rows[row]
        self.stats["tokens"] += len(row.tokens)
        if why == "cancelled":  # told, so a caller can see when its generation stopped
            self.stats["cancelled"] += 1
            self._emit(
                job, Event("done", job.index, stop_rule="cancelled", completion_tokens=len(row.tokens))
            )
            return
        self.stats["timed_out" if why == "timeout" else "completed"] += 1
        self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.monotonic() - live.started)
        assert row.text is not None
        if row.reason is None:  # timed out mid-generation: flush a character left incomplete
            row.text.finish()
        text, n = row.text.take(final=True)
        infos, used = self._infos(live, n), (job.prompt_tokens, row.cached, len(row.tokens))
        self._emit(job, Event("done", job.index, text, infos, why, *used, syntax=row.text.syntax))

    def _fail(self, jobs: list[Job], message: str) -> None:
        self.stats["errors"] += len(jobs)
        self._rows.clear()
        self.engine.clear()
        for job in jobs:
            self._emit(job, Event("error", job.index, error=message))

    def _emit(self, job: Job, ev: Event) -> None:
        try:
            job.sink(ev)
        except Exception:  # the request's event loop is gone; nobody is listening
            job.cancel()
