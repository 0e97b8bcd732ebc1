"""Stop rules on a completion's text, in layers: user stop strings, the close of the code's
fence (an answer in a chat template's frame), the end of a Python block (never inside open
brackets or an open string), a maximum number of lines, and repetition. The other ends
of a completion are the engine's (engine.py): an end token (any special token: end of
text, or one that opens another frame), `length` (the row's limit of new tokens) and
`context_full` (the model's context).

Each rule is a small object over the completion so far: `text` is its decoded
text (without an end token) and `tokens` every generated id of that text.
- `check(text, tokens)` returns None to go on, or the length to cut `text` to;
  the rule's `name` is reported as the stop reason.
- `safe(text, tokens)` is the length of the prefix of `text` the rule will never
  cut later, so a stream releases only text that no later stop takes back.
The rules do not run the model nor sample; text.py calls them after each token.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from codelm.errors import CodelmError
from codelm.generate.whole import Whole, scan_open


@dataclass(frozen=True)
class StopConfig:
    stop: tuple[str, ...] = ()  # user stop strings, matched in the completion's text
    # None: on for plain completion and instructions, off for fill-in-the-middle,
    # where the model was trained to end the middle with end-of-text itself.
    block_end: bool | None = None
    max_lines: int = 0  # 0: no limit
    # A line cycle or short token cycle seen more often than this in a row ends the
    # completion (issue 9: weak models loop on `"""` or `self.name = name`); 0: off.
    max_repeats: int = 3
    # A completion that ends mid-construct (cut by a rule, or broken by the model) is
    # trimmed back to whole code, and streams hold back what that could cut (whole.py).
    trim: bool = True

    def __post_init__(self) -> None:
        # A tuple whatever was given (a list from argparse, one string), so the config stays hashable.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        if any(not s for s in self.stop):
            raise CodelmError("a stop string must not be empty")
        if self.max_lines < 0 or self.max_repeats < 0:
            raise CodelmError("max lines and max repeats must be >= 0")


DEFAULT_STOPS = StopConfig()


class StopRule(Protocol):
    name: str

    def check(self, text: str, tokens: Sequence[int]) -> int | None: ...

    def safe(self, text: str, tokens: Sequence[int]) -> int: ...


class StopStrings:
    """Layer 2: a user stop string appears in the text, even across token boundaries;
    the completion is cut before it."""

    name = "stop_string"

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(stops)

    def check(self, text: str, tokens: Sequence[int]) -> int | None:
        found = [i for s in self.stops if (i := text.find(s)) != -1]
        return min(found) if found else None

    def safe(self, text: str, tokens: Sequence[int]) -> int:
        # Hold back a tail that could still grow into a stop string.
        held = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return len(text) - held


def _starts_line(prompt: str) -> bool:
    """Whether a completion of `prompt` begins a line (else it goes on the prompt's last one)."""
    return not prompt or prompt.endswith("\n")


def _completion_lines(text: str, starts_line: bool) -> Iterable[tuple[int, str]]:
    """(offset, line) of each line that begins inside the completion `text`."""
    pos = 0 if starts_line else text.find("\n") + 1
    if pos == 0 and not starts_line:
        return  # no line has begun inside the completion yet
    while True:
        end = text.find("\n", pos)
        yield pos, text[pos:] if end == -1 else text[pos:end]
        if end == -1:
            return
        pos = end + 1


class FenceEnd:
    """The close of the ```python fence an answer in a chat template's frame was opened with
    (prompts.fenced): a line that starts with ``` outside any string. The completion is cut
    before it, keeping the code's final newline: what follows the fence is prose."""

    name = "fence"

    def __init__(self, prompt: str):
        self.prompt_state = scan_open(prompt)
        self.starts_line = _starts_line(prompt)

    def check(self, text: str, tokens: Sequence[int] = ()) -> int | None:
        for start, line in _completion_lines(text, self.starts_line):
            if line.startswith("```") and not scan_open(text[:start], self.prompt_state)[1]:
                return start
        return None

    def safe(self, text: str, tokens: Sequence[int] = ()) -> int:
        # Hold back a line that has begun as a fence (`, ``) and may yet close it.
        start = text.rfind("\n") + 1
        if start == 0 and not self.starts_line:
            return len(text)
        return start if "```".startswith(text[start : start + 3]) else len(text)


