"""Models and data shared by the examples and benchmarks (the tests have their own, in tests/helpers.py).

``load_digits`` is real data (8×8 handwritten digits) shipped inside scikit-learn, so everything
here runs offline.

Example:
    >>> x_train, y_train, x_test, y_test = digits_tensors()
    >>> x_train.shape[1:], int(y_train.max())
    (torch.Size([1, 8, 8]), 9)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "DigitsMLP", "digits_tensors", "digits_loaders"]


class DigitsCNN(nn.Module):
    """A small CNN for 1×8×8 digits: about 38k parameters (about 38k plus 96 with BatchNorm)."""

    def __init__(self, batch_norm: bool = False, num_classes: int = 10) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            norm(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            norm(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsMLP(nn.Module):
    """A two-layer MLP for flattened 8×8 digits."""

    def __init__(self, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def digits_tensors(test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)`` of scikit-learn's digits, scaled to [0, 1], shape N×1×8×8.

    The split is a fixed permutation drawn from ``seed`` with a private generator.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def digits_loaders(
    batch_size: int = 64, seed: int = 0, test_fraction: float = 0.2
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Train (shuffled with a generator seeded by ``seed``) and test DataLoaders over the digits."""
    x_train, y_train, x_test, y_test = digits_tensors(test_fraction, seed)
    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train, y_train),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_test, y_test), batch_size=256)
    return train, test
