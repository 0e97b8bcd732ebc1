"""A pretrained instruct model's chat template: what an instruction looks like to the model.

Instruct models (Qwen2.5-Coder-Instruct, DeepSeek-Coder-Instruct, Llama 3 Instruct ...) ship a
Jinja template in `tokenizer_config.json` (or `chat_template.jinja`) that lays out a
conversation in their own tokens. `codelm import` keeps it in the run as `chat_template.json`
(the template and the special-token strings it reads), `CodeTokenizer.load` reads it back, and
an instruction is then asked as the model was taught: the user's message in the template, the
assistant's turn opened, and a ```python fence already written, so the answer starts as code
(codelm.generate.prompts). The answer ends at the fence's close (codelm.generate.stopping) or at
the turn's end token. Fine-tuning such a run trains its pairs in the same frame
(codelm.train.batches).

Rendering follows transformers' `apply_chat_template`: Jinja's immutable sandbox (a template
cannot touch Python objects or the file system), `trim_blocks` and `lstrip_blocks`,
`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII characters, and the
`{% generation %}` block, rendered as its body.

`frame` renders the template once with marker strings for the user's message and the
assistant's answer and cuts the text at them: what comes before the instruction, between it
and the answer, and after the answer. So a long instruction can be cut to the context like any
other part, each part is encoded on its own (the rule everywhere in codelm), and the template
itself runs once per tokenizer, not per request (`around` renders a conversation's earlier turns
when a chat request has them). What it does not do: tools, or templates that rewrite the
message text (the markers must come out as they went in).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from codelm.errors import CodelmError, first_line
from codelm.fsutil import atomic_write_json, read_json

CHAT_FILE = "chat_template.json"  # in a run, beside tokenizer.json
FENCE = "```python\n"  # opens the code of every answer: prefilled, never sampled
TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")  # what templates read besides messages
_ASKED = "\x02codelm:instruction\x03"  # markers for `frame`: text no template writes itself
_ANSWER = "\x02codelm:answer\x03"


@dataclass(frozen=True)
class Frame:
    """A template's text around one exchange: `before` + instruction + `between` + answer + `after`."""

    before: str
    between: str  # ends where the assistant's answer begins (the generation prompt)
    after: str  # the end of the assistant's turn ("" where the template shows none)


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the Jinja template
    tokens: dict[str, str] = field(default_factory=dict)  # TOKEN_NAMES the model's files define

    def __post_init__(self) -> None:
        _compile(self.source)  # a template that does not compile fails here, not at the first request

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as the model reads it (transformers' apply_chat_template, untokenized)."""
        try:
            return _compile(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self.tokens
            )
        except Exception as e:  # a template's raise_exception, or a bug of its own
            raise CodelmError(f"the chat template fails: {first_line(e)}") from None

    @functools.cached_property
    def frame(self) -> Frame:
        """The text around one instruction and its answer; CodelmError where the template does not
        show the instruction exactly once."""
        return self._cut(())

    def around(self, history: tuple[tuple[str, str], ...]) -> tuple[str, str]:
        """The text before and after a user's request that follows the `history` turns ((role,
        text); "developer" is a system message), up to where the answer begins."""
        frame = self._cut(history) if history else self.frame  # the frame: rendered once
        return frame.before, frame.between

    def _cut(self, history: tuple[tuple[str, str], ...]) -> Frame:
        """The template rendered around marker strings, and cut at them. The answer begins
        where the model's answers began in a finished exchange, where that extends the
        generation prompt: DeepSeek-Coder's prompt ends `### Response:`, its answers follow that and
        a newline, so the code's fence goes after the newline."""
        turns = [{"role": "system" if r == "developer" else r, "content": t} for r, t in history]
        turns.append({"role": "user", "content": _ASKED})
        asked = self.render(turns, add_generation_prompt=True)
        if asked.count(_ASKED) != 1:
            raise CodelmError("the chat template does not show the user's message as written")
        before, between = asked.split(_ASKED)
        try:
            done = self.render(
                [*turns, {"role": "assistant", "content": _ANSWER}], add_generation_prompt=False
            )
        except CodelmError:
            return Frame(before, between, "")
        if done.count(_ASKED) != 1 or done.count(_ANSWER) != 1:
            return Frame(before, between, "")
        answered, after = done.split(_ASKED)[1].split(_ANSWER)
        return Frame(before, answered if answered.startswith(between) else between, after)

    def hf_config(self) -> dict[str, str]:
        """The tokenizer_config.json entries that give transformers this template back."""
        return {"chat_template": self.source, **self.tokens}

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.hf_config())

    @classmethod
    def load(cls, path: str | Path) -> ChatTemplate:
        try:
            saved = read_json(path)
        except CodelmError as e:
            raise CodelmError(f"the chat template: {e}") from None
        if not isinstance(saved.get("chat_template"), str):
            raise CodelmError(f"the chat template: {path} holds no chat_template string")
        return cls(
            saved["chat_template"], {k: saved[k] for k in TOKEN_NAMES if isinstance(saved.get(k), str)}
        )


def read_hf(folder: str | Path) -> tuple[ChatTemplate | None, str | None]:
    """The chat template of a Hugging Face model folder: `chat_template.jinja`, else
    tokenizer_config.json's `chat_template` (a string, or named templates: "default"), with
    the special tokens of tokenizer_config.json, else of special_tokens_map.json (older
    folders). (None, None) where it has none; (None, why) for one that codelm cannot use."""
    folder = Path(folder)
    try:
        config = _json_if_there(folder / "tokenizer_config.json")
        tokens = {
            **_json_if_there(folder / "special_tokens_map.json"),
            **{k: v for k, v in config.items() if v},
        }
        source = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            source = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        elif isinstance(source, list):  # [{"name": ..., "template": ...}]: the default one
            source = next((t.get("template") for t in source if t.get("name") == "default"), None)
        if not isinstance(source, str) or not source.strip():
            return None, None
        chat = ChatTemplate(source, {k: s for k in TOKEN_NAMES if (s := _token_text(tokens.get(k)))})
        chat.frame  # noqa: B018 - renders it once: one that cannot lay out an instruction fails here
    except (CodelmError, OSError, ValueError, AttributeError) as e:
        return None, f"chat template left out ({first_line(e)}): instructions go in as comments"
    return chat, None


def fence_close(code: str) -> str:
    """What closes a fenced answer whose code is `code`: ``` on a line of its own."""
    return ("" if not code or code.endswith("\n") else "\n") + "```"


def _json_if_there(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json gives it: a string, or an AddedToken's dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _raise(message: str) -> None:
    raise ValueError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.cache
def _compile(source: str):
    from jinja2 import TemplateError, nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %} ... {% endgeneration %}`: transformers marks the assistant's text
        with it (for training masks); here it renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            line = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(line)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as e:
        raise CodelmError(f"the chat template does not compile: {first_line(e)}") from None