def indent_of(line: str) -> int:
    """Indentation width of a line, a tab counting to the next multiple of 8 as Python does."""
    width = 0
    for ch in line:
        if ch == " ":
            width += 1
        elif ch == "\t":
            width = (width // 8 + 1) * 8
        else:
            break
    return width


# What may follow a body at the top level of a whole program (BlockEnd.program)
_DEFINES = re.compile(r"(?:async[ \t]+def|def|class|import|from)\b|[@#]")


class BlockEnd:
    """Layers 3 and 4: stop when a line returns to the prompt's block level after the body
    has started, unless brackets or a string are still open there. Blank lines before the
    stop are dropped, keeping the body's final newline.

    The block level is the indentation of the prompt's last line that opens a block (ends
    with ':'); without one it is the prompt's smallest indentation. An empty prompt (an
    instruction with no code start) asks for a whole program: there a top-level definition,
    decorator, import or comment after a body goes on (a helper after the main function, as
    MBPP's harnesses allow), and any other top-level statement (a test, a print) ends it.
    """

    name = "block_end"

    def __init__(self, prompt: str):
        lines = prompt.splitlines()
        opens = [i for i, ln in enumerate(lines) if ln.split("#")[0].rstrip().endswith(":")]
        if opens:
            self.level = indent_of(lines[opens[-1]])
            tail = lines[opens[-1] + 1 :]
        else:
            self.level = min((indent_of(ln) for ln in lines if ln.strip()), default=0)
            tail = lines
        # A prompt that already holds body lines below its last opener has started the body.
        self.body_in_prompt = any(ln.strip() and indent_of(ln) > self.level for ln in tail)
        self.starts_line = _starts_line(prompt)
        self.prompt_state = scan_open(prompt)
        self.program = not prompt.strip()

    def check(self, text: str, tokens: Sequence[int] = ()) -> int | None:
        body = self.body_in_prompt
        for start, line in _completion_lines(text, self.starts_line):
            if not line.strip():
                continue
            if indent_of(line) > self.level:
                body = True
            elif body:
                depth, quote, _ = scan_open(text[:start], self.prompt_state)
                if depth == 0 and not quote and not (self.program and _DEFINES.match(line)):
                    return _trim_blank_tail(text[:start])
        return None

    def safe(self, text: str, tokens: Sequence[int] = ()) -> int:
        last = text.rfind("\n")
        if last == -1 and not self.starts_line:
            return len(text)  # still the prompt's own last line, which is never cut
        if text[last + 1 :].strip():
            return len(text)  # the current line has begun and did not stop: it stays
        return _trim_blank_tail(text[: last + 1])  # a blank tail may still be dropped


def _trim_blank_tail(completion: str) -> int:
    """Length of `completion` with trailing blank lines removed, keeping its final newline."""
    stripped = completion.rstrip(" \t\r\n")
    newline = completion.find("\n", len(stripped))
    return len(completion) if newline == -1 else newline + 1


class MaxLines:
    """Layer 5: stop after `n` lines, keeping the newline of the last one. An empty rest of
    the prompt's own last line (a completion that starts with a newline) does not count."""

    name = "max_lines"

    def __init__(self, n: int, prompt: str):
        self.n = n
        self.starts_line = _starts_line(prompt)

    def check(self, text: str, tokens: Sequence[int] = ()) -> int | None:
        skip_first = not self.starts_line and text.startswith("\n")
        pos, done = -1, -int(skip_first)
        while (pos := text.find("\n", pos + 1)) != -1:
            done += 1
            if done == self.n:
                return pos + 1
        return None

    def safe(self, text: str, tokens: Sequence[int] = ()) -> int:
        return len(text)


class Repetition:
    """Stop when the completion loops: the same cycle of 1..`max_lines` lines, or of
    1..`max_period` tokens spanning at least `min_span` tokens, repeated more than
    `max_repeats` times in a row. The copies after the first are cut off."""

    name = "repetition"

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        max_repeats: int = 3,
        max_lines: int = 4,
        max_period: int = 12,
        min_span: int = 16,  # a number like 1000000 is seven '0' tokens, not a loop
    ):
        self.decode, self.max_repeats = decode, max_repeats
        self.max_lines, self.max_period, self.min_span = max_lines, max_period, min_span

    def check(self, text: str, tokens: Sequence[int]) -> int | None:
        lines = _complete_lines(text)
        for k in range(1, self.max_lines + 1):
            reps = (_run(lines, k) + k) // k
            if reps > self.max_repeats and any(ln.strip() for ln in lines[-k:]):
                return sum(len(ln) + 1 for ln in lines[: len(lines) - (reps - 1) * k])
        for p in range(1, self.max_period + 1):
            reps = (_run(tokens, p) + p) // p
            if reps > self.max_repeats and reps * p >= self.min_span and self._is_loop(tokens[-p:], reps * p):
                return min(len(self.decode(tokens[: len(tokens) - (reps - 1) * p])), len(text))
        return None

    def _is_loop(self, cycle: Sequence[int], span: int) -> bool:
        # A run of symbols or digits is often real code: a `# ======` rule, a long
        # constant. Without a letter in the cycle, only a run past any line's length loops.
        return span >= 5 * self.min_span or any(ch.isalpha() for ch in self.decode(cycle))

    def safe(self, text: str, tokens: Sequence[int]) -> int:
        # Hold back whatever a cycle that has begun to repeat would cut if it went on.
        lines = _complete_lines(text)
        current = text[text.rfind("\n") + 1 :]
        held_lines = max((_run(lines, k) for k in range(1, self.max_lines + 1)), default=0)
        if held_lines:
            held = len(current) + sum(len(ln) + 1 for ln in lines[-held_lines:])
        elif current and any(ln.startswith(current) for ln in lines[-self.max_lines :]):
            held = len(current)  # the current line may begin the second copy of a cycle
        else:
            held = 0
        held_tokens = max((_run(tokens, p) for p in range(1, self.max_period + 1)), default=0)
        if held_tokens:
            held = max(held, len(self.decode(tokens[-held_tokens:])))
        return max(len(text) - held, 0)


