"""Training-only augmentation of Sciarra et al.'s SSIM model: motion-corrupted slice pairs
labelled by their SSIM, and the contrast augmentations (gamma, log, sigmoid, CLAHE) applied before
corruption. Nothing at inference uses this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bids_qa.artifacts import ArtifactLabel, apply_artifact, sample_params, severity_of
from bids_qa.similarity import ssim

#: Motion models :func:`motion_slice_pair` chooses from with equal probability.
SLICE_MOTION_MODELS = ("torchio", "kspace")
#: Contrast augmentations of Sciarra et al.
CONTRAST_AUGMENTATIONS = ("gamma", "log", "sigmoid", "clahe")


def motion_slice_pair(
    slice2d: np.ndarray,
    rng: np.random.Generator,
    zooms: Sequence[float] | None = None,
    severity: float | None = None,
) -> tuple[np.ndarray, float, ArtifactLabel]:
    """A motion-corrupted copy of a slice and its SSIM to the original (Sciarra et al.'s labels).

    The model is drawn from :data:`SLICE_MOTION_MODELS`: TorchIO's ``Motion`` (Shaw et al.) or
    our segmented k-space model; poses as in :func:`sample_params` (``severity`` None: uniform
    SS). SSIM uses ``data_range = max - min`` of the input slice. The label's params hold the
    model, so :func:`replay` reproduces the corrupted slice.
    """
    img = np.asarray(slice2d, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"motion_slice_pair needs a 2D slice, got shape {img.shape}")
    model = SLICE_MOTION_MODELS[int(rng.integers(len(SLICE_MOTION_MODELS)))]
    params = sample_params("motion", rng, severity, ndim=2)
    params["model"] = model
    out = apply_artifact(img, "motion", params, zooms)
    data_range = float(img.max() - img.min()) or 1.0
    return (
        out,
        ssim(img, out, data_range),
        ArtifactLabel("motion", severity_of("motion", params), params),
    )


def sample_contrast_augmentation(rng: np.random.Generator) -> dict:
    """Draw one of Sciarra et al.'s contrast augmentations and its parameters.

    gamma: ``x^exp(g)``, g ~ U[-0.5, 0.5]; log: ``log(1 + a x) / log(1 + a)``, log a ~
    U[log 1, log 30]; sigmoid: ``sigmoid(k (x - c))`` rescaled to map 0 -> 0 and 1 -> 1,
    k ~ U[4, 12], c ~ U[0.3, 0.7]; clahe: contrast-limited adaptive histogram equalisation with
    tiles ~ U{4..10} per side and clip limit ~ U[0.01, 0.05]. ``x`` is the image divided by its
    maximum; the result is multiplied back.
    """
    kind = CONTRAST_AUGMENTATIONS[int(rng.integers(len(CONTRAST_AUGMENTATIONS)))]
    if kind == "gamma":
        return {"kind": kind, "log_gamma": float(rng.uniform(-0.5, 0.5))}
    if kind == "log":
        return {"kind": kind, "gain": float(np.exp(rng.uniform(0.0, np.log(30.0))))}
    if kind == "sigmoid":
        return {
            "kind": kind,
            "gain": float(rng.uniform(4.0, 12.0)),
            "cutoff": float(rng.uniform(0.3, 0.7)),
        }
    return {
        "kind": kind,
        "tiles": int(rng.integers(4, 11)),
        "clip_limit": float(rng.uniform(0.01, 0.05)),
    }


def clahe(x: np.ndarray, tiles: int = 8, clip_limit: float = 0.01, n_bins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a 2D image with values in [0, 1].

    The image is cut into ``tiles`` x ``tiles`` blocks; each block's histogram is clipped at
    ``clip_limit`` x (pixels per block) with the excess spread evenly over all bins, and its
    cumulative distribution becomes the block's intensity mapping. Every pixel takes the
    bilinear interpolation of the mappings of the four nearest block centres, which removes
    block edges.

    References
    ----------
    Pizer SM et al. Adaptive histogram equalization and its variations. Comput Vis Graph Image
    Process 1987. doi:10.1016/S0734-189X(87)80186-X
    """
    img = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    if img.ndim != 2:
        raise ValueError(f"clahe needs a 2D image, got shape {img.shape}")
    h, w = img.shape
    ty, tx = min(tiles, h), min(tiles, w)
    bins = np.minimum((img * n_bins).astype(np.int64), n_bins - 1)
    ey = np.linspace(0, h, ty + 1).astype(int)
    ex = np.linspace(0, w, tx + 1).astype(int)
    maps = np.empty((ty, tx, n_bins))
    for i in range(ty):
        for j in range(tx):
            block = bins[ey[i] : ey[i + 1], ex[j] : ex[j + 1]]
            hist = np.bincount(block.ravel(), minlength=n_bins).astype(np.float64)
            limit = max(clip_limit * block.size, 1.0)
            excess = np.clip(hist - limit, 0, None).sum()
            hist = np.minimum(hist, limit) + excess / n_bins
            cdf = np.cumsum(hist)
            maps[i, j] = cdf / cdf[-1]
    # Position of every pixel between block centres.
    cy = ((np.arange(h) + 0.5) / h) * ty - 0.5
    cx = ((np.arange(w) + 0.5) / w) * tx - 0.5
    y0 = np.clip(np.floor(cy).astype(int), 0, ty - 1)
    x0 = np.clip(np.floor(cx).astype(int), 0, tx - 1)
    y1 = np.minimum(y0 + 1, ty - 1)
    x1 = np.minimum(x0 + 1, tx - 1)
    wy = np.clip(cy - y0, 0.0, 1.0)[:, None]
    wx = np.clip(cx - x0, 0.0, 1.0)[None, :]
    Y0, Y1 = y0[:, None], y1[:, None]
    X0, X1 = x0[None, :], x1[None, :]
    out = (
        (1 - wy) * (1 - wx) * maps[Y0, X0, bins]
        + (1 - wy) * wx * maps[Y0, X1, bins]
        + wy * (1 - wx) * maps[Y1, X0, bins]
        + wy * wx * maps[Y1, X1, bins]
    )
    return out.astype(np.float32)


def apply_contrast_augmentation(img: np.ndarray, params: dict) -> np.ndarray:
    """Apply a contrast augmentation drawn by :func:`sample_contrast_augmentation`."""
    arr = np.asarray(img, dtype=np.float32)
    scale = float(arr.max())
    if not scale > 0:
        return arr.copy()
    x = np.clip(arr / scale, 0.0, 1.0)
    kind = params["kind"]
    if kind == "gamma":
        y = x ** float(np.exp(params["log_gamma"]))
    elif kind == "log":
        a = float(params["gain"])
        y = np.log1p(a * x) / np.log1p(a)
    elif kind == "sigmoid":
        k, c = float(params["gain"]), float(params["cutoff"])

        def sig(v):
            return 1.0 / (1.0 + np.exp(-k * (v - c)))

        y = (sig(x) - sig(0.0)) / (sig(1.0) - sig(0.0))
    elif kind == "clahe":
        if arr.ndim != 2:
            raise ValueError("clahe augmentation works on 2D slices")
        y = clahe(x, int(params["tiles"]), float(params["clip_limit"]))
    else:
        raise ValueError(
            f"unknown contrast augmentation {kind!r}; choose from {CONTRAST_AUGMENTATIONS}"
        )
    return (y * scale).astype(np.float32)


def augment_contrast(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A randomly contrast-augmented copy of a slice (Sciarra et al.): draw with
    :func:`sample_contrast_augmentation`, apply with :func:`apply_contrast_augmentation`."""
    return apply_contrast_augmentation(img, sample_contrast_augmentation(rng))
