"""Instruction datasets: JSONL/Parquet records that already are instruction -> code pairs.

A record of a fine-tuning export is read as one pair, not as a code file, when it has no
code column (`--text-field`, `content` by default) but has one of these layouts, looked
for in the file's first record in this order (or named with `--pair-fields`):

- `messages`: OpenAI's chat fine-tuning format, a list of `{"role", "content"}`. The last
  message is the assistant's answer to the user's message before it; the system message,
  the earlier turns and that message, joined by blank lines, are the instruction
  (`conversation`, which the chat route of `codelm serve` uses too, so a model is asked as
  it was taught);
- an instruction and an answer column: `instruction`/`output` (Code Alpaca, Evol-Instruct,
  with `input` appended to the instruction when it is not empty), `prompt`/`completion`
  (OpenAI's older format), `problem`/`solution` (Magicoder), `query`/`response`,
  `question`/`answer`, `instruction`/`response`.

The code is the answer's first fenced block marked Python (or unmarked); an answer without
a fence is code as a whole. An answer whose fences are all another language yields None,
counted as `skipped_other_language`. Whether the code parses is the filters' business
(filters.py), as for files. What this does not do: keep the prose around the code, or read
more than the last answer of a conversation.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass

from codelm.errors import CodelmError

MESSAGES = "messages"
# (instruction, answer) columns, in the order they are looked for
COLUMNS = (
    ("instruction", "output"),
    ("prompt", "completion"),
    ("problem", "solution"),
    ("query", "response"),
    ("question", "answer"),
    ("instruction", "response"),
)
INPUT = "input"  # Alpaca's optional second half of the instruction
_SYSTEM = ("system", "developer")
_PYTHON = ("", "python", "python3", "py", "py3")
# A fence opens a line (up to 3 spaces in, as Markdown allows) and names its language.
_FENCE = re.compile(r"^ {0,3}```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^ {0,3}```[ \t]*$", re.MULTILINE | re.DOTALL)
_FENCE_LINE = re.compile(r"^ {0,3}```[^\n]*(\n|$)", re.MULTILINE)


@dataclass(frozen=True)
class PairFormat:
    """Where a record keeps its pair: chat `messages`, or an instruction and an answer column."""

    instruction: str  # MESSAGES, or the instruction's column
    answer: str = ""  # the answer's column; empty for MESSAGES

    def columns(self) -> tuple[str, ...]:
        """The columns to read from a Parquet file."""
        if self.instruction == MESSAGES:
            return (MESSAGES,)
        return (self.instruction, self.answer, INPUT)


def parse_pair_fields(spec: str) -> PairFormat | None:
    """`--pair-fields`: "" (find the layout), "messages", or "INSTRUCTION,ANSWER"."""
    if not spec:
        return None
    if spec == MESSAGES:
        return PairFormat(MESSAGES)
    names = [s.strip() for s in spec.split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise CodelmError(f"--pair-fields must be 'messages' or two columns, INSTRUCTION,ANSWER: {spec!r}")
    return PairFormat(names[0], names[1])


def find_format(fields: Iterable[str]) -> PairFormat | None:
    """The pair layout of a record with these fields, or None when it has none."""
    have = set(fields)
    if MESSAGES in have:
        return PairFormat(MESSAGES)
    return next((PairFormat(i, a) for i, a in COLUMNS if i in have and a in have), None)


def conversation(messages: list[tuple[str, str]]) -> str:
    """(role, text) turns before an answer as one instruction: the system and developer
    messages first, then the other turns (fence lines dropped from the assistant's), joined
    by blank lines; empty turns are left out."""
    first = [text for role, text in messages if role in _SYSTEM]
    turns = [_FENCE_LINE.sub("", t) if r == "assistant" else t for r, t in messages if r not in _SYSTEM]
    return "\n\n".join(p.strip("\n") for p in (*first, *turns) if p.strip())


def record_pair(rec: object, fmt: PairFormat) -> tuple[str, str] | None:
    """(instruction, answer) of a record, or None when it lacks them or they are empty."""
    if not isinstance(rec, dict):
        return None
    if fmt.instruction == MESSAGES:
        return _chat_pair(rec.get(MESSAGES))
    instruction, answer, extra = rec.get(fmt.instruction), rec.get(fmt.answer), rec.get(INPUT)
    if not isinstance(instruction, str) or not isinstance(answer, str):
        return None
    if not instruction.strip() or not answer.strip():
        return None
    instruction = instruction.strip()
    if fmt.answer == "output" and isinstance(extra, str) and extra.strip():
        instruction = f"{instruction}\n\n{extra.strip()}"
    return instruction, answer


def _chat_pair(messages: object) -> tuple[str, str] | None:
    if not isinstance(messages, list) or len(messages) < 2:
        return None
    turns = []
    for m in messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            return None  # tool calls, images and other parts are not text turns
        turns.append((m["role"], m["content"]))
    *before, (role, answer) = turns
    if role != "assistant" or before[-1][0] != "user" or not answer.strip():
        return None  # an answer to the user's request, as the chat route asks
    instruction = conversation(before)
    return (instruction, answer) if instruction else None


def answer_code(answer: str) -> str | None:
    """The code of an answer: its first Python (or unmarked) fenced block, else the whole
    answer when it has no fence; dedented, ending in one newline. None when every fence is
    another language's."""
    blocks = _FENCE.findall(answer)
    if blocks:
        code = next((body for lang, body in blocks if lang.lower() in _PYTHON), None)
        if code is None:
            return None
    else:
        code = answer
    code = textwrap.dedent(code.strip("\n")).rstrip()
    return f"{code}\n" if code.strip() else ""
