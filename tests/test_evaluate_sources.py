"""Per-source benchmark figures: grouping, the figures' arithmetic, and the scan-level pass."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qa import evaluate_sources as es


def _severity_rows() -> list[dict]:
    rows = []
    # site A: perfect ranking, clean scans low; site B: a clean scan above 1, bias unranked
    for site, offset in (("siteA", 0.0), ("siteB", 1.0)):
        for v in range(3):
            path = f"{site}/scan{v}.nii.gz"
            rows.append({"volume": path, "artifact": "none", "ss": 0.0, "ss_damage": 0.0,
                         "score": 0.1 + (offset * 1.2 if v == 0 else 0.0)})
            for s in (0.3, 0.7, 0.9):
                rows.append({"volume": path, "artifact": "noise", "ss": s, "ss_damage": s,
                             "score": 3 * s + 0.01 * v})
                rows.append({"volume": path, "artifact": "bias", "ss": s, "ss_damage": s,
                             "score": 0.1 if site == "siteB" else 3 * s})
    return rows


def test_source_is_the_dataset_folder():
    assert es.source_of("ds000011_openfmri/sub-07_T1w.nii.gz") == "ds000011_openfmri"
    assert es.source_of("isbi2015_ms_raw\\test01\\x.nii.gz") == "isbi2015_ms_raw"


def test_severity_by_source_gives_each_site_its_own_figures():
    out = es.severity_by_source(_severity_rows())
    assert list(out) == ["siteA", "siteB", "all"]
    a, b, pooled = out["siteA"], out["siteB"], out["all"]
    assert a["n_volumes"] == 3 and pooled["n_volumes"] == 6
    assert a["clean_le1"] == 1.0 and b["clean_le1"] == pytest.approx(2 / 3)
    assert pooled["clean_le1"] == pytest.approx(5 / 6)
    assert a["auc"]["noise"] == 1.0 and a["auc"]["bias"] == 1.0
    # site B's bias scores equal its two low clean scores and sit below the third: AUC < 0.5
    assert b["auc"]["bias"] == pytest.approx((0.5 * 2 * 6) / 18)
    assert a["spearman_damage"]["noise"] == pytest.approx(1.0, abs=0.05)
    assert np.isnan(b["spearman_damage"]["bias"]) or b["spearman_damage"]["bias"] < 0.5


def test_flow_by_source_maps_case_names_to_their_source():
    cases = [
        {"name": "a.nii.gz", "category": "clean", "artifact": False, "flag_5pct": 0},
        {"name": "a.nii.gz|variant0|gamma=1.0", "category": "clean_variant", "artifact": False, "flag_5pct": 1},
        {"name": "a.nii.gz|noise|severity=0.9", "category": "noise", "artifact": True, "flag_5pct": 1},
        {"name": "b.nii.gz", "category": "clean", "artifact": False, "flag_5pct": 1},
        {"name": "b.nii.gz|motion|severity=0.9", "category": "motion", "artifact": True, "flag_5pct": 0},
    ]
    out = es.flow_by_source(cases, ["one/a.nii.gz", "two/sub/b.nii.gz"])
    assert out["one"] == {"n_clean": 1, "specificity_clean": 1.0, "specificity_variants": 0.0,
                          "n_damaged": 1, "sensitivity": 1.0}
    assert out["two"]["specificity_clean"] == 0.0 and out["two"]["sensitivity"] == 0.0
    assert out["all"]["specificity_clean"] == 0.5 and np.isnan(out["two"]["specificity_variants"])


def test_scan_level_figures_and_markdown():
    rows = []
    for site, tier_clean in (("s1", 1), ("s2", 2)):
        rows.append({"volume": f"{site}/v.nii.gz", "artifact": "none", "ss": 0.0, "true_ssim": 1.0,
                     "ssim_mean": 0.95, "tier": tier_clean})
        for s, t in zip(es.SCAN_LEVELS, (0.9, 0.7, 0.5), strict=True):
            for a in es.SCAN_ARTIFACTS:
                rows.append({"volume": f"{site}/v.nii.gz", "artifact": a, "ss": s, "true_ssim": t,
                             "ssim_mean": t + 0.02, "tier": 3 if s == max(es.SCAN_LEVELS) else 2})
    out = es.scan_level_by_source(rows)
    assert out["s1"]["ssim_clean_mean"] == pytest.approx(0.95)
    assert out["s1"]["ssim_spearman_motion"] == pytest.approx(1.0)
    assert out["s1"]["tier1_clean"] == 1.0 and out["s2"]["tier1_clean"] == 0.0
    assert out["all"]["tier1_clean"] == 0.5 and out["all"]["tier3_noise_severe"] == 1.0
    md = es.sources_markdown({"severity": es.severity_by_source(_severity_rows()), "scan_level": out})
    assert "| siteB | 3 | 67% |" in md and "| s2 | 1 | 0.950 |" in md and "| all |" in md


def test_scan_level_rows_score_clean_and_corrupted_copies():
    from bids_qa.scoring import REGISTRY
    from bids_qa.volume import volume_from_array

    if not all(e.available() for e in REGISTRY if e.name in ("ssim", "tiers")):
        pytest.skip("ssim/tiers weights not installed")
    z, y, x = np.mgrid[:48, :56, :40]
    head = ((z - 24) / 20) ** 2 + ((y - 28) / 24) ** 2 + ((x - 20) / 17) ** 2 < 1
    img = np.where(head, 0.6 + 0.3 * np.sin(x / 3.0) ** 2, 0.0).astype(np.float32)
    vol = volume_from_array(img, (3.0, 3.0, 3.0))
    rows = es.scan_level_rows([({"path": "site/v.nii.gz"}, vol)], 0, "cpu", {}, ["ssim", "tiers"])
    assert len(rows) == 1 + len(es.SCAN_ARTIFACTS) * len(es.SCAN_LEVELS)
    assert rows[0]["artifact"] == "none" and rows[0]["true_ssim"] == 1.0
    assert all(0.0 <= r["ssim_mean"] <= 1.0 and r["tier"] in (1, 2, 3) for r in rows)
    noisy = [r["true_ssim"] for r in rows if r["artifact"] == "noise"]
    assert noisy == sorted(noisy, reverse=True) and noisy[-1] < 0.9
