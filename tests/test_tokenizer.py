"""The code tokenizer: lossless round trips (hypothesis and the whole standard library), the
pre-tokenizer's units (indents, operators, digits), special tokens, the saved form read by
HF `tokenizers` and transformers, the fast encoder against HF's pipeline, and bad input."""

from __future__ import annotations

import functools
import json
import sysconfig
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from codelm.cli import main
from codelm.errors import CodelmError
from codelm.tokenizer import (
    EOT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    INSTRUCTION,
    PAD,
    SPECIAL_TOKENS,
    CodeTokenizer,
    TextFiles,
    pieces,
    train_tokenizer,
)
from codelm.tokenizer import encoder as encoder_mod
from codelm.tokenizer.pretokenize import OPERATORS, PATTERN, replace_surrogates, split, to_byte_level

OPS_LINE = " ".join(f"a {op} b" for op in OPERATORS) + " " + " ".join(f"a{op}b" for op in OPERATORS)
SNIPPET = '''import os


class Stack:
    """A stack of items."""

    def __init__(self, items=None) -> None:
        self.items = list(items or [])

    def push(self, item):
        if item is not None and len(self.items) <= 10:
            for k in range(3):
                if k % 2 == 0:
                    self.items.append(item ** 2 // 3)
        return self.items[-1]


def getValue(snake_case_name, x=1.5e3):
    total = 0
    total += x; total -= 1; total **= 2; total //= 3; total <<= 1; total >>= 1
    return total if total != 0 else ...  # done
'''
CORPUS = [SNIPPET.replace("Stack", f"Stack{i}") + f"\nVALUE_{i} = {i * 37}\n{OPS_LINE}\n" for i in range(12)]

TRICKY = [
    "",
    " ",
    "\n",
    "\tdef f():\r\n\t\treturn 1\r\n",
    "x = 1   \n\n\n    y = 2\t \n",
    "page one\x0cpage two\x0b\x1c\x1d\x1e\x1f\x85\u2028\u2029",
    "naïve_變數 = 'café' + '😀👍🏽' # ünïcödé\n",
    "\x00\x01\x7f\u00a0\u3000 \ufeff\ufffd",
    "<|endoftext|><|pad|><|fim_prefix|>x<|fim_suffix|>y<|fim_middle|><|instruction|><|code|>",
    "<|endoftext",
    "=" * 40 + "\n" + "-" * 7 + ">>> f(x) ...\n",
    "    " * 20 + "deep\n",
]


@pytest.fixture(scope="module")
def tok() -> CodeTokenizer:
    return train_tokenizer(CORPUS, vocab_size=450)


needs_native = pytest.mark.skipif(not pieces.available(), reason=f"no C++ piece encoder: {pieces.reason()}")
ENGINES = [pytest.param(True, id="cpp", marks=needs_native), pytest.param(False, id="python")]


@pytest.fixture(scope="module", params=ENGINES)
def etok(request, tok) -> CodeTokenizer:
    """`tok` with each engine of the fast encoder: C++ and Python."""
    out = CodeTokenizer(Tokenizer.from_str(tok.tok.to_str()), native=request.param)
    assert out._fast is not None and out._fast.native == request.param
    return out


def _strings(tok: CodeTokenizer, ids: list[int]) -> list[str]:
    return [tok.decode([i]) for i in ids]


def test_special_tokens_take_the_first_ids(tok):
    assert [tok.special[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.eot_id == 0 and tok.pad_id == 1
    assert tok.vocab_size == 450


def test_text_spelling_a_special_token_stays_text(tok):
    text = "a <|endoftext|> b <|fim_prefix|><|code|>"
    for ids in (tok.encode(text), tok.encode_batch([text])[0], tok.tok.encode(text).ids):
        assert not set(ids) & set(tok.special.values())
        assert tok.decode(ids) == text
    ids = tok.encode(text, allow_special=True)
    assert [i for i in ids if i < len(SPECIAL_TOKENS)] == [0, 2, 6]
    assert tok.decode(ids) == text
    assert tok.encode_batch([text], allow_special=True) == [ids]
    assert tok.encode("<|endoftext|>", allow_special=True) == [tok.eot_id]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["<|", "|>", "endoftext", "pad", "<", "|", ">", "fim_prefix", "_", " "])))
