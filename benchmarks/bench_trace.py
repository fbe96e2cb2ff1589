"""Hessian trace of a digits CNN: exact (ours) against BackPACK's DiagHessian, Hutch++ (ours) and hessian-eigenthings.

A :class:`~examples.models.DigitsCNN` (about 38k parameters, ReLU + max-pool) is trained a few seeded epochs on
scikit-learn's ``load_digits``; the operator is the Hessian of the mean cross-entropy over a fixed probe batch
(64 and 512 samples by default). Every tool is warmed up once, then timed (median of ``--repeats`` rounds, the
tools interleaved within each round) in one process with the same ``torch.set_num_threads``.

Reference: the Hessian diagonal in float64, computed independently of BackPACK. For a ReLU/max-pool network
the output is linear in each single weight (piecewise), so ``∂²f/∂θ_i² = 0`` almost everywhere and the Hessian
diagonal equals the Gauss-Newton diagonal ``Σ_n diag(J_nᵀ H_n J_n)``: per-sample Jacobians of the logits by
``torch.func`` (``vmap(jacrev)``) in chunks, contracted with the softmax Hessian ``diag(p) − ppᵀ``. As a direct
check of that identity, a few random coordinates are also computed as ``e_iᵀ H e_i`` with exact float64
Hessian-vector products (printed: their largest deviation from the reference).

Rows:
    * ours exact: ``hessian_trace(model, probe, method="exact")`` (BackPACK's DiagHessian behind our checks:
      a deep copy, the chain-of-modules check, per-batch accumulation), timed end to end.
    * BackPACK DiagHessian: ``extend`` on an ``nn.Sequential`` of the model's layers, one
      ``loss.backward()`` inside ``with backpack(DiagHessian())``, summing ``diag_h`` (model built once, outside
      the timing: the cost a BackPACK user pays per call).
    * ours exact ÷ BackPACK, separately: ``--pairs`` back-to-back pairs in alternating order, the median and
      quartiles of the per-pair ratio (load from other jobs on the machine mostly cancels within a pair).
    * ours Hutch++ (60 HVPs): ``hessian_trace(model, probe, method="hutch++", num_hvps=60)``.
    * hessian-eigenthings Hutch++ (60): ``trace(HessianOperator(...), num_matvecs=60, method="hutch++")``, if installed.

Example:
    Run from the repository root::

        python benchmarks/bench_trace.py            # full run
        python benchmarks/bench_trace.py --quick    # fewer epochs and repeats, one probe size, for a smoke test
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_quick, probe_batch, quick_option, timing_options, trained_digits_cnn  # noqa: E402
from ignite_landscape import Probe, hessian_trace  # noqa: E402

__all__ = ["Row", "reference_diagonal", "spot_check", "main"]

NUM_HVPS = 60


@dataclass
class Row:
    """One tool's result: trace value, its standard error (0 when exact), median wall time."""

    name: str
    value: float
    stderr: float
    wall: float


def reference_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """The float64 Gauss-Newton diagonal of the mean cross-entropy (= the Hessian diagonal of a ReLU/max-pool net).

    Flat, in ``model.named_parameters()`` order.
    """
    model = copy.deepcopy(model).double().eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = x.double()

    def logits(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(logits), in_dims=(None, 0))
    diag = {n: torch.zeros_like(p) for n, p in params.items()}
    with torch.no_grad():
        out = functional_call(model, params, (x,))
    probs = torch.softmax(out, dim=1)
    for lo in range(0, x.shape[0], chunk):
        J = jac(params, x[lo : lo + chunk])  # {name: (b, C, *shape)}
        p = probs[lo : lo + chunk]
        H = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # (b, C, C) softmax Hessian per sample
        for n, Jn in J.items():
            flat = Jn.reshape(Jn.shape[0], Jn.shape[1], -1)  # (b, C, P_n)
            HJ = torch.bmm(H, flat)
            diag[n] += (flat * HJ).sum(dim=(0, 1)).view_as(diag[n])
    n_total = x.shape[0]
    return torch.cat([d.reshape(-1) for d in diag.values()]) / n_total


