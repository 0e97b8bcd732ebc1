"""Repository context: chunking, BM25 retrieval, the index's bounds and updates, the layout."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from codelm.data.chunks import (
    STUB_MEMBERS,
    Hit,
    Snippet,
    chunk_file,
    comment_prefix,
    declarations,
    layout,
    terms,
)
from codelm.lsp.context import RecentFiles, RepoIndex, query_text

GEOMETRY = textwrap.dedent(
    """\
    import math

    UNIT = 1.0


    def area_of_circle(radius):
        return math.pi * radius ** 2


    @dataclass
    class Rectangle:
        width: float
        height: float

        def rectangle_area(self):
            return self.width * self.height
    """
)
STRINGS = textwrap.dedent(
    """\
    def slugify(text):
        return "-".join(text.lower().split())


    def shout(text):
        return text.upper() + "!"
    """
)
APP_JS = "function renderTodoList(items) {\n  return items.map((item) => `<li>${item}</li>`);\n}\n"


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    files = {
        "pkg/geometry.py": GEOMETRY,
        "pkg/strings.py": STRINGS,
        "web/app.js": APP_JS,
        # Junk that holds the query's words, to show it is never indexed.
        ".git/hooks/rectangle.py": "def rectangle_area(): pass\n",
        "node_modules/lib/rectangle.js": "function rectangleArea() {}\n",
        "myenv/lib/rectangle.py": "def rectangle_area(): pass\n",
        "myenv/pyvenv.cfg": "home = /usr\n",
        "pkg/__pycache__/geometry.py": "def rectangle_area(): pass\n",
        ".env": "RECTANGLE_AREA_TOKEN=secret\n",
    }
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "pkg/logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0rectangle_area")
    (tmp_path / "pkg/latin1.py").write_bytes("# caf\xe9 rectangle_area\n".encode("latin-1"))
    return tmp_path


def built(root: Path, **limits) -> RepoIndex:
    index = RepoIndex(root, **limits)
    index.build()
    return index


def test_chunk_python_functions_and_classes() -> None:
    chunks = chunk_file("pkg/geometry.py", GEOMETRY)
    assert [(c.kind, c.start, c.end) for c in chunks] == [
        ("window", 0, 3),  # imports and constants between the definitions
        ("function", 5, 7),
        ("class", 9, 16),  # from its decorator
    ]
    assert chunks[1].text.startswith("def area_of_circle(radius):")
    assert chunks[2].text.splitlines()[:2] == ["@dataclass", "class Rectangle:"]


def test_chunk_long_class_by_methods() -> None:
    methods = "".join(f"    def m{i}(self):\n" + "        x = 1\n" * 8 for i in range(10))
    text = "class Big:\n    '''Doc.'''\n" + methods
    chunks = chunk_file("big.py", text, max_lines=30)
    assert chunks[0].kind == "class" and chunks[0].text == "class Big:\n    '''Doc.'''"
    assert [c.text.splitlines()[0] for c in chunks[1:]] == [f"    def m{i}(self):" for i in range(10)]


def test_chunk_other_files_and_broken_python_by_windows() -> None:
    text = "\n".join(f"line {i}" for i in range(100))
    for path in ("notes.js", "broken.py"):
        source = text if path.endswith(".js") else "def broken(:\n" + text
        chunks = chunk_file(path, source, window=40)
        assert all(c.kind == "window" for c in chunks)
        assert [c.end - c.start for c in chunks][:2] == [40, 40]
        assert chunks[-1].end == source.count("\n") + 1


def test_chunk_long_function_by_windows() -> None:
    text = "def long():\n" + "    x = 1\n" * 200
    chunks = chunk_file("long.py", text, window=50, max_lines=80)
    assert [(c.start, c.end) for c in chunks] == [(0, 50), (50, 100), (100, 150), (150, 200), (200, 201)]


def test_terms_split_identifiers() -> None:
    assert terms("renderTodoList(self, item_count)") == [
        "rendertodolist",
        "render",
        "todo",
        "list",
        "item_count",
        "item",
        "count",
    ]


def test_build_skips_junk(workspace: Path) -> None:
    index = built(workspace)
    assert index.files() == ["pkg/geometry.py", "pkg/strings.py", "web/app.js"]


def test_retrieval_ranks_shared_identifiers_first(workspace: Path) -> None:
    index = built(workspace)
    hits = index.search("rect = Rectangle(3, 4)\nprint(rect.rectangle_area())")
    assert hits[0].snippet.path == "pkg/geometry.py" and hits[0].snippet.kind == "class"
    assert index.search("slug = slugify(title)")[0].snippet.text.startswith("def slugify")
    assert index.search("renderTodoList(todos)")[0].snippet.path == "web/app.js"
    assert index.search("nothing_here_matches") == []


def test_retrieval_leaves_out_the_cursor_region(workspace: Path) -> None:
    index = built(workspace)
    query = "print(rect.rectangle_area())"
    uri = (workspace / "pkg/geometry.py").as_uri()
    hits = index.search(query, exclude=(uri, 12, 14))  # the cursor is inside Rectangle
    assert all(not (h.snippet.path == "pkg/geometry.py" and h.snippet.overlaps(12, 14)) for h in hits)
    assert index.search(query, exclude=("pkg/strings.py", 0, 99))[0].snippet.kind == "class"


def test_layout_respects_the_budget(workspace: Path) -> None:
    index = built(workspace)
    hits = index.search("Rectangle area_of_circle slugify shout renderTodoList", k=10)
    assert len(hits) >= 4
    full = layout(hits, 10_000, words)
    assert full.startswith(f"# {hits[0].snippet.path}\n{hits[0].snippet.text}\n")
    assert "// web/app.js\nfunction renderTodoList" in full
    for budget in (0, 5, 12, 25, 40):
        assert words(layout(hits, budget, words)) <= budget
    # A snippet too big for what is left is skipped, a smaller later one still comes in.
    big = Hit(Snippet("big.py", 0, 1, "word " * 50), 3.0)
    best, tiny = Hit(Snippet("a.py", 0, 1, "one"), 4.0), Hit(Snippet("b.py", 0, 1, "two"), 2.0)
    assert layout([best, big, tiny], 10, words) == "# a.py\none\n\n# b.py\ntwo\n\n"


def test_comment_prefix_by_extension() -> None:
    assert comment_prefix("a/b.py") == "#"
    assert comment_prefix("a/b.ts") == "//"
    assert comment_prefix("q.sql") == "--"
    assert comment_prefix("Makefile") == "#"


def test_update_and_remove_on_save(workspace: Path) -> None:
    index = built(workspace)
    path = workspace / "pkg/strings.py"
    path.write_text(STRINGS + "\n\ndef whisper(text):\n    return text.lower()\n")
    assert index.search("whisper(name)") == []
    assert index.update_file(path)
    assert index.search("whisper(name)")[0].snippet.text.startswith("def whisper")
    assert index.update_file("pkg/strings.py", "def murmur(text):\n    return text\n")  # unsaved text
    assert index.search("whisper(name)") == [] and index.search("murmur(x)")
    before = index.stats()
    assert index.remove_file(path.as_uri())
    assert index.search("murmur(x)") == [] and "pkg/strings.py" not in index.files()
    assert index.stats()["bytes"] < before["bytes"] and index.stats()["chunks"] < before["chunks"]
    assert not index.remove_file(path)


def test_update_refuses_junk_and_outside(workspace: Path, tmp_path_factory) -> None:
    index = built(workspace)
    assert not index.update_file(workspace / "node_modules/lib/rectangle.js")
    assert not index.update_file(workspace / "myenv/lib/rectangle.py")
    assert not index.update_file(workspace / ".env")
    outside = tmp_path_factory.mktemp("other") / "x.py"
    outside.write_text("def rectangle_area(): pass\n")
    assert not index.update_file(outside)
    assert not any(h.snippet.path != "pkg/geometry.py" for h in index.search("rectangle_area"))


def test_git_work_tree_honours_gitignore(workspace: Path) -> None:
    """In a git work tree the index holds what `git ls-files` lists: tracked files, and
    untracked ones that no ignore rule hides (a build folder, generated code)."""
    (workspace / ".gitignore").write_text("build/\ngenerated_*.py\n")
    files = {
        "build/lib/geometry.py": "def rectangle_area(): pass\n",
        "pkg/generated_api.py": "def rectangle_area(): pass\n",
        "pkg/generated_kept.py": "def kept_on_purpose(): pass\n",  # ignored by name, but tracked
    }
    for rel, text in files.items():
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_text(text)
    git = ["git", "-C", str(workspace)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-f", "pkg/geometry.py", "pkg/generated_kept.py"], check=True)
    index = built(workspace)
    assert index.files() == ["pkg/generated_kept.py", "pkg/geometry.py", "pkg/strings.py", "web/app.js"]
    assert not any(h.snippet.path != "pkg/geometry.py" for h in index.search("rectangle_area"))
    # On save: an ignored file stays out, a new untracked one comes in.
    assert not index.update_file(workspace / "pkg/generated_api.py")
    (workspace / "pkg/new.py").write_text("def whisper(text):\n    return text.lower()\n")
    assert index.update_file(workspace / "pkg/new.py")
    assert index.search("whisper(name)")[0].snippet.path == "pkg/new.py"


def test_size_bounds(workspace: Path) -> None:
    (workspace / "pkg/huge.py").write_text("x = 1\n" * 2000)  # 12 kB
    assert "pkg/huge.py" not in built(workspace, max_file_bytes=10_000).files()
    assert "pkg/huge.py" in built(workspace).files()
    small = built(workspace, max_total_bytes=len(GEOMETRY) + 10)
    assert small.stats()["bytes"] <= len(GEOMETRY) + 10 and len(small.files()) == 1
    few = built(workspace, max_chunks=4)
    assert 0 < few.stats()["chunks"] <= 4
    minified = "var a=" + "1," * 5000 + "2;\n"
    assert not built(workspace).update_file("web/min.js", minified)


def test_recent_files_override_and_boost(workspace: Path) -> None:
    index = built(workspace)
    recent = RecentFiles(capacity=2)
    uri = (workspace / "pkg/strings.py").as_uri()
    recent.touch(uri, "def slugify_title(title):\n    return title\n")  # edited, not saved
    hits = index.search("slugify_title(title)", recent=recent)
    assert hits[0].snippet.text.startswith("def slugify_title")
    assert all("def slugify(text)" not in h.snippet.text for h in hits)  # the saved copy is left out
    # An open document outside the workspace is searched too.
    recent.touch("file:///elsewhere/notes.py", "def rectangle_perimeter(rect):\n    return 2\n")
    assert index.search("rectangle_perimeter(r)", recent=recent)[0].snippet.path == "/elsewhere/notes.py"
    # The same snippet scores higher from an open document than from the index.
    plain = index.search("area_of_circle(r)")[0].score
    recent.touch((workspace / "pkg/geometry.py").as_uri(), GEOMETRY)
    assert index.search("area_of_circle(r)", recent=recent)[0].score > plain
    assert [u for u, _ in recent.items()][0] == "file:///elsewhere/notes.py"  # LRU of 2: oldest out
    assert len(recent.items()) == 2
    # A hidden file open in the editor is never searched: .env holds secrets.
    recent.touch((workspace / ".env").as_uri(), "SECRET_TOKEN = 'hunter2'\n")
    assert index.search("SECRET_TOKEN", recent=recent) == []


def test_the_context_block_end_to_end(workspace: Path) -> None:
    """The completer's block for a cursor: the snippets the lines above it name, best first."""
    from codelm.lsp.completer import Completer

    class Words:
        count = staticmethod(words)

    prefix = "from pkg.geometry import Rectangle\n\nr = Rectangle(2, 3)\nprint(r.rectangle_area(), "
    assert query_text("a\nb\nc", 2) == "b\nc"
    text = Completer(Words(), index=built(workspace))._context("main.py", prefix, "", 200, 1000)  # type: ignore[arg-type]
    assert text.startswith("# pkg/geometry.py\n@dataclass\nclass Rectangle:")
    assert words(text) <= 200


