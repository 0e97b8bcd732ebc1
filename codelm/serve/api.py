"""`codelm serve`: an OpenAI-style completions API over one run, with a web playground.

Routes:
- `POST /v1/completions`: OpenAI's completions format (see schemas.py), plain
  or streamed as server-sent events (`data: {...}` ... `data: [DONE]`);
- `POST /v1/chat/completions`: OpenAI's chat format, the conversation as one
  instruction (see chat.py), plain or streamed;
- `GET /v1/models`: the one model;
- `GET /health`: whether the model is loaded and serving, and the queue depth;
- `GET /`: the playground page, served from codelm/serve/static (no CDN).

Every request becomes one `Job` per choice for the `Scheduler` (codelm/generate/scheduler.py),
which batches all running requests on the model step by step. A client that
disconnects cancels its jobs; each request has a deadline (`timeout`); past
`max_queue` waiting rows the answer is 503 with Retry-After. Bad input gets 400
(malformed JSON, unsupported values), 413 (oversized body) or 422 (wrong types,
out-of-range numbers, unknown fields), always with a one-line message in
OpenAI's error format; an internal failure fails only its own request.
`app.openapi()` documents the routes and the request body (schemas.request_schema);
tests/test_serve_schema.py generates requests from it. No route serves it.

Security: see guard.py for what the API key does and does not protect. The
default bind is 127.0.0.1, so nothing off this machine can reach the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from codelm.errors import CodelmError
from codelm.generate.config import SamplingConfig
from codelm.generate.healing import Healing
from codelm.generate.prompts import Prompt, plan, prompt_room
from codelm.generate.scheduler import Event, Job, QueueFull, Scheduler
from codelm.generate.speculate import DRAFT
from codelm.generate.stopping import StopConfig, build_rules
from codelm.memory import heap_bytes
from codelm.model import Transformer
from codelm.serve.chat import ChatOutput, chat_schema, parse_chat
from codelm.serve.guard import Guard, is_loopback
from codelm.serve.output import ClientGone, Output, cancel
from codelm.serve.schemas import (
    BadRequest,
    CompletionRequest,
    Echo,
    error_body,
    parse_request,
    request_schema,
)
from codelm.tokenizer import CodeTokenizer

STATIC = Path(__file__).parent / "static"
POLL_S = 0.25  # how often a waiting request checks whether its client is still there
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'"}


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback only; any other address exposes the model to the network
    port: int = 8000
    api_key: str | None = None  # Bearer key for every path but /health (CLI: --api-key or CODELM_API_KEY)
    max_batch: int = 16  # rows decoded together on the model; 1 serves one completion at a time
    max_queue: int = 64  # rows waiting for a slot; past it 503 with Retry-After
    max_tokens: int = 512  # cap on a request's max_tokens (larger asks are shortened to it)
    max_prompt_chars: int = 200_000  # longer prompts (prompt + suffix + instruction) get 400
    timeout: float = 120.0  # seconds per request, queue wait included; then it ends with "timeout"
    model_name: str | None = None  # the id in /v1/models and responses; default: the run's name
    prompt_cache_mb: int = 256  # keys and values of recent prompts kept for reuse; 0: none
    draft: int = DRAFT  # tokens drafted per row and step by prompt lookup; 0: none

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_tokens", "max_prompt_chars", "timeout"):
            if not getattr(self, name) > 0:
                raise CodelmError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("prompt_cache_mb", "draft"):
            if getattr(self, name) < 0:
                raise CodelmError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:  # 0: any free port
            raise CodelmError(f"port must be in [0, 65535], got {self.port}")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise BadRequest("send the request body as JSON with 'Content-Type: application/json'")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


class Service:
    """The model, its scheduler and the request handling of one server."""

    def __init__(self, model: Transformer, tok: CodeTokenizer, cfg: ServeConfig, name: str):
        self.model, self.tok, self.cfg, self.name = model, tok, cfg, name
        cache = cfg.prompt_cache_mb << 20
        self.sched = Scheduler(
            model, tok, cfg.max_batch, cfg.max_queue, prompt_cache_bytes=cache, draft=cfg.draft
        )
        self.block = model.cfg.block_size
        self.created = int(time.time())
        self.body_limit = 8 * cfg.max_prompt_chars + 65536  # bytes of a request body

    def plan(self, req: CompletionRequest, sink: Any) -> tuple[list[Job], list[Echo | None]]:
        """The jobs of a request (prompt-major, n per prompt) and each prompt's echo."""
        req.check_supported()
        prompts, n, cfg = req.prompts(), req.n or 1, self.cfg
        if len(prompts) * n > cfg.max_queue:
            raise BadRequest(f"{len(prompts) * n} completions asked; this server takes {cfg.max_queue}", "n")
        max_tokens = min(16 if req.max_tokens is None else req.max_tokens, cfg.max_tokens)
        stops = StopConfig(
            stop=req.stops(),
            block_end=bool(req.stop_at_block_end),
            max_repeats=3 if req.stop_on_repetition else 0,
            trim=bool(req.trim_to_parse),
        )
        deadline = time.monotonic() + cfg.timeout
        jobs: list[Job] = []
        echoes: list[Echo | None] = []
        for p in prompts:
            ids, context, echo, healing = self._encode(p, req, max_tokens)
            echoes.append(echo)
            fim = req.suffix is not None
            # prompts.fenced: in a chat template's frame, the code's fence closing ends the answer
            fence = req.instruction is not None and isinstance(p, str) and self.tok.uses_chat
            rules = build_rules(stops, context, self.tok.decode, fim, req.suffix or "", fence)
            for i in range(n):
                sampling = self._sampling(req, max_tokens, None if req.seed is None else req.seed + i)
                # The engine ends a row at max_tokens, or with context_full where the context ends first.
                job = Job(ids, max_tokens, sampling, sink, len(jobs), rules)
                job.logprobs, job.deadline = req.logprobs, deadline
                job.prompt_logprobs = bool(req.echo and req.logprobs is not None)
                job.healing = healing
                jobs.append(job)
        return jobs, echoes

    def _sampling(self, req: CompletionRequest, max_tokens: int, seed: int | None) -> SamplingConfig:
        return SamplingConfig(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_k=req.top_k or 0,
            # Any top_p under 1/vocab keeps just the likeliest token, and 1e-7 does the same; a
            # smaller one rounds to 0 in float32 and then drops every token (NaN probabilities).
            top_p=max(req.top_p or 1.0, 1e-7),
            max_new_tokens=max(max_tokens, 1),  # the job's own limit may be 0 (echo only)
            seed=seed,
            repetition_penalty=req.repetition_penalty or 1.0,
            dry_multiplier=req.dry_multiplier or 0.0,
            dry_base=req.dry_base or SamplingConfig.dry_base,
            dry_allowed_length=req.dry_allowed_length or SamplingConfig.dry_allowed_length,
        )

    def _encode(
        self, p: str | list[int], req: CompletionRequest, max_tokens: int
    ) -> tuple[list[int], str, Echo | None, Healing | None]:
        """Token ids (in the mode's layout, fitted to the context: `codelm.generate.prompts.plan`),
        the code just before the completion (for the block-end rule), the echo, and the healing."""
        size = len(p) + len(req.suffix or "") + len(req.instruction or "")
        if size > self.cfg.max_prompt_chars:
            raise BadRequest(f"prompt of {size} characters; this server takes {self.cfg.max_prompt_chars}")
        room = prompt_room(self.block, max_tokens)
        if isinstance(p, list):  # token ids, fed as they are (their end if too long)
            if any(not 0 <= t < self.tok.vocab_size for t in p):
                raise BadRequest(f"token ids must be in [0, {self.tok.vocab_size})", "prompt")
            ids = p[len(p) - room :] if len(p) > room else p
            text = self.tok.decode(ids)
            return ids or [self.tok.bos_id], text, Echo(text, 0 if ids else 1) if req.echo else None, None
        if not p and req.suffix is None and req.instruction is None:  # the start of a new file
            return [self.tok.bos_id], "", Echo("", 1) if req.echo else None, None
        exact = req.echo or req.logprobs is not None  # scored prompts keep their own tokens
        instruction, history = req.instruction, ()
        if instruction is not None and req._turns and self.tok.uses_chat:  # a chat, in the model's template
            *earlier, (_, instruction) = req._turns
            history = tuple(earlier)
        try:
            prompt = Prompt(p, req.suffix, instruction, req.fim_order or "psm", history)
            planned = plan(self.tok, prompt, self.block, max_tokens, healing=not exact)
        except CodelmError as e:
            raise BadRequest(str(e)) from None
        if not req.echo:
            return planned.ids, p, None, planned.healing
        ids, dropped = planned.ids, planned.dropped
        bos = int(dropped == 0 and ids[:1] == [self.tok.bos_id])
        return ids, p, Echo(p if dropped == 0 else self.tok.decode(ids[bos:]), bos), None

    async def completions(self, request: Request) -> Response:
        req = parse_request(await read_json(request, self.body_limit))
        return await self.answer(req, request, Output)

    async def chat_completions(self, request: Request) -> Response:
        req = parse_chat(await read_json(request, self.body_limit))
        return await self.answer(req, request, ChatOutput)

    async def answer(self, req: CompletionRequest, request: Request, output: type[Output]) -> Response:
        """Run a request's jobs; answer whole or streamed, in `output`'s format."""
        if not self.sched.alive:
            return _unavailable("the model is not serving (see the server log)", 5)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        sink = lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev)  # noqa: E731
        jobs, echoes = await asyncio.to_thread(self.plan, req, sink)  # tokenizing may take a while
        try:
            self.sched.submit(jobs)
        except QueueFull as e:
            return _unavailable(str(e), e.retry_after)
        reader = _Reader(self, queue, jobs, request)
        try:
            first = await reader.next()
        except ClientGone:
            cancel(jobs)
            return Response(status_code=499)
        if first is None or first.kind == "error" or (first.kind == "done" and first.stop_rule == "timeout"):
            cancel(jobs)  # nothing has started: answer with a status, not a stream
            if first is not None and first.kind == "done":
                return _unavailable("timed out waiting for a free slot", self.sched.retry_after())
            return JSONResponse(error_body(first.error if first else "no answer", "server_error"), 500)
        out = output(self, req, jobs, echoes)
        if req.stream:
            reader.request = None  # starlette cancels the stream's body when the client goes
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(
                out.stream(first, reader), media_type="text/event-stream", headers=headers
            )
        return await out.collect(first, reader)

    def health(self) -> JSONResponse:
        s = self.sched
        cache = s.engine.prefixes
        body = {
            "status": "ok" if s.alive else "unavailable",
            "model_loaded": s.alive,
            "model": self.name,
            "queue_depth": s.queue_depth,
            "active": s.active,
            "max_batch": s.max_batch,
            "max_queue": s.max_queue,
            # Filled once, then recycled: a client judging memory growth waits for it to be full.
            "prompt_cache": None if cache is None else {"bytes": cache.bytes, "max_bytes": cache.max_bytes},
            "heap": heap_bytes(),  # glibc's in use and free bytes: a leak grows the first
            "stats": dict(s.stats),
        }
        return JSONResponse(body, status_code=200 if s.alive else 503)

    def models(self) -> dict[str, Any]:
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "codelm"}
        card["context_length"] = self.model.cfg.block_size
        return {"object": "list", "data": [card]}


