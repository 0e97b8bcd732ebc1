"""Stop rules that look at the decoded completion text.

Each rule is a small object: `check(completion)` returns None to go on, or the
length to cut the completion to. The generator reports the rule's `name` as the
stop reason. End-of-text is decided on token ids in the generator itself.
"""

from __future__ import annotations


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


class BlockEnd:
    """Stop when a line returns to the prompt's block level after the body has started.

    The block level is the indentation of the prompt's last line that opens a
    block (ends with ':'); without one it is the prompt's smallest indentation.
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
        self.prompt = prompt

    def check(self, completion: str) -> int | None:
        text = self.prompt + completion
        start = len(self.prompt)
        # Lines that begin inside the completion (the prompt's own last line never counts).
        pos = text.find("\n", max(start - 1, 0)) if not self.prompt.endswith("\n") else start - 1
        body = self.body_in_prompt
        while pos != -1 and pos + 1 <= len(text):
            line_start = pos + 1
            end = text.find("\n", line_start)
            line = text[line_start:] if end == -1 else text[line_start:end]
            if line.strip():
                if indent_of(line) > self.level:
                    body = True
                elif body:
                    return _trim_blank_tail(completion[: line_start - start])
            pos = end
        return None


def _trim_blank_tail(completion: str) -> int:
    """Length of `completion` with trailing blank lines removed, keeping its final newline."""
    stripped = completion.rstrip(" \t\r\n")
    newline = completion.find("\n", len(stripped))
    return len(completion) if newline == -1 else newline + 1
