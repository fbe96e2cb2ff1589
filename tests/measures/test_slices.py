import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ignite_landscape import Probe, loss_slice, random_directions
from ignite_landscape.measures.slices import grid_coordinates
from tests.helpers import classification_data, mlp, small_cnn


def brute_force(model, probe, dirs, coords):
    """Set the weights in place on a copy, point by point, and evaluate."""
    work = copy.deepcopy(model)
    base = {n: p.detach().clone() for n, p in work.named_parameters()}
    grids = torch.meshgrid(*([coords] * len(dirs)), indexing="ij")
    out = torch.empty(grids[0].shape, dtype=torch.float64)
    acc = torch.empty(grids[0].shape, dtype=torch.float64)
    for idx in zip(*[g.reshape(-1).tolist() for g in grids]):
        with torch.no_grad():
            for n, p in work.named_parameters():
                p.copy_(base[n] + sum(c * d[n] for c, d in zip(idx, dirs)))
        ev = probe.evaluate(work)
        pos = tuple(int((coords == c).nonzero()[0]) for c in idx)
        out[pos] = ev.loss
        acc[pos] = ev.accuracy
    return out, acc


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


def assert_unchanged(model, snap):
    state, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("dims", [1, 2])
def test_slice_equals_brute_force_and_leaves_model_bit_identical(dims):
    model = small_cnn()
    model.train()
    x, y = classification_data(24, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy, batch_size=10)
    dirs = random_directions(model, dims, normalization="filter", seed=2)
    snap = snapshot(model)
    res = loss_slice(model, probe, dirs, steps=5, span=(-0.5, 0.5))
    assert_unchanged(model, snap)
    assert res.dims == dims and res.loss.shape == (5,) * dims
    assert res.coords[0].tolist() == [-0.5, -0.25, 0.0, 0.25, 0.5]
    loss, acc = brute_force(model, probe, dirs, res.coords[0])
    torch.testing.assert_close(res.loss, loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.accuracy, acc, rtol=0, atol=1e-12)
    ev = probe.evaluate(model)
    assert res.center_loss == ev.loss  # the centre is the model itself, exactly
    assert res.loss[res.center_index].item() == ev.loss
    assert res.center_accuracy == ev.accuracy
    s = res.scalars()
    assert s["min_loss"] <= s["center_loss"] <= s["max_loss"] and "center_accuracy" in s
    assert res.num_points == 5**dims


def test_batched_vmap_equals_point_by_point():
    model = small_cnn()
    x, y = classification_data(24, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy, batch_size=10)
    dirs = random_directions(model, 2, seed=4)
    snap = snapshot(model)
    plain = loss_slice(model, probe, dirs, steps=5)
    batched = loss_slice(model, probe, dirs, steps=5, batch_points=7)
    assert batched.batched and not plain.batched
    torch.testing.assert_close(batched.loss, plain.loss, rtol=1e-10, atol=1e-12)
    assert torch.equal(batched.accuracy, plain.accuracy)
    assert batched.center_loss == pytest.approx(plain.center_loss, rel=1e-12)
    assert_unchanged(model, snap)


def test_batched_falls_back_where_vmap_cannot_run():
    # Dropout in train mode draws random masks: vmap refuses, the slice falls back to one point at a time.
    model = small_cnn(dropout=0.3)
    x, y = classification_data(16, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy, model_mode="train")
    dirs = random_directions(model, 1, seed=0)
    rng = torch.get_rng_state()
    a = loss_slice(model, probe, dirs, steps=3, batch_points=3)
    b = loss_slice(model, probe, dirs, steps=3)
    assert not a.batched
    assert torch.equal(a.loss, b.loss)
    assert torch.equal(torch.get_rng_state(), rng)


def relu_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def test_filter_normalized_slice_is_invariant_to_relu_rescaling():
    model = relu_net()
    other = relu_net()
    with torch.no_grad():
        other[0].weight.mul_(4.0)
        other[0].bias.mul_(4.0)
        other[2].weight.div_(4.0)
    x, y = classification_data(30, (5,))
    probe = Probe((x, y), F.cross_entropy)
    assert probe.evaluate(model).loss == pytest.approx(probe.evaluate(other).loss, abs=1e-12)
    a = loss_slice(model, probe, random_directions(model, 2, "filter", seed=1), steps=5)
    b = loss_slice(other, probe, random_directions(other, 2, "filter", seed=1), steps=5)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=1e-5)
    raw_a = loss_slice(model, probe, random_directions(model, 2, "none", seed=1), steps=5)
    raw_b = loss_slice(other, probe, random_directions(other, 2, "none", seed=1), steps=5)
    assert (raw_a.loss - raw_b.loss).abs().max() > 1e-2