def test_build_in_background_while_querying(workspace: Path) -> None:
    for i in range(60):
        (workspace / f"gen/m{i}.py").parent.mkdir(exist_ok=True)
        (workspace / f"gen/m{i}.py").write_text(f"def helper_{i}(x):\n    return x + {i}\n")
    index = RepoIndex(workspace)
    thread = index.start()
    while thread.is_alive():
        index.search("helper_7(x) Rectangle")  # never raises on a half-built index
    thread.join()
    assert index.search("helper_7(x)")[0].snippet.path == "gen/m7.py"
    assert index.stats()["files"] == 63


def test_snippet_overlap() -> None:
    s = Snippet("a.py", 10, 20, "x")
    assert s.overlaps(19, 30) and s.overlaps(0, 11) and not s.overlaps(20, 25) and not s.overlaps(0, 10)


def test_declarations_are_stubs_of_top_level_functions_and_classes() -> None:
    stubs = declarations("pkg/geometry.py", GEOMETRY)
    assert stubs == {
        "area_of_circle": "def area_of_circle(radius):\n    ...",
        "Rectangle": (
            "@dataclass\nclass Rectangle:\n    width: float\n    height: float\n\n"
            "    def rectangle_area(self):\n        ..."
        ),
    }
    documented = 'async def fetch(url: str) -> bytes:\n    """Get it.\n\n    More."""\n    return b""\n'
    assert declarations("net.py", documented) == {
        "fetch": 'async def fetch(url: str) -> bytes:\n    """Get it."""\n    ...'
    }
    methods = "".join(f"    def m{i}(self): pass\n" for i in range(20))
    big = "class Big:\n    def _hidden(self): pass\n" + methods
    stub = declarations("big.py", big)["Big"]
    assert "_hidden" not in stub and stub.count("def ") == STUB_MEMBERS  # what callers use, bounded
    assert declarations("web/app.js", APP_JS) == {}
    assert declarations("broken.py", "def f(:\n") == {}


