"""Fine-tuning shape: a frozen embedding, and an output layer tied to a trainable input projection.

Frozen parameters are left out of every measure; a tied parameter is one coordinate block, counted
once (its gradient collects both uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ignite.engine import Events, create_supervised_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ignite_landscape as il
from tests.trainers.harness import Job, assert_finite_history, dense_hessian_of, run_both

VOCAB, WIDTH = 6, 4


class TiedLM(nn.Module):
    """Next-token scores: frozen embedding, a projection, and an output layer sharing the projection's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.embed.weight.requires_grad_(False)
        self.proj = nn.Linear(WIDTH, VOCAB, bias=False)
        self.out = nn.Linear(WIDTH, VOCAB)
        self.out.weight = self.proj.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # A trainable input embedding (rows of the shared matrix) on top of the frozen one.
        h = torch.tanh(self.embed(tokens) + F.one_hot(tokens, VOCAB).float() @ self.proj.weight)
        return self.out(h)


def test_frozen_and_tied_weights():
    g = torch.Generator().manual_seed(9)
    data = TensorDataset(torch.randint(0, VOCAB, (36,), generator=g), torch.randint(0, VOCAB, (36,), generator=g))

    def build(with_handlers: bool) -> Job:
        model = TiedLM()
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2, momentum=0.9)
        loader = DataLoader(data, batch_size=6, shuffle=True)
        trainer = create_supervised_trainer(model, optimizer, F.cross_entropy)
        job = Job(trainer, model, optimizer, loader)
        if with_handlers:
            job.probe = il.Probe(loader, F.cross_entropy, num_samples=18)
            job.handlers = [
                il.HessianSpectrum(model, job.probe, k=2, tol=1e-6, optimizer=optimizer, warm_start=False),
                il.LossSlice(model, job.probe, dims=2, steps=3),
            ]
            job.attach_handlers(Events.EPOCH_COMPLETED)
        return job

    job = run_both(build, epochs=2)
    assert_finite_history(job, firings=2)
    result = job.handlers[0].history[-1].result
    assert result.space.names == ("proj.weight", "out.bias")  # embed frozen; out.weight is proj.weight
    assert result.space.numel == VOCAB * WIDTH + VOCAB
    # Reference written by hand as a function of the one shared matrix and the bias (float64).
    m = job.model
    tokens, targets = job.probe.inputs, job.probe.targets
    emb = m.embed.weight.detach().double()

    def loss(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(emb[tokens] + F.one_hot(tokens, VOCAB).double() @ w)
        return F.cross_entropy(h @ w.t() + b, targets)

    dense = dense_hessian_of(loss, [m.proj.weight.double(), m.out.bias.double()])
    want = torch.linalg.eigvalsh(dense).flip(0)[:2]
    torch.testing.assert_close(result.eigenvalues.double(), want, rtol=1e-4, atol=0)
