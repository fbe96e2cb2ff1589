r"""One process of the two-node run of tests/test_multinode.py, launched by ``torchrun`` (not a test module).

Each node trains a float64 MLP with DDP on its own half of the data for a few epochs while landscape
handlers fire every epoch on one global probe (sharded across the nodes), rank 0 logging to TensorBoard.
It saves, per rank, the weights at every firing and every handler's scalars, so the test can replay the
same weights through the same handlers in a single process and compare.

Usage (what the test runs, once per node):
    torchrun --nnodes=2 --nproc-per-node=1 --node-rank=R --master-addr=127.0.0.1 --master-port=P \\
        tests/multinode_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ignite.distributed as idist  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

EPOCHS = 3


def make_handlers(model: nn.Module, probe):  # noqa: ANN001, ANN201 - shared with the test
    """The handlers both sides run, with tolerances tight enough that 1e-5 agreement is meaningful."""
    import ignite_landscape as il

    return [
        il.HessianSpectrum(model, probe, k=2, tol=1e-10),
        il.HessianTrace(model, probe, num_hvps=12),
        il.Sharpness(model, probe),
        il.LossSlice(model, probe, dims=1, steps=5),
        il.GradientNoiseScale(model, probe),
    ]


def data() -> tuple[torch.Tensor, torch.Tensor]:
    from tests.helpers import classification_data

    return classification_data(64, (5,), seed=6)


def run(local_rank: int, out_dir: str) -> None:
    from ignite.engine import Events, create_supervised_trainer
    from ignite.handlers import TensorboardLogger

    import ignite_landscape as il
    from tests.helpers import mlp

    torch.set_num_threads(1)
    rank, world = idist.get_rank(), idist.get_world_size()
    x, y = data()
    model = nn.parallel.DistributedDataParallel(mlp(seed=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    trainer = create_supervised_trainer(model, optimizer, F.cross_entropy)
    probe = il.Probe((x, y), F.cross_entropy, batch_size=16)
    handlers = make_handlers(model, probe)
    for h in handlers:
        h.attach(trainer, Events.EPOCH_COMPLETED)
    weights: list[list[torch.Tensor]] = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda _: weights.append([p.detach().clone() for p in model.module.parameters()])
    )
    tb_logger = None
    if rank == 0:
        tb_logger = TensorboardLogger(log_dir=str(Path(out_dir) / "tb"))
        tb_logger.attach(trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
    share = len(x) // world
    part = torch.utils.data.TensorDataset(x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share])
    trainer.run(torch.utils.data.DataLoader(part, batch_size=8), max_epochs=EPOCHS)
    if tb_logger is not None:
        tb_logger.close()
    result = {
        "world": world,
        "rank": rank,
        "backend": idist.backend(),
        "weights": weights,
        "scalars": {h.name: [dict(f.scalars) for f in h.history] for h in handlers},
        "errors": {h.name: [f.error for f in h.history if f.failed] for h in handlers},
    }
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    with idist.Parallel(backend="gloo") as parallel:  # world, rank and rendezvous from torchrun's environment
        parallel.run(run, sys.argv[1])
