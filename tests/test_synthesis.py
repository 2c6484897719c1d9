"""Synthetic heads from label maps: tissue order per contrast, bit-for-bit replay, the BIDS dataset of
``bids_qa synthesize`` (pybids indexes it, ``bids_qa participant`` runs on it) and the training mix."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import PYTHON, REPO

from bids_qa import synthesis

# shells of the tiny head (radius in mm -> FreeSurfer label; left/right halves for WM and GM)
SHELLS = ((7.0, "wm"), (12.0, "gm"), (15.5, "csf"), (17.5, 515), (19.5, 511))


def tiny_label_map() -> synthesis.LabelMap:
    """A 40^3, 1 mm head: WM (2/41) inside GM (3/42), CSF (24), skull (515), scalp (511)."""
    idx = np.indices((40, 40, 40)).astype(float) - 19.5
    r = np.sqrt((idx**2).sum(axis=0))
    left = idx[0] < 0
    labels = np.zeros((40, 40, 40), np.int32)
    for radius, tissue in reversed(SHELLS):
        inside = r < radius
        if tissue == "wm":
            labels[inside] = np.where(left[inside], 2, 41)
        elif tissue == "gm":
            labels[inside] = np.where(left[inside], 3, 42)
        elif tissue == "csf":
            labels[inside] = 24
        else:
            labels[inside] = tissue
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -19.5
    return synthesis.LabelMap(labels, affine, "tiny")


def write_label_map(path, label_map: synthesis.LabelMap):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label_map.labels.astype(np.uint16), label_map.affine), str(path))
    return path


def tissue_means(out: dict) -> dict[str, float]:
    """Mean image inside each tissue's labels on the image grid, one voxel away from other labels."""
    from scipy import ndimage

    image, labels = out["image"], out["labels"]
    groups = {"wm": (2, 41), "gm": (3, 42), "csf": (24,)}
    means = {}
    for name, labs in groups.items():
        core = ndimage.binary_erosion(np.isin(labels, labs))
        assert core.sum() > 20, name
        means[name] = float(image[core].mean())
    return means


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_order_follows_contrast(seed):
    lm = tiny_label_map()
    got = {}
    for contrast in synthesis.CONTRASTS:
        out, params = synthesis.synthesize_head(
            lm, np.random.default_rng(seed), contrast, acquisition="3d", with_labels=True
        )
        assert params["suffix"] == contrast
        got[contrast] = m = tissue_means(out)
        assert out["image"].dtype == np.float32 and out["image"].min() >= 0
    t1, t2, flair, pd = (got[c] for c in ("T1w", "T2w", "FLAIR", "PDw"))
    assert t1["wm"] > t1["gm"] > t1["csf"]
    assert t2["csf"] > t2["gm"] > t2["wm"]
    assert flair["gm"] > flair["wm"] > flair["csf"] and flair["csf"] < 0.5 * flair["wm"]
    assert pd["csf"] > pd["gm"] > pd["wm"]
    # PD: low contrast (WM close to CSF); T2: CSF far brighter than WM
    assert pd["wm"] / pd["csf"] > 0.5 > t2["wm"] / t2["csf"]
    del m


def test_replays_bit_for_bit_from_recorded_parameters():
    lm = tiny_label_map()
    for acquisition in ("3d", "2d"):
        out, params = synthesis.synthesize_head(lm, np.random.default_rng(7), "random", acquisition=acquisition)
        recorded = json.loads(json.dumps(params))  # the sidecar's round trip
        again = synthesis.replay(lm, recorded)
        assert np.array_equal(out["image"], again["image"])
        assert np.array_equal(out["affine"], again["affine"])
        other, _ = synthesis.synthesize_head(lm, np.random.default_rng(8), "random", acquisition=acquisition)
        assert not np.array_equal(out["image"], other["image"]) or out["image"].shape != other["image"].shape


def test_acquisition_grid_and_affine():
    lm = tiny_label_map()
    out, params = synthesis.synthesize_head(lm, np.random.default_rng(3), "T2w", acquisition="2d")
    acq = params["acquisition"]
    zooms = np.linalg.norm(out["affine"][:3, :3], axis=0)
    assert acq["type"] == "2D" and acq["plane"] in synthesis.PLANES
    assert 3.0 <= acq["slice_thickness_mm"] <= 6.0
    assert np.allclose(zooms, acq["voxel_mm"])  # the slice axis is the third voxel axis
    assert zooms[2] >= acq["slice_thickness_mm"] and zooms[0] <= 1.2
    out3, params3 = synthesis.synthesize_head(lm, np.random.default_rng(3), "T1w", acquisition="3d")
    z3 = np.linalg.norm(out3["affine"][:3, :3], axis=0)
    assert np.allclose(z3, z3[0]) and 0.7 <= z3[0] <= 1.5
    # the grid covers the head: every labelled voxel of the posed head lies inside the field of view
    assert all(s * z > 39 for s, z in zip(out3["image"].shape, z3, strict=True))


