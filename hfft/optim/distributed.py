"""Data parallelism over ``torch.distributed``, as launched by ``torchrun``.

Every rank runs the same program on the same data with the same seeds, so
every rank draws the same global batches; each rank works on its contiguous
shard of each batch, and the sums that make up losses, gradients, curvature
products and evaluation metrics are all-reduced, so that every rank sees the
global values and takes the identical step. Only rank 0 writes files and
draws progress. With one process (no ``torchrun``), every function here is a
no-op and the library runs exactly as before.

Gloo is used on CPUs and NCCL on GPUs, chosen from the device. A rank that
fails leaves the others blocked in a collective at most
:data:`TIMEOUT_SECONDS` (``HFFT_DIST_TIMEOUT`` overrides it) before they fail
too; ``torchrun`` ends the job as soon as one rank exits with an error.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: the command line checks
    import torch  # launched() before anything imports torch
    from torch import Tensor

__all__ = [
    "TIMEOUT_SECONDS",
    "all_reduce_max",
    "all_reduce_sum",
    "broadcast_object",
    "initialize",
    "is_distributed",
    "is_main",
    "rank",
    "shard",
    "shard_sizes",
    "shutdown",
    "sum_float",
    "world_size",
]

TIMEOUT_SECONDS = 300.0
"""Longest wait in one collective before a rank gives up (``HFFT_DIST_TIMEOUT``)."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialize(device: str) -> str:
    """Join the process group when launched by ``torchrun``; returns this rank's device.

    ``device`` is the resolved device of the command line (``cpu``, ``cuda``
    or ``cuda:N``); with CUDA each rank takes the GPU of its local rank. Does
    nothing in a single process.

    Raises:
        ValueError: For an invalid ``HFFT_DIST_TIMEOUT``.
    """
    if not launched() or is_distributed():
        return device
    import torch
    import torch.distributed as dist

    raw = os.environ.get("HFFT_DIST_TIMEOUT", str(TIMEOUT_SECONDS))
    try:
        timeout = float(raw)
    except ValueError:
        raise ValueError(f"HFFT_DIST_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return device


def shutdown(wait_for_all: bool = False) -> None:
    """Leave the process group, if this process joined one.

    Args:
        wait_for_all: Wait for every rank to get here first (a barrier): after a
            run that finished, so that the ranks that wrote nothing do not tear
            down their connections while rank 0 still writes its files (gloo
            aborted a rank that left early, now and then). Not after a failure,
            where a peer may never arrive.
    """
    if is_distributed():
        import torch.distributed as dist

        if wait_for_all:
            try:
                dist.barrier()
            except RuntimeError:  # a peer failed after all: leaving is all there is to do
                pass
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group of more than one rank is active."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 in a single process)."""
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0, the one that writes files and draws progress."""
    return rank() == 0


def shard(n: int) -> slice:
    """This rank's contiguous part of ``n`` items (sizes differ by at most one)."""
    r, w = rank(), world_size()
    return slice(n * r // w, n * (r + 1) // w)


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks, in place; returns it."""
    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(value: float, device: torch.device | str = "cpu") -> float:
    """The largest ``value`` of all ranks."""
    if not is_distributed():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable value)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_sizes(
    sizes: Sequence[float], device: torch.device
) -> tuple[Callable[[Tensor], Tensor] | None, list[float] | None]:
    """For batches of which this rank holds ``sizes`` (sample counts or loss
    normalisers): the in-place sum over ranks and the global totals (one
    all-reduce for all of them); ``(None, None)`` in one process."""
    if not is_distributed():
        return None, None
    import torch

    totals = all_reduce_sum(torch.tensor(list(sizes), dtype=torch.float64, device=device))
    return all_reduce_sum, [float(n) for n in totals.tolist()]


def sum_float(
    value: float, reduce: Callable[[Tensor], Tensor] | None, device: torch.device
) -> float:
    """``value`` summed over ranks with ``reduce`` (``value`` itself when ``None``)."""
    if reduce is None:
        return value
    import torch

    return float(reduce(torch.tensor([value], dtype=torch.float64, device=device)))
