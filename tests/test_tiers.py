"""Tests of the tiers family (Loizillon et al.): rules table, grading, scorer outputs, training, weights."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from bids_qa.models import tiers
from bids_qa.models.tiers import (
    ARTIFACTS,
    TIER_RULES,
    TierConfig,
    TierScorer,
    build_network,
    grade_from_probabilities,
    scores_from_probabilities,
    tier_from_grades,
    verdict_of_tier,
)
from bids_qa.volume import volume_from_array

FIXTURE = Path(__file__).parent / "data" / "tiers_fixture.json"
SHIPPED = Path(tiers.__file__).parent.parent / "weights" / tiers.WEIGHTS_FILE
VALUE_KEYS = {f"{a}_{k}" for a in ARTIFACTS for k in ("grade", "p_moderate", "p_severe")} | {
    "tier",
    "tier_reason",
}


def head_phantom(n: int = 48, voxel: float = 4.0, seed: int = 0) -> np.ndarray:
    """A deterministic head-like phantom: scalp, CSF, grey-matter shell, white-matter core,
    ventricles and a little smooth texture (values in arbitrary scanner units)."""
    rng = np.random.default_rng(seed)
    c = (np.arange(n) - (n - 1) / 2) * voxel
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt((x / 75) ** 2 + (y / 90) ** 2 + (z / 70) ** 2)
    img = np.zeros((n, n, n), np.float32)
    img[r < 1.0] = 300  # scalp
    img[r < 0.93] = 150  # CSF / skull
    img[r < 0.88] = 600  # grey matter
    img[r < 0.7] = 900  # white matter
    vent = np.sqrt((x / 12) ** 2 + (y / 25) ** 2 + (z / 15) ** 2) < 1
    img[vent] = 150
    from scipy import ndimage

    texture = ndimage.gaussian_filter(rng.normal(0, 1, img.shape), 1.5).astype(np.float32)
    img = img * (1 + 0.05 * texture) * (r < 1.0)
    return img + np.abs(rng.normal(0, 5, img.shape)).astype(np.float32)


# ----------------------------------------------------------------------------- rules


def expected_tier(grades: tuple[int, ...]) -> int:
    if all(g == 0 for g in grades):
        return 1
    if any(g == 2 for g in grades):
        return 3
    return 2


@pytest.mark.parametrize("grades", list(itertools.product((0, 1, 2), repeat=3)))
def test_rules_table_maps_every_grade_combination(grades):
    tier, reasons = tier_from_grades(dict(zip(ARTIFACTS, grades, strict=True)))
    assert tier == expected_tier(grades)
    # every graded artifact is named, worst first, with its level
    assert len(reasons) == sum(g > 0 for g in grades)
    levels = [r.split(": ")[1] for r in reasons]
    assert levels == sorted(levels, key=lambda s: {"severe": 0, "moderate": 1}[s])
    for artifact, g in zip(ARTIFACTS, grades, strict=True):
        if g:
            assert f"{artifact}: {tiers.GRADE_NAMES[g]}" in reasons
    assert verdict_of_tier(tier) == {1: "pass", 2: "review", 3: "fail"}[tier]


def test_rules_table_is_the_papers_table_2():
    assert [(r.tier, r.worst_grade, r.verdict) for r in TIER_RULES] == [
        (1, 0, "pass"),
        (2, 1, "review"),
        (3, 2, "fail"),
    ]
    assert tier_from_grades({"noise": 2, "motion": 1, "contrast": 0}) == (
        3,
        ["noise: severe", "motion: moderate"],
    )


@pytest.mark.parametrize(
    "bad", [{}, {"motion": 3}, {"motion": -1}, {"noise": 1.5}, {"noise": True}]
)
def test_tier_from_grades_rejects_invalid_grades(bad):
    with pytest.raises(ValueError):
        tier_from_grades(bad)
    with pytest.raises(ValueError):
        verdict_of_tier(4)


def test_grade_from_two_heads():
    assert grade_from_probabilities(0.1, 0.1) == 0
    assert grade_from_probabilities(0.5, 0.1) == 1
    assert grade_from_probabilities(0.2, 0.5) == 2  # severe wins even if moderate is low
    assert grade_from_probabilities(0.99, 0.49) == 1
    values = scores_from_probabilities(np.array([[0.9, 0.2], [0.1, 0.05], [0.95, 0.7]]))
    assert (
        values["motion_grade"] == 1 and values["noise_grade"] == 0 and values["contrast_grade"] == 2
    )
    assert values["tier"] == 3 and values["tier_reason"] == "contrast: severe; motion: moderate"
    clean = scores_from_probabilities(np.full((3, 2), 0.1))
    assert clean["tier"] == 1 and set(clean) == VALUE_KEYS


# ----------------------------------------------------------------------------- network / scorer


TINY = TierConfig(grid=32, channels=(4, 8, 8, 8, 8), fc=(16, 8))


def test_network_shape_and_scorer_probabilities(tmp_path):
    import torch

    from bids_qa.models.weights import save_weights

    torch.manual_seed(0)
    net = build_network(TINY)
    assert net(torch.zeros(2, 1, 32, 32, 32)).shape == (2, 3, 2)
    path = tmp_path / "tiny.safetensors"
    save_weights(path, net.state_dict(), {"config": TINY.to_dict(), "version": "test"})
    scorer = TierScorer(weights=str(path))
    vol = volume_from_array(head_phantom(), (4.0, 4.0, 4.0))
    out = scorer.score(vol)
    assert out.scorer == "tiers" and scorer.name == "tiers" and scorer.version == "test"
    assert set(out.values) == VALUE_KEYS
    for a in ARTIFACTS:
        for k in ("p_moderate", "p_severe"):
            assert 0.0 <= out.values[f"{a}_{k}"] <= 1.0
        assert out.values[f"{a}_grade"] == grade_from_probabilities(
            out.values[f"{a}_p_moderate"], out.values[f"{a}_p_severe"]
        )
    grades = {a: out.values[f"{a}_grade"] for a in ARTIFACTS}
    assert out.values["tier"] == tier_from_grades(grades)[0]
    # extreme logits still give probabilities inside [0, 1]
    probs = scorer.probabilities(np.full((1, 32, 32, 32), 1e4, np.float32))
    assert np.all((probs >= 0) & (probs <= 1))


def test_scorer_rejects_weights_without_config(tmp_path):
    import torch

    from bids_qa.models.weights import save_weights

    path = tmp_path / "bad.safetensors"
    save_weights(path, {"w": torch.zeros(1)}, {"version": "x"})
    with pytest.raises(ValueError, match="config"):
        TierScorer(weights=str(path))


# ----------------------------------------------------------------------------- training


def test_positive_weights_and_grade_draws():
    from bids_qa.training.tier_samples import draw_grades, positive_weights

    w = positive_weights()
    assert w.shape == (3, 2) and np.all(w[:, 1] > w[:, 0]) and np.all(w > 0)
    rng = np.random.default_rng(1)
    draws = np.array([[draw_grades(rng)[a] for a in ARTIFACTS] for _ in range(4000)])
    frac_pos = (draws >= 1).mean(axis=0)
    frac_sev = (draws == 2).mean(axis=0)
    np.testing.assert_allclose((1 - frac_pos) / frac_pos, w[:, 0], rtol=0.12)
    np.testing.assert_allclose((1 - frac_sev) / frac_sev, w[:, 1], rtol=0.15)
    # the "0" class of one artifact includes samples carrying the other artifacts
    assert ((draws[:, 0] == 0) & (draws[:, 1:] > 0).any(axis=1)).any()


def test_renormalise_like_leaves_clean_cube_alone():
    from bids_qa.training.tier_samples import make_cube_source, renormalise_like

    src = make_cube_source(volume_from_array(head_phantom(), (4.0, 4.0, 4.0)), 32)
    np.testing.assert_allclose(
        renormalise_like(src.cube, src.cube, src.mask), np.clip(src.cube, 0, 2), atol=1e-6
    )
    doubled = renormalise_like(src.cube * 2 + 0.1, src.cube, src.mask)
    np.testing.assert_allclose(doubled, np.clip(src.cube, 0, 2), atol=1e-4)


def phantom_sources(grid: int = 32, n: int = 2):
    from bids_qa.training.tier_samples import make_cube_source

    return [
        make_cube_source(
            volume_from_array(head_phantom(seed=s), (4.0, 4.0, 4.0)), grid, name=f"p{s}"
        )
        for s in range(n)
    ]


def test_tiny_training_reduces_loss():
    """Adam on a fixed batch of corrupted phantoms with the weighted BCE: the loss must fall."""
    import torch

    from bids_qa.training.tier_samples import TierSampleMaker, positive_weights
    from bids_qa.training.tiers import tier_loss

    maker = TierSampleMaker(phantom_sources(), views=1)
    items = [maker(np.random.default_rng([5, i])) for i in range(12)]
    x = torch.from_numpy(np.concatenate([it[0] for it in items]))
    y = torch.from_numpy(np.concatenate([it[1] for it in items]))
    assert x.shape == (12, 1, 32, 32, 32) and y.shape == (12, 3, 2)
    assert set(np.unique(y.numpy())) <= {0.0, 1.0}
    torch.manual_seed(0)
    net = build_network(TierConfig(grid=32, channels=(4, 8, 8, 8, 8), fc=(16, 8), dropout=0.0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    pw = torch.from_numpy(positive_weights())
    losses = []
    for _ in range(40):
        loss, parts = tier_loss(net(x), y, pw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(parts) == {f"{a}_{t}" for a in ARTIFACTS for t in ("moderate", "severe")}
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_train_is_seeded_and_resumable(tmp_path):
    """An interrupted and resumed run ends with exactly the weights of an uninterrupted one."""
    import torch

    from bids_qa.evaluate_tiers import evaluate_tiers
    from bids_qa.models.weights import load_weights
    from bids_qa.training import loop
    from bids_qa.training.tiers import train

    sources = phantom_sources()

    def settings(run: str) -> loop.TrainSettings:
        return loop.TrainSettings(
            data_dir=str(tmp_path),
            run_dir=str(tmp_path / run),
            steps=6,
            batch_size=2,
            lr=1e-3,
            seed=0,
            device="cpu",
            workers=0,
            threads=1,
            checkpoint_every=3,
            validate_every=3,
        )

    straight = train(settings("a"), sources, sources[:1], TINY, val_draws=1, log_every=1)
    first = train(
        settings("b"), sources, sources[:1], TINY, val_draws=1, log_every=1, max_minutes=1e-9
    )
    assert first["stopped_early"] and not straight["stopped_early"]
    train(settings("b"), sources, sources[:1], TINY, val_draws=1, log_every=1)
    ca = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ca["step"] == cb["step"] == 6
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    _, meta = load_weights(tmp_path / "a" / "best.safetensors")
    assert meta["config"] == TINY.to_dict() and meta["training"]["step"] == straight["step"]
    log = loop.RunLog(tmp_path / "a").read()
    assert [r["step"] for r in log if "validation" in r] == [0, 3, 6]
    assert len([r for r in log if "loss" in r]) == 6
    metrics = evaluate_tiers(
        TierScorer(weights=str(tmp_path / "a" / "best.safetensors")), sources[:1], draws=1
    )
    assert metrics["n_samples"] == 8 and metrics["n_single"] == 7
    for key in ("motion_severe_bacc", "noise_moderate_bacc", "tier12_vs_3_bacc", "tier1_vs_2_bacc"):
        assert np.isnan(metrics[key]) or 0.0 <= metrics[key] <= 100.0


# ----------------------------------------------------------------------------- shipped weights


needs_weights = pytest.mark.skipif(
    not SHIPPED.is_file(), reason=f"shipped weights {SHIPPED} not installed"
)


def fixture_volume():
    """The deterministic volume behind the regression fixture."""
    return volume_from_array(head_phantom(n=64, voxel=3.0, seed=7), (3.0, 3.0, 3.0))


@needs_weights
def test_shipped_weights_reproduce_regression_fixture():
    expected = json.loads(FIXTURE.read_text())
    scorer = TierScorer()
    assert scorer.version == expected["version"]
    values = scorer.score(fixture_volume()).values
    for key, want in expected["values"].items():
        if isinstance(want, str) or key.endswith("grade") or key == "tier":
            assert values[key] == want, key
        else:
            assert values[key] == pytest.approx(want, abs=2e-4), key


@needs_weights
def test_severe_noise_phantom_is_tier_3():
    from nilearn.datasets import load_mni152_template

    from bids_qa.training.tier_samples import corrupt_cube, make_cube_source

    img = load_mni152_template(resolution=2)
    clean = volume_from_array(
        np.asarray(img.get_fdata(), np.float32), tuple(float(z) for z in img.header.get_zooms()[:3])
    )
    scorer = TierScorer()
    assert scorer.score(clean).values["tier"] == 1
    src = make_cube_source(clean, scorer.config.grid, voxel_mm=scorer.config.voxel_mm)
    # severe noise as the shipped weights define it (added to their input cube)
    noisy, used = corrupt_cube(
        src.cube,
        src.mask,
        {"motion": 0, "noise": 2, "contrast": 0},
        src.voxel_mm,
        np.random.default_rng(3),
    )
    assert set(used) == {"noise"}
    values = scorer.score(volume_from_array(noisy, (src.voxel_mm,) * 3)).values
    assert values["noise_grade"] == 2, values
    assert values["tier"] == 3 and "noise: severe" in values["tier_reason"]


def test_fixed_voxel_cube_keeps_scale_and_hangs_from_the_top_of_the_head():
    from bids_qa.volume import cube_at_spacing

    # a 60 x 40 x 100 mm box in a 1 x 1 x 2 mm image whose field of view reaches far below it
    data = np.zeros((120, 100, 120), np.float32)
    data[30:90, 30:70, 60:110] = 1.0
    mask = data > 0
    cube = cube_at_spacing(data, mask, (1.0, 1.0, 2.0), 32, 4.0)
    assert cube.shape == (32, 32, 32)
    inside = cube > 0.5
    extent = [np.flatnonzero(inside.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    assert len(extent[0]) == pytest.approx(15, abs=1)  # 60 mm / 4 mm
    assert len(extent[1]) == pytest.approx(10, abs=1)  # 40 mm / 4 mm
    # a head that fits (100 mm in a 128 mm cube) is centred on every axis
    for a in range(3):
        assert (extent[a][0] + extent[a][-1]) / 2 == pytest.approx(15.5, abs=1)
    assert len(extent[2]) == pytest.approx(25, abs=1)
    # a taller-than-cube head keeps its top in the cube, not its middle
    tall = np.zeros((60, 60, 200), np.float32)
    tall[10:50, 10:50, 5:195] = 1.0
    shorter = tall.copy()
    shorter[:, :, :100] = 0.0  # same top, 190 instead of 380 mm tall: both exceed the 128 mm cube
    cube = cube_at_spacing(tall, tall > 0, (2.0, 2.0, 2.0), 16, 8.0)
    np.testing.assert_allclose(cube, cube_at_spacing(shorter, shorter > 0, (2.0, 2.0, 2.0), 16, 8.0))
    assert cube[:, :, -1].max() > 0.5 and cube[:, :, 0].max() > 0.5


def test_voxel_mm_config_reaches_scorer_and_training_cubes(tmp_path):
    import torch

    from bids_qa.models.weights import save_weights
    from bids_qa.training.tier_samples import make_cube_source

    cfg = TierConfig(grid=32, channels=(4, 4, 4, 4, 4), fc=(8, 4), voxel_mm=5.0)
    assert TierConfig.from_dict(cfg.to_dict()) == cfg
    legacy = {k: v for k, v in cfg.to_dict().items() if k != "voxel_mm"}
    assert TierConfig.from_dict(legacy).voxel_mm == 0.0
    with pytest.raises(ValueError, match="voxel_mm"):
        TierConfig(voxel_mm=-2)
    vol = volume_from_array(head_phantom(), (4.0, 4.0, 4.0))
    src = make_cube_source(vol, 32, voxel_mm=5.0)
    assert src.voxel_mm == 5.0 and src.cube.shape == (32, 32, 32)
    np.testing.assert_array_equal(src.cube, cfg.input_cube(vol))
    assert not np.allclose(src.cube, vol.cube(32))
    torch.manual_seed(0)
    path = tmp_path / "vx.safetensors"
    save_weights(path, build_network(cfg).state_dict(), {"config": cfg.to_dict(), "version": "t"})
    scorer = TierScorer(weights=str(path))
    direct = scorer.probabilities(src.cube[None])[0]
    got = scorer.score(vol).values
    assert got["noise_p_severe"] == pytest.approx(float(direct[ARTIFACTS.index("noise"), 1]), abs=1e-6)


def test_partial_warm_start_reuses_the_trunk_when_the_grid_changes(tmp_path):
    """A larger cube changes only the first FC layer's input; --init-partial keeps the rest."""
    import torch

    from bids_qa.models.weights import save_weights
    from bids_qa.training import loop

    torch.manual_seed(0)
    small = build_network(TINY)
    save_weights(tmp_path / "a.safetensors", small.state_dict(), {"version": "t"})
    torch.manual_seed(1)
    large = build_network(TierConfig(grid=80, channels=TINY.channels, fc=TINY.fc))
    with pytest.raises(RuntimeError):
        loop.warm_start(large, str(tmp_path / "a.safetensors"))  # strict by default
    fresh = loop.warm_start(large, str(tmp_path / "a.safetensors"), partial=True)
    assert fresh == ["shared.2.weight"]
    own, src = large.state_dict(), small.state_dict()
    for k, v in src.items():
        if k in fresh:
            assert own[k].shape != v.shape
        else:
            assert torch.equal(own[k], v), k
    other = build_network(TierConfig(grid=32, channels=(2, 2, 2, 2, 2), fc=(4, 4)))
    save_weights(tmp_path / "b.safetensors", {"unrelated": torch.zeros(3)}, {"version": "t"})
    with pytest.raises(ValueError, match="no tensor matches"):
        loop.warm_start(other, str(tmp_path / "b.safetensors"), partial=True)


def test_roc_auc_and_level_separation():
    from bids_qa.evaluate_tiers import level_separation, roc_auc

    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))
    # motion alone at grades 1, 2, 1, 2; noise alone at 1, 2; a mixture and a clean sample ignored
    grades = np.array(
        [[1, 0, 0], [2, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 2, 0], [2, 2, 0], [0, 0, 0]]
    )
    probs = np.zeros((8, 3, 2))
    probs[:, 0, 1] = [0.1, 0.9, 0.2, 0.8, 0.0, 0.0, 0.0, 0.9]  # motion p_severe: perfect
    probs[:, 1, 1] = [0.0, 0.0, 0.0, 0.0, 0.7, 0.3, 0.0, 0.0]  # noise p_severe: inverted
    change = np.array([0.5, 0.1, 0.1, 0.5, 0.1, 0.2, 0.9, 0.0])  # motion: no separation
    sep = level_separation(grades, probs, change)
    assert sep["motion"] == {"model_auc": 1.0, "change_auc": 0.5, "n": 4}
    assert sep["noise"]["model_auc"] == 0.0 and sep["noise"]["change_auc"] == 1.0
    assert sep["contrast"]["n"] == 0 and np.isnan(sep["contrast"]["model_auc"])
