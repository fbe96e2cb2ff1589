"""The Probe: a fixed set of samples and exact loss, gradient and Hessian-vector products on it.

A :class:`Probe` takes the first ``num_samples`` samples of some data once and keeps exactly those,
so a quantity measured at epoch 3 and at epoch 30 is measured on the same samples. Every loss,
gradient and Hessian-vector product (HVP) over the probe is of one objective, what ``loss_fn``
returns on all probe samples as one batch, ``L(θ) = loss_fn(output_transform(model(X)), y)``,
computed exactly whatever the batch split (:mod:`ignite_landscape.objective`: any reduction, class
weights, ignored targets; in ``model_mode="train"`` BatchNorm's batch statistics make the model's
output itself depend on the split).

Computations run inside a :class:`ProbeSession`, opened with :meth:`Probe.session`. The session
evaluates the model *functionally* (``torch.func.functional_call`` with tensors it owns), so the
model's parameters, ``.grad`` and flags are never written, and it sits inside
:func:`~ignite_landscape.restore.preserved_state`, which restores everything bit-for-bit anyway.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    >>> probe = Probe((x, y), torch.nn.functional.cross_entropy, batch_size=3)
    >>> with probe.session(model) as s:
    ...     loss, grad = s.loss_and_grad()
    ...     hv = s.hvp(torch.ones_like(grad))
    >>> grad.shape == hv.shape == (15,)
    True
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ignite_landscape import distributed
from ignite_landscape.execution import probe_execution
from ignite_landscape.objective import (
    Decomposition,
    ObjectiveError,
    check_on_fake_predictions,
    check_row_mean,
    decompose,
)
from ignite_landscape.params import ParamsArg, ParamSpace, model_device, unwrap_model
from ignite_landscape.restore import RNGState, preserved_state

__all__ = ["Probe", "ProbeSession", "ProbeEvaluation", "MODEL_MODES"]

logger = logging.getLogger(__name__)

MODEL_MODES = ("eval", "train")
LossFn = Callable[[Any, Any], torch.Tensor]


def _tree_map(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_tree_map(fn, v) for v in obj)
    return obj


def _tree_leaves(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tree_leaves(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tree_leaves(v)]
    return []


def _tree_cat(items: Sequence[Any]) -> Any:
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(items))
    if isinstance(first, Mapping):
        return {k: _tree_cat([i[k] for i in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_tree_cat([i[j] for i in items]) for j in range(len(first)))
    raise TypeError(f"cannot concatenate batch elements of type {type(first).__name__}")


def _rows(obj: Any, lo: int, hi: int) -> Any:
    return _tree_map(lambda t: t[lo:hi], obj)


def _num_rows(obj: Any) -> int:
    leaves = _tree_leaves(obj)
    if not leaves:
        raise TypeError("a batch must hold tensors")
    return leaves[0].shape[0]


def default_prepare_batch(batch: Any, device: torch.device | str | None = None, non_blocking: bool = False) -> tuple:
    """Split a batch ``(x, y, ...)`` into inputs and targets on ``device`` (Ignite's convention)."""
    if isinstance(batch, Mapping):
        raise TypeError("batches are dicts: pass prepare_batch=... that returns (x, y)")
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"a batch must be a sequence (x, y, ...), got {type(batch).__name__}")

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, non_blocking=non_blocking) if device is not None else t

    return _tree_map(move, batch[0]), _tree_map(move, batch[1])


def _is_single_batch(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
        and data[0].dim() >= 1
        and data[1].dim() >= 1
        and data[0].shape[0] == data[1].shape[0]
    )


@dataclass(frozen=True)
class ProbeEvaluation:
    """Loss (and top-1 accuracy for classification targets) of a model on the probe.

    Attributes:
        loss: the probe objective (``loss_fn`` over all probe samples as one batch), exactly.
        accuracy: top-1 accuracy in [0, 1] over the counted targets (every target but ``ignore_index``
            ones), or ``None`` when the output and targets are not class scores and class labels.
        num_samples: how many samples the numbers are computed on.
        accuracy_reason: why ``accuracy`` is ``None`` (``None`` when it is computed).
    """

    loss: float
    accuracy: float | None
    num_samples: int
    accuracy_reason: str | None = None

    @property
    def error(self) -> float | None:
        """Top-1 error, ``1 - accuracy``."""
        return None if self.accuracy is None else 1.0 - self.accuracy


