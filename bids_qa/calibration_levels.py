"""Review and fail levels per family and contrast, derived from the validation benchmark.

``bids_qa evaluate --calibrate`` corrupts every validation volume with noise, ghosting and motion at
known severities (SS), scores each corrupted copy with *every* family (so two families can be asked
whether they agree about the same image), and derives, per contrast:

- a **review level** per evidence metric: the worst value any clean validation scan of that
  contrast reached, plus a headroom of ``HEADROOM`` of the clean spread (worst minus median), so
  clean scans pass by construction and the level sits as close to them as the data allow;
- a **fail level**: the value that at most ``MILD_FAIL_SHARE`` of the mild (SS <= 0.5) corrupted
  copies reach, never milder than the review level, so a fail means damage beyond the mild range.

The combination rule (data in ``thresholds.json`` under ``"rule"``, applied by
:func:`bids_qa.thresholds.judge`): fail when one score passes its fail level or when ``agree``
families are at review level or beyond; review when one is; else pass. The figures of the three
targets (clean pass, SS >= 0.6 flagged, SS >= 0.9 failed) are computed in-sample and leaving one
volume out (levels derived without it), and written beside the levels as their ``justification``.
Rerun whenever weights change: ``bids_qa evaluate --data DIR --calibrate [--calibrate-write FILE]``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_ARTIFACTS = ("noise", "ghosting", "motion")
CALIBRATION_LEVELS = (0.3, 0.5, 0.6, 0.75, 0.9)
#: (key, direction): one evidence metric per family.
EVIDENCE = (
    ("severity.score", "higher_is_worse"),
    ("ssim.ssim_mean", "lower_is_worse"),
    ("tiers.tier", "higher_is_worse"),
    ("flow.percentile", "lower_is_worse"),
    ("iqm.fber", "lower_is_worse"),
)
HEADROOM = 0.1
MILD_FAIL_SHARE = 0.1
MIN_VOLUMES_PER_CONTRAST = 4
AGREE = 2
_FAMILIES = ("severity", "ssim", "tiers", "flow", "iqm")


def score_cases(
    volumes: Sequence[tuple[dict, Any]],
    seed: int = 0,
    device: str = "cpu",
    levels: Sequence[float] = CALIBRATION_LEVELS,
    artifacts: Sequence[str] = CALIBRATION_ARTIFACTS,
) -> list[dict[str, Any]]:
    """One row per (volume, artifact, SS) with every family's numeric values on that same image."""
    from bids_qa.evaluate import corrupt_volume
    from bids_qa.scoring import build_scorers
    from bids_qa.volume import volume_from_array

    scorers = build_scorers(list(_FAMILIES), device=device)
    rows: list[dict[str, Any]] = []
    cases = [("none", 0.0)] + [(a, s) for a in artifacts for s in levels]
    for v_index, (entry, vol) in enumerate(volumes):
        suffix = entry.get("suffix", "")
        t0 = time.perf_counter()
        for c_index, (artifact, ss) in enumerate(cases):
            rng = np.random.default_rng([seed, 7, v_index, c_index])
            if artifact == "none":
                image = vol
            else:
                data, _ = corrupt_volume(vol.data, vol.zooms, vol.slice_axis, artifact, ss, rng)
                image = volume_from_array(data, vol.zooms)
            row: dict[str, Any] = {
                "volume": entry["path"],
                "suffix": suffix,
                "artifact": artifact,
                "ss": ss,
            }
            for scorer in scorers:
                try:
                    result = (
                        scorer.score(image, suffix)
                    )
                except Exception as err:  # one failure must not lose the benchmark
                    print(f"  {scorer.name} failed on {entry['path']}: {err}", file=sys.stderr)
                    continue
                for metric, value in result.values.items():
                    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                        value, bool
                    ):
                        row[f"{scorer.name}.{metric}"] = float(value)
            rows.append(row)
        print(
            f"  calibrate: {entry['path']} ({len(cases)} cases, {time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return rows


def _beyond(values: np.ndarray, cut: float | None, direction: str, inclusive: bool) -> np.ndarray:
    if cut is None:
        return np.zeros(values.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        if direction == "higher_is_worse":
            out = values >= cut if inclusive else values > cut
        else:
            out = values <= cut if inclusive else values < cut
    return out & np.isfinite(values)


def _column(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r.get(key, np.nan)) for r in rows], dtype=float)


