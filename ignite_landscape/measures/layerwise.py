"""Per-layer curvature: λ_max and trace of every layer's Hessian block.

:func:`layerwise_curvature` returns one :class:`LayerCurvature` per layer; :func:`layerwise_curvature_result`
wraps it (exact traces from one Hessian diagonal where the network allows, ``trace_method="auto"``) in a
:class:`LayerwiseCurvatureResult` with one scalar per layer and quantity, which the
:class:`~ignite_landscape.LayerwiseCurvature` handler streams and the TensorBoard log handler draws as a
layers × firings heatmap.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> probe = Probe((torch.randn(16, 3), torch.randint(0, 2, (16,))), torch.nn.functional.cross_entropy)
    >>> sorted(layerwise_curvature_result(model, probe, trace_method="hutch++").scalars())
    ['lambda_max/0', 'lambda_max/2', 'trace/0', 'trace/2']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ignite_landscape.linalg import hutchpp, lanczos
from ignite_landscape.measures._definitions import num
from ignite_landscape.measures.diagonal import ExactUnsupportedError, diagonal_result, session_hessian_diagonal
from ignite_landscape.measures.gradstats import layer_label
from ignite_landscape.params import ParamSpace
from ignite_landscape.probe import Probe
from ignite_landscape.results import Curve, Result
from ignite_landscape.validation import check_choice, check_int, check_positive

__all__ = [
    "LAYER_QUANTITIES",
    "LayerCurvature",
    "LayerwiseCurvatureResult",
    "LayerwiseOptions",
    "layerwise_curvature",
    "layerwise_curvature_result",
    "measure_layerwise_curvature",
]

LAYER_QUANTITIES = ("trace", "lambda_max")


@dataclass
class LayerCurvature:
    """Curvature of the Hessian block of one layer (its parameters only, the rest held fixed).

    Attributes:
        name: the module name (``""`` for parameters of the root module).
        num_params: parameters in the block.
        lambda_max: top eigenvalue of the block.
        trace: trace of the block (exact for blocks of at most ``exact_below`` parameters, else Hutch++).
        trace_stderr: standard error of ``trace`` (0 when exact).
        num_hvps: Hessian-vector products used for this layer.
    """

    name: str
    num_params: int
    lambda_max: float
    trace: float
    trace_stderr: float
    num_hvps: int
    parameters: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LayerwiseOptions:
    """The options of :func:`layerwise_curvature_result`, validated once.

    The :class:`~ignite_landscape.LayerwiseCurvature` handler builds the same object at construction.

    Attributes:
        tol: Lanczos tolerance of each layer's λ_max.
        trace_method: ``"auto"`` (exact where :func:`~ignite_landscape.hessian_diagonal` supports the
            network, else Hutch++), ``"exact"`` or ``"hutch++"``.
        trace_hvps: Hutch++ budget per layer when the trace is not exact (at least 6).
        exact_below: layers with at most this many parameters are formed densely (exact λ_max and trace).

    Raises:
        TypeError, ValueError: for an option of the wrong type or value (naming it).
    """

    tol: float = 1e-4
    trace_method: str = "auto"
    trace_hvps: int = 30
    exact_below: int = 64

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work, and store the normalised values."""
        object.__setattr__(self, "tol", check_positive("tol", self.tol))
        check_choice("trace_method", self.trace_method, ("auto", "exact", "hutch++"))
        check_int("trace_hvps", self.trace_hvps, 6)
        check_int("exact_below", self.exact_below, 0)


def layerwise_curvature(
    model: nn.Module,
    probe: Probe,
    *,
    tol: float = 1e-4,
    trace_hvps: int = 30,
    exact_below: int = 64,
    seed: int = 0,
    trace_method: str = "hutch++",
) -> list[LayerCurvature]:
    """Top eigenvalue and trace of the Hessian block of each layer that owns trainable parameters.

    Blocks with at most ``exact_below`` parameters are formed densely from HVPs against unit vectors
    (exact); larger ones use Lanczos (λ_max) and Hutch++ (trace). With ``trace_method="exact"`` every
    trace comes from one exact Hessian diagonal (:func:`~ignite_landscape.hessian_diagonal`; it raises
    where that is unsupported); ``"auto"`` uses it where supported and Hutch++ otherwise.
    """
    options = LayerwiseOptions(tol, trace_method, trace_hvps, exact_below)
    return measure_layerwise_curvature(model, probe, options, seed).layers


