"""Trajectory plane: projections by hand, the final point at the origin, resume, bit-identical training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver, TensorboardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

import ignite_landscape as il
from ignite_landscape import plots, report
from ignite_landscape.handlers.base import to_plain
from tests.handlers.test_handlers import Run, assert_same_state
from tests.helpers import assert_same_tree, classification_data, full_batch_trainer, mlp


def sgd_path(model, x, y, steps: int, lr: float = 0.3) -> list[dict[str, torch.Tensor]]:
    """Weights before and after each of ``steps`` full-batch SGD steps (the model ends at the last one)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    path = [{n: p.detach().clone() for n, p in model.named_parameters()}]
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        path.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return path


def trained_path(n: int, steps: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, list, list[str], il.Probe]:
    """An MLP after ``steps`` SGD steps on ``n`` samples ``(x, y)``, its path, parameter names and a probe."""
    model = mlp()
    x, y = classification_data(n, (5,))
    path = sgd_path(model, x, y, steps)
    return model, x, y, path, [name for name, _ in model.named_parameters()], il.Probe((x, y), F.cross_entropy)


def flat(w: dict[str, torch.Tensor], names) -> torch.Tensor:
    return torch.cat([w[n].reshape(-1).double() for n in names])


def test_projection_explained_variance_and_slice_by_hand():
    model, x, y, path, names, probe = trained_path(40, 8)
    res = il.trajectory_plane(model, probe, path, steps=7, margin=0.5, iterations=list(range(9)))

    # By hand: PCA of the centred path with numpy's SVD, projections of w_i − θ (θ = the final weights).
    theta = flat(path[-1], names)
    diffs = torch.stack([flat(w, names) - theta for w in path])
    centred = diffs - diffs.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = vh[:2].T * torch.sign(vh[:2].gather(1, vh[:2].abs().argmax(1, keepdim=True))).T
    torch.testing.assert_close(res.coords, diffs @ basis, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.explained_variance, (s[:2] ** 2) / (s**2).sum(), rtol=1e-10, atol=0)
    assert res.coords[-1].tolist() == [0.0, 0.0]  # the final weights are the centre, exactly
    assert res.iterations == list(range(9)) and res.num_points == 9

    # The slice: grid point (i, j) is θ + a_i·d1 + b_j·d2 with a, b in weight-space units covering the path.
    a, b = res.slice.coords
    reach = (diffs @ basis).abs().max(0).values * 1.5
    torch.testing.assert_close(a[[0, -1]], torch.stack([-reach[0], reach[0]]), rtol=1e-12, atol=0)
    torch.testing.assert_close(b[[0, -1]], torch.stack([-reach[1], reach[1]]), rtol=1e-12, atol=0)
    for i, j in ((0, 0), (6, 2), (3, 3), (1, 5)):
        point = theta + a[i] * basis[:, 0] + b[j] * basis[:, 1]
        probe_model = mlp()
        torch.nn.utils.vector_to_parameters(point, probe_model.parameters())
        with torch.no_grad():
            expected = float(F.cross_entropy(probe_model(x), y))
        torch.testing.assert_close(float(res.slice.loss[i, j]), expected, rtol=1e-10, atol=0)
    scalars = res.scalars()
    assert scalars["explained_variance_1"] == float(res.explained_variance[0]) and scalars["num_points"] == 9.0


def test_centre_other_than_the_last_point_and_bad_input():
    model, x, y, path, names, probe = trained_path(20, 5)
    centre = mlp(seed=3)
    res = il.trajectory_plane(centre, probe, path, steps=5)
    theta = flat({n: p.detach() for n, p in centre.named_parameters()}, names)
    directions = il.pca_directions(path, 2, reference=path[-1])
    basis = torch.stack([flat(d, names) for d in directions], 1)
    torch.testing.assert_close(
        res.coords, torch.stack([flat(w, names) - theta for w in path]) @ basis, rtol=0, atol=1e-12
    )
    with pytest.raises(ValueError, match="at least 3"):
        il.trajectory_plane(model, probe, path[:2])
    with pytest.raises(ValueError, match="steps"):
        il.trajectory_plane(model, probe, path, steps=4)
    with pytest.raises(ValueError, match="margin"):
        il.trajectory_plane(model, probe, path, margin=0.0)
    with pytest.raises(ValueError, match="lacks"):
        il.trajectory_plane(model, probe, [{"0.weight": w["0.weight"]} for w in path])
    with pytest.raises(ValueError, match="max_points"):
        il.TrajectoryPlane(model, probe, max_points=2)
    with pytest.raises(TypeError, match="plane_every"):
        il.TrajectoryPlane(model, probe, plane_every=1.5)


