"""The held-out code every quality bench scores on, read the same way by each.

The files of the six third-party packages that no built-in source reads
(`codelm.data.sources.HELD_OUT_PACKAGES`), interleaved by a path hash and capped in
bytes; what gzip and xz make of them; and prompts cut from their documented
functions (signature and docstring; the truth is the rest of the body).
"""

from __future__ import annotations

import ast
import lzma
import textwrap
import zlib

from codelm.data.records import RawFile
from codelm.data.sources import HELD_OUT_PACKAGES, open_source, site_packages_root


def held_out_files(max_bytes: int, packages: tuple[str, ...] = HELD_OUT_PACKAGES) -> list[tuple[str, str]]:
    """(package/path, text) of the held-out packages' files, interleaved by a path hash, up to
    `max_bytes` of UTF-8."""
    files = []
    for pkg in packages:
        root = site_packages_root() / pkg
        if not root.is_dir():
            raise SystemExit(f"held-out package {pkg} is not installed at {root}")
        for item in open_source(f"dir:{root}"):
            if isinstance(item, RawFile) and item.data.strip():
                try:
                    text = item.data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                files.append((zlib.crc32(f"{pkg}/{item.path}".encode()), f"{pkg}/{item.path}", text))
    out, used = [], 0
    for _, path, text in sorted(files):
        if used >= max_bytes:
            break
        out.append((path, text))
        used += len(text.encode("utf-8"))
    return out


def held_out(max_bytes: int, packages: tuple[str, ...] = HELD_OUT_PACKAGES) -> list[str]:
    """The texts of `held_out_files`."""
    return [text for _, text in held_out_files(max_bytes, packages)]


def compressor_bpb(texts: list[str]) -> dict[str, float]:
    """Bits per byte of gzip -9 and xz -9e, on each file alone (as a model reads them) and
    on all files in one stream (xz then also learns from the files before)."""
    raw = [t.encode("utf-8") for t in texts]
    n = sum(map(len, raw))
    gz = sum(len(zlib.compress(b, 9)) for b in raw)
    xz = sum(len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)) for b in raw)
    xz_all = len(lzma.compress(b"".join(raw), preset=9 | lzma.PRESET_EXTREME))
    return {"gzip -9": 8 * gz / n, "xz -9e": 8 * xz / n, "xz -9e, one stream": 8 * xz_all / n}


def function_prompts(texts: list[str], count: int) -> list[tuple[str, str]]:
    """(signature + docstring, the rest of the body) of held-out functions with a docstring."""
    out = []
    for text in texts:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        lines = text.split("\n")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.FunctionDef)
                and ast.get_docstring(node)
                and len(node.body) > 1
                and node.end_lineno
                and node.end_lineno - node.lineno < 30
            ):
                # The prompt ends at the docstring's closing quotes, as a user's would (see
                # PROMPTS in demo.py); the truth is the rest of the function.
                cut = node.body[0].end_lineno
                whole = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]))
                prompt = "\n".join(whole.split("\n")[: cut - node.lineno + 1])
                body = whole[len(prompt) :]
                out.append((prompt, body))
                if len(out) >= count:
                    return out
    return out