class _Reader:
    """A request's events from the scheduler, until each of its jobs is done."""

    def __init__(self, svc: Service, queue: asyncio.Queue[Event], jobs: list[Job], request: Request | None):
        self.svc, self.queue, self.request = svc, queue, request
        self.left = len(jobs)
        self.polled = time.monotonic()
        self.limit = time.monotonic() + svc.cfg.timeout + 30  # the scheduler enforces the real deadline

    async def next(self) -> Event | None:
        """The next event, None after the last. Checks for a disconnect every quarter second
        (raises ClientGone) while it waits or while events flow."""
        while self.left:
            now = time.monotonic()
            if self.request is not None and now - self.polled >= POLL_S:
                self.polled = now
                if await self.request.is_disconnected():
                    raise ClientGone
            try:
                # An event already waiting is taken at once: wait_for makes a task and a timer.
                ev = (
                    self.queue.get_nowait()
                    if self.queue.qsize()
                    else await asyncio.wait_for(self.queue.get(), POLL_S)
                )
            except TimeoutError:
                if time.monotonic() > self.limit or not self.svc.sched.alive:
                    self.left = 0
                    return Event("error", 0, error="the scheduler stopped answering")
                continue
            self.left -= ev.kind in ("done", "error")
            return ev
        return None


def _unavailable(message: str, retry_after: int) -> JSONResponse:
    body = error_body(message, "server_overloaded")
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(retry_after)})


