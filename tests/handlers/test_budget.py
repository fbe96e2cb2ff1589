"""The shared overhead budget, on a fake clock: which firings run and which are skipped, exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import TensorboardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ignite_landscape as il
from ignite_landscape.handlers.base import LandscapeHandler
from ignite_landscape.handlers.budget import COST_WINDOW


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Value:
    value: float

    def scalars(self) -> dict[str, float]:
        return {"value": self.value}


class Costly(LandscapeHandler):
    """A handler whose firing ``i`` (0-based, counting only firings that run) costs ``costs[i]`` fake seconds."""

    default_name = "costly"

    def __init__(self, model, probe, clock: FakeClock, costs, **kwargs) -> None:
        super().__init__(model, probe, **kwargs)
        self.clock = clock
        self.costs = list(costs)

    def compute(self, engine: Engine) -> Value:
        cost = self.costs[len(self.history)]
        self.clock.advance(cost)
        return Value(float(engine.state.iteration))

    def _history_copy(self, result: Value) -> float:
        return result.value  # checkpoints rebuild only the library's own result classes


@pytest.fixture
def setup():
    model = torch.nn.Linear(3, 2)
    probe = il.Probe((torch.randn(8, 3), torch.randint(0, 2, (8,))), F.cross_entropy)
    clock = FakeClock()
    trainer = Engine(lambda engine, batch: clock.advance(1.0))  # every training step takes one second
    return model, probe, clock, trainer


def ran(handler: LandscapeHandler) -> list[int]:
    return [f.iteration for f in handler.history]


def test_fake_clock_runs_exactly_when_the_expected_cost_fits(setup):
    model, probe, clock, trainer = setup
    h = Costly(model, probe, clock, [2.0] * 50)
    h.attach(trainer, Events.ITERATION_COMPLETED, budget=il.Budget(0.5, clock=clock))
    trainer.run(range(21), max_epochs=1)
    # After n training steps and k firings of 2 s each, the next firing runs iff 2k + 2 <= 0.5 n:
    # the first always runs (n = 1), then n >= 4(k + 1): 8, 12, 16, 20.
    assert ran(h) == [1, 8, 12, 16, 20]
    assert h.skipped == 21 - 5
    assert h.budget.landscape_seconds == pytest.approx(10.0)
    assert h.budget.training_seconds == pytest.approx(21.0)
    assert trainer.state.metrics["landscape/costly/skipped"] == 16.0


def test_completed_always_runs_even_at_a_skipped_moment(setup):
    model, probe, clock, trainer = setup
    h = Costly(model, probe, clock, [2.0] * 50)
    h.attach(trainer, Events.ITERATION_COMPLETED | Events.COMPLETED, budget=il.Budget(0.5, clock=clock))
    trainer.run(range(22), max_epochs=1)
    # Iteration 22 is skipped on ITERATION_COMPLETED (12 > 0.5 * 22 ... 2*5 + 2 = 12 > 11) and runs on COMPLETED.
    assert ran(h) == [1, 8, 12, 16, 20, 22]
    assert h.skipped == 22 - 6 + 1
    assert trainer.state.landscape_firings["costly"].skipped is False
    # The firing on COMPLETED ran after the budget's clock stopped: still landscape time, not training.
    assert h.budget.landscape_seconds == pytest.approx(12.0)
    assert h.budget.training_seconds == pytest.approx(22.0)


def test_expected_cost_is_the_median_of_the_latest_costs(setup):
    model, probe, clock, trainer = setup
    assert il.Budget.expected_cost([]) == 0.0
    assert il.Budget.expected_cost([3.0, 1.0, 100.0]) == 3.0
    assert il.Budget.expected_cost([50.0] + [1.0] * COST_WINDOW) == 1.0  # older than the window: forgotten
    # One slow firing (10 s) among 1 s ones does not make the handler skip as if every firing took 10 s.
    h = Costly(model, probe, clock, [1.0, 10.0] + [1.0] * 50)
    h.attach(trainer, Events.ITERATION_COMPLETED, budget=il.Budget(1.0, clock=clock))
    trainer.run(range(40), max_epochs=1)
    # Firing k runs when landscape + median <= training; hand-simulated:
    # it 1: runs (1 s); it 2: 1+1 <= 2 runs (10 s, landscape 11); then median(1, 10) = 5.5 until training >= 16.5
    # -> it 17 runs (landscape 12), median(1, 10, 1) = 1: it 18..: 13 <= 18 runs, and every step after.
    assert ran(h) == [1, 2] + list(range(17, 41))


def test_handlers_sharing_a_budget_compete_for_it(setup):
    model, probe, clock, trainer = setup
    budget = il.Budget(1.0, clock=clock)
    a = Costly(model, probe, clock, [1.0] * 50, name="a")
    b = Costly(model, probe, clock, [1.0] * 50, name="b")
    for h in (a, b):
        h.attach(trainer, Events.ITERATION_COMPLETED, budget=budget)
    trainer.run(range(10), max_epochs=1)
    # Both first firings run (landscape 2 after 1 training second); afterwards one firing fits per
    # training second, taken first by `a` (attached first) whenever both would fit: n >= k + 1.
    assert ran(a) == [1, 3, 5, 7, 9]
    assert ran(b) == [1, 4, 6, 8, 10]
    assert budget.landscape_seconds == pytest.approx(10.0)
    assert budget.landscape_seconds <= budget.fraction * budget.training_seconds


def test_an_expensive_handler_is_not_starved_by_a_cheap_one(setup):
    model, probe, clock, trainer = setup
    budget = il.Budget(1.0, clock=clock)
    cheap = Costly(model, probe, clock, [1.0] * 100, name="cheap")
    costly = Costly(model, probe, clock, [4.0] * 100, name="costly")
    for h in (cheap, costly):  # the cheap one is asked first at every event
        h.attach(trainer, Events.ITERATION_COMPLETED, budget=budget)
    trainer.run(range(60), max_epochs=1)
    # Hand-simulated start: both first firings run (landscape 5 after 1 s of training); the cheap one
    # next fits at 6 s; then it must leave room for the waiting expensive one (4 s), which runs at 10 s.
    assert ran(cheap)[:3] == [1, 6, 11] and ran(costly)[:2] == [1, 10]
    # Over the run they fire about equally often, within the budget.
    assert len(ran(costly)) >= 10 and abs(len(ran(cheap)) - len(ran(costly))) <= 1
    assert budget.landscape_seconds <= budget.fraction * budget.training_seconds


def test_a_skipped_firing_publishes_only_its_count(setup, tmp_path):
    model, probe, clock, trainer = setup
    h = Costly(model, probe, clock, [2.0] * 50)
    h.attach(trainer, Events.ITERATION_COMPLETED, budget=0.5)  # a float: a private budget
    assert isinstance(h.budget, il.Budget) and h.budget.fraction == 0.5
    h.budget.clock = clock
    tb = TensorboardLogger(log_dir=str(tmp_path))
    log_handler = il.LandscapeLogHandler(figures=False, mesh=False)
    tb.attach(trainer, log_handler=log_handler, event_name=Events.ITERATION_COMPLETED)
    seen = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def snapshot(engine):
        seen.append((engine.state.iteration, dict(engine.state.metrics), engine.state.landscape["costly"]))

    trainer.run(range(9), max_epochs=1)
    tb.close()
    assert ran(h) == [1, 8]
    for it, metrics, result in seen:
        if it in (1, 8):
            assert metrics["landscape/costly/value"] == float(it)
        else:  # the last result and its scalars stay those of the latest firing that ran
            latest = 1.0 if it < 8 else 8.0
            assert metrics["landscape/costly/value"] == latest and result.value == latest
            assert metrics["landscape/costly/skipped"] == float(it - 1 if it < 8 else it - 2)
    (event_file,) = Path(tmp_path).glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("landscape/costly/value")] == [1, 8]
    assert [e.step for e in acc.Scalars("landscape/costly/seconds")] == [1, 8]
    skipped = acc.Scalars("landscape/costly/skipped")
    assert [e.step for e in skipped] == [2, 3, 4, 5, 6, 7, 9]
    assert [e.value for e in skipped] == [float(i) for i in range(1, 8)]
    assert [t.step for t in acc.Tensors("landscape/summary/text_summary")] == [1, 8]


def test_budget_state_survives_checkpoint_and_resume(setup, tmp_path):
    model, probe, clock, trainer = setup
    h = Costly(model, probe, clock, [2.0] * 50)
    h.attach(trainer, Events.ITERATION_COMPLETED, budget=il.Budget(0.5, clock=clock))
    trainer.run(range(10), max_epochs=1)
    assert ran(h) == [1, 8]
    path = tmp_path / "state.pt"
    torch.save(h.state_dict(), path)
    state = torch.load(path, weights_only=True)

    # A new process: a new clock (an unrelated reading), a new trainer, the state loaded before attach.
    clock2 = FakeClock()
    clock2.advance(1000.0)
    trainer2 = Engine(lambda engine, batch: clock2.advance(1.0))
    h2 = Costly(model, probe, clock2, [2.0] * 50)
    h2.load_state_dict(state)
    budget2 = il.Budget(0.5, clock=clock2)
    h2.attach(trainer2, Events.ITERATION_COMPLETED, budget=budget2)
    assert h2.skipped == h.skipped == 8
    assert budget2.landscape_seconds == pytest.approx(4.0)
    assert budget2.training_seconds == pytest.approx(10.0)
    trainer2.run(range(10), max_epochs=1)
    # Training continues from 10 s: the third firing needs n >= 12, the fourth n >= 16, the fifth n >= 20
    # (iterations restart at 1 on this new trainer, at training seconds 11, 12, ...).
    assert ran(h2)[2:] == [2, 6, 10]
    assert h2.skipped == 8 + 7


def test_budget_arguments_are_checked(setup):
    model, probe, clock, trainer = setup
    for bad in (0, -0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="fraction"):
            il.Budget(bad)
    for bad in ("0.25", True, None):
        with pytest.raises(TypeError, match="fraction"):
            il.Budget(bad)
    with pytest.raises(TypeError, match="clock"):
        il.Budget(0.25, clock=3.0)
    h = Costly(model, probe, clock, [1.0])
    with pytest.raises(TypeError, match="budget"):
        h.attach(trainer, Events.ITERATION_COMPLETED, budget="0.25")
    with pytest.raises(ValueError, match="fraction"):
        h.attach(trainer, Events.ITERATION_COMPLETED, budget=0.0)
    with pytest.raises(ValueError, match="Budget state"):
        il.Budget(0.25).load_state_dict({"fraction": 0.25})


def test_readme_budget_snippet_runs(tmp_path):
    import re

    from ignite.engine import create_supervised_trainer

    from tests.helpers import digits_mlp, digits_train_loader

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "il.Budget(" in b]
    torch.manual_seed(0)
    loader = digits_train_loader(batch_size=64)
    model = digits_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_supervised_trainer(model, optimizer, F.cross_entropy)
    probe = il.Probe(loader, F.cross_entropy, num_samples=32)
    namespace = {"il": il, "Events": Events, "trainer": trainer, "model": model, "probe": probe}
    exec(compile(block.replace("every=200", "every=5"), "README budget", "exec"), namespace)
    trainer.run(loader, max_epochs=1)
    budget = namespace["budget"]
    assert budget.landscape_seconds > 0 and budget.training_seconds > 0
    handlers = [h for h in (trainer.state.landscape_firings or {})]
    assert sorted(handlers) == ["hessian", "sharpness", "trace"]
