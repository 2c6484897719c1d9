"""Tier training samples: clean volumes on the model's cube, augmented, corrupted at drawn grades.

Sample ``i`` is drawn from ``default_rng([seed, i])`` (see :mod:`bids_qa.training.loop`):

1. a clean volume, held as the scorer's input cube (:meth:`Volume.cube`, 64^3 voxels of 2.5 mm
   for the shipped weights) and the matching head mask; every training volume is resampled once;
2. augmentation that cannot be mistaken for an artifact: flips along each axis, an axis
   permutation, a small random affine (rotation, scale, shift) with a mild elastic warp, and a
   smooth multiplicative intensity field; no gamma (the contrast artifact *is* a gamma);
3. a grade 0/1/2 for each of motion, noise and contrast: the number of corrupted artifacts is 0,
   1, 2 or 3 (probabilities :data:`N_ARTIFACT_PROBS`), each corrupted one moderate or severe with
   equal chance. So, as Loizillon et al. require, the "0" class of one artifact holds clean scans
   *and* scans with the other artifacts;
4. Loizillon et al.'s simulation (Table 3) through :mod:`bids_qa.artifacts`, in the order
   contrast -> motion -> noise (tissue contrast exists before the acquisition, motion happens
   during it, thermal noise is added on top), on the cube itself;
5. renormalisation: the corrupted cube is rescaled as :func:`bids_qa.volume.normalise` would have
   rescaled the corrupted scan (0.5th percentile -> 0, head 99th percentile -> 1, relative to the
   clean cube, so clean cubes are left exactly as the scorer sees them);
6. the corrupted cube enters the batch ``views`` times (default 2: as simulated and as a random
   flip/permutation of itself), because simulating 3D motion costs far more than a training step.

The tier benchmark (:mod:`bids_qa.evaluate_tiers`) corrupts its validation cubes with the same
:func:`corrupt_cube`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_qa.models.tiers import ARTIFACTS

#: Probability that a sample carries 0, 1, 2 or 3 simulated artifacts.
N_ARTIFACT_PROBS: tuple[float, ...] = (0.25, 0.45, 0.20, 0.10)
#: Probability that a corrupted artifact is severe (else moderate).
SEVERE_PROBABILITY = 0.5
#: Order in which artifacts are applied to one cube.
APPLY_ORDER: tuple[str, ...] = ("contrast", "motion", "noise")
#: Levels of the three-level scale, by grade.
LEVELS: tuple[str, ...] = ("none", "moderate", "severe")


@dataclass
class CubeSource:
    """One clean volume on the model grid: normalised cube, head mask and isotropic voxel size."""

    cube: np.ndarray
    mask: np.ndarray
    voxel_mm: float
    name: str = ""


def make_cube_source(volume, grid: int, name: str = "", voxel_mm: float = 0.0) -> CubeSource:
    """Resample a :class:`~bids_qa.volume.Volume` once onto the ``grid``^3 cube the scorer reads.

    The cube is exactly the scorer's input (:meth:`Volume.cube`), so a clean training sample *is*
    a scorer input; the head mask goes through the same resampling (:func:`resample_to_cube`); the
    voxel size is ``voxel_mm`` (or the padded field of view / grid).
    """
    from bids_qa.volume import resample_to_cube

    cube = np.ascontiguousarray(volume.cube(grid, voxel_mm), dtype=np.float32)
    mask_data = volume.mask.astype(np.float32)
    mask = resample_to_cube(mask_data, volume.mask, volume.zooms, grid, voxel_mm) > 0.5
    extent = (
        voxel_mm * grid
        if voxel_mm > 0
        else max(d * z for d, z in zip(volume.shape, volume.zooms, strict=True))
    )
    if mask.sum() < 50:
        raise ValueError(
            f"volume {name!r}: head mask nearly empty on the {grid}^3 grid; cannot train on it"
        )
    return CubeSource(cube=cube, mask=mask, voxel_mm=float(extent / grid), name=name)


def _robust_range(x: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(0.5th percentile of the cube, 99th percentile in the head), on a 1-in-8 subsample."""
    sub = x[::2, ::2, ::2]
    lo = float(np.percentile(sub, 0.5))
    fg = sub[mask[::2, ::2, ::2]]
    hi = float(np.percentile(fg, 99)) if fg.size > 10 else float(np.percentile(sub, 99.5))
    return lo, hi


