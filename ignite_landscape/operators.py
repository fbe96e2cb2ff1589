"""Matrix-free curvature operators of a probe session, and the exact Hessian-vector product behind them.

:class:`CurvatureOperator` is what every spectral routine of :mod:`ignite_landscape.linalg` takes: a
symmetric ``v ↦ C v`` on flat vectors, with ``shape``, ``dtype`` and ``device``, counted in its session's
``num_hvps``. Sessions build them (:meth:`~ignite_landscape.session.ProbeSession.hvp_operator`,
:meth:`~ignite_landscape.session.ProbeSession.operator`); :class:`HessianProduct` computes ``H v`` by
double backward, keeping the probe's gradient graph alive between products while it fits in the
probe's ``max_graph_bytes`` (the batches that fit are kept, the others recomputed per product).

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> probe = Probe((torch.randn(6, 2), torch.randn(6, 1)), torch.nn.functional.mse_loss)
    >>> H = probe.session(torch.nn.Linear(2, 1)).hvp_operator()
    >>> H.shape, H.dtype, H.name
    ((3, 3), torch.float32, 'hessian')
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from ignite_landscape import distributed

if TYPE_CHECKING:
    from ignite_landscape.session import ProbeSession

__all__ = ["CurvatureOperator", "HessianProduct", "flatten_grads"]

logger = logging.getLogger(__name__)


class CurvatureOperator:
    """A symmetric matrix-free operator ``v ↦ C v`` of one session, on flat vectors in the order of its space.

    Each product checks ``v``'s shape and casts it to the operator's dtype; a session's operators run
    under its restoring scope and count one in its ``num_hvps`` per product.

    Attributes:
        shape: ``(P, P)``, ``P`` the number of selected parameter entries.
        dtype: the dtype of the products (the parameters').
        device: where the products are computed.
        name: what the operator is (``"hessian"``, ``"ggn"``, ...).

    Example:
        >>> from ignite_landscape import Probe
        >>> s = Probe((torch.ones(4, 1), torch.zeros(4, 1)), torch.nn.MSELoss()).session(torch.nn.Linear(1, 1))
        >>> H = s.hvp_operator()  # the loss is (w + b)², so H = 2·[[1, 1], [1, 1]]
        >>> H(torch.tensor([1.0, 0.0])).tolist(), s.num_hvps
        ([2.0, 2.0], 1)
    """

    def __init__(
        self,
        product: Callable[[torch.Tensor], torch.Tensor],
        size: int,
        dtype: torch.dtype,
        device: torch.device,
        name: str,
    ) -> None:
        self.name = name
        self.shape = (size, size)
        self.dtype = dtype
        self.device = device
        self._product = product

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``C v`` for a flat ``v`` of ``P`` entries (cast to the operator's dtype).

        Raises:
            ValueError: if ``v`` is not a flat vector of ``P`` entries.
        """
        if v.shape != self.shape[:1]:
            raise ValueError(f"v must be a flat vector of {self.shape[0]} entries, got shape {tuple(v.shape)}")
        return self._product(v.to(dtype=self.dtype))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``C v`` (see :meth:`matvec`)."""
        return self.matvec(v)

    def __repr__(self) -> str:
        """The operator's name, shape, dtype and device."""
        return f"CurvatureOperator({self.name!r}, shape={self.shape}, dtype={self.dtype}, device={self.device})"


class HessianProduct:
    """Exact Hessian-vector products of a session's probe objective at its weights (double backward).

    Attributes:
        cached_batches: probe batches whose gradient graph is kept between products (0 when none is).
        saved_graph_bytes: bytes the kept graph's saved tensors take.
    """

    def __init__(self, session: ProbeSession) -> None:
        self.s = session
        self._graph: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._graph_failed = False
        self._cached_batches = 0
        self._partial = False  # the kept graph covers only the first _cached_batches probe batches
        self.saved_graph_bytes = 0

    @property
    def cached_batches(self) -> int:
        """Probe batches whose gradient graph is kept between products (0 when none is)."""
        return self._cached_batches if self._graph is not None else 0

    def release(self) -> None:
        """Free the kept gradient graph (the next product builds it again)."""
        self._graph = None

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` summed over this rank's batches and reduced over ranks (``v`` flat, in the session's dtype)."""
        hv = v  # only a placeholder of the right shape should this rank's part fail
        with distributed.Lockstep() as step:
            graph = self._cached_graph()
            if graph is not None:
                leaves, weighted_grad = graph
                pairs = [(w, vi) for w, vi in zip(weighted_grad, self.s.space.split(v)) if w.requires_grad]
                out = torch.autograd.grad(
                    [w for w, _ in pairs],
                    leaves,
                    grad_outputs=[vi for _, vi in pairs],
                    retain_graph=True,
                    allow_unused=True,
                )
                hv = flatten_grads(out, leaves)
                if self._partial:
                    hv = hv + self._recompute(v, start=self._cached_batches)
            else:
                hv = self._recompute(v)
        (hv,) = step.all_reduce(hv)
        return hv

    def _recompute(self, v: torch.Tensor, start: int = 0) -> torch.Tensor:
        leaves = [t.detach().requires_grad_(True) for t in self.s.base]
        vs = self.s.space.split(v)
        hv = torch.zeros_like(v)
        with torch.enable_grad():
            for i, (x, y, _) in enumerate(self.s.probe.batches()):
                if i < start:
                    continue  # in the cached graph
                loss = self.s.batch_objective(self.s.forward(x, leaves, i), y, i)
                g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                used = [(gi, vi, li) for gi, vi, li in zip(g, vs, leaves) if gi is not None]
                if not used:
                    continue
                dot = sum((gi * vi).sum() for gi, vi, _ in used)
                if not dot.requires_grad:
                    continue  # the gradient is constant in the weights: this batch adds nothing
                out = torch.autograd.grad(dot, leaves, allow_unused=True)
                hv += flatten_grads(out, leaves)
        return hv

    def _cached_graph(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        if self._graph is not None:
            return self._graph
        if self._graph_failed or self.s.probe.max_graph_bytes == 0:
            return None
        counter = _SavedBytes(self.s.probe.max_graph_bytes)
        leaves = [t.detach().requires_grad_(True) for t in self.s.base]
        batches = self.s.probe.batches()
        weighted: list[torch.Tensor] | None = None
        cached = 0
        kept_bytes = 0
        loss = g = candidate = None
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
            for i, (x, y, _) in enumerate(batches):
                loss = self.s.batch_objective(self.s.forward(x, leaves, i), y, i)
                g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                g = [torch.zeros_like(li) if gi is None else gi for gi, li in zip(g, leaves)]
                # batch_objective already carries the batch's share of the objective: plain sums.
                candidate = g if weighted is None else [a + b for a, b in zip(weighted, g)]
                if counter.exceeded:
                    # Keep the batches that fit and recompute only the rest per HVP: memory and time
                    # then trade off in proportion instead of falling off a cliff at the limit.
                    break
                weighted, cached, kept_bytes = candidate, i + 1, counter.bytes
            del loss, g, candidate  # the batch over the limit: its graph is freed here
        if cached == 0 or weighted is None or not any(w.requires_grad for w in weighted):
            self._graph_failed = True
            logger.debug("Probe: gradient graph needs more than %d bytes; recomputing per HVP", counter.limit)
            return None
        if cached < len(batches):
            logger.debug("Probe: %d of %d batches' gradient graph kept (%d bytes)", cached, len(batches), kept_bytes)
        self._graph = (leaves, weighted)
        self._cached_batches = cached
        self._partial = cached < len(batches)
        self.saved_graph_bytes = kept_bytes
        return self._graph


class _SavedBytes:
    """Counts the distinct storage bytes the autograd graph saves, to stay within a memory budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._seen: set[int] = set()

    @property
    def exceeded(self) -> bool:
        return self.bytes > self.limit

    def pack(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        try:
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += storage.nbytes()
        except (RuntimeError, NotImplementedError):
            self.bytes += t.numel() * t.element_size()
        # Never keep ``t`` itself: a tensor saved by its own backward node (the output of ReLU, softmax,
        # exp) would then hold that node through its grad_fn, a reference cycle inside autograd's C++
        # graph that Python's collector cannot see, so every cached graph would outlive its session.
        # A detached alias shares the storage and the version counter; autograd re-attaches the
        # grad_fn or grad accumulator on unpack.
        return t.detach(), t._version

    @staticmethod
    def unpack(packed: tuple[torch.Tensor, int]) -> torch.Tensor:
        t, version = packed
        # With saved-tensor hooks autograd skips its own check that a saved tensor was not modified in
        # place since it was saved (it cannot know what the hook returns): redo it, or an in-place op
        # (``nn.ReLU(inplace=True)`` on a saved tensor) would silently corrupt the gradient.
        if t._version != version:
            raise RuntimeError(
                "a tensor saved for the gradient graph was modified by an in-place operation "
                f"(version {t._version}, saved at version {version}); the Hessian-vector product would be wrong"
            )
        return t


def flatten_grads(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat vector of ``grads`` (``None`` read as zeros shaped like ``like``)."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, like)])
