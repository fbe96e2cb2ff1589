"""Sharpness: how much the probe loss rises within a ρ-neighbourhood of the current weights.

All variants measure ``L(θ + ε) − L(θ)`` for a perturbation ``ε = T δ``. ``T = I`` by default; the
adaptive variants rescale each coordinate, which makes the value (nearly) invariant to the rescaling
symmetries of ReLU networks. Two conventions are offered, each as its paper defines it:

* ``adaptive="asam"`` (Kwon et al. 2021, "ASAM"): ``T_i = |θ_i| + η`` for weights and ``T_i = 1`` for
  biases (parameters whose name ends in ``bias``), ``η = adaptive_eta`` (0.01 as in the paper), so a
  zero weight or bias is still perturbed.
* ``adaptive="andriushchenko2023"`` (Andriushchenko et al. 2023, "A modern look at the relationship
  between sharpness and generalization"): ``T = diag(|θ|)`` for every parameter, no offset (exactly
  invariant to the ReLU rescaling; a zero entry is never perturbed).

The methods:

* ``"sam"``: the first-order worst case SAM uses (Foret et al. 2021): ``δ = ρ·Tg/‖Tg‖₂`` (ℓ2) or
  ``δ = ρ·sign(Tg)`` (ℓ∞), so ``ε = ρ·T²g/‖Tg‖`` (ℓ2). At an exact minimum (``g = 0``) the step is zero
  and so is the value.
* ``"ascent"``: the worst case over the ball ``‖δ‖ ≤ ρ`` found by projected gradient ascent on ``δ``.
  It starts at the SAM point (a random point on the sphere / a random vertex of the box when ``g = 0``)
  and iterates ``δ ← Π(δ + η_k ρ·u)`` with ``u = Tg/‖Tg‖₂`` (ℓ2) or ``sign(Tg)`` (ℓ∞). The default
  ``step_size=inf`` jumps to the boundary point ``δ = ρ·u`` at every step (iterated SAM / FGSM): on a
  quadratic at its minimum this is the power iteration, which converges to ``ρ²λ_max/2`` (ℓ2) at the
  rate ``λ₂/λ₁``, faster than any finite step. It stops when the perturbed loss changes by less than
  ``tol`` relative to the sharpness value, ``|L_k − L_{k−1}| ≤ tol·|L_k − L(θ)|`` (``converged=True``),
  or after ``steps`` gradient passes (``converged=False``); the best point evaluated is reported.
* ``"average"``: the mean of ``L(θ + Tδ) − L(θ)`` over ``num_samples`` independent ``δ``, with its
  standard error. As in Jiang et al. (2019) and Andriushchenko et al. (2023), ``ρ`` is the
  per-coordinate standard deviation of ``δ`` (times ``T_i`` when adaptive), for both norms: ℓ2 draws
  ``δ ~ N(0, ρ²I)``, ℓ∞ draws ``δ`` uniformly in the box ``[−√3ρ, √3ρ]^P``. On a quadratic with
  Hessian ``A`` at its minimum both have expectation ``ρ²·tr(TAT)/2``. (It is not the ρ of the
  ball methods: ``‖δ‖₂ ≈ ρ√P``, so useful values of ρ are much smaller.)

m-sharpness (``m=``; Foret et al. 2021, §4; Andriushchenko et al. 2023 find it the variant best
correlated with generalization): the probe is split, in its order, into ``K = ⌊n/m⌋`` disjoint chunks of
``m`` samples (the last ``n mod m`` samples are left out); each chunk's sharpness is the chosen method
applied to the objective on that chunk alone (its own gradient, its own worst case), and the value is
their mean, with the standard error ``std/√K`` over chunks. The cost is about that of the method on the
whole probe (every sample is in one chunk), plus a per-chunk overhead.

Every perturbed point is evaluated functionally through the probe session; the model is never
written and is left bit-identical.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> probe = Probe((torch.randn(32, 4), torch.randint(0, 3, (32,))), torch.nn.functional.cross_entropy)
    >>> res = sharpness(torch.nn.Linear(4, 3), probe, rho=0.05, method="sam")
    >>> res.value == res.perturbed_loss - res.base_loss
    True
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ignite_landscape.linalg import generator
from ignite_landscape.measures._definitions import band_definitions, num
from ignite_landscape.measures.jackknife import (
    JACKKNIFE_CHUNKS,
    check_uncertainty,
    interval,
    interval_scalars,
    jackknife_rerun,
)
from ignite_landscape.params import ParamsArg, ParamSpace
from ignite_landscape.probe import Probe, ProbeSession
from ignite_landscape.results import Result
from ignite_landscape.samples import num_rows
from ignite_landscape.validation import check_choice, check_int, check_nonnegative, check_positive

__all__ = [
    "SharpnessResult",
    "SharpnessOptions",
    "sharpness",
    "measure_sharpness",
    "SHARPNESS_METHODS",
    "SHARPNESS_NORMS",
    "ADAPTIVE_CONVENTIONS",
    "SCHEDULES",
]

SHARPNESS_METHODS = ("sam", "ascent", "average")
SHARPNESS_NORMS = ("l2", "linf")
ADAPTIVE_CONVENTIONS = ("asam", "andriushchenko2023")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class SharpnessOptions:
    """The options of :func:`sharpness`, validated once.

    The :class:`~ignite_landscape.Sharpness` handler builds the same object at construction.

    Attributes:
        rho: radius of the ball (``"sam"``, ``"ascent"``) or per-coordinate standard deviation (``"average"``).
        method: ``"sam"``, ``"ascent"`` or ``"average"``.
        norm: ``"l2"`` or ``"linf"``.
        adaptive: ``None`` (after ``False``), ``"asam"`` or ``"andriushchenko2023"``.
        steps: cap on ascent steps.
        tol: ascent stops when the perturbed loss changes by at most ``tol`` times the sharpness value.
        num_samples: random perturbations of ``"average"``.
        step_size: ascent step as a fraction of ρ (``inf``: jump to the boundary).
        schedule: ``"cosine"`` (a finite step decays to a tenth over ``steps``) or ``"constant"``.
        adaptive_eta: ASAM's offset η.
        m: chunk size of m-sharpness (``None``: the whole probe at once).
        uncertainty: ``"jackknife"`` for a jackknife standard error over the probe's samples, or ``None``.
        jackknife_chunks: ``K``, the chunks of the jackknife.

    Raises:
        TypeError: for an option of the wrong type.
        ValueError: for ``rho ≤ 0``, an unknown method/norm/schedule/convention, ``steps < 1``,
            ``num_samples < 2``, a non-positive ``tol``/``step_size`` or a negative ``adaptive_eta``.
    """

    rho: float = 0.05
    method: str = "sam"
    norm: str = "l2"
    adaptive: str | bool | None = False
    steps: int = 100
    tol: float = 1e-3
    num_samples: int = 10
    step_size: float = math.inf
    schedule: str = "cosine"
    adaptive_eta: float = 0.01
    m: int | None = None
    uncertainty: str | None = None
    jackknife_chunks: int = JACKKNIFE_CHUNKS

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work, and store the normalised values."""
        set_ = object.__setattr__  # frozen: normalised values are written once, here
        set_(self, "rho", check_positive("rho", self.rho))
        check_choice("method", self.method, SHARPNESS_METHODS)
        check_choice("norm", self.norm, SHARPNESS_NORMS)
        adaptive = self.adaptive
        if adaptive is True:
            # Round 1 called |θ| scaling "ASAM": keep what True always computed, and ask for a name.
            warnings.warn(
                "sharpness: adaptive=True means adaptive='andriushchenko2023' (|theta| for every parameter, what "
                "it has always computed); pass the convention by name, or adaptive='asam' for Kwon et al. 2021 "
                "(|w| + eta for weights, biases unscaled)",
                FutureWarning,
                stacklevel=4,
            )
            adaptive = "andriushchenko2023"
        if adaptive is False or adaptive is None:
            adaptive = None
        elif not isinstance(adaptive, str):
            raise TypeError(f"adaptive must be False or one of {ADAPTIVE_CONVENTIONS}, got {type(adaptive).__name__}")
        else:
            check_choice("adaptive", adaptive, ADAPTIVE_CONVENTIONS)
        set_(self, "adaptive", adaptive)
        check_int("steps", self.steps, 1)
        set_(self, "tol", check_positive("tol", self.tol))
        check_int("num_samples", self.num_samples, 2)
        set_(self, "step_size", check_positive("step_size", self.step_size, allow_inf=True))
        check_choice("schedule", self.schedule, SCHEDULES)
        set_(self, "adaptive_eta", check_nonnegative("adaptive_eta", self.adaptive_eta))
        if self.m is not None:
            check_int("m", self.m, 1)
        check_uncertainty(self.uncertainty, self.jackknife_chunks)
        if self.uncertainty is not None and self.m is not None:
            raise ValueError("uncertainty='jackknife' with m=: m-sharpness has its own standard error over chunks")

    def check_probe(self, probe: Probe) -> None:
        """Raise if these options cannot work on ``probe``.

        An ``m`` or ``jackknife_chunks`` above its samples, or either on a probe sharded over ranks.
        """
        if self.m is not None and self.m > probe.num_samples:
            raise ValueError(f"m must be at most the probe's {probe.num_samples} samples, got {self.m}")
        if self.m is not None and num_rows(probe.targets) != probe.num_samples:
            # Chunks are cut by global sample index from the samples this rank holds.
            raise ValueError("m-sharpness needs every rank to hold all the probe's samples (one shared probe)")
        check_uncertainty(self.uncertainty, self.jackknife_chunks, probe)


