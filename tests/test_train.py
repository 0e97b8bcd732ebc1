"""Training invariants: a step changes every parameter, overfitting one batch lowers the loss,
the schedule warms up and decays, the trace's observations follow the numbers."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import replace

import pytest
import torch

from codelm.errors import CodelmError
from codelm.model import ModelConfig, Transformer
from codelm.train.config import TrainConfig
from codelm.train.loop import lr_at, make_optimizer, train_step
from codelm.train.trace import TraceRow, observe
from tests.conftest import TINY_MODEL, TORCHRUN, torchrun


def _setup(lr=3e-3, optimizer="adamw"):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, **TINY_MODEL))
    cfg = TrainConfig(lr=lr, weight_decay=0.0, optimizer=optimizer)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    x = torch.randint(0, 64, (4, 32))
    y = torch.roll(x, -1, dims=1)
    return model, opt, [(x, y)]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_parameters_change_after_one_step(optimizer):
    model, opt, batch = _setup(optimizer=optimizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model, opt, batch, grad_clip=1.0, amp=None)
    for n, p in model.named_parameters():
        assert not torch.equal(before[n], p), f"{n} did not change"


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_loss_falls_when_overfitting_one_batch(optimizer):
    model, opt, batch = _setup(lr=1e-2, optimizer=optimizer)
    first = train_step(model, opt, batch, grad_clip=1.0, amp=None)
    for _ in range(60):
        last = train_step(model, opt, batch, grad_clip=1.0, amp=None)
    assert last < 0.3 * first


def test_newton_schulz_makes_an_update_nearly_orthogonal():
    from codelm.train.muon import orthogonalize

    torch.manual_seed(0)
    for m, n in [(96, 32), (32, 96)]:
        k = min(m, n)
        u, v = torch.linalg.qr(torch.randn(m, k))[0], torch.linalg.qr(torch.randn(n, k))[0]
        g = u @ torch.diag(torch.logspace(-1.5, 0, k)) @ v.T  # singular values 0.03 .. 1
        for dtype in (torch.bfloat16, torch.float32):
            (o,) = orthogonalize([g], dtype=dtype)
            s = torch.linalg.svdvals(o.float())
            assert o.shape == g.shape and o.dtype == g.dtype and s.min() > 0.5 and s.max() < 1.3, s


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_orthogonalizing_a_list_equals_orthogonalizing_each_matrix(dtype):
    """Matrices of one shape go through as one batch (tall ones transposed to wide); each
    result is still its own matrix's, whatever else the list holds."""
    from codelm.train.muon import orthogonalize

    torch.manual_seed(0)
    gs = [torch.randn(*s) for s in [(48, 16), (16, 40), (16, 48), (32, 32), (16, 40), (48, 16)]]
    together = orthogonalize(gs, dtype=dtype)
    for g, t in zip(gs, together, strict=True):
        (alone,) = orthogonalize([g], dtype=dtype)
        assert t.shape == g.shape
        torch.testing.assert_close(t, alone, atol=1e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)


def test_work_shared_among_threads_equals_the_work_done_at_once_and_restores_the_threads():
    """Each item's result lands in its own place, whatever share computed it; torch's thread
    count and the caller's grad mode hold in the pool's threads, and the count is restored."""
    from codelm.train import muon

    seen = []

    def work(items: list[int]) -> list[tuple[int, int, bool]]:
        seen.append(len(items))
        return [(i * i, torch.get_num_threads(), torch.is_grad_enabled()) for i in items]

    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # three shares, whatever this machine has
    try:
        with torch.no_grad():
            out = muon._in_threads(work, list(range(7)), cost=lambda i: 1 + i)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert [o[0] for o in out] == [i * i for i in range(7)]
    assert all(o[1] == 1 and o[2] is False for o in out)  # one thread each, no grad as the caller
    assert sorted(seen) == [2, 2, 3]  # balanced by cost: 7+2+1=10, 6+3=9, 5+4=9


def test_muons_step_in_threads_equals_its_step_on_one_thread():
    """The fp32 CPU step, its matrices shared among three threads, moves every parameter as
    the same step on one thread (row blocks of one matrix may land in different shares)."""
    from codelm.train.muon import MuonAdamW

    torch.manual_seed(0)
    shapes = [(48, 16), (16, 40), (24, 24), (16, 40), (96, 16)]
    grads = [torch.randn(s) for s in shapes]
    moved = []
    threads = torch.get_num_threads()
    for n in (1, 3):
        torch.manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        opt = MuonAdamW(
            [dict(params=ps, muon=True)], lr=0.02, ns_dtype=torch.float32, splits={id(ps[4]): (32, 64)}
        )
        torch.set_num_threads(n)
        try:
            opt.step()
        finally:
            torch.set_num_threads(threads)
        moved.append([p.detach() for p in ps])
    for one, three in zip(*moved, strict=True):
        torch.testing.assert_close(three, one, atol=1e-6, rtol=1e-5)


def test_a_nan_update_falls_back_to_the_iteration():
    """eigh does not converge on NaNs; the step must not raise (clipping lets NaNs through)."""
    from codelm.train.muon import orthogonalize

    g = torch.full((16, 24), float("nan"))
    (o,) = orthogonalize([g, torch.randn(16, 24)], dtype=torch.float32)[:1]
    assert o.shape == g.shape and o.isnan().all()


