"""Curvature matrices behind one interface: Hessian, Gauss-Newton, Fisher and empirical Fisher products.

Every spectral routine of :mod:`ignite_landscape.linalg` needs only ``v ↦ C v`` for a symmetric ``C``;
:func:`curvature_operator` returns that product for the probe objective ``L(θ) = Σ_n w_n ℓ(f(x_n; θ), y_n)``
(``w_n = 1/N`` for a mean-reduced loss), with ``J`` the Jacobian of the model's outputs and ``H_out`` the
Hessian of the objective with respect to them:

* ``"hessian"``: ``H v``, the exact Hessian-vector product of the probe session.
* ``"ggn"``: the generalised Gauss-Newton matrix ``G = Jᵀ H_out J``, exactly, without forming anything:
  ``J v`` (a forward-mode product, taken as the derivative of a vector-Jacobian product), ``H_out (J v)``
  (a double backward in output space), then ``Jᵀ(·)`` (one backward). ``H = G + R`` where the residual
  ``R`` carries the second derivatives of the network itself; for convex losses ``G`` is positive
  semi-definite.
* ``"fisher"``: the Monte-Carlo Fisher ``F = Σ_n w_n ∇ℓ(x_n, ŷ_n) ∇ℓ(x_n, ŷ_n)ᵀ`` with one label ``ŷ_n``
  per sample drawn from the model's own predictive distribution (softmax of the outputs), with a private
  generator seeded by ``seed`` — the same labels for every product of one operator, so ``F`` is one
  fixed symmetric matrix and Lanczos sees a consistent operator. ``E_ŷ[F] = G`` for the cross-entropy.
  Classification outputs ``(n, C)`` with integer labels only.
* ``"empirical_fisher"``: the same with the true labels, ``Σ_n w_n ∇ℓ_n ∇ℓ_nᵀ`` (per-sample gradient
  outer products), ``tr = Σ_n w_n ‖∇ℓ_n‖²``.

The Fisher variants need the objective to be a sum of per-sample losses with one weight ``w_n = w``
(``1/N`` for a mean, ``1`` for a sum) in which the outputs of one sample do not affect another's loss;
a loss with class weights or ignored targets is refused with a ``ValueError`` (use ``"ggn"``).

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> probe = Probe((torch.randn(8, 3).double(), torch.randint(0, 2, (8,))), torch.nn.functional.cross_entropy)
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    >>> with probe.session(model) as s:
    ...     ggn = curvature_operator(s, "ggn")
    ...     v = torch.randn(s.space.numel, dtype=torch.float64)
    ...     bool(torch.dot(v, ggn(v)) >= 0)  # the GGN of the cross-entropy is positive semi-definite
    True
"""

from __future__ import annotations

from typing import Any

import torch

from ignite_landscape import distributed
from ignite_landscape.operators import CurvatureOperator, flatten_grads
from ignite_landscape.probe import Probe, ProbeSession
from ignite_landscape.samples import LABEL_DTYPES

__all__ = ["CURVATURES", "check_curvature", "curvature_operator", "batch_objective", "fisher_labels", "prediction"]

CURVATURES = ("hessian", "ggn", "fisher", "empirical_fisher")


def check_curvature(curvature: Any) -> str:
    """Return ``curvature`` if it names a curvature matrix, else raise a ``ValueError`` naming the argument."""
    if not isinstance(curvature, str) or curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    return curvature


def prediction(s: ProbeSession, output: Any) -> Any:
    """The model's raw ``output`` as ``loss_fn`` takes it (the probe's ``output_transform``)."""
    transform = getattr(s.probe, "transform", None)
    return output if transform is None else transform(output)


