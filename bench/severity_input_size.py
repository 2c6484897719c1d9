"""Severity scorer cost for two weights files (e.g. 128 px whole field of view vs 160 px at 1.25 mm) on the same volume.

Prints the median wall time of ``SeverityScorer.score`` (slice stack + network + ruler) per 1 mm
256x256x176 generated volume and the ratio between the two, measured in one run so machine load
cancels out.

    python bench/severity_input_size.py A.safetensors B.safetensors [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", nargs="+")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    from bids_qa.models.severity import SeverityScorer
    from bids_qa.volume import volume_from_array

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (256, 256, 176)), indexing="ij")
    head = ((z / 0.8) ** 2 + (y / 0.9) ** 2 + (x / 0.85) ** 2) < 1
    arr = (head * (0.6 + 0.3 * np.sin(8 * x) * np.cos(6 * y)) + 0.02 * rng.random(head.shape))
    arr = arr.astype(np.float32)
    times = {}
    for w in args.weights:
        scorer = SeverityScorer(device="cpu", weights=w)
        runs = []
        for _ in range(args.repeats):
            vol = volume_from_array(arr, (1.0, 1.0, 1.0))  # fresh: no cached slice stack
            t0 = time.perf_counter()
            scorer.score(vol)
            runs.append(time.perf_counter() - t0)
        times[w] = statistics.median(runs)
        print(f"{w}: input {scorer.config.input_size} px at {scorer.config.pixel_mm or 'whole-FOV'} mm/px, median {times[w]:.3f} s/volume")
    if len(times) == 2:
        a, b = times.values()
        print(f"ratio second/first: {b / a:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
