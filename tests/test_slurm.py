"""SLURM: the job-array template and the group job, on a real single-node SLURM on localhost.

``test_array_then_group_on_slurm`` starts ``munged``, ``slurmctld`` and ``slurmd`` (Debian's
``munge`` and ``slurm-wlm`` packages) with a minimal configuration in a temporary folder, submits
``scripts/slurm/submit.sh`` (a ``sbatch --array`` of participant jobs, then the group job with
``--dependency=afterok``) on a small generated BIDS dataset, waits, and checks every output. It
needs root (the daemons run as root with their state in the temporary folder) and is skipped,
saying why, when the binaries are absent. The other tests run the array script directly (no
SLURM) to check how array indices map to participants.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import read_tsv

REPO = Path(__file__).resolve().parent.parent
SLURM_DIR = REPO / "scripts" / "slurm"
ARRAY_SCRIPT = SLURM_DIR / "bids_qa_array.sbatch"
GROUP_SCRIPT = SLURM_DIR / "bids_qa_group.sbatch"
SUBMIT = SLURM_DIR / "submit.sh"
SUBJECTS = ("01", "02", "03")
QA_COLUMNS = ["model", "metric", "value", "threshold", "flag", "direction"]
#: Seconds allowed for the daemons to come up and for the whole array + group to finish.
START_TIMEOUT_S = 60
JOBS_TIMEOUT_S = 900
DAEMONS = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def _missing_binaries() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# The array script without SLURM: index -> participant mapping, options passed on


def _run_array_script(env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(WORK_ROOT=str(tmp_path / "scratch"), SLURM_CPUS_PER_TASK="3", SLURM_ARRAY_JOB_ID="77")
    env.update(env_extra)
    return subprocess.run(["bash", str(ARRAY_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def three_subjects(tmp_path: Path) -> Path:
    bids = tmp_path / "bids"
    for label in ("03", "01", "10"):  # created out of order: the script sorts
        (bids / f"sub-{label}" / "anat").mkdir(parents=True)
    (bids / "derivatives").mkdir()
    return bids


@pytest.mark.parametrize(("index", "label"), [("1", "01"), ("2", "03"), ("3", "10")])
def test_array_index_picks_the_sorted_participant(three_subjects: Path, tmp_path: Path, index: str, label: str) -> None:
    out = tmp_path / "out"
    result = _run_array_script({"BIDS_DIR": str(three_subjects), "OUT_DIR": str(out), "SLURM_ARRAY_TASK_ID": index,
                                "BIDS_QA_EXEC": "echo RUN", "BIDS_QA_ARGS": "--suffix T1w --no-reports"}, tmp_path)
    assert result.returncode == 0, result.stderr
    run_lines = [line for line in result.stdout.splitlines() if line.startswith("RUN ")]
    assert len(run_lines) == 1, result.stdout
    argv = shlex.split(run_lines[0])[1:]
    work = tmp_path / "scratch" / f"bids_qa_77_{index}"
    assert argv == [str(three_subjects), str(out), "participant", "--participant-label", label, "--nprocs", "3",
                    "--work-dir", str(work), "--suffix", "T1w", "--no-reports"]
    assert out.is_dir()
    assert not work.exists(), "the task's scratch folder must be removed when the task ends"


def test_array_index_past_the_list_is_a_usage_error(three_subjects: Path, tmp_path: Path) -> None:
    result = _run_array_script({"BIDS_DIR": str(three_subjects), "OUT_DIR": str(tmp_path / "out"),
                                "SLURM_ARRAY_TASK_ID": "4", "BIDS_QA_EXEC": "echo RUN"}, tmp_path)
    assert result.returncode == 64
    assert "no participant for array index 4" in result.stderr
    assert "RUN" not in result.stdout


def test_array_participants_file_and_exit_status(tmp_path: Path) -> None:
    labels = tmp_path / "participants.txt"
    labels.write_text("sub-pilot\n\n  sub-b7 \n", encoding="utf-8")  # blank lines do not count
    fake = tmp_path / "fake_bids_qa.sh"  # prints the label it was given, then fails as bids_qa would
    fake.write_text('#!/bin/sh\necho "$5"\nexit 65\n', encoding="utf-8")
    result = _run_array_script({"BIDS_DIR": str(tmp_path), "OUT_DIR": str(tmp_path / "out"), "SLURM_ARRAY_TASK_ID": "2",
                                "PARTICIPANTS_FILE": str(labels), "BIDS_QA_EXEC": f"sh {fake}"}, tmp_path)
    # the command's exit status is the task's (65: every scan failed), after the label is printed
    assert result.returncode == 65, result.stderr
    assert result.stdout.splitlines()[1] == "b7"
    assert "participant b7, exit status 65" in result.stdout


def test_array_several_participants_on_one_line(tmp_path: Path) -> None:
    labels = tmp_path / "participants.txt"
    labels.write_text("sub-01 sub-02\n03\t04 sub-05\n", encoding="utf-8")
    result = _run_array_script({"BIDS_DIR": str(tmp_path), "OUT_DIR": str(tmp_path / "out"), "SLURM_ARRAY_TASK_ID": "2",
                                "PARTICIPANTS_FILE": str(labels), "BIDS_QA_EXEC": "echo RUN"}, tmp_path)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(next(line for line in result.stdout.splitlines() if line.startswith("RUN ")))
    assert argv[4:8] == ["--participant-label", "03", "04", "05"], argv


def test_array_needs_an_image_or_a_command(three_subjects: Path, tmp_path: Path) -> None:
    result = _run_array_script({"BIDS_DIR": str(three_subjects), "OUT_DIR": str(tmp_path / "out"),
                                "SLURM_ARRAY_TASK_ID": "1"}, tmp_path)
    assert result.returncode != 0
    assert "SIF" in result.stderr


def test_scripts_parse_and_request_resources() -> None:
    for script in (ARRAY_SCRIPT, GROUP_SCRIPT, SUBMIT):
        subprocess.run(["bash", "-n", str(script)], check=True)
    array = ARRAY_SCRIPT.read_text(encoding="utf-8")
    for directive in ("--cpus-per-task=", "--mem=", "--time=", "--output="):
        assert f"#SBATCH {directive}" in array
    assert "--cleanenv" in array and "/data:ro" in array
    assert "--dependency=afterok" in SUBMIT.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# A real single-node SLURM


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    logs: Path

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}\n{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job -o`` as dicts (one per array task)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        records = []
        for line in out.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            records.append(fields)
        return records


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str, cluster: Cluster | None = None,
              daemons: list[subprocess.Popen[bytes]] | None = None) -> None:
    """Poll ``predicate`` every second; fail at once when one of ``daemons`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [p.args[0] for p in daemons or [] if p.poll() is not None]
        if dead:
            raise AssertionError(f"{', '.join(map(str, dead))} exited while waiting for {what}\n"
                                 + (cluster.log_tail() if cluster else ""))
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n" + (cluster.log_tail() if cluster else ""))


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the daemon's whole process group (it was started in its own session), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers in the group (slurmstepd, job processes)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        pass


@pytest.fixture(scope="module")
def slurm() -> Iterator[Cluster]:
    missing = _missing_binaries()
    if missing:
        pytest.skip(f"SLURM/munge binaries absent ({', '.join(missing)}): apt-get install slurmctld slurmd "
                    "slurm-client munge")
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM test runs munged, slurmctld and slurmd as root")

    # Not under pytest's tmp folder: munged wants every folder above its socket searchable by all.
    root = Path(tempfile.mkdtemp(prefix="bids_qa_slurm_", dir="/tmp"))
    root.chmod(0o755)
    run_dir, key_dir, logs = root / "run", root / "munge", root / "logs"
    for folder, mode in ((run_dir, 0o755), (key_dir, 0o700), (logs, 0o755), (root / "state", 0o700),
                         (root / "spool", 0o755)):
        folder.mkdir()
        folder.chmod(mode)
    key = key_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = run_dir / "munge.sock"

    host = socket.gethostname().split(".")[0]
    mem_mb = max(1024, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 1024)
    cpus = os.cpu_count() or 1
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=bidsqatest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={sock}",
        "CredType=cred/munge",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={run_dir / 'slurmctld.pid'}",
        f"SlurmdPidFile={run_dir / 'slurmd.pid'}",
        f"SlurmctldLogFile={logs / 'slurmctld.log'}",
        f"SlurmdLogFile={logs / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SchedulerType=sched/backfill",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "InactiveLimit=0",
        "MinJobAge=3600",  # keep finished jobs visible to scontrol for the checks
        "KillWait=5",
        "Waittime=0",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
        "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
    ]), encoding="utf-8")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))}
    env["SLURM_CONF"] = str(conf)
    cluster = Cluster(root=root, env=env, logs=logs)
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *argv: str) -> None:
        out = open(logs / f"{name}.stdout.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen([_which(name), *argv], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True))
        out.close()

    try:
        start("munged", "--foreground", f"--socket={sock}", f"--key-file={key}", f"--log-file={logs / 'munged.log'}",
              f"--pid-file={run_dir / 'munged.pid'}", f"--seed-file={key_dir / 'munged.seed'}")

        def munge_works() -> bool:
            if not sock.exists():
                return False
            cred = subprocess.run([_which("munge"), "-S", str(sock), "-n"], capture_output=True)
            return cred.returncode == 0 and subprocess.run(
                [_which("unmunge"), "-S", str(sock)], input=cred.stdout, capture_output=True).returncode == 0

        _wait_for(munge_works, START_TIMEOUT_S, "munged", cluster, procs)
        start("slurmctld", "-D", "-f", str(conf))
        _wait_for(lambda: cluster.run("scontrol", "ping", check=False).returncode == 0, START_TIMEOUT_S,
                  "slurmctld to answer", cluster, procs)
        start("slurmd", "-D", "-f", str(conf))

        def node_idle() -> bool:
            state = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            return state == "idle"

        _wait_for(node_idle, START_TIMEOUT_S, "the node to become idle", cluster, procs)
        yield cluster
    finally:
        with_ctld = any(p.poll() is None for p in procs[1:2])
        if with_ctld:
            subprocess.run([_which("scancel"), "--full", "--partition=test"], env=env, capture_output=True, timeout=30)
            subprocess.run([_which("scontrol"), "shutdown"], env=env, capture_output=True, timeout=30)
        for proc in reversed(procs):  # slurmd, slurmctld, then munged
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_array_then_group_on_slurm(slurm: Cluster, tmp_path: Path, bids_factory: Callable[..., Path]) -> None:
    bids = bids_factory(scans=[f"sub-{s}/anat/sub-{s}_T1w.nii.gz" for s in SUBJECTS]
                        + ["sub-02/anat/sub-02_T2w.nii.gz"], extras=False)
    out = tmp_path / "qa"
    env = dict(slurm.env)
    env.update(BIDS_DIR=str(bids), OUT_DIR=str(out), BIDS_QA_EXEC=f"{sys.executable} -m bids_qa",
               BIDS_QA_ARGS="--device auto", WORK_ROOT=str(tmp_path / "scratch"), MAX_PARALLEL="2",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    started = time.monotonic()
    submitted = subprocess.run(["bash", str(SUBMIT), "--cpus-per-task=1", "--mem=1500M", "--time=00:15:00"],
                               env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    words = submitted.stdout.split()
    array_id, group_id = words[words.index("job") + 1], words[words.index("group:") + 2]
    assert array_id.isdigit() and group_id.isdigit(), submitted.stdout

    # the group job waits on the array
    group = slurm.job_records(group_id)[0]
    assert group["Dependency"].startswith(f"afterok:{array_id}") or group["JobState"] != "PENDING", group

    def all_done() -> bool:
        queue = slurm.run("squeue", "-h", "-o", "%i %T", check=False).stdout.strip()
        return queue == ""

    _wait_for(all_done, JOBS_TIMEOUT_S, "the array and group jobs", slurm)
    elapsed = time.monotonic() - started

    logs = out / "slurm_logs"
    tasks = [r for r in slurm.job_records(array_id) if "ArrayTaskId" in r]
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == [1, 2, 3]
    for task in tasks:
        log = logs / f"bids_qa_{array_id}_{task['ArrayTaskId']}.log"
        text = log.read_text(encoding="utf-8") if log.exists() else "(no log)"
        assert task["JobState"] == "COMPLETED", f"task {task['ArrayTaskId']}: {task['JobState']}\n{text}"
        label = SUBJECTS[int(task["ArrayTaskId"]) - 1]
        assert f"participant {label}, exit status 0" in text, text
    group = slurm.job_records(group_id)[0]
    assert group["JobState"] == "COMPLETED", (logs / f"bids_qa_group_{group_id}.log").read_text(encoding="utf-8")
    last_task_end = max(task["EndTime"] for task in tasks)  # ISO timestamps compare as text
    assert group["StartTime"] >= last_task_end, (group["StartTime"], last_task_end)

    # every scan's outputs, written by its own task into the shared folder
    for label in SUBJECTS:
        scans = [f"sub-{label}_T1w"] + ([f"sub-{label}_T2w"] if label == "02" else [])
        for scan_id in scans:
            tsv = out / f"sub-{label}" / "anat" / f"{scan_id}_qa.tsv"
            assert tsv.is_file(), f"missing {tsv}"
            header = tsv.read_text(encoding="utf-8").splitlines()[0].split("\t")
            assert header == QA_COLUMNS
            rows = read_tsv(tsv)
            assert rows and all(r["flag"] in {"pass", "review", "fail", "n/a"} for r in rows), rows
            assert (tsv.with_name(f"{scan_id}_qa.json")).is_file()
            assert (tsv.with_name(f"{scan_id}_report.html")).is_file()
    participant_logs = sorted((out / "logs").glob("*participant*"))
    assert len(participant_logs) == len(SUBJECTS), participant_logs

    # the group job's tables: one row per scan
    t1 = read_tsv(out / "group_T1w.tsv")
    assert sorted(r["scan_id"] for r in t1) == [f"sub-{s}_T1w" for s in SUBJECTS]
    assert all(r["verdict"] in {"pass", "review", "fail"} for r in t1), t1
    t2 = read_tsv(out / "group_T2w.tsv")
    assert [r["scan_id"] for r in t2] == ["sub-02_T2w"]
    assert (out / "group_T1w.html").is_file()
    assert not list((tmp_path / "scratch").glob("bids_qa_*")), "scratch folders must be removed"
    runtimes = ", ".join(f"task {t['ArrayTaskId']} {t['RunTime']}" for t in sorted(tasks, key=lambda t: t["ArrayTaskId"]))
    print(f"SLURM array of {len(SUBJECTS)} participants + group job finished in {elapsed:.0f} s "
          f"({runtimes}, group {group['RunTime']})")