@dataclass
class SharpnessResult(Result):
    """A sharpness value together with everything needed to read it unambiguously.

    Attributes:
        value: ``perturbed_loss − base_loss``.
        base_loss: ``L(θ)``.
        perturbed_loss: ``L(θ + ε)`` at the chosen point ("sam", "ascent") or the mean over samples ("average").
        rho: radius of the ball, or the per-coordinate standard deviation for "average".
        method: ``"sam"``, ``"ascent"`` or ``"average"``.
        norm: ``"l2"`` or ``"linf"``.
        adaptive: the adaptive convention (``"asam"``, ``"andriushchenko2023"``) or ``None``.
        steps: gradient steps taken (1 for "sam", the ascent steps used, 0 for "average").
        stderr: standard error of the mean for "average", else ``None``.
        num_grads: gradient passes over the probe.
        num_forwards: loss-only passes over the probe.
        num_samples: random perturbations averaged ("average"), else 0.
        perturbation_norm: ``‖δ‖`` (in the chosen norm) of the reported point; for "average" the
            root-mean-square ‖δ‖₂ (ℓ2) or max |δ_i| (ℓ∞) over samples.
        converged: for "ascent", whether the stopping rule was met before the ``steps`` cap; else ``None``
            (m-sharpness: whether every chunk's ascent converged).
        m: the chunk size of m-sharpness, else ``None``. ``value``, ``base_loss`` and ``perturbed_loss`` are
            then means over the chunks, ``stderr`` their standard error over chunks, ``steps`` the total.
        num_chunks: the chunks of m-sharpness (0 without ``m``).
        uncertainty: ``"jackknife"`` when ``stderr`` is the jackknife standard error of ``value`` over the probe's
            samples (the same seed on every subset), else ``None``.
        estimator_stderr: with ``uncertainty``, the standard error ``"average"`` reports over its random draws.
        jackknife_chunks: the probe chunks of the jackknife (0 without ``uncertainty``).
    """

    kind: ClassVar[str] = "sharpness"

    value: float
    base_loss: float
    perturbed_loss: float
    rho: float
    method: str
    norm: str
    adaptive: str | None
    steps: int
    stderr: float | None
    num_grads: int
    num_forwards: int
    num_samples: int = 0
    perturbation_norm: float = 0.0
    converged: bool | None = None
    m: int | None = None
    num_chunks: int = 0
    uncertainty: str | None = None
    estimator_stderr: float | None = None
    jackknife_chunks: int = 0

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``value``, ``base_loss``, ``perturbed_loss``, ``rho``, ``steps``, the pass counts.

        Also ``stderr`` for "average" and ``converged`` as 0/1 for "ascent".
        """
        out = {
            "value": self.value,
            "base_loss": self.base_loss,
            "perturbed_loss": self.perturbed_loss,
            "rho": self.rho,
            "steps": float(self.steps),
            "num_grads": float(self.num_grads),
            "num_forwards": float(self.num_forwards),
        }
        if self.stderr is not None:
            out["stderr"] = self.stderr
        if self.converged is not None:
            out["converged"] = float(self.converged)
        if self.m is not None:
            out["m"] = float(self.m)
            out["num_chunks"] = float(self.num_chunks)
        if self.estimator_stderr is not None:
            out["estimator_stderr"] = self.estimator_stderr
        if self.uncertainty is not None and self.stderr is not None:
            out.update(interval_scalars("value", self.value, self.stderr, stderr_key="stderr"))
        return out

    @property
    def interval(self) -> tuple[float, float] | None:
        """With ``uncertainty``: ``value ± INTERVAL_Z·stderr`` as ``(lo, hi)``, else ``None``.

        The bounds are logged as ``value_lo``/``value_hi``.
        """
        if self.uncertainty is None or self.stderr is None:
            return None
        return interval(self.value, self.stderr)

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar key, with ρ, the method, the norm, the adaptive convention and ``m``."""
        rho, norm, chunks = num(self.rho), ("ℓ2" if self.norm == "l2" else "ℓ∞"), self.num_chunks
        ball = f"‖δ‖{'₂' if self.norm == 'l2' else '∞'} ≤ ρ = {rho}"
        scaling = {
            "asam": "ε = Tδ with T = |θ| + η for weights and 1 for biases (ASAM, Kwon et al. 2021)",
            "andriushchenko2023": "ε = Tδ with T = diag(|θ|) (adaptive, Andriushchenko et al. 2023)",
        }.get(self.adaptive or "", "ε = δ (no rescaling)")
        stop = {True: ", converged", False: ", stopped at the step cap", None: ""}[self.converged]
        draw = "δ ~ N(0, ρ²I)" if self.norm == "l2" else "δ uniform in the box [−√3ρ, √3ρ]^P"
        value = {
            "sam": f"max over {ball} of L(θ+ε) − L(θ), by one SAM step (Foret et al. 2021), {scaling}",
            "ascent": f"max over {ball} of L(θ+ε) − L(θ), by projected gradient ascent from the SAM point "
            f"({self.steps} gradient steps{stop}), {scaling}",
            "average": f"mean of L(θ+ε) − L(θ) over {self.num_samples} random perturbations {draw} with "
            f"per-coordinate standard deviation ρ = {rho}, {scaling}",
        }[self.method]
        if self.m is not None:
            value += f"; m-sharpness: the mean over {chunks} disjoint chunks of m = {self.m} probe samples of each"
            value += " chunk's own value"
        over = f" (mean over the {chunks} chunks)" if self.m is not None else ""
        point = "mean over the random perturbations" if self.method == "average" else "at the reported point"
        draws = f"standard error of the mean over the {self.num_samples} random perturbations"
        out = {
            "value": value,
            "base_loss": f"L(θ), the probe loss at the current weights{over}",
            "perturbed_loss": f"L(θ+ε), the probe loss {point}{over}; value = perturbed_loss − base_loss",
            "rho": f"per-coordinate standard deviation ρ of the random perturbations ({norm})"
            if self.method == "average"
            else f"radius ρ of the {norm} ball of perturbations",
            "steps": {
                "sam": "gradient steps taken: 1 (one SAM step)",
                "ascent": "projected gradient-ascent steps taken",
            }.get(self.method, "gradient steps taken: 0 (random perturbations only)"),
            "num_grads": "gradient passes over the probe",
            "num_forwards": "loss-only passes over the probe",
        }
        if self.stderr is not None:
            out["stderr"] = (
                f"standard error of value over the {chunks} chunks (std/√K)" if self.m is not None else draws
            )
        if self.converged is not None:
            out["converged"] = "1 if the ascent met its stopping rule before the step cap (every chunk's), else 0"
        if self.m is not None:
            out["steps"] = "gradient steps taken, summed over the chunks"
            out["m"] = "m of m-sharpness: the probe samples in each chunk"
            out["num_chunks"] = "chunks ⌊n/m⌋ the probe was split into (the last n mod m samples left out)"
        if self.estimator_stderr is not None:
            out["estimator_stderr"] = f"{draws} (the estimator's own)"
        if self.uncertainty is not None and self.stderr is not None:
            out.update(band_definitions("value", "the sharpness", self.jackknife_chunks, stderr_key="stderr"))
            out["stderr"] += " (the same seed on every subset)"
        return out