def _complete_lines(text: str) -> list[str]:
    return text[: text.rfind("\n") + 1].split("\n")[:-1]


def _run(items: Sequence, period: int) -> int:
    """How many trailing items equal the item `period` places before them."""
    m, n = 0, len(items)
    while m + period < n and items[n - 1 - m] == items[n - 1 - m - period]:
        m += 1
    return m


def build_rules(
    cfg: StopConfig,
    context: str,
    decode: Callable[[Sequence[int]], str],
    fim: bool = False,
    after: str = "",
    fenced: bool = False,
) -> list[StopRule]:
    """The layered rules for one completion; `context` is the code just before it and
    `after` the code after it (FIM's suffix); `fenced`: the answer's code sits in a fence
    (prompts.fenced), whose close ends it whatever `cfg` says."""
    rules: list[StopRule] = [StopStrings(cfg.stop)] if cfg.stop else []
    if fenced:
        rules.append(FenceEnd(context))
    if cfg.block_end or (cfg.block_end is None and not fim):
        rules.append(BlockEnd(context))
    if cfg.max_lines:
        rules.append(MaxLines(cfg.max_lines, context))
    if cfg.max_repeats:
        rules.append(Repetition(decode, cfg.max_repeats))
    if cfg.trim:
        rules.append(Whole(context, after))
    return rules


def first_stop(rules: Sequence[StopRule], text: str, tokens: Sequence[int]) -> tuple[str, int] | None:
    """(reason, cut) of the rule that cuts earliest (the lower layer on a tie), or None."""
    best: tuple[str, int] | None = None
    for rule in rules:
        cut = rule.check(text, tokens)
        if cut is not None and (best is None or cut < best[1]):
            best = (rule.name, cut)
    return best


def safe_length(rules: Sequence[StopRule], text: str, tokens: Sequence[int]) -> int:
    return min((r.safe(text, tokens) for r in rules), default=len(text))
