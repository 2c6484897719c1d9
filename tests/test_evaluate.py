"""The accuracy benchmark's arithmetic, and simulate -> participant on the built-in example."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qa.evaluate import corrupt_volume, severity_markdown, summarise_severity


def _rows(perfect: bool) -> list[dict]:
    rows = [{"artifact": "none", "ss": 0.0, "score": 0.1 + 0.01 * v} for v in range(4)]
    for a in ("noise", "ghosting", "bias", "anisotropy", "motion"):
        for s in (0.1, 0.5, 0.9):
            for v in range(4):
                score = 3 * s + 0.01 * v if perfect else 0.5 - 0.3 * s + 0.01 * v
                rows.append({"artifact": a, "ss": s, "score": score, "cjv": 0.5 + s})
    return rows


def test_severity_summary_values():
    good = summarise_severity(_rows(True), (0.1, 0.5, 0.9))
    assert good["clean_mean"] == pytest.approx(0.115)
    assert good["clean_fraction_le_1"] == 1.0
    assert good["ss_ge_0.5_fraction_gt_1"] == 1.0  # 3*0.5 and 3*0.9 are above 1
    assert all(rho > 0.9 for rho in good["spearman"].values())
    assert good["table"]["noise@0.5"]["mean"] == pytest.approx(1.515)
    assert good["table"]["noise@0.5"]["cjv"]["mean"] == pytest.approx(1.0)
    bad = summarise_severity(_rows(False), (0.1, 0.5, 0.9))
    assert all(rho < 0.5 for rho in bad["spearman"].values())  # clean lowest, then decreasing
    assert bad["ss_ge_0.5_fraction_gt_1"] == 0.0
    md = severity_markdown(good)
    assert "| noise | 0.5 |" in md and "Spearman" in md
    assert good["spearman_change_ss"] == {}  # rows without a realised change: no such column
    assert "realised change" not in md


def test_severity_summary_compares_score_and_ss_with_the_realised_change():
    rows = _rows(True)
    for r in rows:  # the change falls with SS for ghosting only: a label the image contradicts
        r["change"] = 0.0 if r["artifact"] == "none" else (
            1.0 - r["ss"] if r["artifact"] == "ghosting" else r["ss"]
        ) + 0.001 * r["score"]
    summary = summarise_severity(rows, (0.1, 0.5, 0.9))
    assert summary["spearman_change_ss"]["noise"] > 0.9
    assert summary["spearman_change_ss"]["ghosting"] < 0.2
    assert summary["spearman_score_change"]["noise"] > 0.9
    md = severity_markdown(summary)
    assert "| artifact | Spearman(score, SS) | Spearman(realised change, SS) |" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| ghosting |") and ln.count("|") == 5)
    assert float(row.split("|")[3]) == pytest.approx(
        summary["spearman_change_ss"]["ghosting"], abs=1e-3
    )


def test_within_scan_spearman_ignores_offsets_between_scans():
    # each scan's score rises with SS, but scan 1 starts where scan 0 ends: pooled < 1, within = 1
    rows = []
    for v in range(3):
        rows.append({"volume": f"v{v}", "artifact": "none", "ss": 0.0, "score": 2.0 * v})
        for s in (0.1, 0.5, 0.9):
            for a in ("noise", "ghosting", "bias", "anisotropy", "motion"):
                score = 2.0 * v + s if a != "bias" else 2.0 * v + 1.0 - s  # bias falls within
                rows.append({"volume": f"v{v}", "artifact": a, "ss": s, "score": score})
    summary = summarise_severity(rows, (0.1, 0.5, 0.9))
    assert summary["spearman"]["noise"] < 0.5
    within = summary["spearman_within_scan"]
    assert within["noise"] == {"mean": 1.0, "median": 1.0, "min": 1.0, "n": 3}
    assert within["bias"]["mean"] == pytest.approx(0.2)  # clean lowest, then falling: ranks 1,4,3,2
    md = severity_markdown(summary)
    row = next(ln for ln in md.splitlines() if ln.startswith("| noise |") and ln.count("|") == 6)
    assert [c.strip() for c in row.split("|")[2:6]] == ["1.000", "1.000", "1.000", "3"]
    assert summarise_severity(_rows(True), (0.1, 0.5, 0.9))["spearman_within_scan"] == {}


def test_realised_change_measures_relative_rms_difference_in_the_mask():
    from bids_qa.similarity import realised_change

    clean = np.zeros((8, 8, 8), np.float32)
    clean[2:6, 2:6, 2:6] = 2.0
    mask = clean > 0
    assert realised_change(clean, clean, mask) == 0.0
    assert realised_change(clean, clean * 1.1, mask) == pytest.approx(0.1, rel=1e-6)
    outside = clean.copy()
    outside[0, 0, 0] = 5.0  # outside the mask: ignored
    assert realised_change(clean, outside, mask) == 0.0
    with pytest.raises(ValueError):
        realised_change(clean, clean[:4], mask)
    with pytest.raises(ValueError):
        realised_change(clean, clean, np.zeros_like(mask))


def test_direction_dependent_artifacts_act_in_the_reading_plane():
    rng = np.random.default_rng(0)
    vol = np.zeros((16, 16, 8), np.float32)
    vol[4:12, 4:12, 2:6] = 1.0
    for _ in range(5):
        _, params = corrupt_volume(vol, (1.0, 1.0, 4.0), 2, "anisotropy", 0.8, rng)
        assert params["axis"] in (0, 1)
        _, params = corrupt_volume(vol, (1.0, 1.0, 4.0), 2, "ghosting", 0.8, rng)
        assert params["axis"] in (0, 1)


def test_simulated_example_dataset_runs_through_the_pipeline(tmp_path):
    from bids_qa.cli import main
    from bids_qa.demo import make_demo_dataset
    from bids_qa.derivatives import read_group_table

    clean = tmp_path / "clean"
    make_demo_dataset(clean, n_subjects=2, voxel_size=4.0)
    sim = tmp_path / "sim"
    assert (
        main(
            [
                "simulate",
                str(clean),
                str(sim),
                "--artifacts",
                "noise",
                "--levels",
                "0.8",
                "--participant-label",
                "01",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    corrupted = sorted(p.name for p in sim.rglob("*acq-noise*.nii.gz"))
    assert corrupted, "simulate wrote no corrupted scan"
    out = tmp_path / "qa"
    assert (
        main(
            [str(sim), str(out), "participant", "--no-reports", "--scorers", "header", "iqm", "-q"]
        )
        == 0
    )
    assert main([str(sim), str(out), "group", "--no-reports", "-q"]) == 0
    table = read_group_table(out, "T1w")
    ids = set(table["scan_id"])
    assert any("acq-noise" in i for i in ids)
    assert all(v in {"pass", "review", "fail"} for v in table["verdict"])


def test_weight_overrides_are_checked(tmp_path):
    from bids_qa.evaluate import parse_weight_overrides

    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    assert parse_weight_overrides([f"severity={w}"]) == {"severity": str(w)}
    assert parse_weight_overrides([]) == {}
    for bad in ([f"sev={w}"], ["severity"], [f"severity={tmp_path / 'missing'}"]):
        with pytest.raises(SystemExit) as exc:
            parse_weight_overrides(bad)
        assert exc.value.code == 64


def test_label_and_inu_figures_from_synthetic_rows():
    from bids_qa.label_benchmark import labels_markdown, summarise_labels

    rows = [{"artifact": "none", "ss": 0.0, "ss_damage": 0.0, "ssim_source": 1.0,
             "inu_range": 0.1 + 0.01 * i, "inu_cv": 0.03} for i in range(4)]  # fmt: skip
    for i, s in enumerate((0.6, 0.7, 0.8, 0.9)):
        # parameter SS rises while the damage (SSIM) does not; the damage label follows SSIM
        ssim = (0.9, 0.7, 0.95, 0.8)[i]
        rows.append({"artifact": "motion", "ss": s, "ss_damage": 1 - ssim, "ssim_source": ssim})
        rows.append({"artifact": "bias", "ss": s, "ss_damage": 0.1, "ssim_source": 0.99 - 0.01 * i,
                     "inu_range": 0.5 + 0.1 * i, "inu_cv": 0.02})  # fmt: skip
    out = summarise_labels(rows)
    assert out["spearman_label_ssim"]["motion"]["damage"] == pytest.approx(-1.0)
    assert out["spearman_label_ssim"]["motion"]["parameter"] == pytest.approx(0.0, abs=1e-9)
    assert out["inu_auc"]["inu_range"] == pytest.approx(1.0)
    assert out["inu_auc"]["inu_cv"] == pytest.approx(0.0)
    md = labels_markdown(out)
    assert "| motion | 0.000 | -1.000 | 4 |" in md and "`iqm.inu_range` 1.000" in md