def test_no_ordinary_text_produces_a_special_id(tok, parts):
    assert min(tok.encode("".join(parts)), default=99) >= len(SPECIAL_TOKENS)


def test_concurrent_calls_keep_special_handling_apart(tok):
    text = "x<|endoftext|>y\n" * 50
    plain, special = tok.encode(text), tok.encode(text, allow_special=True)
    errors: list[str] = []

    def work(k: int) -> None:
        for _ in range(30):
            got = tok.encode(text, allow_special=True) if k % 2 else tok.encode_batch([text, text])[1]
            if got != (special if k % 2 else plain):
                errors.append(f"thread {k}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("width", [4, 8, 12])
def test_an_indent_is_one_token_never_joined_to_code(tok, width):
    pad = " " * width
    for text, indent in ((f"x\n{pad}return y\n", "\n" + pad), (f"{pad}return y\n", pad)):
        pieces = _strings(tok, tok.encode(text))
        assert pieces[pieces.index(indent) + 1] == "return", pieces


def test_tabs_and_crlf_indents_stay_whitespace_pieces(tok):
    text = "if x:\r\n\treturn 1\r\n"
    assert split(text) == ["if", " x", ":", "\r\n\t", "return", " 1", "\r\n"]
    pieces = _strings(tok, tok.encode(text))
    assert "".join(pieces) == text
    assert pieces[pieces.index("return") - 1].isspace()


@pytest.mark.parametrize("op", OPERATORS)
def test_operators_are_whole_tokens(tok, op):
    assert op in _strings(tok, tok.encode(f"a{op}b"))
    assert " " + op in _strings(tok, tok.encode(f"a {op} b"))


def test_vocab_never_joins_words_to_brackets_or_operators(tok):
    brackets = set("()[]{}")
    for i in range(len(SPECIAL_TOKENS), tok.vocab_size):
        s = tok.decode([i])
        has_word = any(c.isalnum() or c == "_" for c in s)
        if has_word:
            assert not brackets & set(s), repr(s)
            assert not any(op in s for op in OPERATORS if op != "..."), repr(s)
        if s.strip():  # whitespace joins code only as one leading space (or after a `#`)
            assert s.rstrip(" ") in (s, "#") and s[:2] != "  " and s[0] not in "\t\r\n", repr(s)


def test_numbers_are_split_into_groups_of_at_most_three_digits(tok):
    assert split("x = 1234567890 + 42.5") == [
        "x", " =", " 123", "456", "789", "0", " +", " 42", ".", "5"
    ]  # fmt: skip
    pieces = _strings(tok, tok.encode("x = 1234567890 + 42"))
    digits = [p.strip() for p in pieces if any(c.isdigit() for c in p)]
    assert "".join(digits) == "123456789042" and all(len(d) <= 3 for d in digits)
    for i in range(len(SPECIAL_TOKENS), tok.vocab_size):  # so no number token is longer
        s = tok.decode([i]).strip()
        assert not s.isdigit() or len(s) <= 3, repr(s)


def test_escapes_and_string_prefixes_are_pieces():
    text = r's = b"\n\x41\000\\" + rf"\d+" + f"Err"'
    want = ["s", " =", " b", '"', r"\n", r"\x41", r"\000", r"\\", '"', " +", " rf", '"', r"\d", "+", '"']
    assert split(text) == [*want, " +", ' f"Err', '"']  # a prefix joins its quote and a name
    assert split("a = \\\n    1") == ["a", " =", " \\", "\n    ", "1"]  # a line continuation stays apart


def test_identifiers_merge_across_case_boundaries_when_frequent():
    texts = [f"value = getValue(snake_case_name)\nother_{i} = {i}\n" for i in range(200)]
    t = train_tokenizer(texts, vocab_size=400)
    assert " getValue" in _strings(t, t.encode("x = getValue(y)"))
    assert "snake_case_name" in _strings(t, t.encode("f(snake_case_name)"))


def test_trailing_whitespace_is_kept_apart_from_words(tok):
    text = "x = 1   \nreturn\t\t\n"
    assert split(text) == ["x", " =", " 1", "   ", "\n", "return", "\t\t", "\n"]
    pieces = _strings(tok, tok.encode(text))
    assert "".join(pieces) == text and " 1" in pieces and "return" in pieces


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky_strings(etok, text):
    assert etok.decode(etok.encode(text)) == text
    assert etok.decode(etok.encode(text, allow_special=True)) == text


def test_fast_encoder_matches_hf_pipeline_on_valid_text(etok):
    valid = TRICKY + CORPUS
    hf = [e.ids for e in etok.tok.encode_batch(valid, add_special_tokens=False)]
    assert etok.encode_batch(valid) == hf
    assert [etok.tok.decode(ids, skip_special_tokens=False) for ids in hf] == valid


CODE_BITS = st.sampled_from(
    [" ", "  ", "    ", "\t", "\n", "\r\n", "\r", "\x0c", "\x0b", "def", "x", "_y", "Z9", "é", "變",
     "😀", "(", ")", "[", "]", "{", "}", ":", ",", ".", "...", "'", '"', "#", "**=", "==", "->",
     ":=", "!", "=", "-", "0", "42", "\\", "<|endoftext|>", "\x00", "\u2028", "\ufeff"]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.lists(CODE_BITS).map("".join)))
