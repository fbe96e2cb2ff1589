"""Handler for the trajectory plane: record the weights along training, draw the path over the loss in its PCA plane.

Example:
    >>> import torch
    >>> from ignite.engine import Engine, Events
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(3, 2)
    >>> x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.5)
    >>> def step(engine, batch):
    ...     opt.zero_grad()
    ...     torch.nn.functional.cross_entropy(model(x), y).backward()
    ...     opt.step()
    >>> trainer = Engine(step)
    >>> plane = TrajectoryPlane(model, Probe((x, y), torch.nn.functional.cross_entropy), steps=5)
    >>> _ = plane.attach(trainer, Events.ITERATION_COMPLETED)
    >>> _ = trainer.run([0] * 6, max_epochs=1)
    >>> result = trainer.state.landscape["trajectory"]  # computed at COMPLETED: 7 points (attach time + 6)
    >>> result.num_points, result.coords[-1].tolist()
    (7, [0.0, 0.0])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from ignite_landscape.handlers.measure import MeasureHandler
from ignite_landscape.measures.trajectory import TrajectoryOptions, TrajectoryPlaneResult, measure_trajectory_plane
from ignite_landscape.params import unwrap_model
from ignite_landscape.probe import Probe
from ignite_landscape.validation import check_int

__all__ = ["TrajectoryPlane", "TrajectoryPlaneOptions", "TrajectoryPoint"]

logger = logging.getLogger(__name__)


@dataclass
class TrajectoryPoint:
    """A firing that only recorded the weights.

    Attributes:
        num_points: points held after this firing.
        recorded: whether this firing's weights were kept (with thinning, only every ``stride``-th is).
        stride: keep one firing in ``stride``.
    """

    num_points: int
    recorded: bool
    stride: int

    def scalars(self) -> dict[str, float]:
        """``num_points`` and ``stride``."""
        return {"num_points": float(self.num_points), "stride": float(self.stride)}


@dataclass(frozen=True)
class TrajectoryPlaneOptions(TrajectoryOptions):
    """The options of :class:`TrajectoryPlane`: those of :func:`~ignite_landscape.trajectory_plane` and two more.

    Attributes:
        max_points: the most points held (at least 3).
        plane_every: also compute the plane at every N-th firing (``None``: only at ``COMPLETED``).
    """

    max_points: int = 100
    plane_every: int | None = None

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work (``ValueError``/``TypeError``)."""
        super().__post_init__()
        check_int("max_points", self.max_points, 3)
        if self.plane_every is not None:
            check_int("plane_every", self.plane_every, 1)


