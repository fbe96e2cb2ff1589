"""Ground truth for the tests: dense Hessians in float64 and small models."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


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
