"""The tier benchmark (Loizillon et al., Medical Image Analysis 2024, Tables 4-5, Sec. 4.2).

Balanced accuracy of the severe (0-1 vs 2) and moderate (0 vs 1) tasks per artifact and of the
tier tasks (tier 1-2 vs 3, tier 1 vs 2), on clean validation volumes corrupted with fixed-seed
simulated levels (:func:`bids_qa.training.tier_samples.corrupt_cube`, the training simulation).
``bids_qa evaluate --family tiers`` prints it; the trainer validates with
:func:`metrics_from_predictions`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa.metrics import balanced_accuracy, roc_auc
from bids_qa.models.tiers import (
    ARTIFACTS,
    TASKS,
    grade_from_probabilities,
    tier_from_grades,
)
from bids_qa.similarity import realised_change
from bids_qa.training.tier_samples import (
    CubeSource,
    corrupt_cube,
    make_cube_source,
    sources_from_data,
)


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


def build_evaluation_set(sources: list[CubeSource], seed: int, draws: int):
    """Yield (cube, grades, k) for every source ``k`` and plan entry; sample ``(k, j)`` uses
    ``default_rng([seed, k, j])`` so the set is identical across calls and runs."""
    for k, src in enumerate(sources):
        for j, grades in enumerate(evaluation_plan(draws)):
            rng = np.random.default_rng([seed, k, j])
            if "mixed" in grades:
                grades = _draw_mixed(rng)
            cube, _ = corrupt_cube(src.cube, src.mask, grades, src.voxel_mm, rng)
            yield cube, np.array([grades[a] for a in ARTIFACTS], dtype=np.int64), k


def predict_probabilities(model, cubes: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Sigmoid outputs ``(n, 3, 2)`` from a :class:`~bids_qa.models.tiers.TierScorer` or a bare
    network (evaluated in eval mode, restored to its previous mode afterwards)."""
    if hasattr(model, "probabilities"):
        return model.probabilities(cubes)
    import torch

    from bids_qa.models.weights import predict_batched

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        probs = predict_batched(model, cubes, batch_size, str(device), post=torch.sigmoid)
    finally:
        model.train(was_training)
    return probs.reshape(len(probs), len(ARTIFACTS), len(TASKS))


def evaluate_tiers(
    model,
    volumes: list,
    seed: int | np.random.Generator = 20260,
    draws: int = 4,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Loizillon et al.'s balanced accuracies on fixed-seed corrupted copies of clean volumes.

    Parameters
    ----------
    model
        A :class:`~bids_qa.models.tiers.TierScorer` or a network from
        :func:`~bids_qa.models.tiers.build_network`.
    volumes
        Clean volumes: :class:`~bids_qa.volume.Volume` objects (resampled here to the model's
        grid), ``(entry, Volume)`` pairs as :func:`~bids_qa.training.data.clean_volumes` returns,
        or :class:`~bids_qa.training.tier_samples.CubeSource` objects.
    seed, draws
        Every volume gets ``draws`` copies of each class of :func:`evaluation_plan` (clean, each
        artifact moderate and severe, random mixtures), drawn from ``default_rng([seed, k, j])``;
        a Generator passed as ``seed`` supplies that integer.

    Returns
    -------
    dict
        ``<artifact>_severe_bacc``, ``<artifact>_moderate_bacc``, ``tier12_vs_3_bacc``,
        ``tier1_vs_2_bacc`` (percent), tier accuracy and confusion (rows: true tier 1-3,
        columns: predicted), per-artifact grade confusion (rows: true grade), sample counts and
        the network time per volume (``net_s_per_volume``, excluding simulation).
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(0, 2**31 - 1))
    grid, voxel_mm = model.config.grid, model.config.voxel_mm
    sources = []
    for k, item in enumerate(volumes):
        if isinstance(item, tuple):
            item = item[1]
        sources.append(
            item
            if isinstance(item, CubeSource)
            else make_cube_source(item, grid, name=f"volume{k}", voxel_mm=voxel_mm)
        )
    if any(src.cube.shape != (grid,) * 3 for src in sources):
        raise ValueError(f"cube sources must be on the model's {grid}^3 grid")
    cubes, grades, changes, probs = [], [], [], []
    net_time = 0.0

    def predict() -> None:
        nonlocal net_time
        t0 = time.perf_counter()
        probs.append(predict_probabilities(model, np.stack(cubes), batch_size))
        net_time += time.perf_counter() - t0

    for cube, g, k in build_evaluation_set(sources, seed, draws):
        cubes.append(cube)
        grades.append(g)
        changes.append(realised_change(sources[k].cube, cube, sources[k].mask > 0))
        if len(cubes) == batch_size:
            predict()
            cubes = []
    if cubes:
        predict()
    true_grades = np.stack(grades)
    p = np.concatenate(probs)
    single = (true_grades > 0).sum(axis=1) <= 1
    out = metrics_from_predictions(true_grades, p, single)
    out["level_separation"] = level_separation(true_grades, p, np.asarray(changes))
    out["net_s_per_volume"] = net_time / max(1, len(true_grades))
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
) -> dict[str, Any]:
    """:func:`evaluate_tiers` of a weights file on one split of the clean-data manifest (what
    ``docs/models/tiers.md`` reports, for ``bids_qa evaluate``)."""
    from bids_qa.models.tiers import TierScorer

    scorer = TierScorer(device=device, weights=str(weights))
    sources = sources_from_data(
        str(data_dir), split, 0, 0, scorer.config.grid, scorer.config.voxel_mm
    )
    out = evaluate_tiers(scorer, sources, seed=seed, draws=draws)
    out["split"] = split
    out["weights_version"] = scorer.version
    return out
