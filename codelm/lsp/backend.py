"""Where the editor's completions come from: the model in this process, or a server.

- `LocalBackend`: a run loaded once (int8 on CPU by default), warmed up, and decoded by
  the one engine through its step scheduler (generate/scheduler.py) with prompt reuse
  and drafting on. The scheduler runs in the main thread (torch is faster there, see
  `Scheduler.run`); requests come from the language server's event loop.
- `RemoteBackend`: any OpenAI-style `/v1/completions` endpoint that takes a `suffix`
  (`codelm serve`, llama.cpp's server, vLLM), streamed. Its tokenizer is not ours, so
  prompt sizes are estimated (`CHARS_PER_TOKEN`) on the safe side.

Both are cancelled the asyncio way: cancelling the task awaiting `complete` stops the
generation itself, the local one at the scheduler's next step (the rows leave the
engine), the remote one by closing the stream (`codelm serve` drops the rows then).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from codelm.errors import CodelmError
from codelm.generate.prompts import Prompt, plan
from codelm.generate.sampling import SamplingConfig
from codelm.generate.scheduler import Event, Job, QueueFull, Scheduler
from codelm.generate.stopping import StopConfig, build_rules
from codelm.model import Transformer
from codelm.tokenizer import CodeTokenizer

CHARS_PER_TOKEN = 2.5  # a remote model's tokens are estimated; code averages 3-4 characters a token
REMOTE_CONTEXT = 2048  # a remote model's context when its /v1/models does not say
MAX_REPEATS = 3  # a line or token cycle seen more often ends a completion (Continue stops after 3)


@dataclass(frozen=True)
class Ask:
    """One completion request, as the language server makes it."""

    prefix: str  # the prompt's prefix part: repository context, then the document before the cursor
    suffix: str  # the document after the cursor, as kept
    code_before: str  # the document before the cursor (kept part): block end is read from it
    multiline: bool
    max_tokens: int
    max_lines: int
    temperatures: tuple[float, ...] = (0.0,)  # one completion per temperature
    seed: int = 0


@dataclass(frozen=True)
class Answer:
    texts: list[str]
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values were reused (local only)
    completion_tokens: int = 0


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


class RemoteBackend:
    """An OpenAI-style completions server, streamed; `start()` reads its model and context."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 60.0):
        self.url, self.model, self.timeout = url.rstrip("/"), model, timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.context_tokens = REMOTE_CONTEXT
        self.codelm = False  # a codelm server takes SPM order and block-end stops
        self._client: Any = None  # made in the event loop that uses it

    def _http(self) -> Any:
        import httpx

        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout)

    def count(self, text: str) -> int:
        return int(len(text) / CHARS_PER_TOKEN) + 1

    async def start(self) -> None:
        """Ask /v1/models which model to name and how long its context is; a server that
        does not answer is a one-line error."""
        try:
            async with self._http() as client:
                r = await client.get("/v1/models")
                r.raise_for_status()
                cards = r.json().get("data") or []
        except Exception as e:
            raise CodelmError(f"cannot reach the completions server at {self.url}: {e}") from None
        card = next((c for c in cards if self.model in (None, c.get("id"))), None)
        if card is None:
            names = ", ".join(str(c.get("id")) for c in cards) or "none"
            raise CodelmError(f"the server at {self.url} has no model {self.model!r} (it has: {names})")
        self.model = self.model or card.get("id")
        self.codelm = card.get("owned_by") == "codelm"
        for key in ("context_length", "max_model_len", "n_ctx"):
            if isinstance(card.get(key), int) and card[key] > 0:
                self.context_tokens = card[key]
                break

    async def complete(self, ask: Ask) -> Answer:
        """One streamed request (n = the temperatures; sampled ones share the highest);
        cancelling the awaiting task closes the stream, and the server stops generating."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": ask.prefix,
            "suffix": ask.suffix,
            "max_tokens": ask.max_tokens,
            "temperature": max(ask.temperatures),
            "n": len(ask.temperatures),
            "stream": True,
            "seed": ask.seed,
        }
        if not ask.multiline:
            body["stop"] = ["\n"]
        if self.codelm:
            body.update(
                fim_order="spm", stop_at_block_end=ask.multiline, stop_on_repetition=True, trim_to_parse=True
            )
        texts = [""] * len(ask.temperatures)
        if self._client is None:
            self._client = self._http()
        async with self._client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                detail = (await r.aread()).decode("utf-8", "replace")[:300]
                raise CodelmError(f"the completions server answered {r.status_code}: {detail}")
            async for line in r.aiter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    continue
                for choice in json.loads(line[5:]).get("choices", []):
                    i = choice.get("index", 0)
                    if 0 <= i < len(texts):
                        texts[i] += choice.get("text") or ""
        return Answer(texts)