def _norm(v: torch.Tensor, norm: str) -> float:
    return float(v.abs().max()) if norm == "linf" else float(torch.linalg.vector_norm(v))


def _ascent_direction(tg: torch.Tensor, norm: str) -> torch.Tensor | None:
    """Unit steepest-ascent direction for the gradient ``tg`` w.r.t. ``δ`` (``None`` if it vanishes)."""
    if norm == "linf":
        u = torch.sign(tg)
        return u if bool(u.abs().sum() > 0) else None
    n = torch.linalg.vector_norm(tg)
    return tg / n if bool(n > 0) and bool(torch.isfinite(n)) else None


def _project(delta: torch.Tensor, rho: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-rho, rho)
    n = float(torch.linalg.vector_norm(delta))
    return delta * (rho / n) if n > rho else delta


def _scale(theta: torch.Tensor, space: ParamSpace, opts: SharpnessOptions) -> torch.Tensor | None:
    """The diagonal of ``T`` for the adaptive convention, flat in the space's order (``None``: ``T = I``)."""
    if opts.adaptive is None:
        return None
    if opts.adaptive == "andriushchenko2023":
        return theta.abs()
    # ASAM: |w| + η on weights; biases are left unscaled (T = 1), as Kwon et al. do.
    parts = []
    for name, piece in zip(space.names, theta.split(space.numels)):
        parts.append(torch.ones_like(piece) if name.rsplit(".", 1)[-1] == "bias" else piece.abs() + opts.adaptive_eta)
    return torch.cat(parts)


