"""Scores must not depend on how the work is split: ``--nprocs``, ``--batch-size`` and
``--scan-batch`` (issue 10).

Tolerance: every number written (``*_qa.tsv`` values and thresholds, ``*_slices.tsv`` per-slice
values, ruler scores in ``*_qa.json``) must agree within ``rel 1e-4`` or ``abs 1e-5``
(:data:`REL_TOL`, :data:`ABS_TOL`); text (classes, flags, verdicts) and integers (slice indices,
counts) must agree exactly. Why not bit-identical: a forward pass over a differently composed
batch, or with a different number of torch threads, may sum in another order (float32); the
largest difference measured on the shipped models is about 3e-6 relative.

The four runs form an orthogonal array over nprocs {1, 2}, batch size {3, 64} and scan batch
{1, 3}: every pair of levels of any two settings is run once, in 4 runs instead of 8.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import VOXEL_MM, noisy, write_nifti

from bids_qa.cli import main
from bids_qa.scoring import REGISTRY

REL_TOL = 1e-4
ABS_TOL = 1e-5

#: (nprocs, batch size, scan batch): the L4 orthogonal array.
SETTINGS = [(1, 64, 1), (1, 3, 3), (2, 64, 3), (2, 3, 1)]


@pytest.fixture(scope="module")
def four_scans(tmp_path_factory, mni_small: np.ndarray) -> Path:
    """Four T1w scans: three 4 mm volumes at different noise levels and one thick-slice
    (4x4x8 mm) volume, so a group of three mixes scans with different numbers of slices."""
    root = tmp_path_factory.mktemp("invariance") / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "invariance", "BIDSVersion": "1.9.0"}), encoding="utf-8"
    )
    for i, sigma in enumerate((0.02, 0.06, 0.12), start=1):
        write_nifti(root / f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz", noisy(mni_small, sigma, seed=i))
    thick = noisy(mni_small[:, :, ::2], 0.03, seed=9)
    write_nifti(
        root / "sub-04/anat/sub-04_T1w.nii.gz", thick, zooms=(VOXEL_MM, VOXEL_MM, 2 * VOXEL_MM)
    )
    return root


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _outputs(out: Path) -> dict[str, object]:
    """Every written table (per scan and per slice) and the ruler scores, by relative path."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*_qa.tsv")) + sorted(out.rglob("*_slices.tsv")):
        found[path.relative_to(out).as_posix()] = _read_tsv(path)
    for path in sorted(out.rglob("*_qa.json")):
        sidecar = json.loads(path.read_text(encoding="utf-8"))
        found[path.relative_to(out).as_posix()] = {
            "verdict": sidecar["verdict"],
            "errors": sidecar["errors"],
            "rulers": {
                name: [level["score"] for level in ruler["levels"]]
                for name, ruler in sidecar.get("rulers", {}).items()
            },
        }
    return found


def _same(a: object, b: object, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, str) and isinstance(b, str):
        try:
            x, y = float(a), float(b)
        except ValueError:
            assert a == b, (where, a, b)
            return
        if a.lstrip("-").isdigit():  # integers (slice indices, counts) must match exactly
            assert a == b, (where, a, b)
        elif math.isnan(x):
            assert math.isnan(y), (where, a, b)
        else:
            assert math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL), (where, a, b)
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL), (where, a, b)
    else:
        assert a == b, (where, a, b)


def test_nprocs_batch_size_and_scan_batch_do_not_change_scores(four_scans, tmp_path):
    runs = {}
    for nprocs, batch, scan_batch in SETTINGS:
        out = tmp_path / f"n{nprocs}-b{batch}-s{scan_batch}"
        argv = [str(four_scans), str(out), "participant", "--no-reports", "-q", "--device", "cpu"]
        argv += ["--nprocs", str(nprocs), "--batch-size", str(batch), "--scan-batch", str(scan_batch)]
        assert main(argv) == 0
        runs[out.name] = _outputs(out)
        sidecar = json.loads((out / "sub-01/anat/sub-01_T1w_qa.json").read_text(encoding="utf-8"))
        config = sidecar["provenance"]["config"]
        assert (config["nprocs"], config["batch_size"], config["scan_batch"]) == (
            nprocs,
            batch,
            scan_batch,
        )

    reference_name, reference = next(iter(runs.items()))
    assert len([k for k in reference if k.endswith("_qa.tsv")]) == 4
    rows = reference["sub-04/anat/sub-04_T1w_qa.tsv"]
    models = {row["model"] for row in rows}  # type: ignore[union-attr]
    installed = {e.name for e in REGISTRY if e.available()}
    assert {"header", "iqm"} <= installed <= models and "error" not in models
    assert any(k.endswith("_slices.tsv") for k in reference) == bool(installed - {"header", "iqm"})
    for name, outputs in runs.items():
        assert outputs.keys() == reference.keys(), name
        _same(reference, outputs, f"{reference_name} vs {name}")
