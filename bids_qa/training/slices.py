"""Draw 2D training slices from clean volumes, in the planes a scorer would read them.

2D (thick-slice) acquisitions are sampled only in their acquisition plane, where they are sharp;
isotropic 3D volumes in all three planes. This keeps "clean" coherent with what the anisotropy
simulation teaches (see ``docs/design.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_qa.volume import Volume, slices_at_spacing, slices_to_square


@dataclass
class SliceSource:
    """One clean volume and the (axis, slice index) pairs training may draw from it."""

    volume: Volume
    choices: list[tuple[int, int]]
    name: str = ""


def make_source(volume: Volume, name: str = "", central_fraction: float = 0.8) -> SliceSource:
    """Usable slices: anatomy-bearing, within the central ``central_fraction`` of the anatomy extent."""
    axes = [volume.slice_axis] if volume.is_2d_acquisition else [0, 1, 2]
    choices: list[tuple[int, int]] = []
    for axis in axes:
        idx = volume.anatomy_slices(axis, min_fraction=0.05)
        if len(idx) == 0:
            continue
        keep = max(1, int(len(idx) * central_fraction))
        start = (len(idx) - keep) // 2
        choices += [(axis, int(i)) for i in idx[start : start + keep]]
    if not choices:
        raise ValueError(f"volume {name!r} has no anatomy-bearing slice to train on")
    return SliceSource(volume=volume, choices=choices, name=name)


def native_slice(
    source: SliceSource, axis: int, index: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(normalised slice, head-mask slice, in-plane voxel sizes) at native resolution."""
    vol = source.volume
    img = np.take(vol.data, index, axis=axis)
    mask = np.take(vol.mask, index, axis=axis)
    zooms = tuple(z for a, z in enumerate(vol.zooms) if a != axis)
    return np.ascontiguousarray(img), np.ascontiguousarray(mask), zooms  # type: ignore[return-value]


def draw_slice(sources: list[SliceSource], rng: np.random.Generator, exclude: int | None = None):
    """A random (source index, slice, mask, zooms); ``exclude`` avoids one source when possible."""
    k = int(rng.integers(len(sources)))
    if exclude is not None and len(sources) > 1:
        while k == exclude:
            k = int(rng.integers(len(sources)))
    axis, index = sources[k].choices[int(rng.integers(len(sources[k].choices)))]
    img, mask, zooms = native_slice(sources[k], axis, index)
    return k, img, mask, zooms


def augment_geometry(
    img: np.ndarray, mask: np.ndarray, zooms: tuple[float, float], rng: np.random.Generator
):
    """Random flips and 90-degree rotations (voxel sizes follow the axes)."""
    if rng.random() < 0.5:
        img, mask = img[::-1], mask[::-1]
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        img, mask, zooms = img.T, mask.T, (zooms[1], zooms[0])
    return np.ascontiguousarray(img), np.ascontiguousarray(mask), zooms


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
