"""ProbeSession: exact loss, gradients, curvature products and evaluations of one model on one probe.

A session is complete when constructed: it reads the selected parameters (the point every quantity
is computed at), their space, dtype and device once. It evaluates the model *functionally*
(``torch.func.functional_call`` with tensors it owns), so the model's parameters, ``.grad`` and flags
are never written, and every computation runs inside :func:`~ignite_landscape.restore.preserved_state`:
for the whole block when the session is used as a context manager (the cheap way to run many
computations), or around each call otherwise. Either way the model is bit-for-bit as it was after.

The operations measures build on are public methods: :meth:`ProbeSession.evaluate` and
:meth:`~ProbeSession.evaluate_many` (loss and accuracy at one or many points), :meth:`~ProbeSession.loss_and_grad`,
:meth:`~ProbeSession.hvp_operator` (``v ↦ H v`` with ``shape``, ``dtype`` and ``device``),
:meth:`~ProbeSession.operator` (the same bookkeeping for any other curvature product),
:meth:`~ProbeSession.per_sample_gradients` and :meth:`~ProbeSession.subset_gradients`. The counters
``num_hvps``, ``num_grads`` and ``num_forwards`` are advanced by these methods only.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(10, 4), torch.randint(0, 3, (10,))), torch.nn.functional.cross_entropy)
    >>> s = ProbeSession(probe, model)  # usable at once; the model is restored after every call
    >>> H = s.hvp_operator()
    >>> H.shape, H(torch.ones(15)).shape, s.num_hvps
    ((15, 15), torch.Size([15]), 1)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ignite_landscape import distributed
from ignite_landscape.execution import probe_execution
from ignite_landscape.objective import ObjectiveError
from ignite_landscape.operators import CurvatureOperator, HessianProduct, flatten_grads
from ignite_landscape.params import ParamsArg, ParamSpace, model_device, unwrap_model
from ignite_landscape.restore import preserved_state
from ignite_landscape.samples import rows, take_rows, tree_cat, tree_map

if TYPE_CHECKING:
    from ignite_landscape.probe import Probe

__all__ = ["ProbeSession", "ProbeEvaluation", "ProbeEvaluations"]

logger = logging.getLogger(__name__)

Point = torch.Tensor | Sequence[torch.Tensor] | None


@dataclass(frozen=True)
class ProbeEvaluation:
    """Loss (and top-1 accuracy for classification targets) of a model on the probe.

    Attributes:
        loss: the probe objective (``loss_fn`` over all probe samples as one batch), exactly.
        accuracy: top-1 accuracy in [0, 1] over the counted targets (every target but ``ignore_index``
            ones), or ``None`` when the output and targets are not class scores and class labels.
        num_samples: how many samples the numbers are computed on.
        accuracy_reason: why ``accuracy`` is ``None`` (``None`` when it is computed).

    Example:
        >>> ProbeEvaluation(loss=0.5, accuracy=0.75, num_samples=8).error
        0.25
    """

    loss: float
    accuracy: float | None
    num_samples: int
    accuracy_reason: str | None = None

    @property
    def error(self) -> float | None:
        """Top-1 error, ``1 - accuracy``."""
        return None if self.accuracy is None else 1.0 - self.accuracy


@dataclass(frozen=True)
class ProbeEvaluations:
    """Loss and accuracy at many points (:meth:`ProbeSession.evaluate_many`), each as :meth:`ProbeSession.evaluate`.

    Attributes:
        loss: float64 ``(K,)`` on the CPU, the probe objective at each point.
        accuracy: float64 ``(K,)`` top-1 accuracy at each point, or ``None`` when the output and targets
            are not class scores and labels.

    Example:
        >>> ProbeEvaluations(torch.zeros(2, dtype=torch.float64), None).error is None
        True
    """

    loss: torch.Tensor
    accuracy: torch.Tensor | None

    @property
    def error(self) -> torch.Tensor | None:
        """Top-1 error at each point, ``1 - accuracy``."""
        return None if self.accuracy is None else 1.0 - self.accuracy


def _reduced(
    step: distributed.Lockstep, loss_sum: torch.Tensor, correct: torch.Tensor, counted: torch.Tensor, classify: bool
) -> ProbeEvaluations:
    """Per-point losses and accuracies summed over ranks; no accuracy unless every rank's outputs classify.

    ``loss_sum`` and ``correct`` hold one entry per point (float64), ``counted`` the targets counted once.
    """
    flags = torch.stack([counted, torch.tensor(0.0 if classify else 1.0, dtype=torch.float64, device=counted.device)])
    stats, flags = step.all_reduce(torch.stack([loss_sum, correct]), flags)
    stats, flags = stats.cpu(), flags.cpu()
    ok = float(flags[1]) == 0 and float(flags[0]) > 0
    return ProbeEvaluations(stats[0], stats[1] / float(flags[0]) if ok else None)


class ProbeSession:
    """Exact computations of one model on one probe, at the weights the model has at construction.

    Flat vectors (gradients, HVP inputs and outputs, points) use the order of :attr:`space`.
    Under a process group, construction is collective (every rank builds its session at the same point).

    Used as a context manager, the model is set up once for the whole block (probe mode, exact
    execution) and restored on exit; without one, around each call. The gradient graph the HVPs keep
    is freed on exit (or with the session).

    Args:
        probe: the samples and objective.
        model: the model (DDP/DataParallel wrappers are looked through).
        params: which parameters span the space (see :meth:`ParamSpace.from_model`).

    Attributes:
        probe: the probe; ``model`` the unwrapped model.
        space: the selected parameters (:class:`~ignite_landscape.params.ParamSpace`).
        base: the selected parameters' values at construction (detached views, not copies: read-only).
        dtype: their dtype; ``device`` where they live.
        fixed: the other parameters by name; ``buffers`` the buffers the forward uses instead of the
            model's (throwaway copies in ``model_mode="train"``, else none).
        batch_offset: the global index of this rank's first probe batch (0 in one process): in
            ``model_mode="train"`` batch ``i`` of :meth:`Probe.batches` draws its dropout masks from the seed
            ``probe.seed + batch_offset + i``, as in a single process.
        num_hvps: curvature-vector products so far; ``num_grads`` and ``num_forwards`` the gradient and
            loss-only passes over the probe (advanced by the session's methods only).

    Raises:
        ValueError: if the model is not on the probe's device, for SyncBatchNorm in ``model_mode="train"``
            under a process group, or (``ObjectiveError``) for an undeclared ``loss_fn`` that is not a
            per-row mean.

    Example:
        >>> import torch
        >>> from ignite_landscape import Probe
        >>> probe = Probe((torch.randn(8, 3), torch.randint(0, 2, (8,))), torch.nn.functional.cross_entropy)
        >>> with probe.session(torch.nn.Linear(3, 2)) as s:
        ...     many = s.evaluate_many([s.theta, 2 * s.theta])
        ...     one = s.evaluate(2 * s.theta)
        >>> many.loss[1].item() == one.loss
        True
    """

    def __init__(self, probe: Probe, model: nn.Module, params: ParamsArg = None) -> None:
        self.probe = probe
        self.model = unwrap_model(model)
        self.space = ParamSpace.from_model(self.model, params)
        _check_device(self.model, probe)
        if probe.model_mode == "train" and distributed.world_size() > 1:
            if any(isinstance(m, nn.SyncBatchNorm) for m in self.model.modules()):
                raise ValueError(
                    "model_mode='train' with SyncBatchNorm under a process group would synchronise batch "
                    "statistics across ranks: use model_mode='eval'"
                )
        # Collective on first use: every rank builds the session at the same point.
        self.batch_offset = probe.layout()[3]
        named = dict(self.model.named_parameters())
        self.base = [named[n].detach() for n in self.space.names]
        self.dtype = self.base[0].dtype
        self.device = self.base[0].device
        selected = set(self.space.names)
        self.fixed = {n: p.detach() for n, p in named.items() if n not in selected}
        # In train mode BatchNorm writes running statistics in place: give it throwaway copies.
        self.buffers = (
            {n: b.detach().clone() for n, b in self.model.named_buffers()} if probe.model_mode == "train" else {}
        )
        self.num_hvps = 0
        self.num_grads = 0
        self.num_forwards = 0
        self._depth = 0  # nesting of restoring scopes: only the outermost sets up and restores the model
        self._stack: ExitStack | None = None
        self._hvp = HessianProduct(self)
        # Through hvp(): every Hessian product of the session takes that one path.
        self._hessian = CurvatureOperator(lambda v: self.hvp(v), self.space.numel, self.dtype, self.device, "hessian")
        if not probe.objective_checked:
            self._check_row_mean()

    # -- the restoring scope -------------------------------------------------------------------
    @contextmanager
    def _scope(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with preserved_state(self.model), probe_execution(self.model, self.probe.device):
            # Eager, no autocast, math attention: the exact function, with a double backward (see execution.py).
            self.model.train(self.probe.model_mode == "train")
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0

    def __enter__(self) -> ProbeSession:
        """Open the session: the model in the probe's mode with its state saved (one block at a time)."""
        if self._stack is not None:
            raise RuntimeError("this ProbeSession is already open: use one `with` block at a time")
        stack = ExitStack()
        stack.enter_context(self._scope())
        self._stack = stack
        return self

    def __exit__(self, *exc: Any) -> None:
        """Close the session: release the Hessian product and restore the model as it was."""
        self._hvp.release()
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _check_row_mean(self) -> None:
        # An undeclared loss_fn is computed as a per-row mean; refuse it now, before any number is
        # reported, if a chunk shows otherwise (one forward pass, once per probe).
        counts = torch.zeros(2, dtype=torch.float64, device=self.probe.device)  # checked, non-finite
        with self._scope(), distributed.Lockstep() as step, torch.no_grad():
            for i, (x, y, _) in enumerate(self.probe.batches()):
                status = self.probe.check_row_mean(self.forward(x, self.base, i), y)
                counts[0] += status == "checked"
                counts[1] += status == "nonfinite"
        self.num_forwards += 1
        (counts,) = step.all_reduce(counts)
        if float(counts[0]) > 0:
            self.probe.objective_checked = True
        elif float(counts[1]) == 0:
            raise ObjectiveError(
                f"loss_fn {getattr(self.probe.loss_fn, '__name__', type(self.probe.loss_fn).__name__)}: cannot "
                "check that it is a per-row mean (every probe batch has one row); use batch_size >= 2, or declare "
                "it as il.DecomposedLoss(total_fn, normalizer=...)"
            )
        # Otherwise every loss is NaN/inf (so is every result): check again on the next session.

    # -- points ---------------------------------------------------------------------------------
    @property
    def theta(self) -> torch.Tensor:
        """The current weights of the selected parameters as one flat vector (a copy)."""
        return self.space.flatten(self.base)

    def _params_at(self, point: Point) -> list[torch.Tensor]:
        if point is None:
            return self.base
        if isinstance(point, torch.Tensor):
            return self.space.split(point)
        return list(point)

    def forward(self, x: Any, params: Sequence[torch.Tensor], batch_index: int = 0) -> Any:
        """Model output on ``x`` with the selected parameters set to ``params`` (functionally)."""
        if self._depth:
            return self._forward(x, params, batch_index)
        with self._scope():
            return self._forward(x, params, batch_index)

    def _forward(
        self, x: Any, params: Sequence[torch.Tensor], batch_index: int, buffers: dict[str, torch.Tensor] | None = None
    ) -> Any:
        if self.probe.model_mode == "train":
            torch.manual_seed(self.probe.seed + self.batch_offset + batch_index)
        tensors = dict(self.fixed)
        tensors.update(zip(self.space.names, params))
        tensors.update(self.buffers if buffers is None else buffers)
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

    # -- loss and accuracy ----------------------------------------------------------------------
    def evaluate(self, point: Point = None, *, buffers: dict[str, torch.Tensor] | None = None) -> ProbeEvaluation:
        """Loss and accuracy at ``point`` (flat vector or per-parameter tensors; default: current weights).

        Args:
            point: the selected parameters' values.
            buffers: values of the model's buffers by name (e.g. interpolated BatchNorm statistics); by
                default the model's own (in ``model_mode="train"``, throwaway copies of them).
        """
        params = self._params_at(point)
        # loss, correct, counted targets, "not classification" flag
        stats = torch.zeros(4, dtype=torch.float64, device=self.probe.device)
        reason: str | None = None
        with self._scope(), distributed.Lockstep() as step, torch.no_grad():
            for i, (x, y, _) in enumerate(self.probe.batches()):
                y_pred = self._forward(x, params, i, buffers)
                stats[0] += self.batch_objective(y_pred, y, i).double()
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
        if reason is not None:
            self.probe.report_no_accuracy(reason)
        return ProbeEvaluation(
            loss=loss_value, accuracy=accuracy, num_samples=self.probe.num_samples, accuracy_reason=reason
        )

    def loss(self, point: Point = None) -> float:
        """The exact probe objective at ``point`` (default: current weights)."""
        return self.evaluate(point).loss

    def evaluate_many(self, points: Iterable[torch.Tensor]) -> ProbeEvaluations:
        """Loss and accuracy at each flat point of ``points``, exactly as :meth:`evaluate` computes them.

        ``points`` is read lazily, one point at a time (a generator keeps only one in memory). A point
        costs one forward pass over the probe, so per-point overhead matters for small models: rather
        than one ``functional_call`` per point and batch, the model is reparametrized once with views of
        a work buffer owned here; each point is copied into it and the model runs directly. The model's
        own parameters are never written.
        """
        probe = self.probe
        batches = probe.batches()
        train_mode = probe.model_mode == "train"
        work = torch.empty(self.space.numel, dtype=self.dtype, device=self.device)
        tensors = {f"model.{n}": t for n, t in zip(self.space.names, self.space.split(work))}
        tensors.update({f"model.{n}": t for n, t in self.buffers.items()})
        inputs = [x if isinstance(x, tuple) else (x,) for x, _, _ in batches]
        # Per probe batch, the loss (and correct count) at every point, kept as tensors: reducing them once
        # after the sweep saves a handful of small ops and a sync per point, which show on small models.
        losses: list[list[torch.Tensor]] = [[] for _ in batches]
        corrects: list[list[torch.Tensor]] = [[] for _ in batches]
        counted = torch.zeros((), dtype=torch.float64, device=self.device)
        classify = True
        count = 0

        def sweep(model: nn.Module) -> None:
            nonlocal classify, counted, count
            for k, p in enumerate(points):
                work.copy_(p)
                count = k + 1
                for i, (_, y, _) in enumerate(batches):
                    if train_mode:
                        torch.manual_seed(probe.seed + self.batch_offset + i)  # the dropout masks of forward()
                    out = model(*inputs[i])
                    losses[i].append(self.batch_objective(out, y, i))
                    if classify:
                        cc = probe.count_correct(out, y)
                        classify = not isinstance(cc, str)
                        if classify:
                            corrects[i].append(cc[0])
                            if k == 0:  # the targets counted do not depend on the point
                                counted = counted + cc[1].double()

        # A rank that fails mid-sweep still joins the reduction, so the others never wait forever.
        with self._scope(), distributed.Lockstep() as step, torch.no_grad():
            functional_call(_Sweep(self.model), tensors, (sweep,), strict=False)
        self.num_forwards += count
        # Summed over batches in order, as evaluate() does: the same point gives the same bits.
        loss_sum = torch.zeros(count, dtype=torch.float64, device=self.device)
        correct = torch.zeros(count, dtype=torch.float64, device=self.device)
        for i in range(len(batches) if count else 0):
            loss_sum += torch.stack(losses[i]).double()
            if classify:
                correct += torch.stack(corrects[i]).double()
        return _reduced(step, loss_sum, correct, counted, classify)

    def evaluate_stacked(self, points: torch.Tensor) -> ProbeEvaluations:
        """Loss and accuracy at each row of ``points`` (a ``(B, P)`` stack), with one ``vmap`` per probe batch.

        Faster than :meth:`evaluate_many` for small models, where it applies: a model or loss that
        ``torch.func.vmap`` cannot batch raises (``RuntimeError``, ``NotImplementedError``,
        ``ValueError`` or ``TypeError``) and the caller falls back to :meth:`evaluate_many`.
        """
        probe = self.probe
        batches = probe.batches()
        per_param = [
            t.reshape(points.shape[0], *shape)
            for t, shape in zip(points.split(self.space.numels, dim=1), self.space.shapes)
        ]
        loss_sum = torch.zeros(points.shape[0], dtype=torch.float64, device=points.device)
        correct = torch.zeros(points.shape[0], dtype=torch.float64, device=points.device)
        counted = torch.zeros((), dtype=torch.float64, device=points.device)
        classify = True
        with self._scope(), distributed.Lockstep() as step, torch.no_grad():
            for i, (x, y, _) in enumerate(batches):

                def f(*ps: torch.Tensor, x: object = x, y: object = y, i: int = i) -> tuple[torch.Tensor, object]:
                    out = self._forward(x, ps, i)
                    return self.batch_objective(out, y, i), out

                losses, outs = vmap(f)(*per_param)
                if losses.shape != (points.shape[0],):
                    raise ValueError(f"loss_fn must return a scalar, got shape {tuple(losses.shape[1:])}")
                loss_sum += losses.double()
                for b in range(points.shape[0] if classify else 0):
                    cc = probe.count_correct(tree_map(lambda t, b=b: t[b], outs), y)
                    if isinstance(cc, str):
                        classify = False
                        break
                    correct[b] += cc[0].double()
                    if b == 0:
                        counted = counted + cc[1].double()
        self.num_forwards += points.shape[0]
        return _reduced(step, loss_sum, correct, counted, classify)

    # -- gradients ------------------------------------------------------------------------------
    def loss_and_grad(self, point: Point = None) -> tuple[float, torch.Tensor]:
        """The exact probe objective and its gradient (flat) at ``point`` (default: current weights)."""
        leaves = [t.detach().requires_grad_(True) for t in self._params_at(point)]
        grad_sum = torch.zeros(self.space.numel, dtype=self.dtype, device=leaves[0].device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=leaves[0].device)
        with self._scope(), distributed.Lockstep() as step, torch.enable_grad():
            for i, (x, y, _) in enumerate(self.probe.batches()):
                loss = self.batch_objective(self._forward(x, leaves, i), y, i)
                g = torch.autograd.grad(loss, leaves, allow_unused=True)
                grad_sum += flatten_grads(g, leaves)
                loss_sum += loss.detach().double()
        self.num_grads += 1
        grad_sum, loss_sum = step.all_reduce(grad_sum, loss_sum)
        loss_value = float(loss_sum)
        _warn_if_nonfinite(loss_value)
        return loss_value, grad_sum

    def grad(self, point: Point = None) -> torch.Tensor:
        """Exact gradient (flat) of the probe objective at ``point``."""
        return self.loss_and_grad(point)[1]

    def per_sample_gradients(self, chunk: int) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
        """This rank's exact per-sample gradients ``g_i = n·∇ℓ_i``, ``chunk`` samples at a time, in probe order.

        ``ℓ_i`` is sample ``i``'s share of the probe objective and ``n`` the probe's samples (all ranks),
        so the mean of the ``g_i`` is the probe gradient. Counts one gradient pass once exhausted.

        Yields:
            ``(c, grads)``: the chunk's sample count and one tensor of shape ``(c, *p.shape)`` per selected
            parameter (the session's dtype). Nothing else is held between chunks.
        """
        n_total = self.probe.global_num_samples

        def sample_loss(ps: tuple[torch.Tensor, ...], x: object, y: object) -> torch.Tensor:
            # n·(sample i's share of the probe objective): the mean of these gradients is the probe gradient.
            one = tree_map(lambda t: t.unsqueeze(0), x)
            return self.batch_objective(self._forward(one, ps, 0), tree_map(lambda t: t.unsqueeze(0), y), 0) * n_total

        per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        params = tuple(self.base)
        for x, y, n in self.probe.batches():
            for lo in range(0, n, chunk):
                hi = min(lo + chunk, n)
                with self._scope():  # per chunk: an abandoned generator never holds the model
                    out = per_sample_grad(params, rows(x, lo, hi), rows(y, lo, hi))
                yield hi - lo, out
        self.num_grads += 1

    def subset_gradients(self, subsets: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """For each index set ``S`` of this rank's probe samples, the flat gradient of ``(n/|S|)·Σ_{i∈S} ℓ_i``.

        With ``ℓ_i`` sample ``i``'s share of the probe objective, this is the gradient a batch of the
        samples ``S`` gives as an estimate of the probe gradient (``n`` the probe's samples). Subset ``j``
        is evaluated as batch ``j`` (its dropout masks in ``model_mode="train"``). Counts one gradient
        pass once exhausted (the subsets are meant to be disjoint).
        """
        batches = self.probe.batches()
        x_all = tree_cat([b[0] for b in batches])
        y_all = tree_cat([b[1] for b in batches])
        n_total = self.probe.global_num_samples
        leaves = [t.detach().requires_grad_(True) for t in self.base]
        for j, idx in enumerate(subsets):
            with self._scope(), torch.enable_grad():
                x, y = take_rows(x_all, idx), take_rows(y_all, idx)
                loss = self.batch_objective(self._forward(x, leaves, j), y, j) * (n_total / int(idx.numel()))
                gs = torch.autograd.grad(loss, leaves, allow_unused=True)
            yield flatten_grads(gs, leaves)
        self.num_grads += 1

    # -- curvature products ---------------------------------------------------------------------
    def hvp_operator(self) -> CurvatureOperator:
        """The exact Hessian of the probe objective at the current weights, as an operator ``v ↦ H v``."""
        return self._hessian

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """Exact Hessian-vector product ``H v`` at the current weights (double backward), counted in ``num_hvps``.

        Raises:
            ValueError: if ``v`` is not a flat vector of ``space.numel`` entries.
        """
        if v.shape != (self.space.numel,):
            raise ValueError(f"v must be a flat vector of {self.space.numel} entries, got shape {tuple(v.shape)}")
        return self._counted(self._hvp, v.to(dtype=self.dtype))

    @property
    def cached_batches(self) -> int:
        """Probe batches whose gradient graph is kept between HVPs (0 when none is)."""
        return self._hvp.cached_batches

    @property
    def saved_graph_bytes(self) -> int:
        """Bytes the kept gradient graph's saved tensors take."""
        return self._hvp.saved_graph_bytes

    def operator(self, product: Callable[[torch.Tensor], torch.Tensor], name: str) -> CurvatureOperator:
        """Wrap a matrix-free product on this session's probe as a :class:`CurvatureOperator`.

        ``product(v)`` takes a flat ``v`` already in the session's dtype and is reduced over ranks; each call
        is counted in ``num_hvps``.
        """
        return CurvatureOperator(partial(self._counted, product), self.space.numel, self.dtype, self.device, name)

    def _counted(self, product: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        with self._scope():
            out = product(v)
        self.num_hvps += 1
        return out


class _Sweep(nn.Module):
    """Runs a callback on the wrapped model, so one ``functional_call`` covers a whole sweep of points."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[nn.Module], object]) -> object:
        return fn(self.model)


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
