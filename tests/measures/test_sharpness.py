import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ignite_landscape import Probe, sharpness
from tests.helpers import classification_data, mlp


class Quadratic(nn.Module):
    """L(θ) = ½(θ−θ*)ᵀA(θ−θ*) with A = LLᵀ: the forward returns (θ−θ*)ᵀL per sample, the loss ½‖·‖²."""

    def __init__(self, eigenvalues, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        p = len(eigenvalues)
        q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
        lam = torch.tensor(eigenvalues, dtype=torch.float64)
        self.register_buffer("star", torch.randn(p, generator=g, dtype=torch.float64))
        self.register_buffer("L", q * lam.sqrt())
        self.A = q @ torch.diag(lam) @ q.T
        self.theta = nn.Parameter(self.star.clone())

    def forward(self, x):
        return ((self.theta - self.star) @ self.L).expand(x.shape[0], -1)


def half_sq(out, y):
    return 0.5 * (out**2).sum(dim=1).mean()


def quad_probe():
    return Probe((torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)), half_sq)


EIGS = [3.0, 1.5, 1.0, 0.5, 0.2, 0.1, 0.05, 0.01]


def test_ascent_on_quadratic_reaches_rho_squared_lambda_max_over_two():
    model = Quadratic(EIGS)
    rho = 0.1
    res = sharpness(model, quad_probe(), rho=rho, method="ascent", norm="l2", steps=20, seed=1)
    expected = rho**2 * max(EIGS) / 2
    assert res.base_loss == 0.0
    assert abs(res.value - expected) <= 0.01 * expected, (res.value, expected)
    assert res.value <= expected * (1 + 1e-12)  # it is a point of the ball: never above the true maximum
    assert res.perturbation_norm <= rho * (1 + 1e-12)
    assert 1 <= res.steps <= 20 and res.num_grads == res.steps + 1
    assert res.converged is True and res.scalars()["converged"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_default_ascent_is_within_one_percent_of_the_worst_case(seed):
    # 12-dim quadratic at its minimum, eigenvalues linspace(0.5, 7): the worst case in the ρ-ball is
    # ρ²λ_max/2 = 0.035 for ρ = 0.1. A fixed 10-step cosine ascent stopped at 0.026–0.034 here.
    eigs = torch.linspace(0.5, 7.0, 12, dtype=torch.float64).tolist()
    model = Quadratic(eigs, seed=seed)
    res = sharpness(model, quad_probe(), rho=0.1, method="ascent", seed=seed)
    exact = 0.1**2 * 7.0 / 2
    assert res.converged is True and res.steps < 100
    assert exact * 0.99 <= res.value <= exact * (1 + 1e-12), (res.value, exact)
    # A cap below what convergence needs is reported as such.
    capped = sharpness(model, quad_probe(), rho=0.1, method="ascent", seed=seed, steps=2)
    assert capped.converged is False and capped.steps == 2 and capped.value < res.value


def test_linf_ascent_on_diagonal_quadratic_reaches_a_vertex():
    model = Quadratic(EIGS)
    with torch.no_grad():
        model.L.copy_(torch.diag(torch.tensor(EIGS, dtype=torch.float64).sqrt()))
    rho = 0.1
    res = sharpness(model, quad_probe(), rho=rho, method="ascent", norm="linf", steps=5)
    torch.testing.assert_close(res.value, rho**2 * sum(EIGS) / 2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_average_on_quadratic_matches_closed_form_within_three_stderr(norm):
    model = Quadratic(EIGS)
    rho = 0.2
    res = sharpness(model, quad_probe(), rho=rho, method="average", norm=norm, num_samples=400, seed=3)
    # ρ is the per-coordinate standard deviation for both norms (Jiang et al. 2019; Andriushchenko et al.
    # 2023): l2 δ ~ N(0, ρ²I), linf δ ~ U[−√3ρ, √3ρ]^P, so E = ρ²·tr(A)/2 either way.
    expected = rho**2 * sum(EIGS) / 2
    assert res.stderr > 0
    assert abs(res.value - expected) <= 3 * res.stderr, (res.value, expected, res.stderr)
    assert res.stderr < 0.1 * expected  # the test has power
    # Same seed, same numbers; another seed, other numbers.
    again = sharpness(model, quad_probe(), rho=rho, method="average", norm=norm, num_samples=400, seed=3)
    assert again.value == res.value
    assert (
        sharpness(model, quad_probe(), rho=rho, method="average", norm=norm, num_samples=400, seed=4).value != res.value
    )


def test_average_perturbation_has_per_coordinate_scale_rho_in_both_norms():
    model = Quadratic([1.0] * 400)
    rho = 0.01
    l2 = sharpness(model, quad_probe(), rho=rho, method="average", norm="l2", num_samples=20)
    linf = sharpness(model, quad_probe(), rho=rho, method="average", norm="linf", num_samples=20)
    # ‖δ‖₂ ≈ ρ√P for the Gaussian; the box's half-width is √3ρ.
    assert l2.perturbation_norm == pytest.approx(rho * 20.0, rel=0.05)
    assert rho * 1.7 < linf.perturbation_norm <= rho * math.sqrt(3)
    assert l2.value == pytest.approx(linf.value, rel=0.15)  # A = I: both ≈ ρ²P/2 = 0.02


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("adaptive", [False, "asam", "andriushchenko2023"])
def test_sam_is_zero_at_the_exact_minimum(norm, adaptive):
    res = sharpness(Quadratic(EIGS), quad_probe(), rho=0.3, method="sam", norm=norm, adaptive=adaptive)
    assert res.value == 0.0 and res.base_loss == 0.0 and res.steps == 1


def _loss_at(model, x, y, flat):
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat, model.parameters())
        return float(F.cross_entropy(model(x), y))


def _zero_bias_mlp():
    model = mlp(seed=2)
    with torch.no_grad():
        model[0].bias.zero_()  # ASAM perturbs it (offset η); |θ| scaling never does
    return model


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("adaptive", [False, "asam", "andriushchenko2023"])
def test_sam_equals_hand_computation(norm, adaptive):
    model = _zero_bias_mlp()
    x, y = classification_data(30, (5,))
    rho = 0.07
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    loss = F.cross_entropy(model(x), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, list(model.parameters()))])
    if adaptive == "asam":  # Kwon et al. 2021: |w| + η on weights, biases unscaled
        t = torch.cat(
            [
                p.detach().abs().reshape(-1) + 0.01 if "weight" in n else torch.ones(p.numel(), dtype=p.dtype)
                for n, p in model.named_parameters()
            ]
        )
    else:
        t = theta.abs() if adaptive else torch.ones_like(theta)
    if norm == "l2":
        eps = rho * t * t * g / torch.linalg.vector_norm(t * g)
    else:
        eps = rho * t * torch.sign(t * g)
    bias = slice(5 * 7, 5 * 7 + 7)
    assert bool((eps[bias] != 0).all()) == (adaptive != "andriushchenko2023")
    expected = _loss_at(_zero_bias_mlp(), x, y, theta + eps) - float(loss.detach())

    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = sharpness(
        model, Probe((x, y), F.cross_entropy, batch_size=7), rho=rho, method="sam", norm=norm, adaptive=adaptive
    )
    torch.testing.assert_close(res.value, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.base_loss, float(loss.detach()), rtol=1e-12, atol=0)
    assert res.value == res.perturbed_loss - res.base_loss
    assert (res.rho, res.method, res.norm, res.adaptive) == (rho, "sam", norm, adaptive or None)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_ascent_is_at_least_sam_and_stays_in_the_ball(norm):
    model = mlp(seed=4)
    x, y = classification_data(40, (5,))
    probe = Probe((x, y), F.cross_entropy)
    rho = 0.5
    sam = sharpness(model, probe, rho=rho, method="sam", norm=norm)
    asc = sharpness(model, probe, rho=rho, method="ascent", norm=norm, steps=8)
    assert asc.value >= sam.value > 0
    assert asc.perturbation_norm <= rho * (1 + 1e-9)
    assert set(asc.scalars()) >= {"value", "base_loss", "perturbed_loss"}


