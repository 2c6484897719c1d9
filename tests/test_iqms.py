"""Classical IQMs against phantoms with known answers, and the header/IQM scorers end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sstats

from bids_qa import iqm_formulas as formulas
from bids_qa import iqm_regions as masks
from bids_qa import iqms
from bids_qa.errors import ScanError
from bids_qa.scoring import REGISTRY, Scorer, build_scorers
from bids_qa.volume import volume_from_array

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _alternate(mask: np.ndarray, low: float, high: float, img: np.ndarray) -> None:
    """Fill ``mask`` with low/high alternating in raster order (exact mean and population sd)."""
    n = int(mask.sum())
    assert n % 2 == 0
    img[mask] = np.where(np.arange(n) % 2 == 0, low, high)


def _rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex image with Gaussian noise: Rician in tissue, Rayleigh in air."""
    re = clean + rng.normal(0.0, sigma, clean.shape)
    im = rng.normal(0.0, sigma, clean.shape)
    return np.sqrt(re * re + im * im).astype(np.float32)


def _ball(shape: tuple[int, int, int], radius: float, center=None) -> np.ndarray:
    center = np.array(shape) / 2 if center is None else np.asarray(center)
    grid = np.indices(shape).astype(np.float64)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)))
    return dist <= radius


@pytest.fixture(scope="module")
def mni() -> np.ndarray:
    """The 2 mm MNI152 template nilearn ships (offline), scaled to a scanner-like range."""
    from nilearn.datasets import load_mni152_template

    data = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float64)
    return data / data.max() * 1000.0


# --------------------------------------------------------------------------------------------
# metrics on phantoms
# --------------------------------------------------------------------------------------------


def test_cjv_and_cnr_exact_on_two_tissue_blocks():
    img = np.zeros((20, 20, 20))
    wm = np.zeros(img.shape, bool)
    gm = np.zeros(img.shape, bool)
    air = np.zeros(img.shape, bool)
    wm[2:8, 2:8, 2:8] = True
    gm[10:16, 2:8, 2:8] = True
    air[:, 12:, :] = True
    _alternate(wm, 90.0, 110.0, img)  # mean 100, sd 10
    _alternate(gm, 55.0, 65.0, img)  # mean 60, sd 5
    _alternate(air, 0.0, 4.0, img)  # sd 2
    assert formulas.cjv(img, wm, gm) == pytest.approx((10 + 5) / 40)
    assert formulas.cnr(img, wm, gm, air) == pytest.approx(40 / math.sqrt(4 + 100 + 25))
    # Symmetric in the pair, and undefined (not an exception) for equal means.
    assert formulas.cjv(img, gm, wm) == pytest.approx(formulas.cjv(img, wm, gm))
    assert math.isnan(formulas.cjv(img, wm, wm))


def test_efc_block_formula_and_order():
    shape = (16, 16, 16)
    block = np.zeros(shape)
    block[4:12, 4:12, 4:12] = 7.0
    m, n = 8**3, 16**3
    assert formulas.efc(block) == pytest.approx(math.sqrt(m / n) * math.log(m) / math.log(n))
    noise = np.random.default_rng(0).uniform(0, 1, shape)
    assert formulas.efc(block) < formulas.efc(noise) < 1.0
    assert formulas.efc(np.full(shape, 3.0)) == pytest.approx(1.0)  # maximum entropy
    mask = np.zeros(shape, bool)
    mask[2:14] = True
    assert formulas.efc(noise, mask) == pytest.approx(formulas.efc(noise[mask]))
    assert math.isnan(formulas.efc(np.zeros(shape)))


def test_fber_exact_on_piecewise_constant_phantom():
    img = np.full((10, 10, 10), 2.0)
    head = np.zeros(img.shape, bool)
    head[3:7, 3:7, 3:7] = True
    img[head] = 10.0
    assert formulas.fber(img, head) == pytest.approx(100.0 / 4.0)
    air = np.zeros(img.shape, bool)
    air[0] = True
    img[0, 0, 0] = 50.0  # one hot voxel does not move a median
    assert formulas.fber(img, head, air) == pytest.approx(25.0)
    img[~head] = 0.0
    assert math.isnan(formulas.fber(img, head))  # zero-energy air: unbounded, reported as NaN


