"""Can more motion practice teach the tier network the two motion levels? (docs/models/tiers.md, session 7)

Continues the given tier weights (default: shipped) on training samples drawn as in training but
with motion present in about three of four samples, and every 100 steps prints the ROC AUC of the
motion ``p_severe`` for moderate vs severe motion (motion alone) on 8 fixed-seed samples per
validation volume and 4 per training volume. Nothing is written except the final weights.

    python scripts/tiers_motion_level_probe.py DATA_DIR OUT.safetensors [--steps 600] [--lr 2e-4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def motion_level_set(sources, seed: int, per_source: int):
    """Cubes with motion alone, alternately moderate and severe, and their grades."""
    from bids_qa.training.tiers import corrupt_cube

    cubes, grades = [], []
    for k, src in enumerate(sources):
        for j in range(per_source):
            grade = 1 + j % 2
            rng = np.random.default_rng([seed, k, j])
            cube, _ = corrupt_cube(src.cube, src.mask, {"motion": grade}, src.voxel_mm, rng)
            cubes.append(cube)
            grades.append(grade)
    return np.stack(cubes), np.array(grades)


def level_auc(net, cubes: np.ndarray, grades: np.ndarray) -> float:
    from bids_qa.training.tiers import predict_probabilities, roc_auc

    return roc_auc(grades == 2, predict_probabilities(net, cubes)[:, 0, 1])


def main(argv: list[str] | None = None) -> int:
    import torch

    from bids_qa.models.tiers import TierConfig, build_network
    from bids_qa.models.weights import load_weights, packaged_weights, save_weights
    from bids_qa.training import tiers as T

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir")
    p.add_argument("out")
    p.add_argument("--weights", default=str(packaged_weights("tiers.safetensors")))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=99)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    state, meta = load_weights(args.weights)
    config = TierConfig.from_dict(meta["config"])
    if config.side_features:
        raise SystemExit("this probe reads weights without a side input")
    net = build_network(config)
    net.load_state_dict(state)
    train = T.sources_from_data(args.data_dir, "train", 6, 0, config.grid, config.voxel_mm)
    val = T.sources_from_data(args.data_dir, "validation", 0, 0, config.grid, config.voxel_mm)
    val_set = motion_level_set(val, 7, 8)
    train_set = motion_level_set([s for s in train if "synthetic" not in s.name], 8, 4)
    print(f"start: AUC validation {level_auc(net, *val_set):.3f}, training {level_auc(net, *train_set):.3f}")
    maker = T.TierSampleMaker(train, views=2)
    pos_weight = torch.from_numpy(T.positive_weights())
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        xs, ys = [], []
        for b in range(8):
            rng = np.random.default_rng([args.seed, step, b])
            while True:  # keep every sample with motion, a third of those without
                x, y, g, _ = maker(rng)
                if g[0, 0] >= 1 or rng.random() < 0.33:
                    break
            xs.append(x)
            ys.append(y)
        net.train()
        loss, _ = T.tier_loss(
            net(torch.from_numpy(np.concatenate(xs))), torch.from_numpy(np.concatenate(ys)), pos_weight
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(
                f"step {step} ({time.time() - t0:.0f} s): loss {loss.item():.3f}, AUC validation "
                f"{level_auc(net, *val_set):.3f}, training {level_auc(net, *train_set):.3f}",
                flush=True,
            )
    save_weights(args.out, net.state_dict(), {"config": config.to_dict(), "version": "probe"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