def relu_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def rescaled(model, c):
    other = relu_net()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other[0].weight.mul_(c)
        other[0].bias.mul_(c)
        other[2].weight.div_(c)
    return other


@pytest.mark.parametrize("method", ["sam", "ascent", "average"])
def test_adaptive_sharpness_is_invariant_to_relu_rescaling(method):
    model = relu_net()
    x, y = classification_data(40, (5,))
    probe = Probe((x, y), F.cross_entropy)
    kw = dict(rho=0.3, method=method, steps=4, num_samples=5, seed=1)
    a = sharpness(model, probe, adaptive="andriushchenko2023", **kw)
    b = sharpness(rescaled(model, 5.0), probe, adaptive="andriushchenko2023", **kw)
    assert a.value != 0.0  # ("average" may be negative away from a minimum)
    assert abs(a.value - b.value) < 1e-5, (a.value, b.value)
    if method == "sam":  # the plain (non-adaptive) value is not invariant
        assert abs(sharpness(model, probe, **kw).value - sharpness(rescaled(model, 5.0), probe, **kw).value) > 1e-3


def test_global_rng_untouched():
    model = mlp()
    probe = Probe(classification_data(20, (5,)), F.cross_entropy)
    state = torch.get_rng_state()
    sharpness(model, probe, method="average", num_samples=3)
    sharpness(model, probe, method="ascent", steps=2)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(rho=0.0), ValueError, "rho"),
        (dict(rho=-1.0), ValueError, "rho"),
        (dict(rho=math.nan), ValueError, "rho"),
        (dict(rho="big"), TypeError, "rho"),
        (dict(method="worst"), ValueError, "method"),
        (dict(norm="l1"), ValueError, "norm"),
        (dict(method="ascent", steps=0), ValueError, "steps"),
        (dict(method="average", num_samples=1), ValueError, "num_samples"),
        (dict(schedule="linear"), ValueError, "schedule"),
        (dict(tol=0.0), ValueError, "tol"),
        (dict(step_size=-1.0), ValueError, "step_size"),
        (dict(adaptive="kwon"), ValueError, "adaptive"),
        (dict(adaptive=1.0), TypeError, "adaptive"),
        (dict(adaptive="asam", adaptive_eta=-0.1), ValueError, "adaptive_eta"),
    ],
)
def test_bad_input(kwargs, exc, word):
    probe = Probe(classification_data(10, (5,)), F.cross_entropy)
    with pytest.raises(exc, match=word):
        sharpness(mlp(), probe, **kwargs)


def test_adaptive_true_keeps_its_old_meaning_with_a_warning():
    model = mlp()
    probe = Probe(classification_data(20, (5,)), F.cross_entropy)
    with pytest.warns(FutureWarning, match="andriushchenko2023"):
        old = sharpness(model, probe, rho=0.05, adaptive=True)
    named = sharpness(model, probe, rho=0.05, adaptive="andriushchenko2023")
    assert old.adaptive == "andriushchenko2023" and old.value == named.value