def renormalise_like(corrupted: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rescale a corrupted cube as whole-scan normalisation would have rescaled the corrupted scan.

    ``reference`` is the clean cube (already normalised). Both cubes' robust ranges are measured
    the same way; the corrupted range is mapped onto the clean one, then clipped to [0, 2]. An
    uncorrupted cube is returned unchanged (up to clipping).
    """
    lo_c, hi_c = _robust_range(corrupted, mask)
    lo_r, hi_r = _robust_range(reference, mask)
    if not hi_c > lo_c:
        return np.clip(corrupted, 0.0, 2.0).astype(np.float32)
    out = (corrupted - lo_c) * ((hi_r - lo_r) / (hi_c - lo_c)) + lo_r
    return np.clip(out, 0.0, 2.0).astype(np.float32)


def augment_cube(
    cube: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Geometry and smooth-intensity augmentation of a clean cube (never a gamma).

    Flips (each axis, p=0.5), an axis permutation (p=0.5), with p=0.5 a random affine (rotation
    up to 12 degrees about each axis, isotropic scale 0.9-1.1, shift up to 6 % of the field) plus an
    elastic warp (a 4^3 random displacement lattice, up to ~1.5 voxels, trilinearly upsampled),
    and with p=0.5 a smooth multiplicative field exp(b . [x, y, z, x^2, y^2, z^2]) with |b| <= 0.12.
    """
    import torch
    import torch.nn.functional as F

    for axis in range(3):
        if rng.random() < 0.5:
            cube, mask = np.flip(cube, axis), np.flip(mask, axis)
    if rng.random() < 0.5:
        perm = tuple(int(a) for a in rng.permutation(3))
        cube, mask = np.transpose(cube, perm), np.transpose(mask, perm)
    cube = np.ascontiguousarray(cube, dtype=np.float32)
    mask = np.ascontiguousarray(mask)
    n = cube.shape[0]
    if rng.random() < 0.5:
        angles = np.deg2rad(rng.uniform(-12, 12, size=3))
        cx, cy, cz = np.cos(angles)
        sx, sy, sz = np.sin(angles)
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        theta = np.zeros((1, 3, 4), dtype=np.float32)
        theta[0, :, :3] = (rx @ ry @ rz) / rng.uniform(0.9, 1.1)
        theta[0, :, 3] = rng.uniform(-0.12, 0.12, size=3)
        grid = F.affine_grid(torch.from_numpy(theta), [1, 1, n, n, n], align_corners=False)
        coarse = torch.from_numpy(rng.normal(0, 1.5 / n, size=(1, 3, 4, 4, 4)).astype(np.float32))
        warp = F.interpolate(coarse, size=(n, n, n), mode="trilinear", align_corners=True)
        grid = grid + warp.permute(0, 2, 3, 4, 1)
        both = torch.from_numpy(np.stack([cube, mask.astype(np.float32)]))[None]
        out = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[
            0
        ].numpy()
        cube, mask = np.ascontiguousarray(out[0]), out[1] > 0.5
    if rng.random() < 0.5:
        axis = np.linspace(-1, 1, n, dtype=np.float32)
        b = rng.uniform(-0.12, 0.12, size=6).astype(np.float32)
        field = (
            (b[0] * axis + b[3] * axis**2)[:, None, None]
            + (b[1] * axis + b[4] * axis**2)[None, :, None]
            + (b[2] * axis + b[5] * axis**2)[None, None, :]
        )
        cube = cube * np.exp(field)
    return cube.astype(np.float32, copy=False), mask


def draw_grades(rng: np.random.Generator) -> dict[str, int]:
    """Grades for one sample: how many artifacts (:data:`N_ARTIFACT_PROBS`), which, how severe."""
    n = int(rng.choice(len(N_ARTIFACT_PROBS), p=N_ARTIFACT_PROBS))
    chosen = set(rng.choice(len(ARTIFACTS), size=n, replace=False).tolist()) if n else set()
    return {
        a: (2 if rng.random() < SEVERE_PROBABILITY else 1) if i in chosen else 0
        for i, a in enumerate(ARTIFACTS)
    }


def positive_weights() -> np.ndarray:
    """Weighted-BCE ``pos_weight`` per (artifact, task): P(negative) / P(positive) when sampling.

    Every artifact is equally likely to be picked, so P(artifact corrupted) = E[n] / 3.
    """
    expected = sum(k * p for k, p in enumerate(N_ARTIFACT_PROBS)) / len(ARTIFACTS)
    p_mod = expected  # grade >= 1
    p_sev = expected * SEVERE_PROBABILITY
    row = [(1 - p_mod) / p_mod, (1 - p_sev) / p_sev]
    return np.array([row for _ in ARTIFACTS], dtype=np.float32)


def corrupt_cube(
    cube: np.ndarray,
    mask: np.ndarray,
    grades: dict[str, int],
    voxel_mm: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, dict]]:
    """Apply the simulated artifacts at the given grades; returns (cube, params used).

    Parameters come from :func:`bids_qa.artifact_tiers.sample_tier_params` (Loizillon et al. Table 3
    ranges, calibrated to our intensity scale) and are applied in :data:`APPLY_ORDER` on the cube
    itself; the result is renormalised with :func:`renormalise_like`.
    """
    from bids_qa import artifact_tiers

    out = cube
    used: dict[str, dict] = {}
    for artifact in APPLY_ORDER:
        grade = int(grades.get(artifact, 0))
        if grade == 0:
            continue
        params = artifact_tiers.sample_tier_params(artifact, LEVELS[grade], rng, ndim=3)
        out = apply_tier_artifact(out, artifact, params, (voxel_mm,) * 3)
        used[artifact] = params
    if used:
        out = renormalise_like(out, cube, mask)
    return out.astype(np.float32, copy=False), used


