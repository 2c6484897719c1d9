"""Train the tiers model (Loizillon et al., Medical Image Analysis 2024) on clean volumes corrupted
on the fly (:mod:`bids_qa.training.tier_samples`).

Loss: weighted binary cross-entropy over the six outputs (Loizillon et al. Sec. 3.5), each
positive class weighted by (negatives / positives) of the sampling distribution. The moderate
output is trained as "grade >= 1" (ours; on grade-0/1 data this is the paper's 0-vs-1 task). The
kept weights are those with the lowest validation loss (Sec. 3.3), on a fixed set of corrupted
validation volumes; at the end they are measured with the tier benchmark
(:func:`bids_qa.evaluate_tiers.evaluate_tiers`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa.evaluate_tiers import (
    build_evaluation_set,
    metrics_from_predictions,
    predict_probabilities,
)
from bids_qa.models.tiers import ARTIFACTS, NAME, TASKS, TierConfig, build_network
from bids_qa.training import loop
from bids_qa.training.data import synthetic_mix
from bids_qa.training.tier_samples import (
    CubeSource,
    TierSampleMaker,
    positive_weights,
    sources_from_data,
)


def tier_loss(logits, labels, pos_weight):
    """Weighted binary cross-entropy averaged over the six outputs; also per-task parts."""
    import torch.nn.functional as F

    per = F.binary_cross_entropy_with_logits(
        logits, labels, pos_weight=pos_weight, reduction="none"
    )
    parts = {
        f"{a}_{t}": float(per[:, i, j].mean().detach())
        for i, a in enumerate(ARTIFACTS)
        for j, t in enumerate(TASKS)
    }
    return per.mean(), parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids_qa train tiers", description=__doc__.splitlines()[0])
    loop.add_common_arguments(p, steps=2600, batch_size=8, lr=1e-3)
    p.add_argument("--grid", type=int, default=64, help="model input grid (cube side, voxels)")
    p.add_argument(
        "--voxel-mm",
        type=float,
        default=0.0,
        help="input cube of this voxel size around the head (0: whole field of view in the grid)",
    )
    p.add_argument(
        "--channels", type=int, nargs=5, default=[16, 32, 48, 64, 96], help="conv block widths"
    )
    p.add_argument(
        "--fc", type=int, nargs=2, default=[128, 32], help="hidden sizes of FC 1 and FC 2"
    )
    p.add_argument(
        "--synthetic", type=int, default=6, help="synthetic MNI-derived volumes added to training"
    )
    p.add_argument(
        "--val-draws",
        type=int,
        default=2,
        help="validation copies per volume and class during training",
    )
    p.add_argument(
        "--eval-draws",
        type=int,
        default=4,
        help="copies per volume and class for the final evaluation",
    )
    p.add_argument(
        "--views",
        type=int,
        default=2,
        help="training inputs made from each simulated cube (flips/permutations)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="stop (checkpointed, resumable) after this many minutes of training; 0: no limit",
    )
    p.add_argument(
        "--init-partial",
        action="store_true",
        help="with --init: load only tensors of matching name and shape (e.g. reuse a conv trunk "
        "when --grid changes the first fully connected layer)",
    )
    return p


def validation_set(sources: list[CubeSource], seed: int, draws: int, grid: int):
    """Fixed corrupted validation cubes (float16), their grades ``(n, 3)`` and labels ``(n, 3, 2)``."""
    cubes, grades = [], []
    for cube, g, _ in build_evaluation_set(sources, seed, draws):
        cubes.append(cube.astype(np.float16))
        grades.append(g)
    x = np.stack(cubes) if cubes else np.zeros((0, grid, grid, grid), np.float16)
    g = np.stack(grades) if grades else np.zeros((0, len(ARTIFACTS)), np.int64)
    labels = np.stack([(g >= 1), (g >= 2)], axis=2).astype(np.float32)
    return x, g, labels


def train(
    settings: loop.TrainSettings,
    train_sources: list[CubeSource],
    val_sources: list[CubeSource],
    config: TierConfig,
    argv: list[str] | None = None,
    val_draws: int = 2,
    log_every: int = 25,
    max_minutes: float = 0.0,
    views: int = 2,
    init: str | None = None,
    init_partial: bool = False,
) -> dict[str, Any]:
    """Run (or resume) training; returns the best validation record. Writes only into run_dir."""
    import torch

    from bids_qa.models.weights import save_weights

    warmup = max(1, min(100, settings.steps // 20))

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine to 5 %
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, settings.steps - warmup)
        # a plain float, so that the optimizer state stays loadable with weights_only=True
        return float(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, frac))))

    run = loop.start_run(
        settings,
        NAME,
        argv,
        lambda: build_network(config),
        init,
        init_partial=init_partial,
        weight_decay=1e-5,
        lr_factor=lr_factor,
    )
    net, opt, sched, log = run.net, run.opt, run.sched, run.log
    best = run.extra.get("best", {"val_loss": 1e9})
    pos_weight = torch.from_numpy(positive_weights()).to(settings.device)
    val_cubes, val_grades, val_labels = validation_set(
        val_sources, settings.seed + 7919, val_draws, config.grid
    )

    def validate() -> dict[str, Any]:
        probs = predict_probabilities(net, val_cubes.astype(np.float32))
        p = torch.from_numpy(np.clip(probs, 1e-6, 1 - 1e-6))
        logits = torch.log(p) - torch.log1p(-p)
        loss, _ = tier_loss(logits, torch.from_numpy(val_labels), pos_weight.cpu())
        single = (val_grades > 0).sum(axis=1) <= 1
        return {"val_loss": float(loss), **metrics_from_predictions(val_grades, probs, single)}

    maker = TierSampleMaker(train_sources, views=views)
    if run.start == 0 and len(val_cubes):  # the untrained baseline, for the record (never kept)
        log.write({"step": 0, "validation": validate()})
    t0 = time.time()
    net.train()
    stopped_early = False
    saved_rng = run.extra.get("torch_rng")
    for step, (x, labels, _g) in loop.batches(maker, settings, run.start):
        if saved_rng is not None:  # resume dropout's random stream where the checkpoint left it
            torch.set_rng_state(torch.tensor(saved_rng, dtype=torch.uint8))
            saved_rng = None
        # (batch, views, 1, G, G, G) -> (batch * views, 1, G, G, G)
        x = x.flatten(0, 1).to(settings.device)
        labels = labels.flatten(0, 1).to(settings.device)
        loss, parts = tier_loss(net(x), labels, pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0:
            log.write(
                {
                    "step": step,
                    "loss": loss.item(),
                    **parts,
                    "lr": sched.get_last_lr()[0],
                    "elapsed_s": round(time.time() - t0, 1),
                }
            )
        last = step + 1 == settings.steps
        out_of_time = max_minutes > 0 and (time.time() - t0) > 60 * max_minutes
        if ((step + 1) % settings.validate_every == 0 or last or out_of_time) and len(val_cubes):
            metrics = validate()
            log.write({"step": step + 1, "validation": metrics})
            if metrics["val_loss"] < best["val_loss"]:
                best = {"val_loss": metrics["val_loss"], "step": step + 1, "metrics": metrics}
                meta = loop.weights_metadata(NAME, config, run, step + 1, metrics)
                meta.update(artifacts=list(ARTIFACTS), tasks=list(TASKS))
                save_weights(run.dir / "best.safetensors", net.state_dict(), meta)
        if (step + 1) % settings.checkpoint_every == 0 or last or out_of_time:
            extra = {"best": best, "torch_rng": torch.get_rng_state().tolist()}
            loop.save_checkpoint(run.dir, step + 1, net, opt, extra)
        if out_of_time and not last:
            stopped_early = True
            log.write(
                {
                    "step": step + 1,
                    "stopped": f"time limit of {max_minutes} min reached; resume to continue",
                }
            )
            break
    best = dict(best)
    best["stopped_early"] = stopped_early
    best["train_seconds_this_session"] = round(time.time() - t0, 1)
    return best


def main(argv: list[str] | None = None) -> int:
    argv, args, settings = loop.parse_run(build_parser, argv)
    loop.limit_threads(settings.threads)
    config = TierConfig(
        grid=args.grid,
        channels=tuple(args.channels),
        fc=tuple(args.fc),  # type: ignore[arg-type]
        voxel_mm=args.voxel_mm,
    )
    t0 = time.time()
    mix = synthetic_mix(settings)  # --synthetic-share / --label-maps (training/data.py)
    train_sources = sources_from_data(
        settings.data_dir, "train", args.synthetic, settings.seed, config.grid, config.voxel_mm, mix
    )
    val_sources = sources_from_data(
        settings.data_dir, "validation", 0, settings.seed, config.grid, config.voxel_mm, mix
    )
    print(
        f"training on {len(train_sources)} volumes, validating on {len(val_sources)} "
        f"(resampled in {time.time() - t0:.0f} s)",
        flush=True,
    )
    best = train(
        settings,
        train_sources,
        val_sources,
        config,
        argv,
        val_draws=args.val_draws,
        max_minutes=args.max_minutes,
        views=args.views,
        init=args.init,
        init_partial=args.init_partial,
    )
    print(json.dumps(best, indent=2, default=str), flush=True)
    run_dir = Path(settings.run_dir)
    weights = run_dir / "best.safetensors"
    if best.get("stopped_early"):
        return 0
    if weights.exists() and args.eval_draws > 0:
        from bids_qa.evaluate_tiers import evaluate_tiers
        from bids_qa.models.tiers import TierScorer

        scorer = TierScorer(device=settings.device, weights=str(weights))
        metrics = evaluate_tiers(scorer, val_sources, draws=args.eval_draws)
        (run_dir / "evaluation.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        print(json.dumps(metrics, indent=2), flush=True)
    loop.export_weights(weights, args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