def _round_out(x: float) -> float:
    """Round to 4 decimals towards the lenient side (a level never ends up inside the clean range)."""
    return math.ceil(x * 1e4) / 1e4


def derive_metric(
    rows: Sequence[dict[str, Any]], key: str, direction: str
) -> dict[str, Any] | None:
    """Review and fail levels of one metric from ``rows`` (clean and corrupted copies)."""
    clean = _column([r for r in rows if r["artifact"] == "none"], key)
    mild = _column([r for r in rows if r["artifact"] != "none" and r["ss"] <= 0.5], key)
    clean = clean[np.isfinite(clean)]
    mild = mild[np.isfinite(mild)]
    if clean.size == 0:
        return None
    sign = 1.0 if direction == "higher_is_worse" else -1.0
    worst = float(np.max(sign * clean))
    spread = worst - float(np.median(sign * clean))
    if key == "tiers.tier":  # grades are integers: the first grade no clean scan reached
        review = float(np.floor(worst) + 1)
        fail_s = float(np.quantile(sign * mild, 1 - MILD_FAIL_SHARE)) if mild.size else review
        fail = max(review, float(np.floor(fail_s) + 1))
        if fail > 3:
            fail = None
        return {"review": review, "fail": fail, "inclusive": True, "direction": direction}
    review_s = worst + HEADROOM * max(spread, 1e-6 * max(abs(worst), 1.0))
    fail_s = max(review_s, float(np.quantile(sign * mild, 1 - MILD_FAIL_SHARE))) if mild.size else None
    return {
        "review": sign * _round_out(review_s),
        "fail": None if fail_s is None else sign * _round_out(fail_s),
        "inclusive": False,
        "direction": direction,
    }


def derive_levels(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"default": {key: spec}, "<contrast>": {...}}``: pooled levels, and per-contrast ones for
    contrasts with at least ``MIN_VOLUMES_PER_CONTRAST`` validation volumes."""
    out: dict[str, dict[str, dict[str, Any]]] = {"default": {}}
    for key, direction in EVIDENCE:
        spec = derive_metric(rows, key, direction)
        if spec is not None:
            out["default"][key] = spec
    for suffix in sorted({r["suffix"] for r in rows}):
        sel = [r for r in rows if r["suffix"] == suffix]
        if len({r["volume"] for r in sel}) < MIN_VOLUMES_PER_CONTRAST:
            continue
        out[suffix] = {}
        for key, direction in EVIDENCE:
            spec = derive_metric(sel, key, direction)
            if spec is not None:
                out[suffix][key] = spec
    return out


def _spec_for(levels: dict[str, dict[str, dict[str, Any]]], suffix: str, key: str):
    return levels.get(suffix, {}).get(key) or levels["default"].get(key)


def verdict_of(
    row: dict[str, Any], levels: dict[str, dict[str, dict[str, Any]]], agree: int = AGREE
) -> str:
    """The combination rule on one benchmark row (same rule as :func:`bids_qa.thresholds.judge`)."""
    reviews = fails = 0
    for key, _ in EVIDENCE:
        spec = _spec_for(levels, row["suffix"], key)
        if spec is None:
            continue
        value = np.array([float(row.get(key, np.nan))])
        if _beyond(value, spec.get("fail"), spec["direction"], spec["inclusive"])[0]:
            fails += 1
        elif _beyond(value, spec.get("review"), spec["direction"], spec["inclusive"])[0]:
            reviews += 1
    if fails or (agree and reviews + fails >= agree):
        return "fail"
    return "review" if reviews else "pass"


def figures(rows: Sequence[dict[str, Any]], verdicts: Sequence[str]) -> dict[str, Any]:
    """The three target figures (fractions and counts)."""

    def share(select, ok) -> dict[str, Any]:
        idx = [i for i, r in enumerate(rows) if select(r)]
        hit = sum(1 for i in idx if ok(verdicts[i]))
        return {"fraction": hit / len(idx) if idx else float("nan"), "n": len(idx), "hits": hit}

    damaged = set(CALIBRATION_ARTIFACTS)
    return {
        "clean_pass": share(lambda r: r["artifact"] == "none", lambda v: v == "pass"),
        "ss_ge_0.6_flagged": share(
            lambda r: r["artifact"] in damaged and r["ss"] >= 0.6, lambda v: v != "pass"
        ),
        "ss_ge_0.9_failed": share(
            lambda r: r["artifact"] in damaged and r["ss"] >= 0.9, lambda v: v == "fail"
        ),
        "ss_le_0.3_failed": share(
            lambda r: r["artifact"] in damaged and r["ss"] <= 0.3, lambda v: v == "fail"
        ),
    }


def leave_one_volume_out(rows: Sequence[dict[str, Any]], agree: int = AGREE) -> list[str]:
    """Each row judged with levels derived from the other volumes' rows only."""
    out = [""] * len(rows)
    for volume in sorted({r["volume"] for r in rows}):
        levels = derive_levels([r for r in rows if r["volume"] != volume])
        for i, r in enumerate(rows):
            if r["volume"] == volume:
                out[i] = verdict_of(r, levels, agree)
    return out


