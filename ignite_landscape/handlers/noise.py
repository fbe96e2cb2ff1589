"""Handler for the gradient noise scale ``B_simple = tr(Σ)/‖G‖²`` (McCandlish et al. 2018).

Following McCandlish et al.'s advice, the handler also smooths the numerator ``tr(Σ)`` and the
denominator ``‖G‖²`` *separately* across firings, with bias-corrected exponential moving averages of
weight ``smoothing``, and logs ``b_simple_smoothed`` = (smoothed ``tr(Σ)``)/(smoothed ``‖G‖²``) next to
the raw ``b_simple``: a ratio of averages, finite as long as the averaged ``‖G‖²`` is positive,
even at a firing whose own ``‖G‖²`` estimate is not (an average of ratios would be ``inf`` then).

Example:
    >>> import torch
    >>> from ignite.engine import Engine
    >>> from ignite_landscape import Probe
    >>> data = (torch.randn(48, 2), torch.randint(0, 2, (48,)))
    >>> logistic = torch.nn.Linear(2, 2)
    >>> engine = Engine(lambda engine, batch: None)
    >>> _ = GradientNoiseScale(logistic, Probe(data, torch.nn.CrossEntropyLoss()), smoothing=0.9).attach(engine)
    >>> _ = engine.run([0], max_epochs=1)
    >>> raw = engine.state.metrics["landscape/noise_scale/b_simple"]
    >>> smoothed = engine.state.metrics["landscape/noise_scale/b_simple_smoothed"]
    >>> raw > 0, abs(smoothed - raw) <= 1e-6 * raw  # one firing: the same (up to rounding of the averages)
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ignite.engine import Engine

from ignite_landscape.handlers.measure import MeasureHandler
from ignite_landscape.measures.noise import NoiseOptions, NoiseScale, measure_gradient_noise_scale
from ignite_landscape.validation import check_bool, check_fraction

__all__ = ["GradientNoiseScale", "NoiseScaleOptions"]


@dataclass(frozen=True)
class NoiseScaleOptions(NoiseOptions):
    """The options of :class:`GradientNoiseScale`: those of :func:`~ignite_landscape.gradient_noise_scale` and two more.

    Attributes:
        b_noise: also compute the curvature-aware ``B_noise = tr(HΣ)/(GᵀHG)`` (scalars ``b_noise``,
            ``trace_h_sigma``, ``grad_curvature``; not smoothed). Off by default: it costs one exact
            Hessian-vector product per probe sample (``"per_sample"``) or per small batch (``"two_batch"``).
        smoothing: weight of the past in the moving averages, in ``[0, 1)`` (0: no smoothing); they span
            about ``1/(1 − smoothing)`` firings. Where ``‖G‖²`` falls by orders of magnitude between firings
            (epoch-spaced firings late in training) a long average is dominated by the early, large
            values and lags the raw ``b_simple`` by as much: keep it short there.
    """

    b_noise: bool = False
    smoothing: float = 0.5

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work, and store the normalised values."""
        check_bool("b_noise", self.b_noise)
        super().__post_init__()
        object.__setattr__(self, "smoothing", check_fraction("smoothing", self.smoothing))


class GradientNoiseScale(MeasureHandler):
    """The simple gradient noise scale on the probe: the batch size above which larger batches stop helping.

    Scalars: ``b_simple``, ``trace_sigma``, ``grad_norm_sq``, ``probe_grad_norm_sq`` (this firing) and
    ``b_simple_smoothed``, ``trace_sigma_smoothed``, ``grad_norm_sq_smoothed`` (the moving averages).
    ``‖G‖²`` carries the finite-population correction with the probe's ``population_size`` (see
    :func:`~ignite_landscape.gradient_noise_scale`). The probe needs at least 2 samples.

    Raises:
        TypeError, ValueError: for an option that cannot work with this probe, naming it.
    """

    default_name = "noise_scale"
    options_type = NoiseScaleOptions

    def __init__(self, model: Any, probe: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, probe, *args, **kwargs)
        # Exponential moving sums of tr(Σ) and ‖G‖² and the total weight, so the bias correction is exact.
        self._ema = [0.0, 0.0, 0.0]

    def expected_keys(self) -> list[str]:
        """The noise scale, its parts and the smoothed scale, recorded as NaN when the first firing fails."""
        return ["b_simple", "trace_sigma", "grad_norm_sq", "b_simple_smoothed"]

    def compute(self, engine: Engine) -> Any:
        """The noise scale at the current weights; a finite result updates the moving averages."""
        result = measure_gradient_noise_scale(self.model, self.probe, self.options, self.seed, self.params)
        if math.isfinite(result.trace_sigma) and math.isfinite(result.grad_norm_sq):
            b = self.smoothing
            tr, g, w = self._ema
            self._ema = [b * tr + (1 - b) * result.trace_sigma, b * g + (1 - b) * result.grad_norm_sq, b * w + (1 - b)]
        return result

    def smoothed(self) -> tuple[float, float, float]:
        """``(b_simple, trace_sigma, grad_norm_sq)`` of the moving averages (NaN before the first result)."""
        tr, g, w = self._ema
        if w == 0:
            return math.nan, math.nan, math.nan
        tr, g = tr / w, g / w
        return (tr / g if g > 0 else math.inf), tr, g

    def scalars_of(self, engine: Engine, result: NoiseScale) -> dict[str, float]:
        """The result's scalars and the moving averages' (``*_smoothed``)."""
        out = super().scalars_of(engine, result)
        b, tr, g = self.smoothed()
        out.update(b_simple_smoothed=b, trace_sigma_smoothed=tr, grad_norm_sq_smoothed=g)
        return out

    def definitions(self) -> dict[str, str]:
        """The base definitions and the moving averages' (with their weight)."""
        out = super().definitions()
        ema = f"bias-corrected exponential moving average over firings with weight {self.smoothing:g} on the past"
        out["trace_sigma_smoothed"] = f"tr(Σ), {ema}"
        out["grad_norm_sq_smoothed"] = f"‖G‖², {ema}"
        out["b_simple_smoothed"] = "trace_sigma_smoothed/grad_norm_sq_smoothed: a ratio of the averages, not an average"
        return out

    def _extra_state(self) -> dict[str, Any]:
        return {"ema": list(self._ema)}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        ema = state.get("ema")
        if ema is not None:
            self._ema = [float(v) for v in ema]
