"""Output names, atomic writes, resume, interrupted runs, concurrent jobs, and reading outputs back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PYTHON, REPO, read_tsv, snapshot, write_json

from bids_qa import derivatives as deriv
from bids_qa.cli import main
from bids_qa.discover import Scan
from bids_qa.scoring import unavailable_scorers


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def output_files(out: Path) -> dict[str, int]:
    """{relative path: mtime_ns} of the per-scan outputs."""
    return {
        p.relative_to(out).as_posix(): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and p.name.endswith(("_qa.json", "_qa.tsv", "_slices.tsv"))
    }


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".bqtmp-" in p.name]


# --------------------------------------------------------------------------------------------
# Names


def test_safe_stem():
    assert deriv.safe_stem("sub-01_ses-1_T1w") == "sub-01_ses-1_T1w"
    assert deriv.safe_stem("sub-01_acq-é_T1w") == "sub-01_acq-é_T1w"
    a, b = deriv.safe_stem("a b_T1w"), deriv.safe_stem("a_b_T1w")
    assert a.startswith("a_b_T1w_") and len(a) == len("a_b_T1w_") + 8 and a != b
    assert deriv.safe_stem("<script>").startswith("_script__")
    assert not deriv.safe_stem(".hidden").startswith(".")
    assert len(deriv.safe_stem("x" * 400).encode()) <= 160


def test_scan_paths_from_entities(tmp_path):
    out = tmp_path / "out"
    bids = Scan(
        Path("/d/sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz"),
        {"subject": "01", "session": "2", "suffix": "T1w"},
        root=Path("/d"),
    )
    paths = deriv.scan_paths(out, bids)
    assert paths.json == out / "sub-01/ses-2/anat/sub-01_ses-2_T1w_qa.json"
    assert (
        paths.tsv.name == "sub-01_ses-2_T1w_qa.tsv"
        and paths.slices.name == "sub-01_ses-2_T1w_slices.tsv"
    )
    assert (
        paths.report.name == "sub-01_ses-2_T1w_report.html"
        and paths.figures.name == "sub-01_ses-2_T1w_figures"
    )
    plain = Scan(Path("/d/site 1/x/head.nii"), {"suffix": "T1w"}, bids=False, root=Path("/d"))
    assert (
        deriv.scan_paths(out, plain).json
        == out / "nonbids" / deriv.safe_stem("site 1") / "x" / "head_qa.json"
    )


def test_colliding_plain_names_are_placed_by_folder(tmp_path):
    out = tmp_path / "out"
    scans = [
        Scan(
            Path(f"/d/{site}/sub-01_T1w.nii.gz"),
            {"subject": "01", "suffix": "T1w"},
            bids=False,
            root=Path("/d"),
        )
        for site in ("a", "b")
    ]
    scans.append(
        Scan(
            Path("/d/a/sub-01_T1w.nii"),
            {"subject": "01", "suffix": "T1w"},
            bids=False,
            root=Path("/d"),
        )
    )
    planned, warnings = deriv.plan_scan_paths(out, scans)
    assert [p.json.relative_to(out).as_posix() for _, p in planned] == [
        "nonbids/a/sub-01_T1w_qa.json",
        "nonbids/b/sub-01_T1w_qa.json",
    ]
    assert len(warnings) == 1 and "a/sub-01_T1w.nii skipped" in warnings[0]


# --------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "f.json"
    deriv.write_json(
        target, {"b": float("nan"), "a": np.float32(1.5), "c": [np.int64(2), Path("/x")]}
    )
    assert (
        target.read_text(encoding="utf-8")
        == '{\n  "a": 1.5,\n  "b": null,\n  "c": [\n    2,\n    "/x"\n  ]\n}\n'
    )
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_old_content_and_leaves_no_temp_file(tmp_path, monkeypatch, failure):
    target = tmp_path / "f.tsv"
    deriv.atomic_write_text(target, "old\n")

    def broken_replace(src, dst):
        assert (
            Path(src).exists() and ".bqtmp-" in Path(src).name
        )  # the new content is complete in the temp file
        raise failure

    monkeypatch.setattr(deriv.os, "replace", broken_replace)
    with pytest.raises(type(failure)):
        deriv.atomic_write_text(target, "new\n")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert temp_files(tmp_path) == []


def test_stale_temp_files_are_cleaned_but_live_ones_kept(tmp_path):
    host = deriv.host_tag()
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "a" / f".x_qa.json.bqtmp-{host}-{dead.pid}-00ab"
    live = tmp_path / "a" / f".y_qa.json.bqtmp-{host}-{os.getpid()}-00cd"
    foreign_new = tmp_path / ".z.bqtmp-otherhost-1-00ef"
    foreign_old = tmp_path / ".w.bqtmp-otherhost-1-0a0b"
    for path in (stale, live, foreign_new, foreign_old):
        path.parent.mkdir(exist_ok=True)
        path.write_text("partial", encoding="utf-8")
    old = time.time() - 3 * 86400
    os.utime(foreign_old, (old, old))
    assert deriv.cleanup_stale_temp(tmp_path) == 2
    assert sorted(p.name for p in temp_files(tmp_path)) == sorted([live.name, foreign_new.name])


def test_render_tsv_keeps_one_line_per_row():
    text = deriv.render_tsv(
        ["a", "b"], [{"a": "x\ty\nz", "b": float("inf")}, {"a": 0.123456789, "b": None}]
    )
    assert text == "a\tb\nx y z\tn/a\n0.123457\tn/a\n"


def test_dataset_description_names_the_container(tmp_path, monkeypatch):
    monkeypatch.delenv("APPTAINER_CONTAINER", raising=False)
    monkeypatch.setenv("SINGULARITY_CONTAINER", "/images/bids_qa_0.1.0.sif")
    path = deriv.write_dataset_description(tmp_path, tmp_path / "in")
    desc = json.loads(path.read_text(encoding="utf-8"))
    assert desc["GeneratedBy"][0]["Container"] == {
        "Type": "singularity",
        "Tag": "bids_qa_0.1.0.sif",
    }
    assert desc["SourceDatasets"] == [{"URL": (tmp_path / "in").as_uri()}]
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    deriv.write_dataset_description(tmp_path, tmp_path / "in")
    assert path.stat().st_mtime_ns == mtime  # identical content is not rewritten
    monkeypatch.delenv("SINGULARITY_CONTAINER")
    monkeypatch.delenv(deriv.IMAGE_MARKER_VAR, raising=False)
    # a pip install is never reported as a container, even inside one (/.dockerenv may exist)
    assert "Container" not in deriv.dataset_description()["GeneratedBy"][0]


def test_docker_container_needs_the_image_marker(monkeypatch):
    for var in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "container"):
        monkeypatch.delenv(var, raising=False)
    real_exists = Path.exists
    monkeypatch.setattr(
        Path, "exists", lambda self: str(self) == "/.dockerenv" or (
            str(self) != "/run/.containerenv" and real_exists(self))
    )
    monkeypatch.delenv(deriv.IMAGE_MARKER_VAR, raising=False)
    assert deriv.container_info() is None
    monkeypatch.setenv(deriv.IMAGE_MARKER_VAR, "bids_qa:0.1.0")
    assert deriv.container_info() == {"Type": "docker", "Tag": "bids_qa:0.1.0"}


def test_slice_rows_union_of_metrics():
    cols, rows = deriv.slice_rows(
        [
            (
                "severity",
                2,
                {"slice_index": np.array([3, 4]), "severity": np.array([0.5, 1.5], np.float32)},
            ),
            ("ssim", 1, {"ssim": np.array([0.9])}),
        ]
    )
    assert cols == ["model", "slice_axis", "slice_index", "severity", "ssim"]
    assert rows[1] == {"model": "severity", "slice_axis": 2, "slice_index": 4, "severity": 1.5}
    assert rows[2]["model"] == "ssim" and rows[2]["slice_index"] == 0 and "severity" not in rows[2]


# --------------------------------------------------------------------------------------------
# Resume


def test_resume_skips_finished_scans_and_redoes_changed_ones(small_bids, tmp_path):
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--no-reports") == 0
    first = output_files(out)
    per_slice = bool({"severity", "ssim", "flow"} - set(unavailable_scorers()))
    assert len(first) == 3 * (3 if per_slice else 2)  # _qa.json, _qa.tsv (+ _slices.tsv) per scan

    assert run(small_bids, out, "participant", "--no-reports") == 0
    assert output_files(out) == first
    log = sorted((out / "logs").glob("*.log"))[-1].read_text(encoding="utf-8")
    assert "3 scan(s) already done" in log

    source = small_bids / "sub-01/anat/sub-01_T2w.nii.gz"
    os.utime(source, ns=(time.time_ns(), time.time_ns()))
    assert run(small_bids, out, "participant", "--no-reports") == 0
    after_touch = output_files(out)
    changed = {k for k in first if after_touch[k] != first[k]}
    assert changed == {k for k in first if k.startswith("sub-01/anat/sub-01_T2w_")}  # that scan only
    assert {"sub-01/anat/sub-01_T2w_qa.json", "sub-01/anat/sub-01_T2w_qa.tsv"} <= changed

    assert run(small_bids, out, "participant", "--no-reports", "--overwrite") == 0
    assert all(output_files(out)[k] != after_touch[k] for k in first)

    thresholds = write_json(tmp_path / "t.json", {"default": {"iqm.efc": {"review": 0.99}}})
    before = output_files(out)
    assert run(small_bids, out, "participant", "--no-reports", "--thresholds", thresholds) == 0
    assert all(
        output_files(out)[k] != before[k] for k in first
    )  # other thresholds: verdicts redone


def test_errored_scans_are_retried(small_bids, tmp_path):
    out = tmp_path / "out"
    target = small_bids / "sub-01/anat/sub-01_T1w.nii.gz"
    good = target.read_bytes()
    target.write_bytes(b"")
    assert run(small_bids, out, "participant", "--no-reports") == 0
    assert (
        json.loads((out / "sub-01/anat/sub-01_T1w_qa.json").read_text(encoding="utf-8"))["verdict"]
        == "error"
    )
    target.write_bytes(good)
    assert run(small_bids, out, "participant", "--no-reports") == 0
    sidecar = json.loads((out / "sub-01/anat/sub-01_T1w_qa.json").read_text(encoding="utf-8"))
    assert sidecar["verdict"] != "error" and sidecar["errors"] == []


def test_incomplete_sidecar_is_redone(small_bids, tmp_path):
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--no-reports", "--participant-label", "01") == 0
    sidecar_path = out / "sub-01/anat/sub-01_T1w_qa.json"
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    sidecar["provenance"]["status"] = "scored"  # as left by a run killed before its report
    sidecar_path.write_text(json.dumps(sidecar), encoding="utf-8")
    assert run(small_bids, out, "participant", "--no-reports", "--participant-label", "01") == 0
    assert (
        json.loads(sidecar_path.read_text(encoding="utf-8"))["provenance"]["status"] == "complete"
    )


# --------------------------------------------------------------------------------------------
# Real processes: interruption and concurrency


def _many_scans(bids_factory, n: int) -> Path:
    return bids_factory(
        scans=[f"sub-{i:02d}/anat/sub-{i:02d}_T1w.nii.gz" for i in range(1, n + 1)], extras=False
    )


def _start(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [PYTHON, "-m", "bids_qa", *args],
        cwd=cwd or REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_new_output(
    process: subprocess.Popen, out: Path, known: int, timeout: float = 120
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list(out.rglob("*_qa.json"))) > known or process.poll() is not None:
            return
        time.sleep(0.02)
    raise AssertionError("no output appeared")


def _assert_outputs_whole(out: Path) -> None:
    for path in out.rglob("*_qa.json"):
        json.loads(path.read_text(encoding="utf-8"))  # parses: never half-written
    for path in out.rglob("*_qa.tsv"):
        text = path.read_text(encoding="utf-8")
        assert text.startswith(
            "model\tmetric\tvalue\tthreshold\tflag\tdirection\n"
        ) and text.endswith("\n")


def test_interrupted_runs_leave_whole_files_and_resume(bids_factory, tmp_path):
    root = _many_scans(bids_factory, 12)
    out = tmp_path / "out"
    args = [str(root), str(out), "participant", "--no-reports", "--nprocs", "1", "--device", "cpu"]

    first = _start(args)
    _wait_for_new_output(first, out, 0)
    first.send_signal(signal.SIGTERM)
    log = first.communicate(timeout=60)[0]
    assert first.returncode == 143, log
    assert "terminated" in log
    assert temp_files(out) == [] and not (out / ".bids_qa_work").exists()
    _assert_outputs_whole(out)
    done_after_term = len(list(out.rglob("*_qa.json")))
    assert 1 <= done_after_term < 12

    second = _start(args)
    _wait_for_new_output(second, out, done_after_term)
    second.kill()  # SIGKILL: no cleanup possible
    second.communicate(timeout=60)
    _assert_outputs_whole(out)
    kept = output_files(out)

    assert run(*args) == 0
    assert len(list(out.rglob("*_qa.json"))) == 12
    assert temp_files(out) == []
    _assert_outputs_whole(out)
    now = output_files(out)
    assert all(now[k] == v for k, v in kept.items())  # finished scans were not redone


def test_two_jobs_into_one_output_folder(bids_factory, tmp_path):
    """Two participant jobs with different labels at once; neither writes outside OUTPUT_DIR."""
    root = _many_scans(bids_factory, 4)
    out = tmp_path / "out"
    sandbox = tmp_path / "sandbox"
    env = dict(os.environ)
    for name in ("home", "tmp", "cwd"):
        (sandbox / name).mkdir(parents=True)
    env.update(
        HOME=str(sandbox / "home"),
        TMPDIR=str(sandbox / "tmp"),
        PYTHONPATH=str(REPO),
        PYTHONDONTWRITEBYTECODE="1",
    )
    for var in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        env.pop(var, None)
    input_before = snapshot(root)
    # one job renders reports (matplotlib's caches must not land in HOME), the other does not
    variants = ((["01", "02"], []), (["sub-03", "sub-04"], ["--no-reports"]))
    base = [str(root), str(out), "participant", "--device", "cpu", "--participant-label"]
    jobs = [
        _start([*base, *labels, *extra], env=env, cwd=sandbox / "cwd") for labels, extra in variants
    ]
    logs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], logs
    assert sorted(p.name for p in out.rglob("*_qa.json")) == [
        f"sub-0{i}_T1w_qa.json" for i in range(1, 5)
    ]
    reports = sorted(p.name for p in out.rglob("*_report.html"))
    assert reports == ["sub-01_T1w_report.html", "sub-02_T1w_report.html"]
    _assert_outputs_whole(out)
    desc = json.loads((out / "dataset_description.json").read_text(encoding="utf-8"))
    assert desc["DatasetType"] == "derivative"
    assert len(list((out / "logs").glob("*.log"))) == 2
    assert temp_files(out) == [] and not (out / ".bids_qa_work").exists()
    assert snapshot(root) == input_before
    for name in ("home", "tmp", "cwd"):
        assert list((sandbox / name).rglob("*")) == [], f"something was written to {name}"


def test_explicit_work_dir_is_used_and_emptied(small_bids, tmp_path):
    work = tmp_path / "work"
    out = tmp_path / "out"
    assert (
        run(
            small_bids,
            out,
            "participant",
            "--no-reports",
            "--work-dir",
            work,
            "--participant-label",
            "01",
        )
        == 0
    )
    assert work.is_dir() and list(work.iterdir()) == []
    assert not (out / ".bids_qa_work").exists()


# --------------------------------------------------------------------------------------------
# Readers


def test_readers(small_bids, tmp_path):
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--no-reports") == 0
    paths = deriv.scan_paths(
        out,
        Scan(
            small_bids / "sub-01/anat/sub-01_T1w.nii.gz",
            {"subject": "01", "suffix": "T1w"},
            root=small_bids,
        ),
    )
    for given in (paths.json, paths.tsv, paths.report, paths.folder / paths.stem):
        outputs = deriv.read_scan_outputs(given)
        assert outputs.paths == paths
    assert outputs.verdict == outputs.sidecar["verdict"]
    values = outputs.values()
    assert values["header.vox_x"] == 4.0 and values["header.acquisition"] == "3D"
    assert len(outputs.metrics) == len(read_tsv(paths.tsv))
    if {"severity", "ssim", "flow"} - set(unavailable_scorers()):  # per-slice scorers installed
        assert outputs.slices is not None and {"model", "slice_index"} <= set(outputs.slices.columns)
    else:
        assert outputs.slices is None
    assert deriv.find_scan_outputs(out) == sorted(out.rglob("*_qa.json"))
    with pytest.raises(FileNotFoundError):
        deriv.read_scan_outputs(out / "sub-09/anat/sub-09_T1w_qa.json")
    paths.json.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        deriv.read_scan_outputs(paths.json)
    tables, problems = deriv.collect_group_rows(out)
    assert (
        sorted(tables) == ["T1w", "T2w"]
        and len(problems) == 1
        and "sub-01_T1w_qa.json" in problems[0]
    )


def test_scan_parameters_give_entity_and_acquisition_columns():
    scan = {
        "entities": {"acquisition": "mprage", "reconstruction": "norm", "ceagent": "Gd"},
        "metadata": {"Manufacturer": "Siemens", "MagneticFieldStrength": 3, "RepetitionTime": 2.3,
                     "EchoTime": [0.002, 0.004]},
        "zooms": [1.0, 1.0, 1.2],
    }  # fmt: skip
    assert deriv.scan_parameters(scan) == {
        "acquisition": "mprage",
        "reconstruction": "norm",
        "ceagent": "Gd",
        "manufacturer": "Siemens",
        "field_strength": 3,
        "repetition_time": 2.3,
        "echo_time": "0.002,0.004",  # a multi-echo list stays one cell
        "voxel_size": "1x1x1.2",
    }
    empty = deriv.scan_parameters({"entities": {}, "metadata": {}, "zooms": None})
    assert set(empty) <= set(deriv.GROUP_COLUMNS) and all(v is None for v in empty.values())


_DIE_ON_REPORT = """
import os, signal, sys
real_replace = os.replace
def replace_or_die(src, dst):
    if str(dst).endswith("_report.html"):
        os.kill(os.getpid(), signal.SIGKILL)  # killed while the report is being written
    return real_replace(src, dst)
