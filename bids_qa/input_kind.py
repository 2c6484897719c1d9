"""What kind of input a scan is: raw from the scanner, or already processed.

Facts computed from the loaded volume (no registration): whether the background is exact zeros
(zero-filled, skull-stripped), whether the face was removed (defaced), and whether the grid is a
standard template or conformed grid (MNI 182x218x182 1 mm, 193x229x193, 256^3 1 mm, ...). They
matter for the verdict in two ways (:func:`bids_qa.thresholds.judge`):

- metrics that need air around the head (EFC, FBER, Dietrich SNR, CNR, QI1, air summaries) are
  not applicable where the air was zeroed: they are not judged, and the scan says why;
- the flow model's reference holds unprocessed heads, so its outlier flag on a processed image is
  explained by the processing: a note, not a review. The other models still judge artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

#: Standard grids (shape, voxel mm) of templates and conforming tools.
STANDARD_GRIDS = {
    (182, 218, 182): (1.0, "MNI152 1 mm (FSL)"),
    (91, 109, 91): (2.0, "MNI152 2 mm (FSL)"),
    (193, 229, 193): (1.0, "MNI152 2009 1 mm"),
    (197, 233, 189): (1.0, "MNI152 2009c 1 mm"),
    (256, 256, 256): (1.0, "conformed 256^3 1 mm (FreeSurfer)"),
}
#: Share of the background (outside the dilated head) that must be exact zeros for "zero-filled".
ZERO_BACKGROUND_SHARE = 0.9
#: Volumes larger than this (voxels) are described on every 2nd voxel per axis (8x fewer).
SUBSAMPLE_ABOVE = 2_000_000
#: Head volume (litres) below which a zero-background image holds a brain without scalp and skull.
BRAIN_ONLY_LITRES = 2.0
#: Share of exact zeros in the anterior-inferior background that marks a removed face.
DEFACE_ZERO_SHARE = 0.5
#: Metrics that need a real air background (prefixes of ``<model>.<metric>`` keys).
BACKGROUND_METRICS = (
    "iqm.efc",
    "iqm.fber",
    "iqm.snrd_",
    "iqm.cnr",
    "iqm.qi1",
    "iqm.summary_air_",
)


@dataclass
class InputKind:
    """Facts about the input (all JSON-ready)."""

    zero_background_share: float
    head_litres: float
    skull_stripped: bool
    zero_filled: bool
    defaced: bool
    standard_grid: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def processed(self) -> bool:
        return self.skull_stripped or self.zero_filled or self.standard_grid is not None

    @property
    def background_applicable(self) -> bool:
        return not (self.skull_stripped or self.zero_filled)

    def as_dict(self) -> dict[str, Any]:
        return {
            "zero_background_share": round(self.zero_background_share, 4),
            "head_litres": round(self.head_litres, 3),
            "skull_stripped": self.skull_stripped,
            "zero_filled": self.zero_filled,
            "defaced": self.defaced,
            "standard_grid": self.standard_grid,
            "processed": self.processed,
            "background_metrics_applicable": self.background_applicable,
        }


def is_background_metric(key: str) -> bool:
    return any(key.startswith(p) if p.endswith("_") else key == p for p in BACKGROUND_METRICS)


def _standard_grid(shape: tuple[int, ...], zooms: tuple[float, ...]) -> str | None:
    found = STANDARD_GRIDS.get(tuple(int(s) for s in shape))
    if found is None:
        return None
    mm, name = found
    return name if all(abs(z - mm) < 0.05 for z in zooms) else None


def describe(raw: np.ndarray, mask: np.ndarray, zooms: tuple[float, ...]) -> InputKind:
    """Facts about a canonical (RAS) volume: ``raw`` intensities, ``mask`` the head."""
    zooms = tuple(float(z) for z in zooms)
    head = np.asarray(mask, dtype=bool)
    grid = _standard_grid(raw.shape, zooms)  # on the full grid, before any subsampling
    if raw.size > SUBSAMPLE_ABOVE:  # shares and volumes: every 2nd voxel per axis is plenty
        raw, head = raw[::2, ::2, ::2], head[::2, ::2, ::2]
        zooms = tuple(2.0 * z for z in zooms)
    radius = [max(1, int(round(5.0 / z))) for z in zooms]
    # a box dilation, separable (maximum_filter with a size runs one 1D pass per axis)
    grown = ndimage.maximum_filter(head.view(np.uint8), size=[2 * r + 1 for r in radius]) > 0
    background = ~grown
    zero = raw == 0
    n_background = int(np.count_nonzero(background))
    share = np.count_nonzero(zero & background) / n_background if n_background else 0.0
    # the non-zero volume, not the Otsu head mask (which leaves out dark scalp and skull)
    litres = float((raw != 0).sum() * np.prod(zooms) / 1e6)
    zero_bg = share >= ZERO_BACKGROUND_SHARE
    skull_stripped = bool(zero_bg and 0 < litres < BRAIN_ONLY_LITRES)
    defaced = False
    if head.any() and not zero_bg:
        # the head's bounding box from its axis projections (np.argwhere would list every voxel)
        spans = [np.flatnonzero(head.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
        lo = np.array([sp[0] for sp in spans])
        hi = np.array([sp[-1] + 1 for sp in spans])
        mid_y = (lo[1] + hi[1]) // 2
        mid_z = (lo[2] + hi[2]) // 2
        box = (slice(lo[0], hi[0]), slice(mid_y, hi[1]), slice(lo[2], mid_z))
        front = background[box]
        if front.sum() > 100:
            defaced = bool(zero[box][front].mean() >= DEFACE_ZERO_SHARE)
    notes = []
    if skull_stripped:
        notes.append(
            f"skull-stripped input: {100 * share:.0f}% of the background is exact zeros and the "
            f"non-zero region holds {litres:.2f} l (a brain without scalp and skull)"
        )
    elif zero_bg:
        notes.append(f"zero-filled background: {100 * share:.0f}% of the background is exact zeros")
    if defaced:
        notes.append("defaced input: the background in front of and below the face is exact zeros")
    if grid:
        notes.append(f"registered or conformed grid: {grid}")
    if zero_bg:
        notes.append(
            "metrics that need air around the head (EFC, FBER, Dietrich SNR, CNR, QI1) are not "
            "applicable and not judged"
        )
    return InputKind(share, litres, skull_stripped, zero_bg and not skull_stripped, defaced, grid, notes)


def describe_volume(volume: Any) -> InputKind | None:
    """:func:`describe` for a loaded :class:`~bids_qa.volume.Volume` (None when it cannot),
    cached on the volume: the loader thread computes it (:func:`bids_qa.loading.prepare_loaded`),
    so the judge in the inference thread only reads it."""

    def compute() -> InputKind | None:
        try:
            return describe(np.asarray(volume.raw), np.asarray(volume.mask), tuple(volume.zooms))
        except Exception:  # a fact we cannot compute must never stop the verdict
            return None

    view = getattr(volume, "view", None)
    return view(("input_kind",), compute) if callable(view) else compute()