def test_muons_adamw_groups_step_as_torchs_adamw():
    """Embeddings and vectors move as torch.optim.AdamW moves them, decay included."""
    from codelm.train.muon import MuonAdamW

    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(40, 8)), torch.nn.Parameter(torch.randn(8))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = MuonAdamW([{"params": ps, "weight_decay": 0.1}], lr=1e-2)
    theirs = torch.optim.AdamW(qs, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ps]
        for p, q, g in zip(ps, qs, grads, strict=True):
            p.grad, q.grad = g, g.clone()
        ours.step()
        theirs.step()
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(p, q)


def test_muon_moves_only_the_blocks_matrices_and_checkpoints_its_state(tmp_path):
    from codelm.train.checkpoint import load_checkpoint, save_checkpoint

    model, opt, batch = _setup(optimizer="muon")
    muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names and all(n.startswith("blocks.") and not n.endswith("norm.weight") for n in names)
    assert id(model.wte.weight) not in muon
    train_step(model, opt, batch, grad_clip=1.0, amp=None)
    save_checkpoint(tmp_path, model, opt, {"step": 1}, keep=2)
    after_a = train_step(model, opt, batch, grad_clip=1.0, amp=None)
    model2, opt2, _ = _setup(optimizer="muon")
    load_checkpoint(next(tmp_path.iterdir()), model2, opt2)
    after_b = train_step(model2, opt2, batch, grad_clip=1.0, amp=None)
    assert after_a == after_b
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


# Split: every piece is orthogonal, its singular values where Newton-Schulz leaves them. Whole:
# the value rows take the step and the query and key rows get a tenth of it (measured 0.08-0.12).
@pytest.mark.parametrize(("split", "lo", "hi"), [(True, 0.6, 1.3), (False, 0.0, 0.2)])
def test_muon_moves_each_heads_query_at_its_full_rate_however_large_the_values_gradient(split, lo, hi):
    """With `muon_split`, each head's q, k and v rows of the fused qkv matrix (and SwiGLU's
    gate and up halves) are orthogonalised apart: the query and key heads move by Muon's full
    rate even when the values' gradient is 1000x larger. Orthogonalised whole, they do not."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, **TINY_MODEL))
    cfg = TrainConfig(lr=1e-3, weight_decay=0.0, optimizer="muon", muon_split=split)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    c = model.cfg
    qkv = model.blocks[0].attn.qkv.weight
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    qk_rows = (c.n_head + c.kv_heads) * c.head_dim
    qkv.grad[qk_rows:] *= 1000  # the value rows
    before = qkv.detach().clone()
    opt.step()
    rate = cfg.lr * cfg.muon_lr_scale  # a (head_dim, n_embd) piece is wide: no shape scale
    heads = (qkv.detach() - before)[:qk_rows].split(c.head_dim)  # the q heads, then the k heads
    top = [torch.linalg.svdvals(h)[0].item() / rate for h in heads]  # each head's largest
    assert len(top) == c.n_head + c.kv_heads
    assert all(lo < s < hi for s in top), top


def test_muon_splits_cut_qkv_by_head_and_swiglu_in_halves_under_grouped_query_attention():
    from codelm.train.loop import muon_splits

    model = Transformer(ModelConfig(vocab_size=64, **{**TINY_MODEL, "n_head": 4, "n_kv_head": 2}))
    c, params = model.cfg, dict(model.named_parameters())
    got = {n: muon_splits(model).get(id(p)) for n, p in params.items()}
    qkv, up = (c.head_dim,) * (4 + 2 + 2), (c.mlp_hidden, c.mlp_hidden)  # 4 q heads, 2 k, 2 v
    kinds = {"attn.qkv.weight": qkv, "mlp.up.weight": up}
    want = {n: next((v for k, v in kinds.items() if n.endswith(k)), None) for n in params}
    assert got == want
    assert all(sum(got[n]) == params[n].size(0) for n in got if got[n])  # the pieces tile the rows
    assert sum(v is not None for v in got.values()) == 2 * c.n_layer


def test_masked_targets_carry_no_gradient():
    model, opt, batch = _setup()
    x, y = batch[0]
    masked = torch.full_like(y, -100)
    masked[:, -1] = y[:, -1]
    a, b = (train_step(*_setup()[:2], [(x, t)], 1.0, None) for t in (masked, masked.clone()))
    assert a == b
    full = train_step(*_setup()[:2], [(x, y)], 1.0, None)
    assert full != a


def test_the_training_loss_and_its_gradient_are_cross_entropys():
    """train_step's summed loss (its backward works in place) against F.cross_entropy."""
    from codelm.train.step import _SummedCrossEntropy

    torch.manual_seed(0)
    logits = torch.randn(12, 20, dtype=torch.float64)
    targets = torch.randint(0, 20, (12,))
    targets[[2, 7]] = -100
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = _SummedCrossEntropy.apply(a, targets)
    theirs = torch.nn.functional.cross_entropy(b, targets, ignore_index=-100, reduction="sum")
    (3 * ours).backward()
    (3 * theirs).backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(a.grad, b.grad)
    assert a.grad[[2, 7]].abs().max() == 0


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 0.0, cfg) == 0.1
    assert lr_at(9, 0.05, cfg) == 1.0
    assert abs(lr_at(50, 1.0, cfg) - 0.1) < 1e-9
    assert lr_at(20, 0.3, cfg) > lr_at(20, 0.6, cfg)


