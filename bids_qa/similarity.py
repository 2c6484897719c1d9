"""How different a corrupted image is from its clean version: the structural similarity index
(Wang et al. 2004) that labels the SSIM model's training slices (Sciarra et al.), and the relative
RMS change inside the head that the benchmarks report beside every simulated artifact.
"""

from __future__ import annotations

import numpy as np

#: Structural similarity constants of Wang et al. (2004): Gaussian window sigma 1.5 truncated at
#: 3.5 sigma (an 11 x 11 window), K1 = 0.01, K2 = 0.03.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K = (0.01, 0.03)


def realised_change(clean: np.ndarray, corrupted: np.ndarray, mask: np.ndarray) -> float:
    """How much an artifact actually changed an image: RMS of ``corrupted - clean`` inside
    ``mask`` relative to the clean image's RMS there (0 = unchanged).

    It needs the clean image, so no scorer can compute it; benchmarks report it beside an
    artifact's severity (SS) or grade to show how far the simulation's label tracks what became
    visible (e.g. a motion's artifact energy depends on when in k-space the movement happens,
    not only on its amplitude). Both images must be on the same intensity scale (normalised).
    """
    clean, corrupted, m = np.asarray(clean), np.asarray(corrupted), np.asarray(mask, dtype=bool)
    if clean.shape != corrupted.shape or clean.shape != m.shape:
        raise ValueError(
            f"shapes differ: clean {clean.shape}, corrupted {corrupted.shape}, mask {m.shape}"
        )
    if not m.any():
        raise ValueError("the mask is empty")
    x = clean[m].astype(np.float64)  # only the head in double precision (volumes reach 40 M voxels)
    ref = float(np.sqrt(np.mean(x**2)))
    if not ref > 0:
        raise ValueError("the clean image is zero inside the mask")
    return float(np.sqrt(np.mean((corrupted[m].astype(np.float64) - x) ** 2)) / ref)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Mean structural similarity index of two 2D images (Wang et al. 2004).

    Notes
    -----
    ``SSIM = ((2 mu_a mu_b + C1)(2 sigma_ab + C2)) / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2))``
    with local statistics from a Gaussian window (sigma 1.5, 11 x 11, reflected borders),
    population (not sample) covariances, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with
    ``L = data_range``, averaged over the image minus a 5-pixel border (where the window would
    leave the image). Equals ``skimage.metrics.structural_similarity(a, b, data_range=L,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.

    References
    ----------
    Wang Z, Bovik AC, Sheikh HR, Simoncelli EP. Image quality assessment: from error visibility
    to structural similarity. IEEE Trans Image Process 2004. doi:10.1109/TIP.2003.819861
    """
    from scipy import ndimage

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"ssim needs two 2D images of the same shape, got {x.shape} and {y.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(x.shape) <= 2 * pad:
        raise ValueError(f"images of shape {x.shape} are too small for an 11 x 11 SSIM window")

    def smooth(img: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(
            img, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect"
        )

    mx, my = smooth(x), smooth(y)
    vx = smooth(x * x) - mx * mx
    vy = smooth(y * y) - my * my
    cxy = smooth(x * y) - mx * my
    c1 = (SSIM_K[0] * data_range) ** 2
    c2 = (SSIM_K[1] * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[pad:-pad, pad:-pad].mean())
