"""Segmented k-space rigid motion for 2D slices (the second motion model of Sciarra et al.).

A 2D slice is acquired one phase-encode line of k-space at a time. If the head moves at some
point during the acquisition, the lines acquired after that moment see the head in its new
position. We model this directly: the phase-encode axis is cut into segments at the motion
events; every segment takes its k-space lines from the spectrum of the image moved by that
segment's rigid pose (in-plane rotation about the field-of-view centre, then translation); the
segment holding the k-space centre keeps the reference pose (identity), so the anatomy stays in
place and the motion shows as ghosts, blurring and ringing along the phase-encode axis, as in
real scans. The corrupted image is the magnitude of the inverse Fourier transform.

Rotation is resampled with bilinear interpolation (``scipy.ndimage.affine_transform``); the
translation is applied in the same resampling step. Nothing here draws random numbers: the
event times and poses come from the caller (see :func:`bids_qa.artifacts.sample_params`).

References
----------
Shaw R, Sudre C, Ourselin S, Cardoso MJ. MRI k-space motion artefact augmentation: model
robustness and task-specific uncertainty. MIDL 2019. https://proceedings.mlr.press/v102/shaw19a.html
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def segment_bounds(n_lines: int, times: Sequence[float]) -> list[int]:
    """Phase-encode line index at which each segment starts, plus ``n_lines`` at the end.

    ``times`` are the motion events as fractions (0, 1) of the acquisition, in acquisition
    order; the event at time ``t`` happens before line ``round(t * n_lines)``.
    """
    cuts = [int(round(float(t) * n_lines)) for t in times]
    cuts = [min(max(c, 0), n_lines) for c in cuts]
    return [0, *sorted(cuts), n_lines]


def centre_segment(bounds: Sequence[int], n_lines: int) -> int:
    """Index of the segment containing the k-space centre (line ``n_lines // 2`` after fftshift)."""
    centre = n_lines // 2
    for s in range(len(bounds) - 1):
        if bounds[s] <= centre < bounds[s + 1]:
            return s
    return len(bounds) - 2


def rigid_move_2d(
    image: np.ndarray,
    rotation_deg: float,
    translation_mm: Sequence[float],
    zooms: Sequence[float] = (1.0, 1.0),
) -> np.ndarray:
    """The slice as seen after the head rotated by ``rotation_deg`` about the field-of-view centre
    and translated by ``translation_mm`` (along axes 0 and 1), working in millimetres so that
    non-square pixels rotate correctly. Outside the field of view is air (0)."""
    from scipy import ndimage

    theta = np.deg2rad(float(rotation_deg))
    if theta == 0.0 and not any(float(t) for t in translation_mm):
        return image
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    z = np.asarray(zooms, dtype=np.float64)
    centre = (np.asarray(image.shape, dtype=np.float64) - 1) / 2
    t = np.asarray(translation_mm, dtype=np.float64)
    # moved(o) = I(Z^-1 R^-1 (Z o - Z c - t) + c): output pixel o -> input pixel.
    inv = rot.T
    matrix = (inv * z[None, :]) / z[:, None]
    offset = centre - (inv @ (z * centre + t)) / z
    return ndimage.affine_transform(
        image, matrix, offset=offset, order=1, mode="constant", cval=0.0
    )


def kspace_motion_2d(
    image: np.ndarray,
    pe_axis: int,
    times: Sequence[float],
    rotations_deg: Sequence[float],
    translations_mm: Sequence[Sequence[float]],
    zooms: Sequence[float] = (1.0, 1.0),
) -> np.ndarray:
    """Corrupt a 2D slice with rigid in-plane motion during a line-by-line k-space acquisition.

    Parameters
    ----------
    image
        2D magnitude slice (H, W).
    pe_axis
        Phase-encode axis (0 or 1): the axis along which k-space lines are acquired in order.
    times
        ``m`` motion events as fractions of the acquisition, giving ``m + 1`` segments.
    rotations_deg, translations_mm
        ``m`` poses (degrees; millimetres along axes 0 and 1), assigned in acquisition order to
        the segments *other than* the one holding the k-space centre, which keeps the reference
        pose. Poses are absolute (relative to the reference position), not increments.
    zooms
        In-plane pixel size in mm.

    Returns
    -------
    numpy.ndarray
        float32 magnitude image of the same shape. With all poses at identity the input is
        returned unchanged (up to FFT round-off, ~1e-7).
    """
    from scipy import fft

    if image.ndim != 2:
        raise ValueError(f"kspace_motion_2d needs a 2D slice, got shape {image.shape}")
    if pe_axis not in (0, 1):
        raise ValueError(f"pe_axis must be 0 or 1, not {pe_axis!r}")
    m = len(times)
    if len(rotations_deg) != m or len(translations_mm) != m:
        raise ValueError(
            f"need one pose per motion event: {m} times, {len(rotations_deg)} rotations, "
            f"{len(translations_mm)} translations"
        )
    img = np.asarray(image, dtype=np.float32)
    n_lines = img.shape[pe_axis]
    bounds = segment_bounds(n_lines, times)
    centre = centre_segment(bounds, n_lines)
    poses = iter(zip(rotations_deg, translations_mm, strict=True))
    ref_k = fft.fftshift(fft.fft2(img))
    out_k = ref_k.copy()
    for s in range(len(bounds) - 1):
        if s == centre:
            continue
        rot, trans = next(poses)
        lo, hi = bounds[s], bounds[s + 1]
        if hi <= lo:
            continue
        moved = rigid_move_2d(img, rot, trans, zooms)
        if moved is img:
            continue
        k = fft.fftshift(fft.fft2(moved))
        index = [slice(None), slice(None)]
        index[pe_axis] = slice(lo, hi)
        out_k[tuple(index)] = k[tuple(index)]
    result = np.abs(fft.ifft2(fft.ifftshift(out_k)))
    return result.astype(np.float32, copy=False)
