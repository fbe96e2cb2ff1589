"""A token tagger trained on padded sequences with ``CrossEntropyLoss(ignore_index=PAD)``.

The model returns ``(N, T, C)``; the trainer (``model_transform``) and the probe (``output_transform``)
both move the classes to dimension 1, as the loss wants. The probe's chunks hold very different
numbers of real tokens (sequences sorted by length), and its objective is still the one-batch loss.
"""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events, create_supervised_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ignite_landscape as il
from tests.trainers.harness import Job, assert_finite_history, dense_top, run_both

PAD, VOCAB, TAGS, T = -100, 7, 3, 6


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.mix = nn.Linear(4, 4)
        self.out = nn.Linear(4, TAGS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(self.embed(tokens))))


def padded_tokens(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    lengths = lengths.sort(stable=True).values  # length-bucketed order
    tokens = torch.randint(1, VOCAB, (n, T), generator=g)
    tags = torch.randint(0, TAGS, (n, T), generator=g)
    pad = torch.arange(T)[None, :] >= lengths[:, None]
    tokens[pad] = 0
    tags[pad] = PAD
    return TensorDataset(tokens, tags)


def classes_second(out: torch.Tensor) -> torch.Tensor:
    return out.transpose(1, 2)


def test_token_tagger_with_padding():
    data = padded_tokens()
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)

    def build(with_handlers: bool) -> Job:
        model = Tagger()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        loader = DataLoader(data, batch_size=8, shuffle=True)
        trainer = create_supervised_trainer(model, optimizer, loss_fn, model_transform=classes_second)
        job = Job(trainer, model, optimizer, loader)
        if with_handlers:
            # In length order, chunks of 7: the last ones hold many more real tokens than the first.
            ordered = (data.tensors[0], data.tensors[1])
            job.probe = il.Probe(ordered, loss_fn, batch_size=7, output_transform=classes_second)
            job.handlers = [il.HessianSpectrum(model, job.probe, k=2, tol=1e-6, optimizer=optimizer)]
            job.handlers[0].attach(trainer, Events.EPOCH_COMPLETED)
        return job

    job = run_both(build, epochs=2)
    assert_finite_history(job, firings=2)
    x, y = job.probe.inputs, job.probe.targets
    model = job.model.double()  # the exactness check in float64 (training is over)
    with torch.no_grad():
        logits = classes_second(model(x))
    evaluation = job.probe.evaluate(model)
    assert evaluation.loss == pytest.approx(float(loss_fn(logits, y)), rel=1e-10)
    keep = y != PAD
    assert evaluation.accuracy == pytest.approx(float((logits.argmax(1) == y)[keep].double().mean()), rel=1e-12)
    result = il.hessian_eigenvalues(model, job.probe, k=2, tol=1e-10)
    want = dense_top(model, x, y, loss_fn, transform=classes_second)
    torch.testing.assert_close(result.eigenvalues, want, rtol=1e-8, atol=0)
