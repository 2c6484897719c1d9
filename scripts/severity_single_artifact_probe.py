"""Can the severity encoder learn one artifact on its own? (docs/models/severity.md, session 3)

Trains a fresh encoder (the shipped architecture) for a few hundred steps on pairs (clean slice,
the same slice with one artifact at SS in [0.3, 1]) with a margin ranking loss plus a small pull of
clean scores to 0, and prints, every 100 steps, the pairwise accuracy (corrupted scored above clean)
and mean score gap on 64 fixed validation pairs at SS in [0.7, 1]. Separates "the architecture cannot
see this artifact" from "multi-artifact training does not learn it".

    python scripts/severity_single_artifact_probe.py DATA_DIR bias --steps 1500
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import torch

    from bids_qa import artifacts
    from bids_qa.models.severity import POOLINGS, SeverityConfig, build_encoder
    from bids_qa.training.severity import sources_from_data
    from bids_qa.training.slices import augment_geometry, draw_slice, renormalise, to_model_input

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir")
    ap.add_argument("artifact", choices=artifacts.ARTIFACTS_000)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--pooling", choices=POOLINGS, default="pool_abs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    size = args.input_size
    net = build_encoder(SeverityConfig(input_size=size, pooling=args.pooling))
    train = sources_from_data(args.data_dir, "train", 0, 0)
    val = sources_from_data(args.data_dir, "validation", 0, 0)

    def pair(sources, rng, lowest):
        _, img, mask, z = draw_slice(sources, rng)
        img, mask, z = augment_geometry(img, mask, z, rng)
        neg, _ = artifacts.simulate(img, args.artifact, rng, severity=float(rng.uniform(lowest, 1)), zooms=z)
        return to_model_input(img, z, size), to_model_input(renormalise(neg, img, mask), z, size)

    def batch(sources, rng, n, lowest=0.3):
        pairs = [pair(sources, rng, lowest) for _ in range(n)]
        clean = torch.from_numpy(np.stack([c for c, _ in pairs])[:, None]).float()
        corrupted = torch.from_numpy(np.stack([c for _, c in pairs])[:, None]).float()
        return clean, corrupted

    val_clean, val_corrupted = batch(val, np.random.default_rng(99), 64, 0.7)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    rng = np.random.default_rng(1)
    t0 = time.time()
    for step in range(args.steps + 1):
        if step % 100 == 0:
            net.eval()
            with torch.no_grad():
                sc, sn = net(val_clean), net(val_corrupted)
            net.train()
            print(
                f"step {step} pairwise accuracy {(sn > sc).float().mean():.2f} "
                f"gap {(sn - sc).mean():.3f} clean {sc.mean():.3f} ({time.time() - t0:.0f} s)",
                flush=True,
            )
        if step == args.steps:
            break
        clean, corrupted = batch(train, rng, 16)
        s = net(torch.cat([clean, corrupted]))
        loss = torch.relu(1 + s[:16] - s[16:]).mean() + 0.1 * (s[:16] ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
