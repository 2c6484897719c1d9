"""Verdict calibration: levels derived from benchmark-like rows, their justification, and the
shipped file's levels each carrying the figures behind them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_qa import calibration_levels as cl
from bids_qa.scoring import ScanScores
from bids_qa.thresholds import default_thresholds_path, judge_scan, load_thresholds


def _row(volume: str, suffix: str, artifact: str, ss: float, rng, clean_fber: float) -> dict:
    """One benchmark-like row: clean values spread like real ones, damage grows with SS."""
    damage = 0.0 if artifact == "none" else ss
    sev = rng.uniform(0.1, 0.8) + 3.0 * damage
    ssim = rng.uniform(0.86, 0.99) - 0.45 * damage
    if artifact == "motion":  # motion moves SSIM more than severity
        sev, ssim = sev - 0.5 * damage, ssim - 0.1 * damage
    percentile = rng.uniform(2.0, 90.0) if artifact != "noise" or ss < 0.5 else 0.0
    fber = clean_fber / (1.0 + 200.0 * damage) if artifact == "noise" else clean_fber
    return {
        "volume": volume,
        "suffix": suffix,
        "artifact": artifact,
        "ss": ss,
        "severity.score": sev,
        "ssim.ssim_mean": ssim,
        "tiers.tier": 1.0 if damage < 0.5 else 3.0,
        "flow.percentile": percentile,
        "iqm.fber": fber,
    }


def synthetic_rows(n_t1: int = 12, n_t2: int = 6, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_t1 + n_t2):
        suffix = "T1w" if i < n_t1 else "T2w"
        # one clean scan with an FBER ten times below the others: a metric one volume stretches
        clean_fber = 300.0 if i == 0 else float(rng.uniform(3000, 60000))
        cases = [("none", 0.0)] + [
            (a, s) for a in cl.CALIBRATION_ARTIFACTS for s in cl.CALIBRATION_LEVELS
        ]
        rows += [_row(f"v{i:02d}", suffix, a, s, rng, clean_fber) for a, s in cases]
    return rows


def test_levels_are_pooled_and_meet_the_targets_left_out():
    rows = synthetic_rows()
    res = cl.calibrate_from_rows(rows)
    levels = res["levels"]
    # T1w has 12 clean volumes (>= MIN_CLEAN_PER_CONTRAST), T2w 6: T2w inherits the pooled levels
    assert set(levels) == {"default", "T1w"}
    sev = levels["default"]["severity.score"]
    worst = max(r["severity.score"] for r in rows if r["artifact"] == "none")
    assert sev["clean"]["n_clean"] == 18 and abs(sev["clean"]["worst"] - worst) < 1e-9
    assert worst < sev["review"] < worst + 0.3 < sev["fail"]
    # the clean FBER outlier makes FBER flag a left-out clean volume: not judged
    assert "iqm.fber" not in res["used"] and levels["default"]["iqm.fber"]["review"] is None
    assert res["per_metric"]["default/iqm.fber"]["clean_flagged_left_out"][0] >= 1
    # tiers reach 1 on clean scans only: review at the first grade no clean scan reached
    assert levels["default"]["tiers.tier"]["review"] == 2.0
    held = res["figures_leave_one_volume_out"]
    assert cl.meets_targets(held), held
    assert held["clean_pass"]["n"] == 18 and held["ss_ge_0.6_flagged"]["n"] == 18 * 9
    assert res["rule"]["agree"] in cl.AGREE_CHOICES
    # the chosen rule is the largest agree that meets the targets
    by = res["figures_leave_one_volume_out_by_agree"]
    larger = [a for a in cl.AGREE_CHOICES if a > res["rule"]["agree"]]
    assert all(not cl.meets_targets(by[str(a)]) for a in larger)


def test_per_contrast_levels_fitted_to_few_volumes_are_not_used():
    rows = synthetic_rows(n_t1=9, n_t2=9)
    assert set(cl.derive_levels(rows)) == {"default"}


def test_written_levels_carry_justifications_and_judge_scan_follows_the_derivation(tmp_path):
    rows = synthetic_rows()
    res = cl.calibrate_from_rows(rows)
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"default": {"flow.flag_5pct": {"review": 1, "description": "x"}}}))
    cl.write_levels(res, path, "test stamp, weights commit abc1234")
    raw = json.loads(path.read_text())
    assert raw["rule"]["agree"] == res["rule"]["agree"]
    assert "leave-one-volume-out" in raw["rule"]["justification"]
    for contrast in ("default", "T1w"):
        for key, *_ in cl.EVIDENCE:
            text = raw[contrast][key]["justification"]
            assert "abc1234" in text and "clean validation volumes" in text
    assert "Not judged" in raw["default"]["iqm.fber"]["justification"]
    assert raw["default"]["flow.flag_5pct"]["review"] is None  # replaced by flow.percentile
    # judge_scan with the written file gives the derivation's verdict on every row
    table = load_thresholds(path)
    assert table.rule.agree == res["rule"]["agree"]
    for row in rows:
        scores = [
            ScanScores(family, {k.split(".", 1)[1]: row[k] for k in row if k.startswith(family + ".")})
            for family in ("severity", "ssim", "tiers", "flow", "iqm")
        ]
        expected = cl.verdict_of(row, res["levels"], res["rule"]["agree"])
        assert judge_scan(scores, row["suffix"], table).verdict == expected, row


def test_every_shipped_level_and_the_rule_have_a_justification():
    raw = json.loads(default_thresholds_path().read_text(encoding="utf-8"))
    judged = 0
    for contrast, entries in raw.items():
        if contrast.startswith("_") or contrast == "rule":
            continue
        for key, spec in entries.items():
            if spec and (spec.get("review") is not None or spec.get("fail") is not None):
                judged += 1
                assert len(spec.get("justification", "")) > 60, f"{contrast}/{key}"
    assert judged >= 3
    assert "leave-one-volume-out" in raw["rule"]["justification"]
    assert "weights commit" in raw["rule"]["justification"]
    table = load_thresholds()
    assert table.rule.agree in cl.AGREE_CHOICES
    assert table.lookup("T1w", "flow.flag_5pct") is None  # flow.percentile carries the level


def test_rescoring_one_family_remakes_the_same_copies_and_keeps_the_others():
    from bids_qa.volume import volume_from_array

    z, y, x = np.mgrid[:40, :44, :36]
    head = ((z - 20) / 17) ** 2 + ((y - 22) / 19) ** 2 + ((x - 18) / 15) ** 2 < 1
    img = np.where(head, 0.5 + 0.4 * np.cos(y / 4.0) ** 2, 0.0).astype(np.float32)
    vols = [({"path": "site/a.nii.gz", "suffix": "T1w"}, volume_from_array(img, (4.0, 4.0, 4.0)))]
    rows = cl.score_cases(vols, seed=3, levels=(0.5, 0.9), artifacts=("noise",), families=("iqm",))
    assert [(r["artifact"], r["ss"]) for r in rows] == [("none", 0.0), ("noise", 0.5), ("noise", 0.9)]
    assert all("iqm.fber" in r and not any(k.startswith("ssim.") for k in r) for r in rows)
    stored = [{**r, "other.value": float(i)} for i, r in enumerate(rows)]
    again = cl.rescore_family(stored, vols, "iqm", seed=3)
    assert again == stored  # same copies, same values; the other family's columns kept
    marked = [{**r, "iqm.fber": -1.0} for r in stored]
    assert cl.rescore_family(marked, vols, "iqm", seed=3) == stored
    with pytest.raises(ValueError, match="not the cases"):
        cl.rescore_family([{**r, "volume": "elsewhere.nii.gz"} for r in stored], vols, "iqm", seed=3)
