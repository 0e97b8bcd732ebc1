"""The OpenAI completions format: the request model, and the responses built from scheduler events.

Requests are validated strictly (a string where a number belongs is an error,
not a guess) and unknown fields are refused with 422, so a misspelt option is
never silently ignored. OpenAI's own fields that this server cannot honour
(`best_of` above `n`, penalties, `logit_bias`) are accepted only at their
neutral values; anything else is a 400 that names the field. `null` means
the default, as in OpenAI's API. A lone surrogate in a string (JSON's `\\ud800`,
not Unicode) reads as U+FFFD, as the tokenizer reads it.

Extensions (codelm's own fields): `top_k`, `repetition_penalty`, DRY's `dry_multiplier`,
`dry_base` and `dry_allowed_length` (llama.cpp's names; off unless given);
`instruction` (frame the prompt as `<|instruction|> text <|code|> prompt`);
`stop_at_block_end` (end when a line returns to the prompt's block level) and
`stop_on_repetition` (end when the completion loops): the rules of
`codelm.generate.stopping`, off unless asked for, as OpenAI clients expect raw
completions; `trim_to_parse` (a completion that ends mid-construct, cut by a rule
or broken by the model, is trimmed back to code that parses, and a stream releases
only whole lines: `codelm.generate.whole`), off unless asked for too.
Each choice also carries `stop_rule`, the stop that fired:
end_of_text | stop_string | fence | block_end | repetition (finish_reason "stop"),
length | context_full | timeout (finish_reason "length"), and with `trim_to_parse`
`syntax`: parses | trimmed | unparsed, else null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from codelm.generate.scheduler import Event, TokenInfo
from codelm.tokenizer import CodeTokenizer
from codelm.tokenizer.pretokenize import replace_surrogates

LENGTH_RULES = ("length", "context_full", "timeout")  # finish_reason "length"; every other rule: "stop"


class BadRequest(Exception):
    """A request the server will not run: `status` (400: understood but unsupported; 422: a
    body that is not a valid request) with this message, one line."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool | None = None


class Sampled(BaseModel):
    """What both APIs take alike: the model's name, sampling, stops, streaming, codelm's
    sampling extensions, and OpenAI's fields that only take neutral values here."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str | None = None  # any name is accepted; responses carry this server's model id
    temperature: float | None = Field(None, ge=0, le=100)  # default 1
    top_p: float | None = Field(None, gt=0, le=1)  # default 1
    n: int | None = Field(None, ge=1, le=64)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    # torch's generator takes 64 bits; choice i gets seed + i (n <= 64), so an int64 stays in range.
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # codelm extensions
    top_k: int | None = Field(None, ge=0)
    # Seen tokens' logits are divided by it, then by the temperature (>= 1e-8): near 1e-30 they
    # overflowed to inf in float32 (NaN probabilities, a 500); 0.01 stays far from that.
    repetition_penalty: float | None = Field(None, ge=0.01, le=10)
    dry_multiplier: float | None = Field(None, ge=0, le=100)  # DRY, as llama.cpp's server names it
    dry_base: float | None = Field(None, ge=1, le=10)
    dry_allowed_length: int | None = Field(None, ge=1, le=1000)

    @field_validator("model", "prompt", "suffix", "stop", "user", "instruction", check_fields=False)
    @classmethod
    def _unicode(cls, v: Any) -> Any:
        """JSON's \\u escapes can spell a lone surrogate, which has no UTF-8 form: it becomes
        U+FFFD, as the tokenizer reads it, so an echo or a stop string cannot fail on it."""
        return unicode(v)

    def stops(self) -> tuple[str, ...]:
        s = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(s) > 16 or any(not x or len(x) > 256 for x in s):
            raise BadRequest("stop takes at most 16 non-empty strings of up to 256 characters", "stop")
        return tuple(s)

    def check_neutral(self) -> None:
        """OpenAI's fields that this server accepts only at values that change nothing."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise BadRequest(f"{name} is not supported (only 0)", name)
        if self.logit_bias:
            raise BadRequest("logit_bias is not supported", "logit_bias")


def unicode(v: Any) -> Any:
    """A string, or the strings of a list, with lone surrogates read as U+FFFD."""
    if isinstance(v, str):
        return v if v.isascii() else replace_surrogates(v)
    if isinstance(v, list):
        return [x if not isinstance(x, str) or x.isascii() else replace_surrogates(x) for x in v]
    return v


