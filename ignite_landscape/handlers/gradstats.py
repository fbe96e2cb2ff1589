"""Handler for the gradient statistics: per-sample gradient norms, GSNR, Fisher trace, distance and update size.

Example:
    >>> import torch
    >>> from ignite.engine import Engine
    >>> import ignite_landscape as il
    >>> regressor = torch.nn.Linear(6, 1)
    >>> samples = (torch.randn(20, 6), torch.randn(20, 1))
    >>> engine = Engine(lambda engine, batch: None)
    >>> _ = GradientStatistics(regressor, il.Probe(samples, torch.nn.MSELoss())).attach(engine)
    >>> _ = engine.run([0], max_epochs=1)
    >>> engine.state.metrics["landscape/gradstats/distance_from_init"]  # the weights never moved
    0.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine

from ignite_landscape.handlers.measure import MeasureHandler
from ignite_landscape.measures.gradstats import (
    GradientStatisticsResult,
    GradStatsOptions,
    initial_weights,
    measure_gradient_statistics,
)
from ignite_landscape.params import unwrap_model

__all__ = ["GradientStatistics"]


class GradientStatistics(MeasureHandler):
    """Per-sample gradient statistics on the probe and the length of the path.

    See :func:`~ignite_landscape.gradient_statistics`.

    Scalars: ``fisher_trace``, ``gsnr``, ``grad_norm``, ``trace_sigma``, ``sample_norm_mean``,
    ``sample_norm_median``, ``sample_norm_max``, ``distance_from_init``, ``update_norm``, ``relative_update``
    and per layer ``gsnr/<layer>``, ``update_norm/<layer>``, ``relative_update/<layer>``. The
    :class:`~ignite_landscape.LandscapeLogHandler` writes the per-sample gradient norms as a histogram.

    The handler keeps two copies of the selected weights on the model's device (``2 × P`` numbers, also
    saved in its ``state_dict`` so a resumed run keeps measuring from the same ``θ₀``): ``θ₀``, taken once
    when it is first attached, and the weights at its previous firing, overwritten in place at each
    firing. ``update_norm`` is the change since the previous firing that ran (at the first, since attach
    time; a firing a :class:`~ignite_landscape.Budget` skipped does not count): attached to
    ``Events.ITERATION_COMPLETED`` it is the last optimizer step. The probe must be in
    ``model_mode="eval"`` and hold at least 2 samples.

    Raises:
        TypeError, ValueError: for a bad ``chunk_size``, ``uncertainty`` or ``jackknife_chunks``, a train-mode
            probe or one of fewer than 2 samples.
    """

    default_name = "gradstats"
    options_type = GradStatsOptions

    def __init__(self, model: Any, probe: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, probe, *args, **kwargs)
        self.initial: dict[str, torch.Tensor] | None = None
        self.previous: dict[str, torch.Tensor] | None = None

    def _on_attach(self, engine: Engine) -> None:
        # θ₀ once: attaching again (or after load_state_dict restored it) keeps the first one.
        if self.initial is None:
            self.initial = initial_weights(self.model, self.space)
        if self.previous is None:
            self.previous = {k: v.clone() for k, v in self.initial.items()}

    def expected_keys(self) -> list[str]:
        """The statistics and path lengths, recorded as NaN when the first firing fails."""
        return ["fisher_trace", "gsnr", "grad_norm", "distance_from_init", "update_norm", "relative_update"]

    def compute(self, engine: Engine) -> GradientStatisticsResult:
        """The statistics at the current weights; the current weights become the previous ones."""
        if self.initial is None or self.previous is None:
            raise RuntimeError("GradientStatistics fired before attach(): no initial weights")
        result = measure_gradient_statistics(
            self.model, self.probe, self.options, params=self.space.names, initial=self.initial, previous=self.previous
        )
        named = dict(unwrap_model(self.model).named_parameters())
        with torch.no_grad():
            for n, buf in self.previous.items():
                buf.copy_(named[n])
        return result

    def _history_copy(self, result: GradientStatisticsResult) -> GradientStatisticsResult:
        # The n per-sample norms go to TensorBoard from the latest result; the history keeps their summary.
        return dataclasses.replace(result, sample_norms=None)

    def _extra_state(self) -> dict[str, Any]:
        return {"initial": self.initial, "previous": self.previous}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        for key in ("initial", "previous"):
            saved = state.get(key)
            if saved is None:
                continue
            self.space.flatten(saved)  # raises for another model's weights
            named = dict(unwrap_model(self.model).named_parameters())
            setattr(self, key, {n: saved[n].to(device=named[n].device, dtype=named[n].dtype) for n in self.space.names})