def test_a_shorter_decay_holds_the_peak_then_ends_at_the_same_floor():
    """Warmup-stable-decay: `decay` 0.3 keeps the peak until 70% of the budget, then runs the
    whole cosine in the last 30%; `decay` 1 is the cosine over the whole budget."""
    whole = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    wsd = replace(whole, decay=0.3)
    assert lr_at(50, 0.0, wsd) == lr_at(50, 0.7, wsd) == 1.0
    assert lr_at(50, 0.85, wsd) == pytest.approx(0.55)  # half way through the cosine
    assert lr_at(50, 0.85, wsd) == pytest.approx(lr_at(50, 0.5, whole))
    assert lr_at(50, 1.0, wsd) == pytest.approx(0.1) == lr_at(50, 1.5, wsd)
    assert lr_at(5, 0.8, wsd) == lr_at(5, 0.8, whole) == 0.6  # the warmup is the same
    for bad in (0.0, 1.5):
        with pytest.raises(CodelmError, match="decay must be in"):
            replace(whole, decay=bad)


def _row(train, val):
    return TraceRow(1, 0.1, 10, train, val, 0.5, 1e-3, 1.0)


def test_observations_are_derived_from_the_numbers():
    rows = [_row(3.0, 3.0)]
    assert observe([], rows[0]) == "first evaluation"
    assert observe(rows, _row(2.5, 2.5)) == "loss falling"
    assert observe(rows, _row(2.5, 3.2)) == "validation rising: overfitting"
    assert observe(rows, _row(3.0, 3.01)) == "plateau"


# --- batches: masks and FIM, token by token ---------------------------------------------------


def _ids(tok, text):
    return tok.encode(text)


def test_pair_mask_counts_only_the_code_and_the_end_token(tokenizer):
    import numpy as np

    from codelm.train.batches import assemble, document_layout

    row = {
        "kind": "pair",
        "text": "x",
        "prompt": "Add two numbers.",
        "completion": "def add(a, b):\n    return a + b\n",
    }
    lay = document_layout(row, np.random.default_rng(0), fim_rate=1.0)  # pairs never get FIM
    ids, mask = assemble(lay, [_ids(tokenizer, p) for p in lay.pieces], tokenizer)
    s = tokenizer.special
    prompt, code = _ids(tokenizer, row["prompt"]), _ids(tokenizer, row["completion"])
    assert ids == [s["<|instruction|>"], *prompt, s["<|code|>"], *code, s["<|endoftext|>"]]
    assert mask == [0] * (len(prompt) + 2) + [1] * (len(code) + 1)


def test_pair_rate_repeats_the_pairs_in_later_passes_and_zero_drops_them(tmp_path, tokenizer):
    import numpy as np

    from codelm.data.dataset import make_row, write_data
    from codelm.train.batches import tokenize_split

    files = [f"def f{i}(x):\n    return x + {i}\n" for i in range(3)]
    asks = [(f"Return x times {i}.", f"def g{i}(x):\n    return x * {i}\n") for i in range(40)]
    with write_data(tmp_path / "data") as writer:
        for i, text in enumerate(files):
            writer.add("train", make_row(text, f"f{i}.py", "src", "file"))
        for i, (ask, code) in enumerate(asks):
            writer.add("train", make_row(f"# {ask}\n{code}", f"p#{i}", "src", "pair", ask, code))
        writer.finish({}, {})
    start, eot = tokenizer.special["<|instruction|>"], tokenizer.special["<|endoftext|>"]

    def documents(rate: float, name: str) -> tuple[int, int, list[int]]:
        """(pairs, files, the stream's ids) tokenized at this pair rate."""
        ids, _ = tokenize_split(
            tmp_path / "data", "train", tokenizer, tmp_path / name / "t.bin", pair_rate=rate
        )
        ids = np.asarray(ids).tolist()
        pairs = ids.count(start)
        return pairs, ids.count(eot) - pairs, ids

    once, files_once, ids_once = documents(1.0, "a")
    assert (once, files_once) == (40, 3)
    thrice, files, ids = documents(3.0, "b")
    assert (thrice, files) == (120, 3)
    assert ids[: len(ids_once)] == ids_once  # the first pass is the usual stream; the copies follow
    copies = ids[len(ids_once) :]
    one_pass = len(copies) // 2
    assert copies[:one_pass] == copies[one_pass:] and eot in copies  # two more passes over the pairs
    assert documents(0.0, "c")[:2] == (0, 3)
    half, files_half, _ = documents(1.5, "d")
    assert 40 + 10 <= half <= 40 + 30 and files_half == 3  # a seeded half pass: about 20 more
    assert documents(1.5, "e")[2] == documents(1.5, "d")[2]  # the same each time
    from codelm.train.config import TrainConfig
    from codelm.train.prepare import _token_key

    def key(split: str, **kw) -> str:
        return _token_key(tmp_path / "data", split, tokenizer, TrainConfig(**kw), 0)

    assert key("train", pair_rate=3.0) != key("train")  # a run's cached tokens follow the rate
    assert key("val", pair_rate=3.0) == key("val")  # validation holds each pair once


