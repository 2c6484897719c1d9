"""Damage-based severity (bids_qa.damage): rises with what an artifact visibly changed."""

import numpy as np
import pytest

from bids_qa import artifacts as A
from bids_qa.damage import (
    KNOT_LEVELS,
    damage_label,
    damage_severity,
    fit_calibration,
    packaged_calibration,
    slice_ssim,
    structural_damage,
)
from bids_qa.similarity import realised_change


def phantom(shape=(40, 44, 36)):
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt(((grid / 0.85) ** 2).sum(0))
    img = np.where(r < 1.0, 0.5, 0.0) + np.where(r < 0.6, 0.4, 0.0)
    img = img + 0.1 * (r < 1.0) * np.sin(6 * grid[0]) * np.cos(5 * grid[1])  # texture
    return img.astype(np.float32), r < 1.0


@pytest.mark.parametrize("artifact", A.SEVERITY_ARTIFACTS)
def test_damage_rises_with_visible_change(artifact):
    img, mask = phantom()
    damages, labels, changes = [], [], []
    for s in (0.2, 0.5, 0.9):
        params = A.sample_params(artifact, np.random.default_rng(3), s, ndim=3)
        if "axis" in params:
            params["axis"] = 0
        if artifact == "ghosting":  # the same ghosts, stronger (the SS draw changes their number)
            params.update(num_ghosts=4, intensity=1.5 * s)
        bad = A.apply_artifact(img, artifact, params, (1.0, 1.0, 1.0))
        d, ss = damage_label(artifact, img, bad, mask)
        damages.append(d)
        labels.append(ss)
        changes.append(realised_change(img, bad, mask))
    order = np.argsort(changes)
    assert np.all(np.diff(np.asarray(damages)[order]) > 0), (damages, changes)
    assert np.all(np.diff(np.asarray(labels)[order]) >= 0), (labels, changes)
    assert 0.0 < labels[-1] <= 1.0


def test_unchanged_image_has_no_damage():
    img, mask = phantom()
    assert structural_damage(img, img, mask) == pytest.approx(0.0, abs=1e-6)
    assert damage_label("none", img, img + 1, mask) == (0.0, 0.0)
    assert slice_ssim(img, img, mask, 2) == pytest.approx(1.0, abs=1e-6)


def test_calibration_is_monotone_and_bounded():
    cal = packaged_calibration()
    for dim in ("2d", "3d"):
        for artifact in (*A.SEVERITY_ARTIFACTS, "bias+noise", "contrast"):
            d = np.linspace(0, 1.2, 50)
            ss = [damage_severity(artifact, float(v), int(dim[0]), cal) for v in d]
            assert ss[0] == 0.0 and ss[-1] == 1.0
            assert np.all(np.diff(ss) >= 0)


def test_fit_calibration_maps_deciles_to_levels():
    rng = np.random.default_rng(0)
    samples = {"3d": {"noise": list(rng.uniform(0, 0.5, 1000))}}
    cal = {"knots": fit_calibration(samples)}
    assert len(cal["knots"]["3d"]["noise"]) == len(KNOT_LEVELS)
    assert damage_severity("noise", 0.25, 3, cal) == pytest.approx(0.5, abs=0.05)
    assert damage_severity("noise", 0.6, 3, cal) == 1.0
