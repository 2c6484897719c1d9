"""Tests of the flow-density family (Zuo et al.): RealNVP maths, fitting, group refit, scorer."""

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
