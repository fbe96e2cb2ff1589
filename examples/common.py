"""What the examples share: their common flags, the landscape handler table, the TensorBoard wiring.

Each example keeps only what is its own (data, model, extra flags, checkpoints); the handlers, the
flags that size them and the way results reach TensorBoard are written once, here.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser()
    >>> add_common_flags(p, defaults={"epochs": 3}, handlers=("hessian", "trace"))
    >>> args = check_args(p, p.parse_args(["--handlers", "trace"]), handlers=("hessian", "trace"))
    >>> args.epochs, args.handlers
    (3, ['trace'])
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "BASIC_HANDLERS",
    "HANDLER_NAMES",
    "add_common_flags",
    "check_args",
    "landscape_handlers",
    "evaluate_every_epoch",
    "tensorboard_logger",
    "next_steps",
    "setup_logging",
]

# The handlers every example offers: spectrum, trace, density, sharpness, slices, connectivity, noise scale.
BASIC_HANDLERS = ("hessian", "trace", "density", "sharpness", "slice1d", "slice2d", "connectivity", "noise_scale")
# Every handler an example can attach, in build (and attach) order: "hessian" comes before "overlap", which
# reuses its eigenvectors. Beyond the basic ones: the weight trajectory's PCA plane; the curvature instruments
# (issue 13): gradient overlap with the top-k eigenspace, curvature along the gradient, batch sharpness against
# 2/η, per-layer curvature, the GGN decomposition with its outliers; per-sample gradient statistics (issue 15):
# norms, GSNR, Fisher trace, distance and update size.
HANDLER_NAMES = (
    *BASIC_HANDLERS,
    "trajectory",
    "overlap",
    "directional",
    "batch_sharpness",
    "layers",
    "ggn",
    "gradstats",
)

# Defaults an example may override; the flags themselves are the same in every example.
_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "batch_size": 32,
    "lr": 0.2,
    "momentum": 0.0,
    "every": 2,
    "probe_samples": 512,
    "top_k": 5,
    "slice_steps": 21,
    "trace_hvps": 30,
    "density_steps": 20,
    "rho": 0.05,
}
# Integer flags that must be at least 1 in every example.
_POSITIVE = ("epochs", "batch_size", "every", "probe_samples", "top_k", "slice_steps", "trace_hvps", "density_steps")


def add_common_flags(
    p: argparse.ArgumentParser,
    *,
    defaults: Mapping[str, Any],
    handlers: Sequence[str],
    default_handlers: Sequence[str] | None = None,
    run_name_help: str = "subfolder of --output-dir",
) -> None:
    """Add the flags every example has (training, landscape sizes, output) to ``p``.

    Args:
        p: the example's parser.
        defaults: the example's own defaults, by flag destination (e.g. ``{"epochs": 30}``).
        handlers: the handler names the example offers.
        default_handlers: the ones attached without ``--handlers`` (default: all of ``handlers``).
        run_name_help: how the example names a run when ``--run-name`` is not given.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> add_common_flags(p, defaults={"lr": 0.1}, handlers=("hessian",))
        >>> p.parse_args([]).lr
        0.1
    """
    unknown = sorted(set(defaults) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"defaults: unknown flags {unknown}; choose from {sorted(_DEFAULTS)}")
    d = {**_DEFAULTS, **defaults}
    p.add_argument("--epochs", type=int, default=d["epochs"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"], help="SGD step size η (constant, so 2/η stays one line)")
    p.add_argument("--momentum", type=float, default=d["momentum"], help="heavy-ball β; the threshold is (2+2β)/η")
    p.add_argument(
        "--every", type=int, default=d["every"], help="measure the landscape every N epochs (and at the end)"
    )
    p.add_argument(
        "--probe-samples",
        type=int,
        default=d["probe_samples"],
        help="fixed training samples the landscape is measured on",
    )
    p.add_argument(
        "--handlers",
        default=",".join(default_handlers if default_handlers is not None else handlers),
        help=f"comma-separated subset of {','.join(handlers)}",
    )
    p.add_argument("--top-k", type=int, default=d["top_k"], help="Hessian eigenvalues tracked")
    p.add_argument("--slice-steps", type=int, default=d["slice_steps"], help="points per axis of the 1D/2D slices")
    p.add_argument(
        "--trace-hvps", type=int, default=d["trace_hvps"], help="Hessian-vector products per trace estimate (Hutch++)"
    )
    p.add_argument("--density-steps", type=int, default=d["density_steps"], help="Lanczos steps per SLQ run (2 runs)")
    p.add_argument("--rho", type=float, default=d["rho"], help="sharpness radius ρ")
    p.add_argument("--output-dir", type=Path, default=Path("runs"))
    p.add_argument("--run-name", default=None, help=run_name_help)
    p.add_argument("--seed", type=int, default=0)


def check_args(
    p: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    handlers: Sequence[str],
    positive: Iterable[str] = (),
) -> argparse.Namespace:
    """Check the common flags (and the example's ``positive`` integer flags); ``args.handlers`` becomes a list.

    A bad value exits through ``p.error`` (code 2) with the flag's name in the message.
    """
    for name in (*_POSITIVE, *positive):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    names = [n for n in args.handlers.split(",") if n]
    unknown = sorted(set(names) - set(handlers))
    if unknown:
        p.error(f"--handlers: unknown {unknown}; choose from {','.join(handlers)}")
    args.handlers = names
    return args


def landscape_handlers(
    names: Sequence[str],
    model: nn.Module,
    probe: Any,
    optimizer: torch.optim.Optimizer,
    options: Mapping[str, Any],
    *,
    bn_loader: Iterable[Any] | None = None,
) -> dict[str, Any]:
    """The landscape handlers named in ``names``, keyed by their default names, in :data:`HANDLER_NAMES` order.

    Args:
        names: handler names (a subset of :data:`HANDLER_NAMES`).
        model: the trained model.
        probe: the fixed :class:`~ignite_landscape.Probe`.
        optimizer: the training optimizer (its step size gives the 2/η threshold).
        options: the parsed flags (``vars(args)``): ``seed``, ``top_k``, ``trace_hvps``, ``density_steps``,
            ``rho``, ``slice_steps``, ``batch_size`` and, when the example has them, ``uncertainty``
            (``"none"`` or a method) and ``max_hvps``.
        bn_loader: batches BatchNorm statistics are recomputed on along a connectivity path.

    Example:
        >>> import ignite_landscape as il
        >>> model = nn.Linear(4, 3)
        >>> probe = il.Probe((torch.randn(8, 4), torch.randint(0, 3, (8,))), nn.functional.cross_entropy)
        >>> sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> flags = dict(seed=0, top_k=1, trace_hvps=6, density_steps=4, rho=0.05, slice_steps=5, batch_size=8)
        >>> list(landscape_handlers(["trace", "hessian"], model, probe, sgd, flags))  # in HANDLER_NAMES order
        ['hessian', 'trace']
    """
    import ignite_landscape as il

    o = options
    seed = o["seed"]
    unc = o.get("uncertainty", "none")
    bars = {"uncertainty": None if unc == "none" else unc}
    make = {
        "hessian": lambda: il.HessianSpectrum(
            model, probe, k=o["top_k"], max_iter=o.get("max_hvps"), optimizer=optimizer, seed=seed, **bars
        ),
        "trace": lambda: il.HessianTrace(model, probe, num_hvps=o["trace_hvps"], seed=seed, **bars),
        "density": lambda: il.HessianDensity(model, probe, num_steps=o["density_steps"], num_runs=2, seed=seed),
        "sharpness": lambda: il.Sharpness(model, probe, rho=o["rho"], seed=seed, **bars),
        "slice1d": lambda: il.LossSlice(model, probe, dims=1, steps=o["slice_steps"], seed=seed),
        "slice2d": lambda: il.LossSlice(model, probe, dims=2, steps=o["slice_steps"], seed=seed),
        # With BatchNorm, statistics are recomputed along the path: interpolated running statistics
        # would invent barriers.
        "connectivity": lambda: il.ModeConnectivity(model, probe, reference="previous", bn_loader=bn_loader, seed=seed),
        "noise_scale": lambda: il.GradientNoiseScale(model, probe, seed=seed),
        # The path is recorded at every firing; its PCA plane is drawn once, at COMPLETED.
        "trajectory": lambda: il.TrajectoryPlane(model, probe, steps=o["slice_steps"], seed=seed),
        "gradstats": lambda: il.GradientStatistics(model, probe, seed=seed),
        "overlap": lambda: il.GradientOverlap(model, probe, k=o["top_k"], spectrum=built.get("hessian"), seed=seed),
        "directional": lambda: il.DirectionalCurvature(model, probe, optimizer=optimizer, seed=seed),
        "batch_sharpness": lambda: il.BatchSharpness(model, probe, o["batch_size"], optimizer=optimizer, seed=seed),
        "layers": lambda: il.LayerwiseCurvature(model, probe, seed=seed),
        "ggn": lambda: il.GGNOutliers(model, probe, trace_hvps=o["trace_hvps"], seed=seed),
    }
    unknown = sorted(set(names) - set(make))
    if unknown:
        raise ValueError(f"names: unknown handlers {unknown}; choose from {HANDLER_NAMES}")
    built: dict[str, Any] = {}
    for name in HANDLER_NAMES:
        if name in names:
            built[name] = make[name]()
    return built


def evaluate_every_epoch(
    trainer: Any, evaluator: Any, loader: Any, log: logging.Logger, *, record: bool = False, verbose: bool = True
) -> None:
    """Run ``evaluator`` on ``loader`` after every training epoch and log one line.

    With ``record`` the test accuracy also goes into ``trainer.state.metrics["test/accuracy"]``.
    """
    from ignite.engine import Events

    @trainer.on(Events.EPOCH_COMPLETED)
    def evaluate(engine: Any) -> None:
        evaluator.run(loader)
        if record:
            engine.state.metrics["test/accuracy"] = evaluator.state.metrics["accuracy"]
        if verbose:
            log.info(
                "epoch %3d  train loss %.4f  test accuracy %.4f",
                engine.state.epoch,
                engine.state.metrics["loss"],
                evaluator.state.metrics["accuracy"],
            )


def tensorboard_logger(
    run_dir: Path,
    trainer: Any,
    evaluator: Any,
    optimizer: torch.optim.Optimizer,
    landscape_event: Any,
) -> Any:
    """A ``TensorboardLogger`` in ``run_dir`` with train/test metrics, the step size and the landscape results.

    Call it after attaching the landscape handlers: its log handler, attached last, logs what they measured
    at the same event. Landscape results go on the same epoch axis as the test metrics (the default step is
    the iteration). The log handler writes each result's definitions with its record, which the report reads.
    """
    from ignite.engine import Events
    from ignite.handlers import TensorboardLogger, global_step_from_engine

    import ignite_landscape as il

    # tensorboardX names event files by the second and host only: a resumed run started within the
    # same second would overwrite the first file without a unique suffix.
    tb_logger = TensorboardLogger(log_dir=str(run_dir), filename_suffix=f".{os.getpid()}.{time.time_ns()}")
    tb_logger.attach_output_handler(trainer, Events.EPOCH_COMPLETED, tag="train", metric_names=["loss"])
    by_epoch = global_step_from_engine(trainer, Events.EPOCH_COMPLETED)
    tb_logger.attach_output_handler(
        evaluator, Events.COMPLETED, tag="test", metric_names=["accuracy", "loss"], global_step_transform=by_epoch
    )
    tb_logger.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer, param_name="lr")
    tb_logger.attach(
        trainer, log_handler=il.LandscapeLogHandler(global_step_transform=by_epoch), event_name=landscape_event
    )
    return tb_logger


def next_steps(run_dir: Path) -> str:
    """Where the event files are and the commands that show them.

    Example:
        >>> print(next_steps(Path("runs/digits")))
        Landscape event files are in runs/digits
          look:    tensorboard --logdir runs
          figures: python -m ignite_landscape report runs/digits --out runs/digits/report
    """
    return (
        f"Landscape event files are in {run_dir}\n"
        f"  look:    tensorboard --logdir {run_dir.parent}\n"
        f"  figures: python -m ignite_landscape report {run_dir} --out {run_dir / 'report'}"
    )


def setup_logging() -> None:
    """One line per epoch on stderr; Ignite's own messages only from warnings up."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)
