"""The gradient noise scale ``B_simple = tr(Σ)/‖G‖²`` of McCandlish et al. (2018).

``G`` is the true gradient and ``Σ`` the covariance of per-sample gradients; ``B_simple`` estimates
the batch size beyond which larger batches stop paying off. Both quantities are estimated without
bias from the probe's ``N`` samples, by one of two estimators (named in the result):

* ``"per_sample"``: exact per-sample gradients ``g_i`` with ``torch.func`` (``vmap`` over
  ``grad`` of ``functional_call``), then ``tr(Σ) = Σ‖g_i − ḡ‖²/(N − 1)`` and
  ``‖G‖² = ‖ḡ‖² − tr(Σ)/N`` (``ḡ`` the probe gradient). Needs a model whose output on one sample
  does not depend on the others (``model_mode="eval"``).
* ``"two_batch"``: the estimator of McCandlish et al. (Appendix A.1) from gradient norms at two
  batch sizes: the probe is split at random (``seed``) into disjoint batches of ``small_batch``
  samples; with ``|G_s|²`` the mean squared norm of their gradients and ``|G_N|²`` that of the full
  probe gradient, ``‖G‖² = (N|G_N|² − B_s|G_s|²)/(N − B_s)`` and
  ``tr(Σ) = (|G_s|² − |G_N|²)/(1/B_s − 1/N)``. Works in any mode (no per-sample gradients); with
  ``small_batch=1`` it equals the per-sample estimator.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(64, 4), torch.randint(0, 3, (64,))), torch.nn.functional.cross_entropy)
    >>> res = gradient_noise_scale(model, probe)
    >>> res.estimator, res.b_simple > 0
    ('per_sample', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, vmap

from ignite_landscape import distributed
from ignite_landscape.linalg import generator
from ignite_landscape.params import ParamsArg
from ignite_landscape.probe import Probe, ProbeSession, _tree_cat, _tree_map

__all__ = ["NoiseScale", "gradient_noise_scale", "NOISE_METHODS"]

NOISE_METHODS = ("per_sample", "two_batch")


@dataclass
class NoiseScale:
    """The simple gradient noise scale and the estimates behind it.

    Attributes:
        b_simple: ``trace_sigma / grad_norm_sq`` (``inf`` when the gradient estimate is not positive).
        trace_sigma: unbiased estimate of ``tr(Σ)``, the trace of the per-sample gradient covariance.
        grad_norm_sq: unbiased estimate of ``‖G‖²`` (may be ≤ 0 when noise dominates).
        estimator: ``"per_sample"`` or ``"two_batch"``.
        num_samples: ``N``, the samples used.
        small_batch: ``B_s`` of the two-batch estimator (1 for per-sample).
        probe_grad_norm_sq: ``‖ḡ‖²`` of the probe gradient itself (biased upward by ``tr(Σ)/N``).
    """

    b_simple: float
    trace_sigma: float
    grad_norm_sq: float
    estimator: str
    num_samples: int
    small_batch: int = 1
    probe_grad_norm_sq: float = 0.0

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``b_simple``, ``trace_sigma``, ``grad_norm_sq``, ``probe_grad_norm_sq``."""
        return {
            "b_simple": self.b_simple,
            "trace_sigma": self.trace_sigma,
            "grad_norm_sq": self.grad_norm_sq,
            "probe_grad_norm_sq": self.probe_grad_norm_sq,
        }


def _ratio(trace_sigma: float, grad_norm_sq: float) -> float:
    return trace_sigma / grad_norm_sq if grad_norm_sq > 0 else math.inf


