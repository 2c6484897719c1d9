"""Review and fail levels per family, derived from the validation benchmark.

``bids_qa evaluate --calibrate`` corrupts every validation volume with noise, ghosting and motion at
known severities (SS), scores each corrupted copy with *every* family (so families can be asked
whether they agree about the same image), and derives:

- **pooled levels** (``default``): contrasts inherit them unless they have at least
  ``MIN_CLEAN_PER_CONTRAST`` clean validation volumes (levels fitted to 5-8 volumes fitted the
  volumes, not the contrast);
- a **review level** per evidence metric: the worst clean value moved towards worse by a margin,
  the larger of the gap between the worst and second-worst clean values (how far a new clean scan
  may fall beyond the worst one seen, after Robson and Whitlock) and ``HEADROOM`` of the clean
  spread, measured on the metric's scale (log for FBER);
- a **fail level** (severity, SSIM, FBER): the value that at most ``MILD_FAIL_SHARE`` of the mild
  (SS <= 0.5) copies reach, never milder than review; flow and tiers never fail alone;
- **which metrics are judged**: those that, alone and refit without each clean volume in turn,
  flag none of them (:func:`stable_metrics`);
- **the rule** (``"rule"`` in ``thresholds.json``, applied by :func:`bids_qa.thresholds.judge_scan`):
  fail when one score passes its fail level or ``agree`` families are at review level; ``agree``
  is the largest of ``AGREE_CHOICES`` whose leave-one-volume-out figures meet :data:`TARGETS`.

The target figures are computed in sample and leaving one volume out (levels refit without it;
also with the metric choice refit), and written beside each level as its ``justification``.
Rerun whenever weights change: ``bids_qa evaluate --data DIR --families --calibrate
[--calibrate-rows benchmark.json] [--calibrate-write FILE]``.
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
#: (key, direction, scale, may_fail): one evidence metric per family. ``scale`` is where the
#: margin is measured: ``linear``; ``log`` (log10, FBER spans decades); ``log1p`` (log10(1 + x),
#: the flow percentile, where 0 means "below every reference scan"); ``grade`` (whole tiers).
#: Flow and tiers never fail a scan alone (an outlier is not proof; the tier grades are below the
#: paper's accuracy), they count towards ``agree``.
EVIDENCE = (
    ("severity.score", "higher_is_worse", "linear", True),
    ("ssim.ssim_mean", "lower_is_worse", "linear", True),
    ("tiers.tier", "higher_is_worse", "grade", False),
    ("flow.percentile", "lower_is_worse", "log1p", False),
    ("iqm.fber", "lower_is_worse", "log", True),
)
#: Review margin beyond the worst clean value: the larger of the gap between the worst and the
#: second-worst clean value (Robson and Whitlock's estimate of how far the next sample may fall
#: beyond the largest one seen) and ``HEADROOM`` of the clean spread (worst minus median).
HEADROOM = 0.1
MILD_FAIL_SHARE = 0.1
#: A contrast gets its own levels only with this many clean validation volumes; else it inherits
#: the pooled ``default`` (with 5-8 volumes per contrast the levels fitted the volumes, not the
#: contrast: leave-one-volume-out clean pass fell to 79%).
MIN_CLEAN_PER_CONTRAST = 10
AGREE = 2
#: Rules tried by :func:`calibrate_from_rows`: fail when this many families are at review level.
AGREE_CHOICES = (2, 3)
#: The verdict's targets on the validation split (issue "a calibrated decision").
TARGETS = {"clean_pass": 0.95, "ss_ge_0.6_flagged": 0.90, "ss_ge_0.9_failed": 0.60}
_FAMILIES = ("severity", "ssim", "tiers", "flow", "iqm")
_SPECS = {key: (direction, scale, may_fail) for key, direction, scale, may_fail in EVIDENCE}


def score_cases(
    volumes: Sequence[tuple[dict, Any]],
    seed: int = 0,
    device: str = "cpu",
    levels: Sequence[float] = CALIBRATION_LEVELS,
    artifacts: Sequence[str] = CALIBRATION_ARTIFACTS,
    families: Sequence[str] = _FAMILIES,
    weights: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (volume, artifact, SS) with every family's numeric values on that same image.

    ``families`` / ``weights`` (family -> weights file) score a subset, e.g. one family with new
    weights (:func:`rescore_family`); the corrupted copies depend on ``seed`` and the case only."""
    from bids_qa.evaluate import corrupt_volume
    from bids_qa.scoring import build_scorers
    from bids_qa.volume import volume_from_array

    scorers = build_scorers(families, device=device, weights=weights)
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


