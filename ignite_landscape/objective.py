"""How a loss decomposes over samples, so that the probe computes it exactly in chunks.

The probe objective is what ``loss_fn`` returns on all probe samples as one batch,
``L(θ) = loss_fn(output_transform(model(X)), y)``. A chunked computation of it is exact when the loss
is a ratio of two sums over samples,

    L = Σ_chunks total(chunk) / Σ_chunks weight(chunk),

where ``total`` is the loss with ``reduction="sum"`` and ``weight`` is the normaliser the loss divides
by, which depends only on the targets (never on the weights θ). Every built-in torch loss has this form:
a ``"mean"`` divides by the number of loss elements, the sum of the target class weights
(``CrossEntropyLoss``/``NLLLoss`` with ``weight=``) or the number of non-ignored targets
(``ignore_index``), ``"batchmean"`` by the number of rows, and ``"sum"`` by nothing.

:func:`decompose` recognises torch loss modules, the ``torch.nn.functional`` losses (also as
``functools.partial`` with keyword settings) and :class:`DecomposedLoss`, the declaration for a
custom loss. Any other callable is assumed to be a per-row mean and the probe verifies that on its
first session (:func:`check_row_mean`), refusing it with an error that names the fix otherwise.

Example:
    >>> import torch
    >>> loss = DecomposedLoss(lambda out, y: ((out - y) ** 2).sum(), normalizer="rows")
    >>> out, y = torch.zeros(4, 2), torch.ones(4, 2)
    >>> float(loss(out, y))  # 8 squared errors of 1 over 4 rows
    2.0
    >>> d = decompose(torch.nn.CrossEntropyLoss(ignore_index=0))
    >>> float(d.weight(torch.tensor([0, 1, 2, 0])))  # two targets are ignored
    2.0
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DecomposedLoss",
    "Decomposition",
    "ObjectiveError",
    "decompose",
    "check_row_mean",
    "check_on_fake_predictions",
    "NORMALIZERS",
]

NORMALIZERS = ("rows", None)

# Losses whose "mean" divides by the number of elements of the (broadcast) loss tensor.
_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
    nn.SoftMarginLoss,
    nn.PoissonNLLLoss,
    nn.HingeEmbeddingLoss,
)
# Losses that reduce each row to one value first, so "mean" divides by the number of rows.
_PER_ROW: tuple[type[nn.Module], ...] = (nn.MultiLabelSoftMarginLoss, nn.MultiMarginLoss, nn.MultiLabelMarginLoss)
_CLASS_INDEX: tuple[type[nn.Module], ...] = (nn.CrossEntropyLoss, nn.NLLLoss)

# The functional forms, with the module that takes the same keyword settings.
_FUNCTIONAL: dict[Callable[..., Any], type[nn.Module]] = {
    F.cross_entropy: nn.CrossEntropyLoss,
    F.nll_loss: nn.NLLLoss,
    F.mse_loss: nn.MSELoss,
    F.l1_loss: nn.L1Loss,
    F.smooth_l1_loss: nn.SmoothL1Loss,
    F.huber_loss: nn.HuberLoss,
    F.binary_cross_entropy: nn.BCELoss,
    F.binary_cross_entropy_with_logits: nn.BCEWithLogitsLoss,
    F.kl_div: nn.KLDivLoss,
    F.soft_margin_loss: nn.SoftMarginLoss,
    F.poisson_nll_loss: nn.PoissonNLLLoss,
    F.hinge_embedding_loss: nn.HingeEmbeddingLoss,
    F.multilabel_soft_margin_loss: nn.MultiLabelSoftMarginLoss,
    F.multi_margin_loss: nn.MultiMarginLoss,
    F.multilabel_margin_loss: nn.MultiLabelMarginLoss,
}


class ObjectiveError(ValueError):
    """``loss_fn`` cannot be computed exactly over the probe in chunks.

    Raised for an undeclared loss that is not a per-row mean, or one that cannot be checked.
    """


def _rows(y: Any) -> int:
    t = _first_tensor(y)
    if t is None or t.dim() == 0:
        raise TypeError("the targets must hold tensors with a leading sample dimension")
    return int(t.shape[0])


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


class DecomposedLoss:
    """A custom loss declared as a total over samples and a normaliser, so a probe can chunk it exactly.

    The loss of a batch is ``total(y_pred, y) / normalizer(y)``. Both must be additive over samples:
    the total (or normaliser) of a batch is the sum of those of any split of it into row blocks. The
    probe's objective is then ``Σ total / Σ normalizer`` over all its samples. Calling the object
    returns the loss of one batch, so the same object can serve as the trainer's loss.

    Args:
        total: ``total(y_pred, y) -> scalar tensor``, the loss summed over the batch's samples (for
            instance a per-token loss summed over the non-padding tokens).
        normalizer: what the total is divided by: ``"rows"`` (the number of samples: a per-row mean),
            ``None`` (nothing: the objective is a sum, so it grows with the number of samples), or a
            function of the targets ``normalizer(y) -> number`` (e.g. ``lambda y: (y != PAD).sum()``).
        ignore_index: a target value that accuracy leaves out (token padding), or ``None``.

    Raises:
        TypeError: if ``total`` or a normaliser function is not callable.
        ValueError: if ``normalizer`` is a string other than ``"rows"``.
    """

    def __init__(
        self,
        total: Callable[[Any, Any], torch.Tensor],
        normalizer: str | Callable[[Any], Any] | None = "rows",
        *,
        ignore_index: int | None = None,
    ) -> None:
        if not callable(total):
            raise TypeError(f"total must be callable, got {type(total).__name__}")
        if isinstance(normalizer, str):
            if normalizer != "rows":
                raise ValueError(f"normalizer must be 'rows', None or a function of the targets, got {normalizer!r}")
        elif normalizer is not None and not callable(normalizer):
            raise TypeError(f"normalizer must be 'rows', None or callable, got {type(normalizer).__name__}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
        self.total = total
        self.normalizer = normalizer
        self.ignore_index = ignore_index

    def weight(self, y: Any) -> torch.Tensor | float | None:
        """The normaliser of a batch with targets ``y`` (``None`` when the loss is a plain sum)."""
        if self.normalizer is None:
            return None
        if self.normalizer == "rows":
            return float(_rows(y))
        return self.normalizer(y)

    def __call__(self, y_pred: Any, y: Any) -> torch.Tensor:
        """The loss of one batch, ``total / normalizer``."""
        total = self.total(y_pred, y)
        weight = self.weight(y)
        return total if weight is None else total / weight

    def __repr__(self) -> str:
        """The loss's ``total`` and ``normalizer`` functions."""
        return f"DecomposedLoss(total={self.total!r}, normalizer={self.normalizer!r})"


