"""Top-5 Hessian eigenvalues of a digits CNN: ignite_landscape against PyHessian, hessian-eigenthings and scipy.

A :class:`~examples.models.DigitsCNN` (about 38k parameters) is trained a few seeded epochs on scikit-learn's
``load_digits``; the Hessian of the mean cross-entropy over a fixed probe of 512 training samples is the operator.
Every tool gets its own deep copy of the trained model (PyHessian switches it to eval mode and leaves
``.grad`` tensors with graphs on it), is warmed up once and then timed (median of ``--repeats`` rounds, the
tools interleaved within each round), all in one process with the same ``torch.set_num_threads``. The
reference is scipy's ``eigsh`` with ``tol=1e-10`` on a float64 copy of the model (same weights, exactly
cast), so the float32 tools' errors include their own rounding, which is far below the 1e-4 target.

Rows:
    * PyHessian: ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(top_n=5)`` with its defaults
      (power iteration with deflation, ``maxIter=100``, ``tol=1e-3``); timed including its constructor, which
      builds the gradient graph it reuses. HVPs counted by wrapping ``hessian_vector_product``.
    * hessian-eigenthings ``lanczos``: its ``HessianOperator`` and ``lanczos(op, k=5, which="LA")`` with its
      default ``max_iter = 2k``, plus the same with ``max_iter=25`` (the HVP budget of our target).
    * scipy ``eigsh`` through curvlinops' ``HessianLinearOperator(...).to_scipy()``, ``tol=1e-4`` (ARPACK's
      rule is the same relative Ritz residual as ours), seeded start vector.
    * ours: ``hessian_eigenvalues(model, probe, k=5, tol=1e-4)``, timed including the session and its graph.

Also printed: one HVP's cost as a multiple of one gradient's on the same probe (``ProbeSession.hvp`` against
``ProbeSession.loss_and_grad``), for the first HVP (which builds the cached graph) and in steady state.

Example:
    Run from the repository root::

        python benchmarks/bench_spectrum.py            # full run
        python benchmarks/bench_spectrum.py --quick    # fewer epochs and repeats, for a smoke test
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_quick, probe_batch, timing_options, trained_digits_cnn  # noqa: E402
from ignite_landscape import Probe, hessian_eigenvalues  # noqa: E402

__all__ = ["ToolResult", "main"]

K = 5
OUR_TOL = 1e-4
REF_TOL = 1e-10
TARGET_ERROR = 1e-4
TARGET_HVPS = 25
TARGET_TIME_RATIO = 0.4
TARGET_HVP_COST = 2.2


@dataclass
class ToolResult:
    """One tool's answer and cost.

    Attributes:
        name: row label.
        eigenvalues: the k eigenvalues, descending, float64.
        num_hvps: Hessian-vector products of one run.
        times: wall times of the timed runs (seconds).
    """

    name: str
    eigenvalues: np.ndarray
    num_hvps: int
    times: list[float]

    @property
    def wall(self) -> float:
        """Median wall time."""
        return statistics.median(self.times)


def _descending(values: Any) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return np.sort(arr)[::-1].copy()


# -- the tools ------------------------------------------------------------------------------------------------
# Each returns (eigenvalues, number of HVPs) for one run on the model it is handed.


@contextmanager
def _count_pyhessian_hvps() -> Any:
    """Count PyHessian's HVPs by wrapping the module-level function its eigenvalue loop calls."""
    module = sys.modules["pyhessian.hessian"]
    original = module.hessian_vector_product
    counter = {"n": 0}

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter["n"] += 1
        return original(*args, **kwargs)

    module.hessian_vector_product = counted
    try:
        yield counter
    finally:
        module.hessian_vector_product = original


def run_pyhessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, int]:
    """PyHessian with its defaults; its constructor (which builds the gradient graph) is part of the run."""
    from pyhessian import hessian

    # PyHessian draws its start vectors from the global RNG: seed it, and restore it afterwards.
    with torch.random.fork_rng(devices=[]), _count_pyhessian_hvps() as counter:
        torch.manual_seed(0)
        eigenvalues, _ = hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False).eigenvalues(top_n=K)
    return _descending(eigenvalues), counter["n"]


def run_eigenthings(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_iter: int | None = None
) -> tuple[np.ndarray, int]:
    """hessian-eigenthings' ``lanczos`` on its ``HessianOperator`` (each matvec recomputes the gradient)."""
    from hessian_eigenthings import HessianOperator, lanczos, supervised_loss

    op = HessianOperator(model, [(x, y)], supervised_loss(nn.CrossEntropyLoss()))
    counter = {"n": 0}
    matvec = op.matvec

    def counted(v: torch.Tensor) -> torch.Tensor:
        counter["n"] += 1
        return matvec(v)

    op.matvec = counted  # type: ignore[method-assign]
    res = lanczos(op, k=K, which="LA", seed=0, max_iter=max_iter)
    return _descending(res.eigenvalues.tolist()), counter["n"]


