"""Does noise read as motion? ``ssim_mean`` of the clean validation volumes, as loaded and with
Rician noise added in 3D, for one or more SSIM weights files (maintainer check, model card table).

    python scripts/ssim_noise_check.py DATA_DIR WEIGHTS [WEIGHTS ...]
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 64
    import torch

    from bids_qa import artifacts
    from bids_qa.models.ssim import SSIMScorer
    from bids_qa.training.data import clean_volumes
    from bids_qa.volume import volume_from_array

    torch.set_num_threads(1)
    data_dir, weights = argv[0], argv[1:]
    vols = [v for e, v in clean_volumes(data_dir, "validation") if not e.get("out_of_scope")]
    scorers = {w: SSIMScorer(device="cpu", weights=w) for w in weights}
    for std in (0.0, 0.02, 0.05):
        res: dict[str, list[float]] = {w: [] for w in scorers}
        for i, v in enumerate(vols):
            noisy = v
            if std:
                params = {"std": std, "seed": i}
                noisy = volume_from_array(
                    artifacts.apply_artifact(v.data, "noise", params), v.zooms
                )
            for w, s in scorers.items():
                res[w].append(float(s.score(noisy).values["ssim_mean"]))
        for w, r in res.items():
            print(
                f"noise SD {std}: {w}: mean ssim_mean {np.mean(r):.3f}, min {np.min(r):.3f}, "
                f"review or worse (<0.85) {sum(x < 0.85 for x in r)}/{len(r)}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