def test_declarations_for_the_names_above_the_cursor(workspace: Path) -> None:
    (workspace / "pkg/shouting.py").write_text("def shout(text):\n    return text\n")
    index = built(workspace)
    query = "r = Rectangle(2, 3)\nx = area_of_circle(1) + shout('a')\nRectangle"
    found = index.declarations(query, 5, exclude="main.py")
    # nearest the end first, each name once; `shout` is defined twice, so it is left out
    stubs = declarations("pkg/geometry.py", GEOMETRY)
    assert [s.text for s in found] == [stubs["Rectangle"], stubs["area_of_circle"]]
    assert all(s.path == "pkg/geometry.py" and s.kind == "declaration" for s in found)
    assert len(index.declarations(query, 1, exclude="main.py")) == 1
    assert index.declarations(query, 5, exclude=str(workspace / "pkg/geometry.py")) == []  # its own names
    index.remove_file("pkg/geometry.py")
    assert index.declarations(query, 5) == []


def test_the_context_block_puts_declarations_before_the_snippets(workspace: Path) -> None:
    from codelm.lsp.completer import Completer
    from codelm.lsp.prompt import LspConfig

    class Words:
        count = staticmethod(words)

    index = built(workspace)
    prefix = "from pkg.geometry import Rectangle\n\nr = Rectangle(2, 3)\nprint(r.rectangle_area(), "
    here = "file:///elsewhere/main.py"
    stubs = Completer(Words(), LspConfig(context_declarations=3), index=index)  # type: ignore[arg-type]
    on = stubs._context(here, prefix, "", 300, 1000)
    assert on.startswith("# pkg/geometry.py\n@dataclass\nclass Rectangle:\n    width: float")
    assert "return self.width * self.height" not in on  # the class's snippet: the stub shows it
    block = Completer(Words(), index=index)._context(here, prefix, "", 300, 1000)  # type: ignore[arg-type]
    assert (
        block.startswith("# pkg/geometry.py\n@dataclass\nclass Rectangle:")
        and "self.width * self.height" in block
    )
