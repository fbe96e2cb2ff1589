"""Jackknife error bars over the probe's samples: how much a number would move on another probe.

The probe's ``n`` samples are cut, in their order, into ``K`` contiguous chunks of as equal sizes as
possible; the quantity is recomputed on each of the ``K`` leave-one-chunk-out probes (``n − n/K``
samples), and the delete-a-group jackknife standard error is

``stderr = sqrt((K − 1)/K · Σ_j (θ_(j) − θ̄)²)``,

with ``θ_(j)`` the value without chunk ``j`` and ``θ̄`` their mean (Efron & Tibshirani 1993, §11.5). For a
mean over samples (the probe loss, its gradient, the Hessian's trace) it is the usual standard error of
the mean over chunks; for a smooth function of such means (an isolated top eigenvalue) it is its
first-order approximation. It measures the sampling noise of the *probe*, which a fixed probe otherwise
hides: a λ_max whose stderr is a large share of it says the probe is too small for that quantity.

Cost: ``K`` more runs of the measure, each on ``(K − 1)/K`` of the probe (eigenvalues warm-started from
the full probe's eigenvectors, so each rerun takes fewer products).

Example:
    >>> import torch
    >>> jackknife_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    tensor(1.9365, dtype=torch.float64)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from ignite_landscape.probe import Probe
from ignite_landscape.samples import num_rows
from ignite_landscape.validation import check_choice, check_int

__all__ = [
    "UNCERTAINTIES",
    "JACKKNIFE_CHUNKS",
    "check_uncertainty",
    "leave_one_out_probes",
    "jackknife_stderr",
    "jackknife_rerun",
    "warn_if_wide",
    "INTERVAL_Z",
    "interval",
    "interval_scalars",
]

# A float or a tensor of them: an interval is elementwise.
Number = TypeVar("Number", float, torch.Tensor)

logger = logging.getLogger(__name__)

UNCERTAINTIES = ("jackknife",)
JACKKNIFE_CHUNKS = 10
# A standard error above this share of |value| makes the interval value ± 2·stderr wider than the value.
WIDE = 0.5
# The interval every result exposes and logs: value ± 2·stderr (about 95% if the value is roughly normal;
# with K = 10 chunks a t quantile would be 2.26, so it is an indication, not an exact coverage).
INTERVAL_Z = 2.0
_warned: set[str] = set()


def check_uncertainty(uncertainty: str | None, chunks: int, probe: Probe | None = None) -> None:
    """Validate ``uncertainty=`` and ``jackknife_chunks=`` (and, given the probe, that it has enough samples).

    Raises:
        TypeError, ValueError: naming the argument.
    """
    if uncertainty is not None:
        check_choice("uncertainty", uncertainty, UNCERTAINTIES)
    check_int("jackknife_chunks", chunks, 2)
    if uncertainty is None or probe is None:
        return
    if chunks > probe.num_samples:
        raise ValueError(f"jackknife_chunks must be at most the probe's {probe.num_samples} samples, got {chunks}")
    if num_rows(probe.targets) != probe.num_samples:
        raise ValueError("uncertainty='jackknife' needs every rank to hold all the probe's samples (one shared probe)")


def leave_one_out_probes(probe: Probe, chunks: int) -> list[Probe]:
    """The ``chunks`` probes that each leave out one contiguous chunk of ``probe``'s samples."""
    parts = torch.arange(probe.num_samples).tensor_split(chunks)
    return [probe.subset(torch.cat([p for i, p in enumerate(parts) if i != j])) for j in range(chunks)]


def jackknife_stderr(values: torch.Tensor) -> torch.Tensor:
    """The delete-a-group jackknife standard error from the ``K`` leave-one-out values (first dimension)."""
    k = values.shape[0]
    centred = values - values.mean(dim=0)
    return ((k - 1) / k * (centred**2).sum(dim=0)).sqrt()


class _Valued(Protocol):
    value: float


_R = TypeVar("_R", bound=_Valued)


def jackknife_rerun(
    quantity: str, value: float, measure: Callable[[Probe], _R], probe: Probe, chunks: int
) -> tuple[float, list[_R]]:
    """Rerun a scalar measure on each leave-one-chunk-out probe: ``(stderr of its .value, the reruns)``.

    ``value`` is the measure's value on the whole probe; a stderr that is a large share of it is said once
    per ``quantity`` (:func:`warn_if_wide`).

    Example:
        >>> from types import SimpleNamespace
        >>> x = torch.arange(4.0, dtype=torch.float64)
        >>> probe = Probe((x[:, None], torch.zeros(4, 1)), torch.nn.functional.mse_loss)
        >>> mean_x = lambda p: SimpleNamespace(value=float(p.inputs.mean()))
        >>> stderr, reruns = jackknife_rerun("mean", 1.5, mean_x, probe, chunks=4)
        >>> abs(stderr - float(x.std() / 2)) < 1e-12, len(reruns)  # a mean's jackknife stderr is std/√n
        (True, 4)
    """
    reruns = [measure(part) for part in leave_one_out_probes(probe, chunks)]
    stderr = float(jackknife_stderr(torch.tensor([r.value for r in reruns], dtype=torch.float64)))
    warn_if_wide(quantity, value, stderr)
    return stderr, reruns


def warn_if_wide(quantity: str, value: float, stderr: float) -> None:
    """Say once per quantity when its standard error is a large share of it (the probe is too small)."""
    if quantity in _warned or not stderr > WIDE * abs(value):
        return
    _warned.add(quantity)
    logger.warning(
        "%s = %.4g ± %.2g (jackknife stderr): probe too small for this quantity; use more probe samples",
        quantity,
        value,
        stderr,
    )


def interval(value: Number, stderr: Number) -> tuple[Number, Number]:
    """The interval ``value ± INTERVAL_Z·stderr`` as ``(lo, hi)``, of floats or elementwise of tensors."""
    return value - INTERVAL_Z * stderr, value + INTERVAL_Z * stderr


def interval_scalars(key: str, value: float, stderr: float, stderr_key: str | None = None) -> dict[str, float]:
    """``{<key>_stderr: stderr, <key>_lo: lo, <key>_hi: hi}`` (``stderr_key`` renames the first), for logging.

    The TensorBoard log handler draws a band wherever a result's scalars hold ``q``, ``q_lo`` and ``q_hi``.
    """
    lo, hi = interval(value, stderr)
    return {stderr_key or f"{key}_stderr": stderr, f"{key}_lo": lo, f"{key}_hi": hi}
