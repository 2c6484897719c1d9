"""Every kind of bad input gets an error row (or a warning) and the run goes on.

One plain-NIfTI folder holds a good scan and one file per failure mode; a single participant run
assesses all of them, and each test reads one scan's outputs back.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import noisy, read_tsv, snapshot, write_nifti

from bids_qa.cli import main
from bids_qa.derivatives import safe_stem


def _valid_gz(path: Path, data: np.ndarray) -> bytes:
    write_nifti(path, data)
    return path.read_bytes()


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, mni_small):
    """Build the folder, run the participant level once, return (input, output, exit code, seconds)."""
    root = tmp_path_factory.mktemp("bad") / "input"
    good = noisy(mni_small, 0.02, seed=1)
    write_nifti(root / "sub-01_T1w.nii.gz", good)

    raw = _valid_gz(root / "sub-02_T1w.nii.gz", noisy(mni_small, 0.02, seed=2))
    corrupt = bytearray(raw)
    middle = len(corrupt) // 2
    corrupt[middle : middle + 64] = bytes(64)  # damage the deflate stream
    (root / "sub-02_T1w.nii.gz").write_bytes(bytes(corrupt))

    (root / "sub-03_T1w.nii.gz").write_bytes(b"")

    raw = _valid_gz(root / "sub-04_T1w.nii.gz", good)
    (root / "sub-04_T1w.nii.gz").write_bytes(raw[: int(len(raw) * 0.6)])

    write_nifti(root / "sub-05_T1w.nii", good)
    whole = (root / "sub-05_T1w.nii").read_bytes()
    (root / "sub-05_T1w.nii").write_bytes(whole[: len(whole) // 2])

    write_nifti(root / "sub-06_T1w.nii.gz", np.stack([good] * 3, axis=-1), zooms=(4, 4, 4, 2))
    write_nifti(root / "sub-07_T1w.nii.gz", good[..., None], zooms=(4, 4, 4, 2))
    write_nifti(root / "sub-08_T1w.nii.gz", good[:, :, 20])

    with_nan = good.copy()
    with_nan[0, 0, :5] = np.nan
    with_nan[1, 1, :5] = np.inf
    nib.save(
        nib.Nifti1Image(with_nan * 1000, np.diag([4, 4, 4, 1.0])), str(root / "sub-09_T1w.nii.gz")
    )
    nib.save(
        nib.Nifti1Image(np.full(good.shape, np.nan, np.float32), np.diag([4, 4, 4, 1.0])),
        str(root / "sub-10_T1w.nii.gz"),
    )
    write_nifti(root / "sub-11_T1w.nii.gz", np.full(good.shape, 0.5, np.float32))

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((30000, 30000, 30000))
    header["vox_offset"] = 352
    (root / "sub-12_T1w.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1024)

    write_nifti(root / "sub-13_T1w.nii.gz", good)
    (root / "sub-13_T1w.json").write_text('{"Manufacturer": "X",,}', encoding="utf-8")

    (root / "sub-14_T1w.nii.gz").write_text("this is not an image\n", encoding="utf-8")
    (root / "sub-15_T1w.nii").write_bytes(gzip.compress(b"<html>not nifti</html>" * 20))

    write_nifti(root / "sub-16_acq-a b_T1w.nii.gz", good)
    write_nifti(root / "sub-17_acq-é_T1w.nii.gz", good)
    write_nifti(root / "sub-01_acq-<b>x</b>_T1w.nii.gz", good)  # '/' in '</b>' makes a folder
    write_nifti(root / "<script>alert(1)</script>" / "scan_T1w.nii.gz", good)

    write_nifti(root / "sub-18_T1w.nii.gz", good, zooms=(1e6, 1e6, 1e6))
    write_nifti(root / "sub-19_T1w.nii", good)
    (root / "sub-19_T1w.nii").rename(root / "sub-19_T1w.nii.gz")  # plain bytes, .gz name
    (root / "sub-20_T1w.nii.gz").symlink_to("annex/objects/missing.nii.gz")  # not fetched
    (root / "sub-21_T1w.nii.gz").symlink_to("sub-21_T1w.nii.gz")  # loops on itself

    before = snapshot(root)
    out = root.parent / "out"
    start = time.perf_counter()
    code = main([str(root), str(out), "participant", "--no-reports", "--nprocs", "2", "-q"])
    seconds = time.perf_counter() - start
    assert snapshot(root) == before, "the input folder must never be written to"
    return root, out, code, seconds


def outputs(out: Path, stem: str, subject: str | None = None) -> tuple[dict, list[dict[str, str]]]:
    folder = out / f"sub-{subject}" / "anat" if subject else out
    sidecar = json.loads((folder / f"{stem}_qa.json").read_text(encoding="utf-8"))
    return sidecar, read_tsv(folder / f"{stem}_qa.tsv")


def assert_error(out: Path, stem: str, subject: str, *fragments: str) -> dict:
    sidecar, rows = outputs(out, stem, subject)
    assert sidecar["verdict"] == "error"
    assert len(sidecar["errors"]) == 1 and sidecar["errors"][0]["stage"] == "load"
    message = sidecar["errors"][0]["message"]
    for fragment in fragments:
        assert fragment in message, message
    shown = re.sub(r"[\t\r\n]+", " ", message)  # TSV cells hold no line breaks
    assert rows == [
        {
            "model": "error",
            "metric": "load",
            "value": shown,
            "threshold": "",
            "flag": "error",
            "direction": "",
        }
    ]
    return sidecar


def test_run_completes_with_exit_0(bad_run):
    _, out, code, seconds = bad_run
    assert code == 0
    assert len(list(out.rglob("*_qa.json"))) == 22  # the looping link is skipped
    assert seconds < 120


def test_good_scan_is_assessed(bad_run):
    sidecar, rows = outputs(bad_run[1], "sub-01_T1w", "01")
    assert sidecar["verdict"] in {"pass", "review", "fail"} and sidecar["errors"] == []
    assert any(r["model"] == "iqm" for r in rows)


def test_corrupt_gzip(bad_run):
    assert_error(bad_run[1], "sub-02_T1w", "02", "sub-02_T1w.nii.gz")


def test_zero_byte_file(bad_run):
    assert_error(bad_run[1], "sub-03_T1w", "03", "empty (zero-byte) file")


def test_truncated_gzip(bad_run):
    assert_error(bad_run[1], "sub-04_T1w", "04", "sub-04_T1w.nii.gz")


def test_truncated_uncompressed(bad_run):
    sidecar = assert_error(bad_run[1], "sub-05_T1w", "05", "sub-05_T1w.nii")
    assert sidecar["scan"]["shape"] == [50, 59, 48]  # header facts survive for the error report


def test_4d_series_is_an_error(bad_run):
    sidecar = assert_error(bad_run[1], "sub-06_T1w", "06", "4D series of 3 volumes")
    assert sidecar["scan"]["shape"] == [50, 59, 48, 3]


def test_single_volume_4d_is_squeezed(bad_run):
    sidecar, rows = outputs(bad_run[1], "sub-07_T1w", "07")
    assert sidecar["errors"] == [] and sidecar["scan"]["shape"] == [50, 59, 48]


def test_2d_image(bad_run):
    assert_error(bad_run[1], "sub-08_T1w", "08", "2D")


def test_some_nan_inf_voxels_are_a_warning(bad_run):
    sidecar, _ = outputs(bad_run[1], "sub-09_T1w", "09")
    assert sidecar["errors"] == []
    assert any("10 NaN/Inf voxels set to 0" in w for w in sidecar["warnings"])


def test_all_nan_image(bad_run):
    assert_error(bad_run[1], "sub-10_T1w", "10", "NaN or Inf")


def test_constant_image(bad_run):
    assert_error(bad_run[1], "sub-11_T1w", "11", "constant")


def test_absurd_dimensions_are_refused_before_allocating(bad_run):
    sidecar = assert_error(bad_run[1], "sub-12_T1w", "12", "refusing to allocate")
    assert sidecar["scan"]["shape"] == [30000, 30000, 30000]


def test_malformed_sidecar_is_a_warning(bad_run):
    sidecar, rows = outputs(bad_run[1], "sub-13_T1w", "13")
    assert sidecar["errors"] == [] and sidecar["verdict"] in {"pass", "review", "fail"}
    assert any("sub-13_T1w.json could not be read" in w for w in sidecar["warnings"])
    assert sidecar["scan"]["metadata"] == {}


@pytest.mark.parametrize("stem, subject", [("sub-14_T1w", "14"), ("sub-15_T1w", "15")])
def test_non_nifti_content_with_nifti_name(bad_run, stem, subject):
    assert_error(bad_run[1], stem, subject, "not a readable NIfTI image")


def test_space_in_name(bad_run):
    stem = safe_stem("sub-16_acq-a b_T1w")
    assert " " not in stem
    sidecar, _ = outputs(bad_run[1], stem, "16")
    assert sidecar["scan_id"] == "sub-16_acq-a b_T1w" and sidecar["errors"] == []
    assert sidecar["scan"]["entities"]["acquisition"] == "ab"  # labels keep alphanumerics only


def test_unicode_name(bad_run):
    sidecar, _ = outputs(bad_run[1], "sub-17_acq-é_T1w", "17")
    assert sidecar["errors"] == [] and sidecar["scan"]["entities"]["acquisition"] == "é"


def test_html_characters_in_names(bad_run):
    root, out, _, _ = bad_run
    stem = safe_stem("sub-01_acq-<b>x<_b>_T1w")
    sidecar, _ = outputs(out, stem, "01")
    assert sidecar["scan"]["source"] == "sub-01_acq-<b>x</b>_T1w.nii.gz"
    assert sidecar["scan_id"] == "sub-01_acq-<b>x<_b>_T1w" and sidecar["errors"] == []
    script = (
        out
        / "nonbids"
        / safe_stem("<script>alert(1)<")
        / safe_stem("script>")
        / f"{safe_stem('<script>alert(1)<_script>_scan_T1w')}_qa.json"
    )
    assert (
        json.loads(script.read_text(encoding="utf-8"))["scan"]["source"]
        == "<script>alert(1)</script>/scan_T1w.nii.gz"
    )
    for path in out.rglob("*"):
        assert not set(path.relative_to(out).as_posix()) & set("<>\"' "), path


def test_group_level_includes_error_rows(bad_run):
    _, out, _, _ = bad_run
    assert main([str(bad_run[0]), str(out), "group", "--no-reports", "-q"]) == 0
    rows = read_tsv(out / "group_T1w.tsv")
    by_id = {r["scan_id"]: r for r in rows}
    assert len(rows) == 22
    assert by_id["sub-03_T1w"]["verdict"] == "error"
    assert (
        by_id["sub-03_T1w"]["reasons"]
        == "error [load]: sub-03_T1w.nii.gz is an empty (zero-byte) file"
    )
    assert by_id["sub-03_T1w"]["iqm.efc"] == "n/a"
    assert by_id["sub-01_acq-<b>x<_b>_T1w"]["verdict"] != "error"


def test_absurd_voxel_sizes_are_refused_before_allocating(bad_run):
    sidecar = assert_error(bad_run[1], "sub-18_T1w", "18", "voxel sizes", "refusing")
    assert sidecar["scan"]["zooms"][:3] == [1e6, 1e6, 1e6]


def test_uncompressed_file_named_nii_gz_is_read_with_a_warning(bad_run):
    sidecar, rows = outputs(bad_run[1], "sub-19_T1w", "19")
    assert sidecar["errors"] == [] and sidecar["verdict"] in {"pass", "review", "fail"}
    assert any("not gzip-compressed" in w for w in sidecar["warnings"])
    assert any(r["model"] == "iqm" for r in rows)


def test_dangling_link_says_the_target_is_missing(bad_run):
    assert_error(
        bad_run[1], "sub-20_T1w", "20", "symbolic link whose target is missing", "datalad get"
    )


def test_link_loop_is_skipped_not_fatal(bad_run):
    assert bad_run[2] == 0
    assert not (bad_run[1] / "sub-21").exists()
