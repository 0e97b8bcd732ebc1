"""Static checks of a candidate cell against the user's namespace, before anyone runs it.

A candidate is rejected, with the reason, when it
- does not parse;
- loads a name that is neither in the namespace, nor a builtin, nor bound anywhere in
  the candidate (assigned, imported, a def, an argument, a loop or `with` target);
- reads a column that a known DataFrame does not have: `df["col"]`, `df[["a", "b"]]`,
  `df.col` (an attribute that is neither a column nor a DataFrame attribute), or the
  `by` of `groupby`/`sort_values`/`set_index`. Columns the candidate itself assigns
  (`df["new"] = ...`, `df.assign(new=...)`) count as present; a frame that the
  candidate rebinds is no longer checked;
- replaces one of the user's DataFrames wholesale: `df = <something not made from df>`,
  such as `df = pd.DataFrame(...)` built from the sample rows (pandas-ai #114);
- only defines functions or classes that it never uses, when the request does not ask for
  a function or a class: the cell would run and do nothing (a model trained on library
  code answers "average price by neighborhood" with a `def` more often than not);
- never touches a DataFrame that the request names ("... in housing"): it answers with
  data of its own (a model trained on docstring examples starts with `df = pd.DataFrame(`).

What it does not do: follow data flow (a column added through a second name, a frame
made by `merge` and then subscripted), or know which columns a method call produces.
Nothing here runs the candidate or any of the user's code.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Mapping

from codelm.generate.whole import syntax_error
from codelm.notebook.context import names, pandas_kind

COLUMN_METHODS = ("groupby", "sort_values", "set_index")  # first argument or `by=` names columns
BUILTINS = set(dir(builtins)) | {"__file__", "__name__", "display", "get_ipython"}


def _bound(tree: ast.Module) -> set[str]:
    """Every name the candidate binds, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
    return names


def _undefined(tree: ast.Module, namespace: Mapping[str, object]) -> str | None:
    bound = _bound(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name) or not isinstance(node.ctx, ast.Load):
            continue
        if node.id not in namespace and node.id not in bound and node.id not in BUILTINS:
            return f"uses undefined name {node.id!r}"
    return None


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _strings(node: ast.expr) -> list[str]:
    """Column names a subscript or argument spells out: "a", or ["a", "b"]."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.List | ast.Tuple):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def _added_columns(tree: ast.Module, frame: str) -> set[str]:
    """Columns the candidate assigns to `frame`: `frame["x"] = ...`, `frame.assign(x=...)`."""
    added: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id == frame:
                added.update(_strings(node.slice))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "assign" and isinstance(f.value, ast.Name) and f.value.id == frame:
                added.update(k.arg for k in node.keywords if k.arg)
    return added


def _reads(node: ast.AST, frame: str) -> list[str]:
    """Column names `node` reads from `frame`, if it is such a read."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_name(node.value, frame):
        return _strings(node.slice)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        f = node.func
        if f.attr in COLUMN_METHODS and isinstance(f.value, ast.Name) and f.value.id == frame:
            by = [k.value for k in node.keywords if k.arg == "by"] or node.args[:1]
            return [s for arg in by for s in _strings(arg)]
    return []


def _missing_column(tree: ast.Module, namespace: Mapping[str, object], rebound: set[str]) -> str | None:
    frames = {
        name: obj
        for name, obj in namespace.items()
        if pandas_kind(obj) == "DataFrame" and name not in rebound and not name.startswith("_")
    }
    for name, frame in frames.items():
        if getattr(frame.columns, "nlevels", 1) > 1:
            continue  # `df["a"]` selects a top level of a MultiIndex: not worth modelling here
        have = {str(c) for c in frame.columns} | _added_columns(tree, name)
        attrs = set(dir(type(frame)))
        for node in ast.walk(tree):
            for col in _reads(node, name):
                if col not in have:
                    return f"{name} has no column {col!r}"
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Load)
                and isinstance(node.value, ast.Name)
                and node.value.id == name
                and node.attr not in have
                and node.attr not in attrs
            ):
                return f"{name} has no column or attribute {node.attr!r}"
    return None


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _replaced_frame(tree: ast.Module, namespace: Mapping[str, object]) -> tuple[str | None, set[str]]:
    """(why, if a user's DataFrame is replaced by data not made from it; every user name rebound)."""
    rebound: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign) or node.value is None:
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            for name in (n.id for n in ast.walk(target) if isinstance(n, ast.Name)):
                if name not in namespace:
                    continue
                rebound.add(name)
                user_frame = pandas_kind(namespace[name]) == "DataFrame"
                if user_frame and isinstance(node, ast.Assign) and name not in _names(node.value):
                    return f"replaces the user's DataFrame {name!r} with new data", rebound
    return None, rebound


_DEFINES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
_ASKS_FOR_DEFS = ("function", "class", "method", "def ", "decorator", "helper")


def _does_nothing(tree: ast.Module, request: str) -> str | None:
    if any(word in request.lower() for word in _ASKS_FOR_DEFS):
        return None
    body = [s for s in tree.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    defs = [s.name for s in body if isinstance(s, _DEFINES[:3])]
    if not defs or not all(isinstance(s, _DEFINES) for s in body):
        return None
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if used & set(defs):
        return None
    return f"only defines {', '.join(defs)} and does nothing with it"


def _ignores_named_frame(tree: ast.Module, namespace: Mapping[str, object], request: str) -> str | None:
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    for name, obj in namespace.items():
        frame = pandas_kind(obj) == "DataFrame" and not name.startswith("_")
        if frame and name not in used and names(request, name):
            return f"does not use {name}, which the request names"
    return None


def check(code: str, namespace: Mapping[str, object], request: str = "") -> str | None:
    """None if the candidate passes every check, else the first reason to reject it.
    `request` is what the user asked for: a cell that only defines a function is an answer
    only when it asks for one."""
    err = syntax_error(code)
    if err is not None:
        return f"does not parse ({err})"
    tree = ast.parse(code)
    if not tree.body:
        return "is empty"
    try:  # the compiler's own checks (a duplicate argument, `return` outside a function); nothing runs
        compile(tree, "<cell>", "exec")
    except SyntaxError as e:
        return f"does not compile (line {e.lineno}: {e.msg})"
    why, rebound = _replaced_frame(tree, namespace)
    return (
        why
        or _undefined(tree, namespace)
        or _missing_column(tree, namespace, rebound)
        or _does_nothing(tree, request)
        or _ignores_named_frame(tree, namespace, request)
    )
