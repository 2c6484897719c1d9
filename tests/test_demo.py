"""``bids_qa demo``: the dataset it builds and the end-to-end run on it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_qa import demo
from bids_qa.discover import discover
from bids_qa.group_table import read_group_table


def test_template_maps_are_offline_and_consistent():
    t1, gm, wm, brain, affine = demo.template_maps(4.0)
    assert t1.shape == gm.shape == wm.shape == brain.shape == (50, 59, 48)
    assert np.allclose(np.abs(np.diag(affine)[:3]), 4.0)
    assert 0.0 <= t1.min() and t1.max() <= 1.0
    assert set(np.unique(brain)) == {0.0, 1.0}
    # T1w contrast: white matter brighter than grey matter
    assert t1[wm > 0.9].mean() > t1[gm > 0.9].mean()
    t2 = demo.t2_like(gm, wm, brain)
    assert t2[wm > 0.9].mean() < t2[gm > 0.9].mean()  # T2w contrast: the reverse


def test_corruptions_are_what_they_claim():
    rng = np.random.default_rng(0)
    image = np.zeros((16, 16, 16), np.float32)
    image[4:12, 4:12, 4:12] = 1.0
    noisy = demo.add_rician_noise(image, 0.1, rng)
    assert noisy.min() >= 0 and 0.05 < noisy[:3].mean() < 0.2  # Rician floor in the air
    ghosted = demo.add_ghosting(image)
    assert ghosted.min() >= 0
    outside = np.ones_like(image, bool)
    outside[3:13, 3:13, 3:13] = False
    assert ghosted[outside].max() > 0.05  # ghosts outside the object
    assert np.array_equal(demo.add_ghosting(image), ghosted)  # deterministic


def test_dataset_is_valid_bids_and_reproducible(tmp_path):
    scans = demo.make_demo_dataset(tmp_path / "a", n_subjects=3, voxel_size=4.0, seed=3)
    assert [s.path.relative_to(tmp_path / "a").as_posix() for s in scans] == [
        f"sub-0{i}/anat/sub-0{i}_{c}.nii.gz" for i in (1, 2, 3) for c in ("T1w", "T2w")
    ]
    assert "noise" in scans[2].description and "ghosting" in scans[3].description
    found = discover(tmp_path / "a")
    assert found.mode == "bids" and len(found.scans) == 6 and found.warnings == []
    sidecar = json.loads((tmp_path / "a/sub-01/anat/sub-01_T1w.json").read_text(encoding="utf-8"))
    assert sidecar["Manufacturer"] == "bids_qa demo"
    again = demo.make_demo_dataset(tmp_path / "b", n_subjects=3, voxel_size=4.0, seed=3)
    for one, two in zip(scans, again, strict=True):
        assert np.array_equal(nib.load(one.path).get_fdata(), nib.load(two.path).get_fdata())
    with pytest.raises(ValueError, match="at least 2 subjects"):
        demo.make_demo_dataset(tmp_path / "c", n_subjects=1)


def test_demo_runs_both_levels(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        demo.main(
            [
                str(out),
                "--voxel-size",
                "2",  # the demo's own size: at 4 mm the clean template reads as low resolution
                "--no-reports",
                "-q",
                "--device",
                "cpu",
                "--nprocs",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert str(out / "qa") in printed and "group_T1w.tsv" in printed and "sub-02_T1w" in printed
    t1 = read_group_table(out / "qa", "T1w").set_index("scan_id")
    t2 = read_group_table(out / "qa", "T2w").set_index("scan_id")
    assert list(t1.index) == ["sub-01_T1w", "sub-02_T1w"] and list(t2.index) == [
        "sub-01_T2w",
        "sub-02_T2w",
    ]
    assert set(t1["verdict"]) <= {"pass", "review", "fail"}
    # the noisy scan: much lower foreground-background energy ratio and a flagged verdict
    assert t1.loc["sub-02_T1w", "iqm.fber"] < t1.loc["sub-01_T1w", "iqm.fber"] / 10
    assert (
        t1.loc["sub-02_T1w", "verdict"] in {"review", "fail"}
        and "severity.score" in t1.loc["sub-02_T1w", "reasons"]
    )
    # one entry per flagged metric, " | "-separated, each explained in the scan's own numbers
    # (the combination rule's own reason names the families that agree instead)
    parts = t1.loc["sub-02_T1w", "reasons"].split(" | ")
    scores = [p for p in parts if "families agree" not in p]
    assert len(scores) >= 2 and all(" threshold " in p for p in scores)
    sev = next(p for p in parts if p.startswith("evidence: severity.score"))  # kind, then the rule
    assert "worst slice" in sev and "n/a" not in sev
    assert t1.loc["sub-01_T1w", "verdict"] == "pass"
    # the ghosted scan: energy spread into the background
    assert t2.loc["sub-02_T2w", "iqm.efc"] > t2.loc["sub-01_T2w", "iqm.efc"]
    assert t2.loc["sub-02_T2w", "iqm.fber"] < t2.loc["sub-01_T2w", "iqm.fber"] * 0.75


def test_demo_usage_errors(tmp_path):
    assert demo.main([str(tmp_path / "x"), "--subjects", "1"]) == 64
    assert demo.main(["--help"]) == 0