def test_snr_recovers_gaussian_noise_and_drops_with_noise():
    rng = np.random.default_rng(1)
    mask = np.ones((40, 40, 40), bool)
    values = []
    for sigma in (2.0, 5.0, 10.0, 20.0):
        img = 100.0 + rng.normal(0.0, sigma, mask.shape)
        values.append(formulas.snr(img, mask))
        assert values[-1] == pytest.approx(100.0 / sigma, rel=0.05)
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    # The n/(n-1) correction makes it mean over the sample standard deviation.
    small = np.array([1.0, 2.0, 3.0, 4.0])
    assert formulas.snr(small, np.ones(4, bool)) == pytest.approx(2.5 / np.std(small, ddof=1))


def test_snr_dietrich_recovers_sigma_from_rayleigh_air():
    rng = np.random.default_rng(2)
    sigma = 4.0
    img = rng.rayleigh(sigma, (40, 40, 40))
    fg = np.zeros(img.shape, bool)
    fg[10:30, 10:30, 10:30] = True
    img[fg] = 100.0 + rng.normal(0, sigma, int(fg.sum()))
    assert formulas.snr_dietrich(img, fg, ~fg) == pytest.approx(100.0 / sigma, rel=0.05)
    # The same from a magnitude image built from complex Gaussian noise.
    clean = np.where(fg, 100.0, 0.0)
    mag = _rician(clean, sigma, rng)
    assert formulas.snr_dietrich(mag, fg, ~fg) == pytest.approx(100.0 / sigma, rel=0.05)


def test_wm2max_exact():
    img = np.zeros((10, 10, 10))
    wm = np.zeros(img.shape, bool)
    wm[:5] = True
    img[wm] = 50.0
    img[9] = 100.0  # 10% of the voxels: the 99.95th percentile is exactly 100
    assert formulas.wm2max(img, wm) == pytest.approx(0.5)
    assert math.isnan(formulas.wm2max(img, np.zeros(img.shape, bool)))


def test_qi1_zero_on_clean_air_and_positive_with_a_ghost():
    rng = np.random.default_rng(3)
    img = rng.rayleigh(5.0, (48, 48, 48))
    air = np.ones(img.shape, bool)
    air[16:32, 16:32, 16:32] = False  # the "head"
    assert formulas.qi1(img, air) == 0.0
    ghost = img.copy()
    ghost[2:10, 2:10, 2:10] += 60.0  # a bright 8x8x8 structure in the air
    value = formulas.qi1(ghost, air)
    cube = 8**3
    assert 0.8 * cube / air.sum() < value < 1.3 * cube / air.sum()
    assert math.isnan(formulas.qi1(img, np.zeros(img.shape, bool)))
    # A quantised background (most air voxels share one value) still gives a threshold.
    quant = np.where(rng.uniform(size=img.shape) < 0.7, 1.0, rng.integers(0, 4, img.shape))
    assert formulas.qi1(quant, air) == 0.0


def test_summary_stats_match_numpy_and_scipy():
    rng = np.random.default_rng(4)
    img = rng.gamma(2.0, 10.0, (30, 30, 30))
    mask = img > 5
    vals = img[mask]
    out = formulas.summary_stats(img, mask)
    assert set(out) == set(formulas.SUMMARY_FIELDS)
    assert out["n"] == vals.size and isinstance(out["n"], int)
    assert out["mean"] == pytest.approx(vals.mean())
    assert out["median"] == pytest.approx(np.median(vals))
    assert out["std"] == pytest.approx(vals.std())
    assert out["p05"] == pytest.approx(np.percentile(vals, 5))
    assert out["p95"] == pytest.approx(np.percentile(vals, 95))
    assert out["mad"] == pytest.approx(1.4826 * np.median(np.abs(vals - np.median(vals))), rel=1e-4)
    assert out["k"] == pytest.approx(sstats.kurtosis(vals, fisher=True, bias=True))
    empty = formulas.summary_stats(img, np.zeros(img.shape, bool))
    assert empty["n"] == 0 and math.isnan(empty["mean"])


def test_kmeans_1d_recovers_separated_clusters():
    rng = np.random.default_rng(5)
    parts = [rng.uniform(c - 1, c + 1, 1000) for c in (10.0, 50.0, 90.0)]
    centroids = masks.kmeans_1d(rng.permutation(np.concatenate(parts)))
    assert centroids == pytest.approx([p.mean() for p in parts])


