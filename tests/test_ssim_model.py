"""Tests of the SSIM-regression family (Sciarra et al.): classes, scorer outputs, shipped weights, training.

Data: the MNI template nilearn ships (offline) as a clean phantom; no file from the shared data set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bids_qa.models import ssim as ssim_model
from bids_qa.models.ssim import (
    SSIMConfig,
    SSIMScorer,
    build_resnet,
    class_bins,
    class_clinical,
    summarise,
)
from bids_qa.volume import volume_from_array

FIXTURE = Path(__file__).parent / "data" / "ssim_fixture.json"
VALUE_KEYS = {
    "ssim_mean",
    "ssim_p05",
    "ssim_min",
    "worst_slice",
    "n_slices_scored",
    "class_clinical",
    "class_bins3",
    "class_bins5",
    "class_bins10",
}


@pytest.fixture(scope="module")
def template() -> np.ndarray:
    from nilearn.datasets import load_mni152_template

    return np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)


@pytest.fixture(scope="module")
def scorer() -> SSIMScorer:
    return SSIMScorer(device="cpu", batch_size=64)


def strong_motion(vol: np.ndarray) -> np.ndarray:
    """Every axial slice corrupted by large in-plane k-space motion (5 events, up to 10 deg / 10 mm,
    two of them next to the k-space centre); on the 128 grid its true SSIM is about 0.58."""
    from bids_qa.kspace_motion import kspace_motion_2d

    out = np.empty_like(vol)
    for z in range(vol.shape[2]):
        out[:, :, z] = kspace_motion_2d(
            vol[:, :, z],
            pe_axis=1,
            times=[0.2, 0.4, 0.45, 0.6, 0.8],
            rotations_deg=[10.0, -10.0, 8.0, -9.0, 10.0],
            translations_mm=[[8.0, -6.0], [-8.0, 6.0], [6.0, 8.0], [-8.0, -6.0], [6.0, -8.0]],
            zooms=(2.0, 2.0),
        )
    return out


# ---------------------------------------------------------------- classes


def test_clinical_class_edges():
    assert class_clinical(1.0) == "good"
    assert class_clinical(0.85) == "good"
    assert class_clinical(math.nextafter(0.85, 0.0)) == "review"
    assert class_clinical(0.7) == "review"
    assert class_clinical(0.60) == "review"
    assert class_clinical(math.nextafter(0.60, 0.0)) == "rescan"
    assert class_clinical(0.0) == "rescan"


@pytest.mark.parametrize(
    ("value", "n", "expected"),
    [
        (0.0, 3, 1),
        (0.33, 3, 1),
        (1 / 3, 3, 2),
        (0.5, 3, 2),
        (0.66, 3, 2),
        (2 / 3, 3, 3),
        (1.0, 3, 3),
        (0.19, 5, 1),
        (0.2, 5, 2),
        (0.6, 5, 4),
        (0.8, 5, 5),
        (1.0, 5, 5),
        (0.05, 10, 1),
        (0.3, 10, 4),
        (0.6, 10, 7),
        (0.7, 10, 8),
        (0.85, 10, 9),
        (0.9, 10, 10),
        (0.999, 10, 10),
        (1.0, 10, 10),
        (-0.2, 10, 1),
        (1.3, 10, 10),
    ],
)
def test_equal_bins_follow_paper_numbering(value, n, expected):
    assert class_bins(value, n) == expected


def test_class_bins_rejects_zero_classes():
    with pytest.raises(ValueError):
        class_bins(0.5, 0)


def test_summarise_keys_and_values():
    per_slice = np.array([0.9, 0.95, 0.5, 0.99], dtype=np.float32)
    values = summarise(per_slice, np.array([10, 11, 12, 13]))
    assert set(values) == VALUE_KEYS
    assert values["ssim_min"] == pytest.approx(0.5)
    assert values["worst_slice"] == 12
    assert values["ssim_mean"] == pytest.approx(0.835)
    assert values["ssim_p05"] == pytest.approx(np.percentile(per_slice, 5))
    assert values["class_clinical"] == "review"
    assert (values["class_bins3"], values["class_bins5"], values["class_bins10"]) == (3, 5, 9)


# ---------------------------------------------------------------- network and scorer


def test_untrained_network_outputs_in_unit_interval():
    import torch

    torch.manual_seed(0)
    net = build_resnet(SSIMConfig(input_size=64, width=8)).eval()
    with torch.no_grad():
        out = net(torch.randn(6, 1, 64, 64) * 5).numpy()
    assert out.shape == (6,)
    assert np.all((out >= 0) & (out <= 1))


def test_config_validation():
    with pytest.raises(ValueError):
        SSIMConfig(input_size=16)
    assert SSIMConfig.from_dict(SSIMConfig(input_size=96, width=8).to_dict()) == SSIMConfig(
        input_size=96, width=8
    )


def test_scorer_outputs(scorer, template):
    vol = volume_from_array(template, (2.0, 2.0, 2.0))
    scores = scorer.score(vol)
    assert scores.scorer == "ssim"
    assert set(scores.values) == VALUE_KEYS
    per = scores.per_slice["ssim"]
    idx = scores.per_slice["slice_index"]
    assert set(scores.per_slice) == {"ssim", "slice_index"}
    assert len(per) == len(idx) == scores.values["n_slices_scored"] == len(vol.anatomy_slices())
    assert np.all((per >= 0) & (per <= 1))
    assert (
        0
        <= scores.values["ssim_min"]
        <= scores.values["ssim_p05"]
        <= scores.values["ssim_mean"]
        <= 1
    )
    assert scores.values["worst_slice"] in set(idx.tolist())
    assert scores.values["class_clinical"] == class_clinical(scores.values["ssim_mean"])


def test_clean_phantom_scores_higher_than_moved_phantom(scorer, template):
    from bids_qa import similarity

    clean_vol = volume_from_array(template, (2.0, 2.0, 2.0))
    moved_vol = volume_from_array(strong_motion(template), (2.0, 2.0, 2.0))
    clean = scorer.score(clean_vol).values
    moved = scorer.score(moved_vol)
    assert clean["ssim_mean"] > 0.85 and clean["class_clinical"] == "good"
    assert moved.values["ssim_mean"] < clean["ssim_mean"] - 0.25
    assert moved.values["class_clinical"] != "good"
    # the prediction tracks the SSIM actually measured on the model's grid
    size = scorer.config.input_size
    a, b = clean_vol.slice_stack(size), moved_vol.slice_stack(size)
    idx = moved.per_slice["slice_index"]
    true = np.mean([similarity.ssim(a[i], b[i], float(a[i].max() - a[i].min()) or 1.0) for i in idx])
    assert abs(moved.values["ssim_mean"] - true) < 0.12


def test_shipped_weights_reproduce_fixture(scorer, template):
    fixture = json.loads(FIXTURE.read_text())
    assert scorer.version == fixture["version"]
    assert scorer.config == SSIMConfig.from_dict(fixture["config"])
    for name, arr in (("clean", template), ("moved", strong_motion(template))):
        scores = scorer.score(volume_from_array(arr, (2.0, 2.0, 2.0)))
        expected = fixture[name]
        assert scores.per_slice["slice_index"].tolist() == expected["slice_index"]
        np.testing.assert_allclose(scores.per_slice["ssim"], expected["ssim"], atol=2e-4)
        assert scores.values["ssim_mean"] == pytest.approx(expected["ssim_mean"], abs=1e-4)
        assert scores.values["class_clinical"] == expected["class_clinical"]


def test_weights_file_is_small():
    from bids_qa.models.weights import packaged_weights

    path = packaged_weights(ssim_model.WEIGHTS_FILE)
    assert path.stat().st_size < 12 * 1024 * 1024


# ---------------------------------------------------------------- simulation and training


def test_strong_motion_label_is_ssim_on_the_given_grid(template):
    from bids_qa import similarity
    from bids_qa.training.ssim import strong_motion

    sl = template[:, :, 45] / np.percentile(template[:, :, 45], 99)
    moved, label, params = strong_motion(sl, (2.0, 2.0), np.random.default_rng(3))
    assert moved.shape == sl.shape and moved.min() >= 0
    assert 1.0 <= params["amplitude_factor"] <= 3.0
    assert label == pytest.approx(similarity.ssim(sl, moved, float(sl.max() - sl.min())))
    assert label < 0.95


def test_samples_are_deterministic_and_labelled(template):
    from bids_qa.training.slices import make_source
    from bids_qa.training.ssim import SSIMSampleMaker

    src = [make_source(volume_from_array(template, (2.0, 2.0, 2.0)), "mni")]
    maker = SSIMSampleMaker(src, (64,))
    a = maker(np.random.default_rng([0, 5]))
    b = maker(np.random.default_rng([0, 5]))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1] and 0 <= a[1] <= 1 and a[0].shape == (64, 64)
    labels = [maker(np.random.default_rng([1, i]))[1] for i in range(24)]
    assert min(labels) < 0.95 and max(labels) <= 1.0


def test_tiny_training_run_reduces_loss(tmp_path, template):
    import torch

    from bids_qa.models.weights import load_weights
    from bids_qa.training import loop
    from bids_qa.training.slices import make_source
    from bids_qa.training.ssim import SampleConfig, make_eval_set, regression_metrics, train

    vols = [
        volume_from_array(template, (2.0, 2.0, 2.0)),
        volume_from_array(
            np.clip(template.max() - template, 0, None) * (template > 0.1 * template.max()),
            (2.0, 2.0, 2.0),
        ),
    ]
    sources = [make_source(v, f"v{i}") for i, v in enumerate(vols)]
    cfg = SampleConfig(p_contrast=0.0)
    settings = loop.TrainSettings(
        data_dir=str(tmp_path),
        run_dir=str(tmp_path / "run"),
        steps=50,
        batch_size=12,
        lr=3e-3,
        seed=0,
        device="cpu",
        workers=0,
        threads=1,
        checkpoint_every=25,
        validate_every=25,
    )
    config = SSIMConfig(input_size=48, width=8)
    (vx,), vy = make_eval_set(sources, (48,), np.random.default_rng(11), 48, cfg)
    torch.manual_seed(0)
    initial = build_resnet(config).eval()
    with torch.no_grad():
        mse0 = regression_metrics(initial(torch.from_numpy(vx)[:, None]).numpy(), vy)["rmse"] ** 2
    result = train(settings, sources, sources, config, val_size=32, cfg=cfg, keep_validated=True)
    assert (tmp_path / "run" / "best.safetensors").is_file()
    # every validated step is kept, with its own validation figures, for a later choice
    assert sorted(p.name for p in (tmp_path / "run").glob("step*.safetensors")) == [
        "step25.safetensors",
        "step50.safetensors",
    ]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    scorer = SSIMScorer(weights=str(tmp_path / "run" / "best.safetensors"))
    mse1 = regression_metrics(scorer.predict_slices(vx), vy)["rmse"] ** 2
    assert result["best"]["step"] == 50
    assert mse1 < 0.8 * mse0, (mse1, mse0)
    log = loop.RunLog(tmp_path / "run").read()
    assert [r["step"] for r in log if "loss" in r] == [25, 50]
    validations = [r for r in log if "validation" in r]
    assert validations[-1]["step"] == 50
    assert validations[-1]["validation"]["val_mse"] == pytest.approx(result["best"]["val_mse"])
    _, kept = load_weights(tmp_path / "run" / "step50.safetensors")
    assert kept["training"]["step"] == 50
    assert kept["training"]["validation"]["val_mse"] == pytest.approx(
        validations[-1]["validation"]["val_mse"]
    )
    _, meta = load_weights(tmp_path / "run" / "best.safetensors")
    # the weights record folder names, not the training machine's paths
    assert meta["training"]["settings"]["settings"]["run_dir"] == "run"
    assert str(tmp_path) not in json.dumps(meta)


def test_training_grid_is_the_scorers_whole_field_of_view_grid(template):
    """Labels and inputs are made on the grid the scorer reads (slice_stack)."""
    from bids_qa.training.ssim import to_sim_grid

    vol = volume_from_array(template, (2.0, 2.0, 2.0))
    img, msk = vol.data[:, :, 40], vol.mask[:, :, 40]
    whole, whole_mask, whole_zooms = to_sim_grid(img, msk, (2.0, 2.0), 64)
    assert whole.shape == whole_mask.shape == (64, 64)
    assert whole_zooms[0] == pytest.approx(max(img.shape) * 2.0 / 64)

