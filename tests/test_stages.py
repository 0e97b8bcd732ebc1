"""The stage graph, read from the source with `ast` (nothing is imported).

codelm is laid out the way data flows:

    data -> tokenizer -> model -> interop -> train -> generate -> evaluate -> serve

and the use-case stages `lsp`, `notebook` and `testgen` stand beside `serve`: each of
them may import every stage up to and including `evaluate`, and none imports `serve`
or another of them (`serve` imports none of them either). A stage imports earlier
stages, never a later one. The helper modules (errors, fsutil, sockets, cbuild, hardware, memory, and
`codelm/__init__.py`) may be imported by every stage and import no stage themselves;
cli, demo and __main__ sit on top and may import anything, but nothing else imports
them. Two rules are checked over every `codelm/**/*.py`:

1. no module imports a stage it may not (the table `MAY_IMPORT`);
2. no import cycle between modules.

What counts as an import: `import x` and `from x import y`, relative ones resolved, at
module level or inside a function (a lazy import is still a dependency: it only runs
later). `from pkg import name` is an edge to `pkg.name` when that is a module, else
to `pkg`; the parent packages that Python imports on the way are not edges, or every
package `__init__` that re-exports its submodules would make a cycle. An import under
`if TYPE_CHECKING:` never runs, so it is left out of the cycle rule; it still names the
other stage, so it counts for the stage rule. Dynamic imports (`importlib`) are not seen.
"""

from __future__ import annotations

import ast
import textwrap
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "codelm"

CHAIN = ("data", "tokenizer", "model", "interop", "train", "generate", "evaluate")
BESIDE = ("serve", "lsp", "notebook", "testgen")  # the last stages: each imports CHAIN, not the others
HELPERS = frozenset(
    {
        "codelm",
        "codelm.errors",
        "codelm.fsutil",
        "codelm.sockets",
        "codelm.cbuild",
        "codelm.hardware",
        "codelm.memory",
    }
)
TOP = frozenset({"codelm.cli", "codelm.commands", "codelm.demo", "codelm.__main__"})

# The stages each stage may import besides itself; every stage may import the helpers.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "helpers": frozenset(),
    **{stage: frozenset(CHAIN[:i]) for i, stage in enumerate(CHAIN)},
    **{stage: frozenset(CHAIN) for stage in BESIDE},
    "top": frozenset(CHAIN + BESIDE),
}


@dataclass(frozen=True)
class Import:
    """One import statement's edge: `importer` imports `imported` at `where` (file:line)."""

    importer: str
    imported: str
    where: str
    function: str | None = None  # the enclosing function of a lazy import
    type_only: bool = False  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        how = f", inside {self.function}()" if self.function else ""
        how += ", under TYPE_CHECKING" if self.type_only else ""
        return f"{self.importer} -> {self.imported} ({self.where}{how})"


def stage_of(module: str) -> str | None:
    """The stage that owns `module`: "helpers", "top", a stage's name, or None if none does."""
    if module in TOP:
        return "top"
    if module == "codelm" or ".".join(module.split(".")[:2]) in HELPERS:
        return "helpers"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in CHAIN + BESIDE else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Visitor(ast.NodeVisitor):
    """Collects the package-internal imports of one module, with their context."""

    def __init__(self, module: str, is_package: bool, where: str, known: set[str]) -> None:
        self.module, self.is_package, self.where, self.known = module, is_package, where, known
        self.root = module.split(".")[0]
        self.function: list[str] = []
        self.type_only = False
        self.found: list[Import] = []

    def _add(self, target: str, node: ast.stmt) -> None:
        if (target == self.root or target.startswith(self.root + ".")) and target != self.module:
            function = self.function[-1] if self.function else None
            self.found.append(
                Import(self.module, target, f"{self.where}:{node.lineno}", function, self.type_only)
            )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the importer's package, one level up per extra dot
            package = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            if node.level - 1 >= len(package):
                raise ValueError(f"{self.where}:{node.lineno}: relative import beyond the package")
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        targets = {f"{base}.{alias.name}" for alias in node.names}  # one edge per module, not per name
        for target in sorted({name if name in self.known else base for name in targets}):
            self._add(target, node)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.function.append(node.name)
        self.generic_visit(node)
        self.function.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.visit(node.test)
        outer, self.type_only = self.type_only, True
        for child in node.body:
            self.visit(child)
        self.type_only = outer
        for child in node.orelse:
            self.visit(child)


