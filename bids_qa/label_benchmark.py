"""Benchmark figures for the simulation's labels and the INU measure (``bids_qa evaluate``).

- Does a label follow the damage? Within each artifact, Spearman correlation of the parameter SS
  and of the damage-based SS (:mod:`bids_qa.damage`) with the corrupted volume's SSIM against its
  clean source, read as a reader of its slices sees it (:func:`bids_qa.damage.slice_ssim`: in-plane
  windows, averaged over the head). A label that follows the damage is strongly negative.
- Does the INU measure see a bias field? ROC AUC of ``iqm.inu_range`` / ``iqm.inu_cv`` for clean
  volumes against bias-corrupted ones at parameter SS >= :data:`BIAS_AUC_MIN_SS`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bids_qa import metrics
from bids_qa.metrics import spearman

BIAS_AUC_MIN_SS = 0.6
INU_COLUMNS = ("inu_range", "inu_cv")


def case_figures(artifact: str, clean: Any, corrupted: np.ndarray) -> dict[str, float]:
    """``damage``, ``ss_damage`` and ``ssim_source`` of one corrupted volume (a
    :class:`bids_qa.volume.Volume` ``clean`` and the corrupted normalised array)."""
    from bids_qa.damage import damage_label, slice_ssim

    if artifact == "none":
        return {"damage": 0.0, "ss_damage": 0.0, "ssim_source": 1.0}
    d, ssd = damage_label(artifact, clean.data, corrupted, clean.mask)
    return {
        "damage": d,
        "ss_damage": ssd,
        "ssim_source": slice_ssim(clean.data, corrupted, clean.mask, clean.slice_axis),
    }


def roc_auc(negatives: list[float], positives: list[float]) -> float:
    """ROC AUC of positives over negatives (:func:`bids_qa.metrics.roc_auc`); NaNs dropped."""
    neg = [v for v in negatives if np.isfinite(v)]
    pos = [v for v in positives if np.isfinite(v)]
    return metrics.roc_auc(np.r_[np.zeros(len(neg), bool), np.ones(len(pos), bool)], np.r_[neg, pos])


def summarise_labels(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman of each label with ``ssim_source`` per artifact (corrupted rows only) and the INU
    AUCs; rows without the columns are skipped."""
    out: dict[str, Any] = {"spearman_label_ssim": {}, "inu_auc": {}}
    arts = sorted({r["artifact"] for r in rows if r["artifact"] != "none" and "ssim_source" in r})
    for a in arts:
        sel = [r for r in rows if r["artifact"] == a and "ssim_source" in r]
        ssim = [r["ssim_source"] for r in sel]
        out["spearman_label_ssim"][a] = {
            "parameter": spearman([r["ss"] for r in sel], ssim),
            "damage": spearman([r["ss_damage"] for r in sel], ssim),
            "n": len(sel),
        }
    clean = [r for r in rows if r["artifact"] == "none"]
    bias = [r for r in rows if r["artifact"] == "bias" and r["ss"] >= BIAS_AUC_MIN_SS]
    for k in INU_COLUMNS:
        if all(k in r for r in clean + bias) and clean and bias:
            out["inu_auc"][k] = roc_auc([r[k] for r in clean], [r[k] for r in bias])
    out["inu_auc"]["n_clean"], out["inu_auc"]["n_bias"] = len(clean), len(bias)
    return out


def labels_markdown(summary: dict[str, Any]) -> str:
    lines = []
    sp = summary.get("spearman_label_ssim", {})
    if sp:
        lines += [
            "",
            "| artifact | Spearman(parameter SS, SSIM to source) | Spearman(damage SS, SSIM to "
            "source) | n |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {a} | {v['parameter']:.3f} | {v['damage']:.3f} | {v['n']} |" for a, v in sp.items()
        ]
        lines += [
            "",
            "SSIM to source: the corrupted volume against its clean copy, in-plane windows along "
            "the slice axis, averaged over the head. Damage SS: `bids_qa.damage` (3D SSIM in the "
            "head through the per-artifact calibration). Target: <= -0.7 for every artifact.",
        ]
    auc = summary.get("inu_auc", {})
    if any(k in auc for k in INU_COLUMNS):
        lines += [
            "",
            f"INU measure, clean vs bias at SS >= {BIAS_AUC_MIN_SS:g} (ROC AUC; "
            f"{auc['n_clean']} clean, {auc['n_bias']} bias volumes): "
            + ", ".join(f"`iqm.{k}` {auc[k]:.3f}" for k in INU_COLUMNS if k in auc)
            + ". Target: >= 0.9.",
        ]
    return "\n".join(lines) + "\n" if lines else ""