def apply_tier_artifact(
    cube: np.ndarray, artifact: str, params: dict, zooms: tuple[float, float, float]
) -> np.ndarray:
    """Apply one Loizillon et al. artifact with fixed parameters (:func:`bids_qa.artifacts.apply_artifact`)."""
    from bids_qa import artifacts

    return np.asarray(
        artifacts.apply_artifact(cube, artifact, params, zooms=zooms), dtype=np.float32
    )


def random_view(cube: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The cube flipped along random axes and with its axes permuted (labels are unchanged:
    a flipped motion-corrupted scan is still motion-corrupted)."""
    for axis in range(3):
        if rng.random() < 0.5:
            cube = np.flip(cube, axis)
    cube = np.transpose(cube, tuple(int(a) for a in rng.permutation(3)))
    return np.ascontiguousarray(cube, dtype=np.float32)


class TierSampleMaker:
    """Picklable sample factory: ``rng -> (cubes (V, 1, G, G, G), labels (V, 3, 2), grades (V, 3))``.

    Simulating motion dominates the cost of a sample, so each corrupted cube is used ``views``
    times: as simulated, then as random flips/permutations of itself.
    """

    def __init__(self, sources: list[CubeSource], augment: bool = True, views: int = 2) -> None:
        if not sources:
            raise ValueError("no training volumes: TierSampleMaker needs at least one CubeSource")
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.sources = sources
        self.augment = augment
        self.views = views

    def __call__(self, rng: np.random.Generator):
        src = self.sources[int(rng.integers(len(self.sources)))]
        cube, mask = src.cube, src.mask
        if self.augment:
            aug, mask = augment_cube(cube, mask, rng)
            cube = renormalise_like(aug, cube, mask)
        grades = draw_grades(rng)
        out, _ = corrupt_cube(cube, mask, grades, src.voxel_mm, rng)
        cubes = [out] + [random_view(out, rng) for _ in range(self.views - 1)]
        g = np.array([grades[a] for a in ARTIFACTS], dtype=np.int64)
        labels = np.stack([(g >= 1), (g >= 2)], axis=1).astype(np.float32)
        v = self.views
        return np.stack(cubes)[:, None], np.repeat(labels[None], v, 0), np.repeat(g[None], v, 0)


def sources_from_data(
    data_dir: str,
    split: str,
    n_synthetic: int,
    seed: int,
    grid: int,
    voxel_mm: float = 0.0,
    mix=None,
) -> list[CubeSource]:
    """Clean volumes of ``split`` (out-of-scope entries skipped) plus ``n_synthetic`` synthetic
    ones, each resampled once to the model's input cube."""
    from bids_qa.training.data import clean_volumes, synthetic_volumes

    sources = [
        make_cube_source(vol, grid, name=str(entry.get("path", entry)), voxel_mm=voxel_mm)
        for entry, vol in clean_volumes(data_dir, split, mix=mix)
        if not entry.get("out_of_scope")
    ]
    if n_synthetic:
        rng = np.random.default_rng([seed, 104729 if split == "train" else 130363])
        sources += [
            make_cube_source(vol, grid, name=str(entry["path"]), voxel_mm=voxel_mm)
            for entry, vol in synthetic_volumes(n_synthetic, rng)
        ]
    return sources