def create_app(
    model: Transformer,
    tok: CodeTokenizer,
    cfg: ServeConfig = ServeConfig(),
    name: str = "codelm",
    scheduler_thread: bool = True,
) -> FastAPI:
    """The ASGI app; its scheduler thread starts and stops with the app's lifespan (once: a
    stopped scheduler does not start again), unless `scheduler_thread` is off: then the
    caller runs `app.state.service.sched.run()`."""
    svc = Service(model, tok, cfg, cfg.model_name or name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if scheduler_thread:
            svc.sched.start()
        yield
        svc.sched.stop()

    app = FastAPI(title="codelm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = svc
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # app.openapi() documents the body too (the route reads it by hand): schema tests generate from it.
    for path, route, schema in (
        ("/v1/completions", svc.completions, request_schema()),
        ("/v1/chat/completions", svc.chat_completions, chat_schema()),
    ):
        body = {"required": True, "content": {"application/json": {"schema": schema}}}
        app.add_api_route(path, route, methods=["POST"], openapi_extra={"requestBody": body})
    app.add_api_route("/v1/models", svc.models, methods=["GET"])
    app.add_api_route("/health", svc.health, methods=["GET"])
    app.add_api_route("/", lambda: FileResponse(STATIC / "index.html", headers=PAGE_HEADERS), methods=["GET"])

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(str(e), param=e.param), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail)), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body("internal server error (see the server log)", "server_error"), 500)

    app.add_middleware(Guard, api_key=cfg.api_key, loopback_only=is_loopback(cfg.host))
    return app
