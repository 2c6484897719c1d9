"""Thresholds: shipped defaults, user overrides, comparison rules and verdicts with reasons."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import write_json

from bids_qa.scoring import ScanScores
from bids_qa.thresholds import (
    Threshold,
    ThresholdError,
    default_thresholds_path,
    judge,
    load_thresholds,
    parse_threshold,
    worst_flag,
)


def test_shipped_defaults_are_the_calibrated_levels():
    """The levels derived by bids_qa.calibration_levels sit near the papers' cuts."""
    table = load_thresholds()
    sev = table.lookup("T1w", "severity.score")
    assert 0.9 < sev.review < 1.1 and 2.0 < sev.fail < 3.0  # Hays: > 1 look; 2-3 moderate-severe
    assert (sev.direction, sev.inclusive) == ("higher_is_worse", False)
    ssim = table.lookup("FLAIR", "ssim.ssim_mean")
    assert 0.78 < ssim.review < 0.86 and 0.55 < ssim.fail < 0.65  # Sciarra: 0.85 good, 0.6 rescan
    assert ssim.direction == "lower_is_worse"
    tier = table.lookup("T2w", "tiers.tier")  # every clean validation scan is tier 1 (run 4)
    assert (tier.review, tier.fail, tier.inclusive) == (2.0, None, True)
    assert table.lookup("PDw", "flow.flag_5pct") is None  # flow.percentile carries the level
    flow = table.lookup("PDw", "flow.percentile")
    # below the least typical clean validation scan (run 6: all inside the 5% level), a low percentile
    assert 1 < flow.review < 10 and flow.fail is None and flow.direction == "lower_is_worse"
    assert table.lookup("T1w", "iqm.fber") is None and table.lookup("T1w", "iqm.inu_range") is None
    assert table.lookup("T1w", "header.anisotropy") is None  # a fact: a note unless a user judges it
    assert table.rule.agree == 3
    assert table.lookup("T1w", "iqm.efc") is None
    raw = json.loads(default_thresholds_path().read_text(encoding="utf-8"))
    for contrast, entries in raw.items():
        if contrast.startswith("_") or contrast == "rule":
            continue
        for key, spec in entries.items():
            assert len(spec.get("description", "")) > 40, f"{contrast}/{key} needs a description"
    assert len(table.sha256) == 64 and table.sources == (str(default_thresholds_path()),)


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ({"review": 1.0}, 1.0, ("pass", 1.0)),  # Hays et al.: <= 1 usable
        ({"review": 1.0}, 1.0001, ("review", 1.0)),
        ({"review": 2, "fail": 3, "inclusive": True}, 2, ("review", 2)),  # tiers: >= 2
        ({"review": 2, "fail": 3, "inclusive": True}, 3, ("fail", 3)),
        ({"review": 2, "fail": 3, "inclusive": True}, 1, ("pass", 2)),
        (
            {"review": 0.85, "fail": 0.6, "direction": "lower_is_worse"},
            0.85,
            ("pass", 0.85),
        ),  # >= 0.85 good
        ({"review": 0.85, "fail": 0.6, "direction": "lower_is_worse"}, 0.7, ("review", 0.85)),
        ({"review": 0.85, "fail": 0.6, "direction": "lower_is_worse"}, 0.59, ("fail", 0.6)),
        ({"fail": 5.0}, 4.0, ("pass", 5.0)),
        ({"review": 1.0}, float("nan"), ("n/a", None)),
        ({"review": 1.0}, "2D", ("n/a", None)),
        ({"review": 1.0}, np.float32(3.0), ("review", 1.0)),
        (
            {
                "direction": "categorical",
                "review_values": ["sufficient"],
                "fail_values": ["rescan"],
            },
            "rescan",
            ("fail", None),
        ),
        ({"direction": "categorical", "review_values": ["sufficient"]}, "good", ("pass", None)),
    ],
)
def test_threshold_comparisons(spec, value, expected):
    assert parse_threshold(spec, "test").apply(value) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"reveiw": 1}, "unknown field"),
        ({"review": 1, "direction": "up"}, "direction 'up'"),
        ({"review": 2, "fail": 1}, "must not be below review"),
        ({"review": 0.6, "fail": 0.85, "direction": "lower_is_worse"}, "must not be above review"),
        ({"review": "1"}, "finite number"),
        ({"review": float("inf")}, "finite number"),
        ({"review": True}, "finite number"),
        ({"review": 1, "inclusive": "yes"}, "true or false"),
        ({"direction": "categorical", "review": 1}, "categorical"),
        ({"review_values": "x"}, "list of labels"),
    ],
)
def test_invalid_thresholds_are_refused_with_the_key(spec, message):
    with pytest.raises(ThresholdError, match=message):
        parse_threshold(spec, "file: T1w/iqm.x")


