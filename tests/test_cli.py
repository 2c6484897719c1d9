"""The command line: parsing, exit codes, and a full participant + group run read back from disk."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, read_tsv, snapshot, write_json, write_nifti

from bids_qa import __version__, scoring
from bids_qa.cli import build_parser, main
from bids_qa.derivatives import QA_COLUMNS, read_group_table, safe_stem
from bids_qa.scoring import ScorerEntry


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


# --------------------------------------------------------------------------------------------
# Parsing


def test_underscore_spellings_and_prefixes_are_accepted():
    args = build_parser().parse_args(
        [
            "in",
            "out",
            "participant",
            "--participant_label",
            "sub-01",
            "02",
            "--session_id",
            "ses-a",
            "--run_id",
            "run-1",
            "--modalities",
            "T1w",
            "--bids_filter_file",
            "f.json",
            "--skip_bids_validation",
            "--n_cpus",
            "3",
            "--batch_size",
            "8",
            "--work_dir",
            "w",
            "--bids_database_dir",
            "db",
            "--no_reports",
        ]
    )
    assert args.participant_label == ["sub-01", "02"]
    assert args.session_id == ["ses-a"] and args.run_id == ["run-1"]
    assert args.suffix == ["T1w"] and args.bids_filter_file == "f.json"
    assert args.skip_bids_validation and args.nprocs == 3 and args.batch_size == 8
    assert args.work_dir == "w" and args.bids_database_dir == "db" and args.reports is False


def test_repeated_options_accumulate():
    args = build_parser().parse_args(
        [
            "in",
            "out",
            "participant",
            "--participant-label",
            "01",
            "--participant-label",
            "sub-02",
            "--suffix",
            "T1w",
            "-m",
            "FLAIR",
            "-vv",
        ]
    )
    assert args.participant_label == ["01", "sub-02"]
    assert args.suffix == ["T1w", "FLAIR"]
    assert args.verbose == 2


def test_version_and_help_return_zero(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--participant-label" in out and "exit codes" in out


def test_help_does_not_import_torch():
    code = (
        "import sys; from bids_qa.cli import main; rc = main(['--help']); "
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', rc)"
    )
    done = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.stdout.strip().endswith("NO_TORCH 0"), done.stdout + done.stderr


@pytest.mark.parametrize(
    "extra",
    [
        ["--no-such-option"],
        ["--nprocs", "0"],
        ["--batch-size", "0"],
        ["--scorers", "nonexistent"],
        ["--device", "gpu"],
        ["--suffix", "bold"],
        ["--nprocs", "two"],
    ],
)
def test_usage_errors_exit_64(small_bids, tmp_path, extra, capsys):
    assert run(small_bids, tmp_path / "out", "participant", *extra) == 64
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_analysis_level_exits_17(small_bids, tmp_path):
    assert run(small_bids, tmp_path / "out", "session") == 17


def test_missing_input_exits_66(tmp_path):
    assert run(tmp_path / "nothing_here", tmp_path / "out", "participant") == 66


def test_output_equal_to_input_is_refused(small_bids):
    assert run(small_bids, small_bids, "participant") == 64


def test_filters_selecting_nothing_exit_18(small_bids, tmp_path):
    assert (
        run(
            small_bids, tmp_path / "out", "participant", "--participant-label", "99", "--no-reports"
        )
        == 18
    )
    assert (
        run(small_bids, tmp_path / "out", "participant", "--suffix", "FLAIR", "--no-reports") == 18
    )
    logs = list((tmp_path / "out" / "logs").glob("*.log"))
    assert logs and "selected no structural scan" in logs[0].read_text(encoding="utf-8")


def test_dataset_without_structural_scans_exits_66(bids_factory, tmp_path):
    root = bids_factory(scans=(), extras=False)
    assert run(root, tmp_path / "out", "participant", "--no-reports") == 66


def test_bad_thresholds_and_filter_files_exit_64(small_bids, tmp_path):
    bad = write_json(tmp_path / "t.json", {"default": {"iqm.cjv": {"reveiw": 1}}})
    assert run(small_bids, tmp_path / "out", "participant", "--thresholds", bad) == 64
    broken = tmp_path / "f.json"
    broken.write_text("{not json", encoding="utf-8")
    assert run(small_bids, tmp_path / "out", "participant", "--bids-filter-file", broken) == 64
    unknown = write_json(tmp_path / "g.json", {"t1w": {"colour": "blue"}})
    assert run(small_bids, tmp_path / "out", "participant", "--bids-filter-file", unknown) == 64


def test_cuda_without_gpu_exits_64(small_bids, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert (
        run(small_bids, tmp_path / "out", "participant", "--device", "cuda", "--no-reports") == 64
    )


def test_helper_commands_are_dispatched(capsys):
    assert main(["demo", "--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["train", "nonexistent"]) == 64
    assert main(["train"]) == 64


# --------------------------------------------------------------------------------------------
# A full run


def test_participant_and_group_end_to_end(small_bids, tmp_path):
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--no-reports", "--nprocs", "2") == 0

    desc = json.loads((out / "dataset_description.json").read_text(encoding="utf-8"))
    assert desc["DatasetType"] == "derivative"
    assert (
        desc["GeneratedBy"][0]["Name"] == "bids_qa"
        and desc["GeneratedBy"][0]["Version"] == __version__
    )

    expected = {
        "sub-01/anat/sub-01_T1w",
        "sub-01/anat/sub-01_T2w",
        "sub-02/ses-1/anat/sub-02_ses-1_run-1_T1w",
    }
    found = {p.relative_to(out).as_posix()[: -len("_qa.json")] for p in out.rglob("*_qa.json")}
    assert found == expected  # no BOLD, no T1map, nothing from derivatives/

    rows = read_tsv(out / "sub-01/anat/sub-01_T1w_qa.tsv")
    assert list(rows[0]) == list(QA_COLUMNS)
    by_key = {(r["model"], r["metric"]): r for r in rows}
    assert float(by_key[("header", "vox_x")]["value"]) == pytest.approx(4.0)
    anis = by_key[("header", "anisotropy")]
    assert (
        anis["flag"] == "pass"
        and float(anis["threshold"]) == 2.0
        and anis["direction"] == "higher_is_worse"
    )
    assert (
        by_key[("header", "vox_x")]["flag"] == "n/a"
        and by_key[("header", "vox_x")]["threshold"] == ""
    )
    assert ("iqm", "efc") in by_key and all(
        r["flag"] in {"pass", "review", "fail", "n/a"} for r in rows
    )

    text = (out / "sub-01/anat/sub-01_T1w_qa.json").read_text(encoding="utf-8")
    sidecar = json.loads(text)
    assert list(sidecar) == sorted(sidecar)  # sorted keys
    assert {"scan", "verdict", "reasons", "errors", "warnings", "provenance", "columns"} <= set(
        sidecar
    )
    assert sidecar["scan"]["source"] == "sub-01/anat/sub-01_T1w.nii.gz"
    assert sidecar["scan"]["shape"] == [50, 59, 48] and sidecar["scan"]["zooms"] == [4.0, 4.0, 4.0]
    assert sidecar["scan"]["metadata"] == {
        "Manufacturer": "TestVendor",
        "MagneticFieldStrength": 3,
        "EchoTime": 0.003,
    }
    assert sidecar["verdict"] in {"pass", "review", "fail"} and sidecar["errors"] == []
    prov = sidecar["provenance"]
    assert prov["status"] == "complete" and prov["bids_qa_version"] == __version__
    assert [s["name"] for s in prov["scorers"]][:2] == ["header", "iqm"]
    assert sorted(prov["scorers_skipped"]) == sorted(scoring.unavailable_scorers())
    assert prov["device"] == "cpu" and prov["config"]["nprocs"] == 2
    assert {"load", "score:header", "score:iqm", "judge", "write"} <= set(prov["timings_s"])
    assert (out / prov["log"]).is_file()

    assert run(small_bids, out, "group", "--no-reports") == 0
    table = read_group_table(out, "T1w")
    assert list(table["scan_id"]) == ["sub-01_T1w", "sub-02_ses-1_run-1_T1w"]
    assert list(table["subject"]) == ["01", "02"]  # labels stay text
    assert table.loc[1, "session"] == "1" and table.loc[1, "run"] == "1"
    assert table["iqm.efc"].dtype.kind == "f" and table["header.vox_x"].tolist() == [4.0, 4.0]
    meta = json.loads((out / "group_T1w.json").read_text(encoding="utf-8"))
    assert meta["n_scans"] == 2 and "iqm.efc" in meta["columns"]
    assert meta["thresholds"]["header.anisotropy"]["review"] == 2.0
    assert (out / "group_T2w.tsv").is_file()
    # acquisition columns: entities and sidecar parameters
    first = table.loc[0]
    assert (first["manufacturer"], first["field_strength"], first["echo_time"]) == (
        "TestVendor", "3", "0.003",
    )  # fmt: skip
    assert list(table["voxel_size"]) == ["4x4x4", "4x4x4"]
    assert table["repetition_time"].isna().all() and table["acquisition"].isna().all()
    assert "manufacturer" in meta["columns"] and "acquisition" in meta["columns"]
    assert sidecar["scan"]["parameters"]["manufacturer"] == "TestVendor"
    # methods paragraph: in the group JSON and in group_methods.md, citing what ran
    methods = meta["provenance"]["methods"]
    assert "Esteban et al., 2017" in methods and "References" in methods
    assert "2 T1w scan(s) of 2 subjects" in methods
    assert "Esteban O" in (out / "group_methods.md").read_text(encoding="utf-8")
    assert not (out / ".bids_qa_work").exists()  # default work folder cleaned up
    assert len(list((out / "logs").glob("bids_qa_*.log"))) == 2


def test_group_level_reads_only_derivatives(small_bids, tmp_path):
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--no-reports") == 0
    import shutil

    shutil.rmtree(small_bids)  # images gone: the group level must not need them
    assert run(small_bids, out, "group", "--no-reports", "--suffix", "T1w") == 0
    assert len(read_group_table(out, "T1w")) == 2
    assert not (out / "group_T2w.tsv").exists()


def test_group_without_participant_outputs_exits_66(small_bids, tmp_path):
    assert run(small_bids, tmp_path / "out", "group", "--no-reports") == 66


def test_participant_label_file_and_session_filter(small_bids, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("sub-02\n", encoding="utf-8")
    out = tmp_path / "out"
    assert (
        run(
            small_bids,
            out,
            "participant",
            "--participant-label",
            labels,
            "--session-id",
            "1",
            "--no-reports",
        )
        == 0
    )
    assert [p.name for p in out.rglob("*_qa.json")] == ["sub-02_ses-1_run-1_T1w_qa.json"]


def test_user_thresholds_change_the_verdict_with_reasons(small_bids, tmp_path):
    user = write_json(
        tmp_path / "t.json", {"default": {"header.vox_x": {"review": 3, "fail": 3.5}}}
    )
    out = tmp_path / "out"
    assert (
        run(
            small_bids,
            out,
            "participant",
            "--no-reports",
            "--thresholds",
            user,
            "--participant-label",
            "01",
            "--suffix",
            "T1w",
        )
        == 0
    )
    sidecar = json.loads((out / "sub-01/anat/sub-01_T1w_qa.json").read_text(encoding="utf-8"))
    assert sidecar["verdict"] == "fail"
    reason = next(r for r in sidecar["reasons"] if r["metric"] == "vox_x")
    assert reason["flag"] == "fail" and reason["threshold"] == 3.5 and reason["value"] == 4.0
    assert "above the fail threshold 3.5" in reason["message"]
    assert sidecar["provenance"]["thresholds"]["sources"][-1] == str(user)


def test_every_scan_failing_exits_65_and_still_writes_outputs(bids_factory, tmp_path):
    root = bids_factory(scans=(), extras=False)
    bad = root / "sub-01/anat/sub-01_T1w.nii.gz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"")
    out = tmp_path / "out"
    assert run(root, out, "participant", "--no-reports") == 65
    rows = read_tsv(out / "sub-01/anat/sub-01_T1w_qa.tsv")
    assert rows == [
        {
            "model": "error",
            "metric": "load",
            "value": "sub-01_T1w.nii.gz is an empty (zero-byte) file",
            "threshold": "",
            "flag": "error",
            "direction": "",
        }
    ]


def test_scorer_that_cannot_be_built_is_an_explicit_failure(small_bids, tmp_path, monkeypatch):
    broken = ScorerEntry("broken", "bids_qa.no_such_module:Nothing")
    monkeypatch.setattr(scoring, "REGISTRY", [*scoring.REGISTRY, broken])
    monkeypatch.setattr("bids_qa.plan.REGISTRY", scoring.REGISTRY)
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--no-reports") == 1
    log = next((out / "logs").glob("*.log")).read_text(encoding="utf-8")
    assert "scorer 'broken'" in log and "bug or a broken installation" in log
    assert not list(out.rglob("*_qa.json"))


def test_scorer_subset(small_bids, tmp_path):
    out = tmp_path / "out"
    assert (
        run(
            small_bids,
            out,
            "participant",
            "--no-reports",
            "--scorers",
            "header",
            "--participant-label",
            "01",
        )
        == 0
    )
    rows = read_tsv(out / "sub-01/anat/sub-01_T1w_qa.tsv")
    assert {r["model"] for r in rows} == {"header"}


def _fake_reports(calls: list, fail: bool = False) -> types.ModuleType:
    module = types.ModuleType("bids_qa.reports")

    def render_scan_report(out_dir, outputs_json, image_path, *, volume=None):
        calls.append(
            ("scan", Path(out_dir), Path(outputs_json), Path(image_path), volume is not None)
        )
        if fail:
            raise RuntimeError("renderer exploded")
        report = Path(outputs_json).with_name(
            Path(outputs_json).name.replace("_qa.json", "_report.html")
        )
        report.write_text("<html></html>", encoding="utf-8")
        return report

    def render_group_report(out_dir, suffix):
        calls.append(("group", Path(out_dir), suffix))
        (Path(out_dir) / f"group_{suffix}.html").write_text("<html></html>", encoding="utf-8")

    module.render_scan_report = render_scan_report
    module.render_group_report = render_group_report
    return module


def test_reports_are_requested_per_scan_and_per_contrast(small_bids, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "bids_qa.reports", _fake_reports(calls))
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--participant-label", "01") == 0
    scan_calls = [c for c in calls if c[0] == "scan"]
    assert [c[2].name for c in scan_calls] == ["sub-01_T1w_qa.json", "sub-01_T2w_qa.json"]
    assert (
        scan_calls[0][1] == out and scan_calls[0][3] == small_bids / "sub-01/anat/sub-01_T1w.nii.gz"
    )
    assert scan_calls[0][4] is True  # the loaded volume is handed over
    assert run(small_bids, out, "group") == 0
    assert sorted(c[2] for c in calls if c[0] == "group") == ["T1w", "T2w"]
    table = read_group_table(out, "T1w")
    assert table.loc[0, "report"] == "sub-01/anat/sub-01_T1w_report.html"


def test_failing_report_is_an_error_row_not_a_crash(small_bids, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "bids_qa.reports", _fake_reports(calls, fail=True))
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--participant-label", "01", "--suffix", "T1w") == 0
    sidecar = json.loads((out / "sub-01/anat/sub-01_T1w_qa.json").read_text(encoding="utf-8"))
    assert sidecar["errors"] == [{"stage": "report", "message": "RuntimeError: renderer exploded"}]
    assert sidecar["verdict"] in {"pass", "review", "fail"}  # the assessment itself is complete
    rows = read_tsv(out / "sub-01/anat/sub-01_T1w_qa.tsv")
    assert rows[-1]["model"] == "error" and rows[-1]["metric"] == "report"


def test_missing_reports_module_is_an_error_row(small_bids, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bids_qa.reports", types.ModuleType("bids_qa.reports"))
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--participant-label", "01", "--suffix", "T1w") == 0
    sidecar = json.loads((out / "sub-01/anat/sub-01_T1w_qa.json").read_text(encoding="utf-8"))
    assert sidecar["errors"][0]["stage"] == "report"
    assert "render_scan_report" in sidecar["errors"][0]["message"]


def test_quiet_run_prints_nothing_on_success(small_bids, tmp_path, capsys):
    assert (
        run(
            small_bids,
            tmp_path / "out",
            "participant",
            "--no-reports",
            "-q",
            "--participant-label",
            "01",
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_plain_nifti_folder_with_suffix(tmp_path, mni_small):
    folder = tmp_path / "scans"
    write_nifti(folder / "patient 1" / "head.nii.gz", mni_small + 0.01)
    write_nifti(folder / "patient2_T2.nii", mni_small + 0.01)
    before = snapshot(folder)
    out = tmp_path / "out"
    assert run(folder, out, "participant", "--no-reports", "--suffix", "T1w") == 0
    sidecars = {
        p.relative_to(out).as_posix(): json.loads(p.read_text(encoding="utf-8"))
        for p in out.rglob("*_qa.json")
    }
    assert list(sidecars) == [
        f"sub-patient1/anat/{safe_stem('patient 1_head')}_qa.json"
    ]  # patient2_T2 is a T2w; the folder "patient 1" names the subject
    only = next(iter(sidecars.values()))
    assert (
        only["scan"]["source"] == "patient 1/head.nii.gz"
        and only["scan"]["entities"]["suffix"] == "T1w"
    )
    assert only["scan"]["bids"] is False
    assert snapshot(folder) == before


def test_no_network_access_with_reports(small_bids, tmp_path, monkeypatch):
    """A full run (reports included) never opens a network connection."""
    import socket

    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network access attempted during a bids_qa run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    out = tmp_path / "out"
    assert run(small_bids, out, "participant", "--participant-label", "01", "--suffix", "T1w") == 0
    assert run(small_bids, out, "group") == 0
    assert attempts == []
    sidecar = json.loads((out / "sub-01/anat/sub-01_T1w_qa.json").read_text(encoding="utf-8"))
    assert sidecar["errors"] == []  # the real report rendered
    assert (out / "sub-01/anat/sub-01_T1w_report.html").is_file() and (
        out / "group_T1w.html"
    ).is_file()


# --------------------------------------------------------------------------------------------
# New-user fixes (issue 24)


def test_unmatched_participant_label_is_warned_about(small_bids, tmp_path, capsys):
    out = tmp_path / "out"
    code = run(
        small_bids, out, "participant", "--no-reports", "--scorers", "header",
        "--participant-label", "sub-99", "01",
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "--participant-label sub-99 matched no scan" in err
    assert "sub-01 matched" not in err
    assert (out / "sub-01/anat/sub-01_T1w_qa.json").is_file()


def test_unwritable_bids_database_dir_exits_73(small_bids, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x", encoding="utf-8")
    code = run(
        small_bids, tmp_path / "out", "participant", "--no-reports", "--scorers", "header",
        "--bids-database-dir", blocker / "index",
    )  # fmt: skip
    assert code == 73
    assert "--bids-database-dir" in capsys.readouterr().err


def test_group_on_an_empty_folder_writes_nothing(small_bids, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert run(small_bids, out, "group", "--no-reports") == 66
    assert list(out.iterdir()) == []
    assert run(small_bids, tmp_path / "missing", "group") == 66
    assert not (tmp_path / "missing").exists()
    assert "nothing was written" in capsys.readouterr().err


def test_options_before_positionals_get_a_hint(small_bids, tmp_path, capsys):
    code = run("--participant-label", "01", small_bids, tmp_path / "out", "participant")
    assert code == 64
    err = capsys.readouterr().err
    assert "the following arguments are required" in err
    assert "hint: --participant-label takes every value after it" in err and " -- " in err
    # the documented way out works
    code = run(
        "--scorers", "header", "--no-reports", "--participant-label", "01", "--",
        small_bids, tmp_path / "out", "participant",
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    assert run(small_bids, tmp_path / "out") == 64  # simply forgot the level: no misleading hint
    assert "hint" not in capsys.readouterr().err


def test_suffix_map_names_contrasts_in_plain_mode(tmp_path, mni_small, capsys):
    folder = tmp_path / "scans"
    write_nifti(folder / "p1" / "series_0003.nii.gz", mni_small + 0.01)
    write_nifti(folder / "p1" / "series_0004.nii.gz", mni_small + 0.01)
    mapping = tmp_path / "map.tsv"
    mapping.write_text("pattern\tsuffix\n*_0003.nii.gz\tT1\n*/series_0004*\tflair\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run(folder, out, "participant", "--no-reports", "--scorers", "header",
               "--suffix-map", mapping) == 0  # fmt: skip
    suffixes = {
        json.loads(p.read_text(encoding="utf-8"))["scan"]["source"]: json.loads(
            p.read_text(encoding="utf-8")
        )["scan"]["entities"]["suffix"]
        for p in out.rglob("*_qa.json")
    }
    assert suffixes == {"p1/series_0003.nii.gz": "T1w", "p1/series_0004.nii.gz": "FLAIR"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"*.nii.gz": "bold"}', encoding="utf-8")
    assert run(folder, out, "participant", "--suffix-map", bad) == 64
    assert "bold" in capsys.readouterr().err


def test_full_disk_stops_the_run_with_exit_74(bids_factory, tmp_path, monkeypatch, capsys):
    import errno

    from bids_qa import derivatives

    root = bids_factory(
        scans=tuple(f"sub-0{i}/anat/sub-0{i}_T1w.nii.gz" for i in range(1, 5)), extras=False
    )
    out = tmp_path / "out"
    real = derivatives.write_scan_tables
    calls = []

    def fill_up(paths, *args, **kwargs):
        calls.append(paths.stem)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(derivatives, "write_scan_tables", fill_up)
    code = run(root, out, "participant", "--no-reports", "--scorers", "header", "--nprocs", "1")
    assert code == 74
    assert calls == ["sub-01_T1w", "sub-02_T1w"]  # stopped at the first full write
    err = capsys.readouterr().err
    assert "no space left" in err and "stopped after 1 of 4 scan(s)" in err and "resume" in err
    assert "Traceback" not in err and "Logging error" not in err
    assert (out / "sub-01/anat/sub-01_T1w_qa.json").is_file()
    monkeypatch.setattr(derivatives, "write_scan_tables", real)
    assert run(root, out, "participant", "--no-reports", "--scorers", "header") == 0
    assert len(list(out.rglob("*_qa.json"))) == 4
