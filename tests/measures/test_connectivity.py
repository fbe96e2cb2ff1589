import copy

import pytest
import torch
import torch.nn.functional as F

from ignite_landscape import Probe, interpolate
from ignite_landscape.measures.connectivity import barrier
from tests.helpers import classification_data, digits_mlp, digits_tensors, digits_train_loader, mlp, small_cnn


def lerp_state(a, b, alpha):
    return {k: torch.lerp(a[k], b[k], alpha) if a[k].is_floating_point() else a[k].clone() for k in a}


def evaluate_state(model, state, probe):
    work = copy.deepcopy(model)
    work.load_state_dict(state)
    return probe.evaluate(work)


def test_barrier_formula():
    alphas = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    values = torch.tensor([1.0, 2.0, 4.0, 2.5, 3.0])
    # chord: 1.0, 1.5, 2.0, 2.5, 3.0 -> excess 0, 0.5, 2.0, 0, 0
    assert barrier(alphas, values) == 2.0
    assert barrier(alphas, torch.tensor([1.0, 0.5, 0.2, 0.5, 1.0])) == 0.0


def test_interpolation_matches_brute_force_and_endpoints_exactly():
    model, other = small_cnn(0), small_cnn(1)
    x, y = classification_data(30, (1, 6, 6))
    probe = Probe((x, y), F.cross_entropy, batch_size=8)
    a, b = model.state_dict(), other.state_dict()
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    res = interpolate(model, a, b, probe, steps=5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k])
    assert res.alphas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert res.loss[0].item() == probe.evaluate(model).loss
    assert res.loss[-1].item() == probe.evaluate(other).loss
    assert res.error[-1].item() == probe.evaluate(other).error
    for i, alpha in enumerate(res.alphas.tolist()):
        ev = evaluate_state(model, lerp_state(a, b, alpha), probe)  # BN running statistics interpolated too
        torch.testing.assert_close(res.loss[i].item(), ev.loss, rtol=1e-12, atol=0)
        assert res.error[i].item() == pytest.approx(ev.error, abs=1e-12)
    assert res.loss_barrier == pytest.approx(barrier(res.alphas, res.loss))
    assert res.loss_barrier >= 0 and res.error_barrier >= 0
    assert set(res.scalars()) >= {"loss_barrier", "error_barrier"}


def test_interpolation_with_itself_has_zero_barriers():
    model = mlp()
    probe = Probe(classification_data(20, (5,)), F.cross_entropy)
    res = interpolate(model, model, model.state_dict(), probe, steps=7)
    assert res.loss_barrier == 0.0 and res.error_barrier == 0.0
    assert torch.equal(res.loss, torch.full((7,), probe.evaluate(model).loss, dtype=torch.float64))


def train(model, loader, epochs=6, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model


def test_digits_mlps_from_the_same_init_are_linearly_connected():
    torch.manual_seed(0)
    init = digits_mlp(hidden=64)
    a = train(copy.deepcopy(init), digits_train_loader(64, seed=1))
    b = train(copy.deepcopy(init), digits_train_loader(64, seed=2))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    _, _, x_test, y_test = digits_tensors()
    probe = Probe((x_test, y_test), F.cross_entropy)
    res = interpolate(init, a, b, probe, steps=11)
    assert res.error[0] < 0.1 and res.error[-1] < 0.1  # both trained
    assert res.error_barrier < 0.02, res.error.tolist()
    assert res.loss[0].item() == probe.evaluate(a).loss and res.loss[-1].item() == probe.evaluate(b).loss


def calibrate(model, batches):
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    return model.eval()


def test_bn_recalibration_removes_the_fake_barrier_of_a_rescaled_path():
    # b computes exactly the function of a (conv scaled by c before BatchNorm, statistics scaled to
    # match). Along the path the weights are scaled copies of a's, so the true function never changes;
    # interpolating the running variance linearly (instead of as the square of the scale) does change it.
    x, y = classification_data(64, (1, 6, 6))
    loader = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    a = calibrate(small_cnn(0), loader)
    c = 5.0
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.conv.weight.mul_(c)
        b.conv.bias.mul_(c)
        b.bn.running_mean.mul_(c)
        b.bn.running_var.mul_(c * c)
    probe = Probe((x, y), F.cross_entropy)
    assert probe.evaluate(b).loss == pytest.approx(probe.evaluate(a).loss, abs=1e-5)
    user = small_cnn(3)
    user.train()
    snap = {k: v.clone() for k, v in user.state_dict().items()}
    plain = interpolate(user, a, b, probe, steps=5)
    fixed = interpolate(user, a, b, probe, steps=5, bn_loader=loader)
    for k, v in user.state_dict().items():
        assert torch.equal(v, snap[k])
    assert user.training and user.bn.momentum == 0.1
    assert not plain.bn_recalibrated and fixed.bn_recalibrated
    assert (plain.loss - plain.loss[0]).abs().max() > 5e-3  # interpolated statistics change the function
    assert fixed.loss_barrier < 1e-4
    torch.testing.assert_close(fixed.loss, torch.full_like(fixed.loss, fixed.loss[0].item()), rtol=0, atol=1e-4)
    # At α = 0 the recalibrated statistics are the exact cumulative average over the loader.
    assert fixed.loss[0].item() == pytest.approx(probe.evaluate(calibrate(a, loader)).loss, rel=1e-12)
    # bn_batches limits the batches read.
    two = interpolate(user, a, b, probe, steps=2, bn_loader=loader, bn_batches=2)
    assert two.loss[0].item() == pytest.approx(probe.evaluate(calibrate(a, loader[:2])).loss, rel=1e-12)


def test_bad_input():
    model = mlp()
    probe = Probe(classification_data(10, (5,)), F.cross_entropy)
    a = model.state_dict()
    with pytest.raises(ValueError, match="steps"):
        interpolate(model, a, a, probe, steps=1)
    with pytest.raises(ValueError, match="weights_b"):
        interpolate(model, a, mlp(d_in=4).state_dict(), probe)
    with pytest.raises(ValueError, match="weights_a"):
        interpolate(model, {k: v for k, v in a.items() if k != "0.bias"}, a, probe)
    with pytest.raises(ValueError, match="weights_b"):
        interpolate(model, a, small_cnn().state_dict(), probe)
    with pytest.raises(TypeError, match="weights_a"):
        interpolate(model, [1, 2], a, probe)
    with pytest.raises(ValueError, match="bn_batches"):
        interpolate(model, a, a, probe, bn_loader=[], bn_batches=0)