def sharpness(
    model: nn.Module,
    probe: Probe,
    rho: float = 0.05,
    method: str = "sam",
    norm: str = "l2",
    adaptive: str | bool = False,
    *,
    steps: int = 100,
    tol: float = 1e-3,
    num_samples: int = 10,
    seed: int = 0,
    params: ParamsArg = None,
    step_size: float = math.inf,
    schedule: str = "cosine",
    adaptive_eta: float = 0.01,
    m: int | None = None,
    uncertainty: str | None = None,
    jackknife_chunks: int = JACKKNIFE_CHUNKS,
) -> SharpnessResult:
    """Sharpness ``L(θ + ε) − L(θ)`` of the probe loss (see the module docstring).

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        rho: radius of the ball of ``δ`` (``ε = Tδ``) for "sam"/"ascent"; the per-coordinate standard
            deviation of ``δ`` for "average".
        method: ``"sam"``, ``"ascent"`` or ``"average"``.
        norm: ``"l2"`` or ``"linf"``.
        adaptive: ``False``, ``"asam"`` (Kwon et al. 2021) or ``"andriushchenko2023"`` (see the module docstring).
        steps: cap on ascent steps for ``"ascent"`` (each costs one gradient pass).
        tol: ascent stops once ``|L_k − L_{k−1}| ≤ tol·|L_k − L(θ)|``.
        num_samples: random perturbations for ``"average"`` (each costs one forward pass).
        seed: seed of the random start ("ascent" at a stationary point) and of the samples ("average").
        params: restrict the perturbation to a subset of parameters.
        step_size: ascent step as a fraction of ρ; ``inf`` (default) jumps to the boundary point.
        schedule: for a finite ``step_size``: ``"cosine"`` (decays to a tenth over ``steps``) or ``"constant"``.
        adaptive_eta: ASAM's η.
        m: m-sharpness: the mean over disjoint chunks of ``m`` probe samples of each chunk's sharpness
            (``None``: the whole probe).
        uncertainty: ``"jackknife"``: ``stderr`` is the jackknife standard error of the value over the probe's
            samples (``jackknife_chunks`` more runs, each on the probe without one chunk).
        jackknife_chunks: ``K``, the chunks of the jackknife.

    Returns:
        A :class:`SharpnessResult`.

    Raises:
        TypeError, ValueError: for bad options (see :class:`SharpnessOptions`), or ``m`` above the probe's samples.
    """
    fields = (rho, method, norm, adaptive, steps, tol, num_samples, step_size, schedule, adaptive_eta, m)
    opts = SharpnessOptions(*fields, uncertainty, jackknife_chunks)
    opts.check_probe(probe)
    return measure_sharpness(model, probe, opts, seed, params)