def test_fim_layouts_token_by_token(tokenizer):
    import numpy as np

    from codelm.train.batches import assemble, fim_layout

    text = "def f(x):\n    return x * 2\n"
    s = tokenizer.special
    seen = set()
    for seed in range(40):
        lay = fim_layout(text, np.random.default_rng(seed))
        prefix, middle, suffix = lay.pieces
        assert prefix + middle + suffix == text
        ids, mask = assemble(lay, [_ids(tokenizer, p) for p in lay.pieces], tokenizer)
        p, m, x = (_ids(tokenizer, t) for t in (prefix, middle, suffix))
        psm = [s["<|fim_prefix|>"], *p, s["<|fim_suffix|>"], *x, s["<|fim_middle|>"], *m, s["<|endoftext|>"]]
        spm = [s["<|fim_suffix|>"], *x, s["<|fim_prefix|>"], *p, s["<|fim_middle|>"], *m, s["<|endoftext|>"]]
        assert ids in (psm, spm)
        seen.add("psm" if ids == psm else "spm")
        assert all(mask)
    assert seen == {"psm", "spm"}


def test_windows_turn_masked_targets_into_ignore():
    import numpy as np

    from codelm.train.batches import IGNORE, PackedWindows

    tokens = np.arange(20, dtype=np.uint16)
    mask = np.ones(20, np.uint8)
    mask[3:6] = 0
    w = PackedWindows(tokens, mask, seq_len=8)
    x, y = w.get(np.array([0, 1]))
    assert x[0].tolist() == list(range(8)) and x[1].tolist() == list(range(8, 16))
    assert y[0].tolist() == [1, 2, IGNORE, IGNORE, IGNORE, 6, 7, 8]  # target t+1 uses mask[t+1]
    assert y[1].tolist() == list(range(9, 17))


# --- the loop: resume, damage, distributed, fine-tuning ------------------------------------------


def _interrupt_then_resume(monkeypatch, run, cfg, data, **train_kw) -> None:
    """Train `run`, killed during step 7 (the newest checkpoint is step 4), then --resume it."""
    import codelm.train.loop as loop

    real, calls = loop.train_step, []

    def crashing(*args, **kw):
        calls.append(1)
        if len(calls) > 6:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        loop.train(data, run, cfg, **train_kw)
    monkeypatch.setattr(loop, "train_step", real)
    loop.train(None, run, cfg, resume=True)


