"""Top-k Hessian eigenvalues tracked over training: warm-started against cold starts, checked against eigsh.

Two parts, in one process:

1. Tracking: the digits CNN trained with SGD from its initialization, the top ``k`` eigenvalues of the
   probe loss measured every ``--every`` iterations by two ``HessianSpectrum`` handlers on the same trainer,
   one warm-started (the default), one with ``warm_start=False``. Per firing: HVPs of each, and the largest
   relative error of each against ``scipy.sparse.linalg.eigsh`` (tol 1e-10) on a float64 copy of the model
   (the exact function, not float32's rounding of it). Last line: the ratio of total HVPs, warm / cold.
   Two columns say what limits the warm start: how far the top-k eigenspace turned since the last firing
   (largest principal angle between eigsh's eigenvectors), and what a perfect warm start would cost (the
   oracle: ``k`` HVPs for a Rayleigh–Ritz on eigsh's new eigenvectors themselves, plus what ruling out a
   newcomer costs, a random vector explored outside them until the top of the rest is resolved to 1%).
   A column hands eigsh's new top k eigenvectors to the warm start itself as ``v0``: the floor of its start
   block. The last one is what refining the previous firing's eigenvectors costs with nothing else asked of it:
   eigsh's previous top k folded into one start vector, one chain, no guard (so neither a newcomer nor a second
   copy of an eigenvalue would be found): no warm start from the previous eigenvectors that keeps both can be
   expected to cost less.
2. A newcomer: a diagonal operator with old top five {10, 9.5, 9, 8.5, 8}, a bulk up to 7 and a new
   eigenvalue 8.2 on a direction the old eigenvectors do not contain, warm-started from the old
   eigenvectors with no noise: 8.2 must be found at that call.

Example:
    python benchmarks/bench_tracking.py                      # 12 firings, probe of 256 samples
    python benchmarks/bench_tracking.py --quick              # a smoke run (2 firings, 32 samples)
    python benchmarks/bench_tracking.py --pretrain 2         # after two epochs, where the spectrum moves slower
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ignite_landscape as il  # noqa: E402
from examples.models import DigitsCNN, digits_loaders  # noqa: E402
from ignite_landscape.linalg import lanczos  # noqa: E402
from ignite_landscape.measures.spectrum import eigenspace_overlap  # noqa: E402

__all__ = [
    "reference_eigenpairs",
    "oracle_hvps",
    "oracle_fold_hvps",
    "refinement_hvps",
    "cold_equivalent",
    "newcomer",
    "main",
]


def reference_eigenpairs(
    model: torch.nn.Module, probe_data: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[np.ndarray, torch.Tensor]:
    """Top-k eigenpairs by ARPACK's ``eigsh`` at tol 1e-10 on a float64 copy of the model.

    Returns:
        The eigenvalues (descending) and their eigenvectors (rows, float64).
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    model64 = copy.deepcopy(model).double()
    x, y = probe_data
    probe = il.Probe((x.double(), y), F.cross_entropy)
    with probe.session(model64) as s:
        n = s.space.numel

        def mv(v: np.ndarray) -> np.ndarray:
            return s.hvp(torch.from_numpy(np.ascontiguousarray(v).reshape(-1))).numpy()

        op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
        values, vectors = eigsh(op, k=k, which="LA", tol=1e-10)
    order = np.argsort(values)[::-1]
    return values[order], torch.from_numpy(np.ascontiguousarray(vectors[:, order].T))


def oracle_hvps(
    model: torch.nn.Module, probe: il.Probe, vectors: torch.Tensor, guard_tol: float = 1e-2
) -> tuple[int, float]:
    """HVPs of a perfect warm start, and the worst relative residual its Rayleigh–Ritz reaches.

    A warm start handed the exact new eigenvectors ``U`` (rows) still pays ``k`` HVPs for their Rayleigh–Ritz
    and the exploration that rules out a newcomer: a random vector's Krylov space outside ``U`` grown until
    its top Ritz pair is resolved to ``guard_tol`` (:func:`lanczos` on ``(I − UUᵀ) H (I − UUᵀ)``, ``k = 1``, one
    random vector, no guard beyond that pair).
    """
    with probe.session(model) as s:
        U = vectors.to(s.dtype)
        HU = torch.stack([s.hvp(u) for u in U])
        theta = (U * HU).sum(1)
        worst = float(((HU - theta[:, None] * U).norm(dim=1) / theta.abs()).max())

        def deflated(v: torch.Tensor) -> torch.Tensor:
            v = v - U.T @ (U @ v)
            w = s.hvp(v)
            return w - U.T @ (U @ w)

        # The top of the rest is the guard here: resolved to guard_tol, with no guard of its own beyond it.
        explore = lanczos(
            deflated, s.space.numel, k=1, tol=guard_tol, num_random=1, dtype=s.dtype, guard_tol=math.inf
        ).num_matvecs
    return U.shape[0] + explore, worst


