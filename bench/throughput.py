"""Throughput of the participant level on typical 1 mm structural volumes.

Generates N volumes of 256x256x176 voxels at 1 mm (nilearn's MNI152 template padded into that
matrix, stored as int16 like scanner output, each with its own Rician noise), writes them as
``.nii.gz`` into a temporary BIDS dataset, and runs ``bids_qa ... participant`` on them in this
process. Prints:

* throughput: volumes per second and seconds per volume once scoring has started (from the
  first scan handed to the scorers to the last scan written; excludes start-up: imports, weight
  loading, discovery), and the wall time of the whole run divided by N (includes start-up);
* the median per-stage breakdown (load, each scorer's loader-side ``prepare`` and its scoring,
  judge, write, report) recorded in each scan's provenance. Their sum is the work spent on one
  volume; since loading and preparation overlap with inference (``--nprocs`` loader threads),
  the sum is larger than the seconds per volume of the throughput line;
* the peak resident memory of the process;
* the ratio to loading the same files with nibabel alone (``nib.load(f).get_fdata(dtype=float32)``),
  the floor for any tool that reads these files.

Usage::

    python bench/throughput.py                  # 5 volumes, CPU, no reports
    python bench/throughput.py --n 10 --device cuda --reports
    python bench/throughput.py --n 64 --device cuda --scan-batch 8 --keep /tmp/bench  # GPU target

With ``--keep DIR`` the generated volumes are kept and reused by the next run with the same ``--n``,
so several settings can be compared on the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def nibabel_load_seconds(paths: list[Path]) -> list[float]:
    """Seconds to read each file into a float32 array with nibabel alone."""
    import nibabel as nib

    out = []
    for path in paths:
        start = time.perf_counter()
        data = nib.load(str(path)).get_fdata(dtype=np.float32)
        out.append(time.perf_counter() - start)
        del data
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5, help="number of volumes (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument(
        "--nprocs", type=int, default=None, help="bids_qa --nprocs (default: available CPUs)"
    )
    parser.add_argument(
        "--batch-size", default=None, help="bids_qa --batch-size (default: auto)"
    )
    parser.add_argument(
        "--scan-batch", default=None, help="bids_qa --scan-batch (default: auto)"
    )
    parser.add_argument("--reports", action="store_true", help="also render the HTML reports")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep the data and outputs")
    args = parser.parse_args(argv)

    from bids_qa import participant, scoring
    from bids_qa.cli import main as bids_qa_main

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bids_qa_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    bids, out = root / "bids", root / "qa"
    try:
        if out.exists():
            shutil.rmtree(out)
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

        nib_times = nibabel_load_seconds(paths)
        nib_median = statistics.median(nib_times)

        cmd = [str(bids), str(out), "participant", "--device", args.device, "-q"]
        if args.nprocs:
            cmd += ["--nprocs", str(args.nprocs)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.scan_batch:
            cmd += ["--scan-batch", str(args.scan_batch)]
        if not args.reports:
            cmd.append("--no-reports")

        # Time stamps of the scoring phase: when the pipeline starts processing scans and when
        # each scan is finished (written, and reported when reports are on).
        marks: dict[str, list[float]] = {"start": [], "done": []}
        real_process, real_assess = participant._process, participant.assess_scan

        def timed_process(*a, **k):
            marks["start"].append(time.perf_counter())
            return real_process(*a, **k)

        def timed_assess(*a, **k):
            outcome = real_assess(*a, **k)
            marks["done"].append(time.perf_counter())
            return outcome

        participant._process, participant.assess_scan = timed_process, timed_assess
        try:
            start = time.perf_counter()
            code = bids_qa_main(cmd)
            wall = time.perf_counter() - start
        finally:
            participant._process, participant.assess_scan = real_process, real_assess
        if code != 0:
            print(f"bids_qa exited with {code}", file=sys.stderr)
            return code
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes

        stages: dict[str, list[float]] = {}
        totals = []
        scorers = []
        for sidecar_path in sorted(out.rglob("*_qa.json")):
            prov = json.loads(sidecar_path.read_text(encoding="utf-8"))["provenance"]
            scorers = [s["name"] for s in prov["scorers"]]
            timings = prov["timings_s"]
            totals.append(sum(timings.values()))
            for stage, seconds in timings.items():
                stages.setdefault(stage, []).append(seconds)
        per_volume = statistics.median(totals)

        scoring_s = marks["done"][-1] - marks["start"][0]
        per_volume_throughput = scoring_s / args.n
        print(
            f"scorers: {', '.join(scorers)}; not installed: {', '.join(scoring.unavailable_scorers()) or 'none'}"
        )
        print(
            f"device {args.device}, --nprocs {args.nprocs or 'default'}, --batch-size "
            f"{args.batch_size or 'auto'}, --scan-batch {args.scan_batch or 'auto'}, "
            f"reports {'on' if args.reports else 'off'}"
        )
        print()
        print(f"{'stage':<22}{'median s/volume':>16}")
        for stage, values in stages.items():
            print(f"{stage:<22}{statistics.median(values):>16.3f}")
        print(f"{'sum of the stages':<22}{per_volume:>16.3f}")
        print()
        print(
            f"throughput (scoring phase): {per_volume_throughput:.3f} s per volume, "
            f"{1 / per_volume_throughput:.2f} volumes per second ({scoring_s:.1f} s for {args.n})"
        )
        print(
            f"wall time of the run / N:   {wall / args.n:.3f} s per volume (includes start-up, {wall:.1f} s total)"
        )
        print(f"nibabel alone (get_fdata):  {nib_median:.3f} s per volume (median)")
        print(
            f"ratio bids_qa / nibabel:    {per_volume_throughput / nib_median:.1f}x (throughput), "
            f"{wall / args.n / nib_median:.1f}x (wall / N)"
        )
        print(f"load average (1 min):       {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        print(f"peak resident memory:       {peak_mb:.0f} MB")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
