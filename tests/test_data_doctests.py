"""Tests for docstring-example (doctest) pairs: codelm/data/doctests.py and their way through the build."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from codelm import cli, commands
from codelm.data.build import DataConfig, build_dataset
from codelm.data.dataset import SPLITS
from codelm.data.doctests import SETUP_LINES, mine_doctests
from codelm.data.pairs import PairConfig
from codelm.errors import CodelmError

PANDAS_LIKE = '''
def total(df):
    """Sum the columns.

    Examples
    --------
    >>> df = pd.DataFrame({'a': [1, 2, 3], 'b': [4, 5, 6]})

    Sum over each column.

    >>> df.sum()
    a     6
    b    15
    dtype: int64
    """
    return df.sum()
'''


def mine(src: str, cfg: PairConfig | None = None) -> list:
    return mine_doctests(src, ast.parse(src), cfg or PairConfig())


def in_function(doc: str) -> str:
    """A module with one function whose docstring is `doc` (written flush left)."""
    body = "\n".join(f"    {line}".rstrip() for line in doc.strip("\n").split("\n"))
    return f'def f(df):\n    """\n{body}\n    """\n    return df\n'


def test_pandas_example_gives_one_pair_with_setup_before_the_prose():
    pairs = mine(PANDAS_LIKE)
    assert [(p.name, p.kind) for p in pairs] == [("total:example2", "doctest")]
    setup = "df = pd.DataFrame({'a': [1, 2, 3], 'b': [4, 5, 6]})"
    assert pairs[0].prompt == f"{setup}\n\nSum over each column."
    assert pairs[0].completion == "df.sum()\n"  # the output lines ("a     6", "dtype: int64") are not code


def test_continuation_lines_join_and_prompts_separated_by_output_are_one_example():
    doc = """
Build a frame from a dict, then walk its columns.

>>> df = pd.DataFrame(
...     {"a": [1, 2]},
... )
>>> df
   a
0  1
>>> for col in df:
...     print(col)
a
"""
    (pair,) = mine(in_function(doc))
    assert pair.name == "f:example1" and pair.prompt == "Build a frame from a dict, then walk its columns."
    code = 'df = pd.DataFrame(\n    {"a": [1, 2]},\n)\ndf\nfor col in df:\n    print(col)\n'
    assert pair.completion == code


def test_header_only_first_example_is_setup_for_the_next_not_a_pair():
    doc = """
Example:
    >>> import pandas as pd
    >>> s = pd.Series([1, 2])

    Double every value of the series.

    >>> s * 2
    0    2
    1    4
"""
    (pair,) = mine(in_function(doc))
    assert pair.name == "f:example2"
    assert pair.prompt == "import pandas as pd\ns = pd.Series([1, 2])\n\nDouble every value of the series."
    assert pair.completion == "s * 2\n"


def test_prose_under_min_words_is_skipped():
    doc = """
Examples
--------
>>> s = pd.Series([3, 1])

Sort it.

>>> s.sort_values()
"""
    assert mine(in_function(doc)) == []  # two words, three needed by default
    (pair,) = mine(in_function(doc), PairConfig(min_instruction_words=2))
    assert pair.prompt.endswith("\n\nSort it.") and pair.completion == "s.sort_values()\n"


def test_example_without_prose_after_another_is_skipped_but_is_setup():
    doc = """
Make a frame of the prices.

>>> df = pd.DataFrame({"price": [1.5, 2.0]})

>>> df["tax"] = df["price"] * 0.2

Average the price column.

>>> df["price"].mean()
"""
    pairs = mine(in_function(doc))
    assert [p.name for p in pairs] == ["f:example1", "f:example3"]
    setup = 'df = pd.DataFrame({"price": [1.5, 2.0]})\ndf["tax"] = df["price"] * 0.2'
    assert pairs[1].prompt == f"{setup}\n\nAverage the price column."


def test_code_that_does_not_parse_is_skipped_and_not_setup():
    doc = """
Make a frame from broken code.