def gradient_noise_scale(
    model: nn.Module,
    probe: Probe,
    *,
    method: str = "per_sample",
    small_batch: int | None = None,
    seed: int = 0,
    params: ParamsArg = None,
) -> NoiseScale:
    """Estimate ``B_simple = tr(Σ)/‖G‖²`` on the probe (see the module docstring).

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss (mean-reduced, so one sample's loss is its own loss).
        method: ``"per_sample"`` or ``"two_batch"``.
        small_batch: ``B_s`` for ``"two_batch"`` (default ``max(1, N // 16)``; ``1 ≤ B_s < N``).
        seed: seed of the random split into small batches.
        params: restrict to a subset of parameters.

    Returns:
        A :class:`NoiseScale`.

    Raises:
        ValueError: for an unknown method, a bad ``small_batch``, fewer than 2 samples, or
            ``"per_sample"`` with ``model_mode="train"``.
    """
    if method not in NOISE_METHODS:
        raise ValueError(f"method must be one of {NOISE_METHODS}, got {method!r}")
    n_total = probe.num_samples
    if n_total < 2:
        raise ValueError("the probe needs at least 2 samples to estimate a covariance")
    if small_batch is not None:
        if isinstance(small_batch, bool) or not isinstance(small_batch, int):
            raise TypeError(f"small_batch must be an int or None, got {type(small_batch).__name__}")
        if not 1 <= small_batch < n_total:
            raise ValueError(f"small_batch must be in [1, {n_total}), got {small_batch}")
        if method != "two_batch":
            raise ValueError("small_batch is only used by method='two_batch'")
    if method == "per_sample" and probe.model_mode == "train":
        raise ValueError(
            "method='per_sample' needs model_mode='eval' (batch statistics couple the samples); use 'two_batch'"
        )
    with probe.session(model, params) as s:
        if method == "per_sample":
            return _per_sample(s)
        return _two_batch(s, small_batch or max(1, n_total // 16), seed)


def _per_sample(s: ProbeSession) -> NoiseScale:
    loss_fn = s.probe.loss_fn
    n_total = s.probe.global_num_samples

    def sample_loss(ps: tuple[torch.Tensor, ...], x: object, y: object) -> torch.Tensor:
        one = _tree_map(lambda t: t.unsqueeze(0), x)
        return loss_fn(s.forward(one, ps), _tree_map(lambda t: t.unsqueeze(0), y))

    per_sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    params = tuple(s.base)
    # Chan et al.'s pairwise update: per-batch means and centred sums of squares, combined exactly,
    # so tr(Σ) does not suffer the cancellation of Σ‖g_i‖² − N‖ḡ‖².
    means, counts, m2 = [], [], 0.0
    device = s.base[0].device
    weighted = torch.zeros(s.space.numel, dtype=torch.float64, device=device)
    # A rank whose share fails (or that holds no samples) still joins the reduction: no rank waits forever.
    with distributed.Lockstep() as step:
        for x, y, n in s.probe.batches():
            gs = per_sample_grad(params, x, y)
            flat = torch.cat([g.reshape(n, -1) for g in gs], dim=1).double()
            mean = flat.mean(dim=0)
            m2 += float(((flat - mean) ** 2).sum())
            means.append(mean)
            counts.append(n)
            weighted += mean * n
    s.num_grads += 1
    (weighted,) = step.all_reduce(weighted)
    g_bar = weighted / n_total
    between = sum(c * float(((m - g_bar) ** 2).sum()) for m, c in zip(means, counts))
    m2_total = float(distributed.all_reduce(torch.tensor([m2 + between], dtype=torch.float64, device=device)))
    trace_sigma = m2_total / (n_total - 1)
    probe_sq = float(g_bar @ g_bar)
    grad_sq = probe_sq - trace_sigma / n_total
    return NoiseScale(_ratio(trace_sigma, grad_sq), trace_sigma, grad_sq, "per_sample", n_total, 1, probe_sq)


def _two_batch(s: ProbeSession, small: int, seed: int) -> NoiseScale:
    n_total = s.probe.global_num_samples
    if distributed.world_size() > 1:
        raise ValueError("method='two_batch' runs in a single process; use 'per_sample' under ignite.distributed")
    batches = s.probe.batches()
    x_all = _tree_cat([b[0] for b in batches])
    y_all = _tree_cat([b[1] for b in batches])
    _, g_full = s.loss_and_grad()
    g_full = g_full.double()
    perm = torch.randperm(n_total, generator=generator(seed)).to(s.probe.device)
    k = n_total // small
    leaves = [t.detach().requires_grad_(True) for t in s.base]
    sq = 0.0
    with torch.enable_grad():
        for j in range(k):
            idx = perm[j * small : (j + 1) * small]
            x = _tree_map(lambda t, idx=idx: t[idx], x_all)
            y = _tree_map(lambda t, idx=idx: t[idx], y_all)
            loss = s.probe.loss_fn(s.forward(x, leaves, j), y)
            gs = torch.autograd.grad(loss, leaves, allow_unused=True)
            flat = torch.cat(
                [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, leaves)]
            ).double()
            sq += float(flat @ flat)
    s.num_grads += 1
    small_sq = sq / k
    full_sq = float(g_full @ g_full)
    grad_sq = (n_total * full_sq - small * small_sq) / (n_total - small)
    trace_sigma = (small_sq - full_sq) / (1.0 / small - 1.0 / n_total)
    return NoiseScale(_ratio(trace_sigma, grad_sq), trace_sigma, grad_sq, "two_batch", n_total, small, full_sq)
