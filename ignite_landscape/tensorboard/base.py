"""The base of every TensorBoard landscape writer: an Ignite log handler that writes each firing once.

A writer is attached to Ignite's ``TensorboardLogger`` like any log handler
(``tb_logger.attach(trainer, log_handler=writer, event_name=...)``), after the landscape handlers. Each
call finds the firings not written yet, computes their step and curves once, and hands them to
:meth:`LandscapeWriter.write`, the one method a writer implements.
:class:`~ignite_landscape.tensorboard.LandscapeLogHandler` is a writer made of the others.

Example:
    >>> class CountWriter(LandscapeWriter):
    ...     def write(self, writer, engine, fresh, step):
    ...         writer.add_scalar("landscape/count", float(len(fresh)), step)
    >>> CountWriter(names=["hessian"]).names
    ['hessian']
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ignite.engine import Engine
from ignite.handlers.base_logger import BaseHandler
from ignite.handlers.tensorboard_logger import TensorboardLogger

from ignite_landscape.handlers.base import Firing
from ignite_landscape.tensorboard.common import Fresh, check_writer_options, default_step, fresh_at_step

__all__ = ["LandscapeWriter"]

# Not named `logger`: __call__ receives Ignite's TensorboardLogger under that name.
_log = logging.getLogger(__name__)


class LandscapeWriter(BaseHandler):
    """Ignite log handler writing the fresh landscape firings to a ``TensorboardLogger``'s writer.

    Args:
        names: only these handler names (default: all).
        global_step_transform: ``f(engine, event_name) -> int`` giving the step. Default: the engine's
            iteration, for every event, so one handler fired by any mix of iteration, epoch and
            ``COMPLETED`` events is written at strictly increasing steps.

    Raises:
        TypeError: on a non-callable ``global_step_transform`` or ``names`` that are not strings.
    """

    def __init__(
        self, names: Sequence[str] | None = None, *, global_step_transform: Callable[[Engine, Any], int] | None = None
    ) -> None:
        self.names = check_writer_options(names, global_step_transform, 1)
        self.global_step_transform = global_step_transform or default_step
        self._logged: dict[str, Firing] = {}
        self._warned_order = False

    def __call__(self, engine: Engine, logger: TensorboardLogger, event_name: Any) -> None:
        """Write every firing of ``engine`` since the previous call (rank 0 only)."""
        if not isinstance(logger, TensorboardLogger):
            raise RuntimeError(f"{type(self).__name__} works only with ignite's TensorboardLogger")
        who = type(self).__name__
        fresh, step = fresh_at_step(engine, event_name, self.names, self._logged, self.global_step_transform, who)
        if not fresh:
            return
        if not self._warned_order and any(f.firing.iteration != engine.state.iteration for f in fresh):
            _log.warning(
                "%s: logging results computed at an earlier iteration; attach it after the landscape handlers "
                "(same event) so each result is written at its own step",
                type(self).__name__,
            )
            self._warned_order = True
        self.write(logger.writer, engine, fresh, step)

    def write(self, writer: Any, engine: Engine, fresh: list[Fresh], step: int) -> None:
        """Write ``fresh`` (firings with their results and curves) with ``writer`` at ``step``."""
        raise NotImplementedError

    def guarded(self, what: str, draw: Callable[..., None], *args: Any) -> None:
        """``draw(*args)``; a failure is logged as a warning naming ``what``, never raised.

        A drawing problem must not stop training.
        """
        try:
            draw(*args)
        except Exception as exc:  # noqa: BLE001
            _log.warning("%s: could not write %s (%s: %s)", type(self).__name__, what, type(exc).__name__, exc)
