"""Muon for the hidden matrices, AdamW for the rest, as one torch optimizer.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers") takes SGD
momentum and replaces each 2-D update by its nearest semi-orthogonal matrix,
computed with a few Newton-Schulz iterations: every direction of the update
moves by about the same amount, instead of the few directions that dominate a
raw gradient. It trains language models in fewer steps than AdamW at equal
quality; embeddings, the (tied) head and all vectors stay on AdamW, for which
it is not meant.

One optimizer object keeps checkpoints, the learning-rate schedule and resume
unchanged: each param group says whether it is a Muon group, and a group's
`lr_scale` turns the schedule's AdamW-sized rate into its own (Muon's rate is
about ten times larger because its updates are normalised).
"""

from __future__ import annotations

import torch

# Coefficients of the quintic iteration from the Muon write-up: they push singular values
# towards 1 quickly from anywhere in (0, 1], at the cost of not converging exactly to 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximately semi-orthogonal matrix close to g (2-D): Newton-Schulz's `steps`
    iterations, computed in `dtype`.

    The iteration tolerates bf16's precision (it only needs singular values near 1), so
    bf16 is the fast choice where the hardware computes it. Where it does not (AVX2 CPUs,
    codelm.hardware), fp32 is several times faster than bf16, and on a CPU the same
    function is computed in fp32 through the Gram matrix's eigenvectors (`_through_eigh`)."""
    a, b, c = NS_COEFFS
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide side: X X^T is then the smaller Gram matrix
        x = x.mT
    x = x / (x.norm() + 1e-7)  # the spectral norm is at most the Frobenius norm: now <= 1
    if dtype == torch.float32 and x.device.type == "cpu":
        try:
            x = _through_eigh(x, steps)
        except torch.linalg.LinAlgError:  # no convergence (a NaN gradient): iterate instead
            x = _iterate(x, steps)
    else:
        x = _iterate(x, steps)
    return (x.mT if tall else x).to(g.dtype)


def _iterate(x: torch.Tensor, steps: int) -> torch.Tensor:
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.mT  # (m, m)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def _through_eigh(x: torch.Tensor, steps: int) -> torch.Tensor:
    """Newton-Schulz's result without its matrix iterations. Every iteration is a polynomial
    in X X^T times X, so it maps each singular value s of X on its own, s -> s * r(s) with
    r(s) = a + b s^2 + c s^4, and keeps the singular vectors. With X X^T = U diag(s^2) U^T,
    the result is U diag(h) U^T X, where h is the product of the r's along s's path. One
    eigendecomposition of the (m, m) Gram matrix replaces 5 x 3 matmuls: 1.8x faster on
    `tiny`'s matrices on an AVX2 CPU (emulated), equal to the iteration to 1e-5."""
    a, b, c = NS_COEFFS
    lam, U = torch.linalg.eigh(x @ x.mT)
    s = lam.clamp_min(0).sqrt()  # rounding can leave a zero eigenvalue slightly negative
    h = torch.ones_like(s)
    for _ in range(steps):
        r = a + b * s * s + c * s**4
        h, s = h * r, s * r
    return ((U * h) @ U.mT) @ x


class MuonAdamW(torch.optim.Optimizer):
    """Groups with `muon=True` get Muon (momentum, Nesterov, orthogonalised, shape-scaled);
    the others get AdamW. Both take decoupled weight decay."""

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        betas=(0.9, 0.95),
        momentum: float = 0.95,
        ns_dtype: torch.dtype = torch.bfloat16,  # Newton-Schulz's: hardware.compute_dtype of the device
    ):
        defaults = dict(lr=lr, betas=betas, eps=1e-8, weight_decay=0.0, muon=False, lr_scale=1.0)
        super().__init__(groups, defaults)
        self.momentum, self.ns_dtype = momentum, ns_dtype

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr = group["lr"] * group["lr_scale"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                if group["muon"]:
                    self._muon(p, lr)
                else:
                    self._adamw(p, group, lr)

    def _muon(self, p: torch.Tensor, lr: float) -> None:
        state = self.state[p]
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(p)
        buf = state["momentum"]
        buf.mul_(self.momentum).add_(p.grad)
        update = p.grad.add(buf, alpha=self.momentum)  # Nesterov
        rows, cols = p.shape
        # An orthogonal update has unit singular values; scaling by sqrt(rows/cols) for tall
        # matrices keeps the per-element step size comparable across shapes.
        p.add_(orthogonalize(update, dtype=self.ns_dtype), alpha=-lr * max(1.0, rows / cols) ** 0.5)

    def _adamw(self, p: torch.Tensor, group: dict, lr: float) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        b1, b2 = group["betas"]
        state["step"] += 1
        t = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - b1**t))
