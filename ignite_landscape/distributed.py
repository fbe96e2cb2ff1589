"""Collective helpers that make probe computations global under ``ignite.distributed``.

In a single process every function here is the identity and costs nothing. Under a process group
(``idist.Parallel``), each rank holds a disjoint shard of the probe; sums are all-reduced so every
rank computes with the same global loss, gradient and Hessian operator.

Example:
    >>> shard_bounds(10)  # one process: every sample is local
    (0, 10)
"""

from __future__ import annotations

import torch

__all__ = ["world_size", "rank", "shard_bounds", "all_reduce", "all_agree", "broadcast_object"]


def world_size() -> int:
    """Number of processes in the default group (1 outside ``ignite.distributed``)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 1
    return torch.distributed.get_world_size()


def rank() -> int:
    """This process's rank (0 outside ``ignite.distributed``)."""
    if world_size() == 1:
        return 0
    return torch.distributed.get_rank()


def shard_bounds(num_samples: int) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` range of the global samples that this rank evaluates."""
    size, r = world_size(), rank()
    base, extra = divmod(num_samples, size)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (returns it unchanged in a single process)."""
    if world_size() == 1:
        return tensor
    import ignite.distributed as idist

    return idist.all_reduce(tensor)


def all_agree(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank."""
    if world_size() == 1:
        return flag
    return bool(all_reduce(torch.tensor([0.0 if flag else 1.0], dtype=torch.float64, device=_device())).item() == 0)


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` as held by rank ``src``, on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def _device() -> torch.device:
    backend = torch.distributed.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
