"""Batches as trees of tensors, and reading a probe's samples from data once.

A batch's inputs and targets may be a tensor, a tuple/list or a dict of tensors (nested any way): the
functions here map, concatenate, slice and index such trees row-wise, split a batch ``(x, y, ...)`` the
way Ignite does, count top-1 predictions, and read the first samples of a loader without disturbing
the random state training draws from. :class:`~ignite_landscape.probe.Probe`, its session and the
measures share them.

Example:
    >>> import torch
    >>> x = {"a": torch.arange(6).reshape(3, 2), "b": torch.arange(3)}
    >>> num_rows(x), take_rows(x, torch.tensor([2, 0]))["b"].tolist()
    (3, [2, 0])
    >>> tree_cat([rows(x, 0, 1), rows(x, 1, 3)])["a"].equal(x["a"])
    True
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ignite_landscape.restore import RNGState

__all__ = [
    "LABEL_DTYPES",
    "tree_map",
    "tree_leaves",
    "tree_cat",
    "rows",
    "take_rows",
    "num_rows",
    "default_prepare_batch",
    "is_single_batch",
    "read_samples",
    "count_correct",
    "fingerprint",
]

logger = logging.getLogger(__name__)

# Integer dtypes that count as class labels (accuracy, sampled Fisher labels).
LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def tree_map(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """Apply ``fn`` to every tensor of ``obj`` (a tensor, or dicts/tuples/lists of them); other leaves stay.

    Example:
        >>> tree_map(lambda t: t * 2, (torch.ones(1), [torch.ones(1)], "tag"))
        (tensor([2.]), [tensor([2.])], 'tag')
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map(fn, v) for v in obj)
    return obj


def tree_leaves(obj: Any) -> list[torch.Tensor]:
    """Every tensor of ``obj`` in order (dict values in insertion order).

    Example:
        >>> len(tree_leaves({"a": torch.ones(1), "b": (torch.ones(2), 3)}))
        2
    """
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in tree_leaves(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in tree_leaves(v)]
    return []


