"""plots.py draws Curve objects: the data on every figure's axes equals the curve it was given."""

from __future__ import annotations

import numpy as np
import pytest

from ignite_landscape import plots
from ignite_landscape.results import Curve


def lines_of(ax) -> list[np.ndarray]:
    return [np.asarray(line.get_ydata(), dtype=np.float64) for line in ax.get_lines() if len(line.get_xdata()) > 2]


def test_loss_scale_is_log10_of_a_positive_grid_and_the_loss_otherwise():
    z = np.array([[1.0, 10.0], [1e3, np.inf]])
    shown, label = plots.loss_scale(z)
    assert label == "log10 loss"
    np.testing.assert_allclose(shown, [[0.0, 1.0], [3.0, 3.0]])  # inf clipped to the largest finite value
    shown, label = plots.loss_scale(np.array([[-1.0, 2.0]]))
    assert label == "loss" and shown.tolist() == [[-1.0, 2.0]]
    assert plots.loss_scale(z, log_scale=False)[1] == "loss"


def test_line_figure_draws_each_series_of_every_firing_the_current_one_last():
    x = np.linspace(-1, 1, 7)
    old = Curve("line", x=x, y=1 + x**2, extra={"accuracy": 0.9 - x**2 / 10}, overlay=True, xlabel="t")
    new = Curve("line", x=x, y=2 + x**2, extra={"accuracy": 0.8 - x**2 / 10, "barrier": 0.25}, overlay=True)
    fig = plots.line_figure([("epoch 1", old), ("epoch 2", new)], title="slice")
    loss_ax, acc_ax = fig.axes
    np.testing.assert_allclose(lines_of(loss_ax)[0], old.y)
    np.testing.assert_allclose(lines_of(loss_ax)[1], new.y)
    np.testing.assert_allclose(lines_of(acc_ax)[1], new.extra["accuracy"])
    assert loss_ax.get_lines()[1].get_color() == "C3" and loss_ax.get_lines()[1].get_alpha() == 1.0
    assert loss_ax.get_lines()[0].get_alpha() < 1.0
    assert "barrier 0.25" in loss_ax.get_title()  # one-number extras go to the title
    assert acc_ax.get_ylabel() == "accuracy"


def test_line_figure_puts_a_density_spanning_decades_on_a_log_axis():
    x = np.linspace(-5, 5, 101)
    density = Curve("line", x=x, y=np.exp(-(x**2)))  # spans ~11 decades
    ax = plots.line_figure([("", density)]).axes[0]
    assert ax.get_yscale() == "log"
    np.testing.assert_allclose(lines_of(ax)[0], np.maximum(np.exp(-(x**2)), 1e-8))  # floored at 1e-8 of the peak
    assert plots.line_figure([("", Curve("line", x=x, y=1 + x**2))]).axes[0].get_yscale() == "linear"


def test_grid_contour_and_surface_use_the_one_colour_convention():
    x, y = np.linspace(-1, 1, 5), np.linspace(-2, 2, 4)
    z = 1 + x[:, None] ** 2 + y[None, :] ** 2
    grid = Curve("grid", x=x, y=y, z=z)
    fig = plots.grid_contour_figure(grid, title="plane")
    assert fig.axes[1].get_ylabel() == "log10 loss"  # the colour bar
    # The contour levels span log10 of the grid (x along the first index).
    filled = fig.axes[0].collections[0]
    assert filled.levels.min() <= np.log10(z.min()) < filled.levels[1]
    assert filled.levels[-2] < np.log10(z.max()) <= filled.levels.max()
    surface = plots.grid_surface_figure(grid)
    assert surface.axes[0].get_zlabel() == "log10 loss"


def test_path_figure_draws_the_path_and_names_the_principal_components():
    x = y = np.linspace(-1, 1, 5)
    path = Curve(
        "path",
        x=x,
        y=y,
        z=1 + x[:, None] ** 2 + y[None, :] ** 2,
        extra={"path_x": [-0.8, -0.3, 0.0], "path_y": [0.5, 0.1, 0.0], "explained_variance": [0.9, 0.07]},
    )
    ax = plots.path_figure(path).axes[0]
    (drawn,) = [ln for ln in ax.get_lines() if ln.get_label() == "path"]
    assert drawn.get_xdata().tolist() == [-0.8, -0.3, 0.0] and drawn.get_ydata().tolist() == [0.5, 0.1, 0.0]
    assert ax.get_xlabel().startswith("PC1 (90.0%")


def test_bars_heatmap_stacks_firings_as_columns_and_drops_other_layers():
    a = Curve("bars", y=[1.0, -9.0], labels=("fc1", "fc2"), ylabel="trace")
    b = Curve("bars", y=[99.0, 0.0], labels=("fc1", "fc2"), ylabel="trace")
    other = Curve("bars", y=[5.0], labels=("conv",))
    fig = plots.bars_heatmap_figure([("epoch 0", other), ("epoch 1", a), ("epoch 2", b)], title="trace per layer")
    image = fig.axes[0].get_images()[0].get_array()
    expected = np.array([[np.log10(2.0), 2.0], [-1.0, 0.0]])  # sign·log10(1+|v|), layers × firings
    np.testing.assert_allclose(np.asarray(image), expected, atol=1e-12)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["epoch 1", "epoch 2"]
    assert "trace" in fig.axes[1].get_ylabel()


def test_histogram_figure_weights_the_samples():
    h = Curve("histogram", x=[1.0, 2.0, 2.0, np.nan], y=[10.0, 1.0, 2.0, 5.0])
    ax = plots.histogram_figure(h, bins=4).axes[0]
    assert sum(p.get_height() for p in ax.patches) == pytest.approx(13.0)  # the NaN sample is left out


def test_figures_refuse_curves_of_another_kind():
    grid = Curve("grid", x=[0.0, 1.0], y=[0.0, 1.0], z=[[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="line"):
        plots.line_figure([("", grid)])
    with pytest.raises(ValueError, match="at least one"):
        plots.line_figure([])
    with pytest.raises(ValueError, match="bars"):
        plots.bars_heatmap_figure([("", grid)])


def test_finite_grid_converts_a_tensor_without_a_numpy_warning_and_leaves_it_as_it_was():
    import warnings

    import torch

    t = torch.tensor([[1.0, float("inf")], [float("nan"), 4.0]], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = plots.finite_grid(t)
    assert z.dtype == np.float64
    np.testing.assert_array_equal(z, [[1.0, 4.0], [4.0, 4.0]])
    assert torch.isinf(t[0, 1]) and torch.isnan(t[1, 0])  # the caller's tensor is not overwritten