def test_hypothesis_round_trip_and_parity_with_hf(etok, text):
    ids = etok.encode(text)
    assert etok.decode(ids) == text
    assert ids == etok.tok.encode(text, add_special_tokens=False).ids
    cut = split(text)  # Python's re, HF's Oniguruma and the C++ cut give the same pieces
    assert "".join(cut) == text
    assert [p for p, _ in etok.tok.pre_tokenizer.pre_tokenize_str(text)] == [to_byte_level(p) for p in cut]
    if pieces.available():
        assert pieces.cut(text) == cut


UTF8_BITS = st.sampled_from([b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"def f():\n\t", b"\r\n"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(st.binary(max_size=200), st.lists(st.one_of(UTF8_BITS, st.binary(max_size=3))).map(b"".join))
)
def test_fuzz_any_bytes_as_a_file_are_read_and_round_trip_or_skipped(etok, tmp_path, data):
    """What `codelm tokenizer train` reads: a file of any bytes is its exact text, or is
    skipped (binary, not UTF-8, empty) with a one-line error when it was the only file."""
    file = tmp_path / "any.py"
    file.write_bytes(data)
    files = TextFiles(file)
    try:
        texts, error = list(files), ""
    except CodelmError as e:
        texts, error = [], str(e)
    assert len(texts) + files.skipped == 1 and (error == "") == (len(texts) == 1)
    assert error == "" or error.startswith("no UTF-8 text to train on in file")
    assert all(t.encode("utf-8") == data and etok.decode(etok.encode(t)) == t for t in texts)


SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb\ud83d", "x = '\ud83d\ude00'  # \udc80\n"])
def test_a_lone_surrogate_becomes_the_replacement_character(etok, text):
    want = replace_surrogates(text)
    for ids in (etok.encode(text), etok.encode_batch([text])[0], etok.encode(text, allow_special=True)):
        assert ids == etok.tok.encode(want, add_special_tokens=False).ids
        assert etok.decode(ids) == want


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(), SURROGATE, st.sampled_from(" \n\t=(x"))))
def test_hypothesis_lone_surrogates_never_fail(etok, text):
    want = replace_surrogates(text)
    assert etok.decode(etok.encode(text)) == want
    assert etok.encode(text) == etok.encode(want)
    if pieces.available():
        assert pieces.cut(text) == split(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=449), max_size=40))
