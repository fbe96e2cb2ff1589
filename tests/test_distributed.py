"""Two gloo processes (``idist.Parallel``) compute exactly what one process computes on the same probe.

Spawning a process group is slow, so each spawned run does many checks: the workers save what they
computed to files, and the tests compare them with single-process results computed here.
"""

from __future__ import annotations

import datetime
import math
import socket
import warnings
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ignite_landscape import distributed
from ignite_landscape.measures import (
    gradient_noise_scale,
    gradient_statistics,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    interpolate,
    loss_slice,
    random_directions,
    sharpness,
)
from ignite_landscape.params import unwrap_model
from ignite_landscape.probe import Probe
from tests.helpers import classification_data, mlp, small_cnn

WORLD = 2
N = 50  # probe samples: shards of 25, uneven batches of 8
TIMEOUT = datetime.timedelta(seconds=60)  # a rank stuck in a collective fails instead of hanging the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> None:
    with idist.Parallel(backend="gloo", nproc_per_node=WORLD, master_port=_free_port(), timeout=TIMEOUT) as parallel:
        parallel.run(fn, *args)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    return classification_data(N, (5,), seed=3)


class FailOnRank:
    """A cross-entropy that raises on one rank only (a local failure, e.g. out of memory)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if idist.get_rank() == self.rank:
            raise RuntimeError("simulated failure on this rank")
        return F.cross_entropy(y_pred, y)


def _measure(model: nn.Module, probe: Probe) -> dict[str, object]:
    """Everything compared between one and two processes (same code on both sides)."""
    out: dict[str, object] = {}
    with probe.session(model) as s:
        ev = s.evaluate()
        out["loss"], out["accuracy"] = ev.loss, ev.accuracy
        out["grad"] = s.grad()
        out["hvp"] = s.hvp(torch.linspace(-1, 1, s.space.numel, dtype=s.dtype))
    out["eigenvalues"] = hessian_eigenvalues(model, probe, k=3, tol=1e-9).eigenvalues
    out["trace"] = hessian_trace(model, probe, num_hvps=24, seed=5).value
    out["trace_hutchinson"] = hessian_trace(model, probe, method="hutchinson", num_hvps=8, seed=5).value
    out["sam"] = sharpness(model, probe, rho=0.1).value
    out["ascent"] = sharpness(model, probe, rho=0.1, method="ascent", steps=4).value
    out["slice"] = loss_slice(model, probe, random_directions(model, 1, seed=2), steps=5).loss
    out["slice_batched"] = loss_slice(model, probe, random_directions(model, 1, seed=2), steps=5, batch_points=5).loss
    out["density_nodes"] = hessian_density(model, probe, num_steps=6, num_runs=2, seed=1).nodes
    noise = gradient_noise_scale(model, probe)
    out["noise"] = (noise.trace_sigma, noise.grad_norm_sq)
    stats = gradient_statistics(model, probe, chunk_size=4)
    out["gradstats"] = (stats.fisher_trace, stats.gsnr, stats.trace_sigma, stats.sample_norms)
    out["interpolation"] = interpolate(model, unwrap_model(model).state_dict(), mlp(seed=1), probe, steps=3).loss
    return out


def _probe_checks() -> dict[str, object]:
    r = idist.get_rank()
    x, y = _data()
    results: dict[str, object] = {"world": distributed.world_size(), "rank": distributed.rank()}

    # The same global probe on every rank; the model wrapped in DDP (probed through .module).
    model = mlp(seed=0)
    ddp = nn.parallel.DistributedDataParallel(model)
    probe = Probe((x, y), F.cross_entropy, batch_size=8)
    results["shard"] = probe.layout()
    results["same"] = _measure(ddp, probe)

    # Each rank its own data (as with a DistributedSampler): the probe is the union of their shares.
    half = N // WORLD
    own = Probe((x[r * half : (r + 1) * half], y[r * half : (r + 1) * half]), F.cross_entropy, batch_size=8)
    with own.session(model) as s:
        results["own"] = {"layout": own.layout(), "loss_and_grad": s.loss_and_grad(), "num_samples": own.num_samples}

    # model_mode="train" with dropout and BatchNorm: shards are whole batches, masks follow global indices.
    cnn = small_cnn(seed=1, dropout=0.3)
    xc, yc = classification_data(30, (1, 6, 6), seed=4)
    train_probe = Probe((xc, yc), F.cross_entropy, batch_size=8, model_mode="train", seed=7)
    with train_probe.session(cnn) as s:
        results["train"] = {
            "layout": train_probe.layout(),
            "loss_and_grad": s.loss_and_grad(),
            "hvp": s.hvp(torch.ones(s.space.numel, dtype=s.dtype)),
        }
    results["train"]["slice"] = loss_slice(cnn, train_probe, random_directions(cnn, 1, seed=2), steps=3).loss

    # BatchNorm recalibration with each rank reading its own batches (as with a DistributedSampler):
    # the statistics are those of both ranks' batches together. Rank 1 has one batch fewer.
    bn_x, bn_y = classification_data(40, (1, 6, 6), seed=5)
    bn_batches = [(bn_x[i : i + 8], bn_y[i : i + 8]) for i in range(0, 40, 8)]
    results["bn_shared"] = interpolate(
        small_cnn(seed=2),
        small_cnn(seed=3),
        small_cnn(seed=4),
        Probe((xc, yc), F.cross_entropy),
        steps=3,
        bn_loader=bn_batches[r::2],
    ).loss

    # NaN in one sample of rank 1's shard: every rank records NaN and carries on in step.
    xn = x.clone()
    xn[N - 3] = math.nan
    nan_probe = Probe((xn, y), F.cross_entropy, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        results["nan"] = {
            "loss": nan_probe.evaluate(model).loss,
            "eigenvalues": hessian_eigenvalues(model, nan_probe, k=2).eigenvalues,
            "sam": sharpness(model, nan_probe, rho=0.1).value,
            "slice": loss_slice(model, nan_probe, random_directions(model, 1, seed=2), steps=3).loss,
        }
        try:
            results["nan"]["trace"] = hessian_trace(model, nan_probe, num_hvps=6).value
        except Exception as e:  # a failure is fine if every rank fails alike
            results["nan"]["trace"] = type(e).__name__

    # An exception on rank 1 alone: every rank raises, none waits forever, and the group stays usable.
    failing = Probe((x, y), FailOnRank(1), batch_size=8)
    errors = {}
    for name, fn in {
        "evaluate": lambda: failing.evaluate(model),
        "eigenvalues": lambda: hessian_eigenvalues(model, failing, k=2),
        "sharpness": lambda: sharpness(model, failing),
    }.items():
        try:
            fn()
            errors[name] = None
        except Exception as e:
            errors[name] = type(e).__name__
    results["errors"] = errors
    results["after_errors"] = probe.evaluate(model).loss

    # Probing between DDP steps leaves training, and the ranks, in step with an unprobed twin.
    twin = nn.parallel.DistributedDataParallel(mlp(seed=0))
    opt_a = torch.optim.SGD(ddp.parameters(), lr=0.5, momentum=0.9)
    opt_b = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9)
    xs, ys = x[r * half : (r + 1) * half], y[r * half : (r + 1) * half]
    for step in range(3):
        for net, opt in ((ddp, opt_a), (twin, opt_b)):
            opt.zero_grad()
            F.cross_entropy(net(xs[step * 8 : step * 8 + 8]), ys[step * 8 : step * 8 + 8]).backward()
            opt.step()
        hessian_eigenvalues(ddp, probe, k=1, max_iter=5)
        sharpness(ddp, probe)
    results["trained"] = [p.detach().clone() for p in ddp.parameters()]
    results["twin"] = [p.detach().clone() for p in twin.parameters()]
    return results


def _train_run(with_handlers: bool, log_dir: str | None) -> dict[str, object]:
    """Three epochs of DDP training of a float64 MLP, each rank on its own half of the data."""
    from ignite.engine import Events, create_supervised_trainer
    from ignite.handlers import TensorboardLogger

    import ignite_landscape as il

    r = idist.get_rank()
    x, y = classification_data(64, (5,), seed=6)
    torch.manual_seed(100 + r)  # the shuffling draws from the global RNG, which the handlers must not touch
    model = nn.parallel.DistributedDataParallel(mlp(seed=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    trainer = create_supervised_trainer(model, optimizer, F.cross_entropy)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: losses.append(engine.state.output))
    tb_logger = None
    if with_handlers:
        probe = il.Probe((x, y), F.cross_entropy, batch_size=16)
        for handler in (
            il.HessianSpectrum(model, probe, k=2),
            il.HessianTrace(model, probe, num_hvps=9),
            il.Sharpness(model, probe),
            il.LossSlice(model, probe, dims=1, steps=5),
        ):
            handler.attach(trainer, Events.EPOCH_COMPLETED)
        if r == 0:  # Ignite's pattern: only rank 0 logs (the log handler must need no other rank)
            tb_logger = TensorboardLogger(log_dir=log_dir)
            tb_logger.attach(trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED)
    half = x[r * 32 : (r + 1) * 32], y[r * 32 : (r + 1) * 32]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*half), batch_size=8, shuffle=True)
    trainer.run(loader, max_epochs=3)
    if tb_logger is not None:
        tb_logger.close()
    metrics = {k: v for k, v in trainer.state.metrics.items() if k.startswith("landscape/") and "seconds" not in k}
    return {"params": [p.detach().clone() for p in model.parameters()], "losses": losses, "metrics": metrics}


def _worker(local_rank: int, out_dir: str, train: bool) -> None:
    """Everything the two ranks compute, in one spawn (starting a process group takes seconds)."""
    torch.set_num_threads(1)  # two processes on as few as two cores
    results = _probe_checks()
    if train:
        log_dir = str(Path(out_dir) / "tb")
        results["training"] = {"with": _train_run(True, log_dir), "without": _train_run(False, None)}
    torch.save(results, Path(out_dir) / f"rank{idist.get_rank()}.pt")


def _has_log_handler() -> bool:
    import ignite_landscape

    return hasattr(ignite_landscape, "LandscapeLogHandler")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("dist")
    _spawn(_worker, str(out), _has_log_handler())
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)], out / "tb"


@pytest.fixture(scope="module")
def probe_runs(runs: tuple[list[dict], Path]) -> list[dict]:
    return runs[0]


def _assert_close(a: object, b: object, rtol: float = 1e-5, what: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            _assert_close(a[key], b[key], rtol, f"{what}/{key}")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), what
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_close(u, v, rtol, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=rtol * b.abs().max().item(), msg=what)
    else:
        assert a == pytest.approx(b, rel=rtol), what


def _assert_identical(a: object, b: object, what: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a.keys() - {"layout"}:  # the shards differ by design; what they compute must not
            _assert_identical(a[key], b[key], f"{what}/{key}")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), what
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_identical(u, v, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b) or (torch.isnan(a).all() and torch.isnan(b).all()), what
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), what
    else:
        assert a == b, what


def test_ranks_shard_the_probe_disjointly(probe_runs: list[dict]) -> None:
    assert [(run["world"], run["rank"]) for run in probe_runs] == [(2, 0), (2, 1)]
    assert [run["shard"] for run in probe_runs] == [(0, 25, 50, 0), (25, 50, 50, 0)]
    # Ranks holding different samples each take their share of their own.
    assert [run["own"]["layout"] for run in probe_runs] == [(0, 13, 25, 0), (0, 12, 25, 0)]
    # Train mode: whole batches of 8 (4 batches: 0, 1 | 2, 3) and their global indices.
    assert [run["train"]["layout"] for run in probe_runs] == [(0, 16, 30, 0), (16, 30, 30, 2)]
    assert distributed.shard_bounds(5, world=3, index=2) == (4, 5)
    assert distributed.shard_bounds(2, world=3, index=2) == (2, 2)  # more ranks than samples: an empty shard


def test_two_processes_equal_one_process_on_the_same_probe(probe_runs: list[dict]) -> None:
    x, y = _data()
    model = mlp(seed=0)
    single = _measure(model, Probe((x, y), F.cross_entropy, batch_size=8))
    for run in probe_runs:
        _assert_close(run["same"], single, what="same")
    assert single["eigenvalues"][0] > 0 and single["sam"] > 0  # nothing trivially zero


def test_per_rank_data_is_the_union_of_shares(probe_runs: list[dict]) -> None:
    x, y = _data()
    union = torch.cat([torch.arange(0, 13), torch.arange(25, 37)])
    with Probe((x[union], y[union]), F.cross_entropy, batch_size=8).session(mlp(seed=0)) as s:
        loss, grad = s.loss_and_grad()
    for run in probe_runs:
        assert run["own"]["num_samples"] == 25
        _assert_close(run["own"]["loss_and_grad"], (loss, grad))


def test_train_mode_equals_one_process_batch_for_batch(probe_runs: list[dict]) -> None:
    xc, yc = classification_data(30, (1, 6, 6), seed=4)
    cnn = small_cnn(seed=1, dropout=0.3)
    probe = Probe((xc, yc), F.cross_entropy, batch_size=8, model_mode="train", seed=7)
    with probe.session(cnn) as s:
        single = {"loss_and_grad": s.loss_and_grad(), "hvp": s.hvp(torch.ones(s.space.numel, dtype=s.dtype))}
    single["slice"] = loss_slice(cnn, probe, random_directions(cnn, 1, seed=2), steps=3).loss
    for run in probe_runs:
        _assert_close({k: run["train"][k] for k in single}, single)


def test_bn_recalibration_with_per_rank_batches_uses_every_ranks_batches(probe_runs: list[dict]) -> None:
    xc, yc = classification_data(30, (1, 6, 6), seed=4)
    probe = Probe((xc, yc), F.cross_entropy)
    bn_x, bn_y = classification_data(40, (1, 6, 6), seed=5)
    bn_batches = [(bn_x[i : i + 8], bn_y[i : i + 8]) for i in range(0, 40, 8)]
    single = interpolate(small_cnn(seed=2), small_cnn(seed=3), small_cnn(seed=4), probe, steps=3, bn_loader=bn_batches)
    rank0_only = interpolate(
        small_cnn(seed=2), small_cnn(seed=3), small_cnn(seed=4), probe, steps=3, bn_loader=bn_batches[0::2]
    )
    for run in probe_runs:
        torch.testing.assert_close(run["bn_shared"], single.loss, rtol=1e-9, atol=1e-12)
    assert (rank0_only.loss - single.loss).abs().max() > 1e-4  # one rank's batches alone would differ


def test_all_ranks_hold_identical_results(probe_runs: list[dict]) -> None:
    first, second = probe_runs
    for key in ("same", "own", "train", "nan", "after_errors"):
        _assert_identical(first[key], second[key], key)


def test_nan_on_one_rank_is_recorded_by_all(probe_runs: list[dict]) -> None:
    for run in probe_runs:
        nan = run["nan"]
        assert math.isnan(nan["loss"]) and math.isnan(nan["sam"])
        assert torch.isnan(nan["eigenvalues"]).all() and torch.isnan(nan["slice"]).all()
        assert isinstance(nan["trace"], str) or math.isnan(nan["trace"])


def test_failure_on_one_rank_raises_on_every_rank(probe_runs: list[dict]) -> None:
    first, second = probe_runs
    assert set(first["errors"].values()) == {"RankFailure"}
    assert set(second["errors"].values()) == {"RuntimeError"}
    assert first["after_errors"] == first["same"]["loss"]


def test_probing_ddp_between_steps_keeps_training_in_step(probe_runs: list[dict]) -> None:
    first, second = probe_runs
    for run in probe_runs:
        for a, b in zip(run["trained"], run["twin"]):
            assert torch.equal(a, b)
    for a, b in zip(first["trained"], second["trained"]):
        assert torch.equal(a, b)
    assert not torch.equal(first["trained"][0], mlp(seed=0)[0].weight)  # it did train


def test_single_process_helpers_are_identities() -> None:
    t = torch.arange(3.0)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.all_reduce(t) is t and distributed.all_agree(False) is False
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.shard_bounds(7) == (0, 7)
    with pytest.raises(KeyError):  # no holding back in one process: the error surfaces at once
        with distributed.Lockstep():
            raise KeyError("x")


@pytest.fixture(scope="module")
def train_runs(runs: tuple[list[dict], Path]) -> tuple[list[dict], Path]:
    if "training" not in runs[0][0]:
        pytest.skip("ignite_landscape.LandscapeLogHandler is not there yet")
    return [run["training"] for run in runs[0]], runs[1]


def test_training_with_handlers_is_bit_identical_to_training_without(train_runs: tuple[list[dict], Path]) -> None:
    runs, _ = train_runs
    for run in runs:
        assert run["with"]["losses"] == run["without"]["losses"] and len(run["with"]["losses"]) == 12
        for a, b in zip(run["with"]["params"], run["without"]["params"]):
            assert torch.equal(a, b)
    assert not run["without"]["metrics"]


def test_training_run_ranks_hold_the_same_exact_landscape(train_runs: tuple[list[dict], Path]) -> None:
    runs, _ = train_runs
    first, second = (run["with"]["metrics"] for run in runs)
    assert first == second
    for key in ("hessian/lambda_max", "hessian/lambda_2", "trace/value", "sharpness/value", "slice1d/center_loss"):
        assert math.isfinite(first[f"landscape/{key}"]), key
    # The last firing measured the final weights: one process on the whole probe agrees.
    model = mlp(seed=0)
    with torch.no_grad():
        for p, q in zip(model.parameters(), runs[0]["with"]["params"]):
            p.copy_(q)
    probe = Probe(classification_data(64, (5,), seed=6), F.cross_entropy, batch_size=16)
    lam = hessian_eigenvalues(model, probe, k=2).eigenvalues
    assert first["landscape/hessian/lambda_max"] == pytest.approx(float(lam[0]), rel=1e-5)
    assert first["landscape/hessian/lambda_2"] == pytest.approx(float(lam[1]), rel=1e-3)  # Lanczos tolerance
    assert first["landscape/sharpness/value"] == pytest.approx(sharpness(model, probe).value, rel=1e-5)
    assert first["landscape/slice1d/center_loss"] == pytest.approx(probe.evaluate(model).loss, rel=1e-5)


def test_only_rank_zero_writes_one_event_file_with_the_landscape_tags(train_runs: tuple[list[dict], Path]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, log_dir = train_runs
    files = list(log_dir.rglob("events.out.tfevents*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("landscape/hessian/lambda_max", "landscape/trace/value", "landscape/sharpness/value"):
        assert tag in tags, sorted(tags)
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps in ([1, 2, 3], [4, 8, 12]), steps  # one value per epoch (epoch or iteration as the step)