def _jackknife(model: nn.Module, probe: Probe, opts: SharpnessOptions, seed: int, params: ParamsArg) -> SharpnessResult:
    one = dataclasses.replace(opts, uncertainty=None)
    full = measure_sharpness(model, probe, one, seed, params)
    rerun = functools.partial(measure_sharpness, model, options=one, seed=seed, params=params)
    stderr, _ = jackknife_rerun("sharpness", full.value, rerun, probe, opts.jackknife_chunks)
    return dataclasses.replace(
        full,
        stderr=stderr,
        uncertainty=opts.uncertainty,
        estimator_stderr=full.stderr,
        jackknife_chunks=opts.jackknife_chunks,
    )


def _m_sharpness(
    model: nn.Module, probe: Probe, opts: SharpnessOptions, seed: int, params: ParamsArg
) -> SharpnessResult:
    m = opts.m
    assert m is not None
    whole = dataclasses.replace(opts, m=None)
    chunks = [
        measure_sharpness(model, probe.subset(torch.arange(lo, lo + m)), whole, seed, params)
        for lo in range(0, probe.num_samples - m + 1, m)
    ]
    values = torch.tensor([c.value for c in chunks], dtype=torch.float64)
    k = len(chunks)
    return SharpnessResult(
        value=float(values.mean()),
        base_loss=sum(c.base_loss for c in chunks) / k,
        perturbed_loss=sum(c.perturbed_loss for c in chunks) / k,
        rho=opts.rho,
        method=opts.method,
        norm=opts.norm,
        adaptive=opts.adaptive,
        steps=sum(c.steps for c in chunks),
        stderr=float(values.std(unbiased=True) / math.sqrt(k)) if k > 1 else None,
        num_grads=sum(c.num_grads for c in chunks),
        num_forwards=sum(c.num_forwards for c in chunks),
        num_samples=sum(c.num_samples for c in chunks),
        perturbation_norm=max(c.perturbation_norm for c in chunks),
        converged=None if whole.method != "ascent" else all(bool(c.converged) for c in chunks),
        m=m,
        num_chunks=k,
    )