def read_imports(package_dir: Path) -> list[Import]:
    """Every import of a module of the package at `package_dir` by another of its modules."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    imports = []
    for module, (path, is_package) in files.items():
        where = path.relative_to(package_dir.parent).as_posix()
        visitor = _Visitor(module, is_package, where, set(files))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        imports += visitor.found
    return imports


def stage_violations(imports: list[Import]) -> list[str]:
    """One line per import that breaks the stage order, naming the edge and the rule."""
    out = []
    for imp in imports:
        a, b = stage_of(imp.importer), stage_of(imp.imported)
        if a is None or b is None:
            nameless = imp.importer if a is None else imp.imported
            out.append(f"{imp}: {nameless} belongs to no stage (add it to tests/test_stages.py)")
        elif a != b and b != "helpers" and b not in MAY_IMPORT[a]:
            if a == "helpers":
                why = "a helper imports no stage"
            elif b == "top":
                why = "only cli, demo and __main__ import cli, demo and __main__"
            else:
                allowed = ", ".join(["helpers", *sorted(MAY_IMPORT[a], key=(CHAIN + BESIDE).index)])
                why = f"{a} may import only itself and {allowed}"
            out.append(f"{imp}: {a} imports {b}; {why}")
    return out


def import_cycles(imports: list[Import]) -> list[str]:
    """Per import cycle (a strongly connected group of modules): its shortest cycle through
    the group's first module, then each import that makes it, one a line. TYPE_CHECKING
    imports never run and are left out."""
    edges: dict[tuple[str, str], list[Import]] = {}
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.type_only:
            edges.setdefault((imp.importer, imp.imported), []).append(imp)
            graph.setdefault(imp.importer, set()).add(imp.imported)
            graph.setdefault(imp.imported, set())

    # Tarjan's strongly connected components (iterative: the call stack stays flat).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    out = []
    for group in sorted(groups, key=min):
        cycle = _shortest_cycle(min(group), graph, group)
        lines = [" -> ".join(cycle)]
        if len(group) > len(cycle) - 1:
            lines[0] += f" (one cycle of a group of {len(group)}: {', '.join(sorted(group))})"
        lines += [f"    {imp}" for a, b in zip(cycle, cycle[1:], strict=False) for imp in edges[(a, b)]]
        out.append("\n".join(lines))
    return out


def _shortest_cycle(start: str, graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside `group` (breadth-first)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & group):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a cycle group but on no cycle")


# --- the rules, on codelm itself ---


@pytest.fixture(scope="module")
def codelm_imports() -> list[Import]:
    imports = read_imports(PACKAGE_DIR)
    assert len(imports) > 50, "the reader found almost no imports: it is broken, not the package clean"
    return imports


def test_every_stage_imports_only_earlier_stages_and_the_helpers(codelm_imports):
    violations = stage_violations(codelm_imports)
    assert not violations, "imports against the stage order:\n" + "\n".join(violations)


def test_no_import_cycles_not_even_through_imports_inside_functions(codelm_imports):
    cycles = import_cycles(codelm_imports)
    message = "import cycles (move what both sides need into a module they both import):"
    assert not cycles, "\n".join([message, *cycles])


# --- the checker can fail ---


@pytest.mark.parametrize(
    "importer, imported, allowed",
    [
        ("codelm.tokenizer.corpus", "codelm.data.sources", True),
        ("codelm.evaluate.report", "codelm.generate.generator", True),
        ("codelm.serve.api", "codelm.evaluate.passk", True),
        ("codelm.lsp.server", "codelm.evaluate.report", True),
        ("codelm.model.native", "codelm.cbuild", True),
        ("codelm.interop.hf", "codelm.model.io", True),
        ("codelm.hardware", "codelm.errors", True),
        ("codelm.demo", "codelm.serve", True),
        ("codelm.cli", "codelm.testgen.write", True),
        ("codelm.data.build", "codelm.train.batches", False),
        ("codelm.train.loop", "codelm.generate", False),
        ("codelm.interop.hf", "codelm.train.checkpoint", False),
        ("codelm.generate.generator", "codelm.evaluate.passk", False),
        ("codelm.evaluate.report", "codelm.serve.api", False),
        ("codelm.lsp.server", "codelm.serve.api", False),
        ("codelm.serve.api", "codelm.lsp.server", False),
        ("codelm.notebook.cells", "codelm.testgen.write", False),
        ("codelm.errors", "codelm.data.jsonl", False),
        ("codelm.train.loop", "codelm.cli", False),
        ("codelm.data.build", "codelm.scratch.helper", False),
    ],
)
def test_the_stage_rule_on_single_edges(importer, imported, allowed):
    violations = stage_violations([Import(importer, imported, "x.py:1")])
    assert (not violations) == allowed, violations
    if not allowed:
        assert f"{importer} -> {imported} (x.py:1)" in violations[0]


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root / "codelm"


def test_the_checker_reports_a_reverse_import_and_a_cycle_from_source(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "codelm/__init__.py": "",
            "codelm/errors.py": "",
            "codelm/data/__init__.py": "",
            "codelm/data/rows.py": """\
                from codelm.errors import Error

                def later():
                    from codelm.train import loop  # lazy, and against the order
                """,
            "codelm/train/__init__.py": "from .loop import run\n",
            "codelm/train/loop.py": "from ..data import rows\nfrom . import steps\n",
            "codelm/train/steps.py": "import codelm.errors\n",
            "codelm/model/__init__.py": "",
            "codelm/model/shapes.py": """\
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from codelm.generate.sampler import Sampler
                else:
                    from codelm import errors
                """,
            "codelm/generate/__init__.py": "",
            "codelm/generate/sampler.py": "from codelm.model.shapes import Shape\n",
        },
    )
    imports = read_imports(package)
    assert {(imp.importer, imp.imported) for imp in imports} == {
        ("codelm.data.rows", "codelm.errors"),
        ("codelm.data.rows", "codelm.train.loop"),
        ("codelm.train", "codelm.train.loop"),
        ("codelm.train.loop", "codelm.data.rows"),
        ("codelm.train.loop", "codelm.train.steps"),
        ("codelm.train.steps", "codelm.errors"),
        ("codelm.model.shapes", "codelm.generate.sampler"),
        ("codelm.model.shapes", "codelm.errors"),
        ("codelm.generate.sampler", "codelm.model.shapes"),
    }

    violations = stage_violations(imports)
    assert len(violations) == 2, violations
    assert violations[0].startswith(
        "codelm.data.rows -> codelm.train.loop (codelm/data/rows.py:4, inside later()): data imports train"
    )
    assert violations[1].startswith(
        "codelm.model.shapes -> codelm.generate.sampler (codelm/model/shapes.py:4, under TYPE_CHECKING)"
    )

    # The lazy import closes a cycle; the TYPE_CHECKING one never runs and does not.
    assert import_cycles(imports) == [
        "codelm.data.rows -> codelm.train.loop -> codelm.data.rows\n"
        "    codelm.data.rows -> codelm.train.loop (codelm/data/rows.py:4, inside later())\n"
        "    codelm.train.loop -> codelm.data.rows (codelm/train/loop.py:1)"
    ]


def test_a_cycle_longer_than_two_is_named_whole():
    imports = [
        Import("codelm.data.a", "codelm.data.b", "a.py:1"),
        Import("codelm.data.b", "codelm.data.c", "b.py:1"),
        Import("codelm.data.c", "codelm.data.a", "c.py:1"),
        Import("codelm.data.c", "codelm.errors", "c.py:2"),
    ]
    [cycle] = import_cycles(imports)
    assert cycle.startswith("codelm.data.a -> codelm.data.b -> codelm.data.c -> codelm.data.a\n")
    assert import_cycles(imports[:2] + imports[3:]) == []
