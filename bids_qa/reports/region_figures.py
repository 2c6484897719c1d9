"""Two more figures of a scan report: the montage overview and where the IQMs were measured.

``overview.png`` is one row of three tiles (the middle axial, coronal and sagittal slice of the
head): what the group montage page shows for every scan (a slicesdir-like overview).

``regions.png`` shows the acquisition-plane slices with the masks the IQMs were computed in laid
over them: the tissue classes (CSF-, GM- and WM-like, as named for the contrast), the head and the
air. The masks are the ones the IQM scorer made (:func:`bids_qa.iqms.measured_regions`, on its
analysis grid); when the scan was not scored in this process (a report redrawn from derivatives)
only the loaded volume's head mask, an input of every scorer, is shown. Nothing is computed that
could change a score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bids_qa.reports.figures import (
    THUMB,
    TILE,
    DisplayVolume,
    head_box,
    oriented_slice,
    pick_slices,
    tile_grid,
    to_square_tile,
)

#: Overlay colours (RGB) of the region figure, by label.
REGION_COLOURS = {"csf": (60, 140, 255), "gm": (40, 200, 90), "wm": (255, 150, 30),
                  "head": (255, 230, 60), "air": (200, 60, 200)}
#: Opacity of the tissue colours over the grey image.
ALPHA = 0.38
#: Slices of the region figure (acquisition plane).
N_REGION_SLICES = 4


def write_overview(vol: DisplayVolume, fig_dir: Path, rel_dir: str, size: int = THUMB + 16) -> str:
    """Write ``overview.png`` (axial, coronal, sagittal middle slices of the head) and return its href."""
    from PIL import Image

    box = head_box(vol.mask)
    cropped, cmask = vol.data[box], vol.mask[box]
    tiles = [to_square_tile(*oriented_slice(cropped, vol.zooms, axis, pick_slices(cmask, axis, 1)[0]), size)
             for axis in (2, 1, 0)]
    grid = np.clip(tile_grid(tiles, cols=3), 0.0, 1.0)
    Image.fromarray((grid * 255 + 0.5).astype(np.uint8), mode="L").save(fig_dir / "overview.png", compress_level=4)
    return f"{rel_dir}/overview.png"


def _nearest_tile(labels: np.ndarray, row_mm: float, col_mm: float, size: int) -> np.ndarray:
    """:func:`to_square_tile` for a label image (nearest neighbour, so labels stay labels)."""
    from PIL import Image

    rows, cols = labels.shape
    height_mm, width_mm = rows * row_mm, cols * col_mm
    scale = size / max(height_mm, width_mm, 1e-6)
    h = max(1, min(size, int(round(height_mm * scale))))
    w = max(1, min(size, int(round(width_mm * scale))))
    resized = np.asarray(Image.fromarray(labels.astype(np.uint8), mode="L").resize((w, h), Image.Resampling.NEAREST))
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    out[top:top + h, left:left + w] = resized
    return out


def label_volume(shape: tuple[int, ...], regions: Any | None, head_mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """A label volume at the display grid: 1 air, 2 head, 3.. tissue classes (CSF, GM, WM).

    ``regions`` (:class:`bids_qa.iqms.MeasuredRegions`) lie on the analysis grid (every
    ``stride``-th voxel); each display voxel takes the label of its analysis voxel.
    Returns the labels and the names of labels 1, 2, ...
    """
    if regions is None:
        return head_mask.astype(np.uint8) * 2, ["air", "head"]
    stride = tuple(int(s) for s in regions.stride)
    idx = np.ix_(*[np.minimum(np.arange(n) // s, m - 1) for n, s, m in zip(shape, stride, regions.head.shape, strict=True)])
    small = np.zeros(regions.head.shape, dtype=np.uint8)
    small[regions.air] = 1
    small[regions.head] = 2
    names = ["air", "head"]
    for k, tissue in enumerate(("csf", "gm", "wm")):
        mask = regions.tissues.get(tissue)
        if mask is not None and mask.shape == small.shape:
            small[mask] = 3 + k
        names.append(tissue)
    return small[idx], names


def write_regions_figure(vol: DisplayVolume, fig_dir: Path, rel_dir: str, slice_axis: int,
                         regions: Any | None = None) -> tuple[str, list[str]]:
    """Write ``regions.png``: acquisition-plane slices with the measured regions laid over them.

    Returns its href and the names of the regions drawn (for the caption's legend).
    """
    from PIL import Image

    labels, names = label_volume(vol.data.shape, regions, vol.mask)
    lut = np.zeros((8, 3), dtype=np.float32)
    alpha = np.zeros(8, dtype=np.float32)
    for k, name in enumerate(names, start=1):
        lut[k] = REGION_COLOURS[name]
        alpha[k] = ALPHA if name in ("csf", "gm", "wm") else 0.22 if name == "air" else 0.18
    tiles = []
    for index in pick_slices(vol.mask, slice_axis, N_REGION_SLICES, 0.25, 0.75):
        grey, row_mm, col_mm = oriented_slice(vol.data, vol.zooms, slice_axis, index)
        g = np.clip(to_square_tile(grey, row_mm, col_mm, TILE), 0.0, 1.0)[..., None] * 255
        lab = _nearest_tile(oriented_slice(labels, vol.zooms, slice_axis, index)[0], row_mm, col_mm, TILE)
        a = alpha[lab][..., None]
        tiles.append(g * (1 - a) + lut[lab] * a)
    rgb = np.concatenate([tile_grid([t[..., c] for t in tiles], cols=N_REGION_SLICES)[..., None] for c in range(3)], axis=2)
    Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mode="RGB").save(fig_dir / "regions.png", compress_level=4)
    present = [name for k, name in enumerate(names, start=1) if np.any(labels == k)]
    return f"{rel_dir}/regions.png", present