def test_user_file_is_merged_field_by_field(tmp_path):
    user = write_json(
        tmp_path / "mine.json",
        {
            "_comment": "ignored",
            "default": {
                "ssim.ssim_mean": {"review": 0.9},
                "severity.score": None,
                "iqm.cjv": {"review": 0.8},
                "header.anisotropy": {"review": 2.0, "description": "a user's own level on a fact"},
            },
            "T2w": {"tiers.tier": {"fail": 2.5}, "header.anisotropy": None},
        },
    )
    table = load_thresholds(user)
    ssim = table.lookup("T1w", "ssim.ssim_mean")
    assert (ssim.review, ssim.fail, ssim.direction) == (
        0.9,
        load_thresholds().lookup("T1w", "ssim.ssim_mean").fail,
        "lower_is_worse",
    )  # fail/direction kept
    assert table.lookup("T1w", "severity.score") is None  # switched off
    assert (
        table.lookup("T1w", "iqm.cjv").review == 0.8
        and table.lookup("T1w", "iqm.cjv").direction == "higher_is_worse"
    )
    t2_tier = table.lookup("T2w", "tiers.tier")
    assert (t2_tier.review, t2_tier.fail, t2_tier.inclusive) == (
        2.0,
        2.5,
        True,
    )  # based on the default entry, the user's field added
    assert table.lookup("T1w", "tiers.tier").fail is None  # the default never fails alone
    assert (
        table.lookup("T2w", "header.anisotropy") is None
        and table.lookup("T1w", "header.anisotropy") is not None
    )
    assert table.sources[-1] == str(user) and table.sha256 != load_thresholds().sha256
    assert set(table.for_contrast("T2w")) >= {"tiers.tier", "ssim.ssim_mean"}
    assert "header.anisotropy" not in table.for_contrast("T2w")


def test_user_file_errors_name_the_file(tmp_path):
    broken = tmp_path / "b.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ThresholdError, match="not valid JSON"):
        load_thresholds(broken)
    with pytest.raises(ThresholdError, match="cannot read"):
        load_thresholds(tmp_path / "absent.json")
    with pytest.raises(ThresholdError, match="'<model>.<metric>'"):
        load_thresholds(write_json(tmp_path / "k.json", {"default": {"cjv": {"review": 1}}}))
    with pytest.raises(ThresholdError, match="m.json: T1w/iqm.cjv"):
        load_thresholds(
            write_json(tmp_path / "m.json", {"T1w": {"iqm.cjv": {"review": 2, "fail": 1}}})
        )


