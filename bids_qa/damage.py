"""Severity labels that follow the damage an artifact did, not only the parameters it was drawn with.

The parameter-based severity score (SS, :func:`bids_qa.artifacts.severity_of`) says how strong
an artifact was asked to be. What it did to a given scan can differ a lot: a motion of 8 degrees
early or late in k-space, ghosts along an axis with little energy, a bias field over a small head.
This module measures the visible damage and maps it to a damage-based SS:

- **damage** ``D = 1 - SSIM`` between the clean and the corrupted normalised image, the SSIM map
  (Wang et al. 2004; Gaussian window, sigma 1.5 voxels, ``L = 1``) averaged over the head mask only
  (air does not dilute it). 2D slices use a 2D window, volumes a 3D one.
- **damage-based SS** ``SS_D = F_a(D)``: a monotone piecewise-linear map per artifact ``a`` and
  dimension, fitted so that ``SS_D`` is the quantile of ``D`` among that artifact's damages when
  its parameter SS is drawn uniformly in [0, 1] on the training volumes. Knots: ``(0, 0)`` and
  ``(q_k, k / 10)`` for the 10th...100th percentiles ``q_k``; above the largest knot ``SS_D = 1``.
  So ``SS_D`` keeps the parameter SS's scale (uniform over the simulated range, 1 = the worst
  simulated damage of that artifact, the anchor Table 1 of Hays et al. gives across artifacts)
  while ranking every sample by what became visible. Combinations and artifacts without their
  own knots use the knots fitted on all single artifacts pooled.

The knots live in ``bids_qa/data/damage_calibration.json`` (fitted by
``python -m bids_qa.training.damage_fit``; provenance inside). ``docs/simulation.md`` documents both labels.

References
----------
Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: from error visibility to
structural similarity. IEEE Trans Image Process 2004. doi:10.1109/TIP.2003.819861
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K = (0.01, 0.03)
#: Normalised images: head 99th percentile = 1.
DATA_RANGE = 1.0
CALIBRATION_FILE = "damage_calibration.json"
#: Quantile levels of the knots (the first knot is always (0, 0)).
KNOT_LEVELS = tuple(k / 10 for k in range(1, 11))
POOLED = "pooled"
#: Larger volumes are compared on a strided grid (finest axes first) to bound the cost.
MAX_SSIM_VOXELS = 4_000_000


def _bounding_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(
        slice(max(0, int(i.min()) - pad), min(n, int(i.max()) + pad + 1))
        for i, n in zip(idx, mask.shape, strict=True)
    )


def ssim_map(
    a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE, sigma: Any = SSIM_SIGMA
) -> np.ndarray:
    """Local SSIM of two images of any dimension (Gaussian window of ``sigma`` voxels per axis;
    0 along an axis leaves it out, e.g. ``(1.5, 1.5, 0)`` for in-plane windows of a volume)."""
    from scipy import ndimage

    x = np.asarray(a, dtype=np.float32)
    y = np.asarray(b, dtype=np.float32)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} and {y.shape}")

    def smooth(img: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(img, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    mx, my = smooth(x), smooth(y)
    vx = smooth(x * x) - mx * mx
    vy = smooth(y * y) - my * my
    cxy = smooth(x * y) - mx * my
    c1 = (SSIM_K[0] * data_range) ** 2
    c2 = (SSIM_K[1] * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim_stride(shape: tuple[int, ...], max_voxels: int = MAX_SSIM_VOXELS) -> tuple[int, ...]:
    """Per-axis stride bringing ``shape`` under ``max_voxels``, the longest axis halved first."""
    stride = [1] * len(shape)
    while np.prod([-(-n // s) for n, s in zip(shape, stride, strict=True)]) > max_voxels:
        k = int(np.argmax([n / s for n, s in zip(shape, stride, strict=True)]))
        stride[k] *= 2
    return tuple(stride)


def masked_ssim(
    clean: np.ndarray, corrupted: np.ndarray, mask: np.ndarray, sigma: Any = SSIM_SIGMA
) -> float:
    """Mean SSIM map inside ``mask``, computed on the mask's bounding box plus the window (on a
    strided grid when that box holds more than :data:`MAX_SSIM_VOXELS` voxels)."""
    m = np.asarray(mask, dtype=bool)
    if clean.shape != corrupted.shape or clean.shape != m.shape:
        raise ValueError(
            f"shapes differ: clean {clean.shape}, corrupted {corrupted.shape}, mask {m.shape}"
        )
    if not m.any():
        raise ValueError("the mask is empty")
    box = _bounding_box(m, int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5))
    stride = ssim_stride(tuple(b.stop - b.start for b in box))
    box = tuple(slice(b.start, b.stop, k) for b, k in zip(box, stride, strict=True))
    s = ssim_map(clean[box], corrupted[box], DATA_RANGE, sigma)
    return float(np.mean(s[m[box]], dtype=np.float64))


def structural_damage(clean: np.ndarray, corrupted: np.ndarray, mask: np.ndarray) -> float:
    """Visible damage ``1 - SSIM`` inside the head, on the normalised scale (0 = unchanged)."""
    return float(1.0 - masked_ssim(clean, corrupted, mask))


def slice_ssim(
    clean: np.ndarray, corrupted: np.ndarray, mask: np.ndarray, slice_axis: int
) -> float:
    """SSIM of a volume against its source as a reader of its slices sees it: in-plane windows
    along ``slice_axis``, averaged over the head. The check the damage label is judged against."""
    sigma = [SSIM_SIGMA] * 3
    sigma[int(slice_axis)] = 0.0
    return masked_ssim(clean, corrupted, mask, tuple(sigma))


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def fit_knots(damages: np.ndarray) -> list[float]:
    """Damage values at :data:`KNOT_LEVELS` (made strictly increasing so the map is invertible)."""
    d = np.asarray(damages, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < len(KNOT_LEVELS):
        raise ValueError(f"need at least {len(KNOT_LEVELS)} damages, got {d.size}")
    q = np.quantile(d, KNOT_LEVELS)
    out, last = [], 0.0
    for v in q:
        last = max(float(v), last + 1e-6)
        out.append(last)
    return out


def fit_calibration(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """``{"2d"|"3d": {artifact: [damage, ...]}}`` -> ``{"2d"|"3d": {artifact: knots, "pooled": knots}}``."""
    out: dict[str, Any] = {}
    for dim, per_artifact in samples.items():
        out[dim] = {a: fit_knots(np.asarray(v)) for a, v in per_artifact.items()}
        out[dim][POOLED] = fit_knots(np.concatenate([np.asarray(v) for v in per_artifact.values()]))
    return out


@lru_cache(maxsize=1)
def packaged_calibration() -> dict[str, Any]:
    """The shipped knots (``bids_qa/data/damage_calibration.json``)."""
    text = resources.files("bids_qa").joinpath("data", CALIBRATION_FILE).read_text("utf-8")
    return json.loads(text)


def damage_severity(
    artifact: str, damage: float, ndim: int, calibration: dict[str, Any] | None = None
) -> float:
    """Damage-based SS in [0, 1] of ``damage`` (``1 - SSIM``) done by ``artifact`` on an
    ``ndim``-D image (see the module docstring); ``"none"`` and zero damage give 0."""
    if artifact == "none" or not damage > 0:
        return 0.0
    cal = calibration if calibration is not None else packaged_calibration()
    table = cal["knots"][f"{int(ndim)}d"]
    knots = table.get(artifact, table[POOLED])
    xs = np.concatenate([[0.0], np.asarray(knots, dtype=np.float64)])
    ys = np.concatenate([[0.0], np.asarray(KNOT_LEVELS)])
    return float(np.interp(float(damage), xs, ys, left=0.0, right=1.0))


def damage_label(
    artifact: str,
    clean: np.ndarray,
    corrupted: np.ndarray,
    mask: np.ndarray,
    calibration: dict[str, Any] | None = None,
) -> tuple[float, float]:
    """``(damage, damage-based SS)`` of one corrupted image against its clean source."""
    if artifact == "none":
        return 0.0, 0.0
    d = structural_damage(clean, corrupted, mask)
    return d, damage_severity(artifact, d, np.ndim(clean), calibration)
