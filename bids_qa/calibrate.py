"""``bids_qa calibrate OUTPUT_DIR --ratings FILE ...``: thresholds learnt from a dataset's raters.

Reads ratings exported from the group report (``bids_qa-ratings`` JSON or TSV: ``scan_id``,
``rating`` 1-4 = exclude/poor/acceptable/excellent) and MRIQC rating-widget JSON files
(``subject``/``dataset``/``rating`` with excellent/good/poor/unusable or -1..1), joins them to the
group tables (``group_<suffix>.tsv``) and, per contrast, finds the one score and cut that best
reproduce the raters' exclude/keep decisions (balanced accuracy). Agreement is cross-validated
(k folds): balanced accuracy, ROC AUC and the confusion table, beside the default verdict's
(``fail`` = exclude) and an L2-regularised logistic model over the main scores (numpy only).
The cut is written as that score's fail level in a thresholds file ``--thresholds`` accepts.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa import metrics

#: Candidate scores (column, direction).
CANDIDATES = (
    ("severity.score", "higher_is_worse"),
    ("ssim.ssim_mean", "lower_is_worse"),
    ("tiers.tier", "higher_is_worse"),
    ("flow.log_density", "lower_is_worse"),
    ("iqm.fber", "lower_is_worse"),
    ("iqm.inu_range", "higher_is_worse"),
)
_WORDS = {
    "exclude": 1, "unusable": 1, "reject": 1, "bad": 1,
    "poor": 2, "doubtful": 2,
    "acceptable": 3, "good": 3, "accept": 3,
    "excellent": 4,
}
ORIGIN = "calibrated from ratings"


def rating_value(raw: Any, mriqc: bool = False) -> int | None:
    """A rating on the report's 1-4 scale (1 = exclude): words (excellent/good/poor/unusable,
    exclude/acceptable), the report's 1-4, or with ``mriqc`` MRIQC's numeric -1..1."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in _WORDS:
            return _WORDS[word]
        try:
            raw = float(word)
        except ValueError:
            return None
    try:
        x = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x):
        return None
    if mriqc:
        return 1 if x < -0.33 else (2 if x < 0.33 else 4) if -1 <= x <= 1 else None
    return int(round(x)) if 1 <= x <= 4 else None


def read_ratings(path: str | Path) -> list[dict[str, Any]]:
    """``[{"id": scan_id or subject, "rating": 1-4}]`` from one ratings file: a bids_qa export
    (read by :func:`bids_qa.ratings.read_export`, the one reader of that format), else a foreign
    table or JSON (MRIQC rating-widget files, CSV, rating words)."""
    from bids_qa.ratings import RatingsError, read_export

    path = Path(path)
    try:
        export = read_export(path)
    except RatingsError:
        export = None
    if export is not None and export.ratings:
        return [{"id": r.scan_id, "rating": r.rating} for r in export.ratings.values() if r.rating is not None]
    text = path.read_text(encoding="utf-8")
    out: list[dict[str, Any]] = []
    if path.suffix.lower() in (".tsv", ".txt", ".csv"):
        delim = "," if path.suffix.lower() == ".csv" else "\t"
        for rec in csv.DictReader(text.splitlines(), delimiter=delim):
            out.append({"id": (rec.get("scan_id") or rec.get("subject") or "").strip(),
                        "rating": rating_value(rec.get("rating"), mriqc="scan_id" not in rec)})
    else:
        data = json.loads(text)
        records = data.get("ratings") if isinstance(data, dict) and "ratings" in data else data
        if isinstance(records, dict):
            records = [records]  # one MRIQC widget file holds one rating
        for rec in records or []:
            if not isinstance(rec, dict):
                continue
            ident = rec.get("scan_id") or rec.get("subject") or rec.get("bids_name") or ""
            mriqc = "scan_id" not in rec  # MRIQC's widget names the scan "subject"
            out.append({"id": str(ident).strip(), "rating": rating_value(rec.get("rating"), mriqc)})
    return [r for r in out if r["id"] and r["rating"] is not None]


def _match(ident: str, scan_ids: list[str]) -> str | None:
    if ident in scan_ids:
        return ident
    stem = ident.split("/")[-1].replace(".nii.gz", "").replace(".nii", "")
    if stem in scan_ids:
        return stem
    hits = [s for s in scan_ids if s.startswith(stem + "_") or stem in s.split("_")]
    return hits[0] if len(hits) == 1 else None


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Balanced accuracy of ``pred`` for exclude (``y == 1``) vs keep (:mod:`bids_qa.metrics`)."""
    return metrics.balanced_accuracy(np.asarray(y) == 1, np.asarray(pred, dtype=bool))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for ``y == 1``, scans without a score left out (:mod:`bids_qa.metrics`)."""
    score = np.asarray(score, dtype=float)
    ok = np.isfinite(score)
    return metrics.roc_auc(np.asarray(y)[ok] == 1, score[ok])