class Probe:
    """A fixed set of samples on which landscape quantities are computed.

    The objective is what ``loss_fn`` returns on all probe samples as one batch,
    ``L(θ) = loss_fn(output_transform(model(X)), y)``, computed exactly in chunks of any size (see
    :mod:`ignite_landscape.objective`): a torch loss module or ``torch.nn.functional`` loss is split
    into its ``reduction="sum"`` total and its normaliser (element count, sum of target class weights,
    non-ignored targets, rows, or none for ``"sum"``), summed over chunks (and ranks) separately. Any
    other callable must be a per-row mean, which the first session verifies on every chunk, or be
    declared with :class:`~ignite_landscape.objective.DecomposedLoss`.

    Args:
        data: a DataLoader, any iterable of ``(x, y)`` batches, or one ``(x, y)`` batch. It is read
            once, at construction, through a fresh iterator; every random generator that reading can
            draw from (the global RNGs, the loader's ``generator=``, its sampler's) is restored
            afterwards, so training's order is left exactly as it was.
        loss_fn: ``loss_fn(y_pred, y)`` returning a scalar: a torch loss (module or functional, any
            reduction but ``"none"``), a :class:`~ignite_landscape.objective.DecomposedLoss`, or a
            per-row-mean callable.
        num_samples: how many samples to keep (fewer if the data holds fewer).
        batch_size: how many samples per forward pass; defaults to the size of the data's first batch.
        device: where the samples live and models are evaluated; defaults to where the data is.
        prepare_batch: ``prepare_batch(batch, device, non_blocking) -> (x, y)`` as in Ignite.
        model_mode: ``"eval"`` (BatchNorm running statistics, dropout off) or ``"train"`` (batch
            statistics; dropout masks are drawn from a fixed seed so every evaluation is the same
            function). Running statistics are left exactly as they were in both modes.
        max_graph_bytes: keep the probe's gradient graph alive between Hessian-vector products while
            its saved tensors take at most this many bytes (an HVP then costs one double backward
            instead of a forward, a backward and a double backward); when the whole graph needs more,
            the graphs of the first batches that fit are kept and only the other batches are
            recomputed per HVP; ``0`` never keeps it.
        seed: seed of the dropout masks in ``model_mode="train"``.
        population_size: how many samples the data set the probe is drawn from holds (for the noise
            scale's finite-population correction). Default: ``len(loader.dataset)`` for a DataLoader over
            a sized dataset, the rows of a single ``(x, y)`` batch, the samples of an iterable read to
            its end; ``None`` (an infinite population) when unknown.
        output_transform: ``output_transform(model_output) -> y_pred``, what ``loss_fn`` and accuracy
            take (Ignite's naming): e.g. ``lambda out: out["logits"]`` for a dict output. By default a
            tensor is used as is, and an object with a ``.logits`` tensor attribute (Hugging Face
            style) gives that attribute.

    Raises:
        TypeError: if ``data``, ``loss_fn``, ``prepare_batch`` or ``output_transform`` are of the wrong kind.
        ValueError: if ``num_samples``/``batch_size`` are not positive, ``model_mode`` is unknown,
            ``loss_fn`` has ``reduction="none"`` or is an undeclared callable that is not a per-row mean
            on made-up predictions for the targets (``ObjectiveError``), or ``data`` yields no samples.
    """

    def __init__(
        self,
        data: Any,
        loss_fn: LossFn,
        *,
        num_samples: int = 1024,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        prepare_batch: Callable[..., tuple] | None = None,
        model_mode: str = "eval",
        max_graph_bytes: int = 1 << 30,
        seed: int = 0,
        population_size: int | None = None,
        output_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if output_transform is not None and not callable(output_transform):
            raise TypeError(f"output_transform must be callable or None, got {type(output_transform).__name__}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int):
            raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int):
                raise TypeError(f"batch_size must be an int or None, got {type(batch_size).__name__}")
            if batch_size <= 0:
                raise ValueError(f"batch_size must be positive, got {batch_size}")
        if model_mode not in MODEL_MODES:
            raise ValueError(f"model_mode must be one of {MODEL_MODES}, got {model_mode!r}")
        if prepare_batch is not None and not callable(prepare_batch):
            raise TypeError("prepare_batch must be callable")
        if population_size is not None and (
            isinstance(population_size, bool) or not isinstance(population_size, int) or population_size < 1
        ):
            raise ValueError(f"population_size must be a positive int or None, got {population_size!r}")
        if not isinstance(max_graph_bytes, int) or max_graph_bytes < 0:
            raise ValueError(f"max_graph_bytes must be a non-negative int, got {max_graph_bytes!r}")
        if data is None or isinstance(data, (str, bytes)) or not (_is_single_batch(data) or isinstance(data, Iterable)):
            raise TypeError(
                f"data must be a DataLoader, an iterable of batches or one (x, y) batch, got {type(data).__name__}"
            )

        self.loss_fn = loss_fn
        self.output_transform = output_transform
        self.decomposition: Decomposition = decompose(loss_fn)
        # An undeclared callable is checked to be a per-row mean on the first session.
        self._row_mean_checked = not self.decomposition.needs_check
        self._accuracy_reason_logged = False
        self._normalizer = 1.0
        self.model_mode = model_mode
        self.max_graph_bytes = max_graph_bytes
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else None
        self._prepare = prepare_batch or default_prepare_batch
        self._loss_checked = False
        self._data_size: int | None = None

        inputs, targets, first_batch = self._take(data, num_samples)
        self.inputs = inputs
        self.targets = targets
        self.global_num_samples = _num_rows(targets)
        # The data set the samples stand for (the finite-population correction of the noise scale).
        self.population_size = population_size if population_size is not None else self._data_size
        if self.population_size is not None and self.population_size < _num_rows(targets):
            raise ValueError(
                f"population_size={self.population_size} is smaller than the probe's {_num_rows(targets)} samples"
            )
        # Under ignite.distributed each rank evaluates a disjoint, contiguous shard of the global set,
        # decided on first use: the process group may not exist yet when the probe is built.
        self._layout_key: tuple[int, int] | None = None
        self._layout_value = (0, self.global_num_samples, self.global_num_samples, 0)
        self.batch_size = min(batch_size or first_batch, self.global_num_samples)
        if self.device is None:
            self.device = _tree_leaves(inputs)[0].device
        if self.decomposition.needs_check:
            n = _num_rows(targets)
            for lo in range(0, n, self.batch_size):
                if check_on_fake_predictions(loss_fn, _rows(targets, lo, min(lo + self.batch_size, n))) == "skipped":
                    break

    def _take(self, data: Any, num_samples: int) -> tuple[Any, Any, int]:
        if _is_single_batch(data):
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
        rng = RNGState()
        loader_rng = _LoaderRNG(batches)
        try:
            iterator: Iterator[Any] = iter(batches)
            for batch in iterator:
                x, y = self._prepare(batch, self.device, False)
                n = _num_rows(y)
                if n == 0:
                    continue
                first = first or n
                xs.append(_tree_map(lambda t: t.detach(), x))
                ys.append(_tree_map(lambda t: t.detach(), y))
                count += n
                if count >= num_samples:
                    break
            else:
                self._data_size = count  # read to its end: the data holds exactly these samples
            self._data_size = _sized_dataset(data, count if _is_single_batch(data) else self._data_size)
            del iterator  # shut down DataLoader workers now, not at garbage collection
        finally:
            rng.restore()
            loader_rng.restore()
        if count == 0:
            raise ValueError("data yielded no samples")
        if count < num_samples:
            logger.info(
                "Probe: data holds %d samples, fewer than num_samples=%d; using all of them", count, num_samples
            )
        keep = min(count, num_samples)
        x = _tree_map(lambda t: t[:keep].clone(), _tree_cat(xs))
        y = _tree_map(lambda t: t[:keep].clone(), _tree_cat(ys))
        return x, y, first

    @property
    def num_samples(self) -> int:
        """Number of samples in the probe (over all ranks, once a session has run under a process group)."""
        return self.global_num_samples

    def with_model_mode(self, model_mode: str) -> Probe:
        """This probe evaluated in another ``model_mode``: the same samples (shared, not copied) and objective.

        Raises:
            ValueError: if ``model_mode`` is not ``"eval"`` or ``"train"``.
        """
        if model_mode not in MODEL_MODES:
            raise ValueError(f"model_mode must be one of {MODEL_MODES}, got {model_mode!r}")
        if model_mode == self.model_mode:
            return self
        other = copy.copy(self)
        other.model_mode = model_mode
        other._layout_key = None  # the sharding depends on the mode (whole batches in train mode)
        return other

    def layout(self) -> tuple[int, int, int, int]:
        """``(start, stop, total, first_batch)``: the rows of :attr:`inputs` this rank evaluates, the
        number of samples over all ranks, and the global index of this rank's first batch.

        In one process: ``(0, n, n, 0)``. Under a process group the first call is collective (every rank
        must make it; :meth:`session` does): if all ranks hold the same samples, each evaluates its own
        contiguous shard of them; if they hold different ones (a loader with a ``DistributedSampler``),
        each evaluates its share of its own, and the probe is their union. In ``model_mode="train"`` the
        shards are whole batches, so every rank evaluates exactly the batches (and dropout masks) that a
        single process would.
        """
        key = (distributed.world_size(), distributed.rank())
        if key != self._layout_key:
            n = _num_rows(self.targets)
            self._layout_value = (0, n, n, 0) if key[0] == 1 else self._distributed_layout()
            self._layout_key = key
            self.global_num_samples = self._layout_value[2]
            self._normalizer = self._global_normalizer()
        return self._layout_value

    def _global_normalizer(self) -> float:
        # The objective's denominator over all probe samples (all ranks): a function of the targets
        # only, so it is fixed once the layout is. Collective under a process group, like layout().
        weight = self.decomposition.weight
        if weight is None:
            return 1.0
        start, stop = self._layout_value[:2]
        local = torch.zeros((), dtype=torch.float64)
        for lo in range(start, stop, self.batch_size):
            y = _rows(self.targets, lo, min(lo + self.batch_size, stop))
            local += torch.as_tensor(weight(y), dtype=torch.float64).detach().cpu()
        if distributed.world_size() > 1:
            device = _tree_leaves(self.targets)[0].device
            local = distributed.all_reduce(local.reshape(1).to(device)).reshape(()).cpu()
        return float(local)

    @property
    def normalizer(self) -> float:
        """The probe objective's denominator over all its samples: the element count, the sum of the
        targets' class weights, the number of non-ignored targets or of rows, as ``loss_fn``'s reduction
        divides by; ``1.0`` for a sum (collective on first use under a process group, like :meth:`layout`)."""
        self.layout()
        return self._normalizer

    def objective_scale(self, batch_size: int) -> float:
        """How large the objective of one trainer batch of ``batch_size`` samples is relative to the
        probe objective, for the same per-sample losses.

        ``1.0`` for every loss normalised by a count that grows with the samples (a mean, weighted
        mean, ``"batchmean"``); ``batch_size / num_samples`` for a sum (``reduction="sum"``), whose
        objective, gradient and Hessian grow with the number of samples. The curvature one optimizer
        step sees is ``objective_scale(batch_size) * λ`` with ``λ`` measured on the probe: compare that
        with a step-size threshold such as ``2 / lr``.

        Raises:
            ValueError: if ``batch_size`` is not a positive int.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if self.decomposition.normalized:
            return 1.0
        return batch_size / self.num_samples

    def transform(self, output: Any) -> Any:
        """The model output as ``loss_fn`` and accuracy take it (``output_transform``, or the default:
        a tensor as is, an object's ``.logits`` tensor)."""
        if self.output_transform is not None:
            return self.output_transform(output)
        if not isinstance(output, (torch.Tensor, Mapping, tuple, list)):
            logits = getattr(output, "logits", None)
            if isinstance(logits, torch.Tensor):
                return logits
        return output

    def objective(self, output: Any, y: Any) -> torch.Tensor:
        """One chunk's contribution to the probe objective from the model's raw ``output`` on it:
        ``total(output_transform(output), y) / normalizer``. Summed over all chunks (and ranks) it is
        exactly ``L(θ)``; it works under ``torch.func`` transforms (``vmap``, ``grad``)."""
        total = self.decomposition.total(self.transform(output), y)
        self.check_loss(total)
        return total / self.normalizer  # fixed once the layout is (collective on first use, like layout())

    def check_row_mean(self, output: Any, y: Any) -> str:
        """For an undeclared ``loss_fn``: check on one chunk that it is a per-row mean (see
        :func:`~ignite_landscape.objective.check_row_mean`); ``"checked"`` when that chunk could tell."""
        if not self.decomposition.needs_check:
            return "checked"
        return check_row_mean(self.loss_fn, self.transform(output), y)

    def check_objective(self, model: nn.Module) -> None:
        """Check now, on ``model``, what the first session would: that an undeclared ``loss_fn`` is a
        per-row mean (one forward pass over the probe, once per probe; nothing for a torch loss or a
        :class:`~ignite_landscape.objective.DecomposedLoss`). Handlers call it at construction.

        Raises:
            ObjectiveError: (a ``ValueError``) naming ``loss_fn`` and the fix when it is not a per-row mean.
        """
        if self._row_mean_checked:
            return
        try:
            with self.session(model):
                pass
        except ObjectiveError:
            raise
        except Exception as e:  # the model cannot run yet (e.g. lazy modules): the first session checks
            logger.debug("Probe: loss_fn check deferred to the first session (%r)", e)

    def count_correct(self, output: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor] | str:
        """``(correct, counted)`` top-1 predictions on one chunk, or why accuracy cannot be computed.

        The transformed output counts as class scores in torch's ``CrossEntropyLoss`` layout: ``(N, C)``
        for integer targets ``(N,)``, or ``(N, C, d1, ...)`` for targets ``(N, d1, ...)`` (token-level
        logits with the class dimension second). Targets equal to the loss's ``ignore_index`` are not
        counted.
        """
        return _count_correct(self.transform(output), y, self.decomposition.ignore_index)

    def _distributed_layout(self) -> tuple[int, int, int, int]:
        local = _fingerprint(_num_rows(self.targets), self.inputs, self.targets)
        both = distributed.all_reduce(torch.cat([local, -local]), op="MAX")
        high, low = both[: local.numel()], -both[local.numel() :]
        total = int(low[0])  # the fewest samples any rank holds
        block = min(self.batch_size, total) if self.model_mode == "train" else 1
        start, stop = distributed.shard_bounds(total, block=block)
        first_batch = start // block if self.model_mode == "train" else 0
        if not torch.equal(high, low):
            logger.info("Probe: the ranks hold different samples; each evaluates its share of its own")
            start, stop = 0, stop - start
        return start, stop, total, first_batch

    def batches(self) -> list[tuple[Any, Any, int]]:
        """This rank's samples as ``(x, y, n)`` chunks of at most ``batch_size`` rows."""
        start, stop = self.layout()[:2]
        out = []
        for lo in range(start, stop, self.batch_size):
            hi = min(lo + self.batch_size, stop)
            out.append((_rows(self.inputs, lo, hi), _rows(self.targets, lo, hi), hi - lo))
        return out

    def session(self, model: nn.Module, params: ParamsArg = None) -> ProbeSession:
        """Open a session that computes on ``model`` and restores it completely on exit.

        Args:
            model: the model (DDP/DataParallel wrappers are looked through).
            params: which parameters span the space (see :meth:`ParamSpace.from_model`).
        """
        return ProbeSession(self, model, params)

    def evaluate(self, model: nn.Module) -> ProbeEvaluation:
        """Loss and accuracy of ``model`` on the probe."""
        with self.session(model) as s:
            return s.evaluate()

    def check_loss(self, loss: torch.Tensor) -> None:
        """Raise a clear error once if ``loss_fn`` does not return a scalar tensor."""
        if self._loss_checked:
            return
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss_fn must return a torch.Tensor, got {type(loss).__name__}")
        if loss.dim() != 0:
            raise ValueError(
                f"loss_fn must return a scalar (mean-reduced) loss, got a tensor of shape {tuple(loss.shape)}"
            )
        self._loss_checked = True

    def __repr__(self) -> str:
        return (
            f"Probe(num_samples={self.num_samples}, batch_size={self.batch_size}, "
            f"device={self.device}, model_mode={self.model_mode!r})"
        )


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
        if self.has_iterator and self.data._iterator is not self.iterator:
            self.data._iterator = self.iterator


def _fingerprint(count: int, *trees: Any) -> torch.Tensor:
    # Order-sensitive float64 sums of every tensor: equal on two ranks exactly when they hold the same
    # samples (barring a collision of these sums), computed identically everywhere.
    values = [torch.tensor(float(count), dtype=torch.float64)]
    for t in (leaf for tree in trees for leaf in _tree_leaves(tree)):
        rows = t.detach().reshape(t.shape[0], -1).double().nan_to_num().sum(dim=1)
        weights = torch.arange(1, rows.numel() + 1, dtype=torch.float64, device=rows.device)
        values += [rows.sum().cpu(), (rows * weights).sum().cpu()]
    return torch.stack(values)


_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def _classifies(y_pred: Any, y: Any) -> bool:
    """Whether ``y_pred`` are class scores ``(n, C)`` for integer labels ``y`` of shape ``(n,)``."""
    return (
        isinstance(y_pred, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and y.dtype in _LABEL_DTYPES
        and y.dim() == 1
        and y_pred.dim() == 2
        and y_pred.shape[0] == y.shape[0]
    )


def _count_correct(y_pred: Any, y: Any, ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor] | str:
    """``(correct, counted)`` top-1 predictions for class scores in torch's CrossEntropy layout, or why not."""
    if not isinstance(y_pred, torch.Tensor):
        return (
            f"the model output (after output_transform) is a {type(y_pred).__name__}, not a tensor of class "
            "scores: pass Probe(..., output_transform=...) that returns the logits"
        )
    if not isinstance(y, torch.Tensor) or y.dtype not in _LABEL_DTYPES:
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


class ProbeSession:
    """Exact computations of one model on one probe, with the model restored on exit.

    Flat vectors (gradients, HVP inputs and outputs, points) use the order of :attr:`space`.
    Counters ``num_hvps``, ``num_grads`` and ``num_forwards`` count full passes over the probe.
    ``batch_offset`` is the global index of this rank's first probe batch (0 in one process): in
    ``model_mode="train"`` batch ``i`` of :meth:`Probe.batches` draws its dropout masks from the seed
    ``probe.seed + batch_offset + i``, as in a single process.
    """

    def __init__(self, probe: Probe, model: nn.Module, params: ParamsArg = None) -> None:
        self.probe = probe
        self.model = unwrap_model(model)
        self.space = ParamSpace.from_model(self.model, params)
        _check_device(self.model, probe)
        self.num_hvps = 0
        self.num_grads = 0
        self.num_forwards = 0
        self._stack = ExitStack()
        self._graph: tuple[list[torch.Tensor], torch.Tensor] | None = None
        self._graph_failed = False
        self.cached_batches = 0  # probe batches whose gradient graph is kept between HVPs

    def __enter__(self) -> ProbeSession:
        if self.probe.model_mode == "train" and distributed.world_size() > 1:
            if any(isinstance(m, nn.SyncBatchNorm) for m in self.model.modules()):
                raise ValueError(
                    "model_mode='train' with SyncBatchNorm under a process group would synchronise batch "
                    "statistics across ranks: use model_mode='eval'"
                )
        # Collective on first use: every rank opens the session at the same point.
        self.batch_offset = self.probe.layout()[3]
        try:
            self._enter()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _enter(self) -> None:
        self._stack.enter_context(preserved_state(self.model))
        # Eager, no autocast, math attention: the exact function, with a double backward (see execution.py).
        self._stack.enter_context(probe_execution(self.model, self.probe.device))
        self.model.train(self.probe.model_mode == "train")
        named = dict(self.model.named_parameters())
        self.base = [named[n].detach() for n in self.space.names]
        self.dtype = self.base[0].dtype
        self.fixed = {n: p.detach() for n, p in named.items() if n not in set(self.space.names)}
        # In train mode BatchNorm writes running statistics in place: give it throwaway copies.
        self.buffers = (
            {n: b.detach().clone() for n, b in self.model.named_buffers()} if self.probe.model_mode == "train" else {}
        )
        if not self.probe._row_mean_checked:
            self._check_row_mean()

    def _check_row_mean(self) -> None:
        # An undeclared loss_fn is computed as a per-row mean; refuse it now, before any number is
        # reported, if a chunk shows otherwise (one forward pass, once per probe).
        counts = torch.zeros(2, dtype=torch.float64, device=self.probe.device)  # checked, non-finite
        with distributed.Lockstep() as step, torch.no_grad():
            for i, (x, y, _) in enumerate(self.probe.batches()):
                status = self.probe.check_row_mean(self.forward(x, self.base, i), y)
                counts[0] += status == "checked"
                counts[1] += status == "nonfinite"
        self.num_forwards += 1
        (counts,) = step.all_reduce(counts)
        if float(counts[0]) > 0:
            self.probe._row_mean_checked = True
        elif float(counts[1]) == 0:
            raise ObjectiveError(
                f"loss_fn {getattr(self.probe.loss_fn, '__name__', type(self.probe.loss_fn).__name__)}: cannot "
                "check that it is a per-row mean (every probe batch has one row); use batch_size >= 2, or declare "
                "it as il.DecomposedLoss(total_fn, normalizer=...)"
            )
        # Otherwise every loss is NaN/inf (so is every result): check again on the next session.

    def __exit__(self, *exc: Any) -> None:
        self._graph = None
        self._stack.close()

    # -- points ---------------------------------------------------------------------------------
    @property
    def theta(self) -> torch.Tensor:
        """The current weights of the selected parameters as one flat vector (a copy)."""
        return self.space.flatten(self.base)

    def _params_at(self, point: torch.Tensor | Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
        if point is None:
            return self.base
        if isinstance(point, torch.Tensor):
            return self.space.split(point)
        return list(point)

    def forward(self, x: Any, params: Sequence[torch.Tensor], batch_index: int = 0) -> Any:
        """Model output on ``x`` with the selected parameters set to ``params`` (functionally)."""
        if self.probe.model_mode == "train":
            torch.manual_seed(self.probe.seed + self.batch_offset + batch_index)
        tensors = dict(self.fixed)
        tensors.update(zip(self.space.names, params))
        tensors.update(self.buffers)
        args = x if isinstance(x, tuple) else (x,)
        return functional_call(self.model, tensors, args, strict=False)

    def batch_objective(self, output: Any, y: Any, i: int) -> torch.Tensor:
        """Batch ``i``'s contribution to the probe objective, from the model's raw ``output`` on it.

        ``output`` is what :meth:`forward` returns for batch ``i`` of :meth:`Probe.batches` (``y`` its
        targets); ``output_transform`` and the loss's decomposition are applied here. Summed over this
        rank's batches (and all-reduced over ranks) it is exactly the probe objective ``L(θ)``, so its
        derivatives summed the same way are the exact gradient and Hessian. It is a plain function of
        ``output`` (``torch.func`` transforms apply). ``i`` is the batch's index in :meth:`Probe.batches`.
        """
        return self.probe.objective(output, y)

    def _batch_loss(self, params: Sequence[torch.Tensor], x: Any, y: Any, i: int) -> tuple[torch.Tensor, Any]:
        y_pred = self.forward(x, params, i)
        return self.batch_objective(y_pred, y, i), y_pred

    # -- exact quantities ----------------------------------------------------------------------
    def evaluate(self, point: torch.Tensor | Sequence[torch.Tensor] | None = None) -> ProbeEvaluation:
        """Loss and accuracy at ``point`` (flat vector or per-parameter tensors; default: current weights)."""
        params = self._params_at(point)
        # loss, correct, counted targets, "not classification" flag
        stats = torch.zeros(4, dtype=torch.float64, device=self.probe.device)
        reason: str | None = None
        with distributed.Lockstep() as step, torch.no_grad():
            for i, (x, y, _) in enumerate(self.probe.batches()):
                loss, y_pred = self._batch_loss(params, x, y, i)
                stats[0] += loss.double()
                c = self.probe.count_correct(y_pred, y)
                if isinstance(c, str):
                    reason = reason or c
                else:
                    stats[1] += c[0].double()
                    stats[2] += c[1].double()
            stats[3] = 0.0 if reason is None else 1.0
        self.num_forwards += 1
        (stats,) = step.all_reduce(stats)
        loss_value = float(stats[0])
        _warn_if_nonfinite(loss_value)
        accuracy = None
        if float(stats[3]) == 0 and float(stats[2]) > 0:
            accuracy = float(stats[1]) / float(stats[2])
        elif float(stats[3]) == 0:
            reason = "every target is ignore_index"
        elif reason is None:
            reason = "another rank's output or targets are not class scores and labels (see its log)"
        if reason is not None and not self.probe._accuracy_reason_logged:
            self.probe._accuracy_reason_logged = True
            # Loud when the targets are labels (accuracy was likely expected), quiet for regression.
            labels = any(t.dtype in _LABEL_DTYPES for t in _tree_leaves(self.probe.targets))
            logger.log(logging.WARNING if labels else logging.INFO, "Probe: no accuracy: %s", reason)
        return ProbeEvaluation(
            loss=loss_value, accuracy=accuracy, num_samples=self.probe.num_samples, accuracy_reason=reason
        )

    def loss(self, point: torch.Tensor | Sequence[torch.Tensor] | None = None) -> float:
        """The exact probe objective at ``point`` (default: current weights)."""
        return self.evaluate(point).loss

    def loss_and_grad(self, point: torch.Tensor | Sequence[torch.Tensor] | None = None) -> tuple[float, torch.Tensor]:
        """The exact probe objective and its gradient (flat) at ``point`` (default: current weights)."""
        leaves = [t.detach().requires_grad_(True) for t in self._params_at(point)]
        grad = torch.zeros(self.space.numel, dtype=self.dtype, device=leaves[0].device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=leaves[0].device)
        with distributed.Lockstep() as step, torch.enable_grad():
            for i, (x, y, _) in enumerate(self.probe.batches()):
                loss, _ = self._batch_loss(leaves, x, y, i)
                g = torch.autograd.grad(loss, leaves, allow_unused=True)
                grad += _flat(g, leaves)
                loss_sum += loss.detach().double()
        self.num_grads += 1
        grad, loss_sum = step.all_reduce(grad, loss_sum)
        loss_value = float(loss_sum)
        _warn_if_nonfinite(loss_value)
        return loss_value, grad

    def grad(self, point: torch.Tensor | Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Exact gradient (flat) of the probe objective at ``point``."""
        return self.loss_and_grad(point)[1]

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Exact Hessian-vector product ``H v`` at the current weights (double backward)."""
        if v.shape != (self.space.numel,):
            raise ValueError(f"v must be a flat vector of {self.space.numel} entries, got shape {tuple(v.shape)}")
        v = v.to(dtype=self.dtype)
        hv = v  # only a placeholder of the right shape should this rank's part fail
        with distributed.Lockstep() as step:
            graph = self._cached_graph()
            if graph is not None:
                leaves, weighted_grad = graph
                pairs = [(w, vi) for w, vi in zip(weighted_grad, self.space.split(v)) if w.requires_grad]
                out = torch.autograd.grad(
                    [w for w, _ in pairs],
                    leaves,
                    grad_outputs=[vi for _, vi in pairs],
                    retain_graph=True,
                    allow_unused=True,
                )
                hv = _flat(out, leaves)
                if self.cached_batches < len(self.probe.batches()):
                    hv = hv + self._hvp_recompute(v, start=self.cached_batches)
            else:
                hv = self._hvp_recompute(v)
        self.num_hvps += 1
        (hv,) = step.all_reduce(hv)
        return hv

    def _hvp_recompute(self, v: torch.Tensor, start: int = 0) -> torch.Tensor:
        leaves = [t.detach().requires_grad_(True) for t in self.base]
        vs = self.space.split(v)
        hv = torch.zeros_like(v)
        with torch.enable_grad():
            for i, (x, y, _) in enumerate(self.probe.batches()):
                if i < start:
                    continue  # in the cached graph
                loss, _ = self._batch_loss(leaves, x, y, i)
                g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                used = [(gi, vi, li) for gi, vi, li in zip(g, vs, leaves) if gi is not None]
                if not used:
                    continue
                dot = sum((gi * vi).sum() for gi, vi, _ in used)
                if not dot.requires_grad:
                    continue  # the gradient is constant in the weights: this batch adds nothing
                out = torch.autograd.grad(dot, leaves, allow_unused=True)
                hv += _flat(out, leaves)
        return hv

    def _cached_graph(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        if self._graph is not None:
            return self._graph
        if self._graph_failed or self.probe.max_graph_bytes == 0:
            return None
        counter = _SavedBytes(self.probe.max_graph_bytes)
        leaves = [t.detach().requires_grad_(True) for t in self.base]
        batches = self.probe.batches()
        weighted: list[torch.Tensor] | None = None
        cached = 0
        kept_bytes = 0
        loss = g = scaled = candidate = None
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            for i, (x, y, _) in enumerate(batches):
                loss, _ = self._batch_loss(leaves, x, y, i)
                g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                g = [torch.zeros_like(li) if gi is None else gi for gi, li in zip(g, leaves)]
                scaled = g  # batch_objective already carries the batch's share of the objective
                candidate = scaled if weighted is None else [a + b for a, b in zip(weighted, scaled)]
                if counter.exceeded:
                    # Keep the batches that fit and recompute only the rest per HVP: memory and time
                    # then trade off in proportion instead of falling off a cliff at the limit.
                    break
                weighted, cached, kept_bytes = candidate, i + 1, counter.bytes
            del loss, g, scaled, candidate  # the batch over the limit: its graph is freed here
        if cached == 0 or weighted is None or not any(w.requires_grad for w in weighted):
            self._graph_failed = True
            logger.debug("Probe: gradient graph needs more than %d bytes; recomputing per HVP", counter.limit)
            return None
        if cached < len(batches):
            logger.debug("Probe: %d of %d batches' gradient graph kept (%d bytes)", cached, len(batches), kept_bytes)
        self._graph = (leaves, weighted)
        self.cached_batches = cached
        self.saved_graph_bytes = kept_bytes
        return self._graph


class _SavedBytes:
    """Counts the distinct storage bytes the autograd graph saves, to stay within a memory budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._seen: set[int] = set()

    @property
    def exceeded(self) -> bool:
        return self.bytes > self.limit

    def pack(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        try:
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += storage.nbytes()
        except (RuntimeError, NotImplementedError):
            self.bytes += t.numel() * t.element_size()
        # Never keep ``t`` itself: a tensor saved by its own backward node (the output of ReLU, softmax,
        # exp) would then hold that node through its grad_fn, a reference cycle inside autograd's C++
        # graph that Python's collector cannot see, so every cached graph would outlive its session.
        # A detached alias shares the storage and the version counter; autograd re-attaches the
        # grad_fn or grad accumulator on unpack.
        return t.detach(), t._version

    @staticmethod
    def unpack(packed: tuple[torch.Tensor, int]) -> torch.Tensor:
        t, version = packed
        # With saved-tensor hooks autograd skips its own check that a saved tensor was not modified in
        # place since it was saved (it cannot know what the hook returns): redo it, or an in-place op
        # (``nn.ReLU(inplace=True)`` on a saved tensor) would silently corrupt the gradient.
        if t._version != version:
            raise RuntimeError(
                "a tensor saved for the gradient graph was modified by an in-place operation "
                f"(version {t._version}, saved at version {version}); the Hessian-vector product would be wrong"
            )
        return t


def _flat(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, like)])


def _warn_if_nonfinite(loss: float) -> None:
    if not math.isfinite(loss):
        warnings.warn(
            f"Probe: the loss is not finite ({loss}); results computed from it are NaN", RuntimeWarning, stacklevel=3
        )


def _check_device(model: nn.Module, probe: Probe) -> None:
    device = model_device(model)
    if probe.device is not None and device.type != probe.device.type:
        raise ValueError(
            f"the probe's samples are on {probe.device} but the model is on {device}: "
            "build the Probe with device= matching the model"
        )
