"""Tests of the flow-density family (paper 001): RealNVP maths, fitting, group refit, scorer."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bids_qa.models import flow as F  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "flow_fixture.json"
SHIPPED = F.WEIGHTS_FILE


def _random_flow(seed: int = 3):
    """A RealNVP with every weight random (the zero-initialised last layers too)."""
    gen = torch.Generator().manual_seed(seed)
    flow = F.build_realnvp(F.FlowConfig(), gen)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.7)
    return flow.eval()


def test_logdet_matches_numerical_jacobian():
    flow = _random_flow()
    pts = torch.from_numpy(np.random.default_rng(0).normal(scale=1.5, size=(12, 2)))
    z, logdet = flow(pts)
    assert z.shape == (12, 2) and logdet.shape == (12,)
    eps = 1e-6
    for i in range(len(pts)):
        jac = np.zeros((2, 2))
        for j in range(2):
            d = torch.zeros(1, 2, dtype=torch.float64)
            d[0, j] = eps
            plus = flow(pts[i : i + 1] + d)[0][0].detach().numpy()
            minus = flow(pts[i : i + 1] - d)[0][0].detach().numpy()
            jac[:, j] = (plus - minus) / (2 * eps)
        sign, numeric = np.linalg.slogdet(jac)
        assert sign > 0  # affine couplings with exp(s) keep orientation
        assert abs(numeric - float(logdet[i].detach())) < 1e-4
    # the logdet is not trivially zero: the flow really stretches space
    assert float(logdet.detach().abs().max()) > 0.1


def test_inverse_undoes_forward():
    flow = _random_flow(5)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(50, 2)))
    z, _ = flow(x)
    back = flow.inverse(z)
    assert torch.allclose(back, x, atol=1e-9)


def test_fitted_flow_recovers_gaussian_density():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    mu, cov = np.array([2.0, -1.0]), np.array([[1.0, 0.6], [0.6, 0.8]])
    fitted = F.fit_flow(rng.multivariate_normal(mu, cov, 1000))
    test = rng.multivariate_normal(mu, cov, 400)
    truth = multivariate_normal(mu, cov).logpdf(test)
    central = truth > np.percentile(truth, 10)  # tails are estimated from few points
    err = fitted.log_density(test) - truth
    assert np.median(np.abs(err[central])) < 0.1
    assert np.abs(err[central]).max() < 0.5
    # 5% density level of its own sample sits near the true 5% level (chi2 quantile)
    true_level = multivariate_normal(mu, cov).logpdf(mu) - 0.5 * 5.991
    assert abs(fitted.level(5.0) - true_level) < 0.35
    # percentiles are 0..100 and monotone in the density
    assert fitted.percentile(fitted.log_density(mu)) > 95
    assert fitted.percentile(fitted.log_density(mu + 6)) == 0.0


def test_group_refit_is_deterministic_and_flags_outliers():
    rng = np.random.default_rng(7)
    m = np.vstack([rng.normal([0.5, 2.0], [0.3, 0.2], size=(57, 2)), [[4.0, -3.0], [-3.0, 6.0], [5.0, 5.0]]])
    a = F.refit_flow(m, seed=0)
    b = F.refit_flow(m, seed=0)
    grid = rng.normal(size=(30, 2)) * 3
    assert np.array_equal(a.log_density(grid), b.log_density(grid))
    assert np.array_equal(a.population_log_density, b.population_log_density)
    out1 = F.dataset_outliers(m, seed=0)
    assert list(out1.columns) == ["log_density", "percentile", "flag_5pct", "flag_3pct"]
    assert len(out1) == len(m)
    # the group helper is the same deterministic refit
    assert np.array_equal(out1["log_density"].to_numpy(), a.log_density(m))
    # the three far points are the least dense and flagged at both levels
    assert set(np.argsort(out1["log_density"].to_numpy())[:3]) == {57, 58, 59}
    assert out1["flag_5pct"].iloc[57:].tolist() == [1, 1, 1]
    assert int(out1["flag_5pct"].sum()) == 3  # 5% of 60
    assert int(out1["flag_3pct"].sum()) == 2 and int(out1["flag_3pct"].iloc[:57].sum()) == 0  # 3% of 60 = 1.8
    assert int(out1["flag_5pct"].iloc[:57].sum()) == 0


def test_dataset_outliers_small_groups_and_failed_scans():
    rng = np.random.default_rng(2)
    assert F.dataset_outliers(rng.normal(size=(29, 2))) is None
    m = rng.normal(size=(35, 2))
    m[4] = np.nan
    out = F.dataset_outliers(m)
    assert out is not None and len(out) == 35
    assert np.isnan(out.loc[4, "log_density"]) and out["flag_5pct"].isna().tolist()[4]
    assert out["flag_5pct"].notna().sum() == 34
    # 29 finite rows left -> None
    m[:6] = np.nan
    assert F.dataset_outliers(m) is None


def test_fit_flow_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        F.fit_flow(np.zeros((10, 3)))
    with pytest.raises(ValueError, match="NaN"):
        F.fit_flow(np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 2.0], [2.0, 0.0]]))


def test_plot_m_plane_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.normal(size=(40, 2))
    fitted = F.fit_flow(m, fit=F.FitConfig(steps=50))
    from bids_qa.reports.figures import plot_m_plane

    path = plot_m_plane(np.vstack([m[:5], [[4.0, 4.0]]]), ["clean"] * 5 + ["noise"], fitted,
                          tmp_path / "fig" / "m.png", reference_m=m)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="labels"):
        plot_m_plane(m, ["a"], fitted, tmp_path / "x.png")


def test_contrastive_loss_prefers_matching_positive():
    from bids_qa.training.flow import contrastive_loss

    good = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]],
                         [[0.0, -2.0], [0.0, -2.0], [2.0, 0.0], [0.0, 2.0]]])
    bad = good[:, [0, 2, 1, 3]]  # positive swapped with a negative
    src = torch.tensor([0, 1])
    lg, pg = contrastive_loss(good, src)
    lb, pb = contrastive_loss(bad, src)
    assert float(lg) < float(lb)
    assert pg["acc"] == 1.0 and pb["acc"] == 0.0


def test_truncate_half_zeroes_one_side():
    from bids_qa.training.flow import truncate_half
    from bids_qa.volume import volume_from_array

    arr = np.zeros((40, 40, 20), np.float32)
    arr[8:32, 8:32, 4:16] = 1.0
    vol = volume_from_array(arr)
    cut = truncate_half(vol, axis=0)
    assert cut[:19].max() == 0 and cut[21:].max() > 0.5
    assert truncate_half(vol, axis=1, crop=True).shape[1] < 40


# ------------------------------------------------------------------ shipped weights


def _shipped_path() -> Path:
    from bids_qa.models.weights import packaged_weights

    return packaged_weights(SHIPPED)


needs_weights = pytest.mark.skipif(not _shipped_path().is_file(),
                                   reason="bids_qa/weights/flow.safetensors is not shipped in this checkout")


@functools.lru_cache(maxsize=1)
def _phantom():
    from nilearn.datasets import load_mni152_template

    from bids_qa.volume import volume_from_array

    arr = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    return volume_from_array(arr, (2.0, 2.0, 2.0))


def _noisy(volume, std: float = 0.25, seed: int = 0):
    from bids_qa.volume import volume_from_array

    rng = np.random.default_rng(seed)
    real = volume.data + std * rng.standard_normal(volume.data.shape, dtype=np.float32)
    imag = std * rng.standard_normal(volume.data.shape, dtype=np.float32)
    return volume_from_array(np.sqrt(real**2 + imag**2), volume.zooms)


@needs_weights
def test_shipped_scorer_clean_phantom_denser_than_noisy():
    scorer = F.FlowScorer()
    assert scorer.name == "flow" and scorer.version
    clean = scorer.score(_phantom())
    noisy = scorer.score(_noisy(_phantom()))
    assert set(clean.values) == {"m1", "m2", "log_density", "percentile", "flag_5pct", "flag_3pct"}
    assert clean.values["log_density"] > noisy.values["log_density"]
    assert noisy.values["flag_5pct"] == 1
    assert len(clean.per_slice["m1"]) == F.N_CENTRE_SLICES


@needs_weights
def test_shipped_weights_reproduce_fixture():
    if not FIXTURE.is_file():
        pytest.skip("tests/data/flow_fixture.json not written yet")
    fixture = json.loads(FIXTURE.read_text())
    scorer = F.FlowScorer()
    assert scorer.version == fixture["version"]
    for case, vol in (("clean", _phantom()), ("noisy", _noisy(_phantom()))):
        got = scorer.score(vol).values
        want = fixture["cases"][case]
        for key in ("m1", "m2", "log_density"):
            assert got[key] == pytest.approx(want[key], abs=2e-3), (case, key)
        for key in ("flag_5pct", "flag_3pct"):
            assert got[key] == want[key], (case, key)
    level = fixture["level_5pct"]
    assert scorer.reference.level(5.0) == pytest.approx(level, abs=1e-9)


def test_same_level_pairs_are_not_batch_negatives():
    """Two clean queries from different volumes: with levels given, their closeness costs nothing."""
    from bids_qa.training.flow import contrastive_loss

    # both queries clean and at the same point; negatives far away
    m = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [-2.0, 0.0]],
                      [[2.0, 0.0], [2.0, 0.0], [0.0, -2.0]]])
    src = torch.tensor([0, 1])
    clean = torch.tensor([[-1.0, 0.0], [-1.0, 0.0]])
    mixed = torch.tensor([[-1.0, 0.0], [0.0, 0.8]])  # second query: artifact 0 at SS 0.8
    l_plain, _ = contrastive_loss(m, src)
    l_clean, p_clean = contrastive_loss(m, src, clean)
    l_mixed, _ = contrastive_loss(m, src, mixed)
    assert float(l_clean) < float(l_plain)  # the other clean volume is no longer a negative
    assert float(l_mixed) == pytest.approx(float(l_plain))  # different levels: still negatives
    assert p_clean["acc"] == 1.0


def test_query_weights_steer_the_query_artifact_and_are_validated():
    from bids_qa.training.flow import ContrastiveMaker
    from bids_qa.training.slices import make_source
    from bids_qa.volume import volume_from_array

    yy, xx, zz = np.mgrid[:40, :40, :40]
    head = (((yy - 20) ** 2 + (xx - 20) ** 2 + (zz - 20) ** 2) < 15**2).astype(np.float32)
    source = make_source(volume_from_array(head * (0.5 + 0.01 * xx), (1.0, 1.0, 1.0)))
    arts = ("noise", "ghosting")
    maker = ContrastiveMaker([source], 32, arts, 1, 1.0, query_weights=(0.0, 1.0))
    levels = [maker(np.random.default_rng(i))[2] for i in range(6)]
    assert all(int(lv[0]) == arts.index("ghosting") for lv in levels)
    assert ContrastiveMaker([source], 32, arts, 1, 1.0).query_p is None  # uniform: old stream
    with pytest.raises(ValueError, match="query weights"):
        ContrastiveMaker([source], 32, arts, 1, 1.0, query_weights=(1.0,))


def test_fixed_pixel_encoder_reads_spacing_stack_in_training_and_scoring():
    from bids_qa.training.flow import ContrastiveMaker, reference_population
    from bids_qa.training.slices import make_source
    from bids_qa.volume import volume_from_array

    cfg = F.EncoderConfig(input_size=32, channels=(4, 4, 4), hidden=8, pixel_mm=2.0)
    assert F.EncoderConfig.from_dict(cfg.to_dict()) == cfg
    legacy = {k: v for k, v in cfg.to_dict().items() if k != "pixel_mm"}
    assert F.EncoderConfig.from_dict(legacy).pixel_mm == 0.0
    yy, xx, zz = np.mgrid[:60, :60, :40]
    head = (((yy - 30) ** 2 + (xx - 30) ** 2 + (zz - 20) ** 2) < 18**2).astype(np.float32)
    vol = volume_from_array(head * (0.5 + 0.01 * xx), (1.0, 1.0, 1.0))
    # the scorer-side stack is the fixed-spacing one, not the whole field of view
    scorer_stack = vol.slice_stack(32, pixel_mm=cfg.pixel_mm)
    np.testing.assert_array_equal(scorer_stack, vol.spacing_stack(32, 2.0))
    assert not np.allclose(scorer_stack, vol.slice_stack(32))
    # training samples at 1 mm per pixel show the same slice (the option draws no random numbers)
    # magnified against the whole field of view squeezed into 32 pixels (60 mm: 1.9 mm per pixel)
    source = make_source(vol)
    for seed in range(3):
        fine, _, level = ContrastiveMaker([source], 32, ("noise",), 1, 0.0, pixel_mm=1.0)(
            np.random.default_rng(seed)
        )
        whole, _, _ = ContrastiveMaker([source], 32, ("noise",), 1, 0.0)(np.random.default_rng(seed))
        assert fine.shape == whole.shape == (3, 32, 32) and level[0] == -1
        rows = [len(np.flatnonzero(x[0].max(axis=1) > 0.1)) for x in (fine, whole)]
        assert rows[0] > 1.4 * rows[1], rows
    torch.manual_seed(0)
    net = F.build_encoder(cfg).eval()
    m, names = reference_population(net, [("v", vol)], 32, pixel_mm=2.0)
    m0, _ = reference_population(net, [("v", vol)], 32)
    assert m.shape == m0.shape and not np.allclose(m, m0)


@needs_weights
def test_flow_evaluation_reports_the_realised_change_of_simulated_artifacts():
    from bids_qa.training.flow import EVAL_ARTIFACTS, evaluate_flow

    res = evaluate_flow(
        F.FlowScorer(), [({"path": "mni.nii.gz"}, _phantom())], np.random.default_rng(0), 1
    )
    cases = {c["category"]: c for c in res["cases"]}
    assert set(cases) == {"clean", "clean_variant", "truncated_fov", *EVAL_ARTIFACTS}
    for cat in EVAL_ARTIFACTS:  # severity 0.7-1: every artifact changes the phantom visibly
        assert 0.01 < cases[cat]["change"] < 2.0
        assert res["per_category"][cat]["median_change"] == cases[cat]["change"]
    for cat in ("clean", "clean_variant", "truncated_fov"):
        assert cases[cat]["change"] is None
        assert "median_change" not in res["per_category"][cat]
    assert res["at_5pct"]["tp"] + res["at_5pct"]["fn"] == 6  # 4 artifacts + 2 truncations


def test_motion3d_queries_come_from_the_bank_with_the_clean_query_as_negative():
    from bids_qa.similarity import realised_change
    from bids_qa.training.flow import MOTION3D, ContrastiveMaker, motion3d_bank
    from bids_qa.training.slices import make_source
    from bids_qa.volume import volume_from_array

    yy, xx, zz = np.mgrid[:40, :40, :40]
    head = (((yy - 20) ** 2 + (xx - 20) ** 2 + (zz - 20) ** 2) < 15**2).astype(np.float32)
    texture = 0.5 + 0.3 * np.sin(xx / 2.0) * np.cos(yy / 3.0)  # edges for motion to smear
    source = make_source(volume_from_array(head * texture, (1.0, 1.0, 1.0)))
    bank = motion3d_bank([source], 2, seed=0)
    assert len(bank) == 1 and len(bank[0]) == 2
    assert bank[0][0][0].shape == source.volume.data.shape
    assert 0.3 <= bank[0][0][1] <= 1.0
    assert realised_change(source.volume.data, bank[0][0][0], source.volume.mask) > 0.02
    arts = ("noise", MOTION3D)
    maker = ContrastiveMaker([source], 32, arts, 1, 1.0, query_weights=(0.0, 1.0), motion3d=bank)
    assert maker.negative_artifacts == ("noise",)
    for i in range(4):
        stack, k, level = maker(np.random.default_rng(i))
        assert stack.shape == (3, 32, 32) and k == 0
        assert int(level[0]) == 1
        assert min(abs(float(level[1]) - c[1]) for c in bank[0]) < 1e-6
        query, clean = stack[0], stack[2]  # first negative: the clean query (severity >= 0.3)
        mask = clean > 0.05
        moved = realised_change(clean, query, mask)
        flipped = realised_change(clean, clean[::-1].copy(), mask)
        assert 0 < moved < flipped  # same slice and flips, only the motion differs
    with pytest.raises(ValueError, match="bank"):
        ContrastiveMaker([source], 32, arts, 1, 1.0)


def test_separation_loss_pulls_clean_together_and_pushes_corrupted_out():
    from bids_qa.training.flow import separation_loss

    m = torch.zeros(4, 5, 2)
    m[2:, :2] = torch.tensor([3.0, 0.0])  # corrupted queries/positives far from the clean ones
    level = torch.tensor([[-1.0, 0.0], [-1.0, 0.0], [0.0, 0.8], [1.0, 0.9]])
    assert float(separation_loss(m, level, radius=1.5)) == pytest.approx(0.0)
    near = m.clone()
    near[2:, :2] = torch.tensor([0.5, 0.0])
    near.requires_grad_(True)
    loss = separation_loss(near, level, radius=1.5)
    assert float(loss.detach()) == pytest.approx(1.0)  # (1.5 - 0.5)^2
    loss.backward()
    assert (near.grad[2:, :2, 0] < 0).all()  # descent moves them away from the clean centre
    spread = m.clone()
    spread[0, 0] = torch.tensor([1.0, 0.0])  # clean points apart: pulled together
    assert float(separation_loss(spread, level, radius=1.5)) > 0
    mild = level.clone()
    mild[2:, 1] = 0.3  # below the severity the term pushes
    assert float(separation_loss(near.detach(), mild, radius=1.5)) == pytest.approx(0.0)
    no_clean = level.clone()
    no_clean[:, 0] = 0.0
    assert float(separation_loss(near.detach(), no_clean, radius=1.5)) == 0.0