def test_decode_matches_hf_on_any_ids(tok, ids):
    # Any ids, so also byte sequences that are not UTF-8: both give U+FFFD the same way.
    assert tok.decode(ids) == tok.tok.decode(ids, skip_special_tokens=False)


def test_decode_rejects_ids_outside_the_vocabulary(tok):
    for bad in ([-1], [tok.vocab_size]):
        with pytest.raises(ValueError):
            tok.decode(bad)


@pytest.mark.parametrize("native", ENGINES)
def test_cache_limits_and_chunks_do_not_change_ids(tok, monkeypatch, native):
    texts = TRICKY + CORPUS
    want = [tok.encode(t) for t in texts]
    fresh = CodeTokenizer(Tokenizer.from_str(tok.tok.to_str()), native=native)
    monkeypatch.setattr(encoder_mod, "CACHE_LIMIT", 20)
    monkeypatch.setattr(encoder_mod, "CHUNK_CHARS", 100)
    monkeypatch.setattr(encoder_mod, "BPE_PIECES", 3)
    assert fresh.encode_batch(texts) == want
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(fresh.encode_batch(texts) == want)) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 3


def test_stdlib_round_trips_exactly():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    texts = []
    for p in files:
        try:
            texts.append(p.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            continue
    assert len(texts) > 1000
    t = train_tokenizer(texts[::40], vocab_size=2048)
    for unit in ("\n    ", "\n        ", "\n            ", " ==", " **=", " ->", " :=", "..."):
        assert len(t.encode("x" + unit)) == 2, unit
    for start in range(0, len(texts), 200):
        batch = texts[start : start + 200]
        for text, ids in zip(batch, t.encode_batch(batch), strict=True):
            assert t.decode(ids) == text
    sample = texts[::60]
    assert t.encode_batch(sample) == [
        e.ids for e in t.tok.encode_batch_fast(sample, add_special_tokens=False)
    ]
    if pieces.available():  # the C++ cut equals Python's re on every file
        assert all(pieces.cut(text) == split(text) for text in texts)
        python = CodeTokenizer(Tokenizer.from_str(t.tok.to_str()), native=False)
        assert t._fast.native and t.encode_batch(texts[::7]) == python.encode_batch(texts[::7])


@needs_native
def test_native_cut_of_edge_cases_equals_python_re():
    texts = [
        "", " ", "\t\tx", "\x00", "\\\x00", "\\", "x\\", "\\\n", "\\\r\n", "\\x4", "\\x41g", "\\u12aG",
        "\\u12ab", "\\0777", "\\é", "\\😀", "'", "b'", "rb'x", "Bf\"x.y", "uR'x", "ub'x", "f'{x}'",
        "#", "# ", "# x", "#x", "## x", "a.b.c.", "x...", "....", ".:", "a:=b", "(:", ":=", "\r", "\r\r\n",
        "\n\r\n\n  \t x", "1234567", " 12", "  x", " \x0c", "\ud800x\udfff", "é1", "===", "== =", "!==",
        "\u2028", "x\x0bx", "é" * 50, "a" * 200 + "\n",
    ]  # fmt: skip
    for text in texts:
        assert pieces.cut(text) == split(text), repr(text)


@needs_native
def test_native_learn_rejects_ids_that_do_not_fit_and_a_scan_can_be_abandoned(tok):
    fast = CodeTokenizer(Tokenizer.from_str(tok.tok.to_str()), native=True)._fast
    native = fast._native
    assert native.scan(["def f():\n    return 1\n"]) > 0
    assert native.learn(0, [tok.encode("def")[0], 999_999]) == -1  # outside the vocabulary
    assert native.learn(0, tok.encode("de")) == -1  # a piece's ids must spell all of it
    with pytest.raises(RuntimeError):
        native.emit()  # nothing learned yet
    # a scan left unlearned (say HF raised in between) does not spoil the next one
    assert fast.encode_batch(["def f():\n    return 1\n", "x"]) == [
        tok.encode("def f():\n    return 1\n"),
        tok.encode("x"),
    ]


def test_the_native_engine_can_be_turned_off_or_fail_to_build(tok, monkeypatch, tmp_path):
    text = CORPUS[0] + TRICKY[6]
    try:
        monkeypatch.setenv("CODELM_NATIVE", "0")
        assert not pieces.available() and pieces.reason() == "CODELM_NATIVE=0"
        off = CodeTokenizer(Tokenizer.from_str(tok.tok.to_str()))
        assert not off._fast.native and off.encode(text) == tok.encode(text)
        monkeypatch.delenv("CODELM_NATIVE")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached build: compile afresh
        monkeypatch.setenv("CXX", "false")  # a compiler that always fails
        pieces._load.cache_clear()
        assert not pieces.available() and "compiling pieces.cpp failed" in pieces.reason()
        assert list(tmp_path.rglob("*.so")) == []  # no half-built library is left behind
        failed = CodeTokenizer(Tokenizer.from_str(tok.tok.to_str()))
        assert not failed._fast.native and failed.encode(text) == tok.encode(text)
        damaged = pieces._library()  # where the build would be
        damaged.parent.mkdir(parents=True, exist_ok=True)
        damaged.write_bytes(b"not a shared library")
        pieces._load.cache_clear()
        assert not pieces.available() and "loading" in pieces.reason()
        assert not damaged.exists()  # removed, so the next run builds it again
    finally:
        pieces._load.cache_clear()


def test_saved_json_loads_in_tokenizers_and_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path / "tokenizer.json")
    text = CORPUS[0] + TRICKY[6] + "x\r\n\tz\x0c"
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    ids = tok.encode(text)
    assert hf.encode(text, add_special_tokens=False).ids == ids
    assert fast.encode(text, add_special_tokens=False) == ids
    assert fast.decode(ids) == text
    # Both treat spelled-out special tokens as specials, as allow_special=True does here.
    spelled = "a<|endoftext|>b<|fim_middle|>"
    assert fast.encode(spelled, add_special_tokens=False) == tok.encode(spelled, allow_special=True)
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        assert CodeTokenizer.load(path).encode(text) == ids


