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
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples import common  # noqa: E402

__all__ = [
    "ALL_HANDLERS",
    "VanillaCNN",
    "ResNet",
    "build_model",
    "parse_args",
    "training",
    "main",
]

logger = logging.getLogger("examples.cifar10")

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
ALL_HANDLERS = common.BASIC_HANDLERS


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
    common.add_common_flags(
        p,
        defaults={
            "epochs": 30,
            "batch_size": 128,
            "lr": 0.05,
            "momentum": 0.9,
            "every": 5,
            "probe_samples": 1024,
            "slice_steps": 11,
        },
        handlers=ALL_HANDLERS,
        run_name_help="subfolder of --output-dir (default cifar10-<model>-s<seed>)",
    )
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--max-hvps", type=int, default=None, help="cap on Hessian-vector products per Lanczos run")
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
    p.add_argument("--resume", type=Path, default=None, help="checkpoint file, or a folder: its latest checkpoint")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--backend", default=None, choices=(None, "gloo", "nccl"), help="DDP backend (ignite.distributed)")
    p.add_argument("--nproc-per-node", type=int, default=None, help="processes to spawn with --backend")
    args = common.check_args(p, p.parse_args(argv), handlers=ALL_HANDLERS, positive=("bn_samples",))
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
    from ignite.handlers import Checkpoint, DiskSaver, ProgressBar, global_step_from_engine
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
    # A bounded subset: the whole 50k set would be run through the model at each of the 11 points of
    # every connectivity firing (over 5 minutes per firing on the seed ResNet on a CPU).
    bn_set = torch.utils.data.Subset(probe_set, range(min(config["bn_samples"], len(probe_set))))
    bn_loader = (
        torch.utils.data.DataLoader(bn_set, batch_size=min(256, config["bn_samples"]), shuffle=False)
        if any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        else None
    )
    handlers = common.landscape_handlers(config["handlers"], model, probe, optimizer, config, bn_loader=bn_loader)
    landscape_event = Events.EPOCH_COMPLETED(every=config["every"]) | Events.COMPLETED
    for handler in handlers.values():
        handler.attach(trainer, event=landscape_event)

    common.evaluate_every_epoch(trainer, evaluator, test_loader, logger, record=True, verbose=rank == 0)

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
        tb_logger = common.tensorboard_logger(run_dir, trainer, evaluator, optimizer, landscape_event)
        tb_logger.attach_output_handler(
            trainer,
            Events.ITERATION_COMPLETED(every=50),
            tag="training",
            output_transform=lambda loss: {"batch_loss": loss},
        )

    trainer.run(train_loader, max_epochs=config["epochs"])
    if tb_logger is not None:
        tb_logger.close()
        print(common.next_steps(run_dir))
    return {k: float(v) for k, v in trainer.state.metrics.items() if isinstance(v, (int, float))}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse ``argv`` and train; with ``--backend`` spawn ``--nproc-per-node`` processes through ``idist.Parallel``.

    Returns the trainer's final metrics in a single process (an empty dict when processes were spawned).
    """
    import ignite.distributed as idist

    args = parse_args(argv)
    common.setup_logging()
    config = vars(args)
    if args.backend is None:
        return training(0, config)
    with idist.Parallel(backend=args.backend, nproc_per_node=args.nproc_per_node) as parallel:
        parallel.run(training, config)
    return {}


if __name__ == "__main__":
    main(sys.argv[1:])