def calibrate_from_rows(rows: Sequence[dict[str, Any]], agree: int = AGREE) -> dict[str, Any]:
    """Levels, rule and their justification figures from benchmark rows."""
    levels = derive_levels(rows)
    in_sample = figures(rows, [verdict_of(r, levels, agree) for r in rows])
    held_out = figures(rows, leave_one_volume_out(rows, agree))
    per_metric: dict[str, dict[str, Any]] = {}
    for contrast, entries in levels.items():
        sel = rows if contrast == "default" else [r for r in rows if r["suffix"] == contrast]
        for key, spec in entries.items():
            v = _column(sel, key)
            clean = np.array([r["artifact"] == "none" for r in sel])
            high = np.array([r["artifact"] != "none" and r["ss"] >= 0.9 for r in sel])
            mid = np.array([r["artifact"] != "none" and r["ss"] >= 0.6 for r in sel])
            rev = _beyond(v, spec["review"], spec["direction"], spec["inclusive"])
            fai = _beyond(v, spec["fail"], spec["direction"], spec["inclusive"])
            per_metric[f"{contrast}/{key}"] = {
                "n_volumes": len({r["volume"] for r in sel}),
                "clean_flagged": int((rev | fai)[clean].sum()),
                "n_clean": int(clean.sum()),
                "ss_ge_0.6_flagged_share": float((rev | fai)[mid].mean()) if mid.any() else None,
                "ss_ge_0.9_failed_share": float(fai[high].mean()) if high.any() else None,
            }
    return {
        "levels": levels,
        "rule": {"agree": agree},
        "figures_in_sample": in_sample,
        "figures_leave_one_volume_out": held_out,
        "per_metric": per_metric,
        "n_rows": len(rows),
        "n_volumes": len({r["volume"] for r in rows}),
    }


def _pct(cell: dict[str, Any]) -> str:
    return f"{100 * cell['fraction']:.1f}% ({cell['hits']}/{cell['n']})"