@pytest.mark.parametrize(
    ("suffix", "wm_level", "assumed"),
    [
        ("T1w", 300.0, False),
        ("T2w", 100.0, False),
        ("PDw", 100.0, False),
        ("FLAIR", 200.0, False),
        (None, 300.0, True),
        ("angio", 300.0, True),
    ],
)
def test_tissue_classes_are_named_per_contrast(suffix, wm_level, assumed):
    img = np.zeros((30, 10, 10))
    img[:10], img[10:20], img[20:] = 100.0, 200.0, 300.0
    img += np.random.default_rng(6).normal(0, 5, img.shape)
    classes = masks.tissue_classes(img, np.ones(img.shape, bool), suffix)
    assert float(np.median(img[classes.masks["wm"]])) == pytest.approx(wm_level, abs=5)
    assert classes.assumed is assumed
    assert ("assumed" in classes.order_text) is assumed
    assert sum(int(m.sum()) for m in classes.masks.values()) == img.size


# --------------------------------------------------------------------------------------------
# masks and grid
# --------------------------------------------------------------------------------------------


def test_head_and_air_masks_fill_holes_keep_margin_and_drop_padding():
    rng = np.random.default_rng(7)
    shape = (64, 64, 48)
    head = _ball(shape, 20)
    ventricle = _ball(shape, 5)
    clean = np.where(head & ~ventricle, 500.0, 0.0)
    img = _rician(clean, 10.0, rng)
    img[:, :, :4] = 0.0  # zero padding, e.g. from reslicing
    regions = masks.head_air_masks(img, (1.0, 1.0, 1.0))
    assert regions.head[ventricle].all()  # the dark interior is filled
    assert regions.head[head & ~ventricle].mean() > 0.99
    assert not (regions.head & ~_ball(shape, 21)).any()
    assert regions.frame[:, :, :4].all() and not regions.frame[:, :, 4:].any()
    assert not (regions.air & regions.frame).any()
    assert not (regions.air & _ball(shape, 24)).any()  # 5 mm margin around the head
    assert regions.air[2:8, 2:8, 10:20].all()


def test_frame_keeps_scattered_zeros_inside_the_air():
    img = np.ones((20, 20, 20))
    img[:2] = 0.0
    img[10, 10, 10] = 0.0
    frame = masks.frame_mask(img)
    assert frame[:2].all() and not frame[10, 10, 10] and frame.sum() == 2 * 400


def test_analysis_stride():
    assert masks.analysis_stride((91, 109, 91), (2.0, 2.0, 2.0)) == (1, 1, 1)
    assert masks.analysis_stride((256, 256, 176), (1.0, 1.0, 1.0)) == (2, 2, 2)
    assert masks.analysis_stride((512, 512, 30), (0.45, 0.45, 4.0)) == (2, 2, 1)  # keep slices
    assert masks.analysis_stride((274, 384, 384), (0.7, 0.6666667, 0.66667)) == (3, 3, 3)


# --------------------------------------------------------------------------------------------
# scorers
# --------------------------------------------------------------------------------------------

DOCUMENTED_IQM_KEYS = (
    ["efc", "fber", "cjv", "cnr", "wm2max", "qi1"]
    + [f"{p}_{t}" for p in ("snr", "snrd") for t in ("csf", "gm", "wm", "total")]
    + [f"summary_{r}_{f}" for r in ("csf", "gm", "wm", "air") for f in formulas.SUMMARY_FIELDS]
)


