"""Is the benchmark's 3D motion weaker in the acquisition plane than the 2D motion we train on?

For the first N validation volumes: TorchIO-style 3D motion of the whole volume at SS 0.85 (as
``bids_qa evaluate`` and the flow benchmark apply it) versus 2D slice motion at the same SS (as the
severity and flow trainers apply it), compared by the mean SSIM of central acquisition-plane slices
against the clean ones (docs/models/flow.md, session 3).

    python scripts/motion_visibility_check.py DATA_DIR [--volumes 8] [--severity 0.85]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import torch

    from bids_qa import artifacts, similarity
    from bids_qa.training.data import clean_volumes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--volumes", type=int, default=8)
    ap.add_argument("--severity", type=float, default=0.85)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    means3, means2 = [], []
    for entry, vol in clean_volumes(args.data_dir, "validation")[: args.volumes]:
        ax = vol.slice_axis
        idx = vol.anatomy_slices(ax, min_fraction=0.05)
        idx = idx[len(idx) // 3 : 2 * len(idx) // 3 : max(1, len(idx) // 9)]
        moved = artifacts.apply_artifact(
            vol.data, "motion", artifacts.sample_params("motion", rng, severity=args.severity, ndim=3),
            zooms=vol.zooms,
        )
        zooms = tuple(z for k, z in enumerate(vol.zooms) if k != ax)
        s3, s2 = [], []
        for i in idx:
            clean = np.take(vol.data, i, axis=ax)
            rng_range = float(clean.max() - clean.min())
            s3.append(similarity.ssim(np.take(moved, i, axis=ax), clean, rng_range))
            params = artifacts.sample_params("motion", rng, severity=args.severity)
            s2.append(similarity.ssim(artifacts.apply_artifact(clean, "motion", params, zooms=zooms), clean, rng_range))
        means3.append(np.mean(s3))
        means2.append(np.mean(s2))
        print(f"{entry['path']}: SSIM 3D motion {means3[-1]:.3f}, 2D motion {means2[-1]:.3f}", flush=True)
    print(f"mean over {len(means3)} volumes: 3D {np.mean(means3):.3f}, 2D {np.mean(means2):.3f}")


if __name__ == "__main__":
    main()