def markdown(result: dict[str, Any]) -> str:
    a, b = result["figures_in_sample"], result["figures_leave_one_volume_out"]
    lines = [
        "### Verdict calibration (all families on the same corrupted copies)",
        "",
        f"{result['n_volumes']} validation volumes x (clean + noise/ghosting/motion at SS "
        f"{', '.join(f'{s:g}' for s in CALIBRATION_LEVELS)}); rule: fail when a score passes its "
        f"fail level or {result['rule']['agree']} families are at review level.",
        "",
        "| figure | target | levels from all volumes | levels without the judged volume |",
        "|---|---|---|---|",
        f"| clean scans pass | >= 95% | {_pct(a['clean_pass'])} | {_pct(b['clean_pass'])} |",
        f"| SS >= 0.6 flagged | >= 90% | {_pct(a['ss_ge_0.6_flagged'])} | "
        f"{_pct(b['ss_ge_0.6_flagged'])} |",
        f"| SS >= 0.9 failed | >= 60% | {_pct(a['ss_ge_0.9_failed'])} | "
        f"{_pct(b['ss_ge_0.9_failed'])} |",
        f"| SS <= 0.3 failed | (low) | {_pct(a['ss_le_0.3_failed'])} | "
        f"{_pct(b['ss_le_0.3_failed'])} |",
        "",
        "| contrast/metric | review | fail |",
        "|---|---|---|",
    ]
    for contrast, entries in result["levels"].items():
        for key, spec in entries.items():
            lines.append(f"| {contrast}/{key} | {spec['review']} | {spec['fail']} |")
    return "\n".join(lines) + "\n"


def justification(result: dict[str, Any], contrast: str, key: str, stamp: str) -> str:
    m = result["per_metric"].get(f"{contrast}/{key}", {})
    a = result["figures_in_sample"]
    b = result["figures_leave_one_volume_out"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"

    return (
        f"Derived by bids_qa.calibration_levels ({stamp}) from {m.get('n_volumes')} validation "
        f"volumes: review = worst clean value + {HEADROOM:g} x clean spread "
        f"({m.get('clean_flagged')}/{m.get('n_clean')} clean flagged); fail = value reached by at "
        f"most {MILD_FAIL_SHARE:.0%} of SS <= 0.5 copies. Alone it flags {pct(m.get('ss_ge_0.6_flagged_share'))} "
        f"of SS >= 0.6 and fails {pct(m.get('ss_ge_0.9_failed_share'))} of SS >= 0.9 noise/ghosting/motion "
        f"copies. With the rule: clean pass {_pct(a['clean_pass'])} (leave-one-volume-out "
        f"{_pct(b['clean_pass'])}), SS >= 0.6 flagged {_pct(a['ss_ge_0.6_flagged'])} "
        f"({_pct(b['ss_ge_0.6_flagged'])}), SS >= 0.9 failed {_pct(a['ss_ge_0.9_failed'])} "
        f"({_pct(b['ss_ge_0.9_failed'])})."
    )


def write_levels(result: dict[str, Any], path: str | Path, stamp: str) -> None:
    """Write the derived levels and rule into a thresholds file (descriptions and explanations
    already there are kept; levels, direction and justification are replaced)."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for contrast, entries in result["levels"].items():
        target = data.setdefault(contrast, {})
        for key, spec in entries.items():
            entry = dict(target.get(key) or {})
            entry.update(
                review=spec["review"],
                fail=spec["fail"],
                direction=spec["direction"],
                justification=justification(result, contrast, key, stamp),
            )
            if spec["inclusive"]:
                entry["inclusive"] = True
            else:
                entry.pop("inclusive", None)
            target[key] = entry
    a = result["figures_in_sample"]
    data["rule"] = {
        "agree": result["rule"]["agree"],
        "description": (
            "fail when one evidence score passes its fail level or when this many families "
            "(severity, ssim, tiers, flow, iqm) are at review level or beyond; review when one is; "
            "facts (header) and context (protocol group) are notes unless a user gives them a level"
        ),
        "justification": (
            f"bids_qa.calibration_levels ({stamp}): clean pass {_pct(a['clean_pass'])}, SS >= 0.6 "
            f"flagged {_pct(a['ss_ge_0.6_flagged'])}, SS >= 0.9 failed {_pct(a['ss_ge_0.9_failed'])}"
        ),
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
