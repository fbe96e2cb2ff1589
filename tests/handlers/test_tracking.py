"""HessianSpectrum's warm start against dense ground truth, and the tracking benchmark end to end."""

import math

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine

import ignite_landscape as il
import ignite_landscape.handlers.spectrum as spectrum_handlers
from ignite_landscape.measures.spectrum import eigenspace_overlap
from tests.helpers import classification_data, dense_hessian, mlp, run_script


def test_warm_start_without_noise_finds_a_direction_the_old_eigenvectors_miss():
    model = mlp(seed=6, hidden=10)
    x, y = classification_data(48, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    evals, evecs = torch.linalg.eigh(dense_hessian(model, x, y, F.cross_entropy))
    top = evals.flip(0)[:4]
    handler = il.HessianSpectrum(model, probe, k=4, tol=1e-9, warm_start_noise=0.0)
    # The "previous firing" knew the 1st, 2nd, 4th, 5th eigenvectors but not the 3rd: with the old
    # single start vector (their sum) Lanczos converged inside their span and reported λ5 for λ3.
    handler.eigenvectors = evecs[:, [-1, -2, -4, -5]].T.contiguous()
    trainer = Engine(lambda e, b: None)
    handler.attach(trainer)
    trainer.run([0], max_epochs=1)
    res = handler.history[-1].result
    torch.testing.assert_close(res.eigenvalues, top, rtol=1e-8, atol=0)
    assert res.converged.all()
    assert res.eigenvectors is None  # the history stays compact: the warm-start basis is kept once
    assert handler.eigenvectors.shape == (4, handler.space.numel)


def test_handler_warm_starts_from_its_eigenvectors_alone_and_keeps_them_in_its_state(monkeypatch):
    # An earlier version also dealt the Ritz vector beyond the top k (the guard's); an accurate vector there
    # converged the guard before the random exploration had looked, and newcomers were missed (test_lanczos).
    model = mlp(seed=6, hidden=10)
    x, y = classification_data(48, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    evals, _ = torch.linalg.eigh(dense_hessian(model, x, y, F.cross_entropy))
    handler = il.HessianSpectrum(model, probe, k=3, tol=1e-9)
    trainer = Engine(lambda e, b: None)
    handler.attach(trainer)
    seen: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
    measure = spectrum_handlers.measure_hessian_eigenvalues

    def spy(*args, **kwargs):
        kept = None if handler.eigenvectors is None else handler.eigenvectors.clone()
        seen.append((kwargs.get("v0"), kept))
        return measure(*args, **kwargs)

    monkeypatch.setattr(spectrum_handlers, "measure_hessian_eigenvalues", spy)
    trainer.run([0], max_epochs=2)
    assert seen[0] == (None, None)
    v0, kept = seen[1]
    assert v0.shape == (3, handler.space.numel)
    torch.testing.assert_close(v0, kept / kept.norm(dim=1, keepdim=True), rtol=0, atol=0)
    torch.testing.assert_close(handler.history[-1].result.eigenvalues, evals.flip(0)[:3], rtol=1e-8, atol=0)
    state = handler.state_dict()
    assert "guard_vectors" not in state["extra"]
    fresh = il.HessianSpectrum(model, probe, k=3, tol=1e-9)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.eigenvectors, handler.eigenvectors, rtol=0, atol=0)
    # A state saved by the earlier version still loads; its guard vectors are not read.
    state["extra"]["guard_vectors"] = torch.zeros(1, handler.space.numel)
    old = il.HessianSpectrum(model, probe, k=3, tol=1e-9)
    old.load_state_dict(state)
    torch.testing.assert_close(old.eigenvectors, handler.eigenvectors, rtol=0, atol=0)
    assert not hasattr(old, "guard_vectors")


def test_tracking_benchmark_runs():
    out = run_script("benchmarks/bench_tracking.py", "--quick")
    assert "8.2 found: True" in out.stdout
    assert "refining eigsh's previous top 5 alone" in out.stdout
    errors = [line for line in out.stdout.splitlines() if line.startswith("max rel error")]
    assert len(errors) == 1
    worst = max(float(tok.rstrip(",")) for tok in errors[0].split()[-3::2])
    assert worst < 1e-4, out.stdout


def test_eigenspace_overlap_of_a_constructed_rotation():
    g = torch.Generator().manual_seed(8)
    Q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=torch.float64))
    previous = Q[:, :3].T
    for angle in (1e-7, 0.2, 1.2):
        # Turn the second basis vector towards a direction outside the subspace by `angle`, and mix the rows.
        turned = previous.clone()
        turned[1] = math.cos(angle) * previous[1] + math.sin(angle) * Q[:, 7]
        mix, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
        overlap, largest = eigenspace_overlap(previous, mix @ turned)
        assert overlap == pytest.approx((2 + math.cos(angle) ** 2) / 3, rel=1e-12)
        assert largest == pytest.approx(angle, rel=1e-9)
    assert eigenspace_overlap(previous, previous)[0] == pytest.approx(1.0, rel=1e-14)


def test_tracking_scalars_against_dense_eigenvectors():
    model = mlp(seed=7, hidden=9)
    x, y = classification_data(40, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    grow = {"on": False}

    def step(engine, batch):
        if grow["on"]:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    trainer = Engine(step)
    handler = il.HessianSpectrum(model, probe, k=3, tol=1e-10, track_eigenspace=True)
    handler.attach(trainer)
    trainer.run([0], max_epochs=1)
    assert math.isnan(trainer.state.metrics["landscape/hessian/eigenspace_overlap"])  # nothing to compare yet
    trainer.run([0], max_epochs=2)  # nothing changes between the two firings
    m = trainer.state.metrics
    assert m["landscape/hessian/eigenspace_overlap"] == pytest.approx(1.0, abs=1e-9)
    assert m["landscape/hessian/max_principal_angle"] < 1e-6
    assert math.isnan(m["landscape/hessian/update_overlap"])  # no step was taken
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    grow["on"] = True
    trainer.run([0], max_epochs=3)  # one more epoch: one gradient step, then a firing
    d = torch.nn.utils.parameters_to_vector(model.parameters()).detach() - before
    evals, evecs = torch.linalg.eigh(dense_hessian(model, x, y, F.cross_entropy))
    top = evecs[:, -3:]
    m = trainer.state.metrics
    assert m["landscape/hessian/update_overlap"] == pytest.approx(
        float((top.T @ d).square().sum() / d.square().sum()), rel=1e-7
    )
    assert len(handler.history) == 3 and all(f.result.eigenvectors is None for f in handler.history)


def test_num_random_is_checked_at_construction_and_changes_only_the_cost():
    model = mlp(seed=9)
    x, y = classification_data(32, (5,))
    probe = il.Probe((x, y), F.cross_entropy)
    with pytest.raises(ValueError, match="num_random"):
        il.HessianSpectrum(model, probe, k=2, num_random=0)
    with pytest.raises(TypeError, match="num_random"):
        il.HessianSpectrum(model, probe, k=2, num_random=1.0)
    with pytest.raises(TypeError, match="num_random"):
        il.hessian_eigenvalues(model, probe, k=2, num_random=True)
    expected = torch.linalg.eigvalsh(dense_hessian(model, x, y, F.cross_entropy)).flip(0)[:3]
    for count in (1, 3):
        res = il.hessian_eigenvalues(model, probe, k=3, tol=1e-10, num_random=count)
        torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-8, atol=0)
        assert res.converged.all()