def test_an_interrupted_train_says_how_to_go_on(tmp_path, corpus_dir, tokenizer, monkeypatch, capsys):
    """Ctrl-C after a checkpoint: exit 130 and the command that resumes, with the step it resumes from."""
    import codelm.train.loop as loop
    from codelm.cli import main

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    real = loop.train_step

    def interrupted_after_step_5(*args, **kw):
        if (tmp_path / "run" / "checkpoints" / "step-00000004").is_dir():
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_step", interrupted_after_step_5)
    argv = ["train", "--data", str(data), "--tokenizer", str(tok), "--out", str(tmp_path / "run"),
            "--max-steps", "12", "--checkpoint-every", "4", "--batch-size", "2",
            "--seq-len", "64"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 130
    again = f"`codelm train --out {tmp_path / 'run'} --resume` goes on from step-00000004"
    assert capsys.readouterr().err.splitlines()[-1] == f"codelm: interrupted; {again}"


def _curve(run):
    """The run's evaluations without their wall-clock times."""
    return [{k: v for k, v in m.items() if k != "elapsed_s"} for m in _metrics(run)]


def _data(tmp_path, corpus_dir, tokenizer):
    from codelm.data.build import build_dataset

    data = tmp_path / "data"
    build_dataset([str(corpus_dir)], data)
    tokenizer.save(tmp_path / "tok.json")
    return data, tmp_path / "tok.json"


LOOP = dict(max_steps=12, epochs=0, batch_size=4, evals=3, checkpoint_every=4, lr=3e-3, warmup_steps=2,
            dtype="fp32", seed=3, fim_rate=0.5)  # fmt: skip


def _metrics(run):
    import json

    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_file_of_a_run_gets_the_mode_a_plain_write_gets(tmp_path, corpus_dir, tokenizer):
    """A shared machine's other accounts (or a server's) read a run's weights and checkpoints:
    safetensors wrote them 0600, where every other file of a run had the umask's mode."""
    import os

    import codelm.train.loop as loop

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    old = os.umask(0o022)
    try:
        loop.train(data, tmp_path / "run", TrainConfig(**{**LOOP, "max_steps": 4}), tokenizer=tok,
                   model_overrides=TINY_MODEL)  # fmt: skip
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"model.safetensors", "optimizer.safetensors", "config.json"} <= {p.name for p in files}
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert modes == dict.fromkeys(modes, "0o644")


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, corpus_dir, tokenizer, monkeypatch):
    from safetensors.torch import load_file

    import codelm.train.loop as loop

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    cfg = TrainConfig(**LOOP)
    loop.train(data, tmp_path / "a", cfg, tokenizer=tok, model_overrides=TINY_MODEL)

    _interrupt_then_resume(monkeypatch, tmp_path / "b", cfg, data, tokenizer=tok, model_overrides=TINY_MODEL)
    assert len(_curve(tmp_path / "a")) >= 3 and _curve(tmp_path / "a") == _curve(tmp_path / "b")
    wa, wb = (load_file(str(tmp_path / r / "model.safetensors")) for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_run_resumed_from_an_epochs_last_step_equals_an_uninterrupted_one(
    tmp_path, corpus_dir, tokenizer, monkeypatch
):
    """The kill comes right after the checkpoint at the end of epoch 1: the next step must
    draw epoch 2's order (and its FIM layouts) as the uninterrupted run does."""
    from safetensors.torch import load_file

    import codelm.train.loop as loop

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    probe = TrainConfig(**{**LOOP, "max_steps": 0, "epochs": 2})
    loop.train(data, tmp_path / "probe", probe, tokenizer=tok, model_overrides=TINY_MODEL)
    per_epoch = _metrics(tmp_path / "probe")[-1]["step"] // 2
    assert per_epoch >= 3
    cfg = replace(probe, checkpoint_every=per_epoch)
    loop.train(data, tmp_path / "a", cfg, tokenizer=tok, model_overrides=TINY_MODEL)
    real, calls = loop.train_step, []

    def killed_after_the_epoch(*args, **kw):
        calls.append(1)
        if len(calls) > per_epoch + 1:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_step", killed_after_the_epoch)
    with pytest.raises(KeyboardInterrupt):
        loop.train(data, tmp_path / "b", cfg, tokenizer=tok, model_overrides=TINY_MODEL)
    monkeypatch.setattr(loop, "train_step", real)
    newest = sorted((tmp_path / "b" / "checkpoints").iterdir())[-1].name
    assert newest == f"step-{per_epoch:08d}"  # resumed from the epoch's last step
    loop.train(None, tmp_path / "b", cfg, resume=True)
    assert _curve(tmp_path / "a") == _curve(tmp_path / "b")
    wa, wb = (load_file(str(tmp_path / r / "model.safetensors")) for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path, corpus_dir, tokenizer, capsys):
    from codelm.train.checkpoint import list_checkpoints
    from codelm.train.loop import train

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    cfg = TrainConfig(**{**LOOP, "max_steps": 8, "keep_checkpoints": 5})
    train(data, tmp_path / "r", cfg, tokenizer=tok, model_overrides=TINY_MODEL)
    ckpts = list_checkpoints(tmp_path / "r" / "checkpoints")
    assert [c.name for c in ckpts] == ["step-00000004", "step-00000008"]
    weights = ckpts[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    trace = train(None, tmp_path / "r", cfg, resume=True)
    err = capsys.readouterr().err
    assert "step-00000008 is unusable" in err and "resuming from step-00000004" in err
    assert trace.rows[-1].step == 8


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path, corpus_dir, tokenizer):
    from codelm.cli import main

    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2


def test_early_stopping_and_fine_tuning(tmp_path, corpus_dir, tokenizer):
    from codelm.train.loop import train

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    # AdamW at this rate overshoots within a few steps (Muon's normalised steps do not), so the
    # validation loss turns up and early stopping has something to stop.
    cfg = TrainConfig(
        **{**LOOP, "lr": 5e-2, "warmup_steps": 0, "evals": 12, "early_stop_patience": 1, "optimizer": "adamw"}
    )
    trace = train(data, tmp_path / "es", cfg, tokenizer=tok, model_overrides=TINY_MODEL)
    assert trace.rows[-1].step < 12 and trace.rows[-1].val_loss >= min(r.val_loss for r in trace.rows[:-1])

    base = train(data, tmp_path / "base", TrainConfig(**LOOP), tokenizer=tok, model_overrides=TINY_MODEL)
    ft = train(
        data,
        tmp_path / "ft",
        TrainConfig(**{**LOOP, "max_steps": 3, "evals": 1}),
        init_from=tmp_path / "base",
    )
    assert ft.rows[0].val_loss < base.rows[0].val_loss  # starts from trained weights, not from scratch


def test_a_torchrun_worker_leaves_with_its_status_after_its_threads_and_output(tmp_path, monkeypatch):
    """`distributed.leave` ends a worker without the interpreter's teardown (where gloo's threads
    aborted finished runs), but as the teardown would: Python threads joined, output flushed."""
    import subprocess

    from codelm.train.distributed import leave

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert leave(5) == 5  # one process: nothing to leave
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys, threading, time\nfrom pathlib import Path\nfrom codelm.train.distributed import leave\n"
        "def late():\n    time.sleep(0.5)\n    Path(sys.argv[1]).write_text('written')\n"
        "threading.Thread(target=late).start()\nprint('buffered', end='')\nleave(3)\nprint('after leave')\n"
    )
    cmd, env = [sys.executable, str(script), str(tmp_path / "out")], {**os.environ, "WORLD_SIZE": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stdout) == (3, "buffered")
    assert (tmp_path / "out").read_text() == "written"


