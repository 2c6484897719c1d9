"""The light load path (issue 25): lazy reorientation, one-pass normalisation in the file's memory
order, percentiles on a strided subsample, pooling without a transposed copy.

Tolerance of the subsampled percentiles (:func:`bids_qa.volume.normalisation_range`): each of the
two anchors within :data:`PERCENTILE_TOL` of the normalised range (``hi - lo``) of the exact,
whole-volume percentiles, so a normalised intensity moves by at most about ``2 * PERCENTILE_TOL``
(checked directly, :data:`INTENSITY_TOL`). Everything else is exact: reorienting by views and
writing in memory order must give bit-identical arrays to ``nibabel.as_closest_canonical`` followed
by a C-ordered copy, which is what the loader did before.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import noisy

from bids_qa.errors import ScanError
from bids_qa.volume import (
    NORM_CLIP,
    cube_at_spacing,
    head_mask,
    load_volume,
    normalisation_range,
    normalise,
    pool_in_memory_order,
    slices_at_spacing,
)

PERCENTILE_TOL = 0.005
INTENSITY_TOL = 0.01


def _exact_normalised(raw: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The normalisation with whole-volume percentiles (the definition the subsample estimates)."""
    lo = float(np.percentile(raw, 0.5))
    hi = float(np.percentile(raw[mask], 99))
    out = np.clip((raw.astype(np.float32) - np.float32(lo)) * np.float32(1 / (hi - lo)), *NORM_CLIP)
    return out, lo, hi


@pytest.fixture(scope="module")
def mni_1mm() -> np.ndarray:
    """nilearn's MNI152 T1w template at 1 mm (197x233x189: the subsample reads every 2nd voxel)."""
    from bids_qa.demo import template_maps

    t1 = template_maps(1.0)[0]
    return noisy(t1 / float(np.percentile(t1[t1 > 0.2], 95)), 0.02, seed=3) * 1000


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    """An ellipsoid head (two intensity shells) in Rician noise, 200x220x180 voxels."""
    grid = np.mgrid[:200, :220, :180].astype(np.float32)
    r = np.sqrt(((grid[0] - 100) / 80) ** 2 + ((grid[1] - 110) / 95) ** 2 + ((grid[2] - 90) / 70) ** 2)
    img = np.where(r < 1, 0.6, 0.0) + np.where(r < 0.7, 0.4, 0.0)
    return noisy(img.astype(np.float32), 0.03, seed=5) * 800


@pytest.mark.parametrize("name", ["mni_1mm", "phantom"])
def test_subsampled_percentiles_within_tolerance_of_exact(name, request):
    raw = request.getfixturevalue(name)
    mask = head_mask(raw)
    lo, hi = normalisation_range(raw, mask)
    exact, lo_x, hi_x = _exact_normalised(raw, mask)
    span = hi_x - lo_x
    assert abs(lo - lo_x) <= PERCENTILE_TOL * span, (lo, lo_x)
    assert abs(hi - hi_x) <= PERCENTILE_TOL * span, (hi, hi_x)
    data, _ = normalise(raw, mask)
    assert float(np.abs(data - exact).max()) <= INTENSITY_TOL
    # and the approximation is not trivially exact: the subsample is a real subsample here
    assert (lo, hi) != (lo_x, hi_x)


def test_normalise_keeps_memory_order_and_values(mni_1mm):
    c_order = np.ascontiguousarray(mni_1mm)
    f_view = np.asfortranarray(c_order)[::-1, :, ::-1]  # a flipped, Fortran-ordered view
    ref, ref_mask = normalise(np.ascontiguousarray(f_view))
    got, got_mask = normalise(f_view)
    assert got.dtype == np.float32 and ref.flags.c_contiguous
    assert got.flags.f_contiguous and got_mask.flags.f_contiguous
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got_mask, ref_mask)
    assert float(got.min()) == NORM_CLIP[0] and float(got.max()) <= NORM_CLIP[1]


@pytest.mark.parametrize(
    "affine_axes",
    [
        ((1, 0), (1, 1), (1, 2)),  # already RAS
        ((-1, 0), (-1, 1), (1, 2)),  # LPS (radiological clinical export)
        ((1, 2), (-1, 0), (-1, 1)),  # axes permuted and flipped (sagittal-first)
    ],
)
def test_load_matches_as_closest_canonical_exactly(tmp_path, mni_small, affine_axes):
    """Lazy reorientation by views gives bit-identical raw, data, mask, affine and zooms to the
    copy made by ``nibabel.as_closest_canonical`` then normalised as a C-ordered array."""
    arr = np.clip(np.round(noisy(mni_small, 0.03, seed=1) * 1000), 0, 32767).astype(np.int16)
    zooms = (2.0, 3.0, 4.0)
    affine = np.zeros((4, 4))
    for row, (sign, col) in enumerate(affine_axes):
        affine[row, col] = sign * zooms[col]
    affine[3, 3] = 1.0
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), str(path))

    canonical = nib.as_closest_canonical(nib.load(str(path)))
    raw_ref = np.ascontiguousarray(np.asanyarray(canonical.dataobj, dtype=np.float32))
    data_ref, mask_ref = normalise(raw_ref)
    volume = load_volume(path)
    np.testing.assert_array_equal(volume.raw, raw_ref)
    np.testing.assert_array_equal(volume.data, data_ref)
    np.testing.assert_array_equal(volume.mask, mask_ref)
    np.testing.assert_array_equal(volume.affine, canonical.affine)
    assert volume.zooms == tuple(float(z) for z in canonical.header.get_zooms()[:3])
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    # the stored voxels were not copied into a C-ordered array: raw is (a view of) the file's
    assert not volume.raw.flags.c_contiguous
    # views built on the memory-ordered data equal those built on a C-ordered copy
    np.testing.assert_array_equal(
        volume.spacing_stack(32, 4.0),
        slices_at_spacing(data_ref, mask_ref, volume.zooms, volume.slice_axis, 32, 4.0),
    )
    np.testing.assert_array_equal(
        volume.cube(16, 6.0), cube_at_spacing(data_ref, mask_ref, volume.zooms, 16, 6.0)
    )


@pytest.mark.parametrize("kernel", [[2, 2, 2], [1, 2, 3], [3, 1, 2]])
def test_pool_in_memory_order_is_bit_identical_to_torch(kernel):
    rng = np.random.default_rng(0)
    base = (rng.random((33, 40, 27)) * 1000).astype(np.float32)
    for arr in (base, np.asfortranarray(base), base.transpose(2, 0, 1), np.asfortranarray(base)[::-1, :, ::-1]):
        ref = F.avg_pool3d(
            torch.from_numpy(np.ascontiguousarray(arr))[None, None], kernel, kernel, ceil_mode=True
        )
        got = pool_in_memory_order(arr, kernel)
        assert got.shape == ref.shape and got.is_contiguous()
        assert torch.equal(got, ref)


def test_constant_image_is_refused_with_its_value(tmp_path):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), 7, np.int16), np.eye(4)), str(path))
    with pytest.raises(ScanError, match="every voxel is 7"):
        load_volume(path)


def test_integer_storage_skips_the_finite_check_but_float_nans_are_zeroed(tmp_path, mni_small):
    data = noisy(mni_small, 0.02, seed=2).astype(np.float32)
    data[0, 0, :5] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    volume = load_volume(path)
    assert np.isfinite(volume.raw).all() and float(volume.raw[0, 0, 0]) == 0.0
    assert any("NaN/Inf" in w for w in volume.warnings)