def test_classes_tie_twins_and_follow_generation_classes():
    present = [0, 2, 3, 24, 41, 42, 515]
    assert [2, 41] in synthesis.label_classes(present)
    assert [2] in synthesis.label_classes(present, symmetric=False)
    gen_labels = np.array([0, 2, 3, 24, 41, 42])
    gen_classes = np.array([0, 1, 2, 3, 1, 4])  # 3 and 42 apart, 2/41 together, 24 alone
    classes = synthesis.label_classes(present, gen_labels, gen_classes, symmetric=False)
    assert [2, 41] in classes and [3] in classes and [515] in classes
    assert synthesis.tissue_of([515]) == "bone" and synthesis.tissue_of([9999]) == "unknown"
    for name in synthesis.CONTRASTS:  # each prototype order maps back to its own suffix
        assert synthesis.suffix_for_levels(synthesis.PROTOTYPES[name]) == name


def test_random_contrast_draws_several_orders():
    lm = tiny_label_map()
    rng = np.random.default_rng(0)
    components = {synthesis.draw_params(rng, lm, "random")["component"] for _ in range(40)}
    assert components == set(synthesis.MIXTURE_WEIGHTS)


def test_synthesize_writes_bids_that_pybids_and_participant_accept(tmp_path):
    import bids

    from bids_qa.cli import main

    write_label_map(tmp_path / "labels" / "tiny_seg.nii.gz", tiny_label_map())
    out = tmp_path / "synth"
    assert main(["synthesize", str(tmp_path / "labels"), str(out), "--n", "3", "--seed", "4"]) == 0
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["BIDSVersion"] and description["DatasetType"] == "raw"
    layout = bids.BIDSLayout(str(out))
    files = layout.get(datatype="anat", extension=".nii.gz")
    assert len(files) == 3 and sorted(layout.get_subjects()) == ["01", "02", "03"]
    for f in files:
        meta = f.get_metadata()
        params = meta["SynthesisParameters"]
        assert f.entities["suffix"] == params["suffix"] in synthesis.CONTRASTS
        assert meta["MRAcquisitionType"] == params["acquisition"]["type"]
        # the file holds the replayed head (int16 of the rounded image)
        head = synthesis.replay(synthesis.load_label_map(tmp_path / "labels" / "tiny_seg.nii.gz"), params)
        assert np.array_equal(np.asarray(f.get_image().dataobj), head["image"].astype(np.int16))
    done = subprocess.run(
        [PYTHON, "-m", "bids_qa", str(out), str(tmp_path / "qa"), "participant", "--no-reports"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for f in files:
        stem = f.filename.replace(".nii.gz", "")
        sub = f.entities["subject"]
        assert (tmp_path / "qa" / f"sub-{sub}" / "anat" / f"{stem}_qa.tsv").is_file()


def test_synthesize_without_label_maps_is_a_usage_error(tmp_path):
    from bids_qa.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["synthesize", str(tmp_path / "empty"), str(tmp_path / "out")]) == 66


def _fake_data_dir(root, split):
    """Tiny NIfTI files at every manifest path of ``split`` and a tiny label map for every listed map."""
    import nibabel as nib

    from bids_qa.training.data import load_manifest, manifest_entries

    rng = np.random.default_rng(0)
    for entry in manifest_entries(split, include_out_of_scope=True):
        path = root / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(rng.uniform(0, 100, (12, 12, 12)).astype(np.float32), np.eye(4)), str(path))
    for entry in load_manifest()["label_maps"]["entries"]:
        if entry["split"] == split:
            write_label_map(root / entry["path"], tiny_label_map())


def test_training_mix_yields_synthetic_heads_at_the_share(tmp_path):
    from bids_qa.training import loop, severity
    from bids_qa.training.data import SyntheticMix, clean_volumes, mix_count, synthetic_mix

    _fake_data_dir(tmp_path, "train")
    plain = clean_volumes(tmp_path, "train")
    assert not any(e.get("synthetic") for e, _ in plain)
    n_real = len(plain)
    mixed = clean_volumes(tmp_path, "train", mix=SyntheticMix(0.5, None, seed=1))
    synthetic = [e for e, _ in mixed if e.get("synthetic")]
    assert len(synthetic) == n_real and len(mixed) == 2 * n_real
    assert {e["suffix"] for e in synthetic} <= set(synthesis.CONTRASTS)
    assert all(e["license"] == "Apache-2.0" and e["split"] == "train" for e in synthetic)
    vol = mixed[-1][1]
    assert vol.data.ndim == 3 and vol.mask.any()
    assert mix_count(12, 0.25) == 4 and mix_count(12, 0.0) == 0 and mix_count(12, 1.0) == 12
    only = clean_volumes(tmp_path, "train", mix=SyntheticMix(1.0, str(tmp_path / "synthseg_label_maps")))
    assert len(only) == n_real and all(e.get("synthetic") for e, _ in only)

    args = severity.build_parser().parse_args(
        ["--data", str(tmp_path), "--run-dir", str(tmp_path / "run"), "--synthetic-share", "0.3"]
    )
    settings = loop.settings_from_args(args)
    assert synthetic_mix(settings) == SyntheticMix(0.3, None, 0)
    loop.write_settings(tmp_path / "run", settings, "severity", [])
    saved = json.loads((tmp_path / "run" / "settings.json").read_text())["settings"]
    assert saved["synthetic_share"] == 0.3 and saved["label_maps"] is None
