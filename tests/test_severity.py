"""Severity model (Hays et al.): architecture, loss, training, shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bids_qa.models.severity import SeverityConfig, build_encoder, middle_slices
from bids_qa.models.weights import packaged_weights
from bids_qa.training.severity import severity_loss
from bids_qa.volume import volume_from_array

FIXTURE = Path(__file__).parent / "data" / "severity_fixture.json"
WEIGHTS = packaged_weights("severity.safetensors")
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file(), reason="severity weights not installed")


def test_encoder_scores_are_non_negative_and_one_per_slice():
    torch.manual_seed(0)
    net = build_encoder(SeverityConfig(input_size=64, channels=(4, 8)))
    x = torch.randn(7, 1, 64, 64) * 3 - 1
    s = net(x)
    assert s.shape == (7,)
    assert bool((s >= 0).all())


def test_pooling_is_the_absolute_spatial_mean_of_the_last_map():
    torch.manual_seed(0)
    net = build_encoder(SeverityConfig(input_size=32, channels=(4, 8)))
    net.eval()
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        last = net.reduce(net.blocks(x))
        assert torch.allclose(net(x), last.mean((1, 2, 3)).abs(), atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        SeverityConfig(pooling="abs_pool")


def test_config_round_trips_and_old_metadata_means_paper_pooling():
    cfg = SeverityConfig(input_size=96, channels=(8, 16), pixel_mm=1.25)
    assert SeverityConfig.from_dict(cfg.to_dict()) == cfg
    old = {"input_size": 128, "channels": [16, 32], "negative_slope": 0.2}
    assert SeverityConfig.from_dict(old).pooling == "pool_abs"


def test_middle_slices_keeps_centred_sixty_percent():
    idx = np.arange(10, 30)
    mid = middle_slices(idx, 0.6)
    assert list(mid) == list(range(14, 26))
    assert list(middle_slices(np.array([5]), 0.6)) == [5]


def test_loss_is_zero_when_margins_hold_and_positive_when_violated():
    ss = torch.tensor([[0.5, 0.1]])
    good = torch.tensor([[0.0, 0.0, 3.0 * 0.5 + 0.2, 3.0 * 0.1 + 0.1]])
    loss, parts = severity_loss(good, ss)
    assert parts["triplet"] == pytest.approx(0.0)
    assert parts["rank"] == pytest.approx(0.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    bad = torch.tensor([[0.0, 0.0, 0.2, 0.9]])  # negatives too close and in the wrong order
    loss_bad, parts_bad = severity_loss(bad, ss)
    assert parts_bad["triplet"] > 0.5
    assert parts_bad["rank"] > 1.0
    assert float(loss_bad) > float(loss)


def test_positive_weight_scales_the_anchor_positive_terms():
    ss = torch.tensor([[0.5, 0.5]])
    apart = torch.tensor([[0.0, 1.0, 2.0, 2.0]])  # anchor and positive (other volume) disagree
    _, full = severity_loss(apart, ss)
    _, none = severity_loss(apart, ss, positive_weight=0.0)
    assert full["l2"] == pytest.approx(1.0) and none["l2"] == pytest.approx(0.0)
    assert full["triplet"] == pytest.approx(1.0 - 2.0 + 1.5)
    assert none["triplet"] == pytest.approx(0.0)


def test_clean_pull_weight_scales_only_the_pull_term():
    from bids_qa.training.severity import CLEAN_PULL, Recipe

    ss = torch.tensor([[0.5, 0.2]])
    scores = torch.tensor([[0.5, 1.0, 2.0, 1.0]])
    _, default = severity_loss(scores, ss)
    _, strong = severity_loss(scores, ss, clean_pull=0.3)
    assert default["pull"] == pytest.approx(CLEAN_PULL * (0.25 + 1.0))
    assert strong["pull"] == pytest.approx(0.3 * (0.25 + 1.0))
    assert {k: v for k, v in strong.items() if k != "pull"} == {
        k: v for k, v in default.items() if k != "pull"
    }
    assert Recipe().clean_pull == CLEAN_PULL  # the default recipe keeps the old loss


def _phantom(seed: int = 0, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij")
    r = np.sqrt(x**2 + 1.2 * y**2 + 1.5 * z**2)
    img = np.where(r < 0.8, 0.6, 0.0) + np.where(r < 0.5, 0.4, 0.0) + np.where(r < 0.2, -0.5, 0.0)
    return (img + 0.01 * rng.standard_normal(img.shape)).clip(0).astype(np.float32)


def test_a_few_training_steps_reduce_the_loss(tmp_path):
    from bids_qa.training.loop import TrainSettings
    from bids_qa.training.severity import QuadrupletMaker, train
    from bids_qa.training.slices import make_source

    sources = [
        make_source(volume_from_array(_phantom(s), (2.0, 2.0, 2.0)), name=f"p{s}") for s in range(3)
    ]
    config = SeverityConfig(input_size=48, channels=(4, 8))
    maker = QuadrupletMaker(sources, config.input_size)
    items = [maker(np.random.default_rng([99, i])) for i in range(32)]
    x = torch.from_numpy(np.stack([i[0] for i in items]))
    ss = torch.from_numpy(np.stack([i[1] for i in items]))

    def fixed_loss(net) -> float:
        with torch.no_grad():
            return float(severity_loss(net(x.reshape(-1, 1, 48, 48)).reshape(-1, 4), ss)[0])

    torch.manual_seed(0)
    before = fixed_loss(build_encoder(config))
    settings = TrainSettings(
        data_dir="",
        run_dir=str(tmp_path / "run"),
        steps=40,
        batch_size=8,
        lr=3e-3,
        seed=0,
        device="cpu",
        workers=0,
        threads=0,
        checkpoint_every=20,
        validate_every=40,
    )
    train(settings, sources, sources, config, val_size=8)
    from bids_qa.models.severity import SeverityScorer

    trained = SeverityScorer(weights=str(tmp_path / "run" / "best.safetensors"))
    # the best checkpoint (by validation objective) is not necessarily the last: use the final one
    from bids_qa.training.loop import load_checkpoint

    net = build_encoder(config)
    opt = torch.optim.Adam(net.parameters())
    step, _ = load_checkpoint(tmp_path / "run", net, opt)
    assert step == 40
    assert fixed_loss(net) < before
    assert trained.config.input_size == 48
    assert (tmp_path / "run" / "log.jsonl").is_file()


def test_resume_continues_from_checkpoint(tmp_path):
    from bids_qa.training.loop import RunLog, TrainSettings, load_checkpoint
    from bids_qa.training.severity import train
    from bids_qa.training.slices import make_source

    sources = [make_source(volume_from_array(_phantom(s), (2.0, 2.0, 2.0))) for s in range(2)]
    config = SeverityConfig(input_size=32, channels=(2, 4))
    common = dict(
        data_dir="",
        run_dir=str(tmp_path / "r"),
        batch_size=4,
        lr=1e-3,
        seed=1,
        device="cpu",
        workers=0,
        threads=0,
        checkpoint_every=5,
        validate_every=100,
    )
    train(TrainSettings(steps=10, **common), sources, sources, config, val_size=4)
    train(TrainSettings(steps=15, **common), sources, sources, config, val_size=4)
    net = build_encoder(config)
    step, _ = load_checkpoint(tmp_path / "r", net, torch.optim.Adam(net.parameters()))
    assert step == 15
    records = RunLog(tmp_path / "r").read()
    assert [r["step"] for r in records if "loss" in r] == [
        0
    ]  # every 50 steps: step 0 only, not repeated
    assert [r["step"] for r in records if "validation" in r] == [10, 15]


def _mni_volume():
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=2)
    return np.asarray(img.get_fdata(), dtype=np.float32)


@needs_weights
def test_shipped_weights_reproduce_regression_fixture():
    from bids_qa.models.severity import SeverityScorer

    expected = json.loads(FIXTURE.read_text())
    scorer = SeverityScorer()
    got = scorer.score(volume_from_array(_mni_volume(), (2.0, 2.0, 2.0))).values
    assert got["score"] == pytest.approx(expected["score"], rel=1e-4, abs=1e-5)
    assert got["worst_slice"] == expected["worst_slice"]


@needs_weights
def test_clean_phantom_scores_lower_than_noisy_phantom():
    from bids_qa.artifacts import apply_artifact
    from bids_qa.models.severity import SeverityScorer

    scorer = SeverityScorer()
    clean = volume_from_array(_mni_volume(), (2.0, 2.0, 2.0))
    noisy_data = apply_artifact(clean.data, "noise", {"std": 0.15, "rician": True, "seed": 3})
    noisy = volume_from_array(noisy_data, (2.0, 2.0, 2.0))
    s_clean = scorer.score(clean).values["score"]
    s_noisy = scorer.score(noisy).values["score"]
    assert s_clean < 1.0 < s_noisy


def test_warm_start_loads_weights_and_input_size_is_free(tmp_path):
    from bids_qa.models.weights import save_weights
    from bids_qa.training import loop

    torch.manual_seed(0)
    a = build_encoder(SeverityConfig(input_size=64))
    save_weights(tmp_path / "a.safetensors", a.state_dict(), {"family": "severity"})
    torch.manual_seed(1)
    b = build_encoder(SeverityConfig(input_size=96))  # fully convolutional: same tensors
    assert not torch.equal(a.state_dict()["blocks.0.0.weight"], b.state_dict()["blocks.0.0.weight"])
    loop.warm_start(b, str(tmp_path / "a.safetensors"))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    loop.warm_start(b, None)  # no-op


def test_artifact_weights_are_validated_and_normalised():
    from bids_qa.training.severity import ARTIFACT_NAMES, QuadrupletMaker

    maker = QuadrupletMaker([], 32, (0, 0, 2, 2, 0))
    assert maker.artifact_p.tolist() == [0, 0, 0.5, 0.5, 0]
    assert QuadrupletMaker([], 32).artifact_p.tolist() == [1 / len(ARTIFACT_NAMES)] * len(
        ARTIFACT_NAMES
    )
    for bad in ((1, 1), (0, 0, 0, 0, 0), (1, -1, 1, 1, 1)):
        with pytest.raises(ValueError):
            QuadrupletMaker([], 32, bad)


def test_export_weights_copies_only_when_asked(tmp_path, capsys):
    from bids_qa.training import loop

    src = tmp_path / "best.safetensors"
    src.write_bytes(b"weights")
    loop.export_weights(src, None)
    assert list(tmp_path.iterdir()) == [src]
    loop.export_weights(src, str(tmp_path / "out.safetensors"))
    assert (tmp_path / "out.safetensors").read_bytes() == b"weights"
    assert "exported" in capsys.readouterr().out


def test_positive_comes_from_another_volume():
    from bids_qa.training.severity import QuadrupletMaker
    from bids_qa.training.slices import make_source

    def cube(half: int) -> np.ndarray:
        img = np.zeros((40, 40, 40), np.float32)
        img[20 - half : 20 + half, 20 - half : 20 + half, 20 - half : 20 + half] = 1.0
        return img

    sources = [make_source(volume_from_array(cube(h), (1.0, 1.0, 1.0))) for h in (14, 6)]

    def big(x: np.ndarray) -> bool:  # the 28 mm cube fills far more of a slice than the 12 mm one
        return float((x > 0.5).mean()) > 0.25

    maker = QuadrupletMaker(sources, 32, artifact_weights=(1, 0, 0, 0, 0))
    for i in range(8):
        stack, _ = maker(np.random.default_rng(i))
        assert big(stack[0]) != big(stack[1])


def test_benign_blur_softens_some_clean_anchors_and_is_off_by_default():
    from bids_qa.training.severity import QuadrupletMaker
    from bids_qa.training.slices import make_source

    sources = [make_source(volume_from_array(_phantom(s, 40), (1.0, 1.0, 1.0))) for s in (0, 1)]
    plain = QuadrupletMaker(sources, 32, artifact_weights=(1, 0, 0, 0, 0))
    off = QuadrupletMaker(sources, 32, artifact_weights=(1, 0, 0, 0, 0), benign_blur_mm=0.0)
    blur = QuadrupletMaker(sources, 32, artifact_weights=(1, 0, 0, 0, 0), benign_blur_mm=3.0)

    def edges(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x, axis=0)).sum() + np.abs(np.diff(x, axis=1)).sum())

    softer = 0
    for i in range(8):
        a, _ = plain(np.random.default_rng(i))
        b, _ = off(np.random.default_rng(i))
        np.testing.assert_array_equal(a, b)  # off: the same random stream as before the option
        c, _ = blur(np.random.default_rng(i))
        softer += edges(c[0]) < 0.9 * edges(a[0])
    assert 1 <= softer <= 7  # about half of the anchors are blurred


def test_fixed_spacing_slices_keep_physical_scale_and_centre_on_the_head():
    from bids_qa.volume import slices_at_spacing

    # a 40 x 20 mm bright rectangle, off-centre, in a 0.5 mm grid (2 slices along axis 2)
    data = np.zeros((200, 160, 2), np.float32)
    data[20:100, 60:100, :] = 1.0
    mask = data > 0
    out = slices_at_spacing(data, mask, (0.5, 0.5, 3.0), 2, 64, 1.0)
    assert out.shape == (2, 64, 64)
    rows = np.flatnonzero(out[0].max(axis=1) > 0.5)
    cols = np.flatnonzero(out[0].max(axis=0) > 0.5)
    assert len(rows) == pytest.approx(40, abs=1) and len(cols) == pytest.approx(20, abs=1)
    # centred on the rectangle, not on the image
    assert (rows[0] + rows[-1]) / 2 == pytest.approx(31.5, abs=1)
    assert (cols[0] + cols[-1]) / 2 == pytest.approx(31.5, abs=1)
    # a cut larger than the image is zero-padded, not wrapped
    big = slices_at_spacing(data, mask, (0.5, 0.5, 3.0), 2, 256, 1.0)
    assert big.shape == (2, 256, 256) and big[0].sum() == pytest.approx(out[0].sum(), rel=0.02)


def test_fixed_spacing_config_round_trips_and_reaches_the_scorer_inputs():
    from bids_qa.preprocess import to_model_input
    from bids_qa.scoring import scored_slices

    cfg = SeverityConfig(input_size=64, channels=(4, 8), pixel_mm=1.25)
    assert SeverityConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "pixel_mm"}
    assert SeverityConfig.from_dict(old).pixel_mm == 0.0  # weights saved before the option
    with pytest.raises(ValueError, match="pixel_mm"):
        SeverityConfig(pixel_mm=-1)
    rng = np.random.default_rng(0)
    data = np.zeros((96, 96, 40), np.float32)
    data[20:76, 16:80, 5:35] = 1 + 0.1 * rng.random((56, 64, 30))
    vol = volume_from_array(data, (2.0, 2.0, 2.0))
    stack, idx = scored_slices(vol, 64, 1.25)
    whole, _ = scored_slices(vol, 64)
    assert stack.shape[1:] == (64, 64) and len(stack) == len(idx) == len(whole)
    assert not np.allclose(stack, whole)
    # training prepares a slice exactly as the scorer does
    k = int(idx[len(idx) // 2])
    img, msk = vol.data[:, :, k], vol.mask[:, :, k]
    np.testing.assert_allclose(
        to_model_input(img, (2.0, 2.0), 64, msk, 1.25), stack[len(idx) // 2], atol=1e-6
    )
    with pytest.raises(ValueError, match="mask"):
        to_model_input(img, (2.0, 2.0), 64, None, 1.25)
