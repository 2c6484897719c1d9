"""A fast estimate of intensity non-uniformity (INU, the coil's bias field) from one scan.

A bias field multiplies the image by a smooth positive field ``b(x)``, so it adds ``log b(x)`` to
the log intensities. Inside one tissue the rest of the log intensity is nearly constant, so a
smooth function fitted to the log intensities of tissue voxels recovers ``log b`` up to a constant.
Here:

1. the tissue voxels (the two brightest intensity classes of the IQM scorer's three, i.e. WM+GM
   on T1w, CSF+GM on T2w) are taken on a grid of about :data:`GRID_MM` mm;
2. ``log I = o_class + sum_k c_k P_k(x) + r`` is fitted by least squares, with one offset per class
   and the monomials ``P_k`` of degree 1..:data:`DEGREE` in the coordinates scaled to [-1, 1] over
   the head's bounding box;
3. robustly: twice more on the voxels whose residual lies within :data:`TRIM_SIGMAS` robust
   standard deviations (1.4826 MAD), which drops lesions, vessels, partial volume and misclassified
   voxels;
4. the field ``b = exp(sum_k c_k P_k)`` is evaluated on the head, divided by its mean there.

Reported (names follow MRIQC's ``inu_*``): ``inu_range`` = 95th - 5th percentile of ``b`` in the
head (0 = flat; MRIQC reports the same percentile span of N4's field), ``inu_cv`` = SD / mean of
``b`` in the head, and ``inu_direction``: where ``b`` is strongest, as seen from the head centre
(e.g. ``superior-left``), in the canonical RAS axes of :class:`bids_qa.volume.Volume`.

Limits: a degree-2 polynomial cannot follow fields that change faster than about a third of the
head (e.g. surface-coil hot spots); natural anatomy that varies smoothly in intensity (the T1w
white matter brightens towards the vertex on many scanners) is read as field; tissue classes
are intensity classes, so a very strong field (log range above the class spacing) mixes them and
the estimate saturates. The measure needs no clean reference and costs a few milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from itertools import combinations_with_replacement

import numpy as np

GRID_MM = 4.0
DEGREE = 2
TRIM_SIGMAS = 2.5
ROBUST_ITERATIONS = 2
MIN_VOXELS = 50
#: Alternations of tissue classification and field fit (as in EM segmentation with a bias field).
EM_ITERATIONS = 3
#: Tissue voxels used in the fit at most (evenly thinned): bounds the cost on large heads.
MAX_FIT_VOXELS = 12_000
#: The field is fitted on the brightest classes (the darkest is noisy in log and holds the rim).
N_FIT_CLASSES = 2
#: (negative, positive) names of the canonical RAS axes.
AXIS_NAMES = (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))
#: Order in which direction words are joined (superior-left, not left-superior).
NAME_ORDER = (2, 1, 0)


@dataclass(frozen=True)
class InuEstimate:
    """A fitted bias field summarised: ``range`` (p95 - p5), ``cv`` and ``direction``; ``field``
    holds the fitted field (mean 1) at the head voxels ``points`` (indices into the full grid)."""

    range: float
    cv: float
    direction: str
    n_voxels: int
    field: np.ndarray = dataclass_field(repr=False, default_factory=lambda: np.empty(0))
    points: np.ndarray = dataclass_field(repr=False, default_factory=lambda: np.empty((0, 3)))


def _monomials(coords: np.ndarray, degree: int) -> np.ndarray:
    """Columns x^a y^b z^c with 1 <= a+b+c <= degree for coords (N, 3)."""
    cols = []
    for d in range(1, degree + 1):
        for combo in combinations_with_replacement(range(coords.shape[1]), d):
            cols.append(np.prod(coords[:, list(combo)], axis=1))
    return np.stack(cols, axis=1)


def direction_name(vector: np.ndarray) -> str:
    """``(+x, +y, +z)`` in RAS -> e.g. ``superior-left``: every axis whose component is at least
    half the largest one, superior/inferior first."""
    v = np.asarray(vector, dtype=np.float64)
    big = float(np.abs(v).max()) if v.size else 0.0
    if not big > 0:
        return "nowhere in particular (flat field)"
    words = [AXIS_NAMES[i][int(v[i] > 0)] for i in NAME_ORDER if abs(v[i]) >= 0.5 * big]
    return "-".join(words)


def _robust_fit(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares, refitted on the voxels within TRIM_SIGMAS robust SDs of the fit."""
    keep = np.ones(len(y), dtype=bool)
    coef = np.zeros(design.shape[1])
    for _ in range(ROBUST_ITERATIONS + 1):
        coef, *_ = np.linalg.lstsq(design[keep], y[keep], rcond=None)
        res = y - design @ coef
        sigma = 1.4826 * float(np.median(np.abs(res[keep] - np.median(res[keep]))))
        if not sigma > 0:
            break
        new = np.abs(res) <= TRIM_SIGMAS * sigma
        if new.sum() < MIN_VOXELS:
            break
        keep = new
    return coef


