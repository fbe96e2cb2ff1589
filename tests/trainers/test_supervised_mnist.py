"""Ignite's own MNIST example shape.

create_supervised_trainer, a shuffled DataLoader, an evaluator and a TensorboardLogger logging the training
loss every few iterations and the landscape every epoch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
from ignite.handlers import TensorboardLogger
from ignite.metrics import Accuracy, Loss
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ignite_landscape as il
from tests.trainers.harness import Job, assert_finite_history, dense_top, run_both


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2)
        self.fc = nn.Linear(3 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(F.relu(self.conv(x)).flatten(1)), dim=-1)


def mnist_like(n: int = 96) -> TensorDataset:
    g = torch.Generator().manual_seed(11)
    return TensorDataset(torch.randn(n, 1, 9, 9, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_supervised_mnist_trainer(tmp_path):
    data = mnist_like()
    logdir = tmp_path / "tb"

    def build(with_handlers: bool) -> Job:
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        loader = DataLoader(data, batch_size=16, shuffle=True)
        trainer = create_supervised_trainer(model, optimizer, F.nll_loss)
        evaluator = create_supervised_evaluator(model, metrics={"accuracy": Accuracy(), "nll": Loss(F.nll_loss)})
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(loader))
        job = Job(trainer, model, optimizer, loader)
        if with_handlers:
            job.probe = il.Probe(loader, F.nll_loss, num_samples=32)
            event = Events.EPOCH_COMPLETED | Events.COMPLETED
            job.handlers = [
                il.HessianSpectrum(model, job.probe, k=2, tol=1e-6, optimizer=optimizer, warm_start=False),
                il.Sharpness(model, job.probe, rho=0.05),
            ]
            job.attach_handlers(event)
            tb = TensorboardLogger(log_dir=str(logdir))
            tb.attach_output_handler(
                trainer,
                Events.ITERATION_COMPLETED(every=2),
                tag="training",
                output_transform=lambda loss: {"loss": loss},
            )
            tb.attach(trainer, log_handler=il.LandscapeLogHandler(figures=False, mesh=False), event_name=event)
            trainer.add_event_handler(Events.COMPLETED, lambda _: tb.close())
        return job

    job = run_both(build, epochs=2)
    assert_finite_history(job, firings=2)
    spectrum = job.handlers[0]
    # The last firing is at the final weights: the probe's λ₁ and loss against a dense float64 reference.
    x, y = job.probe.inputs, job.probe.targets
    want = dense_top(job.model, x, y, F.nll_loss)
    torch.testing.assert_close(spectrum.history[-1].result.eigenvalues.double(), want, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        want_loss = float(F.nll_loss(job.model(x), y))
    assert job.probe.evaluate(job.model).loss == pytest.approx(want_loss, rel=1e-6)
    # Logged at the trainer's iteration, on the same axis as the training loss (6 iterations per epoch).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir)).Reload()
    assert [e.step for e in acc.Scalars("landscape/hessian/lambda_1")] == [6, 12]
    assert [e.step for e in acc.Scalars("training/loss")] == [2, 4, 6, 8, 10, 12]