def test_a_foreign_tokenizer_json_still_works_through_hf(tmp_path):
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet)
    raw.train_from_iterator(CORPUS, trainer)
    t = CodeTokenizer(raw)
    assert t._fast is None
    assert t.decode(t.encode(CORPUS[1])) == CORPUS[1]
    assert t.decode(t.encode("a\ud800b")) == "a\ufffdb"
    assert t.encode("<|pad|>", allow_special=True) == [t.pad_id]


def test_vocab_size_is_exact_and_units_fit_a_tiny_vocab():
    assert train_tokenizer(CORPUS, vocab_size=300).vocab_size <= 300
    t = train_tokenizer(CORPUS, vocab_size=263)
    assert t.vocab_size == 263 and t.decode(t.encode(CORPUS[0])) == CORPUS[0]
    spec = json.loads(t.tok.to_str())
    assert spec["pre_tokenizer"]["pretokenizers"][0]["pattern"] == {"Regex": PATTERN}


@pytest.mark.parametrize("texts", [[], ["", ""], iter([])])
def test_empty_corpus_is_a_one_line_error(texts):
    with pytest.raises(CodelmError, match="empty corpus"):
        train_tokenizer(texts, vocab_size=300)


@pytest.mark.parametrize("size", [0, -5, 262])
def test_too_small_vocab_is_a_one_line_error(size):
    with pytest.raises(CodelmError, match="at least 263") as e:
        train_tokenizer(CORPUS, vocab_size=size)
    assert "\n" not in str(e.value)