@dataclass(frozen=True)
class Decomposition:
    """How a probe computes ``loss_fn`` exactly in chunks.

    Attributes:
        total: ``total(y_pred, y)``, the chunk's loss summed (additive over rows).
        weight: ``weight(y)``, the chunk's share of the normaliser, or ``None`` when the objective is a
            sum (no normaliser).
        description: how the loss decomposes, in words (for logs and errors).
        ignore_index: target value that accuracy leaves out (``None``: none).
        needs_check: the loss is an undeclared callable, assumed to be a per-row mean until
            :func:`check_row_mean` confirms it.
    """

    total: Callable[[Any, Any], torch.Tensor]
    weight: Callable[[Any], Any] | None
    description: str
    ignore_index: int | None = None
    needs_check: bool = False

    @property
    def normalized(self) -> bool:
        """Whether the objective is divided by a normaliser that grows with the samples (a mean)."""
        return self.weight is not None


def _same_shape(module: nn.Module) -> Callable[[Any, Any], torch.Tensor]:
    # "mean" divides by the broadcast loss's element count, counted here from the targets: refuse the
    # (rare, warned-about by torch) case where the prediction broadcasts the targets to another shape.
    def total(y_pred: Any, y: Any) -> torch.Tensor:
        if isinstance(y_pred, torch.Tensor) and isinstance(y, torch.Tensor) and y_pred.shape != y.shape:
            shape = torch.broadcast_shapes(y_pred.shape, y.shape)
            if shape != y.shape:
                raise ValueError(
                    f"loss_fn {type(module).__name__}: the prediction {tuple(y_pred.shape)} and the target "
                    f"{tuple(y.shape)} broadcast to {tuple(shape)}; give them the same shape (output_transform=...)"
                )
        return module(y_pred, y)

    return total


