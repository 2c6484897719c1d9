"""Is a Table-1 bias field stronger than the inhomogeneity clean scans already have?

For every clean volume of a split, a low-frequency intensity map inside the head (normalised
Gaussian smoothing, sigma 25 mm, over the head mask eroded by 5 mm) summarised by the ratio of its
95th to 5th percentile. Printed for the volume as loaded and after a 3D bias field at SS 0.5 and 0.9
(as ``bids_qa evaluate`` applies it). If the clean ratios vary between volumes more than the field
moves one volume's ratio, an image-only model cannot tell a simulated field from a natural one.
Anatomy (tissue contrast, ventricles) contributes to the ratio too; the comparison is what counts.

    python scripts/bias_strength_check.py DATA_DIR [--split train]
"""

from __future__ import annotations

import argparse

import numpy as np


def low_frequency_ratio(data: np.ndarray, mask: np.ndarray, zooms, sigma_mm: float = 25.0) -> float:
    from scipy import ndimage

    sigma = [sigma_mm / z for z in zooms]
    inner = ndimage.binary_erosion(mask, iterations=max(1, int(round(5.0 / min(zooms)))))
    if inner.sum() < 100:
        inner = mask
    m = inner.astype(np.float32)
    smooth = ndimage.gaussian_filter(data * m, sigma) / np.maximum(ndimage.gaussian_filter(m, sigma), 1e-3)
    lo, hi = np.percentile(smooth[inner], [5, 95])
    return float(hi / max(lo, 1e-6))


def main() -> None:
    from bids_qa import artifacts
    from bids_qa.training.data import clean_volumes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("--split", default="train")
    args = ap.parse_args()
    rng = np.random.default_rng(11)
    rows = []
    for entry, vol in clean_volumes(args.data_dir, args.split):
        if entry.get("out_of_scope"):
            continue
        ratios = [low_frequency_ratio(vol.data, vol.mask, vol.zooms)]
        for ss in (0.5, 0.9):
            params = artifacts.sample_params("bias", rng, severity=ss, ndim=3)
            biased = artifacts.apply_artifact(vol.data, "bias", params, zooms=vol.zooms)
            ratios.append(low_frequency_ratio(biased, vol.mask, vol.zooms))
        rows.append(ratios)
        print(f"{entry['path']}: clean {ratios[0]:.3f}  SS0.5 {ratios[1]:.3f}  SS0.9 {ratios[2]:.3f}", flush=True)
    r = np.array(rows)
    print(
        f"clean ratio across volumes: median {np.median(r[:, 0]):.3f}, 10-90% {np.percentile(r[:, 0], 10):.3f}"
        f"-{np.percentile(r[:, 0], 90):.3f}; change within a volume: SS 0.5 median "
        f"{np.median(r[:, 1] / r[:, 0]):.3f}x, SS 0.9 median {np.median(r[:, 2] / r[:, 0]):.3f}x"
    )


if __name__ == "__main__":
    main()