def _warm_start_hvps(model: torch.nn.Module, probe: il.Probe, v0: torch.Tensor, k: int, tol: float, **options) -> int:
    """HVPs of :func:`lanczos` to ``tol`` started from ``v0`` (rows), with ``options`` passed on."""
    with probe.session(model) as s:
        lanczos(s.hvp, s.space.numel, k=k, tol=tol, max_iter=400, v0=v0.to(s.dtype), dtype=s.dtype, **options)
        return s.num_hvps


def oracle_fold_hvps(model: torch.nn.Module, probe: il.Probe, vectors: torch.Tensor, k: int, tol: float) -> int:
    """HVPs of the handler's own warm start handed the exact new eigenvectors ``vectors`` (rows) as ``v0``.

    Given the exact top ``k``, this is the floor of the handler's start block: no old eigenvectors dealt into it
    can do better.
    """
    return _warm_start_hvps(model, probe, vectors, k, tol)


def refinement_hvps(model: torch.nn.Module, probe: il.Probe, old: torch.Tensor, k: int, tol: float) -> int:
    """HVPs that refining the previous eigenvectors ``old`` (rows) to ``tol`` costs, with nothing else asked.

    All of them folded into one start vector (one chain: the most polynomial degree per HVP), ``guard_tol=inf``
    (no exploration for a newcomer) and ``num_random=1`` (no second copy of an eigenvalue): the handler's warm
    start asks for both, so it cannot be expected to cost less than this from the same vectors.
    """
    return _warm_start_hvps(model, probe, old, k, tol, num_random=1, guard_tol=math.inf)


def cold_equivalent(
    model: torch.nn.Module, probe: il.Probe, old: torch.Tensor, k: int, tol: float
) -> tuple[int, float]:
    """What the previous firing's eigenvectors are worth, in HVPs of a cold start.

    Rayleigh–Ritz on ``old`` (rows) under the current Hessian gives the best the old eigenvectors alone can
    say; its worst relative residual ``‖Hy − θy‖/|θ|`` is returned with the number of HVPs after which a cold
    start (the handler's: seed 0, two random vectors) is as good, found by bisection on ``max_iter`` (a run
    capped at m HVPs is the first m HVPs of the full run).
    """
    with probe.session(model) as s:
        U = old.to(s.dtype)
        HU = torch.stack([s.hvp(u) for u in U])
        theta, S = torch.linalg.eigh((U @ HU.T).double())
        Y, HY = S.T.to(s.dtype) @ U, S.T.to(s.dtype) @ HU
        worst = float(((HY - theta.to(s.dtype)[:, None] * Y).norm(dim=1).double() / theta.abs()).max())

        def quality(m: int) -> float:
            res = lanczos(s.hvp, s.space.numel, k=k, tol=tol, max_iter=m, dtype=s.dtype)
            return float((res.residuals / res.eigenvalues.abs()).max())

        lo, hi = k + 1, lanczos(s.hvp, s.space.numel, k=k, tol=tol, max_iter=400, dtype=s.dtype).num_matvecs
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if quality(mid) <= worst else (mid + 1, hi)
    return lo, worst


