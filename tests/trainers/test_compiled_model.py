"""A ``torch.compile``d model in Ignite's supervised trainer.

Compiled graphs have no double backward; the probe measures the original module (same parameter
objects) eagerly, so eigenvalues equal those of the uncompiled model. ``backend="aot_eager"`` runs
the same aot_autograd path as the default inductor backend without its C++ compile time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ignite.engine import Events, create_supervised_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ignite_landscape as il
from tests.trainers.harness import Job, assert_finite_history, dense_top, run_both


def test_compiled_model_trainer():
    g = torch.Generator().manual_seed(4)
    data = TensorDataset(torch.randn(32, 5, generator=g), torch.randint(0, 3, (32,), generator=g))

    def build(with_handlers: bool) -> Job:
        model = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 3))
        compiled = torch.compile(model, backend="aot_eager")
        optimizer = torch.optim.SGD(compiled.parameters(), lr=0.1)
        loader = DataLoader(data, batch_size=8, shuffle=True)
        trainer = create_supervised_trainer(compiled, optimizer, F.cross_entropy)
        job = Job(trainer, compiled, optimizer, loader, extra={"eager": model})
        if with_handlers:
            job.probe = il.Probe(loader, F.cross_entropy, num_samples=16)
            job.handlers = [
                il.HessianSpectrum(compiled, job.probe, k=2, tol=1e-6, optimizer=optimizer, warm_start=False),
                il.HessianTrace(compiled, job.probe, num_hvps=12),
                il.LossSlice(compiled, job.probe, dims=1, steps=5),
            ]
            job.attach_handlers(Events.EPOCH_COMPLETED)
        return job

    job = run_both(build, epochs=2)
    assert_finite_history(job, firings=2)
    want = dense_top(job.extra["eager"], job.probe.inputs, job.probe.targets)
    got = job.handlers[0].history[-1].result.eigenvalues.double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)
