"""Training invariants: a step changes every parameter, overfitting one batch lowers the loss,
the schedule warms up and decays, the trace's observations follow the numbers."""

from __future__ import annotations

import torch

from codelm.model import ModelConfig, Transformer
from codelm.train.config import TrainConfig
from codelm.train.loop import lr_at, make_optimizer, train_step
from codelm.train.trace import TraceRow, observe
from tests.conftest import TINY_MODEL


def _setup(lr=3e-3):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, **TINY_MODEL))
    cfg = TrainConfig(lr=lr, weight_decay=0.0)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    x = torch.randint(0, 64, (4, 32))
    y = torch.roll(x, -1, dims=1)
    return model, opt, [(x, y)]


def test_parameters_change_after_one_step():
    model, opt, batch = _setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model, opt, batch, grad_clip=1.0, amp=None)
    for n, p in model.named_parameters():
        assert not torch.equal(before[n], p), f"{n} did not change"


def test_loss_falls_when_overfitting_one_batch():
    model, opt, batch = _setup(lr=1e-2)
    first = train_step(model, opt, batch, grad_clip=1.0, amp=None)
    for _ in range(60):
        last = train_step(model, opt, batch, grad_clip=1.0, amp=None)
    assert last < 0.3 * first


def test_masked_targets_carry_no_gradient():
    model, opt, batch = _setup()
    x, y = batch[0]
    masked = torch.full_like(y, -100)
    masked[:, -1] = y[:, -1]
    a, b = (train_step(*_setup()[:2], [(x, t)], 1.0, None) for t in (masked, masked.clone()))
    assert a == b
    full = train_step(*_setup()[:2], [(x, y)], 1.0, None)
    assert full != a


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 0.0, cfg) == 0.1
    assert lr_at(9, 0.05, cfg) == 1.0
    assert abs(lr_at(50, 1.0, cfg) - 0.1) < 1e-9
    assert lr_at(20, 0.3, cfg) > lr_at(20, 0.6, cfg)


def _row(train, val):
    return TraceRow(1, 0.1, 10, train, val, 0.5, 1e-3, 1.0)


def test_observations_are_derived_from_the_numbers():
    rows = [_row(3.0, 3.0)]
    assert observe([], rows[0]) == "first evaluation"
    assert observe(rows, _row(2.5, 2.5)) == "loss falling"
    assert observe(rows, _row(2.5, 3.2)) == "validation rising: overfitting"
    assert observe(rows, _row(3.0, 3.01)) == "plateau"