def batch_objective(s: ProbeSession, pred: Any, y: Any, i: int, n: int) -> torch.Tensor:
    """Batch ``i``'s contribution to the probe objective from the transformed prediction ``pred`` (``n`` samples).

    Summed over the probe's batches this gives ``L(θ)``: the loss's ``reduction="sum"`` total over the batch
    divided by the probe's normaliser (the decomposition of :mod:`ignite_landscape.objective`); for a probe
    without one, the mean-reduced ``loss_fn`` weighted by the batch's share.
    """
    probe = s.probe
    decomposition = getattr(probe, "decomposition", None)
    if decomposition is not None:
        total = decomposition.total(pred, y)
        probe.check_loss(total)
        return total / probe.normalizer
    loss = probe.loss_fn(pred, y)
    probe.check_loss(loss)
    return loss * (n / float(probe.num_samples))


def _check_classification(output: Any, y: Any) -> None:
    ok = (
        isinstance(output, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and y.dtype in LABEL_DTYPES
        and y.dim() == 1
        and output.dim() == 2
        and output.shape[0] == y.shape[0]
    )
    if not ok:
        raise ValueError(
            "curvature='fisher' samples labels from the model's class scores: it needs outputs of shape (n, C) "
            "and integer labels of shape (n,); use curvature='ggn' (its expectation) otherwise"
        )


def _sample_labels(logits: torch.Tensor, seed: int, probe: Probe, i: int) -> torch.Tensor:
    """Labels ``ŷ ~ softmax(logits)`` for batch ``i`` of ``probe.batches()``.

    Sampled by inverting the CDF at one uniform per probe sample, drawn from a private CPU generator in the
    order of the probe's samples: the labels depend on neither the batch split, the device nor anything
    training draws.
    """
    lo = probe.layout()[0] + i * probe.batch_size
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(max(probe.num_samples, lo + logits.shape[0]), generator=g, dtype=torch.float64)
    u = u[lo : lo + logits.shape[0]].unsqueeze(1)
    cdf = torch.softmax(logits.detach().double().cpu(), dim=1).cumsum(dim=1)
    labels = (cdf < u * cdf[:, -1:]).sum(dim=1).clamp_max(logits.shape[1] - 1)
    return labels.to(logits.device)


class _OutputSpaceCurvature:
    """``v ↦ Jᵀ M J v`` summed over the probe's batches, for an output-space matrix ``M`` per batch."""

    def __init__(self, s: ProbeSession, kind: str, seed: int) -> None:
        if s.probe.model_mode == "train" and kind != "ggn" and _has_batchnorm(s.model):
            raise ValueError(
                f"curvature={kind!r} needs per-sample losses, but BatchNorm in model_mode='train' couples the "
                "samples of a batch: use model_mode='eval'"
            )
        if kind != "ggn" and not s.probe.uniform_sample_weights():
            raise ValueError(
                f"curvature={kind!r} weights every sample's loss equally, but this probe's loss_fn weights its "
                "samples unequally (class weights or ignored targets): use curvature='ggn' or 'hessian'"
            )
        self.s = s
        self.kind = kind
        self.seed = seed
        self.labels: dict[int, torch.Tensor] = {}

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        # v is flat and in the session's dtype: the session's operator checked and cast it.
        s = self.s
        vs = s.space.split(v)
        leaves = [t.detach().requires_grad_(True) for t in s.base]
        result = torch.zeros_like(v)
        with distributed.Lockstep() as step, torch.enable_grad():
            for i, (x, y, n) in enumerate(s.probe.batches()):
                out = prediction(s, s.forward(x, leaves, i))
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"curvature={self.kind!r} needs the model's prediction (after output_transform) to be a "
                        f"tensor, got {type(out).__name__}"
                    )
                jv = _jvp(out, leaves, vs)
                m_jv = self._output_product(out.detach(), y, i, n, jv)
                back = torch.autograd.grad(out, leaves, grad_outputs=m_jv, allow_unused=True)
                result += flatten_grads(back, leaves)
        (result,) = step.all_reduce(result)
        return result

    def _output_product(self, out: torch.Tensor, y: Any, i: int, n: int, jv: torch.Tensor) -> torch.Tensor:
        s = self.s
        out = out.requires_grad_(True)
        if self.kind == "ggn":
            f = batch_objective(s, out, y, i, n)
            (g,) = torch.autograd.grad(f, out, create_graph=True)
            if not g.requires_grad:  # an objective linear in the outputs has H_out = 0
                return torch.zeros_like(jv)
            (hjv,) = torch.autograd.grad(g, out, grad_outputs=jv)
            return hjv
        if self.kind == "fisher":
            _check_classification(out, y)
            if i not in self.labels:
                self.labels[i] = _sample_labels(out, self.seed, s.probe, i).to(dtype=y.dtype)
            y = self.labels[i]
        f = batch_objective(s, out, y, i, n)
        (g,) = torch.autograd.grad(f, out)
        # g's row for sample m is w ∇ℓ_m (w = 1/N for a mean, 1 for a sum), so
        # Σ_m w ∇ℓ_m (∇ℓ_m · Jv_m) = (1/w) Σ_m g_m (g_m · Jv_m).
        dots = (g * jv).reshape(g.shape[0], -1).sum(dim=1)
        return g * dots.reshape(-1, *([1] * (g.dim() - 1))) / _sample_weight(s.probe)


