"""Tests for `codelm data build --engine dask`: on a local cluster of 2 workers that the tests
start, it writes the same DATA as `--engine local` (the same rows in the same order, the same
stats and content hash; shards instead of one file per split); the band-sharded near-duplicate
step takes the greedy index's decisions; sharded DATA is read and tokenized as one file is;
a bad scheduler address or a missing extra is one line."""

from __future__ import annotations

import json
import os
import re
import socket
import sys

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from codelm import cli  # noqa: E402
from codelm.data import dask_engine, lsh  # noqa: E402
from codelm.data.build import DataConfig, build_dataset  # noqa: E402
from codelm.data.dataset import SPLITS, DataWriter, iter_rows, make_row, split_files  # noqa: E402
from codelm.data.dedup import DedupConfig, NearDupIndex, lsh_bands, min_equal  # noqa: E402
from codelm.errors import CodelmError  # noqa: E402
from tests.test_data import DISTINCT, PROBLEM, RENAMED_SEARCH, write  # noqa: E402

SHARD = re.compile(r"(train|val|test)-\d{5}-of-\d{5}\.parquet")


@pytest.fixture(scope="module")
def scheduler():
    """A local Dask cluster of 2 worker processes, one thread each, for the whole module."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
    ) as cluster:
        yield cluster.scheduler_address


def _corpus(root):
    """Exact and near duplicates, pairs and doctests, dropped and contaminated files, many
    small modules (several partitions), in two sources."""
    src = root / "src"
    for name, content in DISTINCT.items():
        write(src, name, content)
    write(src, "z_exact.py", DISTINCT["stack.py"].replace("    ", "\t"))  # exact duplicate
    write(src, "z_near.py", RENAMED_SEARCH)  # near duplicate of search.py
    write(src, "z_near2.py", RENAMED_SEARCH.replace("lo", "low"))  # and another, exact-unique
    write(src, "broken.py", "def f(:\n    pass\n")  # dropped: syntax error
    write(src, "empty.py", "")
    write(src, "leak.py", "import math\n\n" + PROBLEM["prompt"] + PROBLEM["canonical_solution"])
    doc = '    """Return {i} doubled.\n\n    >>> twice{i}(2)\n    {v}\n    """\n'
    for i in range(24):
        body = f"def twice{i}(x):\n" + doc.format(i=i, v=2 * 2) + "    return 2 * x\n"
        write(src, f"pkg/m{i:02d}.py", body)
    # m00's function again, in another file: its pair is a duplicate
    write(src, "pkg/copy.py", "import os\n\n\ndef twice0(x):\n" + doc.format(i=0, v=4) + "    return 2 * x\n")
    other = root / "other"
    write(other, "search_again.py", DISTINCT["search.py"])  # a duplicate across sources
    write(other, "tool.py", DISTINCT["urls.py"].replace("api.example.com", "api.example.org"))
    bench = root / "bench.jsonl"
    bench.write_text(json.dumps(PROBLEM) + "\n")
    # an instruction dataset: its records are pairs, a repeated one dropped as a duplicate
    asks = [
        ("Add two numbers.", "return a + b"),
        ("Scale by k.", "return x * k"),
        ("Add two numbers.", "return a + b"),
    ]
    pairs = root / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": p, "completion": f"```python\n{c}\n```"}) + "\n" for p, c in asks)
    )
    return [str(src), str(other), str(pairs)], str(bench)


def _build(srcs, out, profile=None, **kw):
    return build_dataset(srcs, out, DataConfig(**kw), progress=False, log=lambda m: None, profile=profile)


def _rows(out):
    return {s: list(iter_rows(out, s)) for s in SPLITS}


def test_dask_build_equals_local_build(tmp_path, scheduler, monkeypatch):
    srcs, bench = _corpus(tmp_path)
    monkeypatch.setattr(dask_engine, "PART_FILES", 5)  # many partitions, so many shards
    local = _build(srcs, tmp_path / "local", decontaminate=(bench,))
    profile: dict = {}
    kw = {"decontaminate": (bench,), "engine": "dask", "scheduler": scheduler}
    dask = _build(srcs, tmp_path / "dask", profile, **kw)
    assert dask == local  # the same files kept, dropped and skipped, the same splits
    stages = ["start", "map", "lsh_group", "lsh_verify", "judge", "write"]
    assert profile["stages"] == stages  # every stage ran, once, in order
    assert len(profile["worker_peak_mb"]) == 2 and min(profile["worker_peak_mb"]) > 0  # both workers
    for what in ("exact_duplicate", "near_duplicate", "syntax_error", "contaminated", "duplicate_pair"):
        assert local[f"dropped_{what}"] >= 1, what  # the corpus exercises every decision
    assert local["doctest_pairs_mined"] >= 24 and local["pairs_given"] == 2  # one of 3 is a duplicate
    assert _rows(tmp_path / "dask") == _rows(tmp_path / "local")  # the same rows, in order
    ml = json.loads((tmp_path / "local" / "manifest.json").read_text())
    md = json.loads((tmp_path / "dask" / "manifest.json").read_text())
    assert md["content_hash"] == ml["content_hash"]
    assert {k: v for k, v in md.items() if k != "files"} == {k: v for k, v in ml.items() if k != "files"}
    assert all(SHARD.fullmatch(name) for name in md["files"])
    assert len(split_files(tmp_path / "dask", "train")) >= 3
    for split in SPLITS:
        rows = sum(md["files"][p.name]["rows"] for p in split_files(tmp_path / "dask", split))
        assert rows == ml["files"][f"{split}.parquet"]["rows"]
    names = {p.name for p in (tmp_path / "dask").iterdir()}
    assert names == {*md["files"], "manifest.json", "stats.json"}  # no staging left behind


def test_cli_starts_its_own_cluster_and_near_dup_off_still_agrees(tmp_path, capsys):
    srcs, _ = _corpus(tmp_path)
    argv = ["data", "build", *srcs, "--no-near-dup", "--out"]
    assert cli.main([*argv, str(tmp_path / "local")]) == 0
    assert cli.main([*argv, str(tmp_path / "dask"), "--engine", "dask", "--workers", "2"]) == 0
    assert "files_seen" in capsys.readouterr().out
    assert _rows(tmp_path / "dask") == _rows(tmp_path / "local")
    stats = [json.loads((tmp_path / d / "stats.json").read_text()) for d in ("local", "dask")]
    assert stats[0] == stats[1] and stats[0]["dropped_near_duplicate"] == 0


# ---------------------------------------------------------------- the band-sharded decisions


def _signatures(n_base: int, copies: int, rng) -> np.ndarray:
    """Random signatures with planted near duplicates (a few slots changed) of each base."""
    base = rng.integers(0, 2**32, (n_base, 128), dtype=np.uint64).astype(np.uint32)
    rows = [base]
    for _ in range(copies):
        noisy = base.copy()
        for row in noisy:
            row[rng.choice(128, rng.integers(2, 30), replace=False)] = rng.integers(0, 2**32, dtype=np.uint64)
        rows.append(noisy)
    sigs = np.concatenate(rows)
    return sigs[rng.permutation(len(sigs))]


def test_band_sharded_near_dup_drops_what_the_greedy_index_drops():
    cfg = DedupConfig()
    sigs = _signatures(40, 3, np.random.default_rng(0))
    index = NearDupIndex(cfg)
    greedy = {i for i, s in enumerate(sigs) if index.match_or_add(s) is not None}
    bands = lsh_bands(cfg)
    cuts = [0, 7, 50, 51, 120, len(sigs)]  # uneven partitions, as a cluster would have them
    parts = [(np.arange(a, b), sigs[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    keys = [(idx, lsh.band_keys(s, bands)) for idx, s in parts]
    buckets = [lsh.band_buckets(b, *keys) for b in range(len(bands))]
    edges = [lsh.band_edges(buckets[b], bands[b], min_equal(cfg), *parts) for b in range(len(bands))]
    dropped = lsh.resolve(np.concatenate(edges))
    assert 20 < len(greedy) < len(sigs) - 40  # some copies drift too far to be caught
    assert dropped == greedy


def test_resolve_keeps_a_file_whose_only_match_was_dropped():
    # 1 joins 0's cluster; 2 resembles only 1, which was dropped, so 2 starts its own
    assert lsh.resolve(np.array([[0, 1], [1, 2]])) == {1}
    assert lsh.resolve(np.array([[1, 2], [0, 2], [0, 1], [0, 1]])) == {1, 2}
    assert lsh.resolve(np.zeros((0, 2), np.int64)) == set()


# ---------------------------------------------------------------- reading sharded DATA


def _write_rows(folder, layout: dict[str, list[list[dict]]]):
    """DATA by hand: each split as the given shards (one list: one plain file)."""
    folder.mkdir()
    for split, shards in layout.items():
        for i, rows in enumerate(shards):
            sub = folder / f"part{split}{i}"
            sub.mkdir()
            writer = DataWriter(sub)
            for row in rows:
                writer.add(split, row)
            writer.close()
            name = f"{split}.parquet" if len(shards) == 1 else f"{split}-{i:05d}-of-{len(shards):05d}.parquet"
            (sub / f"{split}.parquet").rename(folder / name)


def test_training_reads_sharded_data_as_one_file(tmp_path):
    from codelm.tokenizer import train_tokenizer
    from codelm.train.batches import tokenize_split
    from codelm.train.config import TrainConfig
    from codelm.train.prepare import _token_key

    texts = [content for content in DISTINCT.values()] * 3
    rows = [make_row(t, f"f{i}.py", "src") for i, t in enumerate(texts)]
    rows.append(make_row("q\n" + texts[0], "f0.py::f", "src", "pair", "q", texts[0]))
    _write_rows(tmp_path / "one", {"train": [rows], "val": [rows[:2]]})
    _write_rows(
        tmp_path / "sharded", {"train": [rows[:5], rows[5:6], rows[6:]], "val": [rows[:1], rows[1:2]]}
    )
    assert list(iter_rows(tmp_path / "sharded", "train")) == rows
    tok = train_tokenizer(texts, 300)
    one = tokenize_split(tmp_path / "one", "train", tok, tmp_path / "t1", fim_rate=0.5, seed=3)
    sharded = tokenize_split(tmp_path / "sharded", "train", tok, tmp_path / "t2", fim_rate=0.5, seed=3)
    assert np.array_equal(one[0], sharded[0]) and np.array_equal(one[1], sharded[1]) and len(one[0]) > 100
    # the token cache's key covers every shard: rewriting one shard changes it
    cfg = TrainConfig()
    before = _token_key(tmp_path / "sharded", "train", tok, cfg, 64)
    last = split_files(tmp_path / "sharded", "train")[-1]
    os.utime(last, ns=(1, 1))
    assert _token_key(tmp_path / "sharded", "train", tok, cfg, 64) != before


def test_incomplete_or_doubled_shards_are_one_line_errors(tmp_path):
    row = make_row("x = 1\n", "a.py", "src")
    _write_rows(tmp_path / "d", {"train": [[row], [row], [row]]})
    (tmp_path / "d" / "train-00001-of-00003.parquet").unlink()
    with pytest.raises(CodelmError, match=r"shards of train are incomplete \(expected 3"):
        list(iter_rows(tmp_path / "d", "train"))
    _write_rows(tmp_path / "e", {"train": [[row], [row]]})
    (tmp_path / "e" / "train.parquet").write_bytes(b"")
    with pytest.raises(CodelmError, match="both train.parquet and shards of train"):
        list(iter_rows(tmp_path / "e", "train"))


# ---------------------------------------------------------------- bad input


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free once closed: nothing listens there


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:{port}", "no-port-here"])
def test_a_wrong_scheduler_address_is_one_line(tmp_path, capsys, address):
    src = tmp_path / "src"
    write(src, "a.py", DISTINCT["stack.py"])
    address = address.format(port=_closed_port())
    argv = ["data", "build", str(src), "--out", str(tmp_path / "d"), "--engine", "dask"]
    assert cli.main([*argv, "--scheduler", address]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"codelm: error: cannot reach the Dask scheduler at {address}: ")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_dask_engine_without_the_extra_names_the_pip_command(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write(src, "a.py", DISTINCT["stack.py"])
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as if not installed
    with pytest.raises(CodelmError, match=r"needs Dask distributed: pip install 'codelm\[dask\]'"):
        _build([str(src)], tmp_path / "d", engine="dask", workers=1)


def test_dask_only_flags_need_the_dask_engine():
    with pytest.raises(CodelmError, match="for --engine dask"):
        DataConfig(workers=2)
    with pytest.raises(CodelmError, match="not both"):
        DataConfig(engine="dask", workers=2, scheduler="tcp://h:1")
