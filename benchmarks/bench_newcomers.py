"""Does a warm start find every eigenvalue that a cold start finds? Random newcomers, counted.

Each case is a diagonal operator (Lanczos is basis-invariant; the coordinates are shuffled) built to be hard for
a warm start: the old top ``k`` eigenvectors are exact, and one or two eigenvalues on fresh directions (the
newcomers) have overtaken the old k-th by 0.3% to 50%. Just below sit the old guard (the next eigenvalue) and a
bulk, each separated by a drawn gap. Sizes, ``k``, ``tol``, gaps and dtype are drawn per case from a seeded
generator. Both starts use the same random start vectors; the warm one is handed the old top ``k`` (or, with
``--rows k+1``, also the old guard's eigenvector, as the handler dealt it before the guard was made to explore).

A case is a *miss* when the warm start's largest relative eigenvalue error exceeds ``10·max(tol, 1e-6)`` while
the cold start's does not, and a *silent* miss when the warm start also reports every eigenvalue converged (a
start that ran out of ``max_iter`` says so). The last lines count them and compare matvecs.

Example:
    python benchmarks/bench_newcomers.py                 # 100 cases
    python benchmarks/bench_newcomers.py --cases 12      # a smoke run
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ignite_landscape.linalg import lanczos  # noqa: E402

__all__ = ["Case", "draw_case", "build_operator", "main"]


@dataclass(frozen=True)
class Case:
    """One drawn configuration (see the module docstring)."""

    n: int
    k: int
    tol: float
    newcomer_gap: float
    newcomers: int
    guard_gap: float
    bulk_gap: float
    dtype: torch.dtype
    seed: int

    def label(self) -> str:
        """A short description, one table row's first columns."""
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"n={self.n:<5} k={self.k} tol={self.tol:<6g} {dtype:<7} "
            f"+{self.newcomer_gap:<5g}x{self.newcomers} guard -{self.guard_gap:<5g} bulk -{self.bulk_gap:<6g}"
        )


def draw_case(rng: random.Random) -> Case:
    """A configuration drawn from ``rng``."""
    return Case(
        n=rng.choice([3000, 20000]),
        k=rng.choice([1, 3, 5]),
        tol=rng.choice([1e-2, 1e-3, 1e-4, 1e-6]),
        newcomer_gap=rng.choice([0.003, 0.02, 0.1, 0.5]),
        newcomers=rng.choice([1, 1, 2]),
        guard_gap=rng.choice([0.001, 0.01, 0.05]),
        bulk_gap=rng.choice([0.0005, 0.01, 0.1]),
        dtype=rng.choice([torch.float32, torch.float64]),
        seed=rng.randrange(1000),
    )


def build_operator(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The diagonal, the old eigenvectors (top k, then the old guard's; rows) and the true top k.

    The old k-th eigenvalue is 0.85, the old top k lie in [0.85, 1], the newcomers in
    ``[0.85, 0.85 + newcomer_gap)``, the old guard at ``0.85 - guard_gap`` and the bulk in
    ``[-0.3, 0.85 - guard_gap - bulk_gap]``.
    """
    g = torch.Generator().manual_seed(case.seed)
    old = torch.sort(0.85 + 0.15 * torch.rand(case.k, generator=g, dtype=torch.float64), descending=True).values
    old[-1] = 0.85
    guard = 0.85 - case.guard_gap
    newcomers = 0.85 + case.newcomer_gap * torch.rand(case.newcomers, generator=g, dtype=torch.float64)
    top_of_bulk = guard - case.bulk_gap
    size = case.n - case.k - 1 - case.newcomers
    bulk = -0.3 + (top_of_bulk + 0.3) * torch.rand(size, generator=g, dtype=torch.float64)
    values = torch.cat([old, torch.tensor([guard], dtype=torch.float64), newcomers, bulk])
    perm = torch.randperm(case.n, generator=g)
    diagonal = torch.empty(case.n, dtype=torch.float64)
    diagonal[perm] = values
    vectors = torch.zeros(case.k + 1, case.n, dtype=torch.float64)
    vectors[torch.arange(case.k + 1), perm[: case.k + 1]] = 1.0
    truth = torch.sort(values, descending=True).values[: case.k]
    return diagonal.to(case.dtype), vectors.to(case.dtype), truth


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rows", choices=["k", "k+1"], default="k", help="old vectors handed to the warm start")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    misses = silent = cold_wrong = cold_total = warm_total = 0
    print(f"{'case':<78} {'cold':>5} {'warm':>5}  warm error")
    for _ in range(args.cases):
        case = draw_case(rng)
        diagonal, vectors, truth = build_operator(case)
        v0 = vectors[: case.k + (args.rows == "k+1")]
        operator = diagonal.mul
        runs = [
            lanczos(operator, case.n, k=case.k, tol=case.tol, dtype=case.dtype, seed=case.seed, v0=start)
            for start in (None, v0)
        ]
        cold_err, warm_err = (float(((r.eigenvalues - truth).abs() / truth).max()) for r in runs)
        limit = 10 * max(case.tol, 1e-6)
        miss = warm_err > limit and cold_err <= limit
        claimed = bool(runs[1].converged.all())
        misses += miss
        silent += miss and claimed
        cold_wrong += cold_err > limit
        cold_total += runs[0].num_matvecs
        warm_total += runs[1].num_matvecs
        flag = ("  MISSED, reported converged" if claimed else "  missed, reported not converged") if miss else ""
        print(f"{case.label():<78} {runs[0].num_matvecs:>5} {runs[1].num_matvecs:>5}  {warm_err:.1e}{flag}")
    print(f"cases: {args.cases}, v0 rows: {args.rows}, cold starts off by more than 10 tol: {cold_wrong}")
    print(f"warm starts that missed what the cold start found: {misses}, of which reported converged: {silent}")
    print(f"matvecs warm / cold: {warm_total} / {cold_total} = {warm_total / cold_total:.2f}")


if __name__ == "__main__":
    main()
