"""The benchmark metrics, one definition each: balanced accuracy, ROC AUC and Spearman's rho.

Used by ``bids_qa evaluate``, the tier benchmark and the training runs' validation, so a figure in
a model card and the same figure printed by ``bids_qa evaluate`` are computed by the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def balanced_accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean of sensitivity and specificity for boolean arrays (NaN if a class is absent)."""
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if truth.all() or not truth.any():
        return float("nan")
    return float(0.5 * (pred[truth].mean() + (~pred[~truth]).mean()))


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); NaN if a class is absent."""
    from scipy.stats import rankdata

    truth = np.asarray(truth, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (NaN when either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:  # undefined: say so without a warning
        return float("nan")
    return float(spearmanr(a, b).statistic)