def test_handler_thins_evenly_and_computes_the_plane_every_n_firings():
    torch.manual_seed(0)
    model = mlp()
    x, y = classification_data(32, (5,))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    seen: dict[int, dict[str, torch.Tensor]] = {}

    trainer = full_batch_trainer(model, opt, x, y)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.__setitem__(e.state.iteration, {n: p.detach().clone() for n, p in model.named_parameters()}),
    )
    handler = il.TrajectoryPlane(model, il.Probe((x, y), F.cross_entropy), steps=5, max_points=5, plane_every=4)
    handler.attach(trainer, Events.ITERATION_COMPLETED)
    trainer.run([0] * 10, max_epochs=1)
    # 1 attach-time point + firings 0..9; the cap of 5 doubled the stride twice: firings 0, 4, 8 are kept.
    assert handler.stride == 4
    assert [(i, it) for i, it, _ in handler.points] == [(-1, 0), (0, 1), (4, 5), (8, 9)]
    for _, it, w in handler.points[1:]:
        assert all(torch.equal(w[n], seen[it][n]) for n in w)
    planes = [f for f in handler.history if isinstance(f.result, il.TrajectoryPlaneResult)]
    # Every 4th firing (iterations 4 and 8) and at COMPLETED (iteration 10, which the path ends with).
    assert [f.iteration for f in planes] == [4, 8, 10]
    final = trainer.state.landscape["trajectory"]
    assert final.iterations == [0, 1, 5, 9, 10] and final.coords[-1].tolist() == [0.0, 0.0]
    assert trainer.state.metrics["landscape/trajectory/num_points"] == 5.0


def trajectory_handlers(model, probe, optimizer):
    return {
        "trajectory": il.TrajectoryPlane(model, probe, steps=5),
        "gradstats": il.GradientStatistics(model, probe),
    }


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> tuple[Run, Path]:
    logdir = tmp_path_factory.mktemp("tb_trajectory")
    run = Run(make_handlers=trajectory_handlers)
    tb = TensorboardLogger(log_dir=str(logdir))
    tb.attach(run.trainer, log_handler=il.LandscapeLogHandler(), event_name=Events.EPOCH_COMPLETED | Events.COMPLETED)
    run.run(4)
    tb.close()
    return run, logdir


def test_training_is_bit_identical_with_the_new_handlers(watched):
    run, _ = watched
    plain = Run(with_handlers=False).run(4)
    assert run.losses == plain.losses
    for epoch in range(1, 5):
        assert_same_state(run.snapshots[epoch], plain.snapshots[epoch])


def test_tensorboard_gets_the_plane_figure_and_the_norms_histogram(watched, tmp_path):
    run, logdir = watched
    (event_file,) = Path(logdir).glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "landscape/trajectory/plane" in tags["images"]
    assert "landscape/gradstats/sample_grad_norms" in tags["histograms"]
    hist = acc.Histograms("landscape/gradstats/sample_grad_norms")
    assert len(hist) == 4 and hist[-1].histogram_value.num == 128  # one norm per probe sample
    final = run.trainer.state.landscape["trajectory"]
    ev = acc.Scalars("landscape/trajectory/explained_variance_1")
    assert ev[-1].value == pytest.approx(float(final.explained_variance[0]), rel=1e-6)
    assert ev[-1].step == run.trainer.state.iteration
    # The report redraws the plane from the logged data.
    assert report.figure_trajectory([report.load_run(logdir)], tmp_path / "t.png") == tmp_path / "t.png"
    fig = plots.path_figure(final.curves()["plane"])
    assert "PC1" in fig.axes[0].get_xlabel()


def test_resume_from_a_checkpoint_continues_the_same_trajectory(watched, tmp_path):
    full, _ = watched
    first = Run(make_handlers=trajectory_handlers)
    to_save = {"model": first.model, "optimizer": first.optimizer, "trainer": first.trainer, **first.handlers}
    first.trainer.add_event_handler(
        Events.EPOCH_COMPLETED(once=2), Checkpoint(to_save, DiskSaver(str(tmp_path), require_empty=False))
    )
    first.run(2)
    (path,) = tmp_path.glob("*.pt")
    second = Run(make_handlers=trajectory_handlers)
    to_load = {"model": second.model, "optimizer": second.optimizer, "trainer": second.trainer, **second.handlers}
    Checkpoint.load_objects(to_load, str(path))
    second.run(4)
    a, b = full.handlers["trajectory"], second.handlers["trajectory"]
    assert [(i, it) for i, it, _ in a.points] == [(i, it) for i, it, _ in b.points]
    assert_same_tree(to_plain([w for *_, w in a.points]), to_plain([w for *_, w in b.points]))
    assert_same_tree(to_plain(a.history[-1].result), to_plain(b.history[-1].result))
    ga, gb = full.handlers["gradstats"].history[-1].scalars, second.handlers["gradstats"].history[-1].scalars
    assert {k: v for k, v in ga.items() if k != "seconds"} == {k: v for k, v in gb.items() if k != "seconds"}
