"""``bids_qa simulate`` on a tiny BIDS dataset, and the clean-data sources of the trainers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_qa import artifacts as A
from bids_qa.simulate import intensity_scale, main, parse_level, read_scan, read_simulation_table


def _head(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Ellipsoidal 'head' with a brighter shell and a dark core, on a raw scanner-like scale."""
    idx = np.indices(shape).astype(np.float32)
    r = sum(((idx[i] - (s - 1) / 2) / (0.42 * s)) ** 2 for i, s in enumerate(shape))
    img = (
        np.where(r < 1, 600.0, 0.0)
        + np.where(r < 0.55, -250.0, 0.0)
        + np.where(r < 0.1, -250.0, 0.0)
    )
    noise = np.random.default_rng(seed).standard_normal((2, *shape)) * 8
    return np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2).astype(np.float32)


@pytest.fixture()
def clean_bids(tmp_path: Path) -> Path:
    root = tmp_path / "clean"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-02" / "ses-1" / "anat").mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"})
    )
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    nib.save(
        nib.Nifti1Image(_head((24, 28, 20), 0), affine),
        root / "sub-01" / "anat" / "sub-01_T1w.nii.gz",
    )
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text(json.dumps({"RepetitionTime": 2.1}))
    nib.save(
        nib.Nifti1Image(np.rint(_head((22, 26, 18), 1)).astype(np.int16), affine),
        root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_acq-fast_run-1_T2w.nii.gz",
    )
    return root


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_simulate_writes_an_indexable_bids_dataset(clean_bids: Path, tmp_path: Path) -> None:
    from bids import BIDSLayout

    before = _tree_digest(clean_bids)
    out = tmp_path / "out"
    rc = main(
        [
            str(clean_bids),
            str(out),
            "--artifacts",
            "noise",
            "motion",
            "--levels",
            "0.5",
            "moderate",
            "--seed",
            "4",
        ]
    )
    assert rc == 0
    assert _tree_digest(clean_bids) == before  # the clean dataset is never written to

    expected = {
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_acq-noise050_T1w.nii.gz",
        "sub-01/anat/sub-01_acq-noisemoderate_T1w.nii.gz",
        "sub-01/anat/sub-01_acq-motion050_T1w.nii.gz",
        "sub-01/anat/sub-01_acq-motionmoderate_T1w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_acq-fast_run-1_T2w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_acq-fastNoise050_run-1_T2w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_acq-fastNoisemoderate_run-1_T2w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_acq-fastMotion050_run-1_T2w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_acq-fastMotionmoderate_run-1_T2w.nii.gz",
    }
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")}
    assert written == expected
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["BIDSVersion"]

    layout = BIDSLayout(str(out))
    indexed = {Path(f.path).relative_to(out).as_posix() for f in layout.get(extension=".nii.gz")}
    assert indexed == expected
    assert sorted(layout.get_subjects()) == ["01", "02"]
    assert "noise050" in layout.get_acquisitions()

    rows = read_simulation_table(out / "simulation.tsv")
    assert {r["path"] for r in rows} == expected
    for row in rows:
        label = row["label"]
        assert label.severity == pytest.approx(A.severity_of(label.artifact, label.params))
        if row["level"] == "moderate":
            assert label.level == "moderate"
        if row["level"] == "0.5":
            assert label.severity == pytest.approx(0.5)
        sidecar = (
            json.loads((out / row["path"].replace(".nii.gz", ".json")).read_text())
            if row["artifact"] != "none"
            else {}
        )
        if row["artifact"] != "none":
            assert sidecar["BidsQASimulation"]["Parameters"] == label.params
            # Replaying the label on the clean scan reproduces the written file.
            img, raw = read_scan(clean_bids / row["source"])
            norm, lo, hi = intensity_scale(raw)
            expected_data = lo + A.replay(norm, label, img.header.get_zooms()[:3]).astype(
                np.float64
            ) * (hi - lo)
            got = nib.load(out / row["path"])
            assert got.get_data_dtype() == img.get_data_dtype()
            tol = 0.51 if np.issubdtype(img.get_data_dtype(), np.integer) else 1e-3
            np.testing.assert_allclose(
                np.asarray(got.dataobj, dtype=np.float64), expected_data, atol=tol
            )
            assert np.abs(np.asarray(got.dataobj, dtype=np.float64) - raw).mean() > 1.0
    assert (
        json.loads((out / "sub-01/anat/sub-01_acq-noise050_T1w.json").read_text())["RepetitionTime"]
        == 2.1
    )


