"""Reference-only refit of the flow model (bids_qa/training/flow_reference.py) on tiny phantoms."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bids_qa.models import flow as F  # noqa: E402
from bids_qa.training import flow_reference as R  # noqa: E402
from bids_qa.volume import volume_from_array  # noqa: E402


def _head(n: int = 44, voxel: float = 4.0, seed: int = 0) -> np.ndarray:
    """Ellipsoidal head: scalp, CSF, grey shell, white core, smooth texture."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    c = (np.arange(n) - (n - 1) / 2) * voxel
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt((x / 70) ** 2 + (y / 85) ** 2 + (z / 65) ** 2)
    img = np.select([r < 0.7, r < 0.88, r < 0.93, r < 1.0], [900.0, 600.0, 150.0, 300.0], 0.0)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 1.5)
    return (img * (1 + 0.05 * texture) + np.abs(rng.normal(0, 5, img.shape))).astype(np.float32)


def test_resolution_variants_are_never_finer_than_the_scan():
    vol = volume_from_array(_head(88, 2.0), (2.0, 2.0, 2.0))
    assert R.target_zooms(vol, "iso1.5") == (2.0, 2.0, 2.0)
    assert R.resample_volume(vol, R.target_zooms(vol, "iso1.5")) is None  # same as the scan: skipped
    coarse = R.resample_volume(vol, R.target_zooms(vol, "iso2.5"))
    assert coarse.zooms == (2.5, 2.5, 2.5)
    assert coarse.shape == (70, 70, 70)  # (88 - 1) // 1.25 + 1
    thick = R.resample_volume(vol, R.target_zooms(vol, "thick4"))
    assert thick.zooms == (2.0, 2.0, 4.0) and thick.shape == (88, 88, 44)
    assert thick.slice_axis == 2 and thick.is_2d_acquisition
    # the head is still there, normalised like a loaded scan
    assert 0.2 < thick.mask.mean() < 0.8 and thick.data.max() <= 2.0
    # a 2D coronal acquisition gets its thick slices along its own slice axis
    cor = volume_from_array(_head(88, 2.0)[:, ::3, :], (1.0, 6.0, 1.0))
    assert cor.slice_axis == 1
    assert R.target_zooms(cor, "thick4") == (1.0, 6.0, 1.0)
    assert R.target_zooms(cor, "iso2.5") == (2.5, 6.0, 2.5)
    names = [n for n, _ in R.volume_variants("a.nii.gz", vol, ("iso1.5", "iso2.5", "thick4"))]
    assert names == ["a.nii.gz", "a.nii.gz|res=iso2.5", "a.nii.gz|res=thick4"]


def _init_weights(path):
    """A small flow weights file: random encoder, reference fitted on random points."""
    from bids_qa.models.weights import save_weights
    from bids_qa.training.flow import build_weights

    torch.manual_seed(0)
    enc = F.EncoderConfig(input_size=32, channels=(4, 4, 4), hidden=8)
    net = F.build_encoder(enc).eval()
    m = np.random.default_rng(0).normal(size=(30, 2))
    state, meta, _ = build_weights(net, enc, F.FlowConfig(), F.FitConfig(steps=20), m,
                                   [f"v{i}" for i in range(30)], {"tag": "init", "training": {"note": "test"}})
    save_weights(path, state, meta)
    return state


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    """A data folder with three phantom training volumes in two folders and a manifest for them."""
    import nibabel as nib

    from bids_qa.training import data as D

    entries = []
    for i, (folder, zooms) in enumerate((("site_a", (4.0, 4.0, 4.0)), ("site_a", (4.0, 4.0, 4.0)),
                                         ("site_b", (2.0, 2.0, 6.0)))):
        arr = _head(44, 4.0, seed=i) if folder == "site_a" else _head(44, 4.0, seed=i)[:, :, ::2]
        rel = f"{folder}/vol{i}.nii.gz"
        (tmp_path / folder).mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(arr, np.diag([*zooms, 1.0])), str(tmp_path / rel))
        entries.append({"path": rel, "folder": folder, "subject": f"s{i}", "suffix": "T1w", "split": "train",
                        "license": "test", "attribution": "test", "body_part": "brain", "out_of_scope": False})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"description": "test", "version": 1, "excluded_folders": [],
                                    "entries": entries}))
    monkeypatch.setattr(D, "MANIFEST_PATH", manifest)
    return tmp_path


def _run(tiny_data, tmp_path, name, *extra):
    from bids_qa.models.weights import load_weights
    from bids_qa.training import flow as T

    init = tmp_path / "init.safetensors"
    if not init.exists():
        _init_weights(init)
    run = tmp_path / name
    rc = T.main(["--data", str(tiny_data), "--run-dir", str(run), "--reference-only", "--init", str(init),
                 "--flow-steps", "30", "--threads", "1", *extra])
    assert rc == 0
    return load_weights(run / "flow.safetensors"), load_weights(init), init


