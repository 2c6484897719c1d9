"""Train the tiers model (paper 003) on clean volumes corrupted on the fly, and evaluate it.

Sample ``i`` is drawn from ``default_rng([seed, i])`` (see :mod:`bids_qa.training.loop`):

1. a clean volume, held as its ``grid``^3 cube (:meth:`Volume.grid`, the scorer's input grid,
   64^3 by default, ~3.6-4 mm voxels) and the matching head mask; every training volume is resampled once;
2. augmentation that cannot be mistaken for an artifact: flips along each axis, an axis
   permutation, a small random affine (rotation, scale, shift) with a mild elastic warp, and a
   smooth multiplicative intensity field; no gamma (the contrast artifact *is* a gamma);
3. a grade 0/1/2 for each of motion, noise and contrast: the number of corrupted artifacts is 0,
   1, 2 or 3 (probabilities :data:`N_ARTIFACT_PROBS`), each corrupted one moderate or severe with
   equal chance. So, as the paper requires, the "0" class of one artifact holds clean scans *and*
   scans with the other artifacts;
4. the paper's simulation (Table 3) through :mod:`bids_qa.artifacts`, in the order contrast ->
   motion -> noise (tissue contrast exists before the acquisition, motion happens during it,
   thermal noise is added on top). The noise is added to the cube itself, or, with
   ``TierConfig.noise_reference_mm`` > 0, as the noise of a scan at that resolution looks after
   resampling into the cube (:func:`reference_noise`);
5. renormalisation: the corrupted cube is rescaled as :func:`bids_qa.volume.normalise` would have
   rescaled the corrupted scan (0.5th percentile -> 0, head 99th percentile -> 1, relative to the
   clean cube, so clean cubes are left exactly as the scorer sees them);
6. the corrupted cube enters the batch ``views`` times (default 2: as simulated and as a random
   flip/permutation of itself), because simulating 3D motion costs far more than a training step.

Loss: weighted binary cross-entropy over the six outputs (paper Sec. 3.5), each positive class
weighted by (negatives / positives) of the sampling distribution. The moderate output is trained as
"grade >= 1" (ours; on grade-0/1 data this is the paper's 0-vs-1 task). The kept weights are those
with the lowest validation loss (paper Sec. 3.3), on a fixed set of corrupted validation volumes.

:func:`evaluate_tiers` measures the paper's numbers (Tables 4-5, Sec. 4.2): balanced accuracy of
the severe (0-1 vs 2) and moderate (0 vs 1) tasks per artifact and of the tier tasks (tier 1-2 vs
3, tier 1 vs 2), on validation volumes corrupted with fixed-seed simulated levels.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa.metrics import balanced_accuracy, roc_auc  # noqa: F401 - re-exported for the benchmark callers
from bids_qa.models.tiers import (
    ARTIFACTS,
    NAME,
    TASKS,
    TierConfig,
    build_network,
    grade_from_probabilities,
    tier_from_grades,
)
from bids_qa.similarity import realised_change
from bids_qa.training import loop

#: Probability that a sample carries 0, 1, 2 or 3 simulated artifacts.
N_ARTIFACT_PROBS: tuple[float, ...] = (0.25, 0.45, 0.20, 0.10)
#: Probability that a corrupted artifact is severe (else moderate).
SEVERE_PROBABILITY = 0.5
#: Order in which artifacts are applied to one cube.
APPLY_ORDER: tuple[str, ...] = ("contrast", "motion", "noise")
#: Noise SD range (normalised scale) of the clean coarse copies (:func:`coarsened_volume`): a
#: clean scan's per-voxel noise, below the paper's moderate noise (0.0206-0.0311 on this scale).
COARSE_CLEAN_NOISE: tuple[float, float] = (0.003, 0.012)
#: Levels of the paper's three-level scale, by grade.
LEVELS: tuple[str, ...] = ("none", "moderate", "severe")


# ----------------------------------------------------------------------------- data


@dataclass
class CubeSource:
    """One clean volume on the model grid: normalised cube, head mask and isotropic voxel size."""

    cube: np.ndarray
    mask: np.ndarray
    voxel_mm: float
    name: str = ""
    #: The scan's acquired voxel sizes, in the cube's axis order (for noise simulated at them).
    zooms: tuple[float, float, float] | None = None
    #: The scan's BIDS suffix (what contrast-aware networks are told; "" when unknown).
    suffix: str = ""


def make_cube_source(
    volume, grid: int, name: str = "", voxel_mm: float = 0.0, suffix: str = ""
) -> CubeSource:
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
    zooms = tuple(float(z) for z in volume.zooms)
    return CubeSource(
        cube=cube,
        mask=mask,
        voxel_mm=float(extent / grid),
        name=name,
        zooms=zooms,  # type: ignore[arg-type]
        suffix=str(suffix or ""),
    )


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
    """Geometry and smooth-intensity augmentation of a clean cube (never a gamma); see
    :func:`augment_cube_axes`."""
    cube, mask, _ = augment_cube_axes(cube, mask, rng)
    return cube, mask


def augment_cube_axes(
    cube: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Geometry and smooth-intensity augmentation of a clean cube (never a gamma), and the axis
    permutation it applied (output axis ``i`` is input axis ``perm[i]``), so that noise simulated
    at the scan's voxel sizes can follow its axes.

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
    perm: tuple[int, int, int] = (0, 1, 2)
    if rng.random() < 0.5:
        perm = tuple(int(a) for a in rng.permutation(3))  # type: ignore[assignment]
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
    return cube.astype(np.float32, copy=False), mask, perm


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
    noise_reference_mm: float = 0.0,
    native_zooms: tuple[float, float, float] | None = None,
    native_axes: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, dict[str, dict]]:
    """Apply the paper's simulated artifacts at the given grades; returns (cube, params used).

    Parameters come from :func:`bids_qa.artifact_tiers.sample_tier_params` (paper 003 Table 3 ranges,
    calibrated to our intensity scale) and are applied in :data:`APPLY_ORDER`; the result is
    renormalised with :func:`renormalise_like`. Where the noise is added: to the cube itself
    (default); with ``native_zooms``, to the scan's acquired voxels of those sizes (cube axis
    order; ``native_axes``: how the cube's axes were permuted since), as it looks after
    resampling into the cube (:func:`native_noise`); with
    ``noise_reference_mm > 0``, to a scan at that isotropic resolution.
    """
    from bids_qa import artifact_tiers

    out = cube
    used: dict[str, dict] = {}
    for artifact in APPLY_ORDER:
        grade = int(grades.get(artifact, 0))
        if grade == 0:
            continue
        params = artifact_tiers.sample_tier_params(artifact, LEVELS[grade], rng, ndim=3)
        if artifact == "noise" and native_zooms is not None:
            params["native_zooms"] = [float(z) for z in native_zooms]
            out = native_noise(
                out, params["std"], voxel_mm, native_zooms, int(params["seed"]), native_axes
            )
        elif artifact == "noise" and noise_reference_mm > 0:
            params["reference_mm"] = noise_reference_mm
            out = reference_noise(
                out, params["std"], voxel_mm, noise_reference_mm, int(params["seed"])
            )
        else:
            out = apply_tier_artifact(out, artifact, params, (voxel_mm,) * 3)
        used[artifact] = params
    if used:
        out = renormalise_like(out, cube, mask)
    return out.astype(np.float32, copy=False), used


def noise_average_n(voxel_mm: float, reference_mm: float) -> float:
    """How many independent voxels of a ``reference_mm`` scan one ``voxel_mm`` cube voxel averages
    when the scan is resampled as the scorer does (1 for voxels no larger than the reference)."""
    from bids_qa.volume import averaged_voxel_count

    if voxel_mm <= reference_mm:
        return 1.0
    return averaged_voxel_count(voxel_mm, (reference_mm,) * 3)


def reference_noise(
    cube: np.ndarray, std: float, voxel_mm: float, reference_mm: float, seed: int
) -> np.ndarray:
    """Rician noise of ``std`` added to an isotropic ``reference_mm`` scan, as it appears on the
    cube: :func:`native_noise` for that voxel size (noise added to the cube itself when its
    voxels are no larger than the reference's)."""
    from bids_qa import artifacts

    if voxel_mm <= reference_mm:
        return artifacts.apply_artifact(cube, "noise", {"std": std, "rician": True, "seed": seed})
    return native_noise(cube, std, voxel_mm, (reference_mm,) * 3, seed)


def native_noise(
    cube: np.ndarray,
    std: float,
    voxel_mm: float,
    zooms: tuple[float, float, float],
    seed: int,
    axes: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Rician noise of ``std`` added to every acquired voxel of a scan with voxel sizes ``zooms``,
    as it appears on the cube: averaged over the ``n`` voxels one cube voxel covers, with the
    resampling's spatial correlation (:func:`bids_qa.artifacts.averaged_rician`; ~28 voxels for a
    1 mm scan on a 2.5 mm cube, ~3.5 for a 2 mm scan). The unit field
    (:func:`bids_qa.volume.resampled_unit_noise`) is made once per voxel sizes and cube size and
    moved by a random circular shift and axis flips drawn from ``seed``: a new noise draw for every
    sample at the cost of a copy. ``axes``: the permutation the cube's axes went through since
    resampling (:func:`augment_cube_axes`), applied to the field."""
    from bids_qa import artifacts
    from bids_qa.volume import resampled_unit_noise

    key = tuple(round(float(z), 2) for z in zooms)
    field, n = resampled_unit_noise(float(voxel_mm), key, int(cube.shape[0]))  # type: ignore[arg-type]
    if field.shape != cube.shape:
        raise ValueError(f"resampled noise needs a cube, got shape {cube.shape}")
    if axes is not None and tuple(axes) != (0, 1, 2):
        field = np.transpose(field, axes)
    rng = np.random.default_rng(seed)
    field = np.roll(field, tuple(int(k) for k in rng.integers(0, cube.shape[0], 3)), axis=(0, 1, 2))
    flips = tuple(a for a in range(3) if rng.random() < 0.5)
    if flips:
        field = np.flip(field, flips)
    return artifacts.averaged_rician(cube, std, n, field)


def apply_tier_artifact(
    cube: np.ndarray, artifact: str, params: dict, zooms: tuple[float, float, float]
) -> np.ndarray:
    """Apply one paper-003 artifact with fixed parameters (:func:`bids_qa.artifacts.apply_artifact`)."""
    from bids_qa import artifacts

    return np.asarray(
        artifacts.apply_artifact(cube, artifact, params, zooms=zooms), dtype=np.float32
    )


def limit_threads(n: int) -> None:
    """Use at most ``n`` threads in torch and in SimpleITK (TorchIO's motion resampling), so a
    ``--threads 1`` run really stays on one core."""
    if n <= 0:
        return
    import torch

    torch.set_num_threads(n)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    except ImportError:  # pragma: no cover - SimpleITK comes with torchio
        pass


def random_view(cube: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The cube flipped along random axes and with its axes permuted (labels are unchanged:
    a flipped motion-corrupted scan is still motion-corrupted)."""
    for axis in range(3):
        if rng.random() < 0.5:
            cube = np.flip(cube, axis)
    cube = np.transpose(cube, tuple(int(a) for a in rng.permutation(3)))
    return np.ascontiguousarray(cube, dtype=np.float32)


class TierSampleMaker:
    """Picklable sample factory: ``rng -> (cubes (V, 1, G, G, G), labels (V, 3, 2), grades (V, 3),
    side (V, k))`` (``side``: the network's side input; one unused zero when it takes none).

    Simulating motion dominates the cost of a sample, so each corrupted cube is used ``views``
    times: as simulated, then as random flips/permutations of itself. ``config`` (default: a
    plain :class:`~bids_qa.models.tiers.TierConfig`) says what the noise grades mean and which
    side input the network reads: with ``native_noise`` the noise is simulated at the source
    scan's own voxel sizes (:func:`native_noise`); with ``contrast_input`` the scan's suffix is
    hidden (read as unknown) in a ``suffix_dropout`` share of the samples, so the network also
    grades scans whose suffix is not known.
    """

    def __init__(
        self,
        sources: list[CubeSource],
        config: TierConfig | None = None,
        augment: bool = True,
        views: int = 2,
        suffix_dropout: float = 0.0,
    ) -> None:
        if not sources:
            raise ValueError("no training volumes: TierSampleMaker needs at least one CubeSource")
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if not 0.0 <= suffix_dropout <= 1.0:
            raise ValueError(f"suffix_dropout must be in [0, 1], got {suffix_dropout}")
        self.sources = sources
        self.config = config if config is not None else TierConfig()
        self.augment = augment
        self.views = views
        self.suffix_dropout = float(suffix_dropout)
        if self.config.native_noise and any(src.zooms is None for src in sources):
            raise ValueError("native noise needs every source's voxel sizes (CubeSource.zooms)")

    def __call__(self, rng: np.random.Generator):
        src = self.sources[int(rng.integers(len(self.sources)))]
        cube, mask = src.cube, src.mask
        axes: tuple[int, int, int] = (0, 1, 2)
        if self.augment:
            aug, mask, axes = augment_cube_axes(cube, mask, rng)
            cube = renormalise_like(aug, cube, mask)
        grades = draw_grades(rng)
        zooms = src.zooms if self.config.native_noise else None
        out, _ = corrupt_cube(
            cube, mask, grades, src.voxel_mm, rng, self.config.noise_reference_mm, zooms, axes
        )
        cubes = [out] + [random_view(out, rng) for _ in range(self.views - 1)]
        g = np.array([grades[a] for a in ARTIFACTS], dtype=np.int64)
        labels = np.stack([(g >= 1), (g >= 2)], axis=1).astype(np.float32)
        v = self.views
        hide = self.config.contrast_input and rng.random() < self.suffix_dropout
        side = source_side_input(src, self.config, suffix="" if hide else None)
        return (
            np.stack(cubes)[:, None],
            np.repeat(labels[None], v, 0),
            np.repeat(g[None], v, 0),
            np.repeat(side[None], v, 0),
        )


def source_side_input(
    src: CubeSource, config: TierConfig, suffix: str | None = None
) -> np.ndarray:
    """The network's side input for a source (:meth:`TierConfig.side_vector`; ``suffix``
    overrides the source's), or one unused zero when ``config``'s network reads none."""
    vec = config.side_vector(src.voxel_mm, src.zooms, src.suffix if suffix is None else suffix)
    return np.zeros(1, dtype=np.float32) if vec is None else vec


# ----------------------------------------------------------------------------- loss, metrics


def tier_loss(logits, labels, pos_weight):
    """Weighted binary cross-entropy averaged over the six outputs; also per-task parts."""
    import torch.nn.functional as F

    per = F.binary_cross_entropy_with_logits(
        logits, labels, pos_weight=pos_weight, reduction="none"
    )
    parts = {
        f"{a}_{t}": float(per[:, i, j].mean().detach())
        for i, a in enumerate(ARTIFACTS)
        for j, t in enumerate(TASKS)
    }
    return per.mean(), parts


def level_separation(
    true_grades: np.ndarray, probs: np.ndarray, change: np.ndarray
) -> dict[str, dict[str, float]]:
    """Moderate vs severe, per artifact, on samples carrying only that artifact: ROC AUC of the
    model's ``p_severe`` and of the realised change (:func:`bids_qa.similarity.realised_change`,
    which needs the clean cube). A low change AUC means the two simulated levels differ little
    in the image itself, which bounds what any grader of visible damage can separate."""
    out: dict[str, dict[str, float]] = {}
    for a, artifact in enumerate(ARTIFACTS):
        others_clean = (np.delete(true_grades, a, axis=1) == 0).all(axis=1)
        use = others_clean & (true_grades[:, a] >= 1)
        severe = true_grades[use, a] == 2
        out[artifact] = {
            "model_auc": roc_auc(severe, probs[use, a, 1]),
            "change_auc": roc_auc(severe, change[use]),
            "n": int(use.sum()),
        }
    return out


def metrics_from_predictions(
    true_grades: np.ndarray, probs: np.ndarray, single: np.ndarray
) -> dict[str, Any]:
    """The paper's balanced accuracies from true grades ``(n, 3)`` and probabilities ``(n, 3, 2)``.

    Per artifact, on ``single`` samples (clean or exactly one artifact, as in the paper's synthetic
    test set) whose *other* artifacts are at most moderate (paper Tables A2-A3: "Mov0" = clean +
    moderate contrast + moderate noise): severe = grade 0-1 vs 2; moderate = 0 vs 1 over those
    whose grade for that artifact is 0 or 1. Tier tasks on every sample (mixtures included):
    tier 1-2 vs 3, and tier 1 vs 2 over samples whose true tier is 1 or 2.
    """
    pred_grades = np.array(
        [[grade_from_probabilities(p[a, 0], p[a, 1]) for a in range(len(ARTIFACTS))] for p in probs]
    )
    out: dict[str, Any] = {}
    for a, artifact in enumerate(ARTIFACTS):
        others_mild = (np.delete(true_grades, a, axis=1) <= 1).all(axis=1)
        use = single & others_mild
        g, pg = true_grades[use, a], pred_grades[use, a]
        out[f"{artifact}_severe_bacc"] = 100 * balanced_accuracy(g == 2, pg == 2)
        keep = g <= 1
        out[f"{artifact}_moderate_bacc"] = 100 * balanced_accuracy(g[keep] == 1, pg[keep] >= 1)
    true_tier = np.array(
        [
            tier_from_grades(dict(zip(ARTIFACTS, map(int, row), strict=True)))[0]
            for row in true_grades
        ]
    )
    pred_tier = np.array(
        [
            tier_from_grades(dict(zip(ARTIFACTS, map(int, row), strict=True)))[0]
            for row in pred_grades
        ]
    )
    out["tier12_vs_3_bacc"] = 100 * balanced_accuracy(true_tier == 3, pred_tier == 3)
    low = true_tier <= 2
    out["tier1_vs_2_bacc"] = 100 * balanced_accuracy(true_tier[low] == 2, pred_tier[low] >= 2)
    out["tier_accuracy"] = 100 * float((true_tier == pred_tier).mean())
    out["grade_accuracy"] = {
        a: 100 * float((true_grades[:, i] == pred_grades[:, i]).mean())
        for i, a in enumerate(ARTIFACTS)
    }
    out["grade_confusion"] = {
        a: [
            [int(((true_grades[:, i] == t) & (pred_grades[:, i] == q)).sum()) for q in range(3)]
            for t in range(3)
        ]
        for i, a in enumerate(ARTIFACTS)
    }
    confusion = np.zeros((3, 3), dtype=int)
    for t, p in zip(true_tier, pred_tier, strict=True):
        confusion[t - 1, p - 1] += 1
    out["tier_confusion"] = confusion.tolist()
    out["n_samples"] = int(len(true_grades))
    out["n_single"] = int(single.sum())
    return out


def evaluation_plan(draws: int) -> list[dict[str, int]]:
    """Grades evaluated per volume: ``draws`` clean, ``draws`` of each single artifact x level, and
    ``draws`` random multi-artifact combinations (a placeholder ``{"mixed": 1}``, drawn later)."""
    plan: list[dict[str, int]] = []
    for _ in range(draws):
        plan.append(dict.fromkeys(ARTIFACTS, 0))
        for artifact in ARTIFACTS:
            for grade in (1, 2):
                plan.append({a: (grade if a == artifact else 0) for a in ARTIFACTS})
        plan.append({"mixed": 1})
    return plan


def _draw_mixed(rng: np.random.Generator) -> dict[str, int]:
    """Two or three artifacts, each moderate or severe."""
    n = int(rng.integers(2, len(ARTIFACTS) + 1))
    chosen = set(rng.choice(len(ARTIFACTS), size=n, replace=False).tolist())
    return {a: int(rng.integers(1, 3)) if i in chosen else 0 for i, a in enumerate(ARTIFACTS)}


def build_evaluation_set(
    sources: list[CubeSource],
    seed: int,
    draws: int,
    noise_reference_mm: float = 0.0,
    native_noise: bool = False,
):
    """Yield (cube, grades, k) for every source ``k`` and plan entry; sample ``(k, j)`` uses
    ``default_rng([seed, k, j])`` so the set is identical across calls and runs. The noise
    definition (``noise_reference_mm``, ``native_noise``) is as in :func:`corrupt_cube`."""
    for k, src in enumerate(sources):
        for j, grades in enumerate(evaluation_plan(draws)):
            rng = np.random.default_rng([seed, k, j])
            if "mixed" in grades:
                grades = _draw_mixed(rng)
            cube, _ = corrupt_cube(
                src.cube,
                src.mask,
                grades,
                src.voxel_mm,
                rng,
                noise_reference_mm,
                src.zooms if native_noise else None,
            )
            yield cube, np.array([grades[a] for a in ARTIFACTS], dtype=np.int64), k


def predict_probabilities(
    model, cubes: np.ndarray, batch_size: int = 8, side: np.ndarray | None = None
) -> np.ndarray:
    """Sigmoid outputs ``(n, 3, 2)`` from a :class:`~bids_qa.models.tiers.TierScorer` or a bare
    network (evaluated in eval mode on CPU, restored to its previous mode afterwards); ``side``
    ``(n, k)`` is used only by networks that take a side input."""
    if hasattr(model, "probabilities"):
        return model.probabilities(cubes, side)
    import torch

    from bids_qa.models.weights import predict_batched

    takes_side = bool(model.config.side_features)
    if takes_side and side is None:
        raise ValueError("this network needs its side input")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        probs = predict_batched(
            model, cubes, batch_size, str(device), post=torch.sigmoid, side=side if takes_side else None
        )
    finally:
        model.train(was_training)
    return probs.reshape(len(probs), len(ARTIFACTS), len(TASKS))


def evaluate_tiers(
    model,
    volumes: list,
    seed: int | np.random.Generator = 20260,
    draws: int = 4,
    batch_size: int = 8,
    noise_reference_mm: float | None = None,
    native_noise: bool | None = None,
) -> dict[str, Any]:
    """The paper's balanced accuracies on fixed-seed corrupted copies of clean volumes.

    Parameters
    ----------
    model
        A :class:`~bids_qa.models.tiers.TierScorer` or a network from :func:`build_network`.
    volumes
        Clean volumes: :class:`~bids_qa.volume.Volume` objects (resampled here to the model's
        grid), ``(entry, Volume)`` pairs as :func:`~bids_qa.training.data.clean_volumes` returns,
        or :class:`CubeSource` objects (e.g. from :func:`sources_from_data`).
    seed, draws
        Every volume gets ``draws`` copies of each class of :func:`evaluation_plan` (clean, each
        artifact moderate and severe, random mixtures), drawn from ``default_rng([seed, k, j])``;
        a Generator passed as ``seed`` supplies that integer.
    noise_reference_mm
        What the noise grades mean (:class:`~bids_qa.models.tiers.TierConfig`); default: the
        model's own definition. Give the other one to compare weights trained under either.
    native_noise
        Noise added at each volume's own voxel sizes (:func:`native_noise`); default: the
        model's own definition (it overrides ``noise_reference_mm``).

    Returns
    -------
    dict
        ``<artifact>_severe_bacc``, ``<artifact>_moderate_bacc``, ``tier12_vs_3_bacc``,
        ``tier1_vs_2_bacc`` (percent), tier accuracy and confusion (rows: true tier 1-3,
        columns: predicted), per-artifact grade confusion (rows: true grade), sample counts and the network time per volume
        (``net_s_per_volume``, excluding simulation).
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**31 - 1))
    grid, voxel_mm = model.config.grid, model.config.voxel_mm
    if native_noise is None:
        native_noise = model.config.native_noise
    if noise_reference_mm is None:
        noise_reference_mm = 0.0 if native_noise else model.config.noise_reference_mm
    sources = []
    for k, item in enumerate(volumes):
        suffix = ""
        if isinstance(item, tuple):
            suffix = str(item[0].get("suffix", "")) if isinstance(item[0], dict) else ""
            item = item[1]
        sources.append(
            item
            if isinstance(item, CubeSource)
            else make_cube_source(item, grid, name=f"volume{k}", voxel_mm=voxel_mm, suffix=suffix)
        )
    if any(src.cube.shape != (grid,) * 3 for src in sources):
        raise ValueError(f"cube sources must be on the model's {grid}^3 grid")
    takes_side = bool(model.config.side_features)
    cubes, grades, sides, changes = [], [], [], []
    probs = []
    net_time = 0.0

    def predict() -> None:
        nonlocal net_time
        t0 = time.perf_counter()
        side = np.stack(sides) if takes_side else None
        probs.append(predict_probabilities(model, np.stack(cubes), batch_size, side))
        net_time += time.perf_counter() - t0

    for cube, g, k in build_evaluation_set(
        sources, seed, draws, noise_reference_mm, native_noise
    ):
        cubes.append(cube)
        grades.append(g)
        sides.append(source_side_input(sources[k], model.config))
        changes.append(realised_change(sources[k].cube, cube, sources[k].mask > 0))
        if len(cubes) == batch_size:
            predict()
            cubes, sides = [], []
    if cubes:
        predict()
    true_grades = np.stack(grades)
    p = np.concatenate(probs)
    single = (true_grades > 0).sum(axis=1) <= 1
    out = metrics_from_predictions(true_grades, p, single)
    out["level_separation"] = level_separation(true_grades, p, np.asarray(changes))
    out["net_s_per_volume"] = net_time / max(1, len(true_grades))
    out["noise_reference_mm"] = noise_reference_mm
    out["native_noise"] = bool(native_noise)
    out["draws"] = draws
    out["seed"] = seed
    out["n_volumes"] = len(sources)
    return out


def evaluate_weights(
    weights: str | Path,
    data_dir: str | Path,
    split: str = "validation",
    draws: int = 4,
    seed: int = 20260,
    device: str = "cpu",
    noise_reference_mm: float | None = None,
    native_noise: bool | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_tiers` of a weights file on one split of the clean-data manifest (what
    ``docs/models/tiers.md`` reports, for ``bids_qa evaluate``); noise grades as the weights
    define them unless ``noise_reference_mm`` or ``native_noise`` is given."""
    from bids_qa.models.tiers import TierScorer

    scorer = TierScorer(device=device, weights=str(weights))
    sources = sources_from_data(
        str(data_dir), split, 0, 0, scorer.config.grid, scorer.config.voxel_mm
    )
    out = evaluate_tiers(
        scorer,
        sources,
        seed=seed,
        draws=draws,
        noise_reference_mm=noise_reference_mm,
        native_noise=native_noise,
    )
    out["split"] = split
    out["weights_version"] = scorer.version
    return out


# ----------------------------------------------------------------------------- training


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids_qa train tiers", description=__doc__.splitlines()[0])
    loop.add_common_arguments(p, steps=2600, batch_size=8, lr=1e-3)
    p.add_argument("--grid", type=int, default=64, help="model input grid (cube side, voxels)")
    p.add_argument(
        "--voxel-mm",
        type=float,
        default=0.0,
        help="input cube of this voxel size around the head (0: whole field of view in the grid)",
    )
    p.add_argument(
        "--noise-reference-mm",
        type=float,
        default=0.0,
        help="noise grades refer to Rician noise added at this isotropic resolution and averaged "
        "into the cube (paper 003: 1 mm); 0: noise added to the cube itself",
    )
    p.add_argument(
        "--native-noise",
        action="store_true",
        help="noise grades refer to noise added to each acquired voxel, simulated at every "
        "training scan's own voxel sizes; the network also reads how many acquired voxels one "
        "cube voxel averages (needs --voxel-mm)",
    )
    p.add_argument(
        "--contrast-input",
        action="store_true",
        help="the network also reads the scan's sequence family (one-hot T1w/T2w/FLAIR/PDw from "
        "the BIDS suffix; unknown suffixes read as zeros)",
    )
    p.add_argument(
        "--suffix-dropout",
        type=float,
        default=0.25,
        help="with --contrast-input: share of training samples shown as of unknown suffix",
    )
    p.add_argument(
        "--coarse-copies",
        type=float,
        nargs="*",
        default=[],
        metavar="MM",
        help="also train on each real training volume block-averaged to these voxel sizes (clean "
        "coarse acquisitions: with --native-noise, what a clean 2 mm scan looks like)",
    )
    p.add_argument(
        "--channels", type=int, nargs=5, default=[16, 32, 48, 64, 96], help="conv block widths"
    )
    p.add_argument(
        "--fc", type=int, nargs=2, default=[128, 32], help="hidden sizes of FC 1 and FC 2"
    )
    p.add_argument(
        "--synthetic", type=int, default=6, help="synthetic MNI-derived volumes added to training"
    )
    p.add_argument(
        "--val-draws",
        type=int,
        default=2,
        help="validation copies per volume and class during training",
    )
    p.add_argument(
        "--eval-draws",
        type=int,
        default=4,
        help="copies per volume and class for the final evaluation",
    )
    p.add_argument(
        "--views",
        type=int,
        default=2,
        help="training inputs made from each simulated cube (flips/permutations)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="stop (checkpointed, resumable) after this many minutes of training; 0: no limit",
    )
    p.add_argument(
        "--init-partial",
        action="store_true",
        help="with --init: load only tensors of matching name and shape (e.g. reuse a conv trunk "
        "when --grid changes the first fully connected layer)",
    )
    return p


def train(
    settings: loop.TrainSettings,
    train_sources: list[CubeSource],
    val_sources: list[CubeSource],
    config: TierConfig,
    argv: list[str] | None = None,
    val_draws: int = 2,
    log_every: int = 25,
    max_minutes: float = 0.0,
    views: int = 2,
    init: str | None = None,
    init_partial: bool = False,
    suffix_dropout: float = 0.25,
) -> dict[str, Any]:
    """Run (or resume) training; returns the best validation record. Writes only into run_dir.
    ``suffix_dropout``: share of samples whose suffix a contrast-aware network is not told."""
    import torch

    from bids_qa import __version__
    from bids_qa.models.weights import save_weights

    run_dir = Path(settings.run_dir)
    loop.write_settings(run_dir, settings, NAME, argv or [])
    limit_threads(settings.threads)
    torch.manual_seed(settings.seed)
    net = build_network(config).to(settings.device)
    fresh = loop.warm_start(net, init, partial=init_partial)
    if fresh:
        print(f"warm start from {init}; freshly initialised: {', '.join(fresh)}", flush=True)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=1e-5)
    start, extra = loop.load_checkpoint(run_dir, net, opt)
    warmup = max(1, min(100, settings.steps // 20))

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine to 5 %
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, settings.steps - warmup)
        # a plain float, so that the optimizer state stays loadable with weights_only=True
        return float(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, frac))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    loop.fast_forward(sched, start)
    best = extra.get("best", {"val_loss": 1e9})
    log = loop.RunLog(run_dir)
    pos_weight = torch.from_numpy(positive_weights()).to(settings.device)

    val_x, val_g, val_s = [], [], []
    for cube, g, k in build_evaluation_set(
        val_sources,
        settings.seed + 7919,
        val_draws,
        config.noise_reference_mm,
        config.native_noise,
    ):
        val_x.append(cube.astype(np.float16))
        val_g.append(g)
        val_s.append(source_side_input(val_sources[k], config))
    val_side = np.stack(val_s) if val_s else np.zeros((0, 1), np.float32)
    val_cubes = (
        np.stack(val_x)
        if val_x
        else np.zeros((0, config.grid, config.grid, config.grid), np.float16)
    )
    val_grades = np.stack(val_g) if val_g else np.zeros((0, len(ARTIFACTS)), np.int64)
    val_labels = np.stack([(val_grades >= 1), (val_grades >= 2)], axis=2).astype(np.float32)

    def validate() -> dict[str, Any]:
        probs = predict_probabilities(net, val_cubes.astype(np.float32), side=val_side)
        p = torch.from_numpy(np.clip(probs, 1e-6, 1 - 1e-6))
        logits = torch.log(p) - torch.log1p(-p)
        loss, _ = tier_loss(logits, torch.from_numpy(val_labels), pos_weight.cpu())
        single = (val_grades > 0).sum(axis=1) <= 1
        return {"val_loss": float(loss), **metrics_from_predictions(val_grades, probs, single)}

    maker = TierSampleMaker(train_sources, config, views=views, suffix_dropout=suffix_dropout)
    if start == 0 and len(val_cubes):  # the untrained baseline, for the record (never kept as best)
        log.write({"step": 0, "validation": validate()})
    t0 = time.time()
    net.train()
    step = start
    stopped_early = False
    saved_rng = extra.get("torch_rng")
    for step, (x, labels, _g, side) in loop.batches(maker, settings, start):
        if saved_rng is not None:  # resume dropout's random stream where the checkpoint left it
            torch.set_rng_state(torch.tensor(saved_rng, dtype=torch.uint8))
            saved_rng = None
        # (batch, views, 1, G, G, G) -> (batch * views, 1, G, G, G)
        x = x.flatten(0, 1).to(settings.device)
        labels = labels.flatten(0, 1).to(settings.device)
        logits = net(x, side.flatten(0, 1).to(settings.device)) if config.side_features else net(x)
        loss, parts = tier_loss(logits, labels, pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0:
            log.write(
                {
                    "step": step,
                    "loss": loss.item(),
                    **parts,
                    "lr": sched.get_last_lr()[0],
                    "elapsed_s": round(time.time() - t0, 1),
                }
            )
        last = step + 1 == settings.steps
        out_of_time = max_minutes > 0 and (time.time() - t0) > 60 * max_minutes
        if ((step + 1) % settings.validate_every == 0 or last or out_of_time) and len(val_cubes):
            metrics = validate()
            log.write({"step": step + 1, "validation": metrics})
            if metrics["val_loss"] < best["val_loss"]:
                best = {"val_loss": metrics["val_loss"], "step": step + 1, "metrics": metrics}
                meta = {
                    "family": NAME,
                    "version": f"{__version__}+s{step + 1}",
                    "config": config.to_dict(),
                    "artifacts": list(ARTIFACTS),
                    "tasks": list(TASKS),
                    "training": {
                        "settings": json.loads((run_dir / "settings.json").read_text()),
                        "step": step + 1,
                        "validation": metrics,
                    },
                }
                save_weights(run_dir / "best.safetensors", net.state_dict(), meta)
        if (step + 1) % settings.checkpoint_every == 0 or last or out_of_time:
            loop.save_checkpoint(
                run_dir,
                step + 1,
                net,
                opt,
                {"best": best, "torch_rng": torch.get_rng_state().tolist()},
            )
        if out_of_time and not last:
            stopped_early = True
            log.write(
                {
                    "step": step + 1,
                    "stopped": f"time limit of {max_minutes} min reached; resume to continue",
                }
            )
            break
    best = dict(best)
    best["stopped_early"] = stopped_early
    best["train_seconds_this_session"] = round(time.time() - t0, 1)
    return best


def coarsened_volume(volume, target_mm: float, noise_std: float = 0.0, seed: int = 0):
    """``volume`` as a coarser acquisition of the same head would record it: voxels block-averaged
    to about ``target_mm`` along every axis finer than that (kernel ``round(target / zoom)``);
    None if no axis changes. Averaging also removes most of the acquisition noise, which a real
    coarse scan would have (protocols spend a larger voxel's SNR on speed), so ``noise_std``
    (normalised scale) adds Rician noise back. Teaches a network that reads the native voxel size
    what clean coarse scans look like."""
    import torch
    import torch.nn.functional as F

    from bids_qa.volume import volume_from_array

    kernel = [max(1, int(round(target_mm / z))) for z in volume.zooms]
    if max(kernel) == 1:
        return None
    t = torch.from_numpy(np.ascontiguousarray(volume.data, dtype=np.float32))[None, None]
    pooled = F.avg_pool3d(t, kernel_size=kernel, stride=kernel, ceil_mode=True)[0, 0].numpy()
    zooms = tuple(float(z) * k for z, k in zip(volume.zooms, kernel, strict=True))
    if noise_std > 0:
        from bids_qa import artifacts

        pooled = artifacts.apply_artifact(
            pooled, "noise", {"std": float(noise_std), "rician": True, "seed": int(seed)}
        )
    return volume_from_array(np.asarray(pooled, dtype=np.float32), zooms)  # type: ignore[arg-type]


def sources_from_data(
    data_dir: str,
    split: str,
    n_synthetic: int,
    seed: int,
    grid: int,
    voxel_mm: float = 0.0,
    coarse_mm: tuple[float, ...] = (),
) -> list[CubeSource]:
    """Clean volumes of ``split`` (out-of-scope entries skipped) plus ``n_synthetic`` synthetic ones,
    each resampled once to the model's input cube; with ``coarse_mm``, each real volume also as
    coarser acquisitions at those voxel sizes (:func:`coarsened_volume`) with a clean scan's noise
    (SD drawn from :data:`COARSE_CLEAN_NOISE`)."""
    from bids_qa.training.data import clean_volumes, synthetic_volumes

    sources = []
    for k, (entry, vol) in enumerate(clean_volumes(data_dir, split)):
        if entry.get("out_of_scope"):
            continue
        name = str(entry.get("path", entry))
        suffix = str(entry.get("suffix", ""))
        sources.append(make_cube_source(vol, grid, name=name, voxel_mm=voxel_mm, suffix=suffix))
        for mm in coarse_mm:
            rng = np.random.default_rng([seed, k, int(round(mm * 100))])
            std = float(rng.uniform(*COARSE_CLEAN_NOISE))
            coarse = coarsened_volume(vol, mm, std, int(rng.integers(2**31)))
            if coarse is not None:
                sources.append(
                    make_cube_source(
                        coarse, grid, name=f"{name}@{mm:g}mm", voxel_mm=voxel_mm, suffix=suffix
                    )
                )
    if n_synthetic:
        rng = np.random.default_rng([seed, 104729 if split == "train" else 130363])
        sources += [
            make_cube_source(
                vol,
                grid,
                name=str(entry["path"]),
                voxel_mm=voxel_mm,
                suffix=str(entry.get("suffix", "")),
            )
            for entry, vol in synthetic_volumes(n_synthetic, rng)
        ]
    return sources


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = loop.settings_from_args(args)
    limit_threads(settings.threads)
    config = TierConfig(
        grid=args.grid,
        channels=tuple(args.channels),
        fc=tuple(args.fc),  # type: ignore[arg-type]
        voxel_mm=args.voxel_mm,
        noise_reference_mm=args.noise_reference_mm,
        native_noise=args.native_noise,
        contrast_input=args.contrast_input,
    )
    t0 = time.time()
    train_sources = sources_from_data(
        settings.data_dir,
        "train",
        args.synthetic,
        settings.seed,
        config.grid,
        config.voxel_mm,
        tuple(args.coarse_copies),
    )
    val_sources = sources_from_data(
        settings.data_dir, "validation", 0, settings.seed, config.grid, config.voxel_mm
    )
    print(
        f"training on {len(train_sources)} volumes, validating on {len(val_sources)} "
        f"(resampled in {time.time() - t0:.0f} s)",
        flush=True,
    )
    best = train(
        settings,
        train_sources,
        val_sources,
        config,
        argv,
        val_draws=args.val_draws,
        max_minutes=args.max_minutes,
        views=args.views,
        init=args.init,
        init_partial=args.init_partial,
        suffix_dropout=args.suffix_dropout,
    )
    print(json.dumps(best, indent=2, default=str), flush=True)
    run_dir = Path(settings.run_dir)
    if (
        not best.get("stopped_early")
        and (run_dir / "best.safetensors").exists()
        and args.eval_draws > 0
    ):
        from bids_qa.models.tiers import TierScorer

        scorer = TierScorer(device=settings.device, weights=str(run_dir / "best.safetensors"))
        metrics = evaluate_tiers(scorer, val_sources, draws=args.eval_draws)
        (run_dir / "evaluation.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        print(json.dumps(metrics, indent=2), flush=True)
    if not best.get("stopped_early"):
        loop.export_weights(run_dir / "best.safetensors", args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
