import pytest
import torch
import torch.nn.functional as F

from ignite_landscape import Probe, hessian_density, hessian_eigenvalues, hessian_trace, layerwise_curvature
from ignite_landscape.linalg import rademacher, stochastic_lanczos_quadrature
from tests.helpers import classification_data, dense_hessian, mlp, small_cnn

CASES = {
    "mlp": (mlp, (5,)),
    "cnn_bn_eval": (small_cnn, (1, 6, 6)),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    make, shape = CASES[request.param]
    model = make()
    x, y = classification_data(40, shape)
    model.eval()
    H = dense_hessian(model, x, y, F.cross_entropy)
    model.train()  # the probe must switch to eval itself and switch back
    return model, x, y, torch.linalg.eigvalsh(H), H


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_eigenvalues_match_dense_hessian(case, which):
    model, x, y, evals, _ = case
    probe = Probe((x, y), F.cross_entropy, batch_size=16)
    k = 4
    res = hessian_eigenvalues(model, probe, k=k, which=which, tol=1e-10, max_iter=len(evals))
    if which == "largest":
        expected = evals.flip(0)[:k]
    elif which == "smallest":
        expected = evals[:k]
    else:
        expected = torch.cat([evals.flip(0)[:k], evals[:k].flip(0)])
    assert evals[0] < 0, "the test model must have a saddle direction"
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-6, atol=1e-10)
    assert res.converged.all()
    assert res.num_hvps <= len(evals)
    assert model.training


def test_eigenvectors_are_eigenvectors(case):
    model, x, y, evals, H = case
    probe = Probe((x, y), F.cross_entropy)
    res = hessian_eigenvalues(model, probe, k=2, tol=1e-10, return_eigenvectors=True, max_iter=len(evals))
    for lam, v in zip(res.eigenvalues, res.eigenvectors):
        assert torch.linalg.vector_norm(H @ v - lam * v) < 1e-6 * abs(lam)
    assert set(res.eigenvector(0)) == {n for n, _ in model.named_parameters()}


def test_trace_within_three_standard_errors(case):
    model, x, y, evals, _ = case
    probe = Probe((x, y), F.cross_entropy)
    exact = float(evals.sum())
    for method in ("hutchinson", "hutch++"):
        res = hessian_trace(model, probe, method=method, num_hvps=60, seed=3)
        assert res.num_hvps == 60
        assert abs(res.value - exact) <= 3 * res.stderr, (method, res.value, exact, res.stderr)
        # Same seed -> same numbers.
        assert hessian_trace(model, probe, method=method, num_hvps=60, seed=3).value == res.value


def test_density_moments_and_negative_mass(case):
    model, x, y, evals, H = case
    probe = Probe((x, y), F.cross_entropy)
    m, runs = 5, 3
    res = hessian_density(model, probe, num_steps=m, num_runs=runs, seed=4)
    assert res.num_hvps == m * runs
    # The same seed on the dense Hessian gives the same quadrature (same start vectors).
    dense = stochastic_lanczos_quadrature(
        lambda v: H @ v, H.shape[0], num_steps=m, num_runs=runs, seed=4, dtype=H.dtype
    )
    torch.testing.assert_close(res.nodes, dense.nodes, rtol=1e-8, atol=1e-10)
    # Gauss quadrature is exact for moments up to 2m - 1: sum_j w_j theta_j^r = v^T H^r v / |v|^2.
    for run in range(runs):
        v = rademacher(H.shape[0], 4 + 104729 * run, dtype=H.dtype)
        v = v / v.norm()
        for r in range(2 * m):
            exact = float(v @ torch.linalg.matrix_power(H, r) @ v)
            quad = float((res.weights[run] * res.nodes[run] ** r).sum())
            assert quad == pytest.approx(exact, rel=1e-7, abs=1e-12), (run, r)
    grid_step = float(res.grid[1] - res.grid[0])
    assert abs(float(res.density.sum()) * grid_step - 1) < 1e-3
    # With m = P steps each run's quadrature is the exact spectral measure of its start vector, so the
    # magnitude-weighted negative mass equals the dense Hessian's sum |λ<0| / sum |λ| weighted by v's components.
    full = hessian_density(model, probe, num_steps=H.shape[0], num_runs=1, seed=4)
    v = rademacher(H.shape[0], 4, dtype=H.dtype)
    w = (torch.linalg.eigh(H).eigenvectors.T @ v) ** 2
    expected = float((w * evals.abs() * (evals < 0)).sum() / (w * evals.abs()).sum())
    assert full.negative_mass == pytest.approx(expected, rel=1e-6)
    assert 0 < res.negative_mass < 1
    cut = -0.01 * float(evals.abs().max())
    expected_fraction = float((w * (evals < cut)).sum() / w.sum())
    assert full.negative_fraction == pytest.approx(expected_fraction, abs=1e-6)


def test_layerwise_curvature_matches_dense_blocks():
    model = mlp()
    x, y = classification_data(30, (5,))
    probe = Probe((x, y), F.cross_entropy)
    rows = layerwise_curvature(model, probe, tol=1e-10, exact_below=16)
    assert [r.name for r in rows] == ["0", "2"]
    for row in rows:
        H = dense_hessian(model, x, y, F.cross_entropy, names=row.parameters)
        assert row.num_params == H.shape[0]
        assert row.lambda_max == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)
        if row.trace_stderr == 0:
            assert row.trace == pytest.approx(float(H.trace()), rel=1e-9)
        else:
            assert abs(row.trace - float(H.trace())) <= 3 * row.trace_stderr


def test_params_restricts_to_one_layer():
    model = mlp()
    x, y = classification_data(30, (5,))
    probe = Probe((x, y), F.cross_entropy)
    names = ["2.weight", "2.bias"]
    H = dense_hessian(model, x, y, F.cross_entropy, names=names)
    res = hessian_eigenvalues(model, probe, k=2, tol=1e-10, params="2")
    torch.testing.assert_close(res.eigenvalues, torch.linalg.eigvalsh(H).flip(0)[:2], rtol=1e-6, atol=1e-10)
    assert res.space.names == tuple(names)


def test_spectrum_module_reexports_the_split_modules():
    # measures/spectrum.py was split into trace.py, density.py and layerwise.py: old imports keep working.
    from ignite_landscape.measures import density, layerwise, spectrum, trace

    for module in (trace, density, layerwise):
        for name in set(module.__all__) & set(spectrum.__all__):
            assert getattr(spectrum, name) is getattr(module, name), name
    moved = {"HessianTraceResult", "TraceOptions", "hessian_trace", "HessianDensityResult", "DensityOptions"}
    moved |= {"hessian_density", "LayerCurvature", "layerwise_curvature"}
    assert moved <= set(spectrum.__all__)
