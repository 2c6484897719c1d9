"""Shared fixtures: small synthetic datasets built from nilearn's MNI template (offline, no real data).

Volumes are the 1 mm template resampled to 4 mm (50x59x48 voxels) with Rician noise added, so
every pipeline run in the tests takes a fraction of a second per scan.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

VOXEL_MM = 4.0
#: Runs the tests start with ``subprocess`` use this interpreter and the package in this checkout.
PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mni_small() -> np.ndarray:
    """nilearn's MNI152 T1w template at 4 mm (50x59x48), white matter near 1, float32."""
    from bids_qa.demo import template_maps

    t1 = template_maps(VOXEL_MM)[0]
    return (t1 / float(np.percentile(t1[t1 > 0.2], 95))).astype(np.float32)


def noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Rician (magnitude) noise, so the air holds noise as in a real scan."""
    rng = np.random.default_rng(seed)
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


def write_nifti(
    path: Path, data: np.ndarray, zooms: Iterable[float] = (VOXEL_MM,) * 3, scale: float = 1000.0
) -> Path:
    """Save ``data * scale`` as int16 NIfTI with diagonal affine ``zooms`` (folders created)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    zooms = list(zooms)
    affine = np.diag([*zooms[:3], 1.0])
    arr = np.clip(np.round(np.asarray(data) * scale), -32768, 32767).astype(np.int16)
    img = nib.Nifti1Image(arr, affine)
    img.header.set_zooms(tuple(zooms[: arr.ndim]) + (1.0,) * max(0, arr.ndim - len(zooms)))
    nib.save(img, str(path))
    return path


def write_json(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


#: The default small BIDS dataset: 2 subjects, a session, a run, a T2w, a sidecar, and files that
#: must NOT be assessed (a BOLD series, a quantitative T1 map, a derivatives folder).
DEFAULT_SCANS = (
    "sub-01/anat/sub-01_T1w.nii.gz",
    "sub-01/anat/sub-01_T2w.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_run-1_T1w.nii.gz",
)


@pytest.fixture
def bids_factory(tmp_path: Path, mni_small: np.ndarray) -> Callable[..., Path]:
    """Build a BIDS dataset under ``tmp_path``: ``make(scans=..., root=..., extras=True)``.

    Every listed scan is the template with a little noise (different seed each); ``extras`` adds
    files discovery must ignore.
    """

    def make(
        scans: Iterable[str] = DEFAULT_SCANS,
        root: Path | None = None,
        extras: bool = True,
        description: bool = True,
    ) -> Path:
        root = root or tmp_path / "bids"
        root.mkdir(parents=True, exist_ok=True)
        if description:
            write_json(root / "dataset_description.json", {"Name": "test", "BIDSVersion": "1.9.0"})
        for i, rel in enumerate(scans):
            write_nifti(root / rel, noisy(mni_small, 0.02, seed=i))
        if extras:
            write_json(
                root / "sub-01/anat/sub-01_T1w.json",
                {"Manufacturer": "TestVendor", "MagneticFieldStrength": 3, "EchoTime": 0.003},
            )
            bold = np.stack([mni_small[::2, ::2, ::2]] * 3, axis=-1)
            write_nifti(root / "sub-01/func/sub-01_task-rest_bold.nii.gz", bold, zooms=(8, 8, 8, 2))
            write_nifti(root / "sub-01/anat/sub-01_T1map.nii.gz", mni_small)
            write_nifti(root / "derivatives/other/sub-01/anat/sub-01_T1w.nii.gz", mni_small)
        return root

    return make


@pytest.fixture
def small_bids(bids_factory: Callable[..., Path]) -> Path:
    """The default small BIDS dataset (3 structural scans)."""
    return bids_factory()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file and folder below ``folder``."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[path.relative_to(folder).as_posix()] = (
                st.st_size if name in filenames else 0,
                st.st_mtime_ns,
            )
    st = folder.stat()
    out["."] = (0, st.st_mtime_ns)
    return out


def read_tsv(path: Path) -> list[dict[str, str]]:
    """A TSV as a list of row dicts (strings, exactly as written)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