def test_load_errors(tmp_path):
    with pytest.raises(CodelmError, match="not found"):
        CodeTokenizer.load(tmp_path / "nope.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CodelmError, match="cannot load") as e:
        CodeTokenizer.load(tmp_path)
    assert "\n" not in str(e.value)


def test_text_files_skip_binary_and_non_utf8(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / "c.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    files = TextFiles(tmp_path)
    assert list(files) == ["x = 1\n"]
    assert (files.used, files.skipped) == (1, 2)
    with pytest.raises(CodelmError, match="no UTF-8 text"):
        list(TextFiles(tmp_path / "b.bin"))


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["tokenizer", "train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_trains_on_a_data_dir_a_tree_and_a_file(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(
        pa.table({"text": CORPUS, "path": [f"f{i}.py" for i in range(len(CORPUS))]}), data / "train.parquet"
    )
    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(CORPUS[:4]):
        (src / f"m{i}.py").write_text(text)
    for source, out in (
        (data, tmp_path / "tok1"),
        (src, tmp_path / "tok2"),
        (src / "m0.py", tmp_path / "t3.json"),
    ):
        code, stdout, _ = _cli(capsys, str(source), "--out", str(out), "--vocab-size", "400")
        assert code == 0 and "400-token" in stdout
        saved = out if out.suffix == ".json" else out / "tokenizer.json"
        t = CodeTokenizer.load(saved)
        assert t.decode(t.encode(CORPUS[0])) == CORPUS[0]


def test_cli_bad_input_is_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.png").write_bytes(b"\x89PNG\x00\x00")
    (tmp_path / "ok.py").write_text(CORPUS[0])
    emptydata = tmp_path / "emptydata"
    emptydata.mkdir()
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), emptydata / "train.parquet")
    cases = [
        ([str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "not found"),
        ([str(tmp_path / "empty"), "--out", str(tmp_path / "o")], "no UTF-8 text"),
        ([str(tmp_path / "bin"), "--out", str(tmp_path / "o")], "no UTF-8 text"),
        ([str(emptydata), "--out", str(tmp_path / "o")], "empty corpus"),
        ([str(tmp_path / "ok.py"), "--out", str(tmp_path / "o"), "--vocab-size", "100"], "at least 263"),
        (
            [str(tmp_path / "ok.py"), "--out", str(tmp_path / "ok.py"), "--vocab-size", "300"],
            "ok.py is a file",
        ),
    ]
    for args, message in cases:
        code, _, err = _cli(capsys, *args)
        assert code == 2, args
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


# --- foreign tokenizer.json files: roles, document start, stop ids, exact bytes ------------------

FAMILIES: dict[str, dict] = {
    # special tokens (in id order), non-special added tokens, the post-processor's start token
    "qwen": {
        "special": [
            "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
            "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
        ],
    },
    "starcoder": {"special": ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]},
    "deepseek": {
        "special": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
        "plain": ["<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>"],  # DeepSeek-Coder's are not special
        "bos": "<｜begin▁of▁sentence｜>",
    },
    "llama3": {
        "special": ["<|begin_of_text|>", "<|end_of_text|>"],
        "bos": "<|begin_of_text|>",
        "sequence": True,  # ByteLevel, then the template
    },
    "gpt2": {"special": ["<|endoftext|>"], "prefix_space": True},
    "padded": {"special": ["<pad>", "<eos>", "<bos>"]},
}  # fmt: skip
FOREIGN_TEXTS = [
    "def f(x):\n\treturn x  # café 😀\n",
    "  two leading spaces\r\n",
    " x",
    "\n\n\t\tmixed \t tabs   \n",
    "naïve_變數 = 'é' + '\\n'\n",
]


@functools.cache
def foreign_tokenizer(family: str) -> CodeTokenizer:
    """A byte-level BPE trained on CORPUS with `family`'s special tokens (FAMILIES)."""
    spec = FAMILIES[family]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=spec.get("prefix_space", False))
    raw.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=spec["special"], initial_alphabet=alphabet)
    raw.train_from_iterator(CORPUS, trainer)
    raw.add_tokens(spec.get("plain", []))
    if bos := spec.get("bos"):
        template = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, raw.token_to_id(bos))]
        )
        seq = [processors.ByteLevel(trim_offsets=False), template]
        raw.post_processor = processors.Sequence(seq) if spec.get("sequence") else template
    return CodeTokenizer(Tokenizer.from_str(raw.to_str()))