def test_judge_verdict_reasons_and_rows(tmp_path):
    # header facts are judged only when a user gives them a level
    table = load_thresholds(
        write_json(tmp_path / "h.json", {"default": {"header.anisotropy": {"review": 2.0}}})
    )
    scores = [
        ScanScores("header", {"anisotropy": 5.5, "acquisition": "2D", "vox_x": 0.7}),
        ScanScores("ssim", {"ssim_mean": 0.55, "ssim_min": 0.3}),
        ScanScores("severity", {"score": 0.4, "worst_slice": 12}),
        ScanScores("iqm", {"fber": math.nan}),
    ]
    verdict, reasons, rows = judge(scores, "T1w", table)
    assert verdict == "fail"
    assert [(r["model"], r["metric"], r["flag"]) for r in reasons] == [
        ("ssim", "ssim_mean", "fail"),
        ("header", "anisotropy", "review"),
    ]
    # the comparison, then the threshold's explanation filled from the same model's values
    # (names the model did not report read n/a)
    ssim_fail = table.lookup("T1w", "ssim.ssim_mean").fail
    assert reasons[0]["message"].startswith(
        f"evidence: ssim.ssim_mean = 0.55 is below the fail threshold {ssim_fail:.4g} (lower is worse): "
        "lowest predicted SSIM 0.3 at slice n/a (5th percentile n/a)"
    )
    assert reasons[1]["message"] == (
        "fact: header.anisotropy = 5.5 is above the review threshold 2 (higher is worse)"
    )
    assert reasons[0]["threshold"] == ssim_fail and reasons[0]["value"] == 0.55
    by_key = {(r["model"], r["metric"]): r for r in rows}
    assert len(rows) == 8
    assert by_key[("severity", "score")] == {
        "model": "severity",
        "metric": "score",
        "value": 0.4,
        "threshold": table.lookup("T1w", "severity.score").review,
        "flag": "pass",
        "direction": "higher_is_worse",
    }
    assert (
        by_key[("header", "acquisition")]["flag"] == "n/a"
        and by_key[("header", "acquisition")]["threshold"] == ""
    )
    assert by_key[("iqm", "fber")]["flag"] == "n/a"  # not computable is not judged
    verdict, reasons, _ = judge([ScanScores("header", {"anisotropy": 1.0})], "T1w", table)
    assert (verdict, reasons) == ("pass", [])
    assert judge([], "T1w", table)[0] == "pass"


def test_per_contrast_override_applies_only_to_that_contrast(tmp_path):
    table = load_thresholds(
        write_json(
            tmp_path / "t.json",
            {"default": {"header.anisotropy": {"review": 2}}, "FLAIR": {"header.anisotropy": {"review": 6}}},
        )
    )
    scores = [ScanScores("header", {"anisotropy": 5.0})]
    assert judge(scores, "FLAIR", table)[0] == "pass"
    assert judge(scores, "T1w", table)[0] == "review"


def test_inclusive_message_and_worst_flag(tmp_path):
    thr = Threshold(review=2, fail=3, inclusive=True)
    table = load_thresholds(write_json(tmp_path / "t.json", {"default": {"tiers.tier": {"review": 2}}}))
    verdict, reasons, _ = judge([ScanScores("tiers", {"tier": 2})], "T1w", table)
    assert (
        verdict == "review"
        and reasons[0]["message"]
        == "evidence: tiers.tier = 2 is at or above the review threshold 2 (higher is worse): graded n/a"
    )
    assert thr.as_dict() == {
        "direction": "higher_is_worse",
        "review": 2,
        "fail": 3,
        "inclusive": True,
    }
    assert worst_flag(["n/a", "pass", "review"]) == "review" and worst_flag(["n/a"]) == "pass"


def test_explanations_fill_in_the_scans_own_values(tmp_path):
    from bids_qa.thresholds import fill_explanation

    assert fill_explanation("graded {tier_reason}", {"tier_reason": "noise: severe"}) == (
        "graded noise: severe"
    )
    assert fill_explanation("{a} and {b} {not a name}", {"a": 0.123456, "b": 3}) == (
        "0.1235 and 3 {not a name}"
    )
    table = load_thresholds(
        write_json(
            tmp_path / "t.json",
            {"default": {"flow.flag_5pct": {"review": 1, "explain": "only {percentile}% <b>{missing}</b>"}}},
        )
    )
    thr = table.lookup("T1w", "flow.flag_5pct")
    assert thr.review == 1 and thr.explain == "only {percentile}% <b>{missing}</b>"
    assert thr.as_dict()["explain"] == thr.explain
    _, reasons, _ = judge(
        [ScanScores("flow", {"flag_5pct": 1, "percentile": 0.0, "m1": 1.5})], "T1w", table
    )
    assert reasons[0]["message"].endswith(": only 0% <b>n/a</b>")
    with_tier = load_thresholds(write_json(tmp_path / "tier.json", {"default": {"tiers.tier": {"review": 2}}}))
    _, reasons, _ = judge(
        [ScanScores("tiers", {"tier": 3, "tier_reason": "noise: severe; motion: moderate"})],
        "T2w",
        with_tier,
    )
    assert reasons[0]["message"].endswith("graded noise: severe; motion: moderate")
    with pytest.raises(ThresholdError, match="explain must be text"):
        load_thresholds(write_json(tmp_path / "x.json", {"default": {"a.b": {"explain": 3}}}))
