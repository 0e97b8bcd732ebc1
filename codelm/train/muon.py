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

A matrix stored fused (attention's q, k and v; SwiGLU's gate and up) is orthogonalised
as the matrices it holds: `splits` gives its row blocks (each head's q, k and v rows,
from train/loop.py's `muon_splits`). Whole, its parts would share one set of singular
values, and the part with the largest gradient would take most of the step.

A step works on whole lists of tensors, so its cost is arithmetic rather than a Python
loop over parameters: the Newton-Schulz iterations run the matrices of one shape as one
batch; in fp32 on a CPU the matrices are shared among the cores, each share's whole step
(Gram matrices, eigendecompositions, products) on one core (`_in_threads`); the momentum
and AdamW updates are foreach or fused kernels. `tiny`'s optimizer step (16 matrices and
48 heads' blocks; `bench/train.py --preset tiny --vocab 4096 --batch 8 --seq 256`, 2
cores) took 49-53 ms instead of 62-73 in fp32 (emulated AVX2, an Intel Xeon; on an AMD
EPYC 54-55 ms, from 57-60 before each share was a whole step on one core), and 29-31
instead of 55 in bf16 (AMX).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.distributed.tensor import DTensor, Replicate
from torch.optim.adamw import adamw

# Coefficients of the quintic iteration from the Muon write-up: they push singular values
# towards 1 quickly from anywhere in (0, 1], at the cost of not converging exactly to 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(
    updates: Sequence[torch.Tensor], steps: int = 5, dtype: torch.dtype = torch.bfloat16
) -> list[torch.Tensor]:
    """For each 2-D update, an approximately semi-orthogonal matrix close to it: Newton-Schulz's
    `steps` iterations, computed in `dtype`.

    The iteration tolerates bf16's precision (it only needs singular values near 1), so
    bf16 is the fast choice where the hardware computes it. Where it does not (AVX2 CPUs,
    codelm.hardware), fp32 is several times faster than bf16, and on a CPU the same
    function is computed in fp32 through the Gram matrices' eigenvectors (`_through_eigh`),
    a share of the matrices on each core (`_in_threads`)."""
    work = functools.partial(_orthogonalize, steps=steps, dtype=dtype)
    return _in_threads(work, updates, _eigh_cost) if _by_eigh(updates, dtype) else work(updates)


def _orthogonalize(updates: Sequence[torch.Tensor], steps: int, dtype: torch.dtype) -> list[torch.Tensor]:
    polys = _polynomials(updates, steps, dtype)
    if polys is None:
        return _iterate_all(updates, steps, dtype)
    return [u @ p if _tall(u) else p @ u for u, p in zip(updates, polys, strict=True)]


def _by_eigh(updates: Sequence[torch.Tensor], dtype: torch.dtype) -> bool:
    """Whether `_through_eigh` computes these: fp32 on a CPU."""
    return dtype == torch.float32 and all(u.dtype == dtype and u.device.type == "cpu" for u in updates)


def _polynomials(
    updates: Sequence[torch.Tensor], steps: int, dtype: torch.dtype
) -> list[torch.Tensor] | None:
    """For fp32 on a CPU, the symmetric (m, m) matrix P of each update U whose orthogonalised
    form is P U (U P where U is tall), computed through the eigenvectors (`_through_eigh`);
    None where the iterations run instead: other dtypes or devices, or NaNs in an update."""
    if not _by_eigh(updates, dtype):
        return None
    try:
        return _through_eigh(updates, steps)
    except torch.linalg.LinAlgError:  # eigh does not converge on a NaN gradient
        return None


def _eigh_cost(u: torch.Tensor) -> int:
    """Multiply-adds of `_through_eigh` for u, about: its Gram matrix, then eigh and the
    product U diag(h) U^T at about ten (m, m) matmuls (eigh measured at nine, m = 256)."""
    m, n = sorted(u.shape)
    return m * m * n + 10 * m**3


Item = tuple[torch.Tensor, torch.Tensor, float]  # a matrix p, its update, its step's factor


def _step(items: list[Item], decay: float, dtype: torch.dtype) -> list[None]:
    """Muon's step on each (p, update, alpha): p <- decay * p + alpha * orthogonalised update."""
    updates = [u for _, u, _ in items]
    polys = _polynomials(updates, 5, dtype)
    if polys is None:
        for (p, _, alpha), done in zip(items, _iterate_all(updates, 5, dtype), strict=True):
            p.mul_(decay).add_(done, alpha=alpha)
    else:  # decay, product and step in one pass over p, no update materialised
        for (p, u, alpha), poly in zip(items, polys, strict=True):
            p.addmm_(*((u, poly) if _tall(u) else (poly, u)), beta=decay, alpha=alpha)
    return [None] * len(items)


def _step_cost(item: Item) -> int:
    m, n = sorted(item[1].shape)
    return _eigh_cost(item[1]) + m * m * n  # and the product into p


def _tall(u: torch.Tensor) -> bool:
    return u.size(0) > u.size(1)


