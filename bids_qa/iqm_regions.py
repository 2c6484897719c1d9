"""Where the classical IQMs are measured: the analysis grid, the frame of zero-filled border
voxels, the head and air masks (robust-range threshold, no registration) and three intensity
classes of the eroded head named by the contrast's tissue order.

The head mask here is not :func:`bids_qa.volume.head_mask` (Otsu), which the models' intensity
normalisation uses: each is kept because the shipped IQMs and the shipped weights were computed
with it (see :func:`head_threshold` for why Otsu was rejected for the IQMs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bids_qa.iqm_formulas import CROSS
from bids_qa.morphology import open_cross

#: Volumes with more voxels are analysed on a regular stride (see :func:`analysis_stride`).
MAX_ANALYSIS_VOXELS = 2_000_000
#: Head threshold as a fraction of the 2nd-98th percentile range (see :func:`head_threshold`).
HEAD_THRESHOLD_FRACTION = 0.1
#: Gap (mm) between the head and the air region, so the blurred head edge is not counted as air.
AIR_MARGIN_MM = 5.0
#: Erosion (mm) of the head before tissue clustering: removes scalp, skull and the air rim.
TISSUE_EROSION_MM = 10.0
#: Fewest voxels (on the analysis grid) an air region or tissue class needs to be measured.
MIN_REGION_VOXELS = 100
#: Tissue names of the three intensity classes, darkest first, per BIDS suffix. In T1w
#: CSF < GM < WM; in T2w, PDw and T2starw WM < GM < CSF; in FLAIR the CSF is nulled, so
#: CSF < WM < GM. Unknown suffixes use the T1w order and say so in ``tissue_order``.
TISSUE_ORDER: dict[str, tuple[str, str, str]] = {
    "T1w": ("csf", "gm", "wm"),
    "UNIT1": ("csf", "gm", "wm"),
    "T2w": ("wm", "gm", "csf"),
    "PDw": ("wm", "gm", "csf"),
    "PD": ("wm", "gm", "csf"),
    "T2starw": ("wm", "gm", "csf"),
    "T2star": ("wm", "gm", "csf"),
    "FLAIR": ("csf", "wm", "gm"),
}
DEFAULT_CONTRAST = "T1w"
TISSUES = ("csf", "gm", "wm")
SUMMARY_REGIONS = ("csf", "gm", "wm", "air")



def analysis_stride(
    shape: tuple[int, ...], zooms: tuple[float, ...], max_voxels: int = MAX_ANALYSIS_VOXELS
) -> tuple[int, int, int]:
    """Per-axis stride that brings the volume under ``max_voxels`` with near-isotropic spacing.

    Thin axes are strided first, so a 0.5x0.5x4 mm clinical scan keeps every slice (stride
    (2, 2, 1)) and a 1 mm 256x256x176 volume becomes 128x128x88 (stride 2).
    """
    if int(np.prod(shape)) <= max_voxels:
        return (1, 1, 1)
    zmin = min(zooms)
    factor = 1.5
    while True:
        # The tolerance keeps 0.66667 vs 0.666670 mm header noise from changing the stride.
        stride = tuple(max(1, int(factor * zmin / z + 1e-3)) for z in zooms)
        n = int(np.prod([math.ceil(s / k) for s, k in zip(shape, stride, strict=True)]))
        if n <= max_voxels:
            return stride  # type: ignore[return-value]
        factor += 0.5


def frame_mask(img: np.ndarray) -> np.ndarray:
    """Exact zeros connected (6-neighbourhood) to the array border: padding, not measurement.

    Zero-valued voxels inside the air (quantised noise) are kept, because they do not touch the
    border as one connected block.
    """
    zero = img == 0
    if not zero.any():
        return zero
    labels, n = ndimage.label(zero, structure=CROSS)
    faces = [labels.take(i, axis=a).ravel() for a in range(3) for i in (0, -1)]
    lut = np.zeros(n + 1, dtype=bool)
    lut[np.concatenate(faces)] = True
    lut[0] = False
    return lut[labels]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (empty stays empty)."""
    labels, n = ndimage.label(mask, structure=CROSS)
    if n <= 1:
        return labels > 0
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def fill_holes_in_planes(mask: np.ndarray, axis: int = 2) -> np.ndarray:
    """Fill every hole of ``mask`` in each plane perpendicular to ``axis``.

    A background component of a plane is a hole when it does not reach the plane's edge. This
    closes dark interiors that are open in 3D but enclosed in-plane (sinuses, mouth) as well as
    fully enclosed ones (ventricles).
    """
    struct = np.zeros((3, 3, 3), dtype=bool)
    struct[1, 1, 1] = True
    for a in range(3):
        if a != axis:
            idx = [1, 1, 1]
            for i in (0, 2):
                idx[a] = i
                struct[tuple(idx)] = True
    labels, n = ndimage.label(~mask, structure=struct)
    if n == 0:
        return mask.copy()
    hole = np.ones(n + 1, dtype=bool)
    hole[0] = False
    for a in range(3):
        if a != axis:
            for i in (0, -1):
                hole[labels.take(i, axis=a).ravel()] = False
    return mask | hole[labels]


