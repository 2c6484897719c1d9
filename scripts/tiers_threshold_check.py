"""Would per-task decision thresholds fix the tier model's errors? (docs/models/tiers.md, session 3)

Scores the shipped (or given) tier weights on two fixed-seed simulated sets, one from the training
subjects (for choosing thresholds) and the validation set of the model card, prints ROC AUCs per
task, picks per-task thresholds that maximise balanced accuracy on the training-subject set and
reports the card's metrics on the validation set at 0.5 and at those thresholds.

    python scripts/tiers_threshold_check.py DATA_DIR [--weights W]
"""

from __future__ import annotations

import argparse

import numpy as np


def probabilities(scorer, data_dir: str, split: str, seed: int):
    from bids_qa.training.tiers import (
        build_evaluation_set,
        predict_probabilities,
        source_side_input,
        sources_from_data,
    )

    sources = sources_from_data(data_dir, split, 0, 0, scorer.config.grid, scorer.config.voxel_mm)
    cubes, grades, sides = [], [], []
    for cube, g, k in build_evaluation_set(
        sources, seed, 4, scorer.config.noise_reference_mm, scorer.config.native_noise
    ):
        cubes.append(cube)
        grades.append(g)
        sides.append(source_side_input(sources[k], scorer.config))
    side = np.stack(sides) if scorer.config.side_features else None
    return predict_probabilities(scorer, np.stack(cubes), side=side), np.stack(grades)


def task_samples(grades: np.ndarray, a: int) -> np.ndarray:
    """The card's per-artifact sample set: clean or single artifact, others at most moderate."""
    single = (grades > 0).sum(1) <= 1
    return single & (np.delete(grades, a, axis=1) <= 1).all(1)


def fit_thresholds(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    from bids_qa.training.tiers import balanced_accuracy

    grid = np.linspace(0.02, 0.98, 97)
    thr = np.full((3, 2), 0.5)
    for a in range(3):
        use = task_samples(g, a)
        ga, pa = g[use, a], p[use, a]
        thr[a, 1] = grid[np.argmax([balanced_accuracy(ga == 2, pa[:, 1] >= t) for t in grid])]
        k = ga <= 1
        thr[a, 0] = grid[np.argmax([balanced_accuracy(ga[k] == 1, pa[k, 0] >= t) for t in grid])]
    return thr


def metrics_at(p: np.ndarray, g: np.ndarray, thr: np.ndarray) -> dict:
    """Card metrics with per-task thresholds (a logit shift that maps each threshold to 0.5)."""
    from bids_qa.training.tiers import metrics_from_predictions

    q = np.clip(p, 1e-7, 1 - 1e-7)
    shifted = 1 / (1 + np.exp(-(np.log(q / (1 - q)) - np.log(thr / (1 - thr))[None])))
    return metrics_from_predictions(g, shifted, (g > 0).sum(1) <= 1)


def main() -> None:
    from bids_qa.models.tiers import ARTIFACTS, TierScorer
    from bids_qa.training.tiers import roc_auc as roc_auc_score

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--weights", default=None)
    args = ap.parse_args()
    scorer = TierScorer(weights=args.weights)
    sets = {
        "train (seed 777)": probabilities(scorer, args.data_dir, "train", 777),
        "validation (seed 20260)": probabilities(scorer, args.data_dir, "validation", 20260),
    }
    for name, (p, g) in sets.items():
        print(name, len(g), "samples")
        for a, art in enumerate(ARTIFACTS):
            use = task_samples(g, a)
            ga, pa = g[use, a], p[use, a]
            k, m = ga <= 1, ga >= 1
            print(
                f"  {art:9s} AUC severe {roc_auc_score(ga == 2, pa[:, 1]):.3f}"
                f"  moderate {roc_auc_score(ga[k] == 1, pa[k, 0]):.3f}"
                f"  moderate-vs-severe {roc_auc_score(ga[m] == 2, pa[m, 1]):.3f}"
            )
    thr = fit_thresholds(*sets["train (seed 777)"])
    print("thresholds chosen on the training subjects (moderate, severe):")
    for a, art in enumerate(ARTIFACTS):
        print(f"  {art:9s} {thr[a, 0]:.2f} {thr[a, 1]:.2f}")
    p, g = sets["validation (seed 20260)"]
    base, tuned = metrics_at(p, g, np.full((3, 2), 0.5)), metrics_at(p, g, thr)
    for key in [f"{a}_{t}_bacc" for a in ARTIFACTS for t in ("moderate", "severe")] + [
        "tier12_vs_3_bacc",
        "tier1_vs_2_bacc",
    ]:
        print(f"  {key:24s} at 0.5 {base[key]:6.2f}   at chosen thresholds {tuned[key]:6.2f}")


if __name__ == "__main__":
    main()
