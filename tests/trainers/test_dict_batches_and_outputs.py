"""Dict-shaped batches through the trainer's own ``prepare_batch``, and models returning a dict or an object.

The model's output, a dict or an object with ``.logits``, is read through ``output_transform`` (Ignite's
``model_transform`` in the trainer).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events, create_supervised_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

import ignite_landscape as il
from tests.trainers.harness import Job, assert_finite_history, run_both


class DictData(Dataset):
    def __init__(self, n: int = 30) -> None:
        g = torch.Generator().manual_seed(6)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "label": self.y[i]}


def prepare_batch(batch: dict, device=None, non_blocking: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["features"], batch["label"]


class DictModel(nn.Module):
    """Returns ``{"logits": ..., "hidden": ...}``, or an object with ``.logits`` (Hugging Face style)."""

    def __init__(self, as_object: bool) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)
        self.as_object = as_object

    def forward(self, x: torch.Tensor):
        hidden = torch.tanh(self.body(x))
        logits = self.head(hidden)
        return SimpleNamespace(logits=logits, hidden=hidden) if self.as_object else {"logits": logits, "hidden": hidden}


@pytest.mark.parametrize("as_object", [False, True], ids=["dict_output", "logits_attribute"])
def test_dict_batches_and_dict_outputs(as_object):
    data = DictData()
    logits_of = (lambda out: out.logits) if as_object else (lambda out: out["logits"])

    def build(with_handlers: bool) -> Job:
        model = DictModel(as_object)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = DataLoader(data, batch_size=6, shuffle=True)
        trainer = create_supervised_trainer(
            model, optimizer, F.cross_entropy, prepare_batch=prepare_batch, model_transform=logits_of
        )
        job = Job(trainer, model, optimizer, loader)
        if with_handlers:
            # An object with .logits needs no output_transform: the probe reads .logits by default.
            transform = None if as_object else logits_of
            job.probe = il.Probe(
                loader, F.cross_entropy, num_samples=12, prepare_batch=prepare_batch, output_transform=transform
            )
            job.handlers = [il.HessianSpectrum(model, job.probe, k=2), il.Sharpness(model, job.probe)]
            job.attach_handlers(Events.EPOCH_COMPLETED)
        return job

    job = run_both(build, epochs=2)
    assert_finite_history(job, firings=2)
    x, y = job.probe.inputs, job.probe.targets
    assert x.shape == (12, 4) and y.shape == (12,)
    with torch.no_grad():
        logits = logits_of(job.model(x))
    evaluation = job.probe.evaluate(job.model)
    assert evaluation.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert evaluation.accuracy == pytest.approx(float((logits.argmax(1) == y).double().mean()), abs=1e-12)
