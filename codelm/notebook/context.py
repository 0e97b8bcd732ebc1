"""Live context for a notebook request: the user's DataFrames, modules and recent cells.

`describe(namespace)` reads what a request may be about from the namespace as it is
when the cell runs: every pandas DataFrame and Series (shape, each column's name and
dtype, null counts, its first 3 values per column, cut short) and every module with
the name it is bound to (`pd`, `np`, `plt`, `sns`). It only reads attributes and
calls `head`, `isna().sum()` and `repr` on a few values: nothing of the user's runs.
Null counts are skipped for frames over `MAX_COUNTED_CELLS` cells, where counting
would take longer than the user waits for a completion, and at most `MAX_COLUMNS`
columns are described per frame.

`assemble` lays the descriptions out as Python before the request: imports first,
then the recent cells, then the frames the request names (by the frame's name or
its columns' words) and after them the others, each frame whole or not at all,
while the schema block's token budget lasts; frames left out are named in one line.
A frame is rendered in one of `LAYOUTS`: comment lines (the default), the code that
builds its first rows, or pandas-ai's head() as CSV (for the benchmark's comparison).

This module imports nothing outside the standard library and nothing of codelm:
the benchmark (bench.py) runs `describe` inside the sandbox, where the problems'
frames live, by sending this file's source there.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

MAX_COUNTED_CELLS = 5_000_000  # about 50 ms of isna().sum() on a 2-core machine
HEAD_ROWS = 3  # values shown per column
MAX_COLUMNS = 64  # described per frame: a wider one would not fit the schema budget anyway
FRAME_KINDS = ("DataFrame", "Series")


@dataclass
class Frame:
    name: str
    kind: str  # "DataFrame" or "Series"
    rows: int
    ncols: int  # all its columns; `columns` lists at most MAX_COLUMNS of them
    columns: list[tuple[str, str, int | None]]  # (name, dtype, nulls or None: not counted)
    head: list[list[str]]  # per column, the first HEAD_ROWS values, each repr cut short
    score: int = 0  # how strongly the request names it: set by `rank`


@dataclass
class Context:
    frames: list[Frame] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)  # "import pandas as pd", ...
    cells: list[str] = field(default_factory=list)  # recent cells, oldest first
    names: list[str] = field(default_factory=list)  # every public name of the namespace


def instruction(context: str, request: str) -> str:
    """The instruction a model reads: the context block, a blank line, the request. The
    corpus's doctest pairs are laid out the same way: an example's setup code, then its prose."""
    return f"{context}\n\n{request.strip()}" if context else request.strip()


def pandas_kind(obj: object) -> str | None:
    """ "DataFrame" or "Series" for a pandas object, else None; pandas is never imported."""
    cls = type(obj)
    if cls.__name__ in FRAME_KINDS and cls.__module__.split(".")[0] == "pandas":
        return cls.__name__
    return None


def _short(value: object, width: int) -> str:
    text = repr(value) if isinstance(value, str) else str(value)  # quotes say "a string"
    return text if len(text) <= width else text[: width - 3] + "..."


def _frame(name: str, obj, kind: str, width: int) -> Frame:
    frame = obj.to_frame(name=obj.name if obj.name is not None else name) if kind == "Series" else obj
    rows, ncols = frame.shape
    head = frame.head(HEAD_ROWS)
    nulls = frame.isna().sum() if rows * max(ncols, 1) <= MAX_COUNTED_CELLS else None
    columns, values, dtypes = [], [], frame.dtypes  # `.dtypes` builds a Series on each read
    for i, col in enumerate(frame.columns[:MAX_COLUMNS]):
        count = int(nulls.iloc[i]) if nulls is not None else None
        columns.append((str(col), str(dtypes.iloc[i]), count))
        values.append([_short(v, width) for v in head.iloc[:, i].tolist()])
    return Frame(name, kind, rows, ncols, columns, values)


def describe(namespace: Mapping[str, object], value_chars: int = 24) -> Context:
    """The frames and modules of `namespace` (names with a leading underscore left out)."""
    ctx = Context()
    for name, obj in list(namespace.items()):
        if name.startswith("_"):
            continue
        ctx.names.append(name)
        if type(obj).__name__ == "module":
            real = getattr(obj, "__name__", name)
            ctx.imports.append(f"import {real}" if real == name else f"import {real} as {name}")
        elif (kind := pandas_kind(obj)) is not None:
            try:
                ctx.frames.append(_frame(name, obj, kind, value_chars))
            except Exception:  # noqa: BLE001 - an odd frame (a broken extension dtype) is left out
                continue
    return ctx


def _literal(text: str) -> str:
    """A shown value as Python: itself when it is a literal, None for a missing one, else quoted."""
    if text in ("nan", "NaN", "NaT", "<NA>", "None"):
        return "None"
    try:
        ast.literal_eval(text)
        return text
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return repr(text)


def _render_code(f: Frame, pd: str) -> str:
    """A frame as the code that would build its first rows, each column's dtype and nulls in a
    comment: the layout docstring examples give their frames, which the model learned from."""
    unit = "columns" if f.ncols != 1 else "column"
    head = f"# {f.name}: {f.kind}, {f.rows} rows x {f.ncols} {unit}; its first {HEAD_ROWS} rows:"

    def note(dtype: str, nulls: int | None) -> str:
        return dtype + ("" if nulls == 0 else ", nulls not counted" if nulls is None else f", {nulls} null")

    if f.kind == "Series":
        (col, dtype, nulls), values = f.columns[0], f.head[0]
        body = f"{f.name} = {pd}.Series([{', '.join(map(_literal, values))}], name={col!r})"
        return f"{head}\n{body}  # {note(dtype, nulls)}"
    lines = [head, f"{f.name} = {pd}.DataFrame({{"]
    for (col, dtype, nulls), values in zip(f.columns, f.head, strict=True):
        lines.append(f"    {col!r}: [{', '.join(map(_literal, values))}],  # {note(dtype, nulls)}")
    if f.ncols > len(f.columns):
        lines.append(f"    # ... and {f.ncols - len(f.columns)} more columns")
    return "\n".join([*lines, "})"])


def _render_csv(f: Frame) -> str:
    """pandas-ai's layout: the dimensions, then head() as CSV (here in comments): no dtypes."""

    def plain(v: str) -> str:  # CSV does not quote strings
        return v[1:-1] if len(v) > 1 and v[0] == v[-1] and v[0] in "'\"" else v

    rows = [",".join(c[0] for c in f.columns), *(",".join(map(plain, r)) for r in zip(*f.head, strict=True))]
    return "\n".join([f"# {f.name}: {f.rows} rows x {f.ncols} columns", *(f"# {r}" for r in rows)])


