"""Slice preprocessing shared by inference and training: a single 2D slice made into a model
input exactly as :class:`~bids_qa.volume.Volume` prepares whole stacks, and the intensity
renormalisation of a slice corrupted after normalisation.

Image rulers (:mod:`bids_qa.rulers`) corrupt the central slice of every scan at inference, and the
training samplers do the same to their slices; both import these functions from here, so inference
never imports :mod:`bids_qa.training`.
"""

from __future__ import annotations

import numpy as np

from bids_qa.volume import slices_at_spacing, slices_to_square


def renormalise(corrupted: np.ndarray, clean: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rescale a corrupted slice as whole-volume normalisation would have.

    At inference the 99th head percentile is computed on the corrupted volume itself (noise and bias
    move it); training corrupts already-normalised slices, so we apply the same ratio here.
    """
    if mask.sum() < 20:
        return np.clip(corrupted, 0.0, 2.0)
    ref = np.percentile(clean[mask], 99)
    now = np.percentile(corrupted[mask], 99)
    scale = now / ref if ref > 0 and now > 0 else 1.0
    return np.clip(corrupted / scale, 0.0, 2.0).astype(np.float32)


def to_model_input(
    img: np.ndarray,
    zooms: tuple[float, float],
    size: int,
    mask: np.ndarray | None = None,
    pixel_mm: float = 0.0,
) -> np.ndarray:
    """One native slice -> (size, size) exactly as :meth:`Volume.slice_stack` prepares slices, or,
    with ``pixel_mm > 0``, as :meth:`Volume.spacing_stack` does (cut around ``mask``'s centre)."""
    if pixel_mm > 0:
        if mask is None:
            raise ValueError("a fixed pixel spacing needs the slice's head mask to centre the cut")
        return slices_at_spacing(img[None], mask[None], (1.0, *zooms), 0, size, pixel_mm)[0]
    return slices_to_square(img[None], (1.0, *zooms), 0, size)[0]