def test_subset_directions_and_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = classification_data(20, (5,))
    probe = Probe((x.float(), y), F.cross_entropy)
    dirs = random_directions(model, 1, params="2", seed=0)
    res = loss_slice(model, probe, dirs, steps=3, span=(0.0, 1.0))
    assert res.coords[0].tolist() == [0.0, 0.5, 1.0]
    assert res.center_loss == probe.evaluate(model).loss == res.loss[0].item()
    with torch.no_grad():
        model[2].weight.add_(dirs[0]["2.weight"])
        model[2].bias.add_(dirs[0]["2.bias"])
    torch.testing.assert_close(res.loss[2].item(), probe.evaluate(model).loss, rtol=1e-6, atol=0)


def test_regression_has_no_accuracy():
    model = mlp(d_out=1)
    x, _ = classification_data(12, (5,))
    probe = Probe((x, torch.randn(12, 1, dtype=torch.float64)), F.mse_loss)
    res = loss_slice(model, probe, random_directions(model, 1), steps=3, batch_points=2)
    assert res.accuracy is None and res.center_accuracy is None and "center_accuracy" not in res.scalars()


def test_grid_coordinates():
    c = grid_coordinates(21)
    assert c[10].item() == 0.0 and c[0].item() == -1.0 and c[-1].item() == 1.0
    assert torch.allclose(c.diff(), torch.full((20,), 0.1, dtype=torch.float64))
    assert grid_coordinates(4, (-1.0, 2.0)).tolist() == [-1.0, 0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(steps=1), ValueError, "steps"),
        (dict(steps=4), ValueError, "steps"),  # even: 0 not on a symmetric grid
        (dict(steps=2.0), TypeError, "steps"),
        (dict(span=(0.5, 1.0)), ValueError, "span"),
        (dict(span=(1.0, -1.0)), ValueError, "span"),
        (dict(batch_points=0), ValueError, "batch_points"),
    ],
)
def test_bad_input(kwargs, exc, word):
    model = mlp()
    probe = Probe(classification_data(10, (5,)), F.cross_entropy)
    with pytest.raises(exc, match=word):
        loss_slice(model, probe, random_directions(model, 1), **kwargs)


def test_bad_directions():
    model = mlp()
    probe = Probe(classification_data(10, (5,)), F.cross_entropy)
    with pytest.raises(ValueError, match="directions"):
        loss_slice(model, probe, random_directions(model, 3))
    with pytest.raises(ValueError, match="directions"):
        loss_slice(model, probe, random_directions(small_cnn(), 2))
    with pytest.raises(TypeError, match="directions"):
        loss_slice(model, probe, torch.zeros(3))


def test_handler_renormalises_its_fixed_draw_against_the_current_weights_at_every_firing():
    # Weight norms drift between firings (here: a layer grows, as without weight decay); each slice must
    # still be filter-normalised to the weights of its own moment, along the same raw draw.
    from ignite.engine import Engine, Events

    from ignite_landscape import LossSlice

    model = mlp(seed=1)
    x, y = classification_data(24, (5,))
    probe = Probe((x, y), F.cross_entropy)
    trainer = Engine(lambda e, b: None)
    snapshots = []

    @trainer.on(Events.EPOCH_STARTED)
    def drift(engine):
        with torch.no_grad():
            model[0].weight.mul_(1.5)
            model[0].weight[0].mul_(3.0)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: snapshots.append(copy.deepcopy(model)))
    handler = LossSlice(model, probe, dims=2, steps=5, seed=3)
    handler.attach(trainer)
    trainer.run([0], max_epochs=3)
    for firing, then in zip(handler.history, snapshots):
        expected = loss_slice(then, probe, random_directions(then, 2, seed=3), steps=5)
        torch.testing.assert_close(firing.result.loss, expected.loss, rtol=1e-12, atol=0)
    # The directions now are filter-normalised to the current weights, not to those of the first firing.
    w = model[0].weight.detach()
    for d in handler.directions:
        torch.testing.assert_close(d["0.weight"].norm(dim=1), w.norm(dim=1), rtol=1e-12, atol=0)
    # Only the raw draw is kept and saved; a resumed handler slices the same way.
    again = LossSlice(model, probe, dims=2, steps=5, seed=3)
    again.load_state_dict(handler.state_dict())
    for a, b in zip(again.directions, handler.directions):
        assert all(torch.equal(a[n], b[n]) for n in a)
