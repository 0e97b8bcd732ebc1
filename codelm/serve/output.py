"""A completions request's answer, built from its scheduler events: whole, or streamed as
server-sent events (`data: {...}` ... `data: [DONE]`).

`Output` writes OpenAI's completions format; chat.py's `ChatOutput` the chat format from the
same events. Either takes its events from a reader (api.py's `_Reader`), which raises
`ClientGone` when the client hangs up; every way out cancels the request's jobs, so their rows
leave the engine at its next step.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response

from codelm.generate.scheduler import Event, Job
from codelm.serve.schemas import Choice, CompletionRequest, Echo, LogprobBuilder, error_body, usage


class ClientGone(Exception):
    pass


class Output:
    """Builds a request's answer in OpenAI's completions format, whole or as server-sent events;
    a subclass changes the format by `whole` and `chunk`."""

    ID, OBJECT, CHUNK = "cmpl", "text_completion", "text_completion"  # the id's prefix, object names

    def __init__(self, svc: Any, req: CompletionRequest, jobs: list[Job], echoes: list[Echo | None]):
        self.jobs, self.echoes, self.n = jobs, echoes, req.n or 1
        self.want_usage = bool(req.stream_options and req.stream_options.include_usage)
        lp = req.logprobs is not None
        self.choices = [Choice(j.index, LogprobBuilder(svc.tok) if lp else None) for j in jobs]
        self.id, self.created, self.model = f"{self.ID}-{uuid.uuid4().hex}", int(time.time()), svc.name

    def top(self, chunk: bool) -> dict[str, Any]:
        """The fields every answer and every chunk of the stream starts with."""
        kind = self.CHUNK if chunk else self.OBJECT
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self) -> dict[str, Any]:
        """The answer once every choice is done."""
        choices = [c.to_dict() for c in self.choices]
        return {**self.top(False), "choices": choices, "usage": usage(self.choices, self.n)}

    def chunk(self, c: Choice, ev: Event, text: str, part: dict | None) -> dict[str, Any] | None:
        """The stream's chunk for one event of choice `c` (its new text, or its end); None
        when the event adds nothing to show."""
        if ev.kind == "start" and not text and not part:
            return None
        d = c.to_dict()
        d.update(text=text, logprobs=part)
        if ev.kind != "done":
            d["finish_reason"] = d["stop_rule"] = None
        return {**self.top(True), "choices": [d]}

    async def collect(self, ev: Event | None, reader: Any) -> Response:
        try:
            while ev is not None:
                if ev.kind == "error":
                    return JSONResponse(error_body(ev.error, "server_error"), status_code=500)
                self.choices[ev.index].add(ev, self.echoes[ev.index // self.n])
                ev = await reader.next()
        except ClientGone:
            return Response(status_code=499)
        finally:
            cancel(self.jobs)
        return JSONResponse(self.whole())

    async def stream(self, ev: Event | None, reader: Any) -> AsyncIterator[str]:
        try:
            while ev is not None:
                if ev.kind == "error":
                    yield sse(error_body(ev.error, "server_error"))
                    break
                c = self.choices[ev.index]
                text, part = c.add(ev, self.echoes[ev.index // self.n])
                if (chunk := self.chunk(c, ev, text, part)) is not None:
                    yield sse(chunk)
                ev = await reader.next()
            if self.want_usage:
                yield sse({**self.top(True), "choices": [], "usage": usage(self.choices, self.n)})
            yield "data: [DONE]\n\n"
        finally:
            cancel(self.jobs)  # a disconnect lands here too: its rows stop at the next step


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def cancel(jobs: list[Job]) -> None:
    for j in jobs:
        j.cancel()