LAYOUTS = ("comments", "code", "csv")


def render_frame(f: Frame, layout: str = "comments", pd: str = "pd") -> str:
    """A frame as comment lines (a header, then one line per column), or with layout "code" as
    the constructor of its first rows (`pd`: the name pandas is imported as), or "csv" as
    pandas-ai lays it out (the benchmark's peer)."""
    if layout == "code":
        return _render_code(f, pd)
    if layout == "csv":
        return _render_csv(f)
    unit = "columns" if f.ncols != 1 else "column"
    lines = [f"# {f.name}: {f.kind}, {f.rows} rows x {f.ncols} {unit}"]
    width = max((len(c[0]) for c in f.columns), default=0)
    dwidth = max((len(c[1]) for c in f.columns), default=0)
    for (col, dtype, nulls), values in zip(f.columns, f.head, strict=True):
        null = "" if nulls == 0 else "  nulls not counted" if nulls is None else f"  {nulls} null"
        lines.append(f"#   {col:<{width}}  {dtype:<{dwidth}}{null}  e.g. {', '.join(values)}")
    if f.ncols > len(f.columns):
        lines.append(f"#   ... and {f.ncols - len(f.columns)} more columns")
    return "\n".join(lines)


def words(text: str) -> set[str]:
    """Lower-case words of a name or a request, split at `_`, digits and camelCase;
    a plural `s` dropped, so "prices" names `price`."""
    parts = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", text)
    return {p.lower().removesuffix("s") for p in parts if len(p) > 1}


def names(request: str, name: str) -> bool:
    """Whether `request` names `name`: as written ("housing"), or by its words ("the sales data"
    names `sales_data`; "prices" names `price`)."""
    own = words(name)
    return bool(re.search(rf"\b{re.escape(name)}\b", request)) or bool(own and own <= words(request))


def rank(frames: list[Frame], request: str) -> list[Frame]:
    """Frames the request names first: by name (strongest), then by how many columns it names."""
    said = words(request)
    for f in frames:
        cols = sum(1 for c in f.columns if words(c[0]) and words(c[0]) <= said)
        f.score = 100 * names(request, f.name) + cols
    return sorted(frames, key=lambda f: -f.score)  # stable: namespace order among equals


def _fit(parts: list[str], count: Callable[[str], int], budget: int) -> list[str]:
    """The longest run of `parts`, from the end, within `budget` tokens."""
    kept: list[str] = []
    for part in reversed(parts):
        cost = count(part) + 1
        if cost > budget:
            break
        kept.insert(0, part)
        budget -= cost
    return kept


def assemble(
    ctx: Context,
    request: str,
    count: Callable[[str], int],
    schema_tokens: int = 512,
    history_tokens: int = 256,
    layout: str = "comments",
) -> tuple[str, list[str]]:
    """The context block to put before `request`, and the names of frames left out.

    The schema block (imports and frames) gets at most `schema_tokens`, the recent cells
    `history_tokens` (the newest cells kept).
    """
    budget = schema_tokens
    cells = _fit(ctx.cells, count, history_tokens)
    shown = {line.strip() for c in cells for line in c.splitlines()}
    imports = _fit(sorted(i for i in ctx.imports if i not in shown), count, budget)
    budget -= sum(count(i) + 1 for i in imports)
    blocks, left_out = [], []
    pd = next((i.rsplit(" ", 1)[-1] for i in ctx.imports if i.startswith("import pandas")), "pd")
    for f in rank(ctx.frames, request):
        text = render_frame(f, layout, pd)
        cost = count(text) + 1
        if cost <= budget:
            blocks.append(text)
            budget -= cost
        else:
            left_out.append(f.name)
    if left_out:
        note = f"# other DataFrames: {', '.join(left_out)}"
        if count(note) < budget:
            blocks.append(note)
    parts = ["\n".join(imports)] if imports else []
    parts += [c.strip("\n") for c in cells] + blocks
    return "\n".join(p for p in parts if p), left_out