def rescore_family(
    rows: Sequence[dict[str, Any]],
    volumes: Sequence[tuple[dict, Any]],
    family: str,
    seed: int = 0,
    device: str = "cpu",
    weights: str | None = None,
) -> list[dict[str, Any]]:
    """``rows`` of an earlier calibration with ``family``'s columns scored again (new weights):
    the same corrupted copies are made again, only that family runs. Raises ValueError when the
    rows and the volumes do not describe the same cases."""
    levels = tuple(sorted({float(r["ss"]) for r in rows if r["artifact"] != "none"}))
    artifacts = tuple(a for a in CALIBRATION_ARTIFACTS if any(r["artifact"] == a for r in rows))
    fresh = score_cases(
        volumes, seed, device, levels, artifacts, families=(family,),
        weights={family: weights} if weights else None,
    )  # fmt: skip
    key = [(r["volume"], r["artifact"], float(r["ss"])) for r in rows]
    if key != [(r["volume"], r["artifact"], float(r["ss"])) for r in fresh]:
        raise ValueError("the stored calibration rows are not the cases of these volumes and seed")
    prefix = f"{family}."
    out = []
    for old, new in zip(rows, fresh, strict=True):
        row = {k: v for k, v in old.items() if not k.startswith(prefix)}
        row.update({k: v for k, v in new.items() if k.startswith(prefix)})
        out.append(row)
    return out


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
    """Values of ``key`` (NaN where missing or null)."""
    out = []
    for r in rows:
        v = r.get(key)
        out.append(np.nan if v is None else float(v))
    return np.array(out, dtype=float)


def _to_badness(x: np.ndarray, direction: str, scale: str) -> np.ndarray:
    """The metric on its margin scale, signed so that higher is worse."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale == "log":
            x = np.log10(np.maximum(x, 1e-12))
        elif scale == "log1p":
            x = np.log10(1.0 + np.maximum(x, 0.0))
    return x if direction == "higher_is_worse" else -x


def _from_badness(b: float, direction: str, scale: str) -> float:
    x = b if direction == "higher_is_worse" else -b
    if scale == "log":
        return float(10.0**x)
    if scale == "log1p":
        return float(10.0**x - 1.0)
    return float(x)


def _round_out(x: float, direction: str) -> float:
    """3 significant digits, rounded towards the lenient side (a level never moves into the
    clean range by rounding)."""
    if x == 0 or not math.isfinite(x):
        return x
    step = 10.0 ** (math.floor(math.log10(abs(x))) - 2)
    rounded = math.ceil(x / step) if direction == "higher_is_worse" else math.floor(x / step)
    return float(f"{rounded * step:.6g}")


def clean_summary(rows: Sequence[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Worst, second-worst and median clean value of ``key`` (on its own scale) and their count."""
    direction, scale, _ = _SPECS[key]
    clean = _column([r for r in rows if r["artifact"] == "none"], key)
    clean = clean[np.isfinite(clean)]
    if clean.size == 0:
        return None
    b = np.sort(_to_badness(clean, direction, scale))[::-1]
    second = b[1] if b.size > 1 else b[0]
    back = lambda v: _from_badness(float(v), direction, scale)  # noqa: E731
    return {
        "n_clean": int(b.size),
        "worst": back(b[0]),
        "second_worst": back(second),
        "median": back(np.median(b)),
        "_b": b,
    }