def _class_index_weight(module: nn.Module) -> Callable[[Any], torch.Tensor]:
    weight: torch.Tensor | None = getattr(module, "weight", None)
    ignore_index = int(getattr(module, "ignore_index", -100))

    def count(y: Any) -> torch.Tensor:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"loss_fn {type(module).__name__} needs tensor targets, got {type(y).__name__}")
        if y.is_floating_point():
            # Class probabilities (N, C, ...): "mean" divides by the number of predictions, unweighted.
            return torch.tensor(float(y.numel() // max(1, y.shape[1])) if y.dim() > 1 else 1.0, dtype=torch.float64)
        keep = y != ignore_index
        if weight is None:
            return keep.sum().double()
        w = weight.detach().to(device=y.device, dtype=torch.float64)
        return w[y[keep]].sum()

    return count


def _from_module(module: nn.Module) -> Decomposition:
    name = type(module).__name__
    reduction = getattr(module, "reduction", None)
    if reduction == "none":
        raise ValueError(f"loss_fn {name} has reduction='none'; the probe needs a scalar loss ('mean' or 'sum')")
    recognised = isinstance(module, (*_ELEMENTWISE, *_PER_ROW, *_CLASS_INDEX, nn.KLDivLoss))
    if not recognised or reduction not in ("mean", "sum", "batchmean"):
        return _row_mean(module, f"{name}, a per-row mean (checked on the probe's chunks)")
    summed = copy.copy(module)  # shares the weight buffers; only the reduction differs
    summed.reduction = "sum"
    ignore_index = int(module.ignore_index) if isinstance(module, _CLASS_INDEX) else None
    total = _same_shape(summed) if isinstance(module, (*_ELEMENTWISE, nn.KLDivLoss)) else summed
    if reduction == "sum":
        return Decomposition(total, None, f"{name}(reduction='sum'): the sum over samples", ignore_index)
    weight: Callable[[Any], Any]
    if isinstance(module, _CLASS_INDEX):
        weight = _class_index_weight(module)
        what = "the sum of the targets' class weights" if getattr(module, "weight", None) is not None else "targets"
        what += f" other than ignore_index={ignore_index}" if ignore_index != -100 else ""
    elif isinstance(module, nn.KLDivLoss) and reduction == "batchmean":
        weight, what = lambda y: float(_rows(y)), "rows"
    elif isinstance(module, _PER_ROW):
        weight, what = lambda y: float(_rows(y)), "rows"
    else:
        weight, what = lambda y: float(_first_tensor(y).numel()), "target elements"  # type: ignore[union-attr]
    return Decomposition(total, weight, f"{name}(reduction={reduction!r}): a sum over samples / {what}", ignore_index)


def _row_mean(loss_fn: Callable[[Any, Any], torch.Tensor], description: str) -> Decomposition:
    def total(y_pred: Any, y: Any) -> torch.Tensor:
        return loss_fn(y_pred, y) * _rows(y)

    return Decomposition(total, lambda y: float(_rows(y)), description, needs_check=True)


def _name(loss_fn: Any) -> str:
    return getattr(loss_fn, "__qualname__", None) or getattr(loss_fn, "__name__", None) or type(loss_fn).__name__


def _functional_module(fn: Any) -> type[nn.Module] | None:
    # By identity, so that an unhashable callable (or one with a surprising __eq__) is simply not known.
    return next((module for f, module in _FUNCTIONAL.items() if f is fn), None)


def decompose(loss_fn: Callable[[Any, Any], torch.Tensor]) -> Decomposition:
    """How ``loss_fn`` decomposes over samples (see the module docstring).

    Raises:
        TypeError: if ``loss_fn`` is not callable.
        ValueError: for a torch loss with ``reduction="none"``.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if isinstance(loss_fn, DecomposedLoss):
        norm = loss_fn.normalizer
        what = "nothing (a sum)" if norm is None else "rows" if norm == "rows" else "the declared normaliser"
        weight = None if loss_fn.normalizer is None else loss_fn.weight
        description = f"DecomposedLoss: a sum over samples / {what}"
        return Decomposition(loss_fn.total, weight, description, loss_fn.ignore_index)
    if isinstance(loss_fn, nn.Module):
        return _from_module(loss_fn)
    known = _functional_module(loss_fn)
    if known is not None:
        return _from_module(known())
    known = _functional_module(loss_fn.func) if isinstance(loss_fn, functools.partial) else None
    if known is not None and not loss_fn.args:  # type: ignore[union-attr]
        try:
            module = known(**loss_fn.keywords)  # type: ignore[union-attr]
        except TypeError:  # a keyword only the functional form takes: fall back to checking
            pass
        else:
            return _from_module(module)
    return _row_mean(loss_fn, f"{_name(loss_fn)}, a per-row mean (checked on the probe's chunks)")


def _split(obj: Any, lo: int, hi: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[lo:hi]
    if isinstance(obj, Mapping):
        return {k: _split(v, lo, hi) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_split(v, lo, hi) for v in obj)
    return obj


def _leading_sizes(obj: Any) -> set[int]:
    if isinstance(obj, torch.Tensor):
        return {int(obj.shape[0])} if obj.dim() else {-1}
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return set().union(*(_leading_sizes(v) for v in obj)) if obj else set()
    return set()


def _scalar(loss: Any) -> float:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a torch.Tensor, got {type(loss).__name__}")
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar (mean-reduced) loss, got a tensor of shape {tuple(loss.shape)}")
    return float(loss.double())


def check_row_mean(loss_fn: Callable[[Any, Any], torch.Tensor], y_pred: Any, y: Any) -> str:
    """Check that ``loss_fn`` is a per-row mean on one batch.

    Its loss must equal the size-weighted mean of the losses of its two halves (to a few hundred rounding
    errors of the loss's dtype).

    Args:
        loss_fn: the user's loss.
        y_pred: the (transformed) model output of the batch, rows along the first dimension.
        y: the batch's targets.

    Returns:
        ``"checked"`` when checked and consistent; ``"small"`` (fewer than 2 rows) or ``"nonfinite"`` (a
        NaN or infinite loss) when this batch cannot tell.

    Raises:
        ObjectiveError: (a ``ValueError``) naming ``loss_fn`` and the fix, when the loss is not a per-row mean.
    """
    n = _rows(y)
    if n < 2:
        return "small"
    if _leading_sizes(y_pred) != {n} or _leading_sizes(y) != {n}:
        raise ObjectiveError(
            f"loss_fn {_name(loss_fn)}: cannot check that it is a per-row mean because the model output and the "
            f"targets do not share a leading sample dimension of {n} rows. {_FIX}"
        )
    h = n // 2
    with torch.no_grad():
        whole, a, b = (
            _scalar(loss_fn(_split(y_pred, lo, hi), _split(y, lo, hi))) for lo, hi in ((0, n), (0, h), (h, n))
        )
    if not all(math.isfinite(v) for v in (whole, a, b)):
        return "nonfinite"
    dtype = getattr(_first_tensor(y_pred), "dtype", torch.float32)
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    scale = max(abs(whole), abs(a), abs(b), 1e-30)
    mean = (h * a + (n - h) * b) / n
    if abs(whole - mean) <= 500 * eps * scale:
        return "checked"
    hint = ""
    if abs(whole - (a + b)) <= 500 * eps * scale:
        hint = " It behaves like a sum over rows: declare it as il.DecomposedLoss(loss_fn, normalizer=None)."
    raise ObjectiveError(
        f"loss_fn {_name(loss_fn)} is not a per-row mean: on a probe batch of {n} rows it gives {whole:.8g}, "
        f"but the size-weighted mean of its two halves is {mean:.8g}, so the probe cannot compute it over all "
        f"its samples exactly in chunks.{hint} {_FIX}"
    )


def check_on_fake_predictions(loss_fn: Callable[[Any, Any], torch.Tensor], y: Any) -> str:
    """Check ``loss_fn`` as :func:`check_row_mean` does, before any model exists, on random predictions.

    The predictions are shaped for the targets ``y``: class scores ``(N, C, ...)`` for integer labels
    ``(N, ...)``, a tensor like ``y`` for float targets.

    A best effort at construction: a loss that cannot take such predictions (it wants a dict, another
    shape) is left to the check on the model's real outputs in the first session. The predictions come
    from a private generator; no global random stream is drawn from.

    Returns:
        :func:`check_row_mean`'s status, or ``"skipped"`` (also when the predictions would take more
        than ``2**22`` elements: a large vocabulary is left to the first session).

    Raises:
        ObjectiveError: when the loss is not a per-row mean on these predictions.
    """
    if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[0] < 2:
        return "skipped"
    g = torch.Generator().manual_seed(0)
    if y.is_floating_point():
        shape = y.shape
    elif y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        labels = y[y >= 0]
        shape = torch.Size((y.shape[0], max(2, int(labels.max()) + 1) if labels.numel() else 2, *y.shape[1:]))
    else:
        return "skipped"
    if shape.numel() > 1 << 22:
        return "skipped"
    fake = torch.randn(shape, generator=g, dtype=y.dtype if y.is_floating_point() else torch.float64).to(y.device)
    try:
        with warnings.catch_warnings():  # whatever the loss says about made-up predictions is not the user's concern
            warnings.simplefilter("ignore")
            return check_row_mean(loss_fn, fake, y)
    except ObjectiveError:
        raise
    except Exception:  # the loss needs the model's own output (a dict, a shape): checked on the first session
        return "skipped"


_FIX = (
    "Fix: pass the torch loss module (e.g. nn.CrossEntropyLoss(weight=..., ignore_index=...)), which the probe "
    "decomposes exactly (reshape the model output with Probe(..., output_transform=...) if needed), or declare "
    "the loss as il.DecomposedLoss(total_fn, normalizer=...) with total_fn the loss summed over samples and "
    "normalizer 'rows', None or a function of the targets."
)
