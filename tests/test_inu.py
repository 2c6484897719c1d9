"""The INU measure (bids_qa.inu) on a two-tissue phantom with a known smooth field."""

import numpy as np
import pytest

from bids_qa.inu import direction_name, estimate_inu


def phantom(shape=(72, 80, 64)):
    """Ellipsoidal head: scalp-free 'GM' shell (0.6) around 'WM' (1.0), some texture."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt(((grid / np.array([0.85, 0.85, 0.8])[:, None, None, None]) ** 2).sum(0))
    img = np.where(r < 1.0, 0.6, 0.0) + np.where(r < 0.7, 0.4, 0.0)
    img = img * (1 + 0.02 * np.random.default_rng(0).standard_normal(shape))
    return img.astype(np.float32), r < 1.0, r < 0.95, grid


def true_field(grid, strength):
    x, y, z = grid
    return np.exp(strength * (0.8 * z - 0.5 * x + 0.3 * x * z - 0.4 * y**2))


def test_recovers_known_field():
    img, head, tissue, grid = phantom()
    b = true_field(grid, 0.3)
    est = estimate_inu(img * b, head, tissue, (1.0, 1.0, 1.0))
    truth = b[tuple(est.points.T)]
    truth = truth / truth.mean()
    assert np.corrcoef(est.field, truth)[0, 1] > 0.9
    true_range = float(np.subtract(*np.percentile(truth, [95, 5])))
    assert est.range == pytest.approx(true_range, rel=0.2)
    assert est.direction.startswith("superior")  # the field rises with +z (RAS: superior)


def test_flat_on_clean_phantom():
    img, head, tissue, _ = phantom()
    est = estimate_inu(img, head, tissue, (1.0, 1.0, 1.0))
    assert est.range < 0.05 and est.cv < 0.02


def test_rises_monotonically_with_strength():
    img, head, tissue, grid = phantom()
    ranges = [
        estimate_inu(img * true_field(grid, s), head, tissue, (1.0, 1.0, 1.0)).range
        for s in (0.0, 0.1, 0.2, 0.35, 0.5)
    ]
    assert np.all(np.diff(ranges) > 0), ranges


def test_direction_names():
    assert direction_name(np.array([-1.0, 0.1, 1.2])) == "superior-left"
    assert direction_name(np.array([0.0, 2.0, 0.0])) == "anterior"
    assert "flat" in direction_name(np.zeros(3))


def test_too_few_voxels_is_an_error():
    img = np.ones((8, 8, 8), np.float32)
    small = np.zeros_like(img, dtype=bool)
    with pytest.raises(ValueError):
        estimate_inu(img, small, small, (1.0, 1.0, 1.0))