>>> broken = pd.DataFrame(

Count the rows of the frame.

>>> len(frame)
"""
    (pair,) = mine(in_function(doc))
    assert pair.name == "f:example2" and pair.prompt == "Count the rows of the frame."


def test_bare_name_and_literal_examples_are_skipped_and_not_setup():
    doc = """
Make a frame with two columns.

>>> df = pd.DataFrame({"a": [1], "b": [2]})

Show the frame we just made.

>>> df
   a  b
0  1  2

The answer to everything is this.

>>> 42

Drop the first column of the frame.

>>> df.drop(columns="a")
"""
    pairs = mine(in_function(doc))
    assert [p.name for p in pairs] == ["f:example1", "f:example4"]
    assert pairs[1].prompt == 'df = pd.DataFrame({"a": [1], "b": [2]})\n\nDrop the first column of the frame.'


def test_doctest_directives_are_stripped_and_a_lone_directive_is_no_example():
    doc = """
Plot the prices as a line chart.

>>> df.plot(  # doctest: +SKIP
...     y="price")  # doctest: +ELLIPSIS

Nothing but a directive, no code at all.

>>> # doctest: +SKIP
"""
    (pair,) = mine(in_function(doc))
    assert pair.completion == 'df.plot(\n    y="price")\n'


def test_class_method_and_module_docstrings_are_mined_with_qualified_names():
    src = '''"""Frames.

Make an empty frame for the module.

>>> frame = Frame()
"""


class Frame:
    """A table of columns.

    Make a frame with one column.

    >>> Frame(a=[1])
    """

    def total(self):
        """Sum every column.

        Sum the columns of a new frame.

        >>> Frame(a=[1]).total()
        1
        """
        return 1

    if True:

        def nested(self):
            """Inside an if.

            Call the nested method on a frame.

            >>> Frame().nested()
            """
'''
    names = [p.name for p in mine(src)]
    assert names == ["<module>:example1", "Frame:example1", "Frame.total:example1", "Frame.nested:example1"]


def test_rest_directives_options_and_literal_markers_are_not_prose():
    doc = """
Examples
--------
.. plot::
    :context: close-figs

    Draw a line from the origin::

    >>> import matplotlib.pyplot as plt
    >>> plt.plot([0, 1], [0, 1])
"""
    (pair,) = mine(in_function(doc))
    assert pair.prompt == "Draw a line from the origin:"
    assert pair.completion == "import matplotlib.pyplot as plt\nplt.plot([0, 1], [0, 1])\n"


def test_setup_keeps_imports_then_the_latest_whole_statements_within_the_budget():
    steps = "\n".join(f">>> x{i} = {i}" for i in range(30))
    doc = f"""
Import numpy for the arrays.

>>> import numpy as np
>>> arr = np.array([
...     1,
...     2,
... ])
{steps}

Add the last two numbers together.

>>> x28 + x29
"""
    pairs = mine(in_function(doc))
    setup, prose = pairs[1].prompt.split("\n\n")
    lines = setup.split("\n")
    assert prose == "Add the last two numbers together."
    assert lines[0] == "import numpy as np" and lines[-1] == "x29 = 29"
    assert len(lines) == SETUP_LINES and "arr = np.array([" not in setup  # older statements fell out
    ast.parse(setup)


def test_disabled_config_mines_nothing():
    assert mine(PANDAS_LIKE, PairConfig(doctests=False)) == []
    assert mine(PANDAS_LIKE, PairConfig(enabled=False)) == []  # --no-pairs turns off every pair


def test_no_doctests_flag_sets_the_pair_config():
    a = cli.build_parser().parse_args(["data", "build", "s", "--out", "D", "--no-doctests"])
    assert commands.data_config(a) == DataConfig(pairs=PairConfig(doctests=False))


# ---------------------------------------------------------------- through the build


def _corpus(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    for i in range(6):  # distinct files, so that none is a near duplicate of another
        doc = f'''"""Module number {i}."""


def scale_{i}(values, factor):
    """Multiply each value by the factor {i} times.

    Examples
    --------
    >>> values_{i} = [{i}, {i + 1}, {i + 2}]

    Scale the values by the number {i}.

    >>> scale_{i}(values_{i}, {i})
    [{i * i}]
    """
    return [v * factor * {i} for v in values]
'''
        (src / f"mod{i}.py").write_text(doc)
    return src


def _pair_rows(out: Path) -> list[dict]:
    rs = [r for s in SPLITS for r in pq.read_table(out / f"{s}.parquet").to_pylist()]
    return [r for r in rs if r["kind"] == "pair"]


def test_build_counts_doctest_pairs_in_stats_and_writes_their_rows(tmp_path):
    src = _corpus(tmp_path)
    stats = build_dataset([str(src)], tmp_path / "data", DataConfig(near_dup=False), progress=False)
    assert stats == json.loads((tmp_path / "data" / "stats.json").read_text())
    assert stats["doctest_pairs_mined"] == 6 and stats["pairs_mined"] == 12  # six function pairs too
    assert sum(stats[f"{s}_doctest_pairs"] for s in SPLITS) == 6
    assert sum(stats[f"{s}_pairs"] for s in SPLITS) == 12
    doctest_rows = [r for r in _pair_rows(tmp_path / "data") if r["path"].endswith(":example2")]
    assert sorted(r["path"] for r in doctest_rows) == [f"mod{i}.py::scale_{i}:example2" for i in range(6)]
    row = next(r for r in doctest_rows if r["path"].startswith("mod3.py"))
    assert row["prompt"] == "values_3 = [3, 4, 5]\n\nScale the values by the number 3."
    assert row["completion"] == "scale_3(values_3, 3)\n"

    cfg = DataConfig(near_dup=False, pairs=PairConfig(doctests=False))
    off = build_dataset([str(src)], tmp_path / "off", cfg, progress=False)
    assert off["doctest_pairs_mined"] == 0 and off["pairs_mined"] == 6
    assert not any(":example" in r["path"] for r in _pair_rows(tmp_path / "off"))


def test_pairs_only_without_function_pairs_keeps_just_the_doctest_pairs(tmp_path):
    src = _corpus(tmp_path)
    a = cli.build_parser().parse_args(
        ["data", "build", str(src), "--out", "D", "--pairs-only", "--no-function-pairs"]
    )
    cfg = commands.data_config(a)
    assert cfg == DataConfig(documents=False, pairs=PairConfig(functions=False))
    stats = build_dataset([str(src)], tmp_path / "data", replace(cfg, near_dup=False), progress=False)
    assert sum(stats[f"{s}_documents"] for s in SPLITS) == 0
    assert stats["pairs_mined"] == stats["doctest_pairs_mined"] == 6
    rows = [r for s in SPLITS for r in pq.read_table(tmp_path / "data" / f"{s}.parquet").to_pylist()]
    assert len(rows) == 6 and all(r["kind"] == "pair" and ":example" in r["path"] for r in rows)


def test_pairs_only_with_no_pairs_at_all_is_a_one_line_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain.py").write_text("X = 1\n")
    with pytest.raises(CodelmError, match=r"^no usable pairs \(--pairs-only keeps nothing else\) found in"):
        build_dataset([str(src)], tmp_path / "data", DataConfig(documents=False), progress=False)
