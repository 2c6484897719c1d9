"""Per-artifact slice-level Spearman of a severity weights file (a 15-second check of a candidate).

60 validation slices (seed 5), each scored clean and with every paper-000 artifact at SS 0.1, 0.3,
0.5, 0.7 and 0.9 (2D simulation, as in training); prints Spearman(score, SS) and the mean score at
each SS per artifact. Cheaper than ``bids_qa evaluate`` (3D corruption of whole volumes), and what
docs/models/severity.md's session-3 section reports.

    python scripts/severity_slice_check.py DATA_DIR [WEIGHTS]
"""

from __future__ import annotations

import argparse

import numpy as np

LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


def main() -> None:
    import torch
    from scipy.stats import spearmanr

    from bids_qa import artifacts
    from bids_qa.models.severity import NAME, WEIGHTS_FILE, SeverityConfig, build_encoder
    from bids_qa.models.weights import load_network
    from bids_qa.training.severity import sources_from_data
    from bids_qa.training.slices import draw_slice, renormalise, to_model_input

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("weights", nargs="?", default=None)
    ap.add_argument("--slices", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_network(NAME, WEIGHTS_FILE, args.weights, "cpu", SeverityConfig.from_dict, build_encoder)
    net, cfg = loaded.net, loaded.config
    sources = sources_from_data(args.data_dir, "validation", 0, 0)
    rng = np.random.default_rng(5)
    results = {a: ([], []) for a in artifacts.ARTIFACTS_000}
    for _ in range(args.slices):
        _, img, mask, zooms = draw_slice(sources, rng)
        for art in artifacts.ARTIFACTS_000:
            px = cfg.pixel_mm
            xs, ss = [to_model_input(img, zooms, cfg.input_size, mask, px)], [0.0]
            for level in LEVELS:
                neg, _ = artifacts.simulate(img, art, rng, severity=level, zooms=zooms)
                xs.append(
                    to_model_input(renormalise(neg, img, mask), zooms, cfg.input_size, mask, px)
                )
                ss.append(level)
            with torch.inference_mode():
                y = net(torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))).numpy()
            results[art][0].extend(ss)
            results[art][1].extend(y)
    for art, (ss, y) in results.items():
        ss, y = np.array(ss), np.array(y)
        means = " ".join(f"{y[ss == s].mean():.2f}" for s in (0.0, *LEVELS))
        print(f"{art:11s} rho {spearmanr(ss, y).statistic:.3f}  mean score by SS: {means}")


if __name__ == "__main__":
    main()