def _radii(zooms: tuple[float, ...], mm: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(mm / z))) for z in zooms)


def dilate_box(mask: np.ndarray, radii: tuple[int, ...]) -> np.ndarray:
    """Dilation by a box of half-widths ``radii`` (voxels per axis); separable, hence fast."""
    out = mask.view(np.uint8)
    for axis, r in enumerate(radii):
        if r > 0:
            out = ndimage.maximum_filter1d(out, 2 * r + 1, axis=axis, mode="constant", cval=0)
    return out.astype(bool)


def erode_box(mask: np.ndarray, radii: tuple[int, ...]) -> np.ndarray:
    """Erosion by a box of half-widths ``radii``. The array edge does not erode (``nearest``):
    a head cut by the field of view keeps its cut face."""
    out = mask.view(np.uint8)
    for axis, r in enumerate(radii):
        if r > 0:
            out = ndimage.minimum_filter1d(out, 2 * r + 1, axis=axis, mode="nearest")
    return out.astype(bool)


@dataclass(frozen=True)
class Regions:
    """Head, air and frame masks on one grid, and the threshold that made the head."""

    head: np.ndarray
    air: np.ndarray
    frame: np.ndarray
    threshold: float


def head_threshold(img: np.ndarray, fraction: float = HEAD_THRESHOLD_FRACTION) -> float:
    """Intensity separating head from air: ``p2 + fraction * (p98 - p2)`` of the image.

    The robust-range rule of FSL BET (Smith 2002, doi:10.1002/hbm.10062). Otsu's threshold was
    tried first and rejected: on whole-head images it splits dark tissue (CSF, skull, T1w grey
    matter) from bright tissue rather than head from air, leaving a ragged head mask. Percentiles
    (on a regular subsample of about 200k voxels) ignore a few hot voxels.
    """
    step = max(1, int(round((img.size / 2e5) ** (1 / 3))))
    sample = np.asarray(img)[::step, ::step, ::step].ravel()
    p2, p98 = np.percentile(sample, [2, 98])
    return float(p2 + fraction * (p98 - p2))


def head_air_masks(
    img: np.ndarray,
    zooms: tuple[float, ...] = (1.0, 1.0, 1.0),
    fill_axis: int = 2,
    margin_mm: float = AIR_MARGIN_MM,
) -> Regions:
    """Head and air masks of a magnitude image, computed in-process (no registration).

    Parameters
    ----------
    img
        3D image (raw intensities).
    zooms
        Voxel sizes of ``img`` in mm (after any striding), used for the air margin.
    fill_axis
        Holes are filled in the planes perpendicular to this axis (the acquisition axis).
    margin_mm
        Gap between the head and the air region.

    Returns
    -------
    Regions
        ``head``: voxels above :func:`head_threshold` (robust-range rule), opened once with
        the 6-connected cross, largest component, holes filled per plane. ``air``: outside the head dilated by ``margin_mm`` (box), minus ``frame``, the
        exact zeros touching the border.
    """
    img = np.asarray(img)
    frame = frame_mask(img)
    threshold = head_threshold(img)
    head = img > threshold
    head = open_cross(head)
    head = largest_component(head)
    head = fill_holes_in_planes(head, axis=fill_axis)
    air = ~dilate_box(head, _radii(zooms, margin_mm)) & ~frame
    return Regions(head=head, air=air, frame=frame, threshold=float(threshold))