class TrajectoryPlane(MeasureHandler):
    """The training path projected on its top-2 PCA plane, drawn over the loss in that plane (Li et al. 2018).

    At each firing the handler copies the selected weights into host memory; at ``Events.COMPLETED``
    (registered by :meth:`attach`) and, with ``plane_every=N``, at every N-th firing, it computes the plane
    through the current weights (see :func:`~ignite_landscape.trajectory_plane`), whose result goes to
    ``engine.state.landscape[name]`` with the scalars ``explained_variance_1``, ``explained_variance_2``,
    ``num_points``, ``center_loss``, ``min_loss``. Other firings record only (scalars ``num_points``,
    ``stride``). The :class:`~ignite_landscape.LandscapeLogHandler` draws the path over the contours with the
    explained-variance ratios on the figure; attach the log handler to ``Events.COMPLETED`` too (e.g.
    ``event_name=Events.EPOCH_COMPLETED | Events.COMPLETED``) to get the final plane.

    Where the points live and what they cost: in CPU memory, as copies in the parameters' dtype: at most
    ``max_points × P`` numbers (``P`` the selected parameters), plus the attach-time weights as the first
    point. When a new point would exceed the cap, every other point is dropped and from then on only every
    second firing is kept (``stride`` doubles), so the kept points stay evenly spaced in firings (a firing
    that a :class:`~ignite_landscape.Budget` skips records nothing: give this handler no budget). The
    points are part of :meth:`state_dict` (a checkpoint grows by the same amount), so a run resumed from a
    checkpoint continues the same path. Computing the plane builds one ``m × P`` float64 matrix for the PCA
    and evaluates ``steps²`` probe losses.

    Raises:
        TypeError, ValueError: for a bad option, naming it.
    """

    default_name = "trajectory"
    options_type = TrajectoryPlaneOptions

    def __init__(self, model: nn.Module, probe: Probe, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, probe, *args, **kwargs)
        # (firing index, trainer iteration, weights); firing -1 is the attach-time point.
        self.points: list[tuple[int, int, dict[str, torch.Tensor]]] = []
        self.stride = 1
        self.firings = 0
        self._plane_key: tuple[int, int, int, int] | None = None

    # -- recording ----------------------------------------------------------------------------------
    def _copy_weights(self) -> dict[str, torch.Tensor]:
        named = dict(unwrap_model(self.model).named_parameters())
        return {n: named[n].detach().to("cpu", copy=True) for n in self.space.names}

    def _on_attach(self, engine: Engine) -> None:
        if not self.points:  # the path starts where training starts (kept over a resumed state)
            self.points.append((-1, int(engine.state.iteration), self._copy_weights()))
        if not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def _record(self, iteration: int) -> bool:
        if self.points and self.points[-1][1] == iteration:
            return False  # this moment is recorded already (COMPLETED right after the last epoch's firing)
        index = self.firings
        self.firings += 1
        if index % self.stride:
            return False
        self.points.append((index, iteration, self._copy_weights()))
        if len(self.points) > self.max_points:
            # Keep the attach-time point and every firing on the doubled stride: evenly spaced again.
            self.stride *= 2
            self.points = [p for p in self.points if p[0] < 0 or p[0] % self.stride == 0]
        return True

    # -- Ignite -------------------------------------------------------------------------------------
    def __call__(self, engine: Engine) -> None:
        """Record a point, or at ``COMPLETED`` (once per run) the plane, then fire as the base class does."""
        if engine.last_event_name == Events.COMPLETED:
            key = (id(engine), self._run_count, engine.state.epoch, engine.state.iteration)
            if key == self._plane_key:
                return  # attached to COMPLETED twice (by the user's event and by attach()): one plane
            self._plane_key = key
            # The base class skips a moment it handled already; the last epoch's point may be, the plane is not.
            self._last_key = None
        super().__call__(engine)

    def expected_keys(self) -> list[str]:
        """``num_points``, recorded as NaN when the first firing fails."""
        return ["num_points"]

    def compute(self, engine: Engine) -> TrajectoryPlaneResult | TrajectoryPoint:
        """A point of the path, or the plane through it at ``COMPLETED`` and every ``plane_every`` firings."""
        iteration = int(engine.state.iteration)
        before = self.firings
        recorded = self._record(iteration)
        completed = engine.last_event_name == Events.COMPLETED
        new_firing = self.firings > before
        due = self.plane_every is not None and new_firing and self.firings % self.plane_every == 0
        if not (completed or due):
            return TrajectoryPoint(len(self.points), recorded, self.stride)
        points = [w for _, _, w in self.points]
        iterations = [it for _, it, _ in self.points]
        if iterations[-1] != iteration:
            # Not kept (thinning): the current weights still end the path, at the centre of the plane.
            points.append(self._copy_weights())
            iterations.append(iteration)
        return measure_trajectory_plane(
            self.model, self.probe, self.options, trajectory=points, params=self.space.names, iterations=iterations
        )

    # -- serialisation ------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {
            "stride": self.stride,
            "firings": self.firings,
            "indices": [i for i, _, _ in self.points],
            "iterations": [it for _, it, _ in self.points],
            "points": [w for _, _, w in self.points],
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        if "points" not in state:
            return
        for i, w in enumerate(state["points"]):
            try:
                self.space.flatten(w)
            except ValueError as e:
                raise ValueError(f"state_dict: recorded point {i} does not fit the model ({e})") from None
        self.stride = int(state["stride"])
        self.firings = int(state["firings"])
        self.points = [
            (int(i), int(it), {n: t.detach().to("cpu") for n, t in w.items()})
            for i, it, w in zip(state["indices"], state["iterations"], state["points"])
        ]
