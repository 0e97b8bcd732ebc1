"""Data parallelism under torchrun: DistributedDataParallel with gloo on CPU, nccl on CUDA.

`torchrun --nproc_per_node=N -m codelm train ...` sets RANK/WORLD_SIZE; the same
command without torchrun runs one process. Each rank computes its own slice of
every global batch; only rank 0 writes files. A worker ends with `leave`, not
with the interpreter's teardown (see there why).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def under_torchrun() -> bool:
    """Whether torchrun started this process as one of several workers."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> Dist:
    """Join the process group if torchrun started us; a no-op otherwise."""
    if not under_torchrun():
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_sum(d: Dist, values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over ranks (float64, so exact for counts)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_max(d: Dist, value: float, device: torch.device) -> float:
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def shutdown(d: Dist, finished: bool = True) -> None:
    """Leave the group; after a run that `finished` on this rank, once every rank is done, so no
    collective is in flight when it goes (after an error, other ranks may never get there)."""
    if d.enabled and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def leave(code: int) -> int:
    """Under torchrun, end this worker now with exit status `code`, without the interpreter's
    teardown; in one process, return `code`. Call it last, once every file is written.

    torch's DTensor caches keep an FSDP run's gloo process group alive after
    destroy_process_group, so its worker threads live on, and such a thread drops the last
    reference to a finished collective on its own time. When that fell in the interpreter's
    teardown, the thread needed the GIL, Python ended the thread, and the C++ runtime aborted
    the process ("terminate called without an active exception"): SIGABRT after a finished,
    saved run, in 2 of 25 launches of the shard test's script on a loaded 2-core machine. A core
    dump showed the thread in ProcessGroupGloo::runLoop, destroying an all-gather's work.
    Leaving with os._exit skips the teardown; Python's own threads are joined first, as the
    teardown would, and buffered output is flushed."""
    if not under_torchrun():
        return code
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
