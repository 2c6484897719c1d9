"""The quality tiers of Loizillon et al. (Medical Image Analysis 2024): moderate and severe
motion, noise and poor contrast drawn from their Table 3 ranges, and the SNR measure and calibration
that map their noise SNRs onto our normalised intensities.

Used by ``bids_qa simulate`` (tier levels), the tier benchmark and tier training; the draws are
applied with :func:`bids_qa.artifacts.apply_artifact`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bids_qa.artifacts import (
    TIER_ARTIFACTS,
    ArtifactLabel,
    apply_artifact,
    draw_seed,
    motion_record,
    severity_of,
)
from bids_qa.iqm_formulas import RAYLEIGH_STD_TO_SIGMA

TIER_LEVELS = ("none", "moderate", "severe")
#: Loizillon et al., Table 3 (TorchIO RandomMotion): rotation / translation magnitude ranges and 4 motion
#: events (``num_transforms``). Every component gets a random sign (TorchIO draws U(a, b) per axis).
TIER_MOTION = {
    "moderate": {"degrees": (2.0, 4.0), "translation_mm": (2.0, 4.0)},
    "severe": {"degrees": (5.0, 8.0), "translation_mm": (5.0, 8.0)},
}
TIER_MOTION_EVENTS = 4
#: Loizillon et al., Table 3 (TorchIO RandomGamma): log-gamma ``beta`` ranges; the image becomes I^exp(beta).
TIER_CONTRAST_LOG_GAMMA = {"moderate": (-0.2, -0.05), "severe": (-0.45, -0.3)}
#: Loizillon et al.'s mean SNRs of its simulated moderate and severe noise.
TIER_SNR_TARGETS = {"moderate": 38.0, "severe": 27.0}
#: Rician noise std ranges on our normalised scale, calibrated (see ``docs/simulation.md``) so that the mean :func:`estimate_snr` over the training volumes
#: is 38 (moderate) and 27 (severe). Adjacent ranges of equal width, like the paper's [5, 15]
#: and [15, 25].
TIER_NOISE_STD = {"moderate": (0.0206, 0.0311), "severe": (0.0311, 0.0416)}
#: Mean bright-tissue signal (:func:`snr_components`) of the 20 training volumes the noise ranges
#: were calibrated on; an image with this signal and a noise-free background reaches the target
#: SNRs on average.
TIER_CALIBRATION_SIGNAL = 0.643

#: Median and standard deviation of a Rayleigh variable per unit sigma (air in a magnitude image);
#: the standard deviation is the inverse of the IQMs' Dietrich correction (the same number).
_RAYLEIGH_MEDIAN = float(np.sqrt(2.0 * np.log(2.0)))
_RAYLEIGH_STD = 1.0 / RAYLEIGH_STD_TO_SIGMA


def snr_components(image: np.ndarray, mask: np.ndarray, margin: int = 5) -> tuple[float, float]:
    """Signal and air noise standard deviation behind :func:`estimate_snr`.

    Notes
    -----
    signal = mean of the head voxels brighter than the head median (a segmentation-free stand-in
    for the bright tissue, e.g. white matter on T1w, which Loizillon et al. uses); air std = standard
    deviation of the background estimated robustly from the median of the non-zero air voxels
    (more than ``margin`` voxels outside the head mask) assuming Rayleigh-distributed magnitude
    noise: ``std = sqrt(2 - pi/2) * median / sqrt(2 ln 2)``. Zeros are skipped because many
    scanners and defacing tools zero the background; when more than half of the air is exactly
    zero (or fewer than 100 air voxels are not), the scanner's noise is not observable and the
    air std is NaN.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    inside = img[m]
    if inside.size == 0:
        raise ValueError("the head mask is empty; cannot measure a signal")
    signal = (
        float(inside[inside > np.median(inside)].mean()) if inside.size > 1 else float(inside[0])
    )
    far = ~ndimage.binary_dilation(m, iterations=margin) if margin > 0 else ~m
    air = img[far]
    nonzero = air[air > 0]
    if nonzero.size < 100 or nonzero.size < 0.5 * air.size:
        return signal, float("nan")
    air = nonzero
    return signal, float(_RAYLEIGH_STD * np.median(air) / _RAYLEIGH_MEDIAN)


