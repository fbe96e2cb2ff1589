"""Gradient accumulation under bf16 autocast, with handlers firing between accumulation steps.

The whole run sits inside ``torch.autocast("cpu", dtype=torch.bfloat16)``, so the handlers fire inside
it too, while ``.grad`` holds a partial sum. Training stays bit-identical (accumulated gradients
included), and the probe measures the float32 function: its numbers equal those computed outside
autocast exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ignite_landscape as il
from tests.trainers.harness import Job, assert_finite_history, run_both

ACCUMULATE = 4


def test_gradient_accumulation_with_bf16_autocast():
    g = torch.Generator().manual_seed(8)
    data = TensorDataset(torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g))

    def build(with_handlers: bool) -> Job:
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = DataLoader(data, batch_size=4, shuffle=True)

        def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
            model.train()
            x, y = batch
            loss = F.cross_entropy(model(x), y) / ACCUMULATE
            loss.backward()
            if engine.state.iteration % ACCUMULATE == 0:
                optimizer.step()
                optimizer.zero_grad()
            return loss.item()

        trainer = Engine(step)
        job = Job(trainer, model, optimizer, loader)
        if with_handlers:
            job.probe = il.Probe(loader, F.cross_entropy, num_samples=16)
            job.handlers = [
                il.HessianSpectrum(model, job.probe, k=2, tol=1e-6, optimizer=optimizer, warm_start=False),
                il.Sharpness(model, job.probe),
            ]
            # Every 3rd iteration: mostly between accumulation steps, with .grad partly summed.
            job.attach_handlers(Events.ITERATION_COMPLETED(every=3) | Events.COMPLETED)
        return job

    with torch.autocast("cpu", dtype=torch.bfloat16):
        job = run_both(build, epochs=2)
        assert torch.is_autocast_enabled("cpu")
    assert_finite_history(job, firings=7)  # iterations 3, 6, ..., 18 and COMPLETED at 20
    spectrum, sharpness = job.handlers
    assert [f.iteration for f in spectrum.history] == [3, 6, 9, 12, 15, 18, 20]
    # The last firing was at the final weights, under autocast: the same numbers as outside it, bit for bit.
    outside = il.hessian_eigenvalues(job.model, job.probe, k=2, tol=1e-6)
    assert torch.equal(spectrum.history[-1].result.eigenvalues, outside.eigenvalues)
    assert sharpness.history[-1].scalars["value"] == il.sharpness(job.model, job.probe).value
