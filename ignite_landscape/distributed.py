"""Collective helpers that make probe computations global under ``ignite.distributed``.

In a single process every function here is the identity and costs nothing. Under a process group
(``idist.Parallel``, or any backend ``ignite.distributed`` knows), each rank holds a disjoint shard of
the probe; sums are all-reduced so every rank computes with the same global loss, gradient and
Hessian operator, and every rank makes the same sequence of collective calls.

Two rules keep ranks in lockstep:

* every decision that changes the number of collective calls (stopping Lanczos, skipping a NaN result)
  is taken from all-reduced numbers, which are bit-identical on all ranks;
* a rank whose local part of a computation raises must still take part in the reduction. A
  :class:`Lockstep` block catches the error, the reduction carries a failure count, and every rank
  then raises (:class:`RankFailure` on the ranks that did not fail), instead of the healthy ranks
  waiting forever in the collective.

Example:
    >>> shard_bounds(10)  # one process: every sample is local
    (0, 10)
    >>> shard_bounds(10, world=4, index=1), shard_bounds(10, world=4, index=3)
    ((3, 6), (8, 10))
    >>> shard_bounds(10, block=4, world=2, index=1)  # whole blocks of 4 rows: batches 0, 1 | 2
    (8, 10)
"""

from __future__ import annotations

import logging
import math
import sys
from types import ModuleType, TracebackType
from typing import Any

import torch

__all__ = [
    "world_size",
    "rank",
    "shard_bounds",
    "all_reduce",
    "all_agree",
    "broadcast_object",
    "Lockstep",
    "RankFailure",
]

logger = logging.getLogger(__name__)


def _idist() -> ModuleType | None:
    # Importing ignite.distributed imports all of ignite; only do it when a group can exist. A backend
    # other than torch.distributed (Horovod, XLA) is only reachable through ignite, already imported then.
    module = sys.modules.get("ignite.distributed")
    if module is not None:
        return module
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        import ignite.distributed as idist

        return idist
    return None


def world_size() -> int:
    """Number of processes in the default group (1 outside ``ignite.distributed``)."""
    idist = _idist()
    return 1 if idist is None else int(idist.get_world_size())


def rank() -> int:
    """This process's rank (0 outside ``ignite.distributed``)."""
    idist = _idist()
    return 0 if idist is None else int(idist.get_rank())


def shard_bounds(
    num_samples: int, *, block: int = 1, world: int | None = None, index: int | None = None
) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` range of the global samples that rank ``index`` evaluates.

    The ``ceil(num_samples / block)`` blocks are split as evenly as possible, lower ranks taking the
    extra ones, so the shards are disjoint, cover every sample and depend only on the sizes.

    Args:
        num_samples: size of the global sample set.
        block: shard whole blocks of this many samples (the probe's batches in ``model_mode="train"``,
            so each rank evaluates exactly the batches a single process would).
        world: number of ranks (default: the current world size).
        index: the rank (default: this process's rank).
    """
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    world = world_size() if world is None else world
    index = rank() if index is None else index
    blocks = -(-num_samples // block)
    base, extra = divmod(blocks, world)
    first = index * base + min(index, extra)
    last = first + base + (1 if index < extra else 0)
    return min(first * block, num_samples), min(last * block, num_samples)


def all_reduce(tensor: torch.Tensor, op: str = "SUM") -> torch.Tensor:
    """Reduce ``tensor`` over ranks with ``op`` (``"SUM"``, ``"MAX"``, ``"MIN"``...).

    Returns the reduced tensor (on ``tensor``'s device, possibly ``tensor`` itself, reduced in place);
    in a single process, ``tensor`` unchanged. The result is bit-identical on every rank.
    """
    if world_size() == 1:
        return tensor
    idist = _idist()
    assert idist is not None
    return idist.all_reduce(tensor, op=op)


def all_agree(flag: bool) -> bool:
    """True only if ``flag`` is true on every rank."""
    if world_size() == 1:
        return flag
    return bool(all_reduce(torch.tensor([0.0 if flag else 1.0], dtype=torch.float64)).item() == 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as held by rank ``src``, on every rank (any picklable object)."""
    if world_size() == 1:
        return obj
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]
    idist = _idist()
    assert idist is not None
    return idist.all_gather(obj)[src]


class RankFailure(RuntimeError):
    """Raised on the healthy ranks when another rank's part of a collective computation failed."""


class Lockstep:
    """A rank-local computation followed by its reduction, failing on every rank or on none.

    In a single process the block is transparent: exceptions propagate at once and
    :meth:`all_reduce` returns its arguments. Under a process group, an exception inside the block is
    held back; :meth:`all_reduce` still takes part in the collectives (with NaN in place of this rank's
    part), and then every rank raises: the failing rank its own error, the others :class:`RankFailure`.

    Example:
        >>> total = torch.zeros(3)
        >>> with Lockstep() as step:
        ...     total += 1.0  # this rank's share
        >>> (total,) = step.all_reduce(total)
        >>> total.tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def __enter__(self) -> Lockstep:
        """Enter the block; the block's error, if any, is kept for the next reduction."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        """Keep an ``Exception`` raised in the block under a process group so every rank raises together."""
        if exc is None or not isinstance(exc, Exception) or world_size() == 1:
            return False
        logger.warning("rank %d failed inside a collective computation: %r", rank(), exc)
        self.error = exc
        return True

    def all_reduce(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Sum each tensor over ranks (one collective each); raise on every rank if any rank failed.

        The tensors must have the same shapes and dtypes on every rank; after a failure their
        contents do not matter (placeholders of the right shape are enough).
        """
        if world_size() == 1:
            return tensors
        failed = self.error is not None
        if failed:
            tensors = tuple(torch.full_like(t, math.nan if t.is_floating_point() else 0) for t in tensors)
        # The failure count rides along with the last (smallest, by convention) reduction.
        *head, last = tensors
        flag = torch.tensor([1.0 if failed else 0.0], dtype=last.dtype, device=last.device)
        reduced = [all_reduce(t) for t in head]
        packed = all_reduce(torch.cat([last.reshape(-1), flag]))
        num_failed = int(packed[-1].item())
        if self.error is not None:
            raise self.error
        if num_failed:
            raise RankFailure(f"{num_failed} other rank(s) failed inside a collective computation (see their logs)")
        reduced.append(packed[:-1].view_as(last))
        return tuple(reduced)