def measure_sharpness(
    model: nn.Module, probe: Probe, options: SharpnessOptions, seed: int = 0, params: ParamsArg = None
) -> SharpnessResult:
    """:func:`sharpness` on validated options (the caller runs ``options.check_probe(probe)``, once).

    Example:
        >>> probe = Probe((torch.randn(8, 3), torch.randn(8, 1)), torch.nn.MSELoss())
        >>> measure_sharpness(torch.nn.Linear(3, 1), probe, SharpnessOptions(rho=0.1)).value >= 0
        True
    """
    if options.uncertainty is not None:
        return _jackknife(model, probe, options, seed, params)
    if options.m is not None:
        return _m_sharpness(model, probe, options, seed, params)
    rho, norm = options.rho, options.norm
    with probe.session(model, params) as s:
        theta = s.theta
        scale = _scale(theta, s.space, options)

        def eps(delta: torch.Tensor) -> torch.Tensor:
            return delta * scale if scale is not None else delta

        def tgrad(g: torch.Tensor) -> torch.Tensor:
            # Gradient with respect to δ of L(θ + Tδ) is T·g.
            return g * scale if scale is not None else g

        stderr, converged, used, count = None, None, 0, 0
        if options.method == "average":
            base = s.loss()
            gen = generator(seed)
            diffs, sq = [], []
            for _ in range(options.num_samples):
                if norm == "l2":
                    delta = torch.randn(theta.numel(), generator=gen, dtype=torch.float64) * rho
                else:
                    # Uniform on [−√3ρ, √3ρ]: the same per-coordinate standard deviation ρ as the ℓ2 draw.
                    width = math.sqrt(3.0) * rho
                    delta = (torch.rand(theta.numel(), generator=gen, dtype=torch.float64) * 2 - 1) * width
                delta = delta.to(device=theta.device, dtype=theta.dtype)
                sq.append(_norm(delta, norm))
                diffs.append(s.loss(theta + eps(delta)) - base)
            d = torch.tensor(diffs, dtype=torch.float64)
            value = float(d.mean())
            stderr = float(d.std(unbiased=True) / math.sqrt(options.num_samples))
            perturbed = base + value
            count = options.num_samples
            pnorm = math.sqrt(sum(v * v for v in sq) / len(sq)) if norm == "l2" else max(sq)
        else:
            base, g = s.loss_and_grad()
            u = _ascent_direction(tgrad(g), norm)
            if options.method == "sam":
                delta = rho * u if u is not None else torch.zeros_like(theta)
                perturbed = s.loss(theta + eps(delta)) if u is not None else base
                used = 1
            else:
                perturbed, delta, used, converged = _ascent(s, theta, base, u, eps, tgrad, options, seed)
            pnorm = _norm(delta, norm)
        return SharpnessResult(
            value=perturbed - base,
            base_loss=base,
            perturbed_loss=perturbed,
            rho=rho,
            method=options.method,
            norm=norm,
            adaptive=options.adaptive,
            steps=used,
            stderr=stderr,
            num_grads=s.num_grads,
            num_forwards=s.num_forwards,
            num_samples=count,
            perturbation_norm=pnorm,
            converged=converged,
        )


