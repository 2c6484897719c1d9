"""The verdict users can trust (issue 23): facts as notes, processed-input awareness, the
combination rule, protocol-group flags and thresholds calibrated from ratings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import noisy, write_nifti

from bids_qa import input_kind, protocols
from bids_qa.calibrate import main as calibrate_main
from bids_qa.calibrate import read_ratings
from bids_qa.scoring import ScanScores
from bids_qa.thresholds import judge_scan, load_thresholds


def _write_levels(folder: Path, levels: dict) -> Path:
    path = folder / "levels.json"
    path.write_text(json.dumps({"default": levels}))
    return path


def _ellipsoid(shape=(60, 72, 60), radii=(26, 32, 24)) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    centre = [(s - 1) / 2 for s in shape]
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return r2 <= 1.0


def test_header_facts_are_notes_and_sidecar_decides_acquisition():
    table = load_thresholds()
    header = ScanScores(
        "header",
        {"anisotropy": 4.0, "slice_thickness": 4.0, "acquisition": "2D",
         "acquisition_plane": "axial", "voxel_size": "1.00x1.00x4.00",
         "fov_x": 180.0, "fov_y": 216.0, "fov_z": 180.0},
    )
    out = judge_scan([header], "T1w", table)
    assert out.verdict == "pass" and out.reasons == []
    assert out.notes[0]["kind"] == "fact"
    assert out.notes[0]["message"].startswith("2D acquisition (axial; from voxel shape)")
    out3d = judge_scan([header], "T1w", table, metadata={"MRAcquisitionType": "3D"})
    assert out3d.notes[0]["message"].startswith("3D acquisition (from sidecar MRAcquisitionType)")
    assert {r["metric"]: r["value"] for r in out3d.rows}["acquisition"] == "3D"


def test_user_can_still_judge_a_header_fact(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"default": {"header.anisotropy": {"review": 2.0}}}))
    out = judge_scan([ScanScores("header", {"anisotropy": 4.0})], "T1w", load_thresholds(path))
    assert out.verdict == "review"
    assert out.reasons[0]["kind"] == "fact" and out.reasons[0]["message"].startswith("fact: ")
    assert out.reasons[0]["rule"] == "header.anisotropy > review level 2 (T1w)"


def test_skull_stripped_phantom_gets_the_note_and_no_background_reason(tmp_path):
    brain = _ellipsoid().astype(np.float32) * 800.0  # ~1.6 l at 1.5 mm, exact zeros around
    zooms = (1.5, 1.5, 1.5)
    kind = input_kind.describe(brain, brain > 0, zooms)
    assert kind.skull_stripped and not kind.background_applicable and kind.processed
    scores = [
        ScanScores("iqm", {"fber": 1.0, "efc": 0.9}),  # would fail on a scan with air
        ScanScores("flow", {"flag_5pct": 1, "percentile": 0.0}),
        ScanScores("severity", {"score": 0.2}),
    ]
    # FBER is not judged by default: give it a level to see that zeroed air is not judged
    table = load_thresholds(_write_levels(tmp_path, {"iqm.fber": {"review": 30, "fail": 3}}))
    out = judge_scan(scores, "T1w", table, input_kind=kind)
    assert out.verdict == "pass"
    assert not [r for r in out.reasons if r["model"] == "iqm"]
    notes = " ".join(n["message"] for n in out.notes)
    assert "skull-stripped input" in notes and "not applicable" in notes
    assert "explained by the processing" in notes
    # the same numbers on a head with air are judged
    head = noisy(_ellipsoid(radii=(28, 34, 27)).astype(np.float32), 0.05, 0) * 800.0
    raw_kind = input_kind.describe(head, head > 200, zooms)
    assert not raw_kind.skull_stripped and raw_kind.background_applicable
    judged = judge_scan(scores, "T1w", table, input_kind=raw_kind)
    assert judged.verdict == "fail" and any(r["model"] == "iqm" for r in judged.reasons)


def test_standard_grid_is_a_fact():
    data = np.zeros((182, 218, 182), np.float32)
    data[40:140, 40:180, 40:140] = 1.0
    kind = input_kind.describe(data, data > 0, (1.0, 1.0, 1.0))
    assert kind.standard_grid == "MNI152 1 mm (FSL)"


def test_families_at_review_fail_by_the_rule():
    table = load_thresholds()
    agree = table.rule.agree
    assert agree == 3
    sev = table.lookup("T1w", "severity.score")
    ssim = table.lookup("T1w", "ssim.ssim_mean")
    flow = table.lookup("T1w", "flow.percentile")
    at_review = [
        ScanScores("severity", {"score": (sev.review + sev.fail) / 2}),
        ScanScores("ssim", {"ssim_mean": (ssim.review + ssim.fail) / 2}),
        ScanScores("flow", {"percentile": flow.review / 2}),
    ]
    for n in range(1, agree):
        assert judge_scan(at_review[:n], "T1w", table).verdict == "review"
    out = judge_scan(at_review[:agree], "T1w", table)
    assert out.verdict == "fail" and out.reasons[0]["model"] == "rule"
    assert f"{agree} families agree" in out.reasons[0]["message"]


def test_shipped_file_has_no_header_levels_and_a_rule():
    raw = json.loads((Path(input_kind.__file__).parent / "data" / "thresholds.json").read_text())
    assert not any(k.startswith("header.") for k in raw["default"])
    assert raw["rule"]["agree"] == 3 and raw["rule"]["justification"]


def test_clinical_2d_scan_without_artifacts_passes(mni_1x1x4):
    from bids_qa.scoring import build_scorers
    from bids_qa.volume import load_volume

    volume = load_volume(mni_1x1x4)
    results = [s.score(volume, "T1w") for s in build_scorers()]
    out = judge_scan(results, "T1w", load_thresholds(), input_kind=input_kind.describe_volume(volume))
    # the 1x1x4 slices themselves are no reason: no fact, no severity/ssim/tiers/iqm flag. The
    # flow reference (unprocessed heads) still flags the template image; the calibrated
    # flow.percentile level (bids_qa evaluate --calibrate) is to replace flow.flag_5pct.
    assert [r["model"] for r in out.reasons] in ([], ["flow"]), [r["message"] for r in out.reasons]
    assert out.verdict in ("pass", "review")
    assert any("2D acquisition" in n["message"] for n in out.notes)


@pytest.fixture(scope="module")
def mni_1x1x4(tmp_path_factory) -> Path:
    """nilearn's 1 mm MNI template averaged to 1x1x4 mm slices, with a little Rician noise."""
    from bids_qa.demo import template_maps

    t1 = template_maps(1.0)[0]
    z = (t1.shape[2] // 4) * 4
    thick = t1[:, :, :z].reshape(t1.shape[0], t1.shape[1], z // 4, 4).mean(axis=3)
    thick = thick / float(np.percentile(thick[thick > 0.2], 95))
    path = tmp_path_factory.mktemp("clinical") / "sub-01_T1w.nii.gz"
    return write_nifti(path, noisy(thick, 0.01, 3), zooms=(1.0, 1.0, 4.0))


def _group_rows(n_clean=20, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_clean + 1):
        rows.append(
            {
                "scan_id": f"sub-{i:02d}_T1w",
                "suffix": "T1w",
                "verdict": "pass",
                "reasons": "",
                "header.vox_x": 1.0, "header.vox_y": 1.0, "header.vox_z": 1.0,
                "severity.score": float(rng.normal(0.3, 0.05)),
                "ssim.ssim_mean": float(rng.normal(0.95, 0.01)),
            }
        )
    rows[7]["severity.score"] = 0.9  # the one damaged scan
    return rows


def test_protocol_group_flags_the_one_corrupted_scan():
    rows = _group_rows()
    rows.append({"scan_id": "sub-99_T2w", "suffix": "T1w", "verdict": "pass", "reasons": "",
                 "header.vox_x": 0.5, "header.vox_y": 0.5, "header.vox_z": 3.0,
                 "severity.score": 2.0})
    summary = protocols.protocol_flags(rows, z_level=3.5, min_group=8)
    flagged = [r["scan_id"] for r in rows if r.get("protocol.flag") == 1]
    assert flagged == ["sub-07_T1w"]
    assert rows[7]["verdict"] == "review"
    assert "protocol group 'T1w 1.0x1.0x1.0 mm' of 21 scans" in rows[7]["reasons"]
    assert "rule: |z| > 3.5" in rows[7]["reasons"]
    assert rows[-1]["protocol.judged"] == 0 and "too small to judge" in rows[-1]["notes"]
    sizes = {g["protocol"]: (g["n_scans"], g["flagged"]) for g in summary["groups"]}
    assert sizes["T1w 1.0x1.0x1.0 mm"] == (21, 1)
    # scanner and sequence from the sidecar split a protocol
    key = protocols.protocol_key(rows[0], {"Manufacturer": "Siemens", "SeriesDescription": "MPRAGE"})
    assert key == "T1w 1.0x1.0x1.0 mm | Siemens MPRAGE"


def test_ratings_readers_are_tolerant(tmp_path):
    (tmp_path / "r.tsv").write_text("scan_id\trating\tartifacts\tcomment\tupdated\nsub-01_T1w\t1\t\t\t\n")
    (tmp_path / "r.json").write_text(json.dumps({"format": "bids_qa-ratings", "ratings": [
        {"scan_id": "sub-02_T1w", "rating": 4}]}))
    (tmp_path / "m1.json").write_text(json.dumps({"subject": "sub-03", "dataset": "x", "rating": "unusable"}))
    (tmp_path / "m2.json").write_text(json.dumps([{"subject": "sub-04_T1w", "rating": 0.8}]))
    got = [r for f in ("r.tsv", "r.json", "m1.json", "m2.json") for r in read_ratings(tmp_path / f)]
    assert [(r["id"], r["rating"]) for r in got] == [
        ("sub-01_T1w", 1), ("sub-02_T1w", 4), ("sub-03", 1), ("sub-04_T1w", 4)
    ]


def test_calibrate_recovers_a_known_threshold_and_writes_a_usable_file(tmp_path, small_bids):
    from bids_qa.group_table import GroupTable, write_group_table

    rng = np.random.default_rng(1)
    rows, ratings = [], []
    for i in range(60):
        sev = float(rng.uniform(0.0, 3.0))
        rows.append({"scan_id": f"sub-{i:02d}_T1w", "subject": f"{i:02d}", "suffix": "T1w",
                     "verdict": "pass", "severity.score": sev,
                     "ssim.ssim_mean": float(rng.uniform(0.8, 1.0))})
        ratings.append({"scan_id": f"sub-{i:02d}_T1w", "rating": 1 if sev > 1.7 else 3})
    out_dir = tmp_path / "out"
    write_group_table(out_dir, GroupTable("T1w", ["severity.score", "ssim.ssim_mean"], rows, {}))
    ratings_file = tmp_path / "ratings.json"
    ratings_file.write_text(json.dumps({"format": "bids_qa-ratings", "ratings": ratings}))
    assert calibrate_main([str(out_dir), "--ratings", str(ratings_file)]) == 0
    written = out_dir / "thresholds_calibrated.json"
    spec = json.loads(written.read_text())["T1w"]["severity.score"]
    assert abs(spec["fail"] - 1.7) < 0.1 and spec["direction"] == "higher_is_worse"
    report = json.loads((out_dir / "calibration.json").read_text())["T1w"]
    assert report["cross_validated"]["balanced_accuracy"] > 0.9
    assert set(report["cross_validated"]["confusion"]) == {
        "exclude_flagged", "exclude_missed", "keep_flagged", "keep_passed"}
    table = load_thresholds(written)
    assert table.origin == "calibrated from ratings"
    assert table.lookup("T1w", "severity.score").fail == spec["fail"]
    # a following participant run uses it, and the group table names it
    from bids_qa.cli import main

    run_out = tmp_path / "run"
    assert main([str(small_bids), str(run_out), "participant", "--no-reports",
                 "--scorers", "header", "iqm", "--thresholds", str(written)]) == 0
    sidecar = json.loads(next(run_out.rglob("*T1w_qa.json")).read_text())
    assert sidecar["provenance"]["thresholds"]["sources"][-1] == str(written)
    assert main([str(small_bids), str(run_out), "group", "--no-reports",
                 "--thresholds", str(written)]) == 0
    group = json.loads((run_out / "group_T1w.json").read_text())
    assert group["provenance"]["thresholds"]["origin"] == "calibrated from ratings"
    with (run_out / "group_T1w.tsv").open() as fh:
        head = next(csv.reader(fh, delimiter="\t"))
    assert "notes" in head and "protocol.group" in head