def _kmeans_1d(y: np.ndarray, centres: np.ndarray, iterations: int = 4) -> np.ndarray:
    for _ in range(iterations):
        lab = np.argmin(np.abs(y[:, None] - centres[None]), axis=1)
        centres = np.array(
            [y[lab == k].mean() if np.any(lab == k) else centres[k] for k in range(len(centres))]
        )
    return np.sort(centres)


def estimate_inu(
    img: np.ndarray,
    head: np.ndarray,
    tissue: np.ndarray,
    zooms: tuple[float, ...],
    grid_mm: float = GRID_MM,
    degree: int = DEGREE,
) -> InuEstimate:
    """Fit the bias field of ``img`` from the voxels of ``tissue`` (boolean mask: the head without
    scalp rim and air pockets) and summarise it over ``head`` (see the module docstring). Raises
    ValueError when too few voxels are left."""
    step = tuple(max(1, int(round(grid_mm / float(z)))) for z in zooms)
    sub = tuple(slice(None, None, s) for s in step)
    x = np.asarray(img)[sub]
    h = np.asarray(head, dtype=bool)[sub]
    if h.sum() < MIN_VOXELS:
        raise ValueError("too few head voxels for an INU estimate")
    hidx = np.nonzero(h)
    lo = np.array([i.min() for i in hidx], dtype=np.float64)
    hi = np.array([i.max() for i in hidx], dtype=np.float64)
    half = np.maximum((hi - lo) / 2.0, 1.0)
    centre = (hi + lo) / 2.0
    tidx = np.nonzero(np.asarray(tissue, dtype=bool)[sub] & (x > 0))
    if len(tidx[0]) < MIN_VOXELS:
        raise ValueError("too few tissue voxels for an INU estimate")
    thin = max(1, len(tidx[0]) // MAX_FIT_VOXELS)
    tidx = tuple(i[::thin] for i in tidx)
    y = np.log(x[tidx].astype(np.float64))
    poly = _monomials((np.stack(tidx, axis=1) - centre) / half, degree)
    field = np.zeros(len(y))
    centres = np.quantile(y, [0.2, 0.5, 0.8])
    coef = np.zeros(poly.shape[1])
    for _ in range(EM_ITERATIONS):
        # classes of the corrected intensities, then the field from the brightest two of them
        centres = _kmeans_1d(y - field, centres)
        lab = np.argmin(np.abs((y - field)[:, None] - centres[None]), axis=1)
        sel = lab >= len(centres) - N_FIT_CLASSES
        offsets = (lab[sel, None] == np.arange(len(centres) - N_FIT_CLASSES, len(centres))).astype(float)
        if sel.sum() < MIN_VOXELS:
            raise ValueError("too few voxels in the bright tissue classes")
        coef = _robust_fit(np.concatenate([poly[sel], offsets], axis=1), y[sel])[: poly.shape[1]]
        field = poly @ coef
    hp = np.stack(hidx, axis=1).astype(np.float64)
    log_field = _monomials((hp - centre) / half, degree) @ coef
    b = np.exp(log_field - log_field.max())
    b /= b.mean()
    p05, p95 = np.percentile(b, [5, 95])
    top = b >= np.percentile(b, 90)
    toward = (hp[top].mean(axis=0) - hp.mean(axis=0)) * np.asarray(zooms) * np.asarray(step)
    return InuEstimate(
        range=float(p95 - p05),
        cv=float(b.std() / b.mean()),
        direction=direction_name(toward),
        n_voxels=int(len(y)),
        field=b,
        points=(hp * np.asarray(step)).astype(int),
    )


def inu_values(
    img: np.ndarray, head: np.ndarray, tissue: np.ndarray, zooms: tuple[float, ...]
) -> dict[str, float | str]:
    """The IQM entries ``inu_range``, ``inu_cv``, ``inu_direction`` (NaN and a ``*_note`` when
    the field cannot be estimated)."""
    try:
        est = estimate_inu(img, head, tissue, zooms)
    except (ValueError, np.linalg.LinAlgError) as err:
        note = f"no INU estimate: {err}"
        return {"inu_range": math.nan, "inu_range_note": note, "inu_cv": math.nan,
                "inu_cv_note": note, "inu_direction": "unknown"}  # fmt: skip
    return {"inu_range": est.range, "inu_cv": est.cv, "inu_direction": est.direction}