def estimate_snr(image: np.ndarray, mask: np.ndarray, margin: int = 5) -> float:
    """Signal-to-noise ratio as we define it for the noise tiers: bright-tissue mean / air std.

    Same form as Loizillon et al.'s ``mean(WM) / std(air)`` (eq. 2) without a segmentation; see
    :func:`snr_components`. Pass the mask of the *clean* image when measuring a noisy copy.
    """
    signal, air_std = snr_components(image, mask, margin)
    return signal / air_std if air_std > 0 else float("inf")






def sample_tier_params(
    artifact: str, level: str, rng: np.random.Generator, *, ndim: int = 2
) -> dict:
    """Parameters of a Loizillon et al. tier draw (Table 3) for ``apply_artifact(image, artifact, params)``.

    Parameters
    ----------
    artifact
        ``"motion"``, ``"noise"`` or ``"contrast"``.
    level
        ``"none"`` (identity parameters), ``"moderate"`` or ``"severe"``.
    ndim
        2 for slices (motion by our k-space model, in-plane poses), 3 for volumes (tio.Motion).
    """
    if artifact not in TIER_ARTIFACTS:
        raise ValueError(f"tier artifacts are {TIER_ARTIFACTS}, not {artifact!r}")
    if level not in TIER_LEVELS:
        raise ValueError(f"tier level must be one of {TIER_LEVELS}, not {level!r}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, not {ndim!r}")
    if artifact == "noise":
        std = 0.0 if level == "none" else float(rng.uniform(*TIER_NOISE_STD[level]))
        return {"std": std, "rician": True, "seed": draw_seed(rng)}
    if artifact == "contrast":
        beta = 0.0 if level == "none" else float(rng.uniform(*TIER_CONTRAST_LOG_GAMMA[level]))
        return {"log_gamma": beta}
    m = TIER_MOTION_EVENTS
    # TorchIO's RandomMotion timing: evenly spaced events, each jittered by +-30% of the spacing.
    step = 1.0 / (m + 1)
    times = sorted(
        float(t) for t in step * np.arange(1, m + 1) + rng.uniform(-0.3 * step, 0.3 * step, m)
    )
    n_rot = 1 if ndim == 2 else 3
    if level == "none":
        rot = np.zeros((m, n_rot))
        trans = np.zeros((m, ndim))
    else:
        spec = TIER_MOTION[level]
        rot = rng.uniform(*spec["degrees"], size=(m, n_rot)) * rng.choice(
            [-1.0, 1.0], size=(m, n_rot)
        )
        trans = rng.uniform(*spec["translation_mm"], size=(m, ndim)) * rng.choice(
            [-1.0, 1.0], size=(m, ndim)
        )
    return motion_record(times, rot, trans, ndim, rng)


def simulate_tier(
    image: np.ndarray,
    artifact: str,
    level: str,
    rng: np.random.Generator,
    zooms: Sequence[float] | None = None,
) -> tuple[np.ndarray, ArtifactLabel]:
    """Draw a Loizillon et al. tier artifact, apply it, and label it (``label.level`` set; SS from
    :func:`severity_of`; level ``"none"`` gives a clean copy labelled ``artifact="none"``)."""
    image = np.asarray(image)
    if level == "none":
        if artifact not in TIER_ARTIFACTS:
            raise ValueError(f"tier artifacts are {TIER_ARTIFACTS}, not {artifact!r}")
        return image.astype(np.float32, copy=True), ArtifactLabel("none", 0.0, {}, level="none")
    params = sample_tier_params(artifact, level, rng, ndim=image.ndim)
    out = apply_artifact(image, artifact, params, zooms)
    return out, ArtifactLabel(artifact, severity_of(artifact, params), params, level=level)