os.replace = replace_or_die
from bids_qa.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_run_killed_while_writing_a_report_leaves_no_temp_file_after_the_next_run(
    small_bids, tmp_path
):
    out = tmp_path / "out"
    args = [str(small_bids), str(out), "participant", "--participant-label", "01",
            "--suffix", "T1w", "--scorers", "header", "iqm", "--nprocs", "1"]
    killed = subprocess.run([PYTHON, "-c", _DIE_ON_REPORT, *args], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    left = temp_files(out)
    assert [p.name.split(".bqtmp-")[0] for p in left] == [".sub-01_T1w_report.html"]
    assert not (out / "sub-01/anat/sub-01_T1w_report.html").exists()

    assert run(*args) == 0  # the next run removes the dead process's temporary file and redoes it
    assert temp_files(out) == []
    assert "<!DOCTYPE html>" in (out / "sub-01/anat/sub-01_T1w_report.html").read_text(
        encoding="utf-8"
    )


def test_every_output_file_is_readable_by_others_under_umask_022(small_bids, tmp_path):
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert run(small_bids, out, "participant", "--participant-label", "01",
                   "--scorers", "header", "iqm") == 0
        assert run(small_bids, out, "group") == 0
        written = deriv.atomic_write_bytes(tmp_path / "x" / "f.png", b"png")
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".html", ".png", ".tsv", ".json"}]
    assert {p.suffix for p in files} == {".html", ".png", ".tsv", ".json"}
    assert any(p.name.endswith("_report.html") for p in files)
    assert any(p.name.startswith("group_") and p.suffix == ".html" for p in files)
    modes = {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    assert oct(written.stat().st_mode & 0o777) == "0o644"
