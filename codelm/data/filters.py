"""Decide whether a raw file is worth learning from, and say why not.

`check()` returns the decoded text, or the reason for dropping the file. Each
reason is a key of `stats.json`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FilterConfig:
    max_bytes: int = 1_000_000  # files larger than this are data or generated, not code


def check(data: bytes, cfg: FilterConfig) -> tuple[str | None, str | None]:
    """(text, None) if the file is kept, (None, reason) if it is dropped."""
    if len(data) > cfg.max_bytes:
        return None, "too_large"
    if b"\x00" in data:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not_utf8"
    if not text.strip():
        return None, "empty"
    return text, None