@functools.cache
def llama_tokenizer(style: str, fim_added: bool = True) -> CodeTokenizer:
    """A CodeLlama-style SentencePiece BPE (`▁` spaces, `<0xNN>` byte fallback, `<s>` first).
    style "legacy": Prepend/Replace normalizers and a Strip decoder; "metaspace": a Metaspace
    pre-tokenizer and decoder. `fim_added`: its FIM tokens are added special tokens, else
    ordinary vocabulary strings."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    raw.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    )
    spec = json.loads(raw.to_str())
    vocab = spec["model"]["vocab"]
    codes = [f"<0x{b:02X}>" for b in range(256)] + (
        [] if fim_added else ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
    )
    for piece in codes:
        vocab.setdefault(piece, len(vocab))
    spec["model"].update(byte_fallback=True, unk_token="<unk>")
    if style == "legacy":
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        spec["normalizer"] = {
            "type": "Sequence",
            "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace],
        }
        spec["pre_tokenizer"] = None
        spec["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]}  # fmt: skip
    else:
        metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        spec["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, metaspace]}
    tok = Tokenizer.from_str(json.dumps(spec))
    if fim_added:
        tok.add_special_tokens(["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return CodeTokenizer(tok)


def test_codelm_tokenizer_keeps_all_seven_roles(tok):
    assert tok.special == dict(zip(SPECIAL_TOKENS, range(7), strict=True))
    assert (tok.eot_id, tok.pad_id, tok.bos_id) == (0, 1, 0)
    assert tok.stop_ids == frozenset(tok.special.values())
    assert all(tok.has(role) for role in SPECIAL_TOKENS)
    assert [tok.token_bytes[i] for i in range(7)] == [t.encode() for t in SPECIAL_TOKENS]


DEEPSEEK_FIM = ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")


@pytest.mark.parametrize(
    "family, eot, fim, bos, pad",
    [
        ("qwen", EOT, (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE), None, None),
        ("starcoder", EOT, ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), None, None),
        ("deepseek", "<｜end▁of▁sentence｜>", DEEPSEEK_FIM, "<｜begin▁of▁sentence｜>", None),
        ("llama3", "<|end_of_text|>", None, "<|begin_of_text|>", None),
        ("gpt2", EOT, None, None, None),
        ("padded", "<eos>", None, None, "<pad>"),
    ],
)
def test_each_family_maps_its_special_tokens_to_codelm_roles(family, eot, fim, bos, pad):
    roles = {EOT: eot, **({PAD: pad} if pad else {})}
    roles |= dict(zip((FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE), fim, strict=True)) if fim else {}
    t = foreign_tokenizer(family)
    ids = t.tok.token_to_id
    assert t.special == {role: ids(spelling) for role, spelling in roles.items()}
    assert t.bos_id == (ids(bos) if bos else t.eot_id)
    assert t.pad_id == (ids(pad) if pad else t.eot_id)
    assert t.has(FIM_PREFIX) == (FIM_PREFIX in roles) and not t.has(INSTRUCTION)
    marked = {ids(s) for s in FAMILIES[family]["special"]}
    assert t.stop_ids == frozenset(marked | set(t.special.values()))  # DeepSeek's FIM: roles, unmarked
    assert ids("<|im_end|>") in t.stop_ids if family == "qwen" else True


@pytest.mark.parametrize("style", ["legacy", "metaspace"])
@pytest.mark.parametrize("fim_added", [True, False])
def test_codellama_roles_start_and_stops(style, fim_added):
    t = llama_tokenizer(style, fim_added)
    ids = t.tok.token_to_id
    fim = {FIM_PREFIX: ids("▁<PRE>"), FIM_SUFFIX: ids("▁<SUF>"), FIM_MIDDLE: ids("▁<MID>")}
    assert t.special == {EOT: ids("</s>"), **fim}
    assert (t.bos_id, t.pad_id) == (ids("<s>"), ids("</s>"))
    # `▁<EOT>` ends CodeLlama's infilled middle, marked special or not.
    assert t.stop_ids == {ids(s) for s in ("<unk>", "<s>", "</s>", "▁<EOT>")} | set(fim.values())
    assert t.token_bytes[t.bos_id] == b"<s>" and t.token_bytes[fim[FIM_PREFIX]] == "▁<PRE>".encode()


def test_a_tokenizer_json_without_an_end_of_text_token_is_a_one_line_error(tmp_path):
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>"]))
    raw.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(CodelmError, match="no end-of-text token") as e:
        CodeTokenizer.load(tmp_path)
    assert "\n" not in str(e.value) and "</s>" in str(e.value) and "<|endoftext|>" in str(e.value)


FOREIGN = [*FAMILIES, "llama-legacy", "llama-metaspace", "llama-vocab-fim"]


def _foreign(name: str) -> CodeTokenizer:
    if name.startswith("llama-"):
        style = name.removeprefix("llama-")
        return llama_tokenizer("legacy", fim_added=False) if style == "vocab-fim" else llama_tokenizer(style)
    return foreign_tokenizer(name)


@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_text_round_trips_and_streams_as_it_decodes(name):
    t = _foreign(name)
    for text in FOREIGN_TEXTS:
        ids = t.encode(text)
        assert t.decode(ids) == text  # exact: no dummy leading space
        assert t.decode(ids) == b"".join(t.token_bytes[i] for i in ids).decode()
        assert t.encode_batch([text, text]) == [ids, ids]
        # A completion decodes as it streams, token by token, from any first token.
        for k in range(len(ids)):
            assert t.decode(ids[k:]) == b"".join(t.token_bytes[i] for i in ids[k:]).decode("utf-8", "replace")
    assert t.decode(t.encode("a\ud800b")) == "a\ufffdb"


@pytest.mark.parametrize("name", [n for n in FOREIGN if not n.startswith("llama-")])
@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(min_value=0, max_value=402), max_size=30))
def test_byte_level_decode_matches_hf_on_any_ids(name, ids):
    t = _foreign(name)
    ids = [i for i in ids if i < t.vocab_size]
    assert t.decode(ids) == t.tok.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("style", ["legacy", "metaspace"])
def test_sentencepiece_bytes_and_the_leading_space(style):
    t = llama_tokenizer(style)
    ids = t.tok.token_to_id
    assert t.token_bytes[ids("<0x09>")] == b"\t" and t.token_bytes[ids("<0xC3>")] == b"\xc3"
    assert t.token_bytes[ids("▁")] == b" "
    assert not t.id_to_token(t.encode("def f")[0]).startswith("▁")  # no `▁` prefix added to the text
    # HF's decoders drop a first leading space; a completion's first space is text, so
    # codelm keeps it: its decode is the concatenation of the token bytes.
    completion = t.encode(" return x\n")
    assert t.id_to_token(completion[0]).startswith("▁")
    assert t.decode(completion) == " return x\n"
    assert t.tok.decode(completion) == "return x\n"
    if style == "legacy":  # CodeLlama's own decoder: otherwise the same text
        for text in FOREIGN_TEXTS:
            if not text.startswith(" "):
                assert t.decode(t.encode(text)) == t.tok.decode(t.encode(text))


@pytest.mark.parametrize("name", ["qwen", "starcoder", "deepseek", "llama-legacy", "llama-vocab-fim"])
def test_ordinary_text_never_spells_a_special_id(name):
    t = _foreign(name)
    spelled = "".join(t.id_to_token(i) for i in sorted(t.stop_ids)) + " <PRE> x"
    assert not set(t.encode(spelled)) & t.stop_ids
    assert not set(t.encode_batch([spelled])[0]) & t.stop_ids
    # SentencePiece reads a written `▁` as a space, as it reads a space.
    assert t.decode(t.encode(spelled)) == (spelled.replace("▁", " ") if name.startswith("llama") else spelled)
    fim = t.special[FIM_PREFIX]
    if fim in t.tok.get_added_tokens_decoder():  # an added token: allow_special reads its name
        assert t.encode(t.id_to_token(fim) + "x", allow_special=True)[0] == fim
