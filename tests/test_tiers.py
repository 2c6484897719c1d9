"""Tests of the tiers family (paper 003): rules table, grading, scorer outputs, training, weights."""

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
    from bids_qa.training.tiers import draw_grades, positive_weights

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
    from bids_qa.training.tiers import make_cube_source, renormalise_like

    src = make_cube_source(volume_from_array(head_phantom(), (4.0, 4.0, 4.0)), 32)
    np.testing.assert_allclose(
        renormalise_like(src.cube, src.cube, src.mask), np.clip(src.cube, 0, 2), atol=1e-6
    )
    doubled = renormalise_like(src.cube * 2 + 0.1, src.cube, src.mask)
    np.testing.assert_allclose(doubled, np.clip(src.cube, 0, 2), atol=1e-4)


def phantom_sources(grid: int = 32, n: int = 2):
    from bids_qa.training.tiers import make_cube_source

    return [
        make_cube_source(
            volume_from_array(head_phantom(seed=s), (4.0, 4.0, 4.0)), grid, name=f"p{s}"
        )
        for s in range(n)
    ]


def test_tiny_training_reduces_loss():
    """Adam on a fixed batch of corrupted phantoms with the weighted BCE: the loss must fall."""
    import torch

    from bids_qa.training.tiers import TierSampleMaker, positive_weights, tier_loss

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

    from bids_qa.models.weights import load_weights
    from bids_qa.training import loop
    from bids_qa.training.tiers import evaluate_tiers, train

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

    from bids_qa.training.tiers import corrupt_cube, make_cube_source

    img = load_mni152_template(resolution=2)
    clean = volume_from_array(
        np.asarray(img.get_fdata(), np.float32), tuple(float(z) for z in img.header.get_zooms()[:3])
    )
    scorer = TierScorer()
    assert scorer.score(clean).values["tier"] == 1
    src = make_cube_source(clean, scorer.config.grid, voxel_mm=scorer.config.voxel_mm)
    # severe noise as the shipped weights define it (their cube, their noise reference)
    noisy, used = corrupt_cube(
        src.cube,
        src.mask,
        {"motion": 0, "noise": 2, "contrast": 0},
        src.voxel_mm,
        np.random.default_rng(3),
        scorer.config.noise_reference_mm,
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
    from bids_qa.training.tiers import make_cube_source

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


def test_averaged_rician_matches_averaging_fine_rician_voxels():
    from bids_qa.artifacts import averaged_rician

    rng = np.random.default_rng(0)
    std, n = 0.05, 16
    for a in (0.0, 0.05, 0.8):
        fine = np.abs(a + std * rng.standard_normal((20000, n)) + 1j * std * rng.standard_normal((20000, n)))
        direct = fine.mean(axis=1)
        approx = averaged_rician(np.full(20000, a, np.float32), std, n, rng.standard_normal(20000))
        assert approx.mean() == pytest.approx(direct.mean(), rel=0.01, abs=1e-3)
        assert approx.std() == pytest.approx(direct.std(), rel=0.05)
    # the air keeps its Rician floor (std * sqrt(pi / 2)) while the fluctuation shrinks by sqrt(n)
    air = averaged_rician(np.zeros(20000, np.float32), std, n, rng.standard_normal(20000))
    assert air.mean() == pytest.approx(std * np.sqrt(np.pi / 2), rel=0.01)
    assert air.std() == pytest.approx(std * np.sqrt(2 - np.pi / 2) / 4, rel=0.05)


def test_reference_noise_looks_like_noise_added_to_a_1mm_scan_then_resampled():
    """Noise grades defined at 1 mm: on the 2.5 mm cube the simulated noise has the spread of
    noise added at acquisition, about 5x below the same SD added to the cube itself."""
    from bids_qa import artifacts
    from bids_qa.training.tiers import corrupt_cube, make_cube_source, noise_average_n
    from bids_qa.volume import cube_at_spacing

    assert noise_average_n(1.0, 1.0) == 1.0
    assert noise_average_n(2.0, 1.0) == pytest.approx(8.0, rel=0.05)  # 2x2x2 blocks, aligned
    assert noise_average_n(2.5, 1.0) > 20  # blocks of 2, then trilinear sampling averages more
    rng = np.random.default_rng(3)
    data = np.zeros((90, 90, 90), np.float32)
    data[15:75, 15:75, 10:80] = 0.7 + 0.02 * rng.standard_normal((60, 60, 70))
    vol = volume_from_array(data, (1.0, 1.0, 1.0))
    src = make_cube_source(vol, 32, voxel_mm=2.5)
    std = 0.036
    noisy = artifacts.apply_artifact(vol.data, "noise", {"std": std, "rician": True, "seed": 1})
    native = cube_at_spacing(noisy, vol.mask, vol.zooms, 32, 2.5) - src.cube
    inside = src.mask
    grades = {"motion": 0, "noise": 2, "contrast": 0}
    sim, used = corrupt_cube(src.cube, src.mask, grades, 2.5, np.random.default_rng(1), 1.0)
    legacy, _ = corrupt_cube(src.cube, src.mask, grades, 2.5, np.random.default_rng(1), 0.0)
    assert used["noise"]["reference_mm"] == 1.0
    sd_native = native[inside].std()
    sd_ref = (sim - src.cube)[inside].std()
    sd_legacy = (legacy - src.cube)[inside].std()
    assert sd_ref == pytest.approx(sd_native * used["noise"]["std"] / std, rel=0.25)
    assert sd_legacy > 3 * sd_ref


def test_noise_reference_is_part_of_the_config_and_of_the_evaluation(tmp_path):
    import torch

    from bids_qa.models.tiers import TierScorer
    from bids_qa.models.weights import save_weights
    from bids_qa.training.tiers import evaluate_tiers

    cfg = TierConfig(grid=32, channels=TINY.channels, fc=TINY.fc, voxel_mm=2.5, noise_reference_mm=1.0)
    assert TierConfig.from_dict(cfg.to_dict()) == cfg
    legacy = {k: v for k, v in cfg.to_dict().items() if k != "noise_reference_mm"}
    assert TierConfig.from_dict(legacy).noise_reference_mm == 0.0
    with pytest.raises(ValueError, match="voxel_mm"):
        TierConfig(noise_reference_mm=1.0)
    with pytest.raises(ValueError, match="noise_reference_mm"):
        TierConfig(voxel_mm=2.5, noise_reference_mm=-1.0)
    torch.manual_seed(0)
    path = tmp_path / "t.safetensors"
    save_weights(path, build_network(cfg).state_dict(), {"config": cfg.to_dict(), "version": "t"})
    scorer = TierScorer(weights=str(path))
    rng = np.random.default_rng(0)
    data = np.zeros((60, 60, 60), np.float32)
    data[10:50, 10:50, 10:50] = 0.6 + 0.1 * rng.random((40, 40, 40))
    vol = volume_from_array(data, (1.0, 1.0, 1.0))
    own = evaluate_tiers(scorer, [vol], draws=1)
    other = evaluate_tiers(scorer, [vol], draws=1, noise_reference_mm=0.0)
    assert own["noise_reference_mm"] == 1.0 and other["noise_reference_mm"] == 0.0
    assert own["n_samples"] == other["n_samples"]
    # one moderate and one severe sample of each artifact alone
    assert {v["n"] for v in own["level_separation"].values()} == {2}


def test_roc_auc_and_level_separation():
    from bids_qa.training.tiers import level_separation, roc_auc

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


# ----------------------------------------------------------------------------- native-noise grades


def test_resampled_unit_noise_counts_the_acquired_voxels_a_cube_voxel_averages():
    from bids_qa.volume import resampled_unit_noise

    field, n = resampled_unit_noise(2.0, (1.0, 1.0, 1.0), 24)
    assert field.shape == (24, 24, 24)
    assert field.std() == pytest.approx(1.0, rel=1e-3) and abs(field.mean()) < 1e-3
    assert n == pytest.approx(8.0, rel=0.05)  # 2x2x2 blocks, aligned
    n_coarse = resampled_unit_noise(2.5, (2.0, 2.0, 2.0), 24)[1]
    n_fine = resampled_unit_noise(2.5, (1.0, 1.0, 1.0), 24)[1]
    n_clinical = resampled_unit_noise(2.5, (0.5, 0.5, 4.0), 24)[1]
    assert 1.0 <= n_coarse < 5 < 20 < n_fine < n_clinical  # 0.5 x 0.5 mm pixels average ~25 each


def test_noise_averaging_feature_orders_scans_by_how_much_noise_the_cube_averages_away():
    from bids_qa.models.tiers import noise_averaging_feature

    f = [noise_averaging_feature(2.5, z) for z in [(2.5,) * 3, (2.0,) * 3, (1.0,) * 3, (0.7,) * 3]]
    assert f[0] == pytest.approx(0.0, abs=0.02)
    assert f == sorted(f) and f[-1] - f[1] > 0.6
    # the order of the axes does not matter, sub-0.01 mm differences are rounded away
    assert noise_averaging_feature(2.5, (0.5, 0.5, 4.0)) == noise_averaging_feature(2.5, (4.0, 0.5, 0.5))
    assert noise_averaging_feature(2.5, (1.0, 1.0, 1.0)) == noise_averaging_feature(2.5, (1.001, 1.0, 0.999))


def test_native_noise_matches_noise_added_to_the_acquired_voxels_then_resampled():
    """Per-voxel noise: on the cube, a 1 mm scan shows ~sqrt(n) less of it than a 2 mm scan,
    and the simulation matches noise added to the scan itself and resampled."""
    from scipy import ndimage

    from bids_qa import artifacts
    from bids_qa.training.tiers import make_cube_source, native_noise
    from bids_qa.volume import cube_at_spacing

    std = 0.04
    spreads = {}
    for mm, n_vox in ((1.0, 90), (2.0, 45)):
        data = np.zeros((n_vox,) * 3, np.float32)
        lo, hi = n_vox // 6, n_vox - n_vox // 6
        data[lo:hi, lo:hi, lo:hi] = 0.7
        vol = volume_from_array(data, (mm,) * 3)
        src = make_cube_source(vol, 32, voxel_mm=2.5)
        assert src.zooms == (mm,) * 3
        noisy = artifacts.apply_artifact(vol.data, "noise", {"std": std, "rician": True, "seed": 1})
        clean_cube = cube_at_spacing(vol.data, vol.mask, vol.zooms, 32, 2.5)
        real = cube_at_spacing(noisy, vol.mask, vol.zooms, 32, 2.5)  # same placement as clean
        # the head's interior: at its edge the air's Rician floor is averaged in (not noise)
        inside = ndimage.binary_erosion(src.mask, iterations=2)
        real_sd = (real - clean_cube)[inside].std()
        sim = native_noise(clean_cube, std, 2.5, src.zooms, seed=2)
        sim_sd = (sim - clean_cube)[inside].std()
        assert sim_sd == pytest.approx(real_sd, rel=0.2), (mm, sim_sd, real_sd)
        spreads[mm] = sim_sd
    assert spreads[2.0] > 2.0 * spreads[1.0]


def test_native_noise_follows_the_cube_axes_of_an_anisotropic_scan():
    """Thick slices are interpolated into the cube (smooth noise along that axis), thin pixels
    averaged (white noise): the field turns with the cube when augmentation permutes its axes."""
    from bids_qa.training.tiers import native_noise

    cube = np.full((32, 32, 32), 0.7, np.float32)

    def lag1(x: np.ndarray, axis: int) -> float:
        a = np.moveaxis(x - x.mean(), axis, 0)
        return float((a[1:] * a[:-1]).mean() / a.var())

    plain = native_noise(cube, 0.05, 2.5, (0.5, 0.5, 5.0), seed=0)
    turned = native_noise(cube, 0.05, 2.5, (0.5, 0.5, 5.0), seed=0, axes=(2, 0, 1))
    assert lag1(plain, 2) > lag1(plain, 0) + 0.2
    assert lag1(turned, 0) > lag1(turned, 2) + 0.2


def test_native_noise_config_network_and_scorer(tmp_path):
    """The side input: part of the config, zero at the start (a legacy network warm-starts it
    exactly), required by forward, and fed per scan by the scorer, batched or not."""
    import torch

    from bids_qa.models.weights import save_weights
    from bids_qa.training import loop

    cfg = TierConfig(grid=32, channels=TINY.channels, fc=TINY.fc, voxel_mm=2.5, native_noise=True)
    assert TierConfig.from_dict(cfg.to_dict()) == cfg and cfg.side_features == 1
    assert TierConfig(grid=32, voxel_mm=2.5).side_features == 0
    legacy = {k: v for k, v in cfg.to_dict().items() if k != "native_noise"}
    assert TierConfig.from_dict(legacy).native_noise is False
    with pytest.raises(ValueError, match="native_noise"):
        TierConfig(native_noise=True)
    with pytest.raises(ValueError, match="native_noise"):
        TierConfig(voxel_mm=2.5, noise_reference_mm=1.0, native_noise=True)

    torch.manual_seed(0)
    old_cfg = TierConfig(grid=32, channels=TINY.channels, fc=TINY.fc, voxel_mm=2.5)
    old = build_network(old_cfg).eval()
    old_path = tmp_path / "old.safetensors"
    save_weights(old_path, old.state_dict(), {"config": old_cfg.to_dict(), "version": "old"})
    new = build_network(cfg).eval()
    assert loop.warm_start(new, str(old_path), partial=True) == ["side.bias", "side.weight"]
    x = torch.rand(3, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(old(x), new(x, torch.tensor([[0.1], [0.5], [0.9]])))
        with pytest.raises(ValueError, match="side input"):
            new(x)
        new.side.weight.fill_(3.0)  # a network that uses the voxel size
    path = tmp_path / "native.safetensors"
    save_weights(path, new.state_dict(), {"config": cfg.to_dict(), "version": "native"})
    scorer = TierScorer(weights=str(path))
    data = head_phantom(n=48, voxel=4.0)
    vols = [volume_from_array(data, (4.0,) * 3), volume_from_array(data, (1.0, 1.0, 16.0))]
    assert scorer.config.side_input(vols[0]).shape == (1,)
    together = scorer.score_many(vols)
    alone = [scorer.score(v) for v in vols]
    for a, b in zip(together, alone, strict=True):
        for key in ("noise_p_moderate", "motion_p_severe"):
            assert a.values[key] == pytest.approx(b.values[key], abs=1e-5)
    # same image, other acquired voxels: the network is told, and answers differently
    assert together[0].values["noise_p_moderate"] != pytest.approx(
        together[1].values["noise_p_moderate"], abs=1e-4
    )
    with pytest.raises(ValueError, match="side input"):
        scorer.probabilities(np.zeros((1, 32, 32, 32), np.float32))


def test_native_noise_training_samples_and_evaluation(tmp_path):
    from bids_qa.models.tiers import noise_averaging_feature
    from bids_qa.training.tiers import TierSampleMaker, evaluate_tiers, make_cube_source

    sources = phantom_sources()
    native_cfg = TierConfig(voxel_mm=2.5, native_noise=True)
    maker = TierSampleMaker(sources, native_cfg, views=2)
    x, labels, grades, side = maker(np.random.default_rng([1, 0]))
    assert x.shape == (2, 1, 32, 32, 32) and side.shape == (2, 1)
    assert side[0, 0] == pytest.approx(noise_averaging_feature(sources[0].voxel_mm, (4.0,) * 3))
    no_zooms = [make_cube_source(volume_from_array(head_phantom(), (4.0,) * 3), 32)]
    no_zooms[0].zooms = None
    with pytest.raises(ValueError, match="voxel sizes"):
        TierSampleMaker(no_zooms, native_cfg)
    net = build_network(TierConfig(grid=32, channels=TINY.channels, fc=TINY.fc, voxel_mm=2.5,
                                   native_noise=True))
    vol = volume_from_array(head_phantom(n=48, voxel=4.0), (4.0,) * 3)
    own = evaluate_tiers(net, [vol], draws=1)
    assert own["native_noise"] is True and own["noise_reference_mm"] == 0.0
    cube_def = evaluate_tiers(net, [vol], draws=1, native_noise=False)
    assert cube_def["native_noise"] is False and cube_def["n_samples"] == own["n_samples"]


def test_coarsened_volume_is_a_coarser_acquisition_with_averaged_noise():
    from bids_qa.training.tiers import coarsened_volume

    rng = np.random.default_rng(0)
    data = np.zeros((80, 80, 40), np.float32)
    data[10:70, 10:70, 5:35] = 0.8
    noisy = data + 0.05 * rng.standard_normal(data.shape).astype(np.float32) * (data > 0)
    vol = volume_from_array(noisy, (0.5, 0.5, 2.0))
    coarse = coarsened_volume(vol, 2.0)
    assert coarse is not None and coarse.zooms == pytest.approx((2.0, 2.0, 2.0))
    assert coarse.shape == (20, 20, 40)
    inner = (slice(4, 16), slice(4, 16), slice(8, 32))
    fine_sd = vol.data[10:70, 10:70, 8:32].std()
    coarse_sd = coarse.data[inner].std()
    assert coarse_sd == pytest.approx(fine_sd / 4, rel=0.15)  # 4 x 4 voxels averaged
    assert coarsened_volume(vol, 0.6) is None  # no axis gets coarser
    # a real coarse scan keeps noise of its own: added back on request, reproducibly
    renoised = coarsened_volume(vol, 2.0, noise_std=0.03, seed=4)
    again = coarsened_volume(vol, 2.0, noise_std=0.03, seed=4)
    assert np.array_equal(renoised.data, again.data)
    extra = np.sqrt(max(renoised.data[inner].std() ** 2 - coarse_sd**2, 0.0))
    assert extra == pytest.approx(0.03 * coarse.data[inner].mean() / renoised.data[inner].mean(), rel=0.3)



# ----------------------------------------------------------------------------- contrast input


def test_contrast_code_maps_bids_suffixes_to_sequence_families():
    from bids_qa.models.tiers import CONTRAST_FAMILIES, contrast_code

    assert CONTRAST_FAMILIES == ("T1w", "T2w", "FLAIR", "PDw")
    assert contrast_code("T1w").tolist() == [1, 0, 0, 0]
    assert contrast_code("inplaneT2").tolist() == [0, 1, 0, 0]
    assert contrast_code("FLAIR").tolist() == [0, 0, 1, 0]
    assert contrast_code("PD").tolist() == [0, 0, 0, 1]
    for unknown in ("T2starw", "", None, "t1w", "<script>"):
        assert contrast_code(unknown).tolist() == [0, 0, 0, 0]
    cfg = TierConfig(voxel_mm=2.5, contrast_input=True)
    assert cfg.side_features == 4
    assert TierConfig.from_dict(cfg.to_dict()) == cfg
    assert TierConfig.from_dict({**cfg.to_dict(), "contrast_input": False}).side_features == 0
    both = TierConfig(voxel_mm=2.5, native_noise=True, contrast_input=True)
    vec = both.side_vector(2.5, (1.0, 1.0, 1.0), "FLAIR")
    assert vec.shape == (5,) and vec[1:].tolist() == [0, 0, 1, 0] and vec[0] > 0.5


def test_contrast_aware_scorer_reads_the_suffix_and_the_pipeline_passes_it(tmp_path):
    import torch

    from bids_qa.models.weights import save_weights
    from bids_qa.training import loop

    torch.manual_seed(0)
    old_cfg = TierConfig(grid=32, channels=TINY.channels, fc=TINY.fc, voxel_mm=5.0)
    old = build_network(old_cfg).eval()
    old_path = tmp_path / "old.safetensors"
    save_weights(old_path, old.state_dict(), {"config": old_cfg.to_dict(), "version": "old"})
    cfg = TierConfig(grid=32, channels=TINY.channels, fc=TINY.fc, voxel_mm=5.0, contrast_input=True)
    new = build_network(cfg).eval()
    assert loop.warm_start(new, str(old_path), partial=True) == ["side.bias", "side.weight"]
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():  # the zero-initialised side path leaves the warm-started network as it was
        assert torch.equal(old(x), new(x, torch.eye(4)[:2]))
        new.side.weight.normal_(0, 3.0)
    path = tmp_path / "contrast.safetensors"
    save_weights(path, new.state_dict(), {"config": cfg.to_dict(), "version": "contrast"})
    scorer = TierScorer(weights=str(path))
    plain = TierScorer(weights=str(old_path))
    assert scorer.needs_suffix and not plain.needs_suffix
    assert scorer.needs_suffix is True and plain.needs_suffix is False
    from bids_qa.iqms import IQMScorer

    assert IQMScorer().needs_suffix  # contrast-dependent IQMs: declared, not inferred
    vol = volume_from_array(head_phantom(n=48, voxel=4.0), (4.0,) * 3)
    t1, flair = scorer.score(vol, "T1w").values, scorer.score(vol, "FLAIR").values
    assert t1["contrast_p_moderate"] != pytest.approx(flair["contrast_p_moderate"], abs=1e-4)
    unknown = scorer.score(vol).values  # no suffix: the all-zero code
    assert unknown["contrast_p_moderate"] == pytest.approx(
        scorer.score(vol, "T2starw").values["contrast_p_moderate"], abs=1e-6
    )
    many = scorer.score_many([vol, vol], ["T1w", "FLAIR"])
    assert many[0].values["contrast_p_moderate"] == pytest.approx(t1["contrast_p_moderate"], abs=1e-5)
    assert many[1].values["contrast_p_moderate"] == pytest.approx(
        flair["contrast_p_moderate"], abs=1e-5
    )


def test_contrast_input_training_samples_hide_the_suffix_at_the_dropout_rate():
    from bids_qa.training.tiers import TierSampleMaker, make_cube_source, source_side_input

    vol = volume_from_array(head_phantom(), (4.0, 4.0, 4.0))
    src = make_cube_source(vol, 32, name="flair", suffix="FLAIR")
    assert src.suffix == "FLAIR"
    cfg = TierConfig(grid=32, contrast_input=True)
    assert source_side_input(src, cfg).tolist() == [0, 0, 1, 0]
    assert source_side_input(src, cfg, suffix="").tolist() == [0, 0, 0, 0]
    assert source_side_input(src, TierConfig(grid=32)).tolist() == [0]  # no side input: one zero
    maker = TierSampleMaker([src], cfg, views=2, suffix_dropout=0.3)
    sides = [maker(np.random.default_rng([3, i]))[3] for i in range(60)]
    assert all(s.shape == (2, 4) and (s[0] == s[1]).all() for s in sides)
    hidden = sum(float(s[0].sum()) == 0 for s in sides)
    assert 8 <= hidden <= 30  # ~18 of 60 expected
    with pytest.raises(ValueError, match="suffix_dropout"):
        TierSampleMaker([src], cfg, suffix_dropout=1.5)
