"""CIFAR-10 with the seed study's two models, every landscape handler attached, and checkpoints.

Trains a vanilla CNN (3 conv layers 64→128→256 + 2 fully connected, about 1.8M parameters) or a
ResNet (6 residual blocks with BatchNorm, about 2.1M parameters) with an Ignite trainer, evaluates
test accuracy every epoch, and watches the loss landscape on a fixed probe of training samples:
Hessian spectrum (with the 2/η stability threshold), trace, eigenvalue density, sharpness, 1D and 2D
slices, linear mode connectivity against the previous firing and the gradient noise scale. Everything
goes to TensorBoard under ``--output-dir``; checkpoints hold the landscape handlers too, so
``--resume`` continues the same slices with the same directions.

Example:
    python examples/cifar10.py --download --model resnet --epochs 30 --every 5
    python examples/cifar10.py --model vanilla --max-train-samples 2048 --epochs 2   # a quick look
    python examples/cifar10.py --model resnet --resume runs/cifar10-resnet-s0/checkpoints
    python -m ignite_landscape report runs/cifar10-vanilla-s0 runs/cifar10-resnet-s0 --out report
    tensorboard --logdir runs

Data: ``torchvision.datasets.CIFAR10(root=--data-dir)``; without ``--download`` the folder must
already hold ``cifar-10-batches-py``. ``--no-verify`` skips torchvision's md5 check (for a subset
or a re-packed copy in the same pickle format).

Distributed (DDP through ``ignite.distributed``): ``--backend gloo|nccl --nproc-per-node N``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["VanillaCNN", "ResNet", "build_model", "parse_args", "training", "main"]

logger = logging.getLogger("examples.cifar10")

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
ALL_HANDLERS = ("hessian", "trace", "density", "sharpness", "slice1d", "slice2d", "connectivity", "noise_scale")


class VanillaCNN(nn.Module):
    """Three 3×3 conv layers (64→128→256, each followed by ReLU and 2×2 max-pooling) and two linear layers.

    1,816,490 parameters (``hidden=352``).

    Example:
        >>> sum(p.numel() for p in VanillaCNN().parameters())
        1816490
    """

    def __init__(self, num_classes: int = 10, hidden: int = 352) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (64, 128, 256):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(256 * 4 * 4, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers with an identity (or 1×1 conv + BatchNorm) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR ResNet: a 3×3 stem, three stages of two basic blocks (widths 56, 112, 224), global pooling.

    Six residual blocks with BatchNorm, 2,127,618 parameters.

    Example:
        >>> sum(p.numel() for p in ResNet().parameters())
        2127618
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (56, 112, 224)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, stride=1 if i == 0 else 2))
            blocks.append(BasicBlock(w, w))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build_model(name: str) -> nn.Module:
    """``"vanilla"`` → :class:`VanillaCNN`, ``"resnet"`` → :class:`ResNet`."""
    if name == "vanilla":
        return VanillaCNN()
    if name == "resnet":
        return ResNet()
    raise ValueError(f"model must be 'vanilla' or 'resnet', got {name!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a missing data folder without ``--download`` exits with code 2 and says why."""
    p = argparse.ArgumentParser(
        prog="cifar10.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", choices=("vanilla", "resnet"), default="resnet")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05, help="SGD step size η (constant, so 2/η stays one line)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--every", type=int, default=5, help="measure the landscape every N epochs (and at the end)")
    p.add_argument(
        "--probe-samples", type=int, default=1024, help="fixed training samples the landscape is measured on"
    )
    p.add_argument(
        "--handlers", default=",".join(ALL_HANDLERS), help=f"comma-separated subset of {','.join(ALL_HANDLERS)}"
    )
    p.add_argument("--top-k", type=int, default=5, help="Hessian eigenvalues tracked")
    p.add_argument("--max-hvps", type=int, default=None, help="cap on Hessian-vector products per Lanczos run")
    p.add_argument("--slice-steps", type=int, default=11, help="points per axis of the 1D/2D slices")
    p.add_argument("--trace-hvps", type=int, default=30, help="Hessian-vector products per trace estimate (Hutch++)")
    p.add_argument("--density-steps", type=int, default=20, help="Lanczos steps per SLQ run (2 runs)")
    p.add_argument("--rho", type=float, default=0.05, help="sharpness radius ρ")
    p.add_argument(
        "--bn-samples",
        type=int,
        default=1024,
        help="unaugmented training samples BatchNorm statistics are recomputed on at each connectivity point",
    )
    p.add_argument("--max-train-samples", type=int, default=None, help="train on the first N samples (quick runs)")
    p.add_argument("--max-test-samples", type=int, default=None, help="evaluate on the first N test samples")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="folder holding cifar-10-batches-py")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 (170 MB) into --data-dir if missing")
    p.add_argument("--no-verify", action="store_true", help="skip torchvision's md5 check of the data files")
    p.add_argument("--output-dir", type=Path, default=Path("runs"))
    p.add_argument("--run-name", default=None, help="subfolder of --output-dir (default cifar10-<model>-s<seed>)")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint file, or a folder: its latest checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--backend", default=None, choices=(None, "gloo", "nccl"), help="DDP backend (ignite.distributed)")
    p.add_argument("--nproc-per-node", type=int, default=None, help="processes to spawn with --backend")
    args = p.parse_args(argv)
    for name in (
        "epochs",
        "batch_size",
        "every",
        "probe_samples",
        "top_k",
        "slice_steps",
        "trace_hvps",
        "density_steps",
        "bn_samples",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    unknown = sorted(set(args.handlers.split(",")) - set(ALL_HANDLERS) - {""})
    if unknown:
        p.error(f"--handlers: unknown {unknown}; choose from {','.join(ALL_HANDLERS)}")
    if args.max_hvps is not None and args.max_hvps < 1:
        p.error(f"--max-hvps must be at least 1, got {args.max_hvps}")
    if args.nproc_per_node is not None and args.backend is None:
        p.error("--nproc-per-node needs --backend gloo|nccl")
    if not args.download and not (args.data_dir / "cifar-10-batches-py").is_dir():
        p.error(
            f"CIFAR-10 not found: {args.data_dir / 'cifar-10-batches-py'} does not exist. "
            f"Pass --download to fetch it (170 MB) into {args.data_dir}, or --data-dir pointing at the folder "
            "that holds cifar-10-batches-py."
        )
    if args.resume is not None and not args.resume.exists():
        p.error(f"--resume: {args.resume} does not exist")
    return args


def _datasets(config: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Train (augmented), train without augmentation (for the probe) and test sets."""
    from torchvision import datasets, transforms

    cls = datasets.CIFAR10
    if config["no_verify"]:
        # md5=None makes torchvision check only that each file exists (public class attributes).
        cls = type(
            "UnverifiedCIFAR10",
            (datasets.CIFAR10,),
            {
                "train_list": [[name, None] for name, _ in datasets.CIFAR10.train_list],
                "test_list": [[name, None] for name, _ in datasets.CIFAR10.test_list],
                "meta": {**datasets.CIFAR10.meta, "md5": None},
            },
        )
    normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    plain = transforms.Compose([transforms.ToTensor(), normalize])
    augment = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    root, download = str(config["data_dir"]), config["download"]
    train = cls(root=root, train=True, transform=augment, download=download)
    train_plain = cls(root=root, train=True, transform=plain, download=False)
    test = cls(root=root, train=False, transform=plain, download=False)
    if config["max_train_samples"] is not None:
        keep = range(min(config["max_train_samples"], len(train)))
        train, train_plain = torch.utils.data.Subset(train, keep), torch.utils.data.Subset(train_plain, keep)
    if config["max_test_samples"] is not None:
        test = torch.utils.data.Subset(test, range(min(config["max_test_samples"], len(test))))
    return train, train_plain, test


def _landscape_handlers(
    names: list[str],
    model: nn.Module,
    probe: Any,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    bn_loader: Any = None,
) -> dict[str, Any]:
    """The landscape handlers asked for, keyed by their default names."""
    import ignite_landscape as il

    steps, seed = config["slice_steps"], config["seed"]
    make = {
        "hessian": lambda: il.HessianSpectrum(
            model, probe, k=config["top_k"], max_iter=config["max_hvps"], optimizer=optimizer, seed=seed
        ),
        "trace": lambda: il.HessianTrace(model, probe, num_hvps=config["trace_hvps"], seed=seed),
        "density": lambda: il.HessianDensity(model, probe, num_steps=config["density_steps"], num_runs=2, seed=seed),
        "sharpness": lambda: il.Sharpness(model, probe, rho=config["rho"], seed=seed),
        "slice1d": lambda: il.LossSlice(model, probe, dims=1, steps=steps, seed=seed),
        "slice2d": lambda: il.LossSlice(model, probe, dims=2, steps=steps, seed=seed),
        # BatchNorm statistics are recomputed along the path (on the probe's batches): interpolated
        # running statistics would invent barriers.
        "connectivity": lambda: il.ModeConnectivity(model, probe, reference="previous", bn_loader=bn_loader, seed=seed),
        "noise_scale": lambda: il.GradientNoiseScale(model, probe, seed=seed),
    }
    return {name: make[name]() for name in names}


def definitions_markdown(config: dict[str, Any], probe_samples: int) -> str:
    """The definitions behind the logged numbers, as the markdown table the ``report`` command reads."""
    beta = config["momentum"]
    num_params = sum(p.numel() for p in build_model(config["model"]).parameters())
    rows = {
        "model": f"{config['model']} ({num_params:,} parameters)",
        "probe samples": str(probe_samples),
        "probe": "the first training samples without augmentation, fixed for the whole run, model in eval mode",
        "optimizer": f"SGD, η = {config['lr']:g}, momentum β = {beta:g}, weight decay {config['weight_decay']:g}, "
        f"batch size {config['batch_size']}",
        "stability threshold": "(2 + 2β)/η" if beta else "2/η",
        "sharpness": f"SAM step, ℓ2 ball, ρ = {config['rho']:g}: L(θ + ρ·g/‖g‖) − L(θ)",
        "slice directions": "one Gaussian draw, filter-normalized to the weights of each firing, biases and BN zeroed",
        "slice span": f"[-1, 1] per direction, {config['slice_steps']} points",
        "connectivity reference": "the weights at the previous firing"
        + (", BatchNorm statistics recomputed along the path" if config["model"] == "resnet" else ""),
        "Hessian": f"top {config['top_k']} eigenvalues by Lanczos on exact HVPs of the mean probe loss",
    }
    return "| definition | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())


def _latest_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path
    files = sorted(path.glob("*.pt"), key=lambda f: f.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"--resume: no checkpoint (*.pt) in {path}")
    return files[-1]


def training(local_rank: int, config: dict[str, Any]) -> dict[str, float]:
    """Train one model with the landscape handlers; run by :class:`ignite.distributed.Parallel` on every rank.

    Returns the trainer's final metrics (test accuracy and the last landscape scalars).
    """
    import ignite.distributed as idist
    from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
    from ignite.handlers import Checkpoint, DiskSaver, ProgressBar, TensorboardLogger, global_step_from_engine
    from ignite.metrics import Accuracy, Average, Loss

    import ignite_landscape as il

    rank = idist.get_rank()
    torch.manual_seed(config["seed"] + rank)
    if config["backend"] is None and config["device"] is not None:
        device = torch.device(config["device"])
    else:
        device = idist.device()
    run_dir = Path(config["output_dir"]) / (config["run_name"] or f"cifar10-{config['model']}-s{config['seed']}")

    # Rank 0 reads (or downloads) the data first; the other ranks wait, then read the same files.
    if rank > 0:
        idist.barrier()
    train_set, probe_set, test_set = _datasets(config)
    if rank == 0:
        idist.barrier()
    train_loader = idist.auto_dataloader(
        train_set, batch_size=config["batch_size"], shuffle=True, num_workers=config["num_workers"], drop_last=True
    )
    test_loader = idist.auto_dataloader(test_set, batch_size=512, shuffle=False, num_workers=config["num_workers"])
    # The probe gets every rank the same plain (unaugmented) samples; it shards them across ranks itself.
    probe_loader = torch.utils.data.DataLoader(probe_set, batch_size=min(256, config["probe_samples"]), shuffle=False)

    model = build_model(config["model"]).to(device)
    if config["backend"] is not None:
        model = idist.auto_model(model)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"]
    )
    loss_fn = nn.CrossEntropyLoss()
    trainer = create_supervised_trainer(model, optimizer, loss_fn, device=device)
    Average(output_transform=lambda loss: loss, device=device).attach(trainer, "loss")
    evaluator = create_supervised_evaluator(
        model, metrics={"accuracy": Accuracy(device=device), "loss": Loss(loss_fn, device=device)}, device=device
    )

    probe = il.Probe(probe_loader, loss_fn, num_samples=config["probe_samples"], device=device)
    handler_names = [n for n in config["handlers"].split(",") if n]
    # A bounded subset: the whole 50k set would be run through the model at each of the 11 points of
    # every connectivity firing (over 5 minutes per firing on the seed ResNet on a CPU).
    bn_set = torch.utils.data.Subset(probe_set, range(min(config["bn_samples"], len(probe_set))))
    bn_loader = (
        torch.utils.data.DataLoader(bn_set, batch_size=min(256, config["bn_samples"]), shuffle=False)
        if any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        else None
    )
    handlers = _landscape_handlers(handler_names, model, probe, optimizer, config, bn_loader)
    landscape_event = Events.EPOCH_COMPLETED(every=config["every"]) | Events.COMPLETED
    for handler in handlers.values():
        handler.attach(trainer, event=landscape_event)

    @trainer.on(Events.EPOCH_COMPLETED)
    def evaluate(engine: Any) -> None:
        evaluator.run(test_loader)
        engine.state.metrics["test/accuracy"] = evaluator.state.metrics["accuracy"]
        if rank == 0:
            logger.info(
                "epoch %d  train loss %.4f  test accuracy %.4f",
                engine.state.epoch,
                engine.state.metrics["loss"],
                evaluator.state.metrics["accuracy"],
            )

    to_save: dict[str, Any] = {"model": model, "optimizer": optimizer, "trainer": trainer}
    to_save.update({f"landscape_{name}": h for name, h in handlers.items()})
    checkpoint = Checkpoint(
        to_save,
        DiskSaver(str(run_dir / "checkpoints"), require_empty=False),
        n_saved=2,
        global_step_transform=global_step_from_engine(trainer),
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, checkpoint)
    if config["resume"] is not None:
        path = _latest_checkpoint(Path(config["resume"]))
        Checkpoint.load_objects(to_load=to_save, checkpoint=torch.load(path, map_location=device))
        if rank == 0:
            logger.info("resumed from %s at epoch %d", path, trainer.state.epoch)

    tb_logger = None
    if rank == 0:
        ProgressBar(persist=False).attach(trainer, output_transform=lambda loss: {"loss": loss})
        # tensorboardX names event files by the second and host only: a resumed run started within the
        # same second would overwrite the first file without a unique suffix.
        tb_logger = TensorboardLogger(log_dir=str(run_dir), filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        tb_logger.writer.add_text("landscape/definitions", definitions_markdown(config, probe.num_samples), 0)
        tb_logger.attach_output_handler(
            trainer,
            Events.ITERATION_COMPLETED(every=50),
            tag="training",
            output_transform=lambda loss: {"batch_loss": loss},
        )
        tb_logger.attach_output_handler(trainer, Events.EPOCH_COMPLETED, tag="train", metric_names=["loss"])
        tb_logger.attach_output_handler(
            evaluator,
            Events.COMPLETED,
            tag="test",
            metric_names=["accuracy", "loss"],
            global_step_transform=global_step_from_engine(trainer, Events.EPOCH_COMPLETED),
        )
        tb_logger.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer, param_name="lr")
        # Attached after the handlers, so it logs what they measured at the same event.
        # On the same epoch axis as the test metrics (the default step is the trainer's iteration).
        by_epoch = global_step_from_engine(trainer, Events.EPOCH_COMPLETED)
        log_handler = il.LandscapeLogHandler(global_step_transform=by_epoch)
        tb_logger.attach(trainer, log_handler=log_handler, event_name=landscape_event)

    trainer.run(train_loader, max_epochs=config["epochs"])
    if tb_logger is not None:
        tb_logger.close()
        print(f"TensorBoard event files in {run_dir}; look with: tensorboard --logdir {run_dir.parent}")
        print(f"Figures and summary: python -m ignite_landscape report {run_dir} --out {run_dir / 'report'}")
    return {k: float(v) for k, v in trainer.state.metrics.items() if isinstance(v, (int, float))}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse ``argv`` and train; with ``--backend`` spawn ``--nproc-per-node`` processes through ``idist.Parallel``.

    Returns the trainer's final metrics in a single process (an empty dict when processes were spawned).
    """
    import ignite.distributed as idist

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)
    config = vars(args)
    if args.backend is None:
        return training(0, config)
    with idist.Parallel(backend=args.backend, nproc_per_node=args.nproc_per_node) as parallel:
        parallel.run(training, config)
    return {}


if __name__ == "__main__":
    main(sys.argv[1:])
