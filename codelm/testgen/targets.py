"""What the test writer tests: the module, how it is imported, its public functions.

`load_module` reads a Python file and works out where it is imported from: the
top of its package (the first folder up without `__init__.py`), so that
`pkg/sub/mod.py` is `pkg.sub.mod`, and a file outside any package is imported by
its own name. It also gathers the files the sandbox gets: the whole package, or
the module's `.py` neighbours, bounded in size. `find_targets` lists the public
functions and methods with `ast`; nothing here imports or runs the module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from codelm.errors import CodelmError

MAX_COPY_BYTES = 8_000_000  # the package copied into each sandbox; a tmpfs of 64 MB holds it


@dataclass(frozen=True)
class Target:
    qualname: str  # "f" or "Cls.meth"
    name: str  # the called name: "f" or "meth"
    cls: str | None  # the class of a method
    lineno: int  # first line of the def, decorators included
    end_lineno: int
    body_lines: frozenset[int]  # lines of the body that can run (coverage is counted over them)

    @property
    def imported(self) -> str:
        """What the test file imports from the module to reach the target."""
        return self.cls or self.name

    @property
    def slug(self) -> str:
        """The target in a test function's name: test_<slug>_..."""
        return (f"{self.cls}_{self.name}" if self.cls else self.name).lower().strip("_")


@dataclass(frozen=True)
class Module:
    path: Path  # the file, resolved
    root: Path  # the folder that must be on sys.path to import it
    name: str  # dotted import name
    source: str
    files: dict[str, str]  # path relative to root -> text: what the sandbox gets

    @property
    def relpath(self) -> str:
        return self.path.relative_to(self.root).as_posix()


def _parse(source: str, where: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as e:
        at = f"line {e.lineno}: " if e.lineno else ""  # a null byte's has none (3.11.7 here)
        raise CodelmError(f"{where} does not parse: {at}{e.msg}") from None
    except ValueError as e:  # null bytes, in older Pythons
        raise CodelmError(f"{where} does not parse: {e}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CodelmError(f"cannot read {path}: {e}") from None


def _copied_files(path: Path, root: Path) -> dict[str, str]:
    # A package module may import anything of its package; a lone module, its neighbours.
    top = root / path.relative_to(root).parts[0] if path.parent != root else None
    candidates = sorted(top.rglob("*.py")) if top else sorted(root.glob("*.py"))
    files, size = {}, 0
    for f in candidates:
        # Tests and conftest.py are not needed to import the module, and a conftest.py at
        # the sandbox's root would be loaded into every session.
        test_file = f.name == "conftest.py" or f.name.startswith("test_") or f.name.endswith("_test.py")
        if "__pycache__" in f.parts or not f.is_file() or (test_file and f != path):
            continue
        size += f.stat().st_size
        if size > MAX_COPY_BYTES:
            raise CodelmError(
                f"{top or root} holds more than {MAX_COPY_BYTES // 1_000_000} MB of Python: "
                "too much to copy into the sandbox"
            )
        files[f.relative_to(root).as_posix()] = _read(f)
    return files


def load_module(path: str | Path) -> Module:
    """The module at `path`, its import root and name, and the files the sandbox needs."""
    p = Path(path)
    if not p.is_file():
        raise CodelmError(f"no such file: {path}")
    if p.suffix != ".py":
        raise CodelmError(f"{path} is not a Python file (.py)")
    p = p.resolve()
    source = _read(p)
    _parse(source, str(path))
    root = p.parent
    while (root / "__init__.py").is_file() and root.parent != root:
        root = root.parent
    parts = list(p.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(x.isidentifier() for x in parts):
        raise CodelmError(f"{path} cannot be imported: {'.'.join(parts) or p.name} is not a module name")
    return Module(p, root, ".".join(parts), source, _copied_files(p, root))


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> frozenset[int]:
    """Lines of the function's statements, the docstring left out: what a test can cover."""
    body = fn.body
    first = body[0] if body else None
    docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    if docstring and isinstance(first.value.value, str) and len(body) > 1:
        body = body[1:]
    lines = set()
    for stmt in body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.stmt):
                lines.add(node.lineno)
    return frozenset(lines)


def _target(fn: ast.FunctionDef | ast.AsyncFunctionDef, cls: str | None) -> Target:
    first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    qual = f"{cls}.{fn.name}" if cls else fn.name
    return Target(qual, fn.name, cls, first, fn.end_lineno or fn.lineno, _body_lines(fn))


def find_targets(module: Module, names: list[str] | None = None) -> list[Target]:
    """Public functions and methods (no leading underscore) in source order, or the named
    ones ("f", "Cls.meth", or a bare method name)."""
    tree = _parse(module.source, str(module.path))
    found: list[Target] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(_target(node, None))
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.append(_target(item, node.name))
    if names:
        chosen = []
        for want in names:
            hits = [t for t in found if want in (t.qualname, t.name)]
            if not hits:
                raise CodelmError(f"{module.relpath} has no function or method named {want}")
            chosen += [t for t in hits if t not in chosen]
        return chosen
    public = [
        t for t in found if not t.name.startswith("_") and not (t.cls or "").startswith("_") and t.body_lines
    ]
    if not public:
        raise CodelmError(f"{module.relpath} has no public functions or methods to test")
    return public


def source_window(module: Module, target: Target, max_lines: int) -> str:
    """The module's text, or, when longer than `max_lines`, the lines around the target: the
    target whole (a method with its class line), then neighbours before and after in turn."""
    lines = module.source.splitlines()
    if len(lines) <= max_lines:
        return module.source
    lo, hi = target.lineno - 1, target.end_lineno  # [lo, hi) is the target
    cls_line = None
    if target.cls:  # the class statement, so that a method reads as one
        starts = (i for i in range(lo - 1, -1, -1) if lines[i].lstrip().startswith(f"class {target.cls}"))
        cls_line = next(starts, None)
    while hi - lo < max_lines and (lo > 0 or hi < len(lines)):
        if lo > 0:
            lo -= 1
        if hi < len(lines) and hi - lo < max_lines:
            hi += 1
    head = [lines[cls_line], "    ..."] if cls_line is not None and cls_line < lo else []
    return "\n".join(head + lines[lo:hi]) + "\n"
