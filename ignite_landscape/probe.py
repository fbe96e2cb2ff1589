"""The Probe: a fixed set of samples and the exact objective every landscape quantity is computed on.

A :class:`Probe` takes the first ``num_samples`` samples of some data once and keeps exactly those,
so a quantity measured at epoch 3 and at epoch 30 is measured on the same samples. Every loss,
gradient and Hessian-vector product (HVP) over the probe is of one objective, what ``loss_fn``
returns on all probe samples as one batch, ``L(θ) = loss_fn(output_transform(model(X)), y)``,
computed exactly whatever the batch split (:mod:`ignite_landscape.objective`: any reduction, class
weights, ignored targets; in ``model_mode="train"`` BatchNorm's batch statistics make the model's
output itself depend on the split).

Computations run in a :class:`~ignite_landscape.session.ProbeSession` (:mod:`ignite_landscape.session`),
opened with :meth:`Probe.session`; it never writes the model and restores it bit-for-bit.

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ignite_landscape import distributed
from ignite_landscape.objective import (
    Decomposition,
    ObjectiveError,
    check_on_fake_predictions,
    check_row_mean,
    decompose,
)
from ignite_landscape.params import ParamsArg
from ignite_landscape.samples import (
    LABEL_DTYPES,
    count_correct,
    default_prepare_batch,
    fingerprint,
    is_single_batch,
    num_rows,
    read_samples,
    rows,
    take_rows,
    tree_leaves,
)
from ignite_landscape.session import ProbeEvaluation, ProbeSession

__all__ = ["Probe", "ProbeSession", "ProbeEvaluation", "MODEL_MODES"]

logger = logging.getLogger(__name__)

MODEL_MODES = ("eval", "train")
LossFn = Callable[[Any, Any], torch.Tensor]


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

    Attributes:
        inputs: the kept inputs (a tensor or a tree of them), ``targets`` the kept targets.
        prepare_batch: the ``prepare_batch`` used to read the data (Ignite's default when none is given).
        objective_checked: whether ``loss_fn`` is known to be computed exactly in chunks (always for a
            torch loss or a ``DecomposedLoss``; for an undeclared callable, once a session checked it).
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
        if data is None or isinstance(data, (str, bytes)) or not (is_single_batch(data) or isinstance(data, Iterable)):
            raise TypeError(
                f"data must be a DataLoader, an iterable of batches or one (x, y) batch, got {type(data).__name__}"
            )

        self.loss_fn = loss_fn
        self.output_transform = output_transform
        self.decomposition: Decomposition = decompose(loss_fn)
        # An undeclared callable is checked to be a per-row mean on the first session.
        self.objective_checked = not self.decomposition.needs_check
        self._accuracy_reason_logged = False
        self._normalizer = 1.0
        self.model_mode = model_mode
        self.max_graph_bytes = max_graph_bytes
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else None
        self.prepare_batch = prepare_batch or default_prepare_batch
        self._loss_checked = False
        self._uniform_weights: bool | None = None

        inputs, targets, first_batch, data_size = read_samples(data, num_samples, self.prepare_batch, self.device)
        self.inputs = inputs
        self.targets = targets
        self.global_num_samples = num_rows(targets)
        # The data set the samples stand for (the finite-population correction of the noise scale).
        self.population_size = population_size if population_size is not None else data_size
        if self.population_size is not None and self.population_size < num_rows(targets):
            raise ValueError(
                f"population_size={self.population_size} is smaller than the probe's {num_rows(targets)} samples"
            )
        # Under ignite.distributed each rank evaluates a disjoint, contiguous shard of the global set,
        # decided on first use: the process group may not exist yet when the probe is built.
        self._layout_key: tuple[int, int] | None = None
        self._layout_value = (0, self.global_num_samples, self.global_num_samples, 0)
        self.batch_size = min(batch_size or first_batch, self.global_num_samples)
        if self.device is None:
            self.device = tree_leaves(inputs)[0].device
        if self.decomposition.needs_check:
            n = num_rows(targets)
            for lo in range(0, n, self.batch_size):
                if check_on_fake_predictions(loss_fn, rows(targets, lo, min(lo + self.batch_size, n))) == "skipped":
                    break

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
        """``(start, stop, total, first_batch)``: this rank's rows, all ranks' samples, its first batch.

        ``start:stop`` are the rows of :attr:`inputs` this rank evaluates, ``total`` the number of samples over
        all ranks, and ``first_batch`` the global index of this rank's first batch.

        In one process: ``(0, n, n, 0)``. Under a process group the first call is collective (every rank
        must make it; :meth:`session` does): if all ranks hold the same samples, each evaluates its own
        contiguous shard of them; if they hold different ones (a loader with a ``DistributedSampler``),
        each evaluates its share of its own, and the probe is their union. In ``model_mode="train"`` the
        shards are whole batches, so every rank evaluates exactly the batches (and dropout masks) that a
        single process would.
        """
        key = (distributed.world_size(), distributed.rank())
        if key != self._layout_key:
            n = num_rows(self.targets)
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
            y = rows(self.targets, lo, min(lo + self.batch_size, stop))
            local += torch.as_tensor(weight(y), dtype=torch.float64).detach().cpu()
        if distributed.world_size() > 1:
            device = tree_leaves(self.targets)[0].device
            local = distributed.all_reduce(local.reshape(1).to(device)).reshape(()).cpu()
        return float(local)

    @property
    def normalizer(self) -> float:
        """The probe objective's denominator over all its samples.

        The element count, the sum of the targets' class weights, the number of non-ignored targets or of
        rows, as ``loss_fn``'s reduction divides by; ``1.0`` for a sum (collective on first use under a
        process group, like :meth:`layout`).
        """
        self.layout()
        return self._normalizer

    def objective_scale(self, batch_size: int) -> float:
        """How large one trainer batch's objective is relative to the probe objective.

        The batch holds ``batch_size`` samples; the per-sample losses are the same.

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
        """The model output as ``loss_fn`` and accuracy take it.

        ``output_transform``, or the default: a tensor as is, an object's ``.logits`` tensor.
        """
        if self.output_transform is not None:
            return self.output_transform(output)
        if not isinstance(output, (torch.Tensor, Mapping, tuple, list)):
            logits = getattr(output, "logits", None)
            if isinstance(logits, torch.Tensor):
                return logits
        return output

    def objective(self, output: Any, y: Any) -> torch.Tensor:
        """One chunk's contribution to the probe objective from the model's raw ``output`` on it.

        ``total(output_transform(output), y) / normalizer``. Summed over all chunks (and ranks) it is
        exactly ``L(θ)``; it works under ``torch.func`` transforms (``vmap``, ``grad``).
        """
        total = self.decomposition.total(self.transform(output), y)
        self.check_loss(total)
        return total / self.normalizer  # fixed once the layout is (collective on first use, like layout())

    def check_row_mean(self, output: Any, y: Any) -> str:
        """For an undeclared ``loss_fn``: check on one chunk that it is a per-row mean.

        See :func:`~ignite_landscape.objective.check_row_mean`; ``"checked"`` when that chunk could tell.
        """
        if not self.decomposition.needs_check:
            return "checked"
        return check_row_mean(self.loss_fn, self.transform(output), y)

    def check_objective(self, model: nn.Module) -> None:
        """Check now, on ``model``, what the first session would: that an undeclared ``loss_fn`` is a per-row mean.

        One forward pass over the probe, once per probe; nothing for a torch loss or a
        :class:`~ignite_landscape.objective.DecomposedLoss`. Handlers call it at construction.

        Raises:
            ObjectiveError: (a ``ValueError``) naming ``loss_fn`` and the fix when it is not a per-row mean.
        """
        if self.objective_checked:
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
        return count_correct(self.transform(output), y, self.decomposition.ignore_index)

    def _distributed_layout(self) -> tuple[int, int, int, int]:
        local = fingerprint(num_rows(self.targets), self.inputs, self.targets)
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
            out.append((rows(self.inputs, lo, hi), rows(self.targets, lo, hi), hi - lo))
        return out

    def session(self, model: nn.Module, params: ParamsArg = None) -> ProbeSession:
        """A session that computes on ``model`` at its current weights and leaves it exactly as it was.

        Use it as a context manager to set the model up once for many computations (see
        :class:`~ignite_landscape.session.ProbeSession`).

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

    def subset(self, index: torch.Tensor) -> Probe:
        """A probe of the samples ``index`` of this one (in that order), with its loss, transform, mode and seed.

        The subset is drawn from the same data set, so it keeps ``population_size``.

        Example:
            >>> data = (torch.randn(6, 2), torch.randint(0, 2, (6,)))
            >>> p = Probe(data, torch.nn.functional.cross_entropy, population_size=100)
            >>> sub = p.subset(torch.tensor([5, 0, 1]))
            >>> sub.num_samples, sub.population_size
            (3, 100)
        """
        x, y = take_rows(self.inputs, index), take_rows(self.targets, index)
        n = int(index.numel())
        sub = Probe(
            [(x, y)],
            self.loss_fn,
            num_samples=n,
            batch_size=min(self.batch_size, n),
            device=self.device,
            model_mode=self.model_mode,
            max_graph_bytes=self.max_graph_bytes,
            seed=self.seed,
            output_transform=self.output_transform,
            population_size=self.population_size,
        )
        sub.objective_checked = self.objective_checked  # the same loss_fn: checked once is checked
        return sub

    def uniform_sample_weights(self) -> bool:
        """Whether every probe sample carries the same weight in the objective's normaliser (collective).

        ``False`` for class weights or ignored targets that differ between samples, and for structured
        targets whose per-row weights cannot be told apart. Computed once per probe.
        """
        if self._uniform_weights is not None:
            return self._uniform_weights
        weight = self.decomposition.weight
        uneven = 0.0
        if weight is not None:
            if not isinstance(self.targets, torch.Tensor):
                uneven = 1.0  # structured targets: per-row weights cannot be told apart, refuse
            else:
                per_row = torch.stack(
                    [
                        torch.as_tensor(weight(self.targets[i : i + 1]), dtype=torch.float64).cpu()
                        for i in range(self.targets.shape[0])
                    ]
                )
                uneven = float(not torch.allclose(per_row, per_row[0].expand_as(per_row), rtol=0.0, atol=0.0))
        if distributed.world_size() > 1:
            flag = torch.tensor([uneven], dtype=torch.float64, device=self.device)
            uneven = float(distributed.all_reduce(flag, op="MAX")[0])
        self._uniform_weights = uneven == 0.0
        return self._uniform_weights

    def report_no_accuracy(self, reason: str) -> None:
        """Log, once per probe, why accuracy is not computed.

        A warning when the targets are class labels (accuracy was likely expected), an info message otherwise
        (regression).
        """
        if self._accuracy_reason_logged:
            return
        self._accuracy_reason_logged = True
        labels = any(t.dtype in LABEL_DTYPES for t in tree_leaves(self.targets))
        logger.log(logging.WARNING if labels else logging.INFO, "Probe: no accuracy: %s", reason)

    def __repr__(self) -> str:
        """The probe's sample count, batch size, device and model mode."""
        return (
            f"Probe(num_samples={self.num_samples}, batch_size={self.batch_size}, "
            f"device={self.device}, model_mode={self.model_mode!r})"
        )
