"""The code tokenizer: lossless round trips (hypothesis and the whole standard library), the
pre-tokenizer's units (indents, operators, digits), special tokens, the saved form read by
HF `tokenizers` and transformers, the fast encoder against HF's pipeline, and bad input."""

from __future__ import annotations

import json
import sysconfig
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from codelm.cli import main
from codelm.errors import CodelmError
from codelm.tokenizer import SPECIAL_TOKENS, CodeTokenizer, TextFiles, train_tokenizer
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
def test_round_trip_tricky_strings(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allow_special=True)) == text


def test_fast_encoder_matches_hf_pipeline_on_valid_text(tok):
    valid = TRICKY + CORPUS
    hf = [e.ids for e in tok.tok.encode_batch(valid, add_special_tokens=False)]
    assert tok.encode_batch(valid) == hf
    assert [tok.tok.decode(ids, skip_special_tokens=False) for ids in hf] == valid


CODE_BITS = st.sampled_from(
    [" ", "  ", "    ", "\t", "\n", "\r\n", "\r", "\x0c", "\x0b", "def", "x", "_y", "Z9", "é", "變",
     "😀", "(", ")", "[", "]", "{", "}", ":", ",", ".", "...", "'", '"', "#", "**=", "==", "->",
     ":=", "!", "=", "-", "0", "42", "\\", "<|endoftext|>", "\x00", "\u2028", "\ufeff"]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.lists(CODE_BITS).map("".join)))
def test_hypothesis_round_trip_and_parity_with_hf(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == tok.tok.encode(text, add_special_tokens=False).ids
    pieces = split(text)  # Python's re and HF's Oniguruma cut the same pieces
    assert "".join(pieces) == text
    assert [p for p, _ in tok.tok.pre_tokenizer.pre_tokenize_str(text)] == [to_byte_level(p) for p in pieces]


SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb\ud83d", "x = '\ud83d\ude00'  # \udc80\n"])
def test_a_lone_surrogate_becomes_the_replacement_character(tok, text):
    want = replace_surrogates(text)
    for ids in (tok.encode(text), tok.encode_batch([text])[0], tok.encode(text, allow_special=True)):
        assert ids == tok.tok.encode(want, add_special_tokens=False).ids
        assert tok.decode(ids) == want


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(), SURROGATE, st.sampled_from(" \n\t=(x"))))
def test_hypothesis_lone_surrogates_never_fail(tok, text):
    want = replace_surrogates(text)
    assert tok.decode(tok.encode(text)) == want
    assert tok.encode(text) == tok.encode(want)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=449), max_size=40))
def test_decode_matches_hf_on_any_ids(tok, ids):
    # Any ids, so also byte sequences that are not UTF-8: both give U+FFFD the same way.
    assert tok.decode(ids) == tok.tok.decode(ids, skip_special_tokens=False)


def test_decode_rejects_ids_outside_the_vocabulary(tok):
    for bad in ([-1], [tok.vocab_size]):
        with pytest.raises(ValueError):
            tok.decode(bad)


def test_large_batches_are_shared_with_helper_processes(tok, monkeypatch):
    texts = (TRICKY + CORPUS) * 3
    want = [tok.encode(t) for t in texts]
    fresh = CodeTokenizer(Tokenizer.from_str(tok.tok.to_str()))
    monkeypatch.setattr(encoder_mod, "PARALLEL_MIN_CHARS", 0)
    fast = fresh._fast
    fast.workers = 3
    here: list[int] = []
    encode_here = fast._encode_here
    monkeypatch.setattr(fast, "_encode_here", lambda ts: here.append(len(ts)) or encode_here(ts))
    for _ in range(2):  # the second batch reuses the helpers and their caches
        assert fresh.encode_batch(texts) == want
    shares = encoder_mod._shares(texts, 3)
    assert len(shares) == 3 and here == [len(shares[0])] * 2  # the helpers did the other shares
    assert fast.workers == 3 and fast._pool is not None


def test_a_large_batch_is_encoded_here_when_helpers_cannot_start(tok, monkeypatch):
    texts = TRICKY + CORPUS
    fresh = CodeTokenizer(Tokenizer.from_str(tok.tok.to_str()))
    monkeypatch.setattr(encoder_mod, "PARALLEL_MIN_CHARS", 0)
    fresh._fast.workers = 2

    def no_helpers():
        raise OSError("no semaphores in this sandbox")

    monkeypatch.setattr(fresh._fast, "_helpers", no_helpers)
    assert fresh.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert fresh._fast.workers == 1


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20])
def test_shares_are_consecutive_and_about_equal(n):
    texts = ["x" * k for k in (5, 1, 9, 3, 3, 8, 2)]
    shares = encoder_mod._shares(texts, n)
    assert [t for s in shares for t in s] == texts
    assert all(shares) and len(shares) <= n
    if n == 2:
        assert shares == [texts[:3], texts[3:]]  # 15 and 16 characters


def test_cache_limits_and_chunks_do_not_change_ids(tok, monkeypatch):
    texts = TRICKY + CORPUS
    want = [tok.encode(t) for t in texts]
    fresh = CodeTokenizer(Tokenizer.from_str(tok.tok.to_str()))
    monkeypatch.setattr(encoder_mod, "CACHE_LIMIT", 20)
    monkeypatch.setattr(encoder_mod, "CHUNK_CHARS", 100)
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
        ([str(tmp_path / "ok.py"), "--out", str(tmp_path / "ok.py"), "--vocab-size", "300"], "cannot write"),
    ]
    for args, message in cases:
        code, _, err = _cli(capsys, *args)
        assert code == 2, args
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