def _curvlinops_scipy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, dict[str, int]]:
    """Curvlinops' Hessian as a scipy ``LinearOperator`` that counts its operator applications."""
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator

    params = [p for p in model.parameters() if p.requires_grad]
    # check_deterministic runs extra passes once as a safety check; it is not part of the eigensolve.
    op = HessianLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False, num_data=x.shape[0]
    )
    inner = op.to_scipy(dtype=np.float64)
    counter = {"n": 0}

    def matvec(v: np.ndarray) -> np.ndarray:
        counter["n"] += 1
        return inner.matvec(v)

    def matmat(V: np.ndarray) -> np.ndarray:
        counter["n"] += V.shape[1]
        return inner.matmat(V)

    counted = LinearOperator(inner.shape, matvec=matvec, matmat=matmat, rmatvec=matvec, dtype=np.float64)
    return counted, counter


def run_eigsh(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tol: float) -> tuple[np.ndarray, int]:
    """Scipy's ``eigsh`` (ARPACK, which="LA") through curvlinops, with a seeded start vector."""
    from scipy.sparse.linalg import eigsh

    op, counter = _curvlinops_scipy(model, x, y)
    v0 = np.random.default_rng(0).standard_normal(op.shape[0])
    values = eigsh(op, k=K, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return _descending(values), counter["n"]


def run_ours(model: nn.Module, probe: Probe) -> tuple[np.ndarray, int]:
    """Ours: Lanczos with full reorthogonalization on the probe's cached-graph HVPs."""
    res = hessian_eigenvalues(model, probe, k=K, tol=OUR_TOL, seed=0)
    return _descending(res.eigenvalues.tolist()), res.num_hvps


# -- measurement ----------------------------------------------------------------------------------------------


def measure(
    tools: list[tuple[str, Callable[[nn.Module], tuple[np.ndarray, int]]]], base: nn.Module, repeats: int
) -> list[ToolResult]:
    """Warm every tool up once, then time ``repeats`` rounds, one run of each tool per round.

    Interleaving the rounds spreads any background load over all tools alike instead of penalizing whichever
    tool happened to run during it. Each run gets a fresh deep copy of ``base``, copied outside the timing.
    """
    results = []
    for name, run in tools:
        values, hvps = run(copy.deepcopy(base))
        results.append(ToolResult(name, values, hvps, []))
    for _ in range(repeats):
        for (name, run), res in zip(tools, results):
            model = copy.deepcopy(base)
            t0 = time.perf_counter()
            values, hvps = run(model)
            res.times.append(time.perf_counter() - t0)
            if hvps != res.num_hvps or not np.array_equal(values, res.eigenvalues):
                warnings.warn(
                    f"{name}: repeated runs differ (HVPs {res.num_hvps} vs {hvps})", RuntimeWarning, stacklevel=2
                )
    return results


def hvp_cost(model: nn.Module, probe: Probe, repeats: int) -> dict[str, float]:
    """Seconds of one gradient, the first HVP (builds the graph), a steady-state HVP and an uncached HVP.

    Gradients and HVPs alternate within each session so background load affects both alike.
    """
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, generator=torch.Generator().manual_seed(1))
    # Without the cached graph (max_graph_bytes=0) each HVP recomputes forward + backward + double backward.
    uncached = Probe((probe.inputs, probe.targets), probe.loss_fn, num_samples=probe.num_samples, max_graph_bytes=0)
    with probe.session(model) as s, uncached.session(model) as u:  # warm-up
        s.loss_and_grad()
        s.hvp(v)
        u.hvp(v)
    times: dict[str, list[float]] = {"grad": [], "hvp_first": [], "hvp_steady": [], "hvp_recompute": []}

    def timed(key: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        fn()
        times[key].append(time.perf_counter() - t0)

    for _ in range(repeats):
        with probe.session(model) as s, uncached.session(model) as u:
            timed("grad", s.loss_and_grad)
            timed("hvp_first", lambda: s.hvp(v))
            for _ in range(3):
                timed("grad", s.loss_and_grad)
                timed("hvp_steady", lambda: s.hvp(v))
                timed("hvp_recompute", lambda: u.hvp(v))
    return {key: statistics.median(ts) for key, ts in times.items()}


def _fmt_err(err: float) -> str:
    return f"{err:.1e}"


def main(argv: list[str] | None = None) -> int:
    parser = timing_options(__doc__, "fewer training epochs and timing repeats", epochs=(4, 2), repeats=(3, 1))
    parser.add_argument("--samples", type=int, default=512, help="probe size (default 512)")
    args = parse_quick(parser, argv)
    epochs, repeats = args.epochs, args.repeats

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit deprecation noise from peers
    # PyHessian calls loss.backward(create_graph=True); torch warns about the reference cycle it makes.
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    base = trained_digits_cnn(epochs=epochs, seed=0)
    train_s = time.perf_counter() - t0
    x, y = probe_batch(args.samples)
    probe = Probe((x, y), nn.functional.cross_entropy, num_samples=args.samples)
    num_params = sum(p.numel() for p in base.parameters())
    ev = probe.evaluate(base)
    print(
        f"DigitsCNN: {num_params} params, trained {epochs} epochs in {train_s:.1f}s; probe {probe.num_samples} "
        f"samples, loss {ev.loss:.4f}, accuracy {ev.accuracy:.3f}; torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, timing = median of {repeats} interleaved rounds after 1 warm-up"
    )

    # Tight reference: float64 model and data, eigsh tol 1e-10.
    ref_model = copy.deepcopy(base).double()
    t0 = time.perf_counter()
    ref, ref_hvps = run_eigsh(ref_model, x.double(), y, REF_TOL)
    ref_s = time.perf_counter() - t0
    print(f"reference: scipy eigsh (float64, tol {REF_TOL:g}): {ref_hvps} HVPs, {ref_s:.2f}s")
    print("  top-5 eigenvalues: " + ", ".join(f"{v:.8g}" for v in ref))
    # Independent cross-check of the reference: our Lanczos on the float64 model, tolerance 1e-10.
    probe64 = Probe((x.double(), y), nn.functional.cross_entropy, num_samples=args.samples)
    check = hessian_eigenvalues(ref_model, probe64, k=K, tol=REF_TOL, seed=1)
    diff = float(np.max(np.abs(_descending(check.eigenvalues.tolist()) - ref) / np.abs(ref)))
    print(f"  cross-check (ignite_landscape float64, tol {REF_TOL:g}, {check.num_hvps} HVPs): max rel diff {diff:.1e}")

    tools = [
        ("PyHessian (defaults: power it.)", lambda m: run_pyhessian(m, x, y)),
        ("hessian-eigenthings lanczos (default)", lambda m: run_eigenthings(m, x, y)),
        ("hessian-eigenthings lanczos max_iter=25", lambda m: run_eigenthings(m, x, y, max_iter=TARGET_HVPS)),
        (f"scipy eigsh via curvlinops tol={OUR_TOL:g}", lambda m: run_eigsh(m, x, y, OUR_TOL)),
        (f"ignite_landscape tol={OUR_TOL:g}", lambda m: run_ours(m, probe)),
    ]
    rows = measure(tools, base, repeats)
    pyh = rows[0].wall

    header = f"{'method':<42} {'HVPs':>5} {'max rel err':>11} {'wall s':>8} {'ms/HVP':>7} {'x PyHessian':>11}"
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        err = float(np.max(np.abs(r.eigenvalues - ref) / np.abs(ref)))
        print(
            f"{r.name:<42} {r.num_hvps:>5d} {_fmt_err(err):>11} {r.wall:>8.3f} "
            f"{1000 * r.wall / max(r.num_hvps, 1):>7.2f} {r.wall / pyh:>11.3f}"
        )
    print()
    print("eigenvalues (descending):")
    print(f"  {'reference':<42} " + " ".join(f"{v:>11.6f}" for v in ref))
    for r in rows:
        print(f"  {r.name:<42} " + " ".join(f"{v:>11.6f}" for v in r.eigenvalues))

    cost = hvp_cost(copy.deepcopy(base), probe, max(repeats, 3))
    print()
    print(
        f"one HVP vs one gradient on the same probe (ProbeSession; medians over {max(repeats, 3)} sessions, "
        "gradients and HVPs alternating):"
    )
    for label, key in [
        ("gradient (loss_and_grad)", "grad"),
        ("first HVP (builds the cached graph)", "hvp_first"),
        ("steady-state HVP (cached graph)", "hvp_steady"),
        ("HVP without cache (max_graph_bytes=0)", "hvp_recompute"),
    ]:
        print(f"  {label:<40} {1000 * cost[key]:8.2f} ms {cost[key] / cost['grad']:6.2f}x")

    ours = rows[-1]
    ours_err = float(np.max(np.abs(ours.eigenvalues - ref) / np.abs(ref)))
    checks = [
        (f"ours max rel err <= {TARGET_ERROR:g}", ours_err <= TARGET_ERROR, _fmt_err(ours_err)),
        (f"ours HVPs <= {TARGET_HVPS}", ours.num_hvps <= TARGET_HVPS, str(ours.num_hvps)),
        (f"wall <= {TARGET_TIME_RATIO}x PyHessian", ours.wall / pyh <= TARGET_TIME_RATIO, f"{ours.wall / pyh:.3f}x"),
        (
            f"steady HVP <= {TARGET_HVP_COST}x gradient",
            cost["hvp_steady"] / cost["grad"] <= TARGET_HVP_COST,
            f"{cost['hvp_steady'] / cost['grad']:.2f}x",
        ),
    ]
    print()
    print("targets:")
    for label, ok, value in checks:
        print(f"  [{'PASS' if ok else 'MISS'}] {label}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
