"""Tier grades of artifacts simulated at the scan's *native* resolution (not on the model's grid).

The tier benchmark (``evaluate_tiers``) corrupts the cube the network reads; real artifacts live
in the acquired voxels. For each validation volume this script scores the clean scan and copies
with each artifact (paper 003 Table 3, ``sample_tier_params(..., ndim=3)``) added to the native
normalised volume, and prints how often that artifact is graded >= 1 and 2, plus the tiers of the
clean scans. Several weights files are scored on the same corrupted volumes (one draw per volume
and level, seed ``[77, k]``), so their columns compare directly. docs/models/tiers.md reports it.

    python scripts/tiers_native_check.py DATA_DIR WEIGHTS [WEIGHTS ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

CASES = [(a, lvl) for a in ("noise", "motion", "contrast") for lvl in ("moderate", "severe")]


def main() -> None:
    import torch

    from bids_qa import artifact_tiers, artifacts
    from bids_qa.models.tiers import TierScorer
    from bids_qa.training.data import clean_volumes
    from bids_qa.volume import volume_from_array

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--json", default=None, help="write every grade here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    scorers = {w: TierScorer(weights=w) for w in args.weights}
    rows: dict[str, list[dict]] = {w: [] for w in args.weights}
    volumes = [(e, v) for e, v in clean_volumes(args.data_dir, "validation") if not e.get("out_of_scope")]
    for k, (entry, vol) in enumerate(volumes):
        variants = [("clean", "none", vol)]
        for art, lvl in CASES:
            rng = np.random.default_rng([77, k, CASES.index((art, lvl))])
            params = artifact_tiers.sample_tier_params(art, lvl, rng, ndim=3)
            data = artifacts.apply_artifact(vol.data, art, params, vol.zooms)
            variants.append((art, lvl, volume_from_array(data, vol.zooms)))
        for w, scorer in scorers.items():
            for art, lvl, v in variants:
                values = scorer.score(v, entry.get("suffix")).values
                rows[w].append(
                    {
                        "volume": str(entry.get("path")),
                        "artifact": art,
                        "level": lvl,
                        "tier": int(values["tier"]),
                        **{f"{a}_grade": int(values[f"{a}_grade"]) for a in ("motion", "noise", "contrast")},
                    }
                )
    n = len(volumes)
    for w, rs in rows.items():
        print(f"\n{w}")
        for art, lvl in CASES:
            g = [r[f"{art}_grade"] for r in rs if r["artifact"] == art and r["level"] == lvl]
            print(f"  {art:8s} {lvl:8s}: graded >= 1 {sum(x >= 1 for x in g)}/{n}, graded 2 {sum(x == 2 for x in g)}/{n}")
        clean = [r for r in rs if r["artifact"] == "clean"]
        tiers = [r["tier"] for r in clean]
        reasons = [
            a for r in clean for a in ("motion", "noise", "contrast") if r[f"{a}_grade"] == 2
        ]
        print(
            f"  clean: tier 1 {tiers.count(1)}/{n}, tier 2 {tiers.count(2)}/{n}, tier 3 {tiers.count(3)}/{n}"
            f" (severe grades: {', '.join(reasons) or 'none'})"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
