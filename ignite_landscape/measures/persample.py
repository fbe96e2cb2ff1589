"""Exact per-sample gradients of the probe objective, folded into running moments chunk by chunk.

Sample ``i``'s gradient is ``g_i = n·∇ℓ_i``, with ``ℓ_i`` its share of the probe objective and ``n`` the
probe's samples (over all ranks): for a mean loss, the gradient of the sample's own loss; for any
reduction, class weights or ignored targets, the per-sample gradients whose mean is exactly the probe
gradient. They are computed with ``torch.func`` (``vmap`` over ``grad`` of the functional model),
``chunk_size`` samples at a time, and folded into running sums at once, so at most ``chunk_size``
per-sample gradients (``chunk_size × P`` numbers) exist at any moment, whatever the probe size.

The moments are the mean gradient ``ḡ`` and the centred sums of squares ``M2_j = Σ_i (g_ij − ḡ_j)²`` per
coordinate, merged chunk by chunk (and rank by rank) with Chan et al.'s pairwise update: exact, without
the cancellation of ``Σ g² − n ḡ²``. :func:`~ignite_landscape.gradient_noise_scale` and
:func:`~ignite_landscape.gradient_statistics` both read them.

Per-sample gradients need samples that do not interact: in ``model_mode="train"`` BatchNorm's batch
statistics couple them (and dropout draws one mask per batch), so a train-mode probe is refused.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(10, 4), torch.randint(0, 3, (10,))), torch.nn.functional.cross_entropy)
    >>> with probe.session(model) as s:
    ...     m = per_sample_moments(s, chunk_size=3, norms=True)
    ...     g = s.grad()
    >>> bool(torch.allclose(m.mean, g.double(), atol=1e-6)), tuple(m.sq_norms.shape)
    (True, (10,))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ignite_landscape import distributed
from ignite_landscape.probe import ProbeSession

__all__ = [
    "CHUNK_BYTES",
    "PerSampleMoments",
    "check_per_sample_mode",
    "chunk_size_for",
    "merge_moments",
    "per_sample_gradients",
    "per_sample_moments",
]

# Default bound on the bytes of per-sample gradients held at once (chunk_size=None).
CHUNK_BYTES = 1 << 28


def check_per_sample_mode(model_mode: str, fallback: str = "") -> None:
    """Raise the clear error for per-sample gradients on a train-mode probe (``fallback``: what to use instead).

    Raises:
        ValueError: if ``model_mode`` is ``"train"``.
    """
    if model_mode == "train":
        hint = f"; {fallback}" if fallback else ""
        raise ValueError(
            "probe: per-sample gradients need model_mode='eval' (in train mode BatchNorm's batch statistics and "
            f"dropout's per-batch masks couple the samples, so a sample's own gradient is not defined){hint}"
        )


def chunk_size_for(s: ProbeSession, chunk_size: int | None) -> int:
    """``chunk_size``, or by default as many per-sample gradients as fit in :data:`CHUNK_BYTES`."""
    if chunk_size is not None:
        return chunk_size
    return max(1, CHUNK_BYTES // (s.space.numel * s.dtype.itemsize))


def per_sample_gradients(s: ProbeSession, chunk: int) -> Iterator[tuple[int, tuple[torch.Tensor, ...]]]:
    """This rank's exact per-sample gradients ``g_i = n·∇ℓ_i``, ``chunk`` samples at a time, in probe order.

    The session's :meth:`~ignite_landscape.session.ProbeSession.per_sample_gradients`.

    Yields:
        ``(c, grads)``: the chunk's sample count and one tensor of shape ``(c, *p.shape)`` per selected
        parameter (the session's dtype). Nothing else is held between chunks.
    """
    return s.per_sample_gradients(chunk)


@dataclass
class PerSampleMoments:
    """Running moments of the per-sample gradients over all probe samples (all ranks).

    Attributes:
        mean: ``ḡ``, float64 ``(P,)``: the probe gradient.
        m2: float64 ``(P,)``: ``Σ_i (g_ij − ḡ_j)²`` per coordinate.
        sq_norms: float64 ``(n,)``: ``‖g_i‖²`` of every sample in probe order, or ``None`` unless asked.
        num_samples: ``n``.
        chunk_size: per-sample gradients held at once.
    """

    mean: torch.Tensor
    m2: torch.Tensor
    sq_norms: torch.Tensor | None
    num_samples: int
    chunk_size: int


def merge_moments(
    na: int, ma: torch.Tensor, m2a: torch.Tensor, nb: int, mb: torch.Tensor, m2b: torch.Tensor
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, mean and centred sum of squares of two groups merged: Chan et al.'s pairwise update.

    Exact, without the cancellation of ``Σg² − n·ḡ²``.

    Example:
        >>> a, b = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64)
        >>> moments = lambda x: (len(x), x.mean(), ((x - x.mean()) ** 2).sum())
        >>> n, mean, m2 = merge_moments(*moments(a), *moments(b))
        >>> n, round(float(mean), 12), round(float(m2), 12), round(float(moments(torch.cat([a, b]))[2]), 12)
        (5, 3.6, 17.2, 17.2)
    """
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + (m2b + delta * delta * (na * nb / n))


def per_sample_moments(
    s: ProbeSession,
    chunk_size: int | None = None,
    *,
    norms: bool = False,
    visit: Callable[[torch.Tensor], None] | None = None,
) -> PerSampleMoments:
    """Fold the exact per-sample gradients of the probe objective into :class:`PerSampleMoments`.

    Args:
        s: an open session on an eval-mode probe.
        chunk_size: per-sample gradients computed at once (default: :func:`chunk_size_for`).
        norms: also return every sample's squared gradient norm (``n`` numbers).
        visit: called with each chunk's per-sample gradients as one ``(c, P)`` matrix (the session's dtype),
            for statistics beyond the moments (a second ``c × P`` copy exists during the call).

    Raises:
        ValueError: on a ``model_mode="train"`` probe.
    """
    check_per_sample_mode(s.probe.model_mode)
    chunk = chunk_size_for(s, chunk_size)
    n_total = s.probe.global_num_samples
    device = s.device
    mean = torch.zeros(s.space.numel, dtype=torch.float64, device=device)
    m2 = torch.zeros(s.space.numel, dtype=torch.float64, device=device)
    local_sq: list[torch.Tensor] = []
    count = 0
    # A rank whose share fails (or that holds no samples) still joins the reduction: no rank waits forever.
    with distributed.Lockstep() as step:
        for c, gs in per_sample_gradients(s, chunk):
            mu_parts, m2_parts = [], []
            sq = torch.zeros(c, dtype=torch.float64, device=device)
            for g in gs:  # parameter by parameter: no (c, P) concatenation
                g = g.reshape(c, -1).double()
                mu = g.mean(dim=0)
                mu_parts.append(mu)
                m2_parts.append(((g - mu) ** 2).sum(dim=0))
                if norms:
                    sq += (g * g).sum(dim=1)
            if visit is not None:
                visit(torch.cat([g.reshape(c, -1) for g in gs], dim=1))
            del gs
            if norms:
                local_sq.append(sq)
            count, mean, m2 = merge_moments(count, mean, m2, c, torch.cat(mu_parts), torch.cat(m2_parts))
    (weighted,) = step.all_reduce(mean * count)
    g_bar = weighted / n_total
    # Between ranks: each rank's mean against the global one (zero in one process).
    m2 = m2 + (mean - g_bar) ** 2 * count
    if distributed.world_size() > 1:
        m2 = distributed.all_reduce(m2)
    sq_norms = None
    if norms:
        sq_norms = torch.cat(local_sq) if local_sq else torch.zeros(0, dtype=torch.float64, device=device)
        sq_norms = _gather_rows(sq_norms, n_total)
    return PerSampleMoments(g_bar, m2, sq_norms, n_total, chunk)


def _gather_rows(local: torch.Tensor, n_total: int) -> torch.Tensor:
    # Every rank's rows in rank order, as one vector on every rank (sums of zero-padded copies).
    world = distributed.world_size()
    if world == 1:
        return local
    counts = torch.zeros(world, dtype=torch.float64, device=local.device)
    counts[distributed.rank()] = local.numel()
    counts = distributed.all_reduce(counts)
    offset = int(counts[: distributed.rank()].sum())
    out = torch.zeros(int(counts.sum()), dtype=torch.float64, device=local.device)
    out[offset : offset + local.numel()] = local
    return distributed.all_reduce(out)
