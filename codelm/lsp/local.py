"""The editor's completions from a run's model in this process (`codelm lsp RUN`).

The run is loaded once (int8 on CPU by default), warmed up, and decoded by the one
engine through its step scheduler (generate/scheduler.py) with prompt reuse and
drafting on. The scheduler runs in the main thread (torch is faster there, see
`Scheduler.run`); requests come from the language server's event loop. Cancelling the
task awaiting `complete` stops the generation itself at the scheduler's next step (the
rows leave the engine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from codelm.errors import CodelmError
from codelm.generate.config import SamplingConfig
from codelm.generate.prompts import Prompt, plan
from codelm.generate.scheduler import Event, Job, QueueFull, Scheduler
from codelm.generate.stopping import StopConfig, build_rules
from codelm.lsp.backend import Answer, Ask
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer

MAX_REPEATS = 3  # a line or token cycle seen more often ends a completion (Continue stops after 3)


class LocalBackend:
    """A run's model in this process, decoding through the engine's scheduler."""

    def __init__(
        self,
        model: Transformer,
        tok: CodeTokenizer,
        max_batch: int = 8,
        prompt_cache_mb: int = 256,
        on_stopped: Callable[[float], None] | None = None,
    ):
        self.model, self.tok = model, tok
        self.context_tokens = model.cfg.block_size
        self.sched = Scheduler(model, tok, max_batch, max_queue=64, prompt_cache_bytes=prompt_cache_mb << 20)
        self.on_stopped = on_stopped  # ms from a cancel until its rows left the engine

    def count(self, text: str) -> int:
        return len(self.tok.encode(text))

    def warm_up(self) -> None:
        """One short completion before serving: kernels compiled and caches sized, so the
        first keystroke does not pay for them."""
        from codelm.generate.generator import complete

        complete(self.model, self.tok, "def f(x):\n", SamplingConfig(0.0, max_new_tokens=4))

    def run(self, on_start: Callable[[], None]) -> None:
        """Decode in the calling (main) thread until `stop()`."""
        self.sched.run(on_start=on_start)

    def stop(self) -> None:
        self.sched.stop()

    async def complete(self, ask: Ask) -> Answer:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        cancelled_at: list[float] = []

        def sink(ev: Event) -> None:  # on the scheduler's thread
            if ev.kind == "done" and ev.stop_rule == "cancelled":
                if self.on_stopped is not None and cancelled_at:
                    self.on_stopped(1000 * (time.perf_counter() - cancelled_at[0]))
                return
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        jobs = self._jobs(ask, sink)
        texts, used, left = [""] * len(jobs), [0, 0, 0], len(jobs)
        try:
            self.sched.submit(jobs)
        except QueueFull as e:
            raise CodelmError(f"busy: {e}") from None
        try:
            while left:
                ev = await queue.get()
                if ev.kind == "error":
                    raise CodelmError(ev.error)
                texts[ev.index] += ev.text
                if ev.kind == "done":
                    left -= 1
                    used = [ev.prompt_tokens, ev.cached_tokens, used[2] + ev.completion_tokens]
        finally:
            if left:  # cancelled or failed: the scheduler drops the rows at its next turn
                cancelled_at.append(time.perf_counter())
                for job in jobs:
                    job.cancel()
        return Answer(texts, *used)

    def _jobs(self, ask: Ask, sink: Callable[[Event], None]) -> list[Job]:
        prompt = Prompt(ask.prefix, ask.suffix, fim_order="spm")
        planned = plan(self.tok, prompt, self.context_tokens, ask.max_tokens)
        stops = StopConfig(
            stop=() if ask.multiline else ("\n",),
            block_end=ask.multiline,
            max_lines=ask.max_lines if ask.multiline else 0,
            max_repeats=MAX_REPEATS,
        )
        rules = build_rules(stops, ask.code_before, self.tok.decode, fim=True, after=ask.suffix)
        jobs = []
        for i, t in enumerate(ask.temperatures):
            sampling = SamplingConfig(t, max_new_tokens=ask.max_tokens, seed=ask.seed + i)
            job = Job(planned.ids, ask.max_tokens, sampling, sink, i, rules)
            job.healing = planned.healing
            jobs.append(job)
        return jobs
