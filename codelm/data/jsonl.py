"""The one reader of JSON Lines files, plain or gzipped (by the `.gz` suffix), for every stage.

`read_jsonl` is strict: it yields (line number, object) and stops at the first
defect with a one-line CodelmError that names the file and the line. It is for
files a user hands us as a whole (benchmark problems, completions), where a
bad line means the file is wrong. `scan_jsonl` is lenient: it yields a
`BadLine` in place of a line that is not JSON and goes on, for corpus dumps
where one bad record among millions is counted, not fatal. Both stream line
by line, so memory holds one line, never the file. Blank lines are skipped
but counted, so line numbers are those an editor shows.

This module does not interpret records: callers check their fields
(`string_field` helps them say what is wrong in the same one-line form).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from codelm.errors import CodelmError, first_line


@dataclass(frozen=True)
class BadLine:
    """A non-blank line that holds no JSON value: `scan_jsonl` yields it in place of one."""

    lineno: int
    why: str  # one line, e.g. "not valid JSON (Expecting value)"
    utf8: bool = True  # False: the bytes are not even UTF-8 text

    def error(self, path: Path, what: str) -> CodelmError:
        """The strict readers' error for this line."""
        if not self.utf8:  # not text at all: as unreadable as a damaged file, and said the same way
            return CodelmError(f"cannot read {what} file {path}: line {self.lineno} is {self.why}")
        return CodelmError(f"{path}:{self.lineno}: {self.why}")


def _open(path: Path, what: str) -> BinaryIO:
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except FileNotFoundError:
        raise CodelmError(f"{what} file not found: {path}") from None
    except OSError as e:
        raise CodelmError(f"cannot read {what} file {path}: {e.strerror or first_line(e)}") from None


def _parse(line: bytes, lineno: int) -> Any:
    """The JSON value of one line, or a BadLine saying why there is none."""
    try:
        # A BOM is legal at the start of a UTF-8 file (editors on Windows write one); json.loads
        # rejects it, so the first line drops it.
        text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        return BadLine(lineno, f"not UTF-8 ({e.reason} at byte {e.start})", utf8=False)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return BadLine(lineno, f"not valid JSON ({e.msg})")
    except RecursionError:  # a line of 100k nested brackets: not a record anyone meant
        return BadLine(lineno, "not valid JSON (nested too deeply)")


def scan_jsonl(path: str | Path, what: str = "JSON Lines") -> Iterator[tuple[int, Any]]:
    """(line number, parsed value or BadLine) for each non-blank line, lazily.

    A file that cannot be opened, read or decompressed is a one-line CodelmError
    ("{what} file not found: ...", "cannot read {what} file ...") when iteration
    reaches the failure; the lines before it have been yielded by then.
    """
    path = Path(path)
    lineno = 0
    with _open(path, what) as f:
        try:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, _parse(line, lineno)
        except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt gzip stream
            why = f"{first_line(e)} (after line {lineno})"
            raise CodelmError(f"cannot read {what} file {path}: {why}") from None


def read_jsonl(path: str | Path, what: str = "JSON Lines") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; any defect is a one-line CodelmError.

    `what` names the file in messages ("problems" gives "problems file not found: ...").
    """
    path = Path(path)
    for lineno, value in scan_jsonl(path, what):
        if isinstance(value, BadLine):
            raise value.error(path, what)
        if not isinstance(value, dict):
            raise CodelmError(f"{path}:{lineno}: expected a JSON object, got {type(value).__name__}")
        yield lineno, value


def string_field(row: dict, name: str, where: str, required: bool = True) -> str | None:
    """`row[name]`, which must be a string; absent: None, or a one-line error when `required`."""
    value = row.get(name)
    if value is None:
        if required:
            raise CodelmError(f"{where}: missing field {name!r}")
        return None
    if not isinstance(value, str):
        raise CodelmError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value
