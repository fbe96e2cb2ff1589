"""Reproducible random vectors that never touch the global RNG streams training uses.

Every vector is drawn on the CPU from a private :class:`torch.Generator`, then moved, so a given
seed gives the same numbers on every device and every rank.

Example:
    >>> v = rademacher(5, seed=0)
    >>> sorted(set(v.tolist())) in ([-1.0, 1.0], [-1.0], [1.0])
    True
"""

from __future__ import annotations

import torch

__all__ = ["generator", "rademacher", "gaussian"]

# A seed, or a generator to continue drawing from (so several vectors come from one stream).
_Seed = int | torch.Generator
_Device = torch.device | str | None


def generator(seed: int) -> torch.Generator:
    """A private CPU generator seeded with ``seed``."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _stream(seed: _Seed) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else generator(seed)


def rademacher(n: int, seed: _Seed, *, dtype: torch.dtype = torch.float32, device: _Device = None) -> torch.Tensor:
    """A vector of ``n`` independent ±1 entries."""
    v = torch.randint(0, 2, (n,), generator=_stream(seed), dtype=torch.int8).to(dtype) * 2 - 1
    return v.to(device) if device is not None else v


def gaussian(n: int, seed: _Seed, *, dtype: torch.dtype = torch.float32, device: _Device = None) -> torch.Tensor:
    """A vector of ``n`` independent standard normal entries."""
    v = torch.randn(n, generator=_stream(seed), dtype=torch.float64).to(dtype)
    return v.to(device) if device is not None else v
