"""The one protocol every measure's result implements, so writers and readers never switch on types.

A result says three things about itself:

* :meth:`Result.scalars` -- named numbers (``{"lambda_max": 41.2, ...}``), logged as
  ``landscape/<name>/<key>``;
* :meth:`Result.curves` -- named arrays as :class:`Curve` objects (a 1D slice, a 2D grid, a density,
  a path over a plane, a distribution, per-layer bars), drawn as figures and written as raw data the
  report can redraw;
* :meth:`Result.definitions` -- one sentence per scalar (and per curve) saying what the number is, in
  the terms of the options it was computed with (``"SAM step in an ℓ2 ball of radius ρ = 0.05"``).

A result class also carries a :attr:`Result.kind` (one of :data:`KINDS`): the report finds a
handler's results by kind, whatever the user named the handler.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Answer(Result):
    ...     kind = "answer"
    ...     value: float
    ...     def scalars(self) -> dict[str, float]:
    ...         return {"value": self.value}
    ...     def definitions(self) -> dict[str, str]:
    ...         return {"value": "the answer"}
    >>> r = Answer(42.0)
    >>> r.scalars(), r.curves(), r.record()["kind"]
    ({'value': 42.0}, {}, 'answer')
    >>> Curve.from_plain(Curve("line", x=[0.0, 1.0], y=[2.0, 3.0]).to_plain()).y.tolist()
    [2.0, 3.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = ["KINDS", "CURVE_KINDS", "Curve", "Result", "result_kind", "record_of"]

# The kinds of the package's results (a user's own measure may add its own kind).
KINDS = (
    "spectrum",  # HessianEigenvalues
    "trace",  # HessianTraceResult
    "density",  # HessianDensityResult
    "sharpness",  # SharpnessResult
    "slice1d",  # LossSliceResult with dims=1
    "slice2d",  # LossSliceResult with dims=2
    "connectivity",  # Interpolation
    "noise_scale",  # NoiseScale
    "trajectory",  # TrajectoryPlaneResult
    "layerwise",  # LayerwiseCurvatureResult
    "gradstats",  # GradientStatisticsResult
    "overlap",  # GradientOverlapResult
    "directional",  # DirectionalCurvatureResult
    "batch_sharpness",  # BatchSharpnessResult
    "ggn",  # GGNDecomposition
    "diagonal",  # HessianDiagonal
)

# What a writer knows how to draw:
#   line       y over x (a 1D slice, an interpolation path, a density); ``extra`` may hold more y-series
#              of x (``accuracy``, ``error``) and ``overlay=True`` asks for earlier firings under it;
#   grid       z[i, j] at (x[i], y[j]) (a 2D slice): contours, a surface, a 3D mesh;
#   path       a grid (x, y, z) with a path over it: ``extra["path_x"]``, ``extra["path_y"]``;
#   histogram  samples x, each with weight y (all 1 when y is empty): a distribution;
#   bars       one value y[i] per label (``labels``): per-layer numbers, stacked over firings as a heatmap.
CURVE_KINDS = ("line", "grid", "path", "histogram", "bars")


def _array(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor, without importing torch here
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64)


def _rounded(a: np.ndarray) -> Any:
    """Nested lists of floats with 8 significant digits (NaN and inf kept as floats)."""
    return np.vectorize(lambda v: float(f"{v:.8g}"), otypes=[float])(a).tolist() if a.size else a.tolist()


@dataclass(frozen=True)
class Curve:
    """Named array data of a result, in one of the :data:`CURVE_KINDS`.

    Attributes:
        kind: how to draw it (see :data:`CURVE_KINDS`).
        x: coordinates along the first axis (``line``, ``grid``, ``path``) or the samples (``histogram``).
        y: values over ``x`` (``line``), coordinates along the second axis (``grid``, ``path``), weights
            (``histogram``, empty for unit weights) or one value per label (``bars``).
        z: ``(len(x), len(y))`` values of a ``grid`` or ``path``; empty otherwise.
        labels: the label of each bar (``bars``).
        extra: further named arrays or numbers that belong to the curve (``accuracy`` over a slice,
            ``path_x``/``path_y`` of a path, ``num_params`` of a spectral histogram).
        xlabel: axis label of ``x``.
        ylabel: axis label of ``y`` (or of ``z`` for grids).
        overlay: draw it over the same curve of earlier firings (the 1D slice over training).

    Example:
        >>> c = Curve("grid", x=[-1.0, 0.0, 1.0], y=[0.0, 1.0], z=[[1.0, 2.0], [0.5, 1.0], [1.0, 2.0]])
        >>> c.z.shape
        (3, 2)
    """

    kind: str
    x: Any = ()
    y: Any = ()
    z: Any = ()
    labels: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    xlabel: str = ""
    ylabel: str = ""
    overlay: bool = False

    def __post_init__(self) -> None:
        """Store the data as arrays and check that their shapes fit the curve's ``kind``."""
        if self.kind not in CURVE_KINDS:
            raise ValueError(f"kind must be one of {CURVE_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "x", _array(self.x).reshape(-1))
        object.__setattr__(self, "y", _array(self.y).reshape(-1))
        object.__setattr__(self, "z", _array(self.z))
        object.__setattr__(self, "labels", tuple(str(s) for s in self.labels))
        extra = {k: (v if isinstance(v, (str, bool)) or v is None else _array(v)) for k, v in self.extra.items()}
        object.__setattr__(self, "extra", extra)
        if self.kind in ("grid", "path") and self.z.shape != (self.x.size, self.y.size):
            raise ValueError(f"a {self.kind} needs z of shape (len(x), len(y)), got {self.z.shape}")
        if self.kind == "line" and self.x.size != self.y.size:
            raise ValueError(f"a line needs x and y of the same length, got {self.x.size} and {self.y.size}")
        if self.kind == "bars" and len(self.labels) != self.y.size:
            raise ValueError(f"bars need one label per value, got {len(self.labels)} and {self.y.size}")
        if self.kind == "histogram" and self.y.size not in (0, self.x.size):
            raise ValueError(f"histogram weights must match the samples, got {self.y.size} and {self.x.size}")

    def to_plain(self) -> dict[str, Any]:
        """JSON-ready dict (8 significant digits), the inverse of :meth:`from_plain`."""

        def plain(v: Any) -> Any:
            return _rounded(v) if isinstance(v, np.ndarray) else v

        return {
            "kind": self.kind,
            "x": plain(self.x),
            "y": plain(self.y),
            "z": plain(self.z),
            "labels": list(self.labels),
            "extra": {k: plain(v) for k, v in self.extra.items()},
            "xlabel": self.xlabel,
            "ylabel": self.ylabel,
            "overlay": self.overlay,
        }

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> Curve:
        """The curve :meth:`to_plain` wrote."""
        extra = {k: (v if isinstance(v, (str, bool)) or v is None else np.asarray(v, dtype=np.float64))
                 for k, v in dict(data.get("extra", {})).items()}  # fmt: skip
        return cls(
            kind=data["kind"],
            x=data.get("x", ()),
            y=data.get("y", ()),
            z=data.get("z", ()),
            labels=tuple(data.get("labels", ())),
            extra=extra,
            xlabel=data.get("xlabel", ""),
            ylabel=data.get("ylabel", ""),
            overlay=bool(data.get("overlay", False)),
        )


class Result:
    """Base of every result: a kind, named scalars, named curves and the definition of each.

    Subclasses (dataclasses of :mod:`ignite_landscape.measures`) set :attr:`kind` and implement
    :meth:`scalars` and :meth:`definitions`; those with arrays implement :meth:`curves`.
    """

    kind: ClassVar[str] = ""

    def scalars(self) -> dict[str, float]:
        """Named numbers, logged as ``landscape/<name>/<key>``."""
        raise NotImplementedError

    def curves(self) -> dict[str, Curve]:
        """Named arrays, drawn as figures under ``landscape/<name>/<key>`` (none by default)."""
        return {}

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar key (and curve key): what the number is, with the options it used.

        Not the firing's values (a count, a width found from the data): a handler keeps, and a log handler writes,
        one copy per distinct set of sentences, so sentences that change every firing cost memory every firing.
        """
        return {}

    def record(self) -> dict[str, Any]:
        """``{"kind": ..., "definitions": ...}``: what a log handler writes once so a reader knows the result."""
        return record_of(self)


def result_kind(result: Any) -> str:
    """The kind of ``result`` (``""`` for an object that is not a :class:`Result`).

    Read from the instance, so a result whose kind depends on a field (a 1D or 2D slice) may define
    ``kind`` as a property.
    """
    return str(getattr(result, "kind", "") or "")


def record_of(result: Any, extra_definitions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The kind and definitions of ``result`` (plus ``extra_definitions``, e.g. of a handler's own scalars)."""
    definitions = dict(result.definitions()) if callable(getattr(result, "definitions", None)) else {}
    definitions.update(extra_definitions or {})
    return {"kind": result_kind(result), "definitions": {k: str(v) for k, v in sorted(definitions.items())}}
