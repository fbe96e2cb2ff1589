"""A Transformer encoder classifier (``nn.TransformerEncoder``) trained on CPU with Adam.

Training uses PyTorch's default attention kernel; the probe uses the math kernel, the only one on
CPU with a double backward, so Hessian eigenvalues are finite and equal the math-kernel reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ignite.engine import Events, create_supervised_trainer
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, TensorDataset

import ignite_landscape as il
from tests.helpers import TinyEncoder
from tests.trainers.harness import Job, assert_finite_history, dense_top, run_both


def test_transformer_encoder_trainer():
    g = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.randn(48, 5, 3, generator=g), torch.randint(0, 3, (48,), generator=g))

    def build(with_handlers: bool) -> Job:
        model = TinyEncoder(dropout=0.1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loader = DataLoader(data, batch_size=12, shuffle=True)
        trainer = create_supervised_trainer(model, optimizer, F.cross_entropy)
        job = Job(trainer, model, optimizer, loader)
        if with_handlers:
            job.probe = il.Probe(loader, F.cross_entropy, num_samples=24)  # eval mode: dropout off
            job.handlers = [
                il.HessianSpectrum(model, job.probe, k=2, tol=1e-6, optimizer=optimizer),
                il.HessianTrace(model, job.probe, num_hvps=12),
                il.Sharpness(model, job.probe),
            ]
            job.attach_handlers(Events.EPOCH_COMPLETED)
        return job

    job = run_both(build, epochs=2)
    assert_finite_history(job, firings=2)
    model = job.model.double()
    x, y = job.probe.inputs.double(), job.probe.targets
    result = il.hessian_eigenvalues(model, il.Probe((x, y), F.cross_entropy, batch_size=12), k=2, tol=1e-10)
    with sdpa_kernel(SDPBackend.MATH):
        want = dense_top(model, x, y)
    torch.testing.assert_close(result.eigenvalues, want, rtol=1e-8, atol=0)
    # The handler's last firing (float32, training's probe) was at these weights.
    last = job.handlers[0].history[-1].result.eigenvalues.double()
    torch.testing.assert_close(last, want, rtol=1e-4, atol=0)