def tree_cat(items: Sequence[Any]) -> Any:
    """Concatenate trees of the same structure along their first dimension.

    Raises:
        TypeError: for leaves that are not tensors, dicts, tuples or lists.

    Example:
        >>> tree_cat([(torch.zeros(1), torch.ones(1)), (torch.zeros(2), torch.ones(2))])[1].tolist()
        [1.0, 1.0, 1.0]
    """
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(items))
    if isinstance(first, Mapping):
        return {k: tree_cat([i[k] for i in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(tree_cat([i[j] for i in items]) for j in range(len(first)))
    raise TypeError(f"cannot concatenate batch elements of type {type(first).__name__}")


def rows(obj: Any, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of every tensor of ``obj`` (views).

    Example:
        >>> rows(torch.arange(5), 1, 3).tolist()
        [1, 2]
    """
    return tree_map(lambda t: t[lo:hi], obj)


def take_rows(obj: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` (an integer tensor, moved to each tensor's device) of every tensor of ``obj``.

    Example:
        >>> take_rows(torch.arange(5), torch.tensor([4, 0])).tolist()
        [4, 0]
    """
    return tree_map(lambda t: t[index.to(t.device)], obj)


def num_rows(obj: Any) -> int:
    """The first dimension of ``obj``'s first tensor.

    Raises:
        TypeError: if ``obj`` holds no tensor.

    Example:
        >>> num_rows((torch.zeros(4, 2), torch.zeros(4)))
        4
    """
    leaves = tree_leaves(obj)
    if not leaves:
        raise TypeError("a batch must hold tensors")
    return leaves[0].shape[0]


def default_prepare_batch(batch: Any, device: torch.device | str | None = None, non_blocking: bool = False) -> tuple:
    """Split a batch ``(x, y, ...)`` into inputs and targets on ``device`` (Ignite's convention).

    Raises:
        TypeError: for a dict batch or anything but a sequence of at least two elements.

    Example:
        >>> x, y = default_prepare_batch((torch.zeros(2, 3), torch.ones(2), "extra"))
        >>> tuple(x.shape), y.tolist()
        ((2, 3), [1.0, 1.0])
    """
    if isinstance(batch, Mapping):
        raise TypeError("batches are dicts: pass prepare_batch=... that returns (x, y)")
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"a batch must be a sequence (x, y, ...), got {type(batch).__name__}")

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, non_blocking=non_blocking) if device is not None else t

    return tree_map(move, batch[0]), tree_map(move, batch[1])


def is_single_batch(data: Any) -> bool:
    """Whether ``data`` is one ``(x, y)`` pair of tensors with the same number of rows (not a loader).

    Example:
        >>> is_single_batch((torch.zeros(3, 2), torch.zeros(3))), is_single_batch([torch.zeros(3)])
        (True, False)
    """
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
        and data[0].dim() >= 1
        and data[1].dim() >= 1
        and data[0].shape[0] == data[1].shape[0]
    )


def read_samples(
    data: Any, num_samples: int, prepare_batch: Callable[..., tuple], device: torch.device | None
) -> tuple[Any, Any, int, int | None]:
    """The first ``num_samples`` samples of ``data``, read once through a fresh iterator.

    Every random generator that reading can draw from (the global RNGs, a loader's ``generator=``, its
    sampler's) is restored afterwards, so training's order is left exactly as it was.

    Args:
        data: a DataLoader, any iterable of batches, or one ``(x, y)`` batch.
        num_samples: how many samples to keep (fewer if the data holds fewer).
        prepare_batch: ``prepare_batch(batch, device, non_blocking) -> (x, y)``.
        device: where to put the samples (``None``: where they are).

    Returns:
        ``(x, y, first, size)``: detached copies of the kept inputs and targets, the first batch's size,
        and the samples of the data set (``len(loader.dataset)``, or the samples of data read to its
        end; ``None`` when unknown).

    Raises:
        ValueError: if ``data`` yields no samples.

    Example:
        >>> x, y, first, size = read_samples([(torch.zeros(4, 2), torch.ones(4))] * 3, 6, default_prepare_batch, None)
        >>> tuple(x.shape), first, size
        ((6, 2), 4, None)
    """
    if is_single_batch(data):
        batches: Iterable[Any] = [tuple(data)]
    else:
        batches = data
        if isinstance(data, Iterator):
            warnings.warn(
                "Probe: data is an iterator, reading the probe samples consumes it; "
                "pass a DataLoader or a re-iterable to leave training's data untouched",
                stacklevel=3,
            )
    xs: list[Any] = []
    ys: list[Any] = []
    count = 0
    first = 0
    size: int | None = None
    rng = RNGState()
    loader_rng = _LoaderRNG(batches)
    try:
        iterator: Iterator[Any] = iter(batches)
        for batch in iterator:
            x, y = prepare_batch(batch, device, False)
            n = num_rows(y)
            if n == 0:
                continue
            first = first or n
            xs.append(tree_map(lambda t: t.detach(), x))
            ys.append(tree_map(lambda t: t.detach(), y))
            count += n
            if count >= num_samples:
                break
        else:
            size = count  # read to its end: the data holds exactly these samples
        size = _sized_dataset(data, count if is_single_batch(data) else size)
        del iterator  # shut down DataLoader workers now, not at garbage collection
    finally:
        rng.restore()
        loader_rng.restore()
    if count == 0:
        raise ValueError("data yielded no samples")
    if count < num_samples:
        logger.info("Probe: data holds %d samples, fewer than num_samples=%d; using all of them", count, num_samples)
    keep = min(count, num_samples)
    x = tree_map(lambda t: t[:keep].clone(), tree_cat(xs))
    y = tree_map(lambda t: t[:keep].clone(), tree_cat(ys))
    return x, y, first, size


def _sized_dataset(data: Any, read: int | None) -> int | None:
    """``len(data.dataset)`` of a loader over a sized dataset, else ``read`` (the samples of data read to its end)."""
    try:
        return len(data.dataset)
    except (AttributeError, TypeError, NotImplementedError):
        return read


class _LoaderRNG:
    """A snapshot of the random state that iterating a DataLoader draws from, besides the global RNGs.

    A fresh iterator draws its workers' base seed and the shuffling permutation from the loader's
    ``generator=`` (shared with its ``RandomSampler``), or from a sampler's own generator. Restoring
    those makes reading the probe invisible to training. A loader with ``persistent_workers=True``
    keeps its first iterator for reuse: training must get a fresh one, as without the probe.
    """

    def __init__(self, data: Any) -> None:
        self.data = data
        self.generators: list[tuple[torch.Generator, torch.Tensor]] = []
        seen: set[int] = set()
        batch_sampler = getattr(data, "batch_sampler", None)
        for holder in (data, getattr(data, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
            if holder is None or not hasattr(holder, "__dict__"):
                continue
            for value in vars(holder).values():
                if isinstance(value, torch.Generator) and id(value) not in seen:
                    seen.add(id(value))
                    self.generators.append((value, value.get_state()))
        self.has_iterator = hasattr(data, "_iterator")
        self.iterator = getattr(data, "_iterator", None)

    def restore(self) -> None:
        """Put every generator back where it was, and the loader's kept iterator."""
        for generator, state in self.generators:
            generator.set_state(state)
        # DataLoader keeps its persistent iterator in a private attribute: there is no public way to reset it.
        if self.has_iterator and self.data._iterator is not self.iterator:
            self.data._iterator = self.iterator


def fingerprint(count: int, *trees: Any) -> torch.Tensor:
    """Order-sensitive float64 sums of every tensor of ``trees`` (and ``count``), on the CPU.

    Equal on two ranks exactly when they hold the same samples (barring a collision of these sums),
    computed identically everywhere.

    Example:
        >>> a = fingerprint(2, torch.tensor([1.0, 2.0]))
        >>> bool(torch.equal(a, fingerprint(2, torch.tensor([2.0, 1.0]))))
        False
    """
    values = [torch.tensor(float(count), dtype=torch.float64)]
    for t in (leaf for tree in trees for leaf in tree_leaves(tree)):
        sums = t.detach().reshape(t.shape[0], -1).double().nan_to_num().sum(dim=1)
        weights = torch.arange(1, sums.numel() + 1, dtype=torch.float64, device=sums.device)
        values += [sums.sum().cpu(), (sums * weights).sum().cpu()]
    return torch.stack(values)


def count_correct(y_pred: Any, y: Any, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor] | str:
    """``(correct, counted)`` top-1 predictions for class scores in torch's CrossEntropy layout, or why not.

    Args:
        y_pred: class scores ``(N, C)`` for targets ``(N,)``, or ``(N, C, d1, ...)`` for ``(N, d1, ...)``.
        y: integer class labels.
        ignore_index: targets with this label are not counted (``None``: every target is).

    Example:
        >>> count_correct(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([1, 1]), None)
        (tensor(1), tensor(2))
    """
    if not isinstance(y_pred, torch.Tensor):
        return (
            f"the model output (after output_transform) is a {type(y_pred).__name__}, not a tensor of class "
            "scores: pass Probe(..., output_transform=...) that returns the logits"
        )
    if not isinstance(y, torch.Tensor) or y.dtype not in LABEL_DTYPES:
        what = type(y).__name__ if not isinstance(y, torch.Tensor) else f"{y.dtype} tensor"
        return f"the targets are a {what}, not integer class labels"
    if y_pred.dim() != y.dim() + 1 or y_pred.shape[0] != y.shape[0] or y_pred.shape[2:] != y.shape[1:]:
        return (
            f"the output of shape {tuple(y_pred.shape)} is not class scores (N, C, ...) for targets of shape "
            f"{tuple(y.shape)} (torch's CrossEntropyLoss layout: the class dimension second)"
        )
    hit = y_pred.argmax(dim=1) == y
    if ignore_index is None:
        return hit.sum(), torch.tensor(y.numel(), device=y.device)
    keep = y != ignore_index
    return (hit & keep).sum(), keep.sum()
