"""Per-layer curvature as one result object: λ_max and trace of every layer's Hessian block.

:func:`layerwise_curvature_result` wraps :func:`~ignite_landscape.layerwise_curvature` (exact traces from
one Hessian diagonal where the network allows, ``trace_method="auto"``) in a :class:`LayerwiseCurvatureResult`
with one scalar per layer and quantity, which the :class:`~ignite_landscape.LayerwiseCurvature` handler
streams and the TensorBoard log handler draws as a layers × firings heatmap.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> probe = Probe((torch.randn(16, 3), torch.randint(0, 2, (16,))), torch.nn.functional.cross_entropy)
    >>> sorted(layerwise_curvature_result(model, probe, trace_method="hutch++").scalars())
    ['lambda_max/0', 'lambda_max/2', 'trace/0', 'trace/2']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ignite_landscape.measures.spectrum import LayerCurvature, layerwise_curvature
from ignite_landscape.probe import Probe

__all__ = ["LAYER_QUANTITIES", "LayerwiseCurvatureResult", "layerwise_curvature_result"]

LAYER_QUANTITIES = ("trace", "lambda_max")


@dataclass
class LayerwiseCurvatureResult:
    """λ_max and trace of the Hessian block of every layer.

    Attributes:
        layers: one :class:`~ignite_landscape.LayerCurvature` per module that owns parameters.
    """

    layers: list[LayerCurvature]

    def labels(self) -> list[str]:
        """The layer names (``"root"`` for parameters of the model itself)."""
        return [layer.name or "root" for layer in self.layers]

    def values(self, quantity: str = "trace") -> torch.Tensor:
        """The ``quantity`` (``"trace"`` or ``"lambda_max"``) of each layer, float64, in :meth:`labels` order."""
        if quantity not in LAYER_QUANTITIES:
            raise ValueError(f"quantity must be one of {LAYER_QUANTITIES}, got {quantity!r}")
        return torch.tensor([float(getattr(layer, quantity)) for layer in self.layers], dtype=torch.float64)

    def scalars(self) -> dict[str, float]:
        """``lambda_max/<layer>`` and ``trace/<layer>`` for every layer."""
        out: dict[str, float] = {}
        for label, layer in zip(self.labels(), self.layers):
            out[f"lambda_max/{label}"] = float(layer.lambda_max)
            out[f"trace/{label}"] = float(layer.trace)
        return out


def layerwise_curvature_result(
    model: nn.Module,
    probe: Probe,
    *,
    tol: float = 1e-4,
    trace_method: str = "auto",
    trace_hvps: int = 30,
    exact_below: int = 64,
    seed: int = 0,
) -> LayerwiseCurvatureResult:
    """:func:`~ignite_landscape.layerwise_curvature` as a :class:`LayerwiseCurvatureResult` (same arguments)."""
    layers = layerwise_curvature(
        model,
        probe,
        tol=tol,
        trace_hvps=trace_hvps,
        exact_below=exact_below,
        seed=seed,
        trace_method=trace_method,
    )
    return LayerwiseCurvatureResult(layers)