def test_a_torchrun_worker_whose_train_fails_leaves_with_its_error(tmp_path):
    """`codelm train` that fails on a worker prints its error line there and leaves with status
    2 the way a finished one does, without the teardown (an atexit hook does not run); in one
    process the error goes back to the command line as usual."""
    import subprocess

    script = tmp_path / "cli.py"
    script.write_text(
        "import atexit, sys\nfrom codelm.cli import main\n"
        "atexit.register(lambda: print('teardown'))\nsys.exit(main(sys.argv[1:]))\n"
    )
    args = [script, "train", "--data", tmp_path / "missing", "--out", tmp_path / "r"]
    proc = torchrun([*TORCHRUN, *args])
    # torchrun stops the other worker (SIGTERM, -15) once one has failed: a worker still
    # starting may never get to its own error line.
    codes = re.findall(r"exitcode  : (-?\d+)", proc.stderr)
    assert "teardown" not in proc.stdout and "2" in codes and set(codes) <= {"2", "-15"}, proc.stderr[-3000:]
    # every worker that left with 2 printed its error line, once
    assert proc.stderr.count("codelm: error: DATA directory not found") == codes.count("2")
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    one = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env)
    assert (one.returncode, one.stdout) == (2, "teardown\n")
    assert one.stderr.startswith("codelm: error: DATA directory not found") and one.stderr.count("\n") == 1


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, corpus_dir, tokenizer):
    import subprocess

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nfrom codelm.train.config import TrainConfig\nfrom codelm.train.loop import train\n"
        f"cfg = TrainConfig(**{dict(LOOP, fim_rate=0.0, optimizer='adamw')!r})\n"
        f"train({str(data)!r}, sys.argv[1], cfg, tokenizer={str(tok)!r}, model_overrides={TINY_MODEL!r})\n"
        "from codelm.train.distributed import leave\nleave(0)\n"
    )
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, capture_output=True)
    proc = torchrun([*TORCHRUN, script, tmp_path / "two"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["step"] for m in one] == [m["step"] for m in two]
    # AdamW in fp32: the runs differ only by the all-reduce's rounding, at most 1e-6 of loss by
    # step 12. (Muon orthogonalises in bf16 and would amplify that rounding to about 3e-4.)
    for a, b in zip(one, two, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 2e-5 and abs(a["val_loss"] - b["val_loss"]) < 2e-5


def test_a_failing_torch_compile_falls_back_to_eager(tmp_path, corpus_dir, tokenizer, monkeypatch, capsys):
    from codelm.train.loop import train

    class Broken(torch.nn.Module):
        def forward(self, *a, **k):
            raise RuntimeError("no C compiler")

    monkeypatch.setattr(torch, "compile", lambda m: Broken())
    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    trace = train(
        data,
        tmp_path / "r",
        TrainConfig(**{**LOOP, "compile": True}),
        tokenizer=tok,
        model_overrides=TINY_MODEL,
    )
    assert trace.rows[-1].step == 12 and "torch.compile failed" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_training_steps_reuse_freed_memory_without_page_faults():
    """Training steps whose logits (8x256 x 16k vocab, 134 MB in float) exceed glibc's mmap
    threshold: without keep_freed_memory each step maps them afresh and faults in ~130k pages;
    with it, steps after the first reuse the memory (0-65k faults over 3 steps, measured, against
    130-200k without: a clean-clone CI run saw 65k against 198k)."""
    import subprocess

    code = (
        "import resource, sys, torch\n"
        "from codelm.model import ModelConfig, Transformer\n"
        "from codelm.memory import keep_freed_memory\n"
        "from codelm.train.config import TrainConfig\n"
        "from codelm.train.loop import make_optimizer, train_step\n"
        "took = keep_freed_memory() if sys.argv[1] == '1' else False\n"
        "torch.manual_seed(0)\n"
        "model = Transformer(ModelConfig(vocab_size=16384, n_layer=1, n_head=2, n_embd=32, block_size=256))\n"
        "opt = make_optimizer(model, TrainConfig(optimizer='adamw'), torch.device('cpu'))\n"
        "x = torch.randint(0, 16384, (8, 256))\n"
        "batch = [(x, torch.roll(x, -1, 1))]\n"
        "for _ in range(2):\n"
        "    train_step(model, opt, batch, 1.0, None)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(3):\n"
        "    train_step(model, opt, batch, 1.0, None)\n"
        "print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    runs = {}
    for keep in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code, keep], capture_output=True, text=True, check=True)
        took, n = out.stdout.split()
        runs[keep] = (took == "True", int(n))
    assert runs["1"][0]
    assert runs["0"][1] > 100_000  # the default does fault (this test can fail)
    assert runs["1"][1] < runs["0"][1] / 2


def test_muon_update_in_fp32_matches_the_bf16_one():
    """Two Muon steps from the same state, decay included: the Newton-Schulz iterations in
    fp32 (chosen on CPUs without native bf16; eigenvectors, then one fused product and step
    per matrix) move tall, wide and square weights as the bf16 ones (batched) do, to bf16's
    precision."""
    from codelm.train.muon import MuonAdamW

    torch.manual_seed(0)
    ws = [torch.randn(*shape) * 0.02 for shape in [(96, 64), (64, 96), (96, 64), (64, 64)]]
    grads = [[torch.randn_like(w) for w in ws] for _ in range(2)]
    deltas = {}
    for dtype in (torch.bfloat16, torch.float32):
        ps = [torch.nn.Parameter(w.clone()) for w in ws]
        opt = MuonAdamW([{"params": ps, "muon": True, "weight_decay": 0.1}], lr=0.02, ns_dtype=dtype)
        for step in grads:
            for p, g in zip(ps, step, strict=True):
                p.grad = g.clone()
            opt.step()
        deltas[dtype] = [(p.detach() - w).flatten() for p, w in zip(ps, ws, strict=True)]
    for a, b in zip(deltas[torch.bfloat16], deltas[torch.float32], strict=True):
        assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999
        assert (a - b).norm() / b.norm() < 0.03  # measured: 0.012-0.013 (0.031 before baddbmm)
        assert b.abs().max() > 0  # the steps moved the weights


@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (64, 64)])
@pytest.mark.parametrize("rank", [None, 5])
def test_newton_schulz_through_the_eigendecomposition_equals_the_iteration(shape, rank):
    """fp32 on a CPU takes the Gram matrix's eigenvectors instead of the matrix iterations:
    the same function, low-rank updates (many zero singular values) included."""
    from codelm.train import muon

    torch.manual_seed(0)
    g = torch.randn(*shape)
    if rank is not None:
        g = torch.randn(shape[0], rank) @ torch.randn(rank, shape[1])
    assert muon._polynomials([g], 5, torch.float32) is not None  # not the iterations' fallback
    (through,) = muon.orthogonalize([g], dtype=torch.float32)
    x = g / g.norm()
    tall = x.size(0) > x.size(1)
    iterated = muon._iterate((x.mT if tall else x).unsqueeze(0), 5)[0]  # a batch of one wide matrix
    torch.testing.assert_close(through, iterated.mT if tall else iterated, atol=2e-5, rtol=1e-4)


