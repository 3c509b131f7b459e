"""Plots: the image grid's layout and its errors on bad input."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from sklearn_gpa.plotting import plot_history, plot_images, plot_particles_3d, plot_trajectories


def test_image_grid_tiles_rows_in_order_and_leaves_input_alone():
    X = np.arange(3 * 4, dtype=float).reshape(3, 4)
    before = X.copy()
    mosaic = plot_images(X, (2, 2), n_cols=2).images[0].get_array()
    assert mosaic.shape == (5, 5)
    np.testing.assert_array_equal(mosaic[:2, 3:], X[1].reshape(2, 2))
    np.testing.assert_array_equal(mosaic[3:, :2], X[2].reshape(2, 2))
    np.testing.assert_array_equal(X, before)


@pytest.mark.parametrize(
    "X, shape, message",
    [
        (np.zeros((0, 4)), (2, 2), "n_images >= 1"),
        (np.zeros((3, 5)), (2, 2), r"shape \(n_images >= 1, 4\)"),
        (np.zeros(4), (2, 2), "must have shape"),
        (np.zeros((3, 4)), (1, 2, 2), r"image_shape must be \(height, width\)"),
    ],
)
def test_image_grid_names_bad_input(X, shape, message):
    with pytest.raises(ValueError, match=message):
        plot_images(X, shape)


@pytest.mark.parametrize(
    "plot, kwargs, name",
    [
        (plot_images, {"X": np.zeros((2, 4)), "image_shape": (2, 2), "n_cols": 0}, "n_cols"),
        (plot_images, {"X": np.zeros((2, 4)), "image_shape": (2, 2), "vmin": np.nan}, "vmin"),
        (
            plot_particles_3d,
            {"target": np.zeros((2, 3)), "moved": np.zeros((2, 3)), "size": -1},
            "size",
        ),
        (plot_trajectories, {"path": np.zeros((2, 3, 2)), "max_paths": 2.5}, "max_paths"),
        (plot_history, {"history": {"divergence": [1.0]}, "log": "yes"}, "log"),
    ],
)
def test_plots_name_bad_options(plot, kwargs, name):
    with pytest.raises(ValueError, match=f"The '{name}' parameter of {plot.__name__} must be"):
        plot(**kwargs)


def test_plot_history_names_a_missing_series():
    with pytest.raises(ValueError, match="history has no 'divergence' series; its keys are"):
        plot_history({"kinetic_energy": [1.0, 0.5]}, key="divergence")


@pytest.mark.parametrize(
    "target, moved, dims, message",
    [
        (np.zeros((4, 3)), np.zeros((4, 3)), (0, 7), r"from 0 to 2 \(the rows have 3 features\)"),
        (np.zeros((4, 1)), np.zeros((4, 1)), (0, 1), r"from 0 to 0 \(the rows have 1 features\)"),
        (np.zeros((4, 3)), np.zeros((4, 2)), (0, 1), "different numbers of features"),
        (np.zeros(4), np.zeros(4), (0, 1), "Expected 2D array, got 1D array"),
    ],
)
def test_particle_plots_name_bad_rows_and_dims(target, moved, dims, message):
    # A dimension beyond the rows was a bare IndexError (a KeyError for DataFrames).
    from sklearn_gpa.plotting import plot_particles

    with pytest.raises(ValueError, match=message):
        plot_particles(target, moved, dims=dims)
