"""A small ResNet with BatchNorm trained with SGD and momentum, the edge-of-stability set-up.

With ``optimizer=`` and BatchNorm, ``HessianSpectrum`` measures the train-mode objective (batch
statistics, what SGD follows) even though the probe is in eval mode, and records that it did. The
BatchNorm running statistics training accumulates stay bit-identical.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events, create_supervised_trainer
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import ignite_landscape as il
from tests.trainers.harness import Job, assert_finite_history, dense_hessian_of, run_both


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2), nn.ReLU())
        self.block = Block(2)
        self.fc = nn.Linear(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean((2, 3)))


def test_resnet_with_batchnorm_trainer(caplog):
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(torch.randn(40, 1, 5, 5, generator=g), torch.randint(0, 4, (40,), generator=g))

    def build(with_handlers: bool) -> Job:
        model = TinyResNet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        loader = DataLoader(data, batch_size=10, shuffle=True)
        trainer = create_supervised_trainer(model, optimizer, F.cross_entropy)
        job = Job(trainer, model, optimizer, loader)
        if with_handlers:
            job.probe = il.Probe(loader, F.cross_entropy, num_samples=20)  # batch_size 10, like training
            job.handlers = [
                il.HessianSpectrum(model, job.probe, k=2, tol=1e-6, optimizer=optimizer, warm_start=False),
                il.Sharpness(model, job.probe, rho=0.05),
            ]
            job.attach_handlers(Events.EPOCH_COMPLETED | Events.COMPLETED)
        return job

    with caplog.at_level("WARNING", logger="ignite_landscape.handlers.spectrum"):
        job = run_both(build, epochs=2)
    assert sum("model_mode='train'" in r.getMessage() for r in caplog.records) == 1
    assert_finite_history(job, firings=2)
    last = job.handlers[0].history[-1]
    assert last.scalars["train_mode"] == 1.0
    # The train-mode objective at the final weights, batch statistics per probe batch of 10 (float64 reference).
    x, y = job.probe.inputs, job.probe.targets
    model = job.model.double()
    probe64 = il.Probe((x.double(), y), F.cross_entropy, batch_size=10, model_mode="train")
    result = il.hessian_eigenvalues(model, probe64, k=2, tol=1e-10)

    # Dense reference: the mean of the two batches' losses, each with its own batch statistics.
    twin = model.train()
    names = [n for n, _ in twin.named_parameters()]
    buffers = {n: b.clone() for n, b in twin.named_buffers()}

    def objective(*ps: torch.Tensor) -> torch.Tensor:
        tensors = {**buffers, **dict(zip(names, ps))}
        losses = [
            F.cross_entropy(functional_call(twin, tensors, (x[i : i + 10].double(),)), y[i : i + 10]) for i in (0, 10)
        ]
        return (losses[0] + losses[1]) / 2

    want = torch.linalg.eigvalsh(dense_hessian_of(objective, [p for _, p in twin.named_parameters()])).flip(0)[:2]
    torch.testing.assert_close(result.eigenvalues, want, rtol=1e-8, atol=0)
    # The handler measured the same (float32) at its last firing, at these weights.
    assert last.result.eigenvalues[0].item() == pytest.approx(float(want[0]), rel=1e-4)
