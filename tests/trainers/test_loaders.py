"""Loaders whose order comes from random state.

``generator=`` with ``shuffle=True`` (PyTorch's reproducibility recipe), a plain ``shuffle=True`` (torch's
global RNG), a sampler with its own generator, and a ``DistributedSampler`` (one process).

The probe is built from the training loader itself; it must not draw from any of that random state,
so the batches training sees, and everything after, stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events, create_supervised_trainer
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import ignite_landscape as il
from tests.trainers.harness import Job, assert_finite_history, run_both


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(10)
    return TensorDataset(torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g))


def with_generator(ds: TensorDataset) -> DataLoader:
    return DataLoader(ds, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(1))


def global_rng_shuffle(ds: TensorDataset) -> DataLoader:
    return DataLoader(ds, batch_size=5, shuffle=True)  # the order comes from torch's global RNG


def sampler_generator(ds: TensorDataset) -> DataLoader:
    return DataLoader(ds, batch_size=5, sampler=RandomSampler(ds, generator=torch.Generator().manual_seed(2)))


def distributed_sampler(ds: TensorDataset) -> DataLoader:
    # num_replicas/rank given: no process group needed; the order depends on seed and set_epoch only.
    return DataLoader(ds, batch_size=5, sampler=DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3))


@pytest.mark.parametrize(
    "make_loader",
    [with_generator, global_rng_shuffle, sampler_generator, distributed_sampler],
    ids=["generator_shuffle", "global_rng_shuffle", "sampler_generator", "distributed_sampler"],
)
def test_loader_random_state_is_untouched(make_loader: Callable[[TensorDataset], DataLoader]):
    data = dataset()
    seen: dict[bool, list[list[int]]] = {}

    def build(with_handlers: bool) -> Job:
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = make_loader(data)
        trainer = create_supervised_trainer(model, optimizer, F.cross_entropy)
        sampler = loader.sampler
        if isinstance(sampler, DistributedSampler):
            trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: sampler.set_epoch(e.state.epoch))
        order = seen.setdefault(with_handlers, [])
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: order.append(e.state.batch[1].tolist()))
        job = Job(trainer, model, optimizer, loader)
        if with_handlers:
            job.probe = il.Probe(loader, F.cross_entropy, num_samples=10)
            job.handlers = [il.HessianSpectrum(model, job.probe, k=2), il.Sharpness(model, job.probe)]
            job.attach_handlers(Events.EPOCH_COMPLETED)
        return job

    job = run_both(build, epochs=2)
    assert_finite_history(job, firings=2)
    assert seen[True] == seen[False]  # the same batches in the same order
    if isinstance(job.data.sampler, DistributedSampler):
        assert job.data.sampler.epoch == 2  # only training's set_epoch moved it
    # The probe kept the first 10 samples of one pass over the loader, fixed from then on.
    x, y = job.probe.inputs, job.probe.targets
    rows = {tuple(r.tolist()) for r in data.tensors[0]}
    assert y.shape == (10,) and all(tuple(r.tolist()) in rows for r in x)
    with torch.no_grad():
        want = float(F.cross_entropy(job.model(x), y))
    assert job.probe.evaluate(job.model).loss == pytest.approx(want, rel=1e-6)