def measure_layerwise_curvature(
    model: nn.Module, probe: Probe, options: LayerwiseOptions, seed: int = 0, params: None = None
) -> LayerwiseCurvatureResult:
    """:func:`layerwise_curvature` on validated options, as a result (the handler runs it).

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        options: the validated options.
        seed: seed of the Lanczos start vectors and the Hutch++ vectors.
        params: ``None`` (every layer is measured; a selection is refused).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> probe = Probe((torch.randn(16, 3), torch.randint(0, 2, (16,))), torch.nn.CrossEntropyLoss())
        >>> measure_layerwise_curvature(model, probe, LayerwiseOptions(trace_method="hutch++")).labels()
        ['0', '2']
    """
    if params is not None:
        raise ValueError("params: layerwise curvature measures every layer, got a selection")
    tol, trace_method, trace_hvps, exact_below = (
        options.tol,
        options.trace_method,
        options.trace_hvps,
        options.exact_below,
    )
    exact_traces: dict[str, float] = {}
    if trace_method != "hutch++":
        with probe.session(model) as s:
            try:
                exact_traces = diagonal_result(session_hessian_diagonal(s), s.space).layer_traces
            except (ImportError, ExactUnsupportedError):
                if trace_method == "exact":
                    raise
    rows = []
    for owner, names in ParamSpace.from_model(model).module_groups().items():
        with probe.session(model, names) as s:
            n = s.space.numel
            if owner in exact_traces and n > exact_below:
                lres = lanczos(s.hvp, n, k=1, tol=tol, seed=seed, dtype=s.dtype, device=s.device)
                lam, tr, err = float(lres.eigenvalues[0]), exact_traces[owner], 0.0
            elif n <= exact_below:
                eye = torch.eye(n, dtype=s.dtype, device=s.device)
                H = torch.stack([s.hvp(eye[i]) for i in range(n)]).double().cpu()
                H = 0.5 * (H + H.T)
                lam = float(torch.linalg.eigvalsh(H)[-1])
                tr, err = float(H.trace()), 0.0
            else:
                lres = lanczos(s.hvp, n, k=1, tol=tol, seed=seed, dtype=s.dtype, device=s.device)
                lam = float(lres.eigenvalues[0])
                est = hutchpp(s.hvp, n, num_matvecs=trace_hvps, seed=seed, dtype=s.dtype, device=s.device)
                tr, err = est.value, est.stderr
            rows.append(LayerCurvature(owner, n, lam, tr, err, s.num_hvps, list(names)))
    return LayerwiseCurvatureResult(rows)


@dataclass
class LayerwiseCurvatureResult(Result):
    """λ_max and trace of the Hessian block of every layer.

    Attributes:
        layers: one :class:`~ignite_landscape.LayerCurvature` per module that owns parameters.
    """

    kind = "layerwise"

    layers: list[LayerCurvature]

    def labels(self) -> list[str]:
        """The layer names (``"root"`` for parameters of the model itself)."""
        return [layer_label(layer.name) for layer in self.layers]

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

    def curves(self) -> dict[str, Curve]:
        """One bars curve per quantity of :data:`LAYER_QUANTITIES` (``trace``, ``lambda_max``) over the layers."""
        return {
            q: Curve("bars", y=self.values(q), labels=tuple(self.labels()), xlabel="layer", ylabel=q)
            for q in LAYER_QUANTITIES
        }

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar and curve key, with each block's size and how its trace was found."""
        out = {
            "trace": "trace of the Hessian block of each layer (its parameters only, the rest held fixed)",
            "lambda_max": "largest eigenvalue of the Hessian block of each layer (its parameters only)",
        }
        for label, layer in zip(self.labels(), self.layers):
            block = f"the Hessian block of layer {label}'s {layer.num_params} parameters (the rest held fixed)"
            out[f"lambda_max/{label}"] = (
                f"largest eigenvalue of {block}: dense eigendecomposition of a small block, else Lanczos"
            )
            how = (
                "exact (a dense block or the exact Hessian diagonal)"
                if layer.trace_stderr == 0
                else f"Hutch++ estimate, standard error {num(layer.trace_stderr)}"
            )
            out[f"trace/{label}"] = f"trace of {block}, {how}"
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
    return measure_layerwise_curvature(model, probe, LayerwiseOptions(tol, trace_method, trace_hvps, exact_below), seed)
