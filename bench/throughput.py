"""Throughput of the participant level on typical 1 mm structural volumes, against the I/O floor.

Generates N volumes of 256x256x176 voxels at 1 mm (nilearn's MNI152 template padded into that
matrix, stored as int16 like scanner output, each with its own Rician noise), writes them as
``.nii.gz`` into a temporary BIDS dataset, and runs ``bids_qa ... participant`` on them in a fresh
Python process (so start-up, imports and weight loading count, as they do for a user). Prints, for
reports off and/or on:

* the wall time of the whole run divided by N (includes start-up) and its ratio to the floor;
* throughput once scoring has started (first scan handed to the scorers to last scan written),
  volumes per second, and the start-up time before it;
* the median per-stage breakdown (load, each scorer's loader-side ``prepare`` and its scoring,
  judge, write, report) recorded in each scan's provenance, each as seconds and as a ratio to the
  floor. Their sum is the work spent on one volume; since loading and preparation overlap with
  inference (``--nprocs`` loader threads), the sum is larger than the seconds per volume;
* the peak resident memory of the bids_qa process (``wait4`` rusage of the child);
* the floor: reading the same files with nibabel alone (``nib.load(f).get_fdata(dtype=float32)``:
  decompression and conversion, the floor for any tool that reads these files), measured before and
  after the runs in the same session (median of both), and the 1-minute load average.

Usage::

    python bench/throughput.py --n 12 --keep /tmp/bench12          # reports off
    python bench/throughput.py --n 12 --keep /tmp/bench12 --both   # reports off, then on
    python bench/throughput.py --n 64 --device cuda --scan-batch 8 --keep /tmp/bench  # GPU target

With ``--keep DIR`` the generated volumes are kept and reused by the next run with the same ``--n``,
so several settings can be compared on the same files. The bids_qa that runs is the checkout this
script lives in (its root is put first on ``PYTHONPATH``), not whichever copy is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHAPE = (256, 256, 176)


def make_volumes(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` 1 mm volumes of :data:`SHAPE` as a BIDS dataset under ``folder``."""
    import nibabel as nib

    from bids_qa.demo import template_maps

    t1 = template_maps(1.0)[0]
    canvas = np.zeros(SHAPE, np.float32)
    src = [
        slice(max(0, (s - d) // 2), max(0, (s - d) // 2) + min(s, d))
        for s, d in zip(t1.shape, SHAPE, strict=True)
    ]
    dst = [
        slice(max(0, (d - s) // 2), max(0, (d - s) // 2) + min(s, d))
        for s, d in zip(t1.shape, SHAPE, strict=True)
    ]
    canvas[tuple(dst)] = t1[tuple(src)]
    canvas /= float(np.percentile(canvas[canvas > 0.2], 95))
    (folder / "dataset_description.json").write_text(
        json.dumps({"Name": "bench", "BIDSVersion": "1.9.0"})
    )
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(1, n + 1):
        sigma = 0.02
        real = canvas + rng.normal(0, sigma, SHAPE).astype(np.float32)
        imag = rng.normal(0, sigma, SHAPE).astype(np.float32)
        data = np.clip(np.sqrt(real * real + imag * imag) * 1000, 0, 32767).astype(np.int16)
        path = folder / f"sub-{i:02d}" / "anat" / f"sub-{i:02d}_T1w.nii.gz"
        path.parent.mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
        paths.append(path)
    return paths


def nibabel_load_seconds(paths: list[Path], clock=time.perf_counter) -> list[float]:
    """Seconds to read each file into a float32 array with nibabel alone, on ``clock``
    (``time.process_time`` gives the CPU floor, which moves much less with the machine's load)."""
    import nibabel as nib

    out = []
    for path in paths:
        start = clock()
        data = nib.load(str(path)).get_fdata(dtype=np.float32)
        out.append(clock() - start)
        del data
    return out


def child_main(marks_path: str, argv: list[str]) -> int:
    """Run ``bids_qa argv`` in this (fresh) process and write the time stamps of its scoring
    phase (wall clock, ``time.time``) to ``marks_path``: when each scan is handed to the scorers
    and when each is finished (written, and reported when reports are on)."""
    from bids_qa import participant
    from bids_qa.cli import main as bids_qa_main

    marks: dict[str, list[float]] = {"start": [], "done": []}
    for name, key, before in (("_process", "start", True), ("assess_scan", "done", False)):
        real = getattr(participant, name, None)
        if real is None:  # the pipeline's layout changed: no scoring-phase figure, the rest holds
            continue

        def timed(*a, _real=real, _key=key, _before=before, **k):
            if _before:
                marks[_key].append(time.time())
            out = _real(*a, **k)
            if not _before:
                marks[_key].append(time.time())
            return out

        setattr(participant, name, timed)
    code = bids_qa_main(argv)
    Path(marks_path).write_text(json.dumps(marks), encoding="utf-8")
    return code


def run_once(argv: list[str], out: Path) -> dict[str, object]:
    """One participant-level run in a child process: wall time, peak RSS, scoring-phase marks."""
    if out.exists():
        shutil.rmtree(out)
    marks_path = out.parent / f"{out.name}_marks.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(marks_path), "--", *argv],
        env=env,
        cwd=str(ROOT),
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    marks = json.loads(marks_path.read_text()) if marks_path.exists() else {"start": [], "done": []}
    return {
        "code": proc.returncode,
        "wall": wall,
        "peak_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "cpu": usage.ru_utime + usage.ru_stime,
        "startup": (marks["start"][0] - start) if marks["start"] else float("nan"),
        "scoring": (marks["done"][-1] - marks["start"][0]) if marks["start"] and marks["done"] else float("nan"),
    }


def stage_medians(out: Path) -> tuple[dict[str, float], float, list[str]]:
    """Median seconds per stage over the scans' provenance, the median of their sums, scorers."""
    stages: dict[str, list[float]] = {}
    totals, scorers = [], []
    for sidecar_path in sorted(out.rglob("*_qa.json")):
        prov = json.loads(sidecar_path.read_text(encoding="utf-8"))["provenance"]
        scorers = [s["name"] for s in prov["scorers"]]
        timings = prov["timings_s"]
        totals.append(sum(timings.values()))
        for stage, seconds in timings.items():
            stages.setdefault(stage, []).append(seconds)
    medians = {stage: statistics.median(v) for stage, v in stages.items()}
    return medians, statistics.median(totals) if totals else float("nan"), scorers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=12, help="number of volumes (default 12)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument(
        "--nprocs", type=int, default=None, help="bids_qa --nprocs (default: available CPUs)"
    )
    parser.add_argument("--batch-size", default=None, help="bids_qa --batch-size (default: auto)")
    parser.add_argument("--scan-batch", default=None, help="bids_qa --scan-batch (default: auto)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reports", action="store_true", help="render the HTML reports")
    group.add_argument("--both", action="store_true", help="one run with reports off, one with them on")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep the data and outputs")
    args = parser.parse_args(argv)

    from bids_qa import scoring

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bids_qa_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    bids = root / "bids"
    try:
        paths = sorted(bids.rglob("*_T1w.nii.gz")) if bids.exists() else []
        if len(paths) == args.n:
            print(f"reusing {args.n} volumes in {bids}")
        else:
            if bids.exists():
                shutil.rmtree(bids)
            bids.mkdir()
            start = time.perf_counter()
            paths = make_volumes(bids, args.n)
            print(
                f"generated {args.n} volumes {SHAPE} at 1 mm in {time.perf_counter() - start:.1f} s "
                f"({sum(p.stat().st_size for p in paths) / args.n / 1e6:.1f} MB each as .nii.gz)"
            )

        floor = nibabel_load_seconds(paths)
        loads = [os.getloadavg()[0]]
        modes = [False, True] if args.both else [args.reports]
        results = []
        for reports in modes:
            out = root / ("qa_reports" if reports else "qa")
            cmd = [str(bids), str(out), "participant", "--device", args.device, "-q"]
            if args.nprocs:
                cmd += ["--nprocs", str(args.nprocs)]
            if args.batch_size:
                cmd += ["--batch-size", str(args.batch_size)]
            if args.scan_batch:
                cmd += ["--scan-batch", str(args.scan_batch)]
            if not reports:
                cmd.append("--no-reports")
            run = run_once(cmd, out)
            loads.append(os.getloadavg()[0])
            if run["code"] != 0:
                print(f"bids_qa exited with {run['code']}", file=sys.stderr)
                return int(run["code"])  # type: ignore[arg-type]
            results.append((reports, run, *stage_medians(out)))
        floor += nibabel_load_seconds(paths)
        floor_cpu = statistics.median(nibabel_load_seconds(paths, time.process_time))
        loads.append(os.getloadavg()[0])
        nib_s = statistics.median(floor)

        print(
            f"scorers: {', '.join(results[0][4])}; not installed: "
            f"{', '.join(scoring.unavailable_scorers()) or 'none'}"
        )
        print(
            f"device {args.device}, --nprocs {args.nprocs or 'default'}, --batch-size "
            f"{args.batch_size or 'auto'}, --scan-batch {args.scan_batch or 'auto'}, N = {args.n}"
        )
        print(f"nibabel floor (get_fdata, median of {len(floor)}): {nib_s:.3f} s per volume")
        print(f"nibabel floor in CPU seconds (median):       {floor_cpu:.3f} s per volume")
        print(f"load average (1 min) before / after each run / end: {' / '.join(f'{v:.2f}' for v in loads)} "
              f"on {os.cpu_count()} CPUs")
        for reports, run, stages, total, _ in results:
            n = args.n
            print()
            print(f"== reports {'on' if reports else 'off'} ==")
            print(f"{'stage':<22}{'median s/volume':>16}{'x floor':>9}")
            for stage, seconds in stages.items():
                print(f"{stage:<22}{seconds:>16.3f}{seconds / nib_s:>9.2f}")
            print(f"{'sum of the stages':<22}{total:>16.3f}{total / nib_s:>9.2f}")
            wall, scoring_s = float(run["wall"]), float(run["scoring"])  # type: ignore[arg-type]
            print(
                f"wall time / N (incl. start-up): {wall / n:.3f} s per volume, "
                f"{wall / n / nib_s:.2f}x the floor ({wall:.1f} s total)"
            )
            if scoring_s == scoring_s:  # not NaN
                print(
                    f"scoring phase:                  {scoring_s / n:.3f} s per volume, "
                    f"{scoring_s / n / nib_s:.2f}x the floor, {n / scoring_s:.2f} volumes/s "
                    f"(start-up {float(run['startup']):.1f} s)"  # type: ignore[arg-type]
                )
            cpu = float(run["cpu"])  # type: ignore[arg-type]
            print(
                f"CPU time / N (incl. start-up):  {cpu / n:.3f} s per volume, "
                f"{cpu / n / floor_cpu:.2f}x the floor's CPU time"
            )
            print(f"peak resident memory:           {float(run['peak_mb']):.0f} MB")  # type: ignore[arg-type]
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
