"""Handler for the gradient noise scale ``B_simple = tr(Σ)/‖G‖²`` (McCandlish et al. 2018).

Example:
    >>> import torch
    >>> from ignite.engine import Engine
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(16, 4), torch.randint(0, 3, (16,))), torch.nn.functional.cross_entropy)
    >>> trainer = Engine(lambda engine, batch: None)
    >>> _ = GradientNoiseScale(model, probe).attach(trainer)
    >>> _ = trainer.run([0], max_epochs=1)
    >>> trainer.state.metrics["landscape/noise_scale/b_simple"] > 0
    True
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from torch import nn

from ignite_landscape.handlers.base import LandscapeHandler, _check_choice, _check_int
from ignite_landscape.measures.noise import NOISE_METHODS, gradient_noise_scale
from ignite_landscape.probe import Probe

__all__ = ["GradientNoiseScale"]


class GradientNoiseScale(LandscapeHandler):
    """The simple gradient noise scale on the probe: the batch size above which larger batches stop helping.

    Scalars: ``b_simple``, ``trace_sigma``, ``grad_norm_sq``, ``probe_grad_norm_sq``.

    Args:
        model: the trained model.
        probe: the fixed samples (at least 2).
        method: ``"per_sample"`` (exact per-sample gradients) or ``"two_batch"`` (the paper's estimator
            from a small and a large batch).
        small_batch: size of the small batch for ``"two_batch"``.
        **kwargs: ``name``, ``params``, ``seed``, ``on_error``, ``progress`` (see :class:`LandscapeHandler`).
    """

    default_name = "noise_scale"

    def __init__(
        self,
        model: nn.Module,
        probe: Probe,
        *,
        method: str = "per_sample",
        small_batch: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, probe, **kwargs)
        self.method = _check_choice("method", method, NOISE_METHODS)
        if small_batch is not None:
            _check_int("small_batch", small_batch, 1)
            if method != "two_batch":
                raise ValueError("small_batch is only used by method='two_batch'")
            if small_batch >= probe.num_samples:
                raise ValueError(f"small_batch must be smaller than the probe's {probe.num_samples} samples")
        if probe.num_samples < 2:
            raise ValueError("probe: the gradient noise scale needs at least 2 samples")
        self.small_batch = small_batch

    def expected_keys(self) -> list[str]:
        return ["b_simple", "trace_sigma", "grad_norm_sq"]

    def compute(self, engine: Engine) -> Any:
        return gradient_noise_scale(
            self.model,
            self.probe,
            method=self.method,
            small_batch=self.small_batch,
            seed=self.seed,
            params=self.params,
        )
