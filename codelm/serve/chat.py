"""`POST /v1/chat/completions`: OpenAI's chat format over codelm's instruction mode.

codelm's models learn instruction -> code pairs (`<|instruction|> text <|code|> code`), not
conversations. So a chat request becomes one completions request in that layout: the system
and developer messages, then the earlier turns (code fences dropped from the assistant's),
then the user's last message, joined by blank lines, are the instruction, as the notebook lays
out its context before a request, and as `codelm data build` reads a chat fine-tuning file
(codelm.data.instruct.conversation). An imported instruct model with a chat template gets the
messages as turns in its template instead (the request carries them: api.py chooses). The
code the model writes comes back as the assistant's message inside a ```python fence, as chat
clients render Markdown. A reply ends at end-of-text, where the model closes the fence (chat
templates), or where it starts to repeat itself, and is trimmed back to code that parses
(codelm.generate.whole); with no `max_tokens` (or `max_completion_tokens`) it may run to the
server's cap (`--max-tokens`).

Sampling takes OpenAI's defaults (temperature 1, top-p 1) unless given, and codelm's
extensions (`top_k`, `repetition_penalty`, DRY) as the completions API does, except that the
repetition penalty and DRY are on by default (codelm's own values, as `codelm generate` and
the notebook decode): chat clients send neither, and show the reply whole. Refused with a 400 that
names the field: penalties other than 0, `logit_bias`, `logprobs`, tools, a `response_format`
other than text, tool messages, non-text content, a conversation whose last message is not
the user's. What it does not do: remember anything between requests, or chat in prose.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codelm.data.instruct import conversation
from codelm.generate.config import SamplingConfig
from codelm.generate.scheduler import Event
from codelm.serve.output import Output
from codelm.serve.schemas import (
    BadRequest,
    Choice,
    CompletionRequest,
    Sampled,
    finish_reason,
    request_schema,
    unicode,
    usage,
    validation_message,
)
from codelm.tokenizer.chat import FENCE, fence_close

NO_LIMIT = 2**31 - 1  # no max_tokens: the server's cap applies


class Part(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: str
    text: str | None = None

    @field_validator("text")
    @classmethod
    def _unicode(cls, v: Any) -> Any:
        return unicode(v)  # lone surrogates read as U+FFFD, as in the completions API


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # clients add their own fields

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = None

    @field_validator("content")
    @classmethod
    def _unicode(cls, v: Any) -> Any:
        return unicode(v)

    def text(self) -> str:
        if self.role == "tool":
            raise BadRequest("tool messages are not supported", "messages")
        if self.content is None or isinstance(self.content, str):
            text = self.content or ""
        elif any(p.type != "text" or p.text is None for p in self.content):
            raise BadRequest("only text content is supported", "messages")
        else:
            text = "".join(p.text or "" for p in self.content)
        return text


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)  # OpenAI's newer name; wins over max_tokens
    # OpenAI's, accepted at neutral values only
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    def instruction(self) -> str:
        """The conversation as one instruction: system, earlier turns, then the last request."""
        if self.messages[-1].role != "user":
            raise BadRequest("the last message must be the user's: the reply answers it", "messages")
        text = conversation([(m.role, m.text()) for m in self.messages])
        if not text:
            raise BadRequest("the messages hold no text", "messages")
        return text

    def to_completion(self) -> CompletionRequest:
        self.check_neutral()
        if self.logprobs or self.top_logprobs:
            raise BadRequest("logprobs are not supported in chat: use /v1/completions", "logprobs")
        if self.tools or self.tool_choice not in (None, "none"):
            raise BadRequest("tools are not supported", "tools")
        if self.response_format not in (None, {"type": "text"}):
            raise BadRequest("only the text response_format is supported", "response_format")
        limit = self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens
        shared = {name: getattr(self, name) for name in Sampled.model_fields}
        # A chat client sends no loop guards, and shows the reply whole: codelm's own defaults.
        for name in ("repetition_penalty", "dry_multiplier"):
            shared[name] = getattr(SamplingConfig, name) if shared[name] is None else shared[name]
        req = CompletionRequest(
            **shared,
            prompt="",
            instruction=self.instruction(),
            max_tokens=NO_LIMIT if limit is None else limit,
            stop_on_repetition=True,
            trim_to_parse=True,
        )
        req._turns = tuple((m.role, m.text()) for m in self.messages)  # for a chat template's turns
        return req


def parse_chat(obj: Any) -> CompletionRequest:
    """The completions request a decoded chat body stands for; BadRequest (422) with one line
    naming each bad field, or 400 for what is understood but not supported."""
    try:
        chat = ChatRequest.model_validate(obj)
    except ValidationError as e:
        raise BadRequest(validation_message(e), status=422) from None
    return chat.to_completion()


def chat_schema() -> dict[str, Any]:
    return request_schema(ChatRequest)


class ChatOutput(Output):
    """The answer in OpenAI's chat format: the assistant's message whole, or streamed as deltas
    (the role and the opening fence first, the closing fence with the finish reason)."""

    ID, OBJECT, CHUNK = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def whole(self) -> dict[str, Any]:
        choices = []
        for c in self.choices:
            message = {"role": "assistant", "content": FENCE + c.text + fence_close(c.text)}
            choices.append({"index": c.index, "message": message, **_ending(c)})
        return {**self.top(False), "choices": choices, "usage": usage(self.choices, self.n)}

    def chunk(self, c: Choice, ev: Event, text: str, part: dict | None) -> dict[str, Any] | None:
        if ev.kind == "start":
            delta = {"role": "assistant", "content": FENCE}
        elif ev.kind == "done":
            delta = {"content": text + fence_close(c.text)}
        elif text:
            delta = {"content": text}
        else:
            return None
        ending = _ending(c) if ev.kind == "done" else dict.fromkeys(("finish_reason", "stop_rule", "syntax"))
        return {**self.top(True), "choices": [{"index": c.index, "delta": delta, **ending}]}


def _ending(c: Choice) -> dict[str, Any]:
    return {"finish_reason": finish_reason(c.stop_rule), "stop_rule": c.stop_rule, "syntax": c.syntax}