def confusion(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    return {
        "exclude_flagged": int((pred & (y == 1)).sum()),
        "exclude_missed": int((~pred & (y == 1)).sum()),
        "keep_flagged": int((pred & (y == 0)).sum()),
        "keep_passed": int((~pred & (y == 0)).sum()),
    }


def best_cut(values: np.ndarray, y: np.ndarray, direction: str) -> tuple[float, float]:
    """(cut, balanced accuracy) of the cut on ``values`` that best separates ``y``; a scan is
    predicted ``exclude`` when its value is beyond the cut (``>`` or ``<``). Cuts lie midway
    between neighbouring values."""
    sign = 1.0 if direction == "higher_is_worse" else -1.0
    ok = np.isfinite(values)
    s = np.unique(sign * values[ok])
    if s.size == 0:
        return math.nan, math.nan
    cuts = np.concatenate([[s[0] - 1.0], (s[1:] + s[:-1]) / 2.0])
    best = (math.nan, -1.0)
    for c in cuts:
        pred = np.where(ok, sign * values > c, False)
        ba = balanced_accuracy(y, pred)
        if ba > best[1] + 1e-12:
            best = (float(sign * c), ba)
    return best


def _folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(min(k, n))]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 200) -> np.ndarray:
    """Weights (bias first) of an L2-regularised logistic regression by Newton's method."""
    xb = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(xb.shape[1])
    reg = l2 * np.eye(xb.shape[1])
    reg[0, 0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def calibrate_contrast(rows: list[dict[str, Any]], y: np.ndarray, k: int = 5) -> dict[str, Any]:
    """Best score and cut, and its cross-validated agreement, for one contrast's rated scans."""
    cols = [(c, d) for c, d in CANDIDATES if np.isfinite([_float(r.get(c)) for r in rows]).sum() >= 2]
    if not cols or len(set(y.tolist())) < 2:
        return {"status": "needs both excluded and kept scans with scores", "n": len(rows)}

    def choose(idx: np.ndarray) -> tuple[str, str, float, float]:
        best = ("", "", math.nan, -1.0)
        for c, d in cols:
            vals = np.array([_float(rows[i].get(c)) for i in idx])
            cut, ba = best_cut(vals, y[idx], d)
            if ba > best[3]:
                best = (c, d, cut, ba)
        return best

    column, direction, cut, fit_ba = choose(np.arange(len(rows)))
    cv_pred = np.zeros(len(rows), dtype=bool)
    cv_score = np.full(len(rows), np.nan)
    x = np.array([[_float(r.get(c)) for c, _ in cols] for r in rows])
    x = np.where(np.isfinite(x), x, np.nanmedian(x, axis=0))
    x = np.nan_to_num(x)
    lr_prob = np.zeros(len(rows))
    for test in _folds(len(rows), k):
        train = np.setdiff1d(np.arange(len(rows)), test)
        if len(set(y[train].tolist())) < 2:
            continue
        c, d, cut_f, _ = choose(train)
        sign = 1.0 if d == "higher_is_worse" else -1.0
        vals = np.array([_float(rows[i].get(c)) for i in test])
        cv_pred[test] = np.where(np.isfinite(vals), sign * vals > sign * cut_f, False)
        cv_score[test] = sign * vals
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
        w = fit_logistic((x[train] - mu) / sd, y[train].astype(float))
        z = np.hstack([np.ones((len(test), 1)), (x[test] - mu) / sd]) @ w
        lr_prob[test] = 1.0 / (1.0 + np.exp(-z))
    default_pred = np.array([str(r.get("verdict")) == "fail" for r in rows])
    flagged_pred = np.array([str(r.get("verdict")) in ("review", "fail") for r in rows])
    return {
        "n": len(rows),
        "n_exclude": int(y.sum()),
        "metric": column,
        "direction": direction,
        "cut": cut,
        "fit_balanced_accuracy": fit_ba,
        "cross_validated": {
            "folds": min(k, len(rows)),
            "balanced_accuracy": balanced_accuracy(y, cv_pred),
            "roc_auc": roc_auc(y, cv_score),
            "confusion": confusion(y, cv_pred),
        },
        "logistic_cross_validated": {
            "features": [c for c, _ in cols],
            "balanced_accuracy": balanced_accuracy(y, lr_prob > 0.5),
            "roc_auc": roc_auc(y, lr_prob),
        },
        "default_verdict": {
            "fail_as_exclude": {
                "balanced_accuracy": balanced_accuracy(y, default_pred),
                "confusion": confusion(y, default_pred),
            },
            "flagged_as_exclude": {
                "balanced_accuracy": balanced_accuracy(y, flagged_pred),
                "confusion": confusion(y, flagged_pred),
            },
        },
    }


def thresholds_file(results: dict[str, dict[str, Any]], sources: list[str]) -> dict[str, Any]:
    """A thresholds file: per contrast, the chosen score's fail level at the learnt cut."""
    out: dict[str, Any] = {
        "_origin": ORIGIN,
        "_comment": "Written by bids_qa calibrate from " + ", ".join(sources),
    }
    for suffix, res in results.items():
        if "metric" not in res or not math.isfinite(res["cut"]):
            continue
        cv = res["cross_validated"]
        out[suffix] = {
            res["metric"]: {
                "fail": round(res["cut"], 6),
                "review": None,
                "direction": res["direction"],
                "justification": (
                    f"bids_qa calibrate: {res['n']} rated scans ({res['n_exclude']} excluded); "
                    f"cut fit balanced accuracy {res['fit_balanced_accuracy']:.3f}, "
                    f"{cv['folds']}-fold cross-validated {cv['balanced_accuracy']:.3f}, "
                    f"ROC AUC {cv['roc_auc']:.3f}"
                ),
            }
        }
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids_qa calibrate", description=__doc__.splitlines()[0])
    p.add_argument("output_dir", help="bids_qa output folder holding the group tables")
    p.add_argument("--ratings", nargs="+", required=True, help="ratings files (TSV or JSON)")
    p.add_argument("--out", help="thresholds file to write (default: OUTPUT_DIR/thresholds_calibrated.json)")
    p.add_argument("--exclude-at-or-below", type=int, default=1,
                   help="ratings at or below this (1-4 scale) mean exclude (default 1)")
    p.add_argument("--folds", type=int, default=5)
    return p


def main(argv: list[str] | None = None) -> int:
    from bids_qa.derivatives import json_ready

    args = build_parser().parse_args(argv)
    out_dir = Path(args.output_dir)
    ratings: list[dict[str, Any]] = []
    for f in args.ratings:
        try:
            ratings += read_ratings(f)
        except (OSError, ValueError) as err:
            print(f"bids_qa calibrate: cannot read {f}: {err}", file=sys.stderr)
            return 66
    tables = sorted(out_dir.glob("group_*.tsv"))
    if not tables:
        print(f"bids_qa calibrate: no group_*.tsv in {out_dir}: run the group level first", file=sys.stderr)
        return 66
    results: dict[str, dict[str, Any]] = {}
    for path in tables:
        with path.open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        ids = [r["scan_id"] for r in rows]
        joined, y = [], []
        for rec in ratings:
            hit = _match(rec["id"], ids)
            if hit is not None:
                joined.append(rows[ids.index(hit)])
                y.append(int(rec["rating"] <= args.exclude_at_or_below))
        if not joined:
            continue
        suffix = path.stem[len("group_"):]
        results[suffix] = calibrate_contrast(joined, np.array(y), args.folds)
    if not results:
        print("bids_qa calibrate: no rating matched a scan of the group tables", file=sys.stderr)
        return 65
    target = Path(args.out) if args.out else out_dir / "thresholds_calibrated.json"
    target.write_text(json.dumps(json_ready(thresholds_file(results, args.ratings)), indent=2) + "\n")
    report = out_dir / "calibration.json"
    report.write_text(json.dumps(json_ready(results), indent=1, allow_nan=True) + "\n")
    for suffix, res in results.items():
        if "metric" not in res:
            print(f"{suffix}: {res['status']} (n = {res['n']})")
            continue
        cv, d = res["cross_validated"], res["default_verdict"]["fail_as_exclude"]
        print(
            f"{suffix}: {res['n']} rated ({res['n_exclude']} exclude); {res['metric']} cut "
            f"{res['cut']:.4g}: cross-validated balanced accuracy {cv['balanced_accuracy']:.3f}, "
            f"ROC AUC {cv['roc_auc']:.3f}, confusion {cv['confusion']}; logistic "
            f"{res['logistic_cross_validated']['balanced_accuracy']:.3f}; default verdict "
            f"(fail = exclude) {d['balanced_accuracy']:.3f}"
        )
    print(f"thresholds written to {target} (use: --thresholds {target})")
    return 0