def test_iqm_scorer_on_noisy_mni_template_matches_the_pure_functions(mni):
    rng = np.random.default_rng(8)
    volume = volume_from_array(_rician(mni, 15.0, rng), (2.0, 2.0, 2.0))
    scores = iqms.IQMScorer().score(volume, suffix="T1w")
    values = scores.values
    assert scores.scorer == "iqm"
    for key in DOCUMENTED_IQM_KEYS:
        assert isinstance(values[key], (float, int)), key
        assert math.isfinite(values[key]), key
    assert not [k for k in values if k.endswith("_note")]
    assert values["contrast"] == "T1w" and values["tissue_order"] == "csf<gm<wm"
    assert values["analysis_stride"] == "1x1x1"
    # Plausibility: bright WM, the air sigma recovered by Dietrich's SNR, an artifact-free air.
    assert values["summary_csf_mean"] < values["summary_gm_mean"] < values["summary_wm_mean"]
    assert values["snrd_wm"] == pytest.approx(values["summary_wm_mean"] / 15.0, rel=0.1)
    assert values["qi1"] < 0.005 and 0 < values["efc"] < 1 and values["cjv"] > 0

    # The scorer's numbers are the pure functions' on the same regions.
    img = volume.raw
    regions = masks.head_air_masks(img, (2.0, 2.0, 2.0))
    interior = masks.erode_box(regions.head, (5, 5, 5)) & (img > regions.threshold)
    assert (masks.tissue_region(img, regions, (2.0, 2.0, 2.0)) == interior).all()
    t = masks.tissue_classes(img, interior, "T1w").masks
    assert values["cjv"] == pytest.approx(formulas.cjv(img, t["wm"], t["gm"]), rel=1e-5)
    assert values["cnr"] == pytest.approx(formulas.cnr(img, t["wm"], t["gm"], regions.air), rel=1e-5)
    assert values["snr_gm"] == pytest.approx(formulas.snr(img, t["gm"]), rel=1e-5)
    snrd = formulas.snr_dietrich(img, t["csf"], regions.air)
    assert values["snrd_csf"] == pytest.approx(snrd, rel=1e-5)
    assert values["fber"] == pytest.approx(formulas.fber(img, regions.head, regions.air), rel=1e-5)
    assert values["wm2max"] == pytest.approx(formulas.wm2max(img, t["wm"]), rel=1e-5)
    assert values["efc"] == pytest.approx(formulas.efc(img, ~regions.frame), rel=1e-5)
    assert values["qi1"] == pytest.approx(formulas.qi1(img, regions.air), abs=1e-9)
    summary = formulas.summary_stats(img, regions.air)
    for field in formulas.SUMMARY_FIELDS:
        assert values[f"summary_air_{field}"] == pytest.approx(summary[field], rel=1e-5)


def test_noise_lowers_snr_and_cnr_and_raises_cjv(mni):
    rows = []
    for sigma in (5.0, 20.0, 60.0):
        rng = np.random.default_rng(9)
        volume = volume_from_array(_rician(mni, sigma, rng), (2.0, 2.0, 2.0))
        rows.append(iqms.IQMScorer(suffix="T1w").score(volume).values)
    for key in ("snr_wm", "snr_total", "snrd_wm", "snrd_total", "cnr", "fber"):
        series = [r[key] for r in rows]
        assert series[0] > series[1] > series[2], (key, series)
    assert rows[0]["cjv"] < rows[1]["cjv"] < rows[2]["cjv"]


