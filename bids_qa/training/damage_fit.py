"""Fit the knots of the damage-based severity score (:mod:`bids_qa.damage`) on training volumes.

For every artifact of Hays et al. (Table 1) the parameter SS is drawn uniformly in [0, 1] and
applied to clean training volumes in 3D (as ``bids_qa simulate`` does) and to native 2D slices
(as severity training does); the knots are the deciles of the resulting damage ``1 - SSIM``.
Writes ``bids_qa/data/damage_calibration.json`` (or ``--out``) with its provenance.

    python -m bids_qa.training.damage_fit --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MAX_FIT_VOXELS = 12_000_000


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def draw_damages(volumes, per_volume_3d: int, slices_per_volume: int, seed: int) -> dict:
    """``{"3d": {artifact: [D...]}, "2d": {...}}`` from uniform-SS draws on ``volumes``."""
    from bids_qa import artifacts as A
    from bids_qa.damage import structural_damage

    out: dict[str, dict[str, list[float]]] = {"3d": {}, "2d": {}}
    for v_index, (entry, vol) in enumerate(volumes):
        for a_index, art in enumerate(A.SEVERITY_ARTIFACTS):
            rng = np.random.default_rng([seed, v_index, a_index])
            for _ in range(per_volume_3d):
                p = A.sample_params(art, rng, float(rng.uniform()), ndim=3)
                bad = A.apply_artifact(vol.data, art, p, vol.zooms)
                out["3d"].setdefault(art, []).append(structural_damage(vol.data, bad, vol.mask))
            axis = vol.slice_axis
            n = vol.data.shape[axis]
            for _ in range(slices_per_volume):
                k = int(rng.integers(int(0.2 * n), max(int(0.2 * n) + 1, int(0.8 * n))))
                img = np.take(vol.data, k, axis=axis)
                mask = np.take(vol.mask, k, axis=axis)
                if mask.sum() < 100:
                    continue
                zooms = tuple(z for i, z in enumerate(vol.zooms) if i != axis)
                p = A.sample_params(art, rng, float(rng.uniform()), ndim=2)
                bad = A.apply_artifact(img, art, p, zooms)
                out["2d"].setdefault(art, []).append(structural_damage(img, bad, mask))
        print(f"  {entry['path']} done", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from bids_qa.damage import CALIBRATION_FILE, KNOT_LEVELS, fit_calibration
    from bids_qa.training.data import manifest_entries
    from bids_qa.volume import load_volume

    p = argparse.ArgumentParser(prog="python -m bids_qa.training.damage_fit", description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--volumes", type=int, default=7, help="training volumes used (spread over the list)")
    p.add_argument("--draws-3d", type=int, default=6, help="3D draws per volume and artifact")
    p.add_argument("--slices", type=int, default=40, help="2D draws per volume and artifact")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parents[1] / "data" / CALIBRATION_FILE))
    args = p.parse_args(argv)
    entries = manifest_entries("train")
    pick = np.linspace(0, len(entries) - 1, min(args.volumes, len(entries))).round().astype(int)
    chosen = [entries[i] for i in sorted(set(pick.tolist()))]
    t0 = time.time()
    volumes = [(e, load_volume(Path(args.data) / e["path"])) for e in chosen]
    # 3D motion on a 37 M-voxel volume costs ~20 s a draw: fit on ordinary volumes
    volumes = [(e, v) for e, v in volumes if v.data.size <= MAX_FIT_VOXELS]
    chosen = [e for e, _ in volumes]
    samples = draw_damages(volumes, args.draws_3d, args.slices, args.seed)
    result = {
        "_comment": "Knots of bids_qa.damage.damage_severity: damage (1 - SSIM in the head) at the "
        "knot_levels quantiles of uniform-SS draws per artifact; 'pooled' = all single artifacts.",
        "knot_levels": list(KNOT_LEVELS),
        "knots": fit_calibration(samples),
        "provenance": {
            "volumes": [e["path"] for e in chosen],
            "draws_3d_per_volume_artifact": args.draws_3d,
            "slices_per_volume_artifact": args.slices,
            "seed": args.seed,
            "git_commit": _commit(),
            "seconds": round(time.time() - t0, 1),
            "n": {d: {a: len(v) for a, v in s.items()} for d, s in samples.items()},
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result["knots"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