def _wide(u: torch.Tensor) -> torch.Tensor:
    """Iterate on the wide side: X X^T is then the smaller Gram matrix."""
    return u.mT if _tall(u) else u


def _iterate_all(updates: Sequence[torch.Tensor], steps: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Newton-Schulz's iterations, the updates of one shape as one batch: one (k, m, n)
    matmul instead of k, and a, b, c fused into the products (baddbmm), which also rounds
    less in bf16: 1.2% from the fp32 result on `tiny`'s matrices instead of 2.6%."""
    shapes: dict[torch.Size, list[int]] = {}
    for i, u in enumerate(updates):
        shapes.setdefault(_wide(u).shape, []).append(i)
    out = list(updates)
    for idx in shapes.values():
        x = torch.stack([_wide(updates[i]) for i in idx]).to(dtype)  # (k, m, n), m <= n
        # The spectral norm is at most the Frobenius norm: every singular value is now <= 1.
        x = _iterate(x / (torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True) + 1e-7), steps)
        for i, xi in zip(idx, x, strict=True):
            out[i] = (xi.mT if _tall(updates[i]) else xi).to(updates[i].dtype)
    return out


def _iterate(x: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` Newton-Schulz iterations on a batch x (k, m, n), m <= n."""
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.mT  # (k, m, m)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b G + c G^2) X
    return x


def _through_eigh(updates: Sequence[torch.Tensor], steps: int) -> list[torch.Tensor]:
    """Newton-Schulz's result without its matrix iterations. Every iteration is a polynomial
    in X X^T times X, so it maps each singular value s of X on its own, s -> s * r(s) with
    r(s) = a + b s^2 + c s^4, and keeps the singular vectors. With X X^T = U diag(s^2) U^T,
    the result is U diag(h) U^T X, where h is the product of the r's along s's path. One
    eigendecomposition of the (m, m) Gram matrix replaces 5 x 3 matmuls: 1.8x faster on
    `tiny`'s matrices on an AVX2 CPU (emulated), equal to the iteration to 1e-5.

    Returned: each update's U diag(h) U^T / |X|_F. An update is read for its Gram matrix
    and never copied: its norm is the root of the Gram matrix's trace."""
    a, b, c = NS_COEFFS
    sizes: dict[int, list[int]] = {}
    for i, u in enumerate(updates):
        sizes.setdefault(min(u.shape), []).append(i)
    out = list(updates)
    for m, idx in sizes.items():
        grams = torch.empty(len(idx), m, m)
        for gram, i in zip(grams, idx, strict=True):
            x = _wide(updates[i])
            torch.mm(x, x.mT, out=gram)
        inv_norm = 1 / (grams.diagonal(dim1=-2, dim2=-1).sum(-1).sqrt() + 1e-7)  # 1 / |X|_F, (K,)
        lam, U = torch.linalg.eigh(grams * inv_norm[:, None, None] ** 2)  # (K, m), (K, m, m)
        s2 = lam.clamp_min(0)  # rounding can leave a zero eigenvalue slightly negative
        h = torch.ones_like(s2)
        for _ in range(steps):
            r = a + s2 * (b + c * s2)
            h, s2 = h * r, s2 * r * r
        polys = (U * (h * inv_norm[:, None]).unsqueeze(-2)) @ U.mT
        for poly, i in zip(polys, idx, strict=True):
            out[i] = poly
    return out


def _in_threads(fn: Callable[[list], list], items: Sequence, cost: Callable[..., int]) -> list:
    """fn(items), computed as fn of a share of the items on each of torch's threads, in a
    pool of Python threads, each running torch (and LAPACK) on one core; the shares are
    balanced by `cost` (longest first, each to the lightest share).

    Muon's fp32 step on a CPU is eigh on every Gram matrix, and at m = 256 LAPACK's
    multithreaded eigh is a long series of small parallel regions: on 2 cores it ran 1.2x
    faster than on one (16 of `tiny`'s Gram matrices: 35 against 44 ms, emulated AVX2),
    and whenever another process held a core every region waited for it: calls on 4
    matrices took 0.8 to 4 s instead of 20 ms, and 200 steps of `tiny` 510 s instead of
    102. Two single-threaded shares side by side take 21 ms, and a busy core delays only
    its own share.

    Each share is a whole piece of work (Gram matrices, eigh, the products, the step into
    the parameters), so that no parallel region of torch's own runs between the shares'
    eighs: after one, OpenMP's idle thread spins on its core for milliseconds, and the
    eighs in the pool then shared one core with it (16 of `tiny`'s 256 x 256 eighs took
    32 ms after the Gram matrices' products instead of 25). And each pool thread sets
    torch's thread count to one itself, at every call: a thread's OpenMP team size is its
    own, and the pool's threads, left at the default, each opened a team of two inside
    eigh, four threads on two cores (setting it once when a thread starts is not enough:
    the caller's reset below undoes it). `tiny`'s optimizer step: 49-52 ms instead of 59
    (emulated AVX2 on an AMD EPYC, 2 cores)."""
    threads = torch.get_num_threads()
    if threads == 1 or len(items) < 2:
        return fn(list(items))
    shares: list[list[int]] = [[] for _ in range(min(threads, len(items)))]
    loads = [0] * len(shares)
    for i in sorted(range(len(items)), key=lambda i: -cost(items[i])):
        lightest = loads.index(min(loads))
        shares[lightest].append(i)
        loads[lightest] += cost(items[i])

    grad = torch.is_grad_enabled()  # a thread's own: the caller's carries over

    def run(share: list[int]) -> list:
        torch.set_num_threads(1)  # in the pool's thread itself (above)
        with torch.set_grad_enabled(grad):
            return fn([items[i] for i in share])

    torch.set_num_threads(1)  # LAPACK's threads; the pool's own take a share each
    try:
        done = list(_pool(len(shares), os.getpid()).map(run, shares))
    finally:
        torch.set_num_threads(threads)
    out: list = [None] * len(items)
    for share, results in zip(shares, done, strict=True):
        for i, r in zip(share, results, strict=True):
            out[i] = r
    return out


@functools.cache
def _pool(workers: int, pid: int) -> ThreadPoolExecutor:
    """One pool per process: a forked child has none of its parent's threads."""
    return ThreadPoolExecutor(workers, thread_name_prefix="codelm-eigh")


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
        splits: dict[int, Sequence[int]] | None = None,
    ):
        defaults = dict(lr=lr, betas=betas, eps=1e-8, weight_decay=0.0, muon=False, lr_scale=1.0)
        super().__init__(groups, defaults)
        self.momentum, self.ns_dtype = momentum, ns_dtype
        # id(parameter) -> its row blocks, each orthogonalised as a matrix of its own (`pieces`).
        self.splits = {k: tuple(v) for k, v in (splits or {}).items()}

    def pieces(self, p: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """`t` (p's update, or p itself) cut into the row blocks Muon orthogonalises one by one:
        a fused matrix's parts (`splits`), else the whole matrix. Views: writes land in `t`."""
        sizes = self.splits.get(id(p))
        return list(t.split(sizes)) if sizes else [t]

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr = group["lr"] * group["lr_scale"]
            if group["muon"]:
                self._muon(params, lr, 1 - lr * group["weight_decay"])
            else:
                self._adamw(params, group, lr)

    def _muon(self, params: list[torch.Tensor], lr: float, decay: float) -> None:
        for p in params:
            if "momentum" not in self.state[p]:
                self.state[p]["momentum"] = torch.zeros_like(p)
        grads = [p.grad for p in params]
        bufs = [self.state[p]["momentum"] for p in params]
        torch._foreach_mul_(bufs, self.momentum)
        torch._foreach_add_(bufs, grads)
        updates = torch._foreach_add(grads, bufs, alpha=self.momentum)  # Nesterov
        if isinstance(params[0], DTensor):
            self._muon_sharded(params, updates, lr, decay)
            return
        # Each block of a fused matrix is a matrix of its own: its rows of p and of the update.
        updates = [b for p, u in zip(params, updates, strict=True) for b in self.pieces(p, u)]
        params = [b for p in params for b in self.pieces(p, p)]
        # An orthogonal update has unit singular values; scaling by sqrt(rows/cols) for tall
        # matrices keeps the per-element step size comparable across shapes.
        alphas = [-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5 for p in params]
        items = list(zip(params, updates, alphas, strict=True))
        work = functools.partial(_step, decay=decay, dtype=self.ns_dtype)
        if _by_eigh(updates, self.ns_dtype):
            _in_threads(work, items, _step_cost)
        else:
            work(items)

    def _muon_sharded(self, params: list, updates: list, lr: float, decay: float) -> None:
        """FSDP2's shards (train/shard.py): gather each whole update, orthogonalise its pieces
        as one process would, apply this process's own rows of the result."""
        cuts = [self.pieces(p, u.full_tensor()) for p, u in zip(params, updates, strict=True)]
        done = iter(orthogonalize([b for bs in cuts for b in bs], 5, self.ns_dtype))
        for p, bs in zip(params, cuts, strict=True):
            # Each piece scaled for its own shape, as in `_muon`: the step is then -lr * o.
            o = torch.cat([next(done) * max(1.0, b.size(0) / b.size(1)) ** 0.5 for b in bs])
            mine = DTensor.from_local(o, p.device_mesh, [Replicate()], run_check=False)
            mine = mine.redistribute(p.device_mesh, p.placements).to_local()  # a slice, no traffic
            p.to_local().mul_(decay).add_(mine, alpha=-lr)

    def _adamw(self, params: list[torch.Tensor], group: dict, lr: float) -> None:
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        states = [self.state[p] for p in params]
        b1, b2 = group["betas"]
        cpu = params[0].device.type == "cpu"
        adamw(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            # One pass over each tensor on a CPU. Elsewhere foreach, as torch.optim.AdamW does by
            # default: fused CUDA kernels want the step counts on the GPU, and checkpoints keep
            # them on the CPU.
            fused=cpu,
            foreach=not cpu,
            amsgrad=False,
            beta1=b1,
            beta2=b2,
            lr=lr,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
