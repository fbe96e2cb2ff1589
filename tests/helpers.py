"""Ground truth for the tests: dense Hessians in float64 and small models; shared trainers and checks."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from torch import nn
from torch.func import functional_call

ROOT = Path(__file__).resolve().parents[1]


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, names=None) -> torch.Tensor:
    """The full Hessian of ``loss_fn(model(x), y)`` w.r.t. the named parameters, as a P×P matrix."""
    named = dict(model.named_parameters())
    names = list(names) if names is not None else [n for n, p in named.items() if p.requires_grad]
    fixed = {n: p.detach() for n, p in named.items() if n not in names}
    buffers = dict(model.named_buffers())

    def f(*ps):
        tensors = {**fixed, **buffers, **dict(zip(names, ps))}
        return loss_fn(functional_call(model, tensors, (x,)), y)

    H = torch.autograd.functional.hessian(f, tuple(named[n].detach() for n in names))
    sizes = [named[n].numel() for n in names]
    return torch.cat(
        [torch.cat([H[i][j].reshape(sizes[i], sizes[j]) for j in range(len(names))], 1) for i in range(len(names))], 0
    )


def mlp(seed: int = 0, d_in: int = 5, hidden: int = 7, d_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).double()


class SmallCNN(nn.Module):
    """A tiny CNN with BatchNorm and dropout, for 1×6×6 inputs."""

    def __init__(self, channels: int = 3, classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3)
        self.bn = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * 4 * 4, classes)

    def forward(self, x):
        return self.fc(self.drop(torch.tanh(self.bn(self.conv(x)))).flatten(1))


def small_cnn(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallCNN(dropout=dropout).double()
    # Non-trivial running statistics, so eval-mode BatchNorm is not the identity.
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def classification_data(n: int, shape, classes: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def moved(model: nn.Module, scale: float, seed: int) -> dict[str, torch.Tensor]:
    """``model``'s state dict, every entry plus ``scale`` times a Gaussian draw seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in model.state_dict().items()}


# Real data for the tests that train: scikit-learn's 1,797 handwritten 8×8 digits (shipped with it, offline).
# The tests own these (examples/models.py serves the examples); same split, shuffling and initialisation.


def digits_tensors(test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``, pixels in [0, 1], shape N×1×8×8, split by a permutation of ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test = order[: int(round(test_fraction * len(y)))]
    train = order[len(test) :]
    return x[train], y[train], x[test], y[test]


def digits_train_loader(batch_size: int = 64, seed: int = 0) -> torch.utils.data.DataLoader:
    """The digits' training split, shuffled by a generator seeded with ``seed``."""
    x, y, _, _ = digits_tensors(seed=seed)
    dataset = torch.utils.data.TensorDataset(x, y)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g)


def digits_mlp(hidden: int = 32, classes: int = 10) -> nn.Module:
    """Flatten, then ``64 → hidden → classes`` with a ReLU."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def digits_cnn(classes: int = 10) -> nn.Module:
    """Two 3×3 convolutions (16, 32 channels) and max-pooling, then ``512 → 64 → classes`` (38,282 parameters).

    Its layers are named ``features.*`` and ``classifier.*``, as per-layer results in the tests expect.
    """
    from collections import OrderedDict

    conv = [nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    head = [nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, classes)]
    return nn.Sequential(OrderedDict(features=nn.Sequential(*conv), classifier=nn.Sequential(*head)))


def full_batch_trainer(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> Engine:
    """An Ignite trainer whose every iteration is one full-batch cross-entropy step of ``optimizer`` on ``(x, y)``."""

    def step(engine: Engine, batch: Any) -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return Engine(step)


def assert_same_tree(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested dicts, lists and tuples; ``path`` names the first difference.

    Tensors and arrays bitwise (same dtype, shape and values, NaN equal to NaN in the same place), floats with
    NaN == NaN, everything else with ``==``.
    """
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        if a.is_floating_point() or a.is_complex():
            nan_a, nan_b = torch.isnan(a), torch.isnan(b)
            assert torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b]), path
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, path


def run_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` from the repository root and check that it exits 0 (the end of stderr if not)."""
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


class TinyEncoder(nn.Module):
    """A one-layer ``nn.TransformerEncoder`` classifier over sequences of 5 tokens of width 3."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def later_instruments(model: nn.Module, probe: Any, optimizer: torch.optim.Optimizer, spectrum: Any) -> list:
    """The handlers of the measures added after the first version, on small settings.

    The overlap reads ``spectrum``; the trajectory keeps at most 4 weights, so it holds all it will before a long
    run's warm-up ends.
    """
    import ignite_landscape as il

    return [
        il.DirectionalCurvature(model, probe, optimizer=optimizer),
        il.BatchSharpness(model, probe, 8, optimizer=optimizer),
        il.GradientOverlap(model, probe, k=2, spectrum=spectrum),
        il.LayerwiseCurvature(model, probe),
        il.GGNOutliers(model, probe, k=2),
        il.GradientStatistics(model, probe),
        il.TrajectoryPlane(model, probe, steps=3, max_points=4),
    ]
