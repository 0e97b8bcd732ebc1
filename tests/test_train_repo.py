"""Repository documents: a stretch of a file after snippets of its repository, laid out as the
editor lays out repository context, with no loss on the snippets."""

from __future__ import annotations

import numpy as np

from codelm.data.chunks import Snippet, render
from codelm.tokenizer.roles import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from codelm.train.batches import assemble, repo_layout, tokenize_split
from codelm.train.repo import RepoDoc, repo_documents

SHAPES = (
    "def area_of_circle(radius):\n    return 3.14159 * radius * radius\n\n\n"
    "def perimeter(r):\n    return 2 * r\n"
)
USER = (
    "from shapes import area_of_circle\n\n\n"
    "def report(radius):\n    value = area_of_circle(radius)\n    return value\n"
)
LONE = "def lonely():\n    return area_of_circle(1)\n"


def _rows():
    return [
        {"path": "geo/shapes.py", "source": "src", "text": SHAPES, "kind": "file"},
        {"path": "geo/user.py", "source": "src", "text": USER, "kind": "file"},
        {"path": "other/lone.py", "source": "src", "text": LONE, "kind": "file"},
        {"path": "geo/user.py::report", "source": "src", "text": "x", "kind": "pair"},
    ]


def _count(text: str) -> int:
    return len(text.split())


def test_documents_come_with_snippets_of_the_same_repository_only():
    docs = repo_documents(_rows(), rate=1.0, window=400, count=_count, seed=0)
    by_text = {d.text: d for d in docs}
    assert all("lonely" not in d.text for d in docs)  # its folder holds no other file
    user = next(d for t, d in by_text.items() if "def report" in t)
    assert "# geo/shapes.py\ndef area_of_circle(radius):" in user.context  # rendered as the editor does
    assert "# geo/user.py" not in user.context  # its own lines are left out
    assert all(_count(d.context) <= 100 for d in docs)  # a quarter of the window
    assert repo_documents(_rows(), 1.0, 400, _count, 0) == docs  # seeded
    assert len(repo_documents(_rows(), 3.0, 400, _count, 0)) == 3 * len(docs)
    assert repo_documents(_rows(), 0.0, 400, _count, 0) == []


def test_the_snippets_carry_no_loss_and_open_the_fim_prefix(tokenizer):
    snippet = Snippet("geo/shapes.py", 0, 2, "def area(r):\n    return r")
    render_snippet = render(snippet)  # what the editor puts in its prompts
    doc = RepoDoc(render_snippet, "x = area(2)\n")
    plain = repo_layout(doc, np.random.default_rng(0), fim_rate=0.0)
    encoded = [tokenizer.encode(p) for p in plain.pieces]
    ids, mask = assemble(plain, encoded, tokenizer)
    n_ctx = len(tokenizer.encode(render_snippet))
    assert mask[:n_ctx] == [0] * n_ctx and all(mask[n_ctx:])
    assert tokenizer.decode(ids[:n_ctx]) == render_snippet
    fim = repo_layout(doc, np.random.default_rng(0), fim_rate=1.0)
    ids, mask = assemble(fim, [tokenizer.encode(p) for p in fim.pieces], tokenizer)
    at = ids.index(tokenizer.special[FIM_PREFIX]) + 1
    assert ids[at : at + n_ctx] == tokenizer.encode(render_snippet) and mask[at : at + n_ctx] == [0] * n_ctx
    assert {tokenizer.special[FIM_SUFFIX], tokenizer.special[FIM_MIDDLE]} <= set(ids)
    assert sum(m == 0 for m in mask) == n_ctx  # only the snippets go without loss


def test_tokenize_split_appends_repository_documents(tmp_path, tokenizer):
    from codelm.data.dataset import make_row, write_data

    with write_data(tmp_path / "data") as writer:
        for row in _rows():
            writer.add("train", make_row(row["text"], row["path"], row["source"], kind=row["kind"]))
        writer.finish({}, {})
    plain, _ = tokenize_split(tmp_path / "data", "train", tokenizer, tmp_path / "a" / "train.bin")
    more, mask = tokenize_split(
        tmp_path / "data", "train", tokenizer, tmp_path / "b" / "train.bin", repo_rate=1.0, window=400
    )
    assert len(more) > len(plain) and (np.asarray(mask) == 0).sum() > 0