def test_reference_only_keeps_the_encoder_and_records_provenance(tiny_data, tmp_path):
    (state, meta), (init_state, init_meta), init = _run(tiny_data, tmp_path, "ref")
    # encoder unchanged, bit for bit; reference refitted
    enc_keys = [k for k in init_state if k.startswith("encoder.")]
    assert enc_keys and all(torch.equal(state[k], init_state[k]) for k in enc_keys)
    assert not torch.equal(state["reference.population_m"], init_state["reference.population_m"])
    ref = meta["reference"]
    assert ref["volumes"] == ["site_a/vol0.nii.gz", "site_a/vol1.nii.gz", "site_b/vol2.nii.gz"]
    assert ref["folders"] == ["site_a", "site_b"] and ref["excluded_folders"] == []
    # the 4 mm isotropic phantoms are coarser than every variant (none added); the 2 x 2 x 6 mm one
    # gets iso2.5 (2.5, 2.5, 6), while thick4 (max(2, 1), max(2, 1), max(6, 4)) is itself
    per_volume = 4 * 3  # flips/gammas x window shifts
    assert ref["n_points"] == 4 * per_volume  # vol0, vol1, vol2, vol2|res=iso2.5
    assert set(ref["resolutions"]) == {"iso1.5", "iso2.5", "thick4"}
    assert ref["synthetic"] == {"mni_heads": 0, "label_map_share": 0.0, "label_maps": None}
    refit = meta["reference_refit"]
    assert refit["init"]["file"] == "init.safetensors"
    assert refit["init"]["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    assert refit["init"]["version"] == init_meta["version"]
    assert meta["version"] == f"{init_meta['version']}.ref3"
    assert refit["command"].startswith("bids_qa train flow --data ") and str(tmp_path) not in refit["command"]
    assert meta["training"] == init_meta["training"]  # the encoder's own provenance is kept
    assert meta["fit_config"]["steps"] == 30
    # the new weights load and score
    scorer = F.FlowScorer(weights=str(tmp_path / "ref" / "flow.safetensors"))
    v = scorer.score(volume_from_array(_head(44, 4.0, seed=5), (4.0, 4.0, 4.0))).values
    assert np.isfinite(v["log_density"]) and v["flag_5pct"] in (0, 1)
    assert scorer.reference.level(5.0) == pytest.approx(ref["level_5pct"])


def test_reference_only_excludes_folders_and_adds_synthetic_heads(tiny_data, tmp_path):
    (_, meta), _, _ = _run(tiny_data, tmp_path, "loso", "--exclude-folder", "site_b", "--resolutions",
                           "--synthetic", "1")
    ref = meta["reference"]
    assert ref["volumes"] == ["site_a/vol0.nii.gz", "site_a/vol1.nii.gz", "synthetic/000_FLAIR"]
    assert ref["excluded_folders"] == ["site_b"] and ref["resolutions"] == {}
    assert ref["synthetic"]["mni_heads"] == 1
    assert ref["n_points"] == 3 * 12


def test_reference_only_needs_init(tiny_data, tmp_path):
    from bids_qa.training import flow as T

    with pytest.raises(SystemExit, match="--init"):
        T.main(["--data", str(tiny_data), "--run-dir", str(tmp_path / "x"), "--reference-only"])


def test_evaluate_sources_scores_the_same_cases_with_every_scorer(tmp_path):
    init = tmp_path / "init.safetensors"
    _init_weights(init)
    scorer = F.FlowScorer(weights=str(init))
    vols = [({"path": "a/v0.nii.gz", "folder": "a"}, volume_from_array(_head(44, 4.0, 0), (4.0, 4.0, 4.0))),
            ({"path": "b/v1.nii.gz", "folder": "b"}, volume_from_array(_head(44, 4.0, 1), (4.0, 4.0, 4.0))),
            ({"path": "s/spine.nii.gz", "folder": "s", "out_of_scope": True},
             volume_from_array(_head(44, 4.0, 2)[:, :10], (4.0, 4.0, 4.0)))]
    res = R.evaluate_sources({"old": scorer, "new": scorer}, vols, np.random.default_rng(0), n_clean_variants=1,
                             severity=(0.9, 0.9))
    rows = res["rows"]
    assert len(rows) == 2 * (1 + 1 + 4 + 2) + 1
    assert all(r["old"] == r["new"] for r in rows)
    assert res["summary"]["old"] == res["summary"]["new"]
    summ = res["summary"]["old"]
    assert list(summ) == ["a", "b", "non_brain", "all"]
    assert summ["a"]["spec_clean"]["n"] == 1 and summ["a"]["spec_all_clean"]["n"] == 2
    assert summ["a"]["sens_severe"]["n"] == 3 and summ["a"]["sens_all"]["n"] == 6
    assert summ["non_brain"]["sens_all"]["n"] == 1 and summ["non_brain"]["spec_clean"]["n"] == 0
    assert summ["all"]["sens_severe"]["n"] == 6
    flagged = sum(r["old"]["flag_5pct"] for r in rows if r["category"] in R.SEVERE_CATEGORIES)
    assert summ["all"]["sens_severe"]["k"] == flagged
    assert {r["name"].split("=")[-1] for r in rows if r["category"] == "noise"} == {"0.90"}
    md = R.sources_markdown(res["summary"])
    assert md.count("\n") == 2 + 4 and "| non_brain |" in md and "—" in md


def test_encoder_training_sources_leave_excluded_folders_out(tiny_data):
    from bids_qa.training.flow import load_sources

    train, _, ref, _ = load_sources(str(tiny_data), 0, 0)
    assert [n for n, _ in ref] == ["site_a/vol0.nii.gz", "site_a/vol1.nii.gz", "site_b/vol2.nii.gz"]
    train, _, ref, _ = load_sources(str(tiny_data), 0, 0, exclude_folders=["site_b"])
    assert [n for n, _ in ref] == ["site_a/vol0.nii.gz", "site_a/vol1.nii.gz"]
    assert len(train) == 2