def derive_metric(rows: Sequence[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """Review and fail levels of one metric from ``rows`` (clean and corrupted copies).

    Review: the worst clean value moved towards worse by the larger of (worst - second worst) and
    ``HEADROOM`` x (worst - median), on the metric's scale. Fail (metrics that may fail alone):
    the value that at most ``MILD_FAIL_SHARE`` of the mild (SS <= 0.5) copies reach, never milder
    than review. Tier grades: review at the first grade no clean scan reached (none above 3).
    """
    direction, scale, may_fail = _SPECS[key]
    summary = clean_summary(rows, key)
    if summary is None:
        return None
    b = summary.pop("_b")
    out: dict[str, Any] = {"direction": direction, "clean": summary}
    if scale == "grade":
        review = float(np.floor(b[0]) + 1)
        out.update(review=None if review > 3 else review, fail=None, inclusive=True)
        return out
    second = b[1] if b.size > 1 else b[0]
    margin = max(b[0] - second, HEADROOM * (b[0] - float(np.median(b))), 1e-6)
    review_b = b[0] + margin
    fail = None
    if may_fail:
        mild = _column([r for r in rows if r["artifact"] != "none" and r["ss"] <= 0.5], key)
        mild = _to_badness(mild[np.isfinite(mild)], direction, scale)
        mild = mild[np.isfinite(mild)]
        if mild.size:
            fail_b = max(review_b, float(np.quantile(mild, 1 - MILD_FAIL_SHARE)))
            fail = _round_out(_from_badness(fail_b, direction, scale), direction)
    out.update(
        review=_round_out(_from_badness(review_b, direction, scale), direction),
        fail=fail,
        inclusive=False,
    )
    return out


def _clean_volumes(rows: Sequence[dict[str, Any]]) -> int:
    return len({r["volume"] for r in rows if r["artifact"] == "none"})


def clean_flagged_left_out(rows: Sequence[dict[str, Any]], key: str) -> tuple[int, int]:
    """(flagged, n): clean volumes that ``key`` alone flags at review level when its levels are
    fitted without them (a metric whose clean range one volume stretches is not stable)."""
    flagged = n = 0
    for volume in sorted({r["volume"] for r in rows if r["artifact"] == "none"}):
        spec = derive_metric([r for r in rows if r["volume"] != volume], key)
        value = _column([r for r in rows if r["volume"] == volume and r["artifact"] == "none"], key)
        if spec is None or not np.isfinite(value).any():
            continue
        n += 1
        cut = spec["fail"] if spec.get("review") is None else spec["review"]
        flagged += int(_beyond(value, cut, spec["direction"], spec["inclusive"]).any())
    return flagged, n


def stable_metrics(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """Evidence metrics that, alone and fitted without each clean volume in turn, flag none of
    them: a metric whose clean range one volume stretches (FBER across sites) would send clean
    scans of new sites to review."""
    out = []
    for key, *_ in EVIDENCE:
        spec = derive_metric(rows, key)
        has_level = spec is not None and (spec["review"] is not None or spec["fail"] is not None)
        if has_level and clean_flagged_left_out(rows, key)[0] == 0:
            out.append(key)
    return tuple(out)


def _levels_for(rows: Sequence[dict[str, Any]], used: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, *_ in EVIDENCE:
        spec = derive_metric(rows, key)
        if spec is None:
            continue
        if key not in used:  # derived for the record, not judged
            spec["derived"] = {"review": spec["review"], "fail": spec["fail"]}
            spec.update(review=None, fail=None)
        out[key] = spec
    return out


def derive_levels(
    rows: Sequence[dict[str, Any]], used: Sequence[str] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"default": {key: spec}, "<contrast>": {...}}``: pooled levels, and per-contrast ones only
    for contrasts with at least ``MIN_CLEAN_PER_CONTRAST`` clean validation volumes. Metrics not
    in ``used`` (default: :func:`stable_metrics` of ``rows``) get no level."""
    used = stable_metrics(rows) if used is None else tuple(used)
    out: dict[str, dict[str, dict[str, Any]]] = {"default": _levels_for(rows, used)}
    for suffix in sorted({r["suffix"] for r in rows}):
        sel = [r for r in rows if r["suffix"] == suffix]
        if _clean_volumes(sel) >= MIN_CLEAN_PER_CONTRAST:
            out[suffix] = _levels_for(sel, used)
    return out


def _spec_for(levels: dict[str, dict[str, dict[str, Any]]], suffix: str, key: str):
    return levels.get(suffix, {}).get(key) or levels["default"].get(key)


def verdict_of(
    row: dict[str, Any], levels: dict[str, dict[str, dict[str, Any]]], agree: int = AGREE
) -> str:
    """The combination rule on one benchmark row (same rule as :func:`bids_qa.thresholds.judge`)."""
    reviews = fails = 0
    for key, *_ in EVIDENCE:
        spec = _spec_for(levels, row["suffix"], key)
        if spec is None:
            continue
        value = _column([row], key)
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
            lambda r: r["artifact"] in damaged and 0 < r["ss"] <= 0.3, lambda v: v == "fail"
        ),
    }


def leave_one_volume_out(
    rows: Sequence[dict[str, Any]], agree: int = AGREE, used: Sequence[str] | None = None
) -> list[str]:
    """Each row judged with levels derived from the other volumes' rows only (``used``: the
    metrics judged; None re-selects them without the judged volume too)."""
    out = [""] * len(rows)
    for volume in sorted({r["volume"] for r in rows}):
        levels = derive_levels([r for r in rows if r["volume"] != volume], used)
        for i, r in enumerate(rows):
            if r["volume"] == volume:
                out[i] = verdict_of(r, levels, agree)
    return out


def meets_targets(fig: dict[str, Any]) -> bool:
    return all(fig[name]["fraction"] >= goal for name, goal in TARGETS.items())


def calibrate_from_rows(rows: Sequence[dict[str, Any]], agree: int | None = None) -> dict[str, Any]:
    """Levels, rule and their justification figures from benchmark rows.

    ``agree`` None chooses it: the largest of ``AGREE_CHOICES`` whose leave-one-volume-out figures
    meet :data:`TARGETS` (fewest mild copies failed), else the smallest.
    """
    used = stable_metrics(rows)
    levels = derive_levels(rows, used)
    held_verdicts = {a: leave_one_volume_out(rows, a, used) for a in AGREE_CHOICES}
    held_by_agree = {a: figures(rows, v) for a, v in held_verdicts.items()}
    if agree is None:
        meeting = [a for a in AGREE_CHOICES if meets_targets(held_by_agree[a])]
        agree = max(meeting) if meeting else min(AGREE_CHOICES)
    if agree not in held_by_agree:
        held_by_agree[agree] = figures(rows, leave_one_volume_out(rows, agree, used))
    in_sample = figures(rows, [verdict_of(r, levels, agree) for r in rows])
    held_out = held_by_agree[agree]
    nested = figures(rows, leave_one_volume_out(rows, agree, None))
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
            left_out = clean_flagged_left_out(sel, key)
            per_metric[f"{contrast}/{key}"] = {
                "n_volumes": len({r["volume"] for r in sel}),
                "clean_flagged": int((rev | fai)[clean].sum()),
                "n_clean": int(clean.sum()),
                "clean_flagged_left_out": list(left_out),
                "ss_ge_0.6_flagged_share": float((rev | fai)[mid].mean()) if mid.any() else None,
                "ss_ge_0.9_failed_share": float(fai[high].mean()) if high.any() else None,
            }
    return {
        "levels": levels,
        "used": list(used),
        "rule": {"agree": agree},
        "figures_in_sample": in_sample,
        "figures_leave_one_volume_out": held_out,
        "figures_leave_one_volume_out_by_agree": {str(a): f for a, f in held_by_agree.items()},
        "figures_leave_one_volume_out_nested_selection": nested,
        "per_metric": per_metric,
        "n_rows": len(rows),
        "n_volumes": len({r["volume"] for r in rows}),
    }


def _pct(cell: dict[str, Any]) -> str:
    return f"{100 * cell['fraction']:.1f}% ({cell['hits']}/{cell['n']})"


def _fig_rows(figs: Sequence[dict[str, Any]]) -> list[str]:
    names = (
        ("clean scans pass", ">= 95%", "clean_pass"),
        ("SS >= 0.6 flagged", ">= 90%", "ss_ge_0.6_flagged"),
        ("SS >= 0.9 failed", ">= 60%", "ss_ge_0.9_failed"),
        ("SS 0.3 failed (mild)", "(low)", "ss_le_0.3_failed"),
    )
    return [f"| {label} | {goal} | " + " | ".join(_pct(f[k]) for f in figs) + " |" for label, goal, k in names]


def markdown(result: dict[str, Any]) -> str:
    agree = result["rule"]["agree"]
    by_agree = result.get("figures_leave_one_volume_out_by_agree", {})
    lines = [
        "### Verdict calibration (all families on the same corrupted copies)",
        "",
        f"{result['n_volumes']} validation volumes x (clean + noise/ghosting/motion at SS "
        f"{', '.join(f'{s:g}' for s in CALIBRATION_LEVELS)}); rule: fail when a score passes its "
        f"fail level or {agree} families are at review level. Metrics judged: "
        f"{', '.join(result.get('used', []))}.",
        "",
        "| figure | target | levels from all volumes | levels without the judged volume | "
        "same, metric choice refit too |",
        "|---|---|---|---|---|",
        *_fig_rows(
            [
                result["figures_in_sample"],
                result["figures_leave_one_volume_out"],
                result.get("figures_leave_one_volume_out_nested_selection")
                or result["figures_leave_one_volume_out"],
            ]
        ),
        "",
    ]
    if by_agree:
        keys = sorted(by_agree)
        lines += [
            "Rule choice (leave-one-volume-out): the largest `agree` that meets the targets.",
            "",
            "| figure | target | " + " | ".join(f"agree = {k}" for k in keys) + " |",
            "|---|---|" + "---|" * len(keys),
            *_fig_rows([by_agree[k] for k in keys]),
            "",
        ]
    lines += [
        "| contrast/metric | clean worst / 2nd / median | review | fail | clean flagged left out |",
        "|---|---|---|---|---|",
    ]
    for contrast, entries in result["levels"].items():
        for key, spec in entries.items():
            c = spec["clean"]
            m = result["per_metric"].get(f"{contrast}/{key}", {})
            lo = m.get("clean_flagged_left_out", ["?", "?"])
            note = "" if key in result.get("used", [key]) else " (not judged)"
            shown = spec.get("derived", spec)
            lines.append(
                f"| {contrast}/{key}{note} | {c['worst']:.4g} / {c['second_worst']:.4g} / "
                f"{c['median']:.4g} | {shown['review']} | {shown['fail']} | {lo[0]}/{lo[1]} |"
            )
    return "\n".join(lines) + "\n"


def justification(result: dict[str, Any], contrast: str, key: str, stamp: str) -> str:
    """The figures behind one level, in words (written beside it in ``thresholds.json``)."""
    spec = result["levels"][contrast][key]
    c = spec["clean"]
    m = result["per_metric"].get(f"{contrast}/{key}", {})
    lo = m.get("clean_flagged_left_out", ["?", "?"])

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"

    head = (
        f"{stamp}: {c['n_clean']} clean validation volumes ({contrast} levels; worst clean "
        f"{c['worst']:.4g}, second worst {c['second_worst']:.4g}, median {c['median']:.4g})"
    )
    if key not in result.get("used", [key]):
        d = spec.get("derived", {})
        return (
            f"{head}. Not judged: with its level fitted without it, {lo[0]} of {lo[1]} clean "
            f"volumes would be flagged by this metric alone (derived review {d.get('review')}, "
            f"fail {d.get('fail')}), so it would send clean scans of new sites to review."
        )
    a = result["figures_in_sample"]
    b = result["figures_leave_one_volume_out"]
    return (
        f"{head}. Review = worst clean value moved towards worse by max(worst - second worst, "
        f"{HEADROOM:g} x (worst - median)) on its {_SPECS[key][1]} scale; fail = value reached by "
        f"at most {MILD_FAIL_SHARE:.0%} of SS <= 0.5 copies (none for metrics that never fail "
        f"alone). In sample it flags {m.get('clean_flagged')}/{m.get('n_clean')} clean volumes "
        f"({lo[0]}/{lo[1]} with the level refit without each), alone flags "
        f"{pct(m.get('ss_ge_0.6_flagged_share'))} of SS >= 0.6 and fails "
        f"{pct(m.get('ss_ge_0.9_failed_share'))} of SS >= 0.9 noise/ghosting/motion copies. "
        f"With the rule (agree {result['rule']['agree']}): clean pass {_pct(a['clean_pass'])} "
        f"(leave-one-volume-out {_pct(b['clean_pass'])}), SS >= 0.6 flagged "
        f"{_pct(a['ss_ge_0.6_flagged'])} ({_pct(b['ss_ge_0.6_flagged'])}), SS >= 0.9 failed "
        f"{_pct(a['ss_ge_0.9_failed'])} ({_pct(b['ss_ge_0.9_failed'])})."
    )


#: A derived metric that takes over an older shipped key: the old key's levels are switched off.
REPLACES = {"flow.percentile": "flow.flag_5pct"}


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
            old = REPLACES.get(key)
            if old and isinstance(target.get(old), dict):
                target[old].update(
                    review=None,
                    fail=None,
                    justification=f"{stamp}: replaced by {key} (see its justification).",
                )
    a = result["figures_in_sample"]
    b = result["figures_leave_one_volume_out"]
    agree = result["rule"]["agree"]
    by_agree = result.get("figures_leave_one_volume_out_by_agree", {})
    alt = "; ".join(
        f"agree {k}: SS >= 0.9 failed {_pct(f['ss_ge_0.9_failed'])}, SS 0.3 failed "
        f"{_pct(f['ss_le_0.3_failed'])}"
        for k, f in sorted(by_agree.items())
    )
    data["rule"] = {
        "agree": agree,
        "description": (
            "fail when one evidence score passes its fail level or when this many families "
            "(severity, ssim, tiers, flow, iqm) are at review level or beyond; review when one is; "
            "facts (header) and context (protocol group) are notes unless a user gives them a level"
        ),
        "justification": (
            f"{stamp}: the largest agree whose leave-one-volume-out figures meet the targets "
            f"(clean pass >= 95%, SS >= 0.6 flagged >= 90%, SS >= 0.9 failed >= 60%) ({alt}). "
            f"With agree {agree}: clean pass {_pct(a['clean_pass'])} (leave-one-volume-out "
            f"{_pct(b['clean_pass'])}), SS >= 0.6 flagged {_pct(a['ss_ge_0.6_flagged'])} "
            f"({_pct(b['ss_ge_0.6_flagged'])}), SS >= 0.9 failed {_pct(a['ss_ge_0.9_failed'])} "
            f"({_pct(b['ss_ge_0.9_failed'])}), mild SS 0.3 failed {_pct(a['ss_le_0.3_failed'])} "
            f"({_pct(b['ss_le_0.3_failed'])})."
        ),
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def weights_commit() -> str:
    """The git commit that last changed the shipped weights (``unknown`` outside a checkout)."""
    import subprocess

    here = Path(__file__).parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "log", "-1", "--format=%h", "--", "weights"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