def test_ghost_raises_qi1_and_efc(mni):
    clean = np.pad(mni, ((0, 0), (40, 40), (0, 0)))  # room for air along the phase axis
    ghosted = clean + 0.1 * np.roll(clean, clean.shape[1] // 2, axis=1)  # N/2 ghost, 10%
    scorer = iqms.IQMScorer(suffix="T1w")
    base = scorer.score(volume_from_array(_rician(clean, 10, np.random.default_rng(10)), (2, 2, 2)))
    worse = scorer.score(
        volume_from_array(_rician(ghosted, 10, np.random.default_rng(10)), (2, 2, 2))
    )
    assert base.values["qi1"] < 0.001
    assert worse.values["qi1"] > 0.05
    assert worse.values["efc"] > base.values["efc"]
    assert worse.values["snrd_wm"] < base.values["snrd_wm"]  # the ghost inflates the air spread


def test_suffix_from_constructor_or_call():
    rng = np.random.default_rng(11)
    shape = (48, 48, 48)
    clean = np.zeros(shape)
    head = _ball(shape, 20)
    clean[head] = 100.0
    clean[_ball(shape, 14)] = 200.0
    clean[_ball(shape, 8)] = 300.0
    volume = volume_from_array(_rician(clean, 5.0, rng), (1.0, 1.0, 1.0))
    t2 = iqms.IQMScorer(suffix="T2w").score(volume).values
    t1 = iqms.IQMScorer(suffix="T2w").score(volume, suffix="T1w").values
    unknown = iqms.IQMScorer().score(volume).values
    assert t2["summary_wm_median"] < t2["summary_csf_median"]
    assert t1["summary_wm_median"] > t1["summary_csf_median"]
    assert t2["cjv"] != pytest.approx(t1["cjv"])  # a different tissue pair
    assert unknown["tissue_order"].startswith("csf<gm<wm (assumed")
    assert unknown["cjv"] == pytest.approx(t1["cjv"])


def test_head_filling_the_field_of_view_gives_nan_with_reasons():
    rng = np.random.default_rng(12)
    img = 500.0 + rng.normal(0, 20, (40, 40, 40))
    img[18:22, 18:22, 18:22] = 50.0  # a dark spot inside: head fills everything
    values = iqms.IQMScorer(suffix="T1w").score(volume_from_array(img)).values
    for key in ("qi1", "fber", "snrd_wm", "summary_air_mean", "summary_air_std"):
        assert math.isnan(values[key]), key
        assert values[f"{key}_note"].startswith("no air region: the head fills"), key
    assert values["summary_air_n"] == 0
    assert math.isfinite(values["efc"]) and math.isfinite(values["snr_wm"])
    # Every NaN comes with its note.
    for key, value in values.items():
        if isinstance(value, float) and math.isnan(value):
            assert f"{key}_note" in values


def test_zero_filled_background_is_named(mni):
    masked = np.where(mni > 1.0, mni, 0.0)  # brain-only template with an exact-zero background
    values = iqms.IQMScorer(suffix="T1w").score(volume_from_array(masked, (2, 2, 2))).values
    assert math.isnan(values["qi1"])
    assert "zero-filled" in values["qi1_note"]
    assert math.isfinite(values["cjv"]) and math.isfinite(values["wm2max"])


def test_unusable_image_raises_scan_error():
    img = np.zeros((40, 40, 40), np.float32)
    img[::7, ::7, ::7] = 100.0  # isolated specks: no head survives the opening
    with pytest.raises(ScanError) as err:
        iqms.IQMScorer().score(volume_from_array(img))
    assert err.value.stage == "score" and "no head" in err.value.message


def test_header_scorer_flags_thick_slices():
    vol = volume_from_array(np.random.default_rng(13).uniform(0, 1, (64, 64, 20)), (0.7, 0.7, 5.0))
    v = iqms.HeaderScorer().score(vol).values
    assert (v["vox_x"], v["vox_y"], v["vox_z"]) == pytest.approx((0.7, 0.7, 5.0))
    assert v["slice_thickness"] == pytest.approx(5.0)
    assert v["inplane_resolution"] == pytest.approx(0.7)
    assert v["anisotropy"] == pytest.approx(5.0 / 0.7)
    assert v["n_slices"] == 20
    assert (v["fov_x"], v["fov_y"], v["fov_z"]) == pytest.approx((44.8, 44.8, 100.0))
    assert v["acquisition"] == "2D" and v["acquisition_plane"] == "axial"
    assert v["voxel_size"] == "0.70x0.70x5.00"

    coronal = volume_from_array(
        np.random.default_rng(14).uniform(0, 1, (64, 12, 64)), (0.5, 4.0, 0.5)
    )
    c = iqms.HeaderScorer().score(coronal).values
    assert c["acquisition_plane"] == "coronal" and c["n_slices"] == 12
    assert c["inplane_resolution"] == pytest.approx(0.5)

    iso = iqms.HeaderScorer().score(volume_from_array(np.ones((8, 8, 8)) * np.arange(8), (1, 1, 1)))
    assert iso.values["acquisition"] == "3D" and iso.values["acquisition_plane"] == "n/a"
    assert iso.values["anisotropy"] == pytest.approx(1.0)


def test_scorers_come_from_the_registry():
    names = {e.name: e.target for e in REGISTRY}
    assert names["header"] == "bids_qa.iqms:HeaderScorer"
    header, iqm = build_scorers(["header", "iqm"], device="cpu", batch_size=8)
    assert isinstance(header, iqms.HeaderScorer) and isinstance(iqm, iqms.IQMScorer)
    assert isinstance(iqm, Scorer) and iqm.name == "iqm" and iqm.version
    assert iqms.IQMScorer(device="cuda", batch_size=4).suffix is None  # extra kwargs ignored
