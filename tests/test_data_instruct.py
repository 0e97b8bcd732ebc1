"""Tests for instruction datasets in `codelm data build` (data/instruct.py): JSONL/Parquet
records that already are instruction -> code pairs become pair rows, judged like files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codelm import cli
from codelm.data.build import DataConfig
from codelm.data.instruct import PairFormat, answer_code, conversation, find_format, record_pair
from codelm.data.records import RawFile, Skip
from codelm.data.sources import open_source
from codelm.errors import CodelmError
from codelm.train.batches import document_layout
from tests.test_data import PROBLEM, all_rows, build, write

ADD = "def add(a, b):\n    return a + b\n"
SCALE = "def scale(xs, k):\n    return [x * k for x in xs]\n"
WORDS = "def count_words(text):\n    return len(text.split())\n"


def _jsonl(tmp_path, name, records) -> str:
    return str(write(tmp_path, name, "".join(json.dumps(r) + "\n" for r in records)))


# ---------------------------------------------------------------- reading one record


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (ADD, ADD),  # no fence: the whole answer
        ("\n\n    x = 1\n    y = 2\n\n", "x = 1\ny = 2\n"),  # blank lines dropped, dedented
        (f"Here it is:\n```python\n{ADD}```\nIt adds.", ADD),
        (f"```\n{ADD}```", ADD),  # an unmarked fence counts as Python
        (f"```sh\npip install x\n```\nthen\n```py\n{ADD}```\n```python\n{SCALE}```", ADD),  # first Python
        ("```sql\nSELECT 1;\n```", None),  # another language only
        ("```python\n\n```", ""),  # an empty block
    ],
)
def test_answer_code_is_the_first_python_block_or_the_whole_answer(answer, code):
    assert answer_code(answer) == code


def test_alpaca_input_joins_the_instruction_and_empty_parts_are_no_pair():
    fmt = PairFormat("instruction", "output")
    rec = {"instruction": "Add two numbers. ", "input": " a=1, b=2 ", "output": ADD}
    assert record_pair(rec, fmt) == ("Add two numbers.\n\na=1, b=2", ADD)
    assert record_pair({**rec, "input": ""}, fmt) == ("Add two numbers.", ADD)
    assert record_pair({**rec, "instruction": "  "}, fmt) is None
    assert record_pair({**rec, "output": "\n"}, fmt) is None
    assert record_pair({**rec, "output": 3}, fmt) is None
    assert record_pair(["not", "a", "dict"], fmt) is None


def test_a_conversation_is_system_first_then_the_turns_with_the_answers_code_unfenced():
    msgs = [
        {"role": "user", "content": "Write add."},
        {"role": "assistant", "content": f"```python\n{ADD}```"},
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Now scale a list."},
        {"role": "assistant", "content": f"Sure:\n```python\n{SCALE}```"},
    ]
    instruction, answer = record_pair({"messages": msgs}, PairFormat("messages"))
    assert instruction == f"You write Python.\n\nWrite add.\n\n{ADD.rstrip()}\n\nNow scale a list."
    assert answer_code(answer) == SCALE
    assert instruction == conversation([(m["role"], m["content"]) for m in msgs[:-1]])


@pytest.mark.parametrize(
    "msgs",
    [
        [{"role": "user", "content": "Write add."}],  # no answer
        [{"role": "assistant", "content": ADD}, {"role": "user", "content": "Write add."}],  # not last
        [{"role": "user", "content": [{"type": "text", "text": "x"}]}, {"role": "assistant", "content": ADD}],
        [{"role": "assistant", "content": "hi"}, {"role": "assistant", "content": ADD}],  # nothing asked
        "not a list",
    ],
)
def test_a_conversation_without_a_text_request_and_a_last_answer_is_no_pair(msgs):
    assert record_pair({"messages": msgs}, PairFormat("messages")) is None


def test_the_layout_is_found_in_this_order():
    assert find_format(["messages", "prompt", "completion"]) == PairFormat("messages")
    assert find_format(["id", "instruction", "input", "output"]) == PairFormat("instruction", "output")
    assert find_format(["prompt", "completion"]) == PairFormat("prompt", "completion")
    assert find_format(["problem", "solution", "lang"]) == PairFormat("problem", "solution")
    assert find_format(["instruction", "response"]) == PairFormat("instruction", "response")
    assert find_format(["text", "label"]) is None


def test_records_become_raw_files_that_carry_their_instruction(tmp_path):
    dump = _jsonl(
        tmp_path,
        "alpaca.jsonl",
        [
            {"instruction": "Add two numbers.", "input": "", "output": ADD},
            {"instruction": "Select one.", "input": "", "output": "```sql\nSELECT 1;\n```"},
            {"instruction": "Nothing.", "input": "", "output": ""},
            {"instruction": "Lone \ud800 surrogate.", "input": "", "output": ADD},
        ],
    )
    items = list(open_source(dump))
    assert items[0] == RawFile("alpaca.jsonl#0", ADD.encode(), dump, "python", instruction="Add two numbers.")
    assert [i.reason for i in items[1:]] == [
        "skipped_other_language",
        "skipped_bad_record",
        "skipped_bad_record",
    ]
    assert all(isinstance(i, Skip) for i in items[1:])


def test_parquet_chat_records_are_read_as_structs(tmp_path):
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Scale a list by k."},
        {"role": "assistant", "content": f"```python\n{SCALE}```"},
    ]
    pq.write_table(pa.table({"messages": [turns], "id": [5]}), tmp_path / "chat.parquet")
    (item,) = open_source(str(tmp_path / "chat.parquet"))
    assert (item.instruction, item.data) == ("Be brief.\n\nScale a list by k.", SCALE.encode())


# ---------------------------------------------------------------- a build


def test_instruction_datasets_build_pairs_only_judged_like_files(tmp_path):
    alpaca = _jsonl(
        tmp_path,
        "alpaca.jsonl",
        [
            {"instruction": "Add two numbers.", "input": "", "output": ADD},
            {"instruction": "Count the words in a text.", "input": "", "output": f"```python\n{WORDS}```"},
            {
                "instruction": "Add two numbers.",
                "input": "",
                "output": ADD.replace("    ", "\t"),
            },  # exact dup
            {"instruction": "Broken.", "input": "", "output": "def f(:\n    pass\n"},  # does not parse
            {"instruction": "A query.", "input": "", "output": "```sql\nSELECT 1;\n```"},
            {
                "instruction": "Leak.",
                "input": "",
                "output": PROBLEM["prompt"] + PROBLEM["canonical_solution"],
            },
            {"instruction": 7, "output": ADD},  # a bad record
            {"instruction": "Add. " * 300_000, "input": "", "output": ADD},  # over --max-bytes
        ],
    )
    chat = _jsonl(
        tmp_path,
        "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "Scale a list by k."},
                    {"role": "assistant", "content": SCALE},
                ]
            }
        ],
    )
    pq.write_table(
        pa.table({"problem": ["Say hello."], "solution": ["print('hello')\n"]}), tmp_path / "m.parquet"
    )
    bench = write(tmp_path, "bench.jsonl", json.dumps(PROBLEM) + "\n")
    stats = build(
        [alpaca, chat, tmp_path / "m.parquet"], tmp_path / "data", DataConfig(decontaminate=(str(bench),))
    )
    rows = all_rows(tmp_path / "data")
    assert {r["kind"] for r in rows} == {"pair"}  # no file rows: the code alone is not a document
    got = sorted((r["prompt"], r["completion"], r["path"]) for r in rows)
    assert got == [
        ("Add two numbers.", ADD, "alpaca.jsonl#0"),
        ("Count the words in a text.", WORDS, "alpaca.jsonl#1"),
        ("Say hello.", "print('hello')\n", "m.parquet#0"),
        ("Scale a list by k.", SCALE, "chat.jsonl#0"),
    ]
    assert all(r["text"] == f"# {r['prompt']}\n{r['completion']}" for r in rows)
    assert stats["pairs_given"] == 4 and stats["pairs_mined"] == 0
    assert sum(stats[f"{s}_pairs"] for s in ("train", "val", "test")) == 4
    assert sum(stats[f"{s}_documents"] for s in ("train", "val", "test")) == 0
    assert stats["dropped_exact_duplicate"] == 1 and stats["dropped_syntax_error"] == 1
    assert stats["skipped_other_language"] == 1 and stats["skipped_bad_record"] == 1
    assert stats["dropped_contaminated"] == 1 and stats["dropped_too_large"] == 1


def test_given_pairs_train_on_the_code_only(tmp_path):
    alpaca = _jsonl(tmp_path, "a.jsonl", [{"instruction": "Add two numbers.", "input": "", "output": ADD}])
    build([alpaca], tmp_path / "data", DataConfig(fractions=(1.0, 0.0, 0.0)))
    (row,) = all_rows(tmp_path / "data")
    layout = document_layout(row, np.random.default_rng(0), fim_rate=0.5)
    assert layout.pieces == ["Add two numbers.", ADD]
    assert [flag for *_, flag in layout.parts] == [0, 0, 0, 1, 1]  # instruction masked, code and end trained


def test_code_files_and_pairs_mix_in_one_build(tmp_path):
    src = write(
        tmp_path,
        "src/tools.py",
        '"""Tools."""\n\n\ndef add(a, b):\n    """Return a plus b, summed."""\n    return a + b\n',
    )
    alpaca = _jsonl(tmp_path, "a.jsonl", [{"prompt": "Scale a list by k.", "completion": SCALE}])
    stats = build([src.parent, alpaca], tmp_path / "data")
    kinds = sorted((r["kind"], r["path"]) for r in all_rows(tmp_path / "data"))
    assert kinds == [("file", "tools.py"), ("pair", "a.jsonl#0"), ("pair", "tools.py::add")]
    assert (stats["pairs_mined"], stats["pairs_given"]) == (1, 1)


def test_pair_fields_names_the_columns_and_bad_ones_are_one_line(tmp_path, capsys):
    dump = _jsonl(tmp_path, "d.jsonl", [{"content": "x = 1\n", "ask": "Scale a list by k.", "code": SCALE}])
    assert cli.main(["data", "build", dump, "--pair-fields", "ask,code", "--out", str(tmp_path / "d")]) == 0
    assert [(r["kind"], r["prompt"]) for r in all_rows(tmp_path / "d")] == [("pair", "Scale a list by k.")]
    capsys.readouterr()
    for bad, message in [
        ("ask", "--pair-fields must be 'messages' or two columns"),
        ("ask,ask", "--pair-fields must be"),
        ("ask,answer", "no field 'answer' for --pair-fields (fields: ask, code, content)"),
    ]:
        assert cli.main(["data", "build", dump, "--pair-fields", bad, "--out", str(tmp_path / "e")]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CodelmError, match="no field 'content'.*--pair-fields for instruction"):
        build([_jsonl(tmp_path, "t.jsonl", [{"text": "x = 1"}])], tmp_path / "f")
