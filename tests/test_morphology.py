"""The shift-based cross opening equals scipy's binary_opening, in either memory order."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bids_qa.morphology import dilate_cross, erode_cross, open_cross

CROSS = ndimage.generate_binary_structure(3, 1)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 5, 4), (7, 6, 5), (40, 1, 30), (33, 31, 29)])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("fill", [0.5, 0.85, 0.97])
def test_cross_morphology_matches_scipy(shape, order, fill):
    rng = np.random.default_rng(abs(hash((shape, order, fill))) % 2**32)
    mask = np.asarray(rng.random(shape) < fill, order=order)
    assert np.array_equal(erode_cross(mask), ndimage.binary_erosion(mask, structure=CROSS))
    assert np.array_equal(dilate_cross(mask), ndimage.binary_dilation(mask, structure=CROSS))
    opened = open_cross(mask)
    assert np.array_equal(opened, ndimage.binary_opening(mask, structure=CROSS))
    assert opened.dtype == bool and opened.flags.f_contiguous == mask.flags.f_contiguous


def test_opening_of_a_head_like_mask_keeps_the_ball_and_drops_specks():
    z, y, x = np.mgrid[:40, :40, :40]
    ball = (z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 < 12**2
    mask = ball.copy()
    mask[2, 2, 2] = mask[35, 3, 30] = True  # isolated specks
    opened = open_cross(mask)
    assert not opened[2, 2, 2] and not opened[35, 3, 30]
    assert np.array_equal(opened, ndimage.binary_opening(mask, structure=CROSS))
    assert opened.sum() > 0.97 * ball.sum()
