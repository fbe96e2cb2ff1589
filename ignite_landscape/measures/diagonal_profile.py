"""The Hessian diagonal over training, kept compact: per-layer traces, negative entries, extremes, a histogram.

:func:`~ignite_landscape.measures.diagonal.hessian_diagonal` gives ``diag(H)`` exactly, but as one
parameter-sized vector, too large to keep at every firing. :func:`diagonal_profile` reduces it to what
can be streamed over training: the trace of each layer's diagonal block, the fraction of each layer's
negative diagonal entries (directions of negative curvature along single weights), the largest and
smallest entry, the total trace and a fixed-bin histogram of the entries. ``method="auto"`` uses the
exact diagonal where BackPACK supports the network and otherwise Hutchinson's diagonal estimator
``diag(H) = E[z ⊙ Hz]`` over seeded Rademacher vectors ``z`` (Bekas, Kokiopoulou & Saad 2007); the
result says which ran (the ``exact`` scalar and its definition).

The module is a measure in the package's layout: a frozen options dataclass validated once, a plain
function and a result implementing :class:`~ignite_landscape.results.Result`. It needs no handler class of
its own: the generic :class:`~ignite_landscape.handlers.measure.Measure` runs it on engine events, and
``LandscapeLogHandler`` and the report take its scalars, curves and definitions from the protocol::

    from ignite_landscape.handlers.measure import Measure
    handler = Measure(model, probe, diagonal_profile, DiagonalProfileOptions(bins=30))
    handler.attach(trainer, Events.EPOCH_COMPLETED)  # name "diagonal_profile", scalars landscape/diagonal_profile/...

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(), torch.nn.Linear(4, 2)).double()
    >>> x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    >>> probe = Probe((x, y), torch.nn.functional.cross_entropy)
    >>> profile = diagonal_profile(model, probe, DiagonalProfileOptions(method="hutchinson", num_hvps=8, bins=5))
    >>> profile.method, profile.layers, sum(profile.counts) == profile.num_params == 26
    ('hutchinson', ('0', '2'), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ignite_landscape.linalg.random import generator, rademacher
from ignite_landscape.measures.diagonal import ExactUnsupportedError, session_hessian_diagonal
from ignite_landscape.measures.gradstats import layer_label
from ignite_landscape.params import ParamsArg, ParamSpace
from ignite_landscape.probe import Probe
from ignite_landscape.results import Curve, Result
from ignite_landscape.validation import check_choice, check_int

__all__ = [
    "DIAGONAL_METHODS",
    "DiagonalProfile",
    "DiagonalProfileOptions",
    "diagonal_profile",
    "hutchinson_diagonal",
]

DIAGONAL_METHODS = ("auto", "exact", "hutchinson")


@dataclass(frozen=True)
class DiagonalProfileOptions:
    """How :func:`diagonal_profile` gets the diagonal and bins it, validated once.

    Attributes:
        method: ``"auto"`` (exact where BackPACK supports the network, else Hutchinson), ``"exact"`` (refuse
            otherwise) or ``"hutchinson"``.
        num_hvps: Rademacher vectors (one Hessian-vector product each) of the Hutchinson estimate; at least 2,
            for a standard error. Unused when the exact diagonal is computed.
        bins: number of equal-width bins of the histogram of the diagonal's entries.
        histogram_range: ``(low, high)`` edges of the histogram, the same at every firing so histograms of
            different firings compare bin by bin; entries outside go into the first or last bin (counted in
            the curve's ``below``/``above``). ``None``: each firing's smallest and largest entry.

    Raises:
        TypeError: for a non-int ``num_hvps`` or ``bins``, or a ``histogram_range`` that is not two numbers.
        ValueError: for an unknown ``method``, too few ``num_hvps`` or ``bins``, or ``low >= high``.

    Example:
        >>> DiagonalProfileOptions(bins=0)
        Traceback (most recent call last):
        ...
        ValueError: bins must be at least 1, got 0
    """

    method: str = "auto"
    num_hvps: int = 50
    bins: int = 41
    histogram_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        """Validate every option once, naming the one that cannot work."""
        check_choice("method", self.method, DIAGONAL_METHODS)
        check_int("num_hvps", self.num_hvps, 2)
        check_int("bins", self.bins, 1)
        r = self.histogram_range
        if r is not None:
            if (
                not isinstance(r, (tuple, list))
                or len(r) != 2
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in r)
            ):
                raise TypeError(f"histogram_range must be None or two numbers (low, high), got {r!r}")
            if not (math.isfinite(r[0]) and math.isfinite(r[1]) and r[0] < r[1]):
                raise ValueError(f"histogram_range must be finite with low < high, got {r!r}")
            object.__setattr__(self, "histogram_range", (float(r[0]), float(r[1])))


@dataclass
class DiagonalProfile(Result):
    """A compact profile of the probe-loss Hessian diagonal ``diag(H)`` (no parameter-sized field).

    Attributes:
        method: ``"exact"`` (BackPACK) or ``"hutchinson"`` (the estimate from :attr:`num_hvps` vectors).
        layers: label of each module owning parameters (``"root"`` for the model's own).
        layer_sizes: parameters of each layer.
        layer_traces: trace of each layer's diagonal block (the sum of its entries).
        layer_stderrs: standard error of each layer's trace (0 when exact).
        layer_negative_fractions: fraction of each layer's diagonal entries below zero.
        value: the trace ``tr(H)``, the sum of every entry.
        stderr: standard error of :attr:`value` (0 when exact).
        largest: the largest diagonal entry.
        smallest: the smallest diagonal entry.
        negative_fraction: fraction of all diagonal entries below zero.
        num_params: ``P``, the number of entries.
        edges: the ``bins + 1`` edges of the histogram.
        counts: entries per bin (they sum to :attr:`num_params`).
        below: entries under the first edge (counted in the first bin).
        above: entries over the last edge (counted in the last bin).
        num_hvps: Hessian-vector products used (0 when exact).
        fallback: why the exact diagonal was not computed under ``method="auto"`` (``None`` otherwise).
    """

    kind = "diagonal_profile"

    method: str
    layers: tuple[str, ...]
    layer_sizes: tuple[int, ...]
    layer_traces: tuple[float, ...]
    layer_stderrs: tuple[float, ...]
    layer_negative_fractions: tuple[float, ...]
    value: float
    stderr: float
    largest: float
    smallest: float
    negative_fraction: float
    num_params: int
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    below: int = 0
    above: int = 0
    num_hvps: int = 0
    fallback: str | None = None

    def scalars(self) -> dict[str, float]:
        """The totals, then ``trace/<layer>``, ``trace_stderr/<layer>`` and ``negative_fraction/<layer>``."""
        out = {
            "value": self.value,
            "stderr": self.stderr,
            "max": self.largest,
            "min": self.smallest,
            "mean": self.value / max(self.num_params, 1),
            "negative_fraction": self.negative_fraction,
            "exact": float(self.method == "exact"),
            "num_hvps": float(self.num_hvps),
        }
        for label, tr, err, neg in zip(
            self.layers, self.layer_traces, self.layer_stderrs, self.layer_negative_fractions
        ):
            out[f"trace/{label}"] = tr
            out[f"trace_stderr/{label}"] = err
            out[f"negative_fraction/{label}"] = neg
        return out

    def curves(self) -> dict[str, Curve]:
        """Per-layer traces and negative fractions as ``bars``, the entries' distribution as a ``histogram``."""
        edges = torch.tensor(self.edges, dtype=torch.float64)
        return {
            "layer_traces": Curve("bars", y=self.layer_traces, labels=self.layers, xlabel="layer", ylabel="trace"),
            "layer_negative_fractions": Curve(
                "bars",
                y=self.layer_negative_fractions,
                labels=self.layers,
                xlabel="layer",
                ylabel="negative fraction",
            ),
            "histogram": Curve(
                "histogram",
                x=0.5 * (edges[1:] + edges[:-1]),
                y=self.counts,
                extra={"edges": edges, "num_params": self.num_params, "below": self.below, "above": self.above},
                xlabel="H_ii",
                ylabel="entries",
            ),
        }

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar and curve key, saying how the diagonal was obtained."""
        p = self.num_params
        if self.method == "exact":
            source = f"the exact Hessian diagonal over {p} parameters (BackPACK)"
            how = "1: the exact diagonal (BackPACK), with no estimation error"
        else:
            source = (
                f"Hutchinson's estimate of the Hessian diagonal over {p} parameters, the mean of z ⊙ Hz over "
                f"{self.num_hvps} seeded Rademacher vectors z"
            )
            why = f" (exact unavailable: {self.fallback})" if self.fallback else " (method='hutchinson')"
            how = f"0: Hutchinson's estimate from {self.num_hvps} Hessian-vector products{why}"
        out = {
            "value": f"tr(H), the sum of {source}",
            "stderr": "standard error of value (0 when exact; across the Rademacher vectors otherwise)",
            "max": f"largest entry of {source}",
            "min": f"smallest entry of {source}",
            "mean": f"value / {p}: the mean diagonal entry, equal to the mean eigenvalue of H",
            "negative_fraction": f"fraction of the {p} entries of {source} below zero",
            "exact": how,
            "num_hvps": "Hessian-vector products the estimate used (0 when exact)",
            "layer_traces": "trace of each layer's block of the Hessian diagonal, one bar per layer",
            "layer_negative_fractions": "fraction of each layer's Hessian diagonal entries below zero, per layer",
            "histogram": (
                f"the {p} entries of {source} in {len(self.counts)} equal-width bins from {self.edges[0]:.4g} to "
                f"{self.edges[-1]:.4g} (entries outside counted in the end bins)"
            ),
        }
        for label, size in zip(self.layers, self.layer_sizes):
            out[f"trace/{label}"] = f"trace of layer {label}'s block of the Hessian ({size} diagonal entries)"
            out[f"trace_stderr/{label}"] = f"standard error of trace/{label} (0 when exact)"
            out[f"negative_fraction/{label}"] = f"fraction of layer {label}'s {size} diagonal entries below zero"
        return out


def hutchinson_diagonal(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    num_matvecs: int,
    seed: int = 0,
    blocks: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hutchinson's estimate of ``diag(A)``: the mean of ``z ⊙ Az`` over ``num_matvecs`` Rademacher vectors.

    Each ``z_i (Az)_i = A_ii + Σ_{j≠i} A_ij z_i z_j`` is unbiased for ``A_ii``. The vectors are those of
    :func:`~ignite_landscape.linalg.trace.hutchinson` with the same seed, so the estimate's sum is exactly
    Hutchinson's trace estimate.

    Args:
        matvec: ``v ↦ Av`` for a symmetric ``n × n`` matrix ``A``.
        n: the dimension.
        num_matvecs: the number of vectors (at least 2).
        seed: seed of the private generator of the vectors.
        blocks: sizes of consecutive blocks of the diagonal (summing to ``n``); default one block.
        dtype: dtype of the vectors.
        device: device of the vectors.

    Returns:
        ``(estimate, block_samples)``: the float64 estimate of ``diag(A)`` (``n`` entries) and, for each vector,
        the sum of ``z ⊙ Az`` over each block (float64, ``num_matvecs × len(blocks)``): the samples whose mean
        is each block's trace estimate and whose spread gives its standard error.

    Raises:
        ValueError: for fewer than 2 vectors or blocks that do not sum to ``n``.

    Example:
        >>> A = torch.tensor([[2.0, 1.0], [1.0, -3.0]], dtype=torch.float64)
        >>> est, samples = hutchinson_diagonal(lambda v: A @ v, 2, num_matvecs=4, dtype=torch.float64)
        >>> est.shape, samples.shape
        (torch.Size([2]), torch.Size([4, 1]))
    """
    check_int("num_matvecs", num_matvecs, 2)
    sizes = [n] if blocks is None else [int(b) for b in blocks]
    if sum(sizes) != n or any(b < 1 for b in sizes):
        raise ValueError(f"blocks must be positive sizes summing to n = {n}, got {sizes}")
    g = generator(seed)
    total = torch.zeros(n, dtype=torch.float64)
    block_samples = torch.zeros(num_matvecs, len(sizes), dtype=torch.float64)
    for k in range(num_matvecs):
        z = rademacher(n, g, dtype=dtype, device=device)
        s = (z * matvec(z)).double().cpu()
        total += s
        block_samples[k] = torch.stack([c.sum() for c in s.split(sizes)])
    return total / num_matvecs, block_samples


def _stderr(samples: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean of each column."""
    return samples.std(dim=0, unbiased=True) / math.sqrt(samples.shape[0])


def _histogram(
    d: torch.Tensor, bins: int, bounds: tuple[float, float] | None
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Edges, counts (every entry counted: those outside go to the end bins), entries below and above."""
    if bounds is None:
        lo, hi = float(d.min()), float(d.max())
        if lo == hi:  # one value: a unit-wide bin around it
            lo, hi = lo - 0.5, hi + 0.5
    else:
        lo, hi = bounds
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    edges[0], edges[-1] = lo, hi  # exactly the bounds, so the extreme entries fall inside
    # Bins are [e_k, e_{k+1}), the last one closed, as numpy.histogram counts.
    index = torch.bucketize(d, edges[1:-1], right=True)
    counts = torch.bincount(index, minlength=bins)
    return edges, counts, int((d < lo).sum()), int((d > hi).sum())


def diagonal_profile(
    model: nn.Module,
    probe: Probe,
    options: DiagonalProfileOptions | None = None,
    seed: int = 0,
    params: ParamsArg = None,
) -> DiagonalProfile:
    """Per-layer traces, negative fractions, extremes and a histogram of the probe-loss Hessian diagonal.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        options: a :class:`DiagonalProfileOptions` (default: its defaults).
        seed: seed of the Rademacher vectors of the Hutchinson estimate.
        params: restrict to a subset of parameters (see :class:`~ignite_landscape.ParamSpace`).

    Returns:
        A :class:`DiagonalProfile` (compact: no parameter-sized field).

    Raises:
        TypeError: if ``options`` is not a :class:`DiagonalProfileOptions`.
        ImportError: for ``method="exact"`` without BackPACK (``pip install "ignite_landscape[exact]"``).
        ExactUnsupportedError: (a ``ValueError``) for ``method="exact"`` on a network BackPACK cannot do.
        ValueError: if the diagonal has a non-finite entry.
    """
    options = DiagonalProfileOptions() if options is None else options
    if not isinstance(options, DiagonalProfileOptions):
        raise TypeError(f"options must be a DiagonalProfileOptions, got {type(options).__name__}")
    check_int("seed", seed, 0)
    fallback = None
    with probe.session(model, params) as s:
        space: ParamSpace = s.space
        groups = space.module_groups()
        position = {n: i for i, n in enumerate(space.names)}
        # members[g]: the indices (in space order) of layer g's parameters.
        members = [[position[n] for n in names] for names in groups.values()]
        diag = None
        if options.method in ("exact", "auto"):
            try:
                diag = session_hessian_diagonal(s).double().cpu()
            except (ImportError, ExactUnsupportedError) as exc:
                if options.method == "exact":
                    raise
                fallback = str(exc)
        if diag is None:
            diag, block_samples = hutchinson_diagonal(
                s.hvp,
                space.numel,
                num_matvecs=options.num_hvps,
                seed=seed,
                blocks=space.numels,
                dtype=s.dtype,
                device=s.base[0].device,
            )
            layer_samples = torch.stack([block_samples[:, m].sum(dim=1) for m in members], dim=1)
            layer_stderrs = _stderr(layer_samples).tolist()
            stderr = float(_stderr(block_samples.sum(dim=1, keepdim=True))[0])
            method, num_hvps = "hutchinson", s.num_hvps
        else:
            layer_stderrs, stderr, method, num_hvps = [0.0] * len(members), 0.0, "exact", 0
    if not bool(torch.isfinite(diag).all()):
        raise ValueError(f"the Hessian diagonal has {int((~torch.isfinite(diag)).sum())} non-finite entries")
    chunks = diag.split(space.numels)
    parts = [torch.cat([chunks[i] for i in m]) for m in members]
    edges, counts, below, above = _histogram(diag, options.bins, options.histogram_range)
    return DiagonalProfile(
        method=method,
        layers=tuple(layer_label(name) for name in groups),
        layer_sizes=tuple(p.numel() for p in parts),
        layer_traces=tuple(float(p.sum()) for p in parts),
        layer_stderrs=tuple(float(e) for e in layer_stderrs),
        layer_negative_fractions=tuple(float((p < 0).double().mean()) for p in parts),
        value=float(diag.sum()),
        stderr=stderr,
        largest=float(diag.max()),
        smallest=float(diag.min()),
        negative_fraction=float((diag < 0).double().mean()),
        num_params=int(diag.numel()),
        edges=tuple(edges.tolist()),
        counts=tuple(int(c) for c in counts),
        below=below,
        above=above,
        num_hvps=int(num_hvps),
        fallback=fallback,
    )