# --- LoRA: adapters over a frozen base (model/lora.py, train/lora.py) ---------------------------


def _lora_setup(bf16=False):
    from codelm.model.lora import add_adapters
    from codelm.train.lora import freeze_base

    model, _, batch = _setup()
    cfg = TrainConfig(lr=3e-3, lora_rank=4)
    add_adapters(model, cfg.lora)
    freeze_base(model, bf16=bf16)
    return model, make_optimizer(model, cfg, torch.device("cpu")), batch, cfg


def test_lora_steps_move_only_the_adapters():
    from codelm.model.lora import is_adapter

    model, opt, batch, cfg = _lora_setup()
    assert cfg.optimizer == "adamw" and cfg.lora.alpha == 8.0  # AdamW, alpha 2R by default
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):  # A's gradient is zero while B is: the second step moves it
        train_step(model, opt, batch, grad_clip=1.0, amp=None)
    for n, p in model.named_parameters():
        assert torch.equal(before[n], p) != is_adapter(n), n


def test_lora_base_held_in_bf16_gives_the_same_bf16_steps():
    """Autocast rounds the base weights to bf16 for each matmul anyway: holding them in bf16
    changes no loss and no adapter, to the bit."""
    runs = []
    for bf16 in (False, True):
        model, opt, batch, _ = _lora_setup(bf16=bf16)
        losses = [train_step(model, opt, batch, 1.0, torch.bfloat16) for _ in range(2)]
        runs.append((losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}))
    assert model.blocks[0].mlp.up.weight.dtype == torch.bfloat16
    assert model.blocks[0].norm1.weight.dtype == torch.float32
    (la, wa), (lb, wb) = runs
    assert la == lb and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


LORA = dict(LOOP, max_steps=8, lora_rank=4, lora_targets="qkv,mlp")


