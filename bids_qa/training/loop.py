"""Shared training plumbing: run folders, resumable checkpoints, loss logs, deterministic batches.

Every family's trainer draws sample ``i`` from ``numpy.random.default_rng([seed, i])``, so the data a
step sees depends only on the seed and the step number: a resumed run continues with exactly the
batches an uninterrupted run would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainSettings:
    """Options common to every family's trainer (saved in the run folder and the weights)."""

    data_dir: str
    run_dir: str
    steps: int
    batch_size: int
    lr: float
    seed: int
    device: str
    workers: int
    threads: int
    checkpoint_every: int
    validate_every: int
    #: share of synthetic heads among the clean volumes (training/data.py, SyntheticMix)
    synthetic_share: float = 0.0
    #: label maps of the synthetic heads (None: the manifest's label_maps under data_dir)
    label_maps: str | None = None


def add_common_arguments(parser, *, steps: int, batch_size: int, lr: float) -> None:
    """Arguments every ``bids_qa train FAMILY`` command takes."""
    parser.add_argument(
        "--data",
        required=True,
        help="folder holding the clean training volumes (../shared/data layout)",
    )
    parser.add_argument(
        "--run-dir", required=True, help="folder for checkpoints, logs and the final weights"
    )
    parser.add_argument(
        "--steps", type=int, default=steps, help=f"optimisation steps (default {steps})"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"samples per step (default {batch_size})",
    )
    parser.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr})")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for weights init and every drawn sample"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workers", type=int, default=1, help="data-generation worker processes")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=200, help="steps between checkpoints"
    )
    parser.add_argument("--validate-every", type=int, default=500, help="steps between validations")
    parser.add_argument(
        "--export", default=None, help="write the best weights to this .safetensors path at the end"
    )
    parser.add_argument(
        "--init",
        default=None,
        help="warm start: begin from these weights (same architecture) instead of a random "
        "initialisation; a checkpoint already in --run-dir takes precedence",
    )
    from bids_qa.training.data import add_synthetic_mix_arguments

    add_synthetic_mix_arguments(parser)


def export_weights(weights: str | Path, export: str | None) -> None:
    """Copy a run's weights file to ``--export`` (no-op when not asked for)."""
    if not export:
        return
    import shutil

    shutil.copyfile(weights, export)
    print(f"weights exported to {export}")


def fast_forward(scheduler, steps: int) -> None:
    """Replay ``steps`` scheduler steps when a run resumes from its checkpoint, so the learning
    rate continues where it stopped. This happens before any optimiser step of the new process,
    which torch warns about; here that order is intended, so the warning is silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            scheduler.step()


def warm_start(net, init: str | None, partial: bool = False) -> list[str]:
    """Load ``init`` (a safetensors file of the same architecture) into ``net``; no-op for None.

    Called before :func:`load_checkpoint`, so resuming a warm-started run continues from its own
    checkpoint, not from the initial weights. With ``partial``, only tensors whose name and shape
    match are loaded (e.g. a conv trunk reused when the input grid, and so the first fully
    connected layer, changes); the names left at their fresh initialisation are returned.
    """
    if not init:
        return []
    from bids_qa.models.weights import load_weights

    tensors = load_weights(init)[0]
    if not partial:
        net.load_state_dict(tensors)
        return []
    own = net.state_dict()
    kept = {k: v for k, v in tensors.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not kept:
        raise ValueError(f"{init}: no tensor matches the network's names and shapes")
    net.load_state_dict(kept, strict=False)
    return sorted(set(own) - set(kept))


def settings_from_args(args) -> TrainSettings:
    from bids_qa.models.weights import resolve_device

    return TrainSettings(
        data_dir=str(Path(args.data).resolve()),
        run_dir=str(Path(args.run_dir).resolve()),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=resolve_device(args.device),
        workers=args.workers,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        synthetic_share=args.synthetic_share,
        label_maps=str(Path(args.label_maps).resolve()) if args.label_maps else None,
    )


class RunLog:
    """Append-only JSON-lines log of losses and validation metrics in the run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "log.jsonl"

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 1), **record}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def save_checkpoint(run_dir: Path, step: int, model, optimizer, extra: dict[str, Any]) -> None:
    """Atomically write ``checkpoint.pt`` (tensors and plain values only; loaded with weights_only)."""
    import torch

    tmp = run_dir / "checkpoint.pt.tmp"
    torch.save(
        {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "extra": json.dumps(extra),
        },
        tmp,
    )
    os.replace(tmp, run_dir / "checkpoint.pt")


def load_checkpoint(run_dir: Path, model, optimizer) -> tuple[int, dict[str, Any]]:
    """Resume from ``checkpoint.pt`` if present: returns (next step, extra); (0, {}) otherwise."""
    import torch

    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return 0, {}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return int(ckpt["step"]), json.loads(ckpt["extra"])


class StepDataset:
    """Map-style dataset whose item ``i`` is ``make(numpy.random.default_rng([seed, i]))``."""

    def __init__(self, make: Callable[[Any], Any], seed: int, start: int, stop: int) -> None:
        self.make, self.seed, self.start, self.stop = make, seed, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        import numpy as np

        return self.make(np.random.default_rng([self.seed, self.start + i]))


def batches(make: Callable[[Any], Any], settings: TrainSettings, start_step: int):
    """Yield (step, collated batch) from ``start_step`` to ``settings.steps``; deterministic."""
    import torch
    from torch.utils.data import DataLoader

    ds = StepDataset(
        make, settings.seed, start_step * settings.batch_size, settings.steps * settings.batch_size
    )
    loader = DataLoader(
        ds,
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.workers,
        persistent_workers=False,
        prefetch_factor=4 if settings.workers else None,
    )
    torch.manual_seed(settings.seed)
    for k, batch in enumerate(loader):
        yield start_step + k, batch


def write_settings(run_dir: Path, settings: TrainSettings, family: str, argv: list[str]) -> None:
    import dataclasses

    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "family": family,
        "settings": dataclasses.asdict(settings),
        "command": "bids_qa train " + " ".join([family, *argv]),
    }
    (run_dir / "settings.json").write_text(json.dumps(info, indent=2, sort_keys=True))