def _ascent(
    s: ProbeSession,
    theta: torch.Tensor,
    base: float,
    u: torch.Tensor | None,
    eps: Callable[[torch.Tensor], torch.Tensor],
    tgrad: Callable[[torch.Tensor], torch.Tensor],
    opts: SharpnessOptions,
    seed: int,
) -> tuple[float, torch.Tensor, int, bool]:
    """Projected ascent from the SAM point; returns (best loss, its δ, steps used, converged)."""
    rho, norm = opts.rho, opts.norm
    if u is None:
        # A stationary point: start from a random point on the sphere / vertex of the box.
        r = torch.randn(theta.numel(), generator=generator(seed), dtype=torch.float64).to(theta)
        u = _ascent_direction(r, norm)
    delta = rho * u
    best_loss, best_delta = -math.inf, delta
    previous, used, converged = None, 0, False
    for k in range(opts.steps):
        loss_k, g_k = s.loss_and_grad(theta + eps(delta))
        used += 1
        if loss_k > best_loss:
            best_loss, best_delta = loss_k, delta
        # Relative to the sharpness value, not the loss: a loss of 2 with a sharpness of 1e-3 must
        # still resolve the sharpness.
        if previous is not None and abs(loss_k - previous) <= opts.tol * abs(loss_k - base):
            converged = True
            break
        previous = loss_k
        if k == opts.steps - 1:
            break
        u = _ascent_direction(tgrad(g_k), norm)
        if u is None:
            converged = True  # a stationary point of the perturbed loss: no ascent direction left
            break
        if math.isinf(opts.step_size):
            new = rho * u  # the limit of Π(δ + ηρu) as η → ∞
        else:
            frac = k / max(opts.steps - 2, 1)
            eta = (
                opts.step_size
                if opts.schedule == "constant"
                else opts.step_size * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
            )
            new = _project(delta + eta * rho * u, rho, norm)
        if torch.equal(new, delta):
            converged = True  # a fixed point of projected ascent: the next step would repeat this one
            break
        delta = new
    return best_loss, best_delta, used, converged