def spot_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ref: torch.Tensor, count: int, seed: int) -> float:
    """Largest relative deviation of ``e_iᵀ H e_i`` (float64 HVPs) from ``ref[i]`` at ``count`` random coordinates."""
    model64 = copy.deepcopy(model).double().eval()
    probe = Probe((x.double(), y), nn.functional.cross_entropy, num_samples=x.shape[0])
    g = torch.Generator().manual_seed(seed)
    # Coordinates with the largest reference values plus random ones, so zeros do not make the check empty.
    idx = torch.cat(
        [ref.abs().topk(count // 2).indices, torch.randint(0, ref.numel(), (count - count // 2,), generator=g)]
    )
    worst = 0.0
    scale = float(ref.abs().max())
    with probe.session(model64) as s:
        for i in idx.tolist():
            e = torch.zeros(s.space.numel, dtype=torch.float64)
            e[i] = 1.0
            hii = float(s.hvp(e)[i])
            worst = max(worst, abs(hii - float(ref[i])) / scale)
    return worst


def _backpack_runner(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Row]:
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian

    layers = [m for m in model.modules() if next(m.children(), None) is None and not isinstance(m, nn.Identity)]
    seq = extend(nn.Sequential(*copy.deepcopy(layers)).eval())
    loss_fn = extend(nn.CrossEntropyLoss())

    def run() -> Row:
        loss = loss_fn(seq(x), y)
        with backpack(DiagHessian()):
            loss.backward()
        value = float(sum(p.diag_h.double().sum() for p in seq.parameters()))
        for p in seq.parameters():
            p.grad = None
        return Row("BackPACK DiagHessian", value, 0.0, 0.0)

    return run


def _eigenthings_runner(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Row] | None:
    try:
        from hessian_eigenthings import HessianOperator, supervised_loss, trace
    except ImportError:
        return None
    m = copy.deepcopy(model).eval()

    def run() -> Row:
        op = HessianOperator(m, [(x, y)], supervised_loss(nn.CrossEntropyLoss()))
        res = trace(op, num_matvecs=NUM_HVPS, method="hutch++", seed=0)
        return Row(f"hessian-eigenthings Hutch++ ({NUM_HVPS})", float(res.estimate), float(res.stderr), 0.0)

    return run


def measure(tools: list[tuple[str, Callable[[], Row]]], repeats: int) -> list[Row]:
    """Warm each tool up once, then time ``repeats`` interleaved rounds; median wall time per tool."""
    results: dict[str, Row] = {}
    times: dict[str, list[float]] = {name: [] for name, _ in tools}
    for name, fn in tools:
        results[name] = fn()
    for _ in range(repeats):
        for name, fn in tools:
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return [Row(name, results[name].value, results[name].stderr, statistics.median(times[name])) for name, _ in tools]


def paired_ratio(a: Callable[[], Any], b: Callable[[], Any], pairs: int) -> tuple[float, float, float, float, float]:
    """Median wall times of ``a`` and ``b`` run alternately, and the quartiles of the per-pair ratio ``a/b``.

    The pair runs ``pairs`` times, each pair back to back, so load from other jobs mostly cancels in the ratio.
    """
    ta, tb, ratios = [], [], []
    for i in range(pairs):
        first, second = (a, b) if i % 2 == 0 else (b, a)  # alternate the order within pairs
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        da, db = (t1 - t0, t2 - t1) if i % 2 == 0 else (t2 - t1, t1 - t0)
        ta.append(da)
        tb.append(db)
        ratios.append(da / db)
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ta), statistics.median(tb), q[0], statistics.median(ratios), q[2]


def run_size(model: nn.Module, samples: int, repeats: int, spot: int, pairs: int) -> list[Row]:
    """Print and return the table for one probe size."""
    x, y = probe_batch(samples)
    probe = Probe((x, y), nn.functional.cross_entropy, num_samples=samples, batch_size=samples)
    t0 = time.perf_counter()
    ref = reference_diagonal(model, x, y)
    ref_s = time.perf_counter() - t0
    ref_trace = float(ref.sum())
    dev = spot_check(model, x, y, ref, spot, seed=samples)
    print(
        f"\nprobe {samples} samples: reference trace {ref_trace:.8g} (float64 GGN diagonal, {ref_s:.1f}s); "
        f"spot check of {spot} coordinates by float64 HVPs: max |H_ii − ref_i| / max|ref| = {dev:.1e}"
    )

    def ours_exact() -> Row:
        res = hessian_trace(model, probe, method="exact")
        return Row("ours exact (method='exact')", res.value, res.stderr, 0.0)

    def ours_hutchpp() -> Row:
        res = hessian_trace(model, probe, method="hutch++", num_hvps=NUM_HVPS, seed=0)
        return Row(f"ours Hutch++ ({NUM_HVPS} HVPs)", res.value, res.stderr, 0.0)

    tools: list[tuple[str, Callable[[], Row]]] = [
        ("ours exact (method='exact')", ours_exact),
        ("BackPACK DiagHessian", _backpack_runner(model, x, y)),
        (f"ours Hutch++ ({NUM_HVPS} HVPs)", ours_hutchpp),
    ]
    eig = _eigenthings_runner(model, x, y)
    if eig is not None:
        tools.append((f"hessian-eigenthings Hutch++ ({NUM_HVPS})", eig))
    else:
        print("  (hessian-eigenthings not installed: its row is skipped)")
    rows = measure(tools, repeats)
    backpack_wall = rows[1].wall
    header = f"  {'method':<36} {'trace':>12} {'stderr':>9} {'rel err':>9} {'wall s':>8} {'x BackPACK':>10}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in rows:
        err = abs(r.value - ref_trace) / abs(ref_trace)
        ratio = r.wall / backpack_wall
        print(f"  {r.name:<36} {r.value:>12.6g} {r.stderr:>9.3g} {err:>9.1e} {r.wall:>8.3f} {ratio:>10.2f}")
    ta, tb, lo, mid, hi = paired_ratio(tools[0][1], tools[1][1], pairs)
    print(
        f"  ours exact ÷ BackPACK over {pairs} back-to-back pairs: median ratio {mid:.3f} "
        f"(quartiles {lo:.3f}–{hi:.3f}); medians {ta:.4f} s vs {tb:.4f} s"
    )
    exact_diag = _our_diagonal(model, probe)
    diag_err = float((exact_diag.double() - ref).abs().max() / ref.abs().max())
    print(f"  ours exact diagonal vs reference: max |d_i − ref_i| / max|ref| = {diag_err:.1e} (float32 model)")
    return rows


def _our_diagonal(model: nn.Module, probe: Probe) -> torch.Tensor:
    from ignite_landscape import hessian_diagonal

    return hessian_diagonal(model, probe).diagonal


def main(argv: list[str] | None = None) -> int:
    quick = "fewer epochs and repeats, the first probe size only"
    parser = timing_options(__doc__, quick, epochs=(4, 1), repeats=(5, 1))
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 512], help="probe sizes (default 64 512)")
    parser.add_argument("--spot", type=int, default=16, help="coordinates checked by exact HVPs (default 16)")
    quick_option(parser, "--pairs", (21, 4), "exact/BackPACK timing pairs")
    args = parse_quick(parser, argv)
    epochs, repeats = args.epochs, args.repeats
    sizes = args.samples[:1] if args.quick else args.samples
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # BackPACK on the first layer
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = trained_digits_cnn(epochs=epochs, seed=0)
    num_params = sum(p.numel() for p in model.parameters())
    print(
        f"DigitsCNN: {num_params} params, trained {epochs} epochs in {time.perf_counter() - t0:.1f}s; torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, timing = median of {repeats} interleaved "
        "rounds after 1 warm-up"
    )
    for samples in sizes:
        run_size(model, samples, repeats, args.spot, args.pairs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