def test_simulate_is_reproducible_per_file(clean_bids: Path, tmp_path: Path) -> None:
    args = ["--artifacts", "bias+noise", "anisotropy", "--levels", "random", "--seed", "7"]
    assert main([str(clean_bids), str(tmp_path / "a"), *args]) == 0
    assert (
        main(
            [
                str(clean_bids),
                str(tmp_path / "b"),
                *args,
                "--participant-label",
                "sub-02",
                "--no-clean-copies",
            ]
        )
        == 0
    )
    b_files = {p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*.nii.gz")}
    assert b_files and all(f.startswith("sub-02/") for f in b_files)
    assert not any("acq-fast_run" in f for f in b_files)  # no clean copy
    for f in b_files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    rows = read_simulation_table(tmp_path / "a" / "simulation.tsv")
    combos = [r["label"] for r in rows if r["artifact"] == "bias+noise"]
    assert len(combos) == 2
    for label in combos:
        comps = label.params["components"]
        assert label.severity == pytest.approx(1 - np.prod([1 - c["severity"] for c in comps]))


def test_simulate_refuses_bad_requests(clean_bids: Path, tmp_path: Path) -> None:
    assert (
        main([str(clean_bids), str(clean_bids / "derivatives" / "sim")]) == 64
    )  # inside the clean dataset
    assert not (clean_bids / "derivatives").exists()
    assert (
        main([str(clean_bids), str(tmp_path / "o"), "--artifacts", "bias", "--levels", "severe"])
        == 64
    )
    assert main([str(clean_bids), str(tmp_path / "o"), "--artifacts", "spikes"]) == 64
    assert main([str(clean_bids), str(tmp_path / "o"), "--levels", "1.5"]) == 64
    assert main([str(tmp_path / "missing"), str(tmp_path / "o")]) == 66
    assert parse_level("0.25").token == "025" and parse_level("Severe").tier == "severe"


def test_manifest_split_is_by_subject_and_license_aware() -> None:
    from bids_qa.training.data import load_manifest, manifest_entries

    entries = load_manifest()["entries"]
    train = manifest_entries("train")
    validation = manifest_entries("validation", include_out_of_scope=True)
    assert len(train) + len(validation) == len(entries)
    assert not {e["subject"] for e in train} & {e["subject"] for e in validation}
    assert all(not e["path"].startswith("open_ms_data_crosssectional_processed") for e in entries)
    assert all(e["license"] in {"CC-BY", "PDDL-1.0", "BSD-2-Clause", "Apache-2.0"} for e in train)
    assert {e["folder"] for e in entries if e["license"] == "GPL-2.0"} == {"isbi2015_ms_raw"}
    assert all(e["split"] == "validation" for e in entries if e["folder"] == "isbi2015_ms_raw")
    spine = [e for e in entries if e["out_of_scope"]]
    assert spine and all(e["folder"] == "sct_testing_data" and e["license"] == "MIT" for e in spine)
    assert not any(e["out_of_scope"] for e in manifest_entries("validation"))
    patients = {
        e["subject"].split("/")[-1] for e in train if e["folder"] == "open_ms_data_longitudinal"
    }
    assert patients == {"patient01", "patient03", "patient12"}
    assert all(not Path(e["path"]).is_absolute() for e in entries)


def test_clean_volumes_reports_missing_files(tmp_path: Path) -> None:
    from bids_qa.training.data import clean_volumes

    with pytest.raises(FileNotFoundError, match="missing under"):
        clean_volumes(tmp_path, "validation")


def test_synthetic_volume_has_the_requested_contrast() -> None:
    from bids_qa.training.data import synthetic_head, synthetic_volumes

    rng = np.random.default_rng(0)
    ((entry, vol),) = synthetic_volumes(1, rng, resolution=3, contrasts=("T2w",))
    assert entry["suffix"] == "T2w" and entry["synthetic"] is True and vol.zooms == (3.0, 3.0, 3.0)
    assert vol.data.ndim == 3 and 0.05 < vol.mask.mean() < 0.8
    t1, _, _ = synthetic_head(np.random.default_rng(1), "T1w", deform=False)
    t2, _, _ = synthetic_head(np.random.default_rng(1), "T2w", deform=False)
    from bids_qa.training.data import _mni_tissues

    gm, wm, brain, _ = _mni_tissues(2)
    core_wm, csf = (wm > 0.9), brain & (gm < 0.05) & (wm < 0.05)
    assert t1[core_wm].mean() > t1[csf].mean()  # T1w: WM bright, CSF dark
    assert t2[core_wm].mean() < t2[csf].mean()  # T2w: the other way round