def test_a_lora_run_saves_adapters_only_and_loads_merged(tmp_path, corpus_dir, tokenizer, capsys):
    import json
    import shutil

    from safetensors.torch import load_file

    from codelm.cli import main
    from codelm.model.io import load_model
    from codelm.model.lora import LoraConfig, add_adapters, merge
    from codelm.train.loop import train

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    train(data, tmp_path / "base", TrainConfig(**LOOP), tokenizer=tok, model_overrides=TINY_MODEL)
    run = tmp_path / "lora"
    train(data, run, TrainConfig(**LORA), init_from=tmp_path / "base")
    names = sorted(p.name for p in run.iterdir())
    assert "adapters.safetensors" in names and "model.safetensors" not in names
    ckpt = next((run / "checkpoints").iterdir())
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "adapters.safetensors", "optimizer.safetensors", "state.json",
    ]  # fmt: skip
    entry = json.loads((run / "config.json").read_text())["lora"]
    assert entry == {"rank": 4, "alpha": 8.0, "targets": ["qkv", "mlp"], "dropout": 0.0,
                     "base": str((tmp_path / "base").resolve())}  # fmt: skip
    adapters = load_file(str(run / "adapters.safetensors"))
    assert sorted({k.split(".", 2)[2] for k in adapters}) == [
        "attn.qkv.lora_a", "attn.qkv.lora_b", "mlp.down.lora_a", "mlp.down.lora_b",
        "mlp.up.lora_a", "mlp.up.lora_b",
    ]  # fmt: skip

    merged, base = load_model(run), load_model(tmp_path / "base")
    assert type(merged.blocks[0].attn.qkv) is torch.nn.Linear
    mw, bw = merged.state_dict(), base.state_dict()
    assert all(torch.equal(mw[k], bw[k]) != (".qkv." in k or ".mlp." in k) for k in mw if "weight" in k)
    x = torch.randint(0, tokenizer.vocab_size, (2, 16))
    adapted = add_adapters(load_model(tmp_path / "base"), LoraConfig(4, 8.0, ("qkv", "mlp")))
    adapted.load_state_dict(adapters, strict=False)
    with torch.no_grad():
        want = adapted(x)
        torch.testing.assert_close(merged(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merge(adapted)(x), want, atol=1e-5, rtol=1e-5)

    assert main(["generate", str(run), "def add(a, b):", "--max-new-tokens", "4", "--weights", "fp32"]) == 0
    # --init-from reads weights through load_model: a LoRA run is a base like any other.
    ft = train(data, tmp_path / "ft", TrainConfig(**{**LOOP, "max_steps": 1, "evals": 1}), init_from=run)
    assert ft.rows[0].step == 1 and (tmp_path / "ft" / "model.safetensors").is_file()
    shutil.move(tmp_path / "base", tmp_path / "moved")
    with pytest.raises(CodelmError, match=f"base run of LoRA run .* is missing: {tmp_path / 'base'}"):
        load_model(run)


def test_a_resumed_lora_run_equals_an_uninterrupted_one(tmp_path, corpus_dir, tokenizer, monkeypatch):
    from safetensors.torch import load_file

    import codelm.train.loop as loop

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    loop.train(data, tmp_path / "base", TrainConfig(**{**LOOP, "max_steps": 4}), tokenizer=tok,
               model_overrides=TINY_MODEL)  # fmt: skip
    cfg = TrainConfig(**{**LORA, "lora_dropout": 0.1})  # dropout: the RNG must resume too
    loop.train(data, tmp_path / "a", cfg, init_from=tmp_path / "base")
    _interrupt_then_resume(monkeypatch, tmp_path / "b", cfg, data, init_from=tmp_path / "base")
    assert len(_curve(tmp_path / "a")) >= 3 and _curve(tmp_path / "a") == _curve(tmp_path / "b")
    wa, wb = (load_file(str(tmp_path / r / "adapters.safetensors")) for r in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_new_run_never_deletes_an_earlier_one_unless_forced(tmp_path, corpus_dir, tokenizer, capsys):
    """A fresh `codelm train --out RUN` over a trained run (or an interrupted one's checkpoints)
    is refused before any work, naming what it would delete; --force starts over."""
    from codelm.cli import main
    from codelm.fsutil import file_sha256
    from codelm.train.loop import train

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    run, cfg = tmp_path / "run", TrainConfig(**{**LOOP, "max_steps": 4, "evals": 1})
    train(data, run, cfg, tokenizer=tok, model_overrides=TINY_MODEL)
    before = file_sha256(run / "model.safetensors")
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(run), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"codelm: error: {run} already holds a run (model.safetensors, 1 checkpoint, the newest "
        "step-00000004): --resume goes on from its newest checkpoint, --force starts over and "
        "deletes it, or choose another --out"
    )
    assert file_sha256(run / "model.safetensors") == before and (run / "checkpoints/step-00000004").is_dir()
    (run / "model.safetensors").unlink()  # as a run stopped before its end leaves it
    with pytest.raises(CodelmError, match=r"\(1 checkpoint, the newest step-00000004\): --resume goes on"):
        train(data, run, cfg, tokenizer=tok, model_overrides=TINY_MODEL)
    train(data, run, replace(cfg, max_steps=2), tokenizer=tok, model_overrides=TINY_MODEL, force=True)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]  # started over
    with pytest.raises(CodelmError, match="--init-from and --out are the same run"):
        train(data, run, cfg, init_from=run)
    before = file_sha256(run / "model.safetensors")
    train(data, run, replace(cfg, max_steps=2), init_from=run, force=True)  # fine-tuned in place
    assert file_sha256(run / "model.safetensors") != before


def test_lora_mistakes_are_one_line_errors(tmp_path, corpus_dir, tokenizer, capsys):
    from codelm.cli import main
    from codelm.train.loop import train

    data, tok = _data(tmp_path, corpus_dir, tokenizer)
    train(data, tmp_path / "base", TrainConfig(**{**LOOP, "max_steps": 1, "evals": 1}), tokenizer=tok,
          model_overrides=TINY_MODEL)  # fmt: skip
    capsys.readouterr()
    common = ["train", "--data", str(data), "--max-steps", "1"]
    base = ["--init-from", str(tmp_path / "base")]
    cases = {
        "give --init-from RUN": ["--lora", "4"],
        "lora_rank must be at least 0": ["--lora", "-1", *base],
        "LoRA targets must be": ["--lora", "4", "--lora-targets", "qkv,attn", *base],
        "exceeds the width 32": ["--lora", "33", *base],
        "need lora_rank > 0": ["--lora-alpha", "16", *base],
        "same run": ["--lora", "4", "--init-from", str(tmp_path / "base")],
    }
    for i, (message, args) in enumerate(cases.items()):
        out = str(tmp_path / "base") if message == "same run" else str(tmp_path / f"r{i}")
        assert main([*common, "--out", out, *args]) == 2, message
        err = capsys.readouterr().err  # "fine-tuning from BASE" may come first
        last = err.splitlines()[-1]
        assert last.startswith("codelm: error: ") and message in last and "Traceback" not in err, err
    assert not (tmp_path / "r3").exists()  # the rank is checked before the run is written
