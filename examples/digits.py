"""The main job: a small CNN on real handwritten digits, its loss landscape streamed to TensorBoard.

Trains :class:`examples.models.DigitsCNN` on scikit-learn's ``load_digits`` (1,797 real 8×8 digits
shipped inside scikit-learn, so this runs offline) with an Ignite trainer, evaluates test accuracy
every epoch, and attaches the landscape handlers on a fixed probe of 512 training samples every 2
epochs. Finishes in about 90 seconds on 2 CPU cores with the defaults (20 epochs, η = 0.2).

Example:
    python examples/digits.py                      # writes runs/digits-lr0.2-s0
    tensorboard --logdir runs                      # open http://localhost:6006
    python -m ignite_landscape report runs/digits-lr0.2-s0 --out report
    python examples/digits.py --lr 0.05                # λ_max climbs to 2/η = 40 at epoch 6
    python examples/digits.py --handlers hessian,sharpness --every 1 --epochs 40
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples import common  # noqa: E402
from examples.models import DigitsCNN, digits_loaders  # noqa: E402

__all__ = ["ALL_HANDLERS", "DEFAULT_HANDLERS", "parse_args", "run", "main"]

logger = logging.getLogger("examples.digits")

# Attached by default: the basic handlers and the weight trajectory; the curvature instruments and gradient
# statistics on request (``--handlers``).
DEFAULT_HANDLERS = (*common.BASIC_HANDLERS, "trajectory")
ALL_HANDLERS = common.HANDLER_NAMES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists every flag with its default)."""
    p = argparse.ArgumentParser(
        prog="digits.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    common.add_common_flags(
        p,
        defaults={},
        handlers=ALL_HANDLERS,
        default_handlers=DEFAULT_HANDLERS,
        run_name_help="subfolder of --output-dir (default digits-lr<lr>-s<seed>[-bn])",
    )
    p.add_argument("--batch-norm", action="store_true", help="DigitsCNN with BatchNorm")
    p.add_argument(
        "--uncertainty",
        choices=["none", "jackknife"],
        default="none",
        help="error bars on the spectrum, trace and sharpness (jackknife over 10 probe chunks: about 10x their cost)",
    )
    args = common.check_args(p, p.parse_args(argv), handlers=ALL_HANDLERS)
    if args.run_name is None:
        args.run_name = f"digits-lr{args.lr:g}-s{args.seed}" + ("-bn" if args.batch_norm else "")
    return args


def run(args: argparse.Namespace) -> Path:
    """Train with the landscape handlers attached; returns the run's TensorBoard folder."""
    from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
    from ignite.metrics import Accuracy, Average, Loss

    import ignite_landscape as il

    torch.manual_seed(args.seed)
    run_dir = args.output_dir / args.run_name
    train_loader, test_loader = digits_loaders(batch_size=args.batch_size, seed=args.seed)
    model = DigitsCNN(batch_norm=args.batch_norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = nn.CrossEntropyLoss()

    trainer = create_supervised_trainer(model, optimizer, loss_fn)
    Average(output_transform=lambda loss: loss).attach(trainer, "loss")
    evaluator = create_supervised_evaluator(model, metrics={"accuracy": Accuracy(), "loss": Loss(loss_fn)})

    # The probe keeps the first `probe_samples` training samples (the loader's own order is untouched).
    x_train, y_train = train_loader.dataset.tensors
    probe = il.Probe((x_train, y_train), loss_fn, num_samples=min(args.probe_samples, len(y_train)))
    handlers = common.landscape_handlers(args.handlers, model, probe, optimizer, vars(args))
    landscape_event = Events.EPOCH_COMPLETED(every=args.every) | Events.COMPLETED
    for handler in handlers.values():
        handler.attach(trainer, event=landscape_event)
    common.evaluate_every_epoch(trainer, evaluator, test_loader, logger)
    tb_logger = common.tensorboard_logger(run_dir, trainer, evaluator, optimizer, landscape_event)

    start = time.perf_counter()
    trainer.run(train_loader, max_epochs=args.epochs)
    tb_logger.close()
    elapsed = time.perf_counter() - start
    print(
        f"\nTrained {args.epochs} epochs in {elapsed:.1f} s; test accuracy {evaluator.state.metrics['accuracy']:.4f}."
    )
    print(common.next_steps(run_dir))
    return run_dir


def main(argv: list[str] | None = None) -> Path:
    """Parse ``argv`` (default ``sys.argv[1:]``) and train; returns the run folder."""
    args = parse_args(argv)
    common.setup_logging()
    return run(args)


if __name__ == "__main__":
    main()