def kmeans_1d(values: np.ndarray, n_classes: int = 3, max_iter: int = 200) -> np.ndarray:
    """Exact 1D k-means (Lloyd) centroids, ascending.

    In 1D each class is an interval between midpoints of neighbouring centroids, so after one
    sort every iteration costs ``n_classes`` binary searches and prefix-sum lookups. Initialised
    deterministically at the quantiles (2i+1)/(2k); iterated until no centroid moves.
    """
    v = np.sort(np.asarray(values).ravel()).astype(np.float64)
    if v.size == 0:
        raise ValueError("kmeans_1d needs at least one value")
    csum = np.concatenate([[0.0], np.cumsum(v)])
    q = (2 * np.arange(n_classes) + 1) / (2 * n_classes)
    centroids = v[np.minimum((q * v.size).astype(np.intp), v.size - 1)]
    for _ in range(max_iter):
        bounds = (centroids[:-1] + centroids[1:]) / 2
        idx = np.concatenate([[0], np.searchsorted(v, bounds, side="right"), [v.size]])
        counts = np.diff(idx)
        sums = csum[idx[1:]] - csum[idx[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(new, centroids):
            break
        centroids = new
    return np.sort(centroids)


def tissue_region(
    img: np.ndarray,
    regions: Regions,
    zooms: tuple[float, ...],
    erosion_mm: float = TISSUE_EROSION_MM,
) -> np.ndarray:
    """Where tissue classes are fitted: the head eroded by ``erosion_mm``, without the filled
    holes that are darker than the head threshold (sinuses, air pockets, signal voids).

    The erosion strips scalp, skull and the partial-volume rim with air. If too little is left
    (small head, tight field of view, thin slab), the uneroded head is used.
    """
    region = erode_box(regions.head, _radii(zooms, erosion_mm)) & (img > regions.threshold)
    if np.count_nonzero(region) < 10 * MIN_REGION_VOXELS:
        region = regions.head & (img > regions.threshold)
    return region


@dataclass(frozen=True)
class TissueClasses:
    """Three intensity classes of the head named as tissues for one contrast.

    Attributes
    ----------
    masks
        ``{"csf": mask, "gm": mask, "wm": mask}`` on the image grid.
    centroids
        Class means (k-means centroids), darkest first.
    order
        Tissue names darkest first, e.g. ``("csf", "gm", "wm")`` for T1w.
    contrast
        The suffix whose order was used; ``assumed`` is True when it was not given or not known.
    """

    masks: dict[str, np.ndarray]
    centroids: tuple[float, ...]
    order: tuple[str, str, str]
    contrast: str
    assumed: bool = field(default=False)

    @property
    def order_text(self) -> str:
        text = "<".join(self.order)
        return f"{text} (assumed: contrast not given)" if self.assumed else text


def tissue_classes(
    img: np.ndarray,
    region: np.ndarray,
    suffix: str | None = None,
    max_samples: int = 200_000,
) -> TissueClasses:
    """Split ``region`` into three intensity classes and name them CSF/GM/WM-like for ``suffix``.

    Parameters
    ----------
    img
        Image.
    region
        Where to cluster (the scorer passes the eroded head).
    suffix
        BIDS suffix (``T1w``, ``T2w``, ``PDw``, ``T2starw``, ``FLAIR``, ...); see
        :data:`TISSUE_ORDER`. Unknown or None: T1w order, flagged ``assumed``.
    max_samples
        The centroids are fitted on at most this many values (a regular stride through the
        region); every voxel is then assigned to the nearest centroid.

    Notes
    -----
    Plain intensity k-means without bias correction, spatial priors or partial-volume modelling:
    the classes are "tissue-like". The WM-like class of a T1w head also holds fat and the brightest
    vessels; a strong bias field shifts voxels between classes, which also inflates CJV.
    """
    region = np.asarray(region, bool)
    contrast = suffix if suffix in TISSUE_ORDER else DEFAULT_CONTRAST
    order = TISSUE_ORDER[contrast]
    vals = img[region]
    if vals.size == 0:
        empty = np.zeros(img.shape, dtype=bool)
        return TissueClasses(
            {t: empty for t in TISSUES}, (math.nan,) * 3, order, contrast, contrast != suffix
        )
    step = max(1, vals.size // max_samples)
    centroids = kmeans_1d(vals[::step], 3)
    b1, b2 = (centroids[:-1] + centroids[1:]) / 2
    ranked = [region & (img <= b1), region & (img > b1) & (img <= b2), region & (img > b2)]
    masks = {name: ranked[i] for i, name in enumerate(order)}
    return TissueClasses(
        masks, tuple(float(c) for c in centroids), order, contrast, contrast != suffix
    )
