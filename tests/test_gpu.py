"""CUDA: the deep scorers give the same answers on the GPU as on the CPU, and ``--device auto``
picks the GPU.

Marked ``cuda`` and skipped where torch sees no CUDA device (CI and the development machines have
none; run ``pytest -m cuda tests/test_gpu.py`` on a GPU node). On CUDA the scorers run under
``torch.autocast`` (float16 matrix products with float32 accumulation), so values are compared with
a tolerance: ``|gpu - cpu| <= RTOL * max(|cpu|, FLOOR)``, with RTOL = 1e-2 (1 %) and FLOOR = 1 so
that values near zero are held to an absolute 1e-2. Integer and text values (flags, classes) must
agree exactly, except a slice index whose two slices score alike within that tolerance (a tie).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import noisy, write_nifti

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
]

#: Relative tolerance of CPU/CUDA agreement under mixed precision.
RTOL = 1e-2
#: Values smaller than this in magnitude are compared with the absolute tolerance RTOL * FLOOR.
FLOOR = 1.0


def _deep_entries() -> list:
    """The installed deep scorers, or one skipped parameter saying that none is installed."""
    from bids_qa.scoring import REGISTRY

    entries = [e for e in REGISTRY if e.needs_weights is not None and e.available()]
    return entries or [pytest.param(None, id="none", marks=pytest.mark.skip(
        reason="no model weights installed (bids_qa/weights/*.safetensors): no deep scorer to compare"))]


def _close(cpu: float, gpu: float) -> bool:
    return abs(gpu - cpu) <= RTOL * max(abs(cpu), FLOOR)


def _near_tie(scores, a: int, b: int) -> bool:
    """Whether slices ``a`` and ``b`` score alike (within tolerance) in some per-slice array, so that
    an arg-max slice index (e.g. ``worst_slice``) may legitimately differ between devices."""
    index = scores.per_slice.get("slice_index")
    if index is None:
        return False
    pos_a, pos_b = np.flatnonzero(index == a), np.flatnonzero(index == b)
    if not (pos_a.size and pos_b.size):
        return False
    return any(_close(float(arr[pos_a[0]]), float(arr[pos_b[0]]))
               for name, arr in scores.per_slice.items()
               if name != "slice_index" and np.issubdtype(arr.dtype, np.floating))


@pytest.fixture(scope="module")
def volume(mni_small: np.ndarray):
    """The 4 mm MNI template with mild Rician noise, as a loaded volume."""
    from bids_qa.volume import volume_from_array

    return volume_from_array(noisy(mni_small, 0.03, seed=11), zooms=(4.0, 4.0, 4.0))


def test_auto_device_resolves_to_cuda() -> None:
    from bids_qa.models.weights import resolve_device

    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("entry", _deep_entries(), ids=lambda e: getattr(e, "name", "none"))
def test_scorer_agrees_on_cpu_and_cuda(entry, volume) -> None:
    cpu = entry.build(device="cpu", batch_size=16).score(volume)
    gpu = entry.build(device="cuda", batch_size=16).score(volume)

    assert set(gpu.values) == set(cpu.values)
    for key, c in cpu.values.items():
        g = gpu.values[key]
        if isinstance(c, str):
            assert g == c, f"{entry.name}.{key}: cpu {c!r}, cuda {g!r}"
        elif isinstance(c, numbers.Integral):
            assert g == c or _near_tie(cpu, int(c), int(g)), f"{entry.name}.{key}: cpu {c!r}, cuda {g!r}"
        else:
            assert _close(float(c), float(g)), f"{entry.name}.{key}: cpu {c}, cuda {g} (rtol {RTOL})"

    assert set(gpu.per_slice) == set(cpu.per_slice)
    for key, c in cpu.per_slice.items():
        g = gpu.per_slice[key]
        assert g.shape == c.shape, key
        if np.issubdtype(c.dtype, np.integer):
            np.testing.assert_array_equal(g, c, err_msg=f"{entry.name} per-slice {key}")
        else:
            scale = max(float(np.max(np.abs(c))), FLOOR)
            np.testing.assert_allclose(g, c, rtol=0, atol=RTOL * scale, err_msg=f"{entry.name} per-slice {key}")


def test_participant_run_with_auto_device_uses_cuda(tmp_path: Path, mni_small: np.ndarray,
                                                    bids_factory: Callable[..., Path]) -> None:
    import json

    from bids_qa import cli

    bids = bids_factory(scans=["sub-01/anat/sub-01_T1w.nii.gz"], extras=False)
    write_nifti(bids / "sub-02/anat/sub-02_T1w.nii.gz", noisy(mni_small, 0.1, seed=3))
    out = tmp_path / "qa"
    assert cli.main([str(bids), str(out), "participant", "--device", "auto", "--no-reports"]) == 0
    for label in ("01", "02"):
        sidecar = json.loads((out / f"sub-{label}/anat/sub-{label}_T1w_qa.json").read_text(encoding="utf-8"))
        assert sidecar["provenance"]["device"].startswith("cuda"), sidecar["provenance"]
        assert sidecar["verdict"] in {"pass", "review", "fail"}
