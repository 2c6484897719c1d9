"""Draw 2D training slices from clean volumes, in the planes a scorer would read them.

2D (thick-slice) acquisitions are sampled only in their acquisition plane, where they are sharp;
isotropic 3D volumes in all three planes. This keeps "clean" coherent with what the anisotropy
simulation teaches (see ``docs/design.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_qa.preprocess import renormalise, to_model_input  # noqa: F401 - re-exported for training
from bids_qa.volume import Volume


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
