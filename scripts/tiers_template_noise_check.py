"""Noise grades of the tier model on the MNI template at 1 and 2 mm with known per-voxel noise.

The ``bids_qa demo`` scans are the MNI152 template at 2 mm with Rician noise of 1% of white
matter (clean) or 15% (noisy). A grade must depend on the noise each acquired voxel carries, not on
how many voxels the model's cube averages: the same per-voxel noise at 1 and 2 mm should get the
same grade, 0-1% clean, 15% severe. Prints the noise grade (and tier) per weights file, T1w and
the demo's T2w-like image, voxel size and noise level (docs/models/tiers.md, session 6).

    python scripts/tiers_template_noise_check.py WEIGHTS [WEIGHTS ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

SIGMAS = (0.0, 0.01, 0.02, 0.04, 0.08, 0.15)


def main() -> None:
    import nibabel as nib
    import torch

    from bids_qa import demo
    from bids_qa.models.tiers import TierScorer
    from bids_qa.volume import load_volume

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(1)
    scorers = [TierScorer(weights=w) for w in args.weights]
    print("weights: " + "; ".join(f"[{i}] {s.version}" for i, s in enumerate(scorers)))
    print("contrast voxel_mm sigma/WM | noise grade (tier) per weights")
    with tempfile.TemporaryDirectory() as tmp:
        for voxel in (1.0, 2.0):
            t1, gm, wm, brain, affine = demo.template_maps(voxel)
            images = {"T1w": demo._scale_to_wm(t1, wm), "T2w": demo.t2_like(gm, wm, brain)}
            for name, image in images.items():
                for sigma in SIGMAS:
                    rng = np.random.default_rng(0)
                    data = demo.add_rician_noise(image, sigma, rng) if sigma else image
                    path = Path(tmp) / f"{name}_{voxel}_{sigma}.nii.gz"
                    nib.save(nib.Nifti1Image((data * demo.WM_LEVEL).astype(np.int16), affine), path)
                    vol = load_volume(path)
                    cells = []
                    for scorer in scorers:
                        v = scorer.score(vol).values
                        cells.append(
                            f"{v['noise_grade']} ({v['tier']}; p {v['noise_p_moderate']:.2f}/"
                            f"{v['noise_p_severe']:.2f})"
                        )
                    print(f"{name} {voxel:.0f} {sigma:.2f} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