def newcomer(tol: float = 1e-6) -> tuple[list[float], list[float], int, int]:
    """The constructed newcomer case: (cold eigenvalues, warm eigenvalues, cold matvecs, warm matvecs)."""
    g = torch.Generator().manual_seed(3)
    n = 20000
    values = torch.cat(
        [
            torch.tensor([10.0, 9.5, 9.0, 8.5, 8.0, 8.2], dtype=torch.float64),
            7 * torch.rand(n - 6, generator=g, dtype=torch.float64),
        ]
    )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(4))
    d = torch.empty_like(values)
    d[perm] = values
    old = torch.zeros(5, n, dtype=torch.float64)
    old[torch.arange(5), perm[:5]] = 1.0  # the old top five's eigenvectors: they miss the 8.2 direction
    cold = lanczos(lambda v: d * v, n, k=5, tol=tol, dtype=torch.float64)
    warm = lanczos(lambda v: d * v, n, k=5, tol=tol, dtype=torch.float64, v0=old)
    return cold.eigenvalues.tolist(), warm.eigenvalues.tolist(), cold.num_matvecs, warm.num_matvecs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--firings", type=int, default=12)
    p.add_argument("--every", type=int, default=3, help="iterations between firings")
    p.add_argument("--samples", type=int, default=256, help="probe samples")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pretrain", type=int, default=0, help="epochs of SGD before the first firing")
    p.add_argument("--quick", action="store_true", help="2 firings on 32 samples (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.firings, args.samples = 2, 32
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = DigitsCNN()
    train, _ = digits_loaders(batch_size=32, seed=0)
    x_probe, y_probe = (
        train.dataset.tensors[0][: args.samples].clone(),
        train.dataset.tensors[1][: args.samples].clone(),
    )
    probe = il.Probe((x_probe, y_probe), F.cross_entropy)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.pretrain):
        for batch in train:
            step(None, batch)  # type: ignore[arg-type]
    trainer = Engine(step)
    warm = il.HessianSpectrum(model, probe, k=args.k, tol=args.tol, name="warm", max_iter=400)
    cold = il.HessianSpectrum(model, probe, k=args.k, tol=args.tol, name="cold", warm_start=False, max_iter=400)
    event = Events.ITERATION_COMPLETED(every=args.every)
    warm.attach(trainer, event)
    cold.attach(trainer, event)
    errors: list[tuple[float, float]] = []
    # (turn since the last firing in degrees, oracle HVPs, its residual, old eigenvectors' worth in cold HVPs,
    # HVPs of the warm start handed eigsh's new top k, HVPs of refining eigsh's previous top k alone)
    limits: list[tuple[float, int, float, int, int, int]] = []
    previous: list[torch.Tensor] = []

    @trainer.on(event)
    def check(engine: Engine) -> None:
        ref, vectors = reference_eigenpairs(model, (x_probe, y_probe), args.k)
        out = []
        for h in (warm, cold):
            got = h.history[-1].result.eigenvalues.numpy()
            out.append(float(np.max(np.abs(got - ref) / np.abs(ref))))
        errors.append((out[0], out[1]))
        turn, worth, refine = math.nan, 0, 0
        if previous:
            turn = math.degrees(eigenspace_overlap(previous[-1], vectors)[1])
            worth = cold_equivalent(model, probe, previous[-1], args.k, args.tol)[0]
            refine = refinement_hvps(model, probe, previous[-1], args.k, args.tol)
        previous[:] = [vectors]
        fold = oracle_fold_hvps(model, probe, vectors, args.k, args.tol)
        limits.append((turn, *oracle_hvps(model, probe, vectors), worth, fold, refine))
        if len(errors) == args.firings:
            engine.terminate()

    trainer.run(train, max_epochs=1000)
    print(
        f"DigitsCNN ({warm.space.numel} parameters), SGD lr {args.lr}, {args.pretrain} epochs before, "
        f"probe {args.samples}, top-{args.k}, tol {args.tol}"
    )
    print(
        "firing  iteration  HVPs warm  HVPs cold  max rel err warm  max rel err cold  converged warm/cold  "
        "turned (deg)  HVPs oracle  old worth (cold HVPs)  HVPs fold of eigsh's top k  HVPs refining the old top k"
    )
    tw = tc = to = 0
    rows = zip(warm.history, cold.history, errors, limits)
    for i, (fw, fc, (ew, ec), (turn, oracle, _, worth, fold, refine)) in enumerate(rows, 1):
        tw += fw.result.num_hvps
        tc += fc.result.num_hvps
        to += oracle
        conv = f"{bool(fw.result.converged.all())}/{bool(fc.result.converged.all())}"
        print(
            f"{i:6d}  {fw.iteration:9d}  {fw.result.num_hvps:9d}  {fc.result.num_hvps:9d}  "
            f"{ew:16.2e}  {ec:16.2e}  {conv:>19}  {turn:12.1f}  {oracle:11d}  {worth:21d}  {fold:26d}  {refine:28d}"
        )
    later_w = sum(f.result.num_hvps for f in warm.history[1:])
    later_c = sum(f.result.num_hvps for f in cold.history[1:])
    print(
        f"total HVPs warm {tw}, cold {tc}: warm/cold = {tw / tc:.3f} "
        f"(firings 2.. only: {later_w / max(later_c, 1):.3f})"
    )
    print(f"max rel error over all firings: warm {max(e[0] for e in errors):.2e}, cold {max(e[1] for e in errors):.2e}")
    worth = sum(x[3] for x in limits[1:])
    ideal = later_c - worth + args.k * (len(limits) - 1)
    print(
        f"the previous eigenvectors are worth {worth} of the cold start's {later_c} HVPs (firings 2..): a warm "
        f"start that skipped exactly those for a {args.k}-HVP Rayleigh-Ritz would cost {ideal / max(later_c, 1):.3f} "
        "of cold there"
    )
    print(
        f"oracle (warm start from eigsh's own new eigenvectors): {to} HVPs = {to / tc:.3f} of cold "
        f"(its Rayleigh-Ritz residual at most {max(x[2] for x in limits):.1e} relative)"
    )

    folds = sum(x[4] for x in limits[1:])
    print(
        f"the same warm start handed eigsh's new top {args.k} (its floor, firings 2..): {folds} HVPs = "
        f"{folds / max(later_c, 1):.3f} of cold; over the run with a cold first firing: "
        f"{(cold.history[0].result.num_hvps + folds) / tc:.3f}"
    )
    refines = sum(x[5] for x in limits[1:])
    print(
        f"refining eigsh's previous top {args.k} alone (one chain, no guard: neither a newcomer nor a second copy "
        f"found), firings 2..: {refines} HVPs = {refines / max(later_c, 1):.3f} of cold; over the run with a cold "
        f"first firing: {(cold.history[0].result.num_hvps + refines) / tc:.3f}"
    )

    cold_vals, warm_vals, cold_n, warm_n = newcomer()
    found = abs(warm_vals[-1] - 8.2) < 1e-6
    print(f"newcomer: cold {np.round(cold_vals, 8).tolist()} ({cold_n} matvecs)")
    print(f"newcomer: warm {np.round(warm_vals, 8).tolist()} ({warm_n} matvecs), 8.2 found: {found}")


if __name__ == "__main__":
    main()
