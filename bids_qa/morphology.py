"""Binary opening with the 6-connected cross, by array shifts.

Why not ``scipy.ndimage.binary_opening``: its generic structuring-element loop takes about 50 ms
per opening of a 128 x 128 x 88 mask on this project's 2-core machine, and the IQMs and the load
stage open three masks per scan. With the cross, erosion is the AND of a voxel and its six
neighbours and dilation their OR, seven shifted boolean operations each; the result is identical to
scipy's (``border_value=0``: voxels outside the array count as background), which
``tests/test_morphology.py`` checks on random and real-shaped masks.
"""

from __future__ import annotations

import numpy as np


def _shift_reduce(mask: np.ndarray, erode: bool) -> np.ndarray:
    out = mask.copy(order="K")
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        lo_t, hi_t = tuple(lo), tuple(hi)
        if erode:
            out[hi_t] &= mask[lo_t]
            out[lo_t] &= mask[hi_t]
            edge = [slice(None)] * mask.ndim
            for index in (0, -1):
                edge[axis] = index  # type: ignore[call-overload]
                out[tuple(edge)] = False
        else:
            out[hi_t] |= mask[lo_t]
            out[lo_t] |= mask[hi_t]
    return out


def erode_cross(mask: np.ndarray) -> np.ndarray:
    """Erosion by the 6-connected cross; the array border counts as background."""
    return _shift_reduce(np.asarray(mask, dtype=bool), erode=True)


def dilate_cross(mask: np.ndarray) -> np.ndarray:
    """Dilation by the 6-connected cross."""
    return _shift_reduce(np.asarray(mask, dtype=bool), erode=False)


def open_cross(mask: np.ndarray) -> np.ndarray:
    """Opening (erosion, then dilation) by the 6-connected cross, in ``mask``'s memory order."""
    return dilate_cross(erode_cross(mask))