def _sample_weight(probe: Probe) -> float:
    """The weight ``w`` of one sample's loss in the probe objective: ``1/N`` for a mean, ``1`` for a sum."""
    # objective_scale(1) is 1 for a normalised loss and 1/N for a sum (see Probe.objective_scale), so
    # 1/(N·objective_scale(1)) is 1/N for the one and 1 for the other.
    return 1.0 / (float(probe.num_samples) * float(probe.objective_scale(1)))


def _jvp(out: torch.Tensor, leaves: list[torch.Tensor], vs: list[torch.Tensor]) -> torch.Tensor:
    """``J v`` of ``out`` w.r.t. ``leaves``, by differentiating a vector-Jacobian product.

    The vector-Jacobian product is linear in its cotangent ``u``, so differentiating ``⟨Jᵀu, v⟩`` with respect
    to ``u`` gives ``J v`` (works for every op with a backward).
    """
    u = torch.zeros_like(out, requires_grad=True)
    grads = torch.autograd.grad(out, leaves, grad_outputs=u, create_graph=True, allow_unused=True)
    pairs = [(g, vi) for g, vi in zip(grads, vs) if g is not None and g.requires_grad]
    if not pairs:
        return torch.zeros_like(out)
    (jv,) = torch.autograd.grad([g for g, _ in pairs], u, grad_outputs=[vi for _, vi in pairs], allow_unused=True)
    return torch.zeros_like(out) if jv is None else jv.detach()


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def curvature_operator(s: ProbeSession, curvature: str = "hessian", seed: int = 0) -> CurvatureOperator:
    """The product ``v ↦ C v`` of the chosen curvature matrix at the session's weights, as an operator.

    The operator (:class:`~ignite_landscape.operators.CurvatureOperator`) has ``shape``, ``dtype`` and ``device``.

    Args:
        s: an open probe session (flat vectors in the order of ``s.space``).
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.
        seed: seed of the Fisher's sampled labels (ignored by the others).

    Each product counts as one in ``s.num_hvps``.

    Raises:
        ValueError: if ``curvature`` is unknown, or a Fisher is asked for where per-sample losses are not
            defined (BatchNorm in ``model_mode="train"``) or not equally weighted (class weights, ignored targets).
    """
    check_curvature(curvature)
    if curvature == "hessian":
        return s.hvp_operator()
    return s.operator(_OutputSpaceCurvature(s, curvature, seed), curvature)


def fisher_labels(model: torch.nn.Module, probe: Probe, seed: int = 0) -> torch.Tensor:
    """The labels ``curvature="fisher"`` samples for every probe sample with this ``seed`` (for checks)."""
    with probe.session(model) as s:
        labels = []
        with torch.no_grad():
            for i, (x, y, _) in enumerate(probe.batches()):
                out = prediction(s, s.forward(x, s.base, i))
                _check_classification(out, y)
                labels.append(_sample_labels(out, seed, probe, i).to(dtype=y.dtype))
    return torch.cat(labels)
