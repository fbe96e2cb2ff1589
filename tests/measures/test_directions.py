import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ignite_landscape import Probe, check_directions, eigenvector_directions, pca_directions, random_directions
from ignite_landscape.measures.directions import normalize_direction
from tests.helpers import classification_data, dense_hessian, mlp, small_cnn


def test_filter_normalization_matches_filter_norms():
    model = small_cnn()
    dirs = random_directions(model, 2, normalization="filter", seed=5)
    named = dict(model.named_parameters())
    for d in dirs:
        assert set(d) == set(named)
        for n, t in d.items():
            w = named[n].detach()
            assert t.shape == w.shape and t.dtype == w.dtype
            if w.dim() <= 1:
                assert torch.count_nonzero(t) == 0, n  # biases and BatchNorm ignored
            else:
                torch.testing.assert_close(t.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-6, atol=0)
    assert not torch.equal(dirs[0]["conv.weight"], dirs[1]["conv.weight"])


def test_filter_normalization_float32_and_bias_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3))
    (d,) = random_directions(model, 1, normalization="filter", ignore_bias_bn=False, seed=0)
    for n, w in model.named_parameters():
        if w.dim() <= 1:
            assert torch.equal(d[n], w.detach()), n  # Li et al.: 1-D tensors set to the weights
        else:
            torch.testing.assert_close(
                d[n].flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1), rtol=1e-6, atol=0
            )


def test_layer_and_none_normalization():
    model = mlp()
    named = dict(model.named_parameters())
    (d,) = random_directions(model, 1, normalization="layer", seed=1)
    for n, w in named.items():
        if w.dim() > 1:
            torch.testing.assert_close(d[n].norm(), w.detach().norm(), rtol=1e-12, atol=0)
    (raw,) = random_directions(model, 1, normalization="none", ignore_bias_bn=False, seed=1)
    # Unnormalized Gaussian: same draws as the layer-normalized one, up to the per-tensor scale.
    w = named["0.weight"].detach()
    torch.testing.assert_close(raw["0.weight"] * (w.norm() / raw["0.weight"].norm()), d["0.weight"])
    assert raw["0.bias"].abs().sum() > 0


def test_directions_are_reproducible_and_leave_global_rng():
    model = mlp()
    state = torch.get_rng_state()
    a = random_directions(model, 2, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = random_directions(model, 2, seed=7)
    c = random_directions(model, 2, seed=8)
    assert all(torch.equal(a[i][n], b[i][n]) for i in range(2) for n in a[0])
    assert not torch.equal(a[0]["0.weight"], c[0]["0.weight"])


def test_directions_save_and_load():
    model = mlp()
    dirs = random_directions(model, 2, seed=3)
    buf = io.BytesIO()
    torch.save(dirs, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    assert check_directions(model, loaded) == [n for n, _ in model.named_parameters()]
    assert all(torch.equal(dirs[i][n], loaded[i][n]) for i in range(2) for n in dirs[0])


def test_params_subset():
    model = small_cnn()
    (d,) = random_directions(model, 1, params="fc", seed=0)
    assert set(d) == {"fc.weight", "fc.bias"}
    assert check_directions(model, d) == ["fc.weight", "fc.bias"]


def test_eigenvector_directions_match_dense_hessian():
    model = mlp()
    x, y = classification_data(40, (5,))
    H = dense_hessian(model, x, y, F.cross_entropy)
    evals, evecs = torch.linalg.eigh(H)
    dirs = eigenvector_directions(model, Probe((x, y), F.cross_entropy), count=2, tol=1e-10)
    names = [n for n, _ in model.named_parameters()]
    for i, d in enumerate(dirs):
        v = torch.cat([d[n].reshape(-1) for n in names])
        torch.testing.assert_close(v.norm(), torch.tensor(1.0, dtype=v.dtype))
        assert abs(float(v @ evecs[:, -1 - i])) > 1 - 1e-6


def test_pca_directions_match_sklearn_pca():
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    model = mlp()
    names = [n for n, _ in model.named_parameters()]
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    p = sum(t.numel() for t in ref.values())
    u, v = torch.linalg.qr(torch.randn(p, 2, generator=g, dtype=torch.float64))[0].T
    traj = []
    for i in range(8):
        flat = 3.0 * torch.cos(torch.tensor(i / 3.0)) * u + 1.0 * torch.sin(torch.tensor(float(i))) * v
        flat = flat + 1e-3 * torch.randn(p, generator=g, dtype=torch.float64)
        sd = {}
        for n, c in zip(names, flat.split([ref[n].numel() for n in names])):
            sd[n] = ref[n] + c.view(ref[n].shape)
        traj.append(sd)
    traj.append({n: t.clone() for n, t in ref.items()})  # the final weights, as Li et al.
    dirs = pca_directions(traj, count=2)
    matrix = np.stack([torch.cat([(s[n] - ref[n]).reshape(-1) for n in names]).numpy() for s in traj])
    comps = PCA(n_components=2).fit(matrix).components_
    for d, c in zip(dirs, comps):
        vec = torch.cat([d[n].reshape(-1) for n in names]).numpy()
        assert abs(abs(float(vec @ c)) - 1) < 1e-8
    assert check_directions(model, dirs) == names
    # The trajectory lies (almost) in span{u, v}.
    for d in dirs:
        vec = torch.cat([d[n].reshape(-1) for n in names])
        assert float((vec @ u) ** 2 + (vec @ v) ** 2) > 0.999


def test_pca_directions_from_models_and_bad_input():
    a, b, c = mlp(0), mlp(1), mlp(2)
    dirs = pca_directions([a, b, c], count=1)
    assert set(dirs[0]) == {n for n, _ in a.named_parameters()}
    with pytest.raises(ValueError, match="count"):
        pca_directions([a, b], count=2)
    with pytest.raises(ValueError, match="trajectory"):
        pca_directions([a.state_dict(), small_cnn().state_dict(), a.state_dict()], count=1)
    with pytest.raises(TypeError, match="trajectory"):
        pca_directions(a.state_dict(), count=1)


def test_check_directions_rejects_other_models():
    model = mlp()
    other = mlp(d_in=4)
    with pytest.raises(ValueError, match="shape"):
        check_directions(model, random_directions(other, 1))
    with pytest.raises(ValueError, match="does not have"):
        check_directions(model, random_directions(small_cnn(), 1))
    d1, d2 = random_directions(model, 2)
    d2.pop("0.bias")
    with pytest.raises(ValueError, match="different"):
        check_directions(model, [d1, d2])
    d1["0.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        check_directions(model, [d1])
    with pytest.raises(TypeError, match="directions"):
        check_directions(model, [torch.zeros(3)])


@pytest.mark.parametrize(
    "kwargs,exc,word",
    [
        (dict(normalization="model"), ValueError, "normalization"),
        (dict(count=0), ValueError, "count"),
        (dict(count=1.5), TypeError, "count"),
    ],
)
def test_bad_input(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        random_directions(mlp(), **kwargs)


def test_normalize_direction_rejects_mismatch():
    with pytest.raises(ValueError, match="shape"):
        normalize_direction({"w": torch.ones(2, 2)}, {"w": torch.ones(3, 2)})
