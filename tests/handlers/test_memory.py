"""Bounded memory over long runs: no graph outlives its session, histories stay compact.

The probe caches its gradient graph between Hessian-vector products through saved-tensor hooks. A
hook that kept the saved tensor itself made a reference cycle inside autograd's C++ graph (a tensor
saved by its own backward node holds that node through its ``grad_fn``), so every cached graph, and
every partial graph of a cache attempt over ``max_graph_bytes``, outlived its session: ~10 MB per
firing on the digits CNN. These tests pin the fix down directly (weak references to what the hook
stored die with the session) and end to end (process RSS over hundreds of firings).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import pickle
import weakref

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

import ignite_landscape as il
from ignite_landscape import operators as operators_module
from tests.helpers import dense_hessian, later_instruments


class Residual(nn.Module):
    """Saved-tensor patterns that matter.

    Outputs saved by their own node (ReLU, softmax), in-place ReLU, an in-place residual add, BatchNorm.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x  # in place, then an in-place ReLU, as in torchvision's ResNet blocks
        out = self.relu(out)
        return self.fc(torch.softmax(out.flatten(1), dim=1))


def residual_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Residual().double()


def data(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture
def tracked(monkeypatch):
    """Weak references to every tensor the probe's saved-tensor hook stores."""
    refs: list[weakref.ref] = []
    original = operators_module._SavedBytes.pack

    def pack(self, t):
        packed = original(self, t)
        refs.append(weakref.ref(packed[0] if isinstance(packed, tuple) else packed))
        return packed

    monkeypatch.setattr(operators_module._SavedBytes, "pack", pack)
    return refs


@pytest.mark.parametrize("max_graph_bytes", [1 << 30, 4096], ids=["cached", "over-budget"])
def test_no_saved_tensor_outlives_the_session(tracked, max_graph_bytes):
    model = residual_model()
    x, y = data()
    probe = il.Probe((x, y), F.cross_entropy, batch_size=4, max_graph_bytes=max_graph_bytes)
    with probe.session(model) as s:
        v = torch.randn(s.space.numel, dtype=torch.float64)
        s.hvp(v)
        assert (s.cached_batches > 0) == (max_graph_bytes > 4096)
        assert tracked, "the cache attempt saved nothing: the test would prove nothing"
    del s
    gc.collect()
    alive = sum(r() is not None for r in tracked)
    assert alive == 0, f"{alive} of {len(tracked)} saved tensors outlived the session"


def test_cached_hvp_equals_the_dense_hessian_with_in_place_ops():
    model = residual_model()
    x, y = data()
    H = dense_hessian(model.eval(), x, y, F.cross_entropy)  # the probe's default model_mode="eval"
    probe = il.Probe((x, y), F.cross_entropy, batch_size=4)
    with probe.session(model) as s:
        v = torch.randn(s.space.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        first, second = s.hvp(v), s.hvp(v)
        assert s.cached_batches > 0
    torch.testing.assert_close(first, H @ v, rtol=1e-10, atol=1e-12)
    assert torch.equal(first, second)


def test_graph_over_the_limit_keeps_the_batches_that_fit(tracked):
    model = residual_model()
    x, y = data()
    H = dense_hessian(model.eval(), x, y, F.cross_entropy)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with il.Probe((x, y), F.cross_entropy, batch_size=4).session(model) as s:
        s.hvp(v)
        full = s.saved_graph_bytes
        assert s.cached_batches == 3
    del s
    gc.collect()
    tracked.clear()
    # One byte short of the whole graph: the first two of the three batches stay cached, the third is
    # recomputed at every HVP, and the product is still exact.
    with il.Probe((x, y), F.cross_entropy, batch_size=4, max_graph_bytes=full - 1).session(model) as s:
        first = s.hvp(v)
        assert s.cached_batches == 2 and s.saved_graph_bytes <= full - 1
        kept = sum(r() is not None for r in tracked)
        second = s.hvp(v)
        gc.collect()
        # The over-limit batch's graph died with the cache attempt; the recomputed one with its HVP.
        assert sum(r() is not None for r in tracked) == kept < len(tracked)
    torch.testing.assert_close(first, H @ v, rtol=1e-10, atol=1e-12)
    assert torch.equal(first, second)
    del s
    gc.collect()
    assert all(r() is None for r in tracked)


def test_in_place_change_of_a_saved_tensor_is_still_caught():
    # Autograd does not check saved-tensor versions when hooks pack them; the probe's hook does.
    counter = operators_module._SavedBytes(1 << 30)
    leaf = torch.randn(5, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        saved = (leaf * 3).exp()  # exp saves its output
        out = (saved * 2).sum()
    with torch.no_grad():
        saved.add_(1)
    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        torch.autograd.grad(out, leaf)


class Net(nn.Module):
    # Activations (4 × 10 × 10 per sample) outweigh one history record, so a leaked graph shows.
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 10 * 10, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(torch.softmax(self.fc1(h), dim=1))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _walk(obj, seen=None):
    """Every object reachable through the fields of result dataclasses, dicts, lists and tuples."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    yield obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        children = []
    for child in children:
        yield from _walk(child, seen)


WARMUP = 20


def _basic_handlers(model: nn.Module, probe: il.Probe, opt: torch.optim.Optimizer) -> list:
    return [
        il.HessianSpectrum(model, probe, k=1, max_iter=4, optimizer=opt, model_mode="eval"),
        il.HessianTrace(model, probe, num_hvps=6),
        il.HessianDensity(model, probe, num_steps=3, num_runs=1, grid_size=32),
        il.Sharpness(model, probe),
        il.LossSlice(model, probe, dims=1, steps=3),
        il.LossSlice(model, probe, dims=2, steps=3),
        il.ModeConnectivity(model, probe, steps=2),
        il.GradientNoiseScale(model, probe),
    ]


def _instrument_handlers(model: nn.Module, probe: il.Probe, opt: torch.optim.Optimizer) -> list:
    spectrum = il.HessianSpectrum(model, probe, k=2, max_iter=8, track_eigenspace=True)
    return [spectrum, *later_instruments(model, probe, opt, spectrum)]


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc/self/statm (Linux)")
# The instruments cost more a firing; 120 iterations still make 800 firings after the warm-up, where a leaked
# probe graph would show as tens of MB.
@pytest.mark.parametrize(
    ("build", "iterations"), [(_basic_handlers, 220), (_instrument_handlers, 120)], ids=["basic", "instruments"]
)
def test_every_handler_every_iteration_keeps_memory_flat(build, iterations):
    torch.manual_seed(0)
    model = Net()
    num_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 12, 12, generator=g), torch.randint(0, 3, (64,), generator=g)
    probe = il.Probe((x[:8], y[:8]), F.cross_entropy)  # the whole population: a finite noise scale
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    handlers = build(model, probe, opt)

    def step(engine, i):
        opt.zero_grad()
        loss = F.cross_entropy(model(x[:8]), y[:8])
        loss.backward()
        opt.step()

    trainer = Engine(step)
    for h in handlers:
        h.attach(trainer, Events.ITERATION_COMPLETED)
    marks: dict[int, tuple[int, dict[str, int]]] = {}

    @trainer.on(Events.ITERATION_COMPLETED(once=[WARMUP, iterations]))
    def mark(engine):
        gc.collect()
        marks[engine.state.iteration] = (_rss(), {h.name: len(pickle.dumps(h.history)) for h in handlers})

    trainer.run(range(iterations), max_epochs=1)

    growth = marks[iterations][0] - marks[WARMUP][0]
    # What the history legitimately adds (records of ~1 KB small tensors and scalar dicts): the RSS a
    # copy of the records made after the warm-up takes.
    before = _rss()
    copies = copy.deepcopy([h.history[WARMUP:] for h in handlers])
    history_bytes = _rss() - before
    del copies
    leak = growth - history_bytes
    firings = (iterations - WARMUP) * len(handlers)
    end, start = marks[iterations][1], marks[WARMUP][1]
    per_firing = {n: (end[n] - start[n]) / (iterations - WARMUP) for n in end}
    print(
        f"\n{firings} firings after the warm-up: RSS +{growth / 1e6:.2f} MB, of which the history records "
        f"{history_bytes / 1e6:.2f} MB, the rest {leak / 1e6:.2f} MB; pickled history bytes per firing: "
        + ", ".join(f"{n} {b:.0f}" for n, b in per_firing.items())
    )
    for h in handlers:  # the trajectory fits its plane once more, at COMPLETED
        assert len(h.history) == iterations + isinstance(h, il.TrajectoryPlane), h.name
        assert not any(f.failed for f in h.history), h.name
    # A leaked probe graph here is >= 60 kB per HVP firing (> 40 MB over either run).
    assert leak < 3e6, f"RSS grew by {leak / 1e6:.1f} MB beyond the history over {firings} firings"
    # Compact records: each below one float32 parameter-sized vector, nothing in them parameter-sized
    # or referencing the model.
    for name, size in per_firing.items():
        assert size < 4 * num_params, f"{name}: {size:.0f} bytes per firing"
    for h in handlers:
        for obj in _walk([f.result for f in h.history] + [f.scalars for f in h.history]):
            assert not isinstance(obj, (nn.Module, torch.optim.Optimizer, il.Probe)), h.name
            if isinstance(obj, torch.Tensor):
                assert obj.numel() < num_params // 4, f"{h.name}: a tensor of {obj.numel()} entries in the history"


def test_measure_warns_once_about_a_result_holding_a_parameter_sized_array(caplog):
    import logging

    from ignite_landscape.handlers.measure import Measure
    from ignite_landscape.results import Result

    @dataclasses.dataclass
    class Bulky(Result):
        value: float
        direction: torch.Tensor

        def scalars(self):
            return {"value": self.value}

    @dataclasses.dataclass
    class Compact(Result):
        value: float

        def scalars(self):
            return {"value": self.value}

    model = torch.nn.Linear(64, 32)  # 2,080 parameters
    probe = il.Probe((torch.randn(8, 64), torch.randn(8, 32)), torch.nn.functional.mse_loss)
    numel = sum(p.numel() for p in model.parameters())

    def bulky(model, probe, options):
        return Bulky(probe.evaluate(model).loss, torch.zeros(numel))

    def compact(model, probe, options):
        return Compact(probe.evaluate(model).loss)

    trainer = Engine(lambda engine, batch: None)
    handlers = [Measure(model, probe, bulky, None), Measure(model, probe, compact, None)]
    for h in handlers:
        h.attach(trainer, Events.ITERATION_COMPLETED)
    with caplog.at_level(logging.WARNING, logger="ignite_landscape.handlers.measure"):
        trainer.run([0, 1, 2], max_epochs=1)
    warned = [r.getMessage() for r in caplog.records if r.name == "ignite_landscape.handlers.measure"]
    assert len(warned) == 1 and "'bulky'" in warned[0] and "direction" in warned[0], warned
    assert [len(h.history) for h in handlers] == [3, 3]  # kept as returned: its curves may read any field


def test_bulky_fields_counts_numbers_through_containers():
    # A parameter-sized field need not be one tensor: a long list of floats or many small tensors grow a
    # history as much.
    class R:
        def __init__(self, n):
            self.value = 1.0
            self.curve = [0.5] * n
            self.pieces = {"a": [torch.zeros(n // 4)] * 4, "b": (1, 2)}
            self.points = [(float(i), float(i)) for i in range(n // 2)]
            self.small = [torch.zeros(3)] * 10
            self.label = "x" * (2 * n)  # a string is not a count of numbers

    from ignite_landscape.handlers.measure import bulky_fields

    assert bulky_fields(R(400), 400) == ["curve", "pieces", "points"]
    assert bulky_fields(R(400), 401) == ["pieces"]  # 400 + 2: the tuple's two ints count too
    assert bulky_fields(R(400), 10_000) == []