class CompletionRequest(Sampled):
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=0)  # default 16 (OpenAI's); capped by the server
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = None
    best_of: int | None = Field(None, ge=1)
    # codelm extensions
    instruction: str | None = None
    fim_order: Literal["psm", "spm"] | None = None  # with suffix; spm: typing appends (default psm)
    stop_at_block_end: bool | None = None
    stop_on_repetition: bool | None = None
    trim_to_parse: bool | None = None
    # Not a field: a chat request's messages, (role, text), the last the user's (serve/chat.py).
    # A chat template lays them out as turns; other layouts read `instruction`, which folds them.
    _turns: tuple[tuple[str, str], ...] = PrivateAttr(default=())

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if p is None or isinstance(p, str):
            return [p or ""]
        if not p:
            raise BadRequest("prompt is an empty list", "prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # one prompt given as token ids
        return list(p)

    def check_supported(self) -> None:
        """OpenAI fields accepted only at values that change nothing here, and pairs that
        do not go together."""
        self.check_neutral()
        if self.best_of not in (None, 1, self.n or 1):
            raise BadRequest("best_of is not supported; sample with n and pick yourself", "best_of")
        if self.suffix is not None and self.instruction is not None:
            raise BadRequest("give suffix (fill-in-the-middle) or instruction, not both", "suffix")
        if self.echo and (self.suffix is not None or self.instruction is not None):
            raise BadRequest("echo works only with a plain prompt (no suffix or instruction)", "echo")


def parse_request(obj: Any) -> CompletionRequest:
    """The request in a decoded JSON body; BadRequest (422) with one line naming each bad field."""
    try:
        return CompletionRequest.model_validate(obj)
    except ValidationError as e:
        raise BadRequest(validation_message(e), status=422) from None


def validation_message(e: ValidationError) -> str:
    """One line for the client: each bad field once, joined by "; " (pydantic's own text
    spans lines and repeats the input)."""
    parts = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"] if not isinstance(x, int)]
        name = loc[0] if loc else "body"
        if name == "prompt":
            msg = "prompt must be a string, a list of strings, token ids, or lists of token ids"
        elif err["type"] == "extra_forbidden":
            msg = f"unknown field {name!r}"
        else:
            msg = f"{name}: {err['msg']}"
        if msg not in parts:
            parts.append(msg)
    return "; ".join(parts)


def request_schema(model: type[BaseModel] = CompletionRequest) -> dict[str, Any]:
    """A request model as JSON Schema for the API's OpenAPI document (the routes parse their
    bodies by hand, to word their own errors, so FastAPI cannot see them). Nested models are
    inlined: pydantic's `#/$defs/...` references would not resolve inside an OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)


def finish_reason(stop_rule: str | None) -> str | None:
    if stop_rule is None:
        return None
    return "length" if stop_rule in LENGTH_RULES else "stop"


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _lp(x: float) -> float | None:
    return None if math.isnan(x) else x


@dataclass
class LogprobBuilder:
    """OpenAI's `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset) of one choice."""

    tok: CodeTokenizer
    offset: int = 0  # text_offset of the next token, in characters of the choice's text
    d: dict[str, list[Any]] = field(
        default_factory=lambda: {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    )

    def add(self, infos: list[TokenInfo], text: str) -> dict[str, list[Any]]:
        """Add the tokens of `text` (the next piece of the choice's text); return just their part."""
        part: dict[str, list[Any]] = {k: [] for k in self.d}
        pos = self.offset
        for info in infos:
            piece = self.tok.decode([info.token])
            part["tokens"].append(piece)
            part["token_logprobs"].append(_lp(info.logprob))
            top = None if info.top is None else {self.tok.decode([i]): v for i, v in info.top}
            part["top_logprobs"].append(top)
            part["text_offset"].append(min(pos, self.offset + len(text)))
            pos += len(piece)
        self.offset += len(text)
        for k, v in part.items():
            self.d[k] += v
        return part


@dataclass(frozen=True)
class Echo:
    """What `echo` puts before a choice's text: the prompt, without the tokens the server
    added in front of it (the beginning-of-file end token)."""

    text: str
    skip: int


@dataclass
class Choice:
    """One choice being assembled from events."""

    index: int
    logprobs: LogprobBuilder | None
    text: str = ""
    stop_rule: str | None = None
    syntax: str | None = None
    started: bool = False
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def add(self, ev: Event, echo: Echo | None = None) -> tuple[str, dict | None]:
        """Fold in an event; return its new text and logprobs part (for a stream chunk)."""
        text, infos = ev.text, ev.tokens
        if ev.kind == "start":
            self.started, self.prompt_tokens, self.cached_tokens = True, ev.prompt_tokens, ev.cached_tokens
            text, infos = (echo.text, (ev.prompt_info or [])[echo.skip :]) if echo else ("", [])
        elif ev.kind == "done":
            self.stop_rule = ev.stop_rule
            self.syntax = ev.syntax or None
            self.prompt_tokens = ev.prompt_tokens or self.prompt_tokens
            self.completion_tokens = ev.completion_tokens
        self.text += text
        part = self.logprobs.add(infos, text) if self.logprobs is not None else None
        return text, part

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": self.text,
            "logprobs": self.logprobs.d if self.logprobs is not None else None,
            "finish_reason": finish_reason(self.stop_rule),
            "stop_rule": self.stop_rule,
            "syntax": self.syntax,
        }


def usage(choices: list[Choice], n: int) -> dict[str, Any]:
    """Token counts; the prompt of each prompt counts once, not once per choice. Prompt
    tokens whose keys and values were reused from earlier requests are `cached_tokens`
    under `prompt_tokens_details`, as OpenAI's API and vLLM report them."""
    firsts = [c for c in choices if c.index % n == 0]
    prompt, cached = sum(c.prompt_tokens for c in firsts), sum(c.cached_tokens for c in firsts)
    done = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": done,
        "total_tokens": prompt + done,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
