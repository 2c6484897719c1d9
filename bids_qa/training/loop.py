"""Shared training plumbing: the run skeleton every family's trainer follows (:func:`parse_run`,
:func:`start_run`, :func:`weights_metadata`), run folders, resumable checkpoints, loss logs,
deterministic batches.

Every family's trainer draws sample ``i`` from ``numpy.random.default_rng([seed, i])``, so the data a
step sees depends only on the seed and the step number: a resumed run continues with exactly the
batches an uninterrupted run would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    """Resume from ``checkpoint.pt`` if present: returns (next step, extra); (0, {}) otherwise.

    The restored optimiser carries the learning rate of the step it stopped at; it is put back to
    the run's initial rate here, because the schedule built next is replayed from step 0
    (:func:`fast_forward`) and torch's recursive cosine schedule scales the rate it finds (a resume
    at step 300 of 1500 otherwise continued about 9 % below the uninterrupted run's rate)."""
    import torch

    path = run_dir / "checkpoint.pt"
    if not path.exists():
        return 0, {}
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    for group in optimizer.param_groups:
        if "initial_lr" in group:
            group["lr"] = group["initial_lr"]
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


def file_record(path: str | Path | None) -> dict[str, str | None] | None:
    """What a weights file says about a file it came from: its name and sha256 digest (None when
    the file is gone), never the training machine's absolute path."""
    if not path:
        return None
    path = Path(path)
    digest = None
    if path.is_file():
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
    return {"file": path.name, "sha256": digest}


def portable_command(family: str, argv: list[str]) -> str:
    """The ``bids_qa train`` command line with every absolute path cut to its last component."""
    words = [Path(a).name if os.path.isabs(a) else a for a in argv]
    return "bids_qa train " + " ".join([family, *words])


def write_settings(run_dir: Path, settings: TrainSettings, family: str, argv: list[str]) -> None:
    """Record the run's settings in ``settings.json`` (copied into the weights' metadata): folder
    names rather than the training machine's absolute paths."""
    import dataclasses

    run_dir.mkdir(parents=True, exist_ok=True)
    recorded = dataclasses.asdict(settings)
    recorded["data_dir"] = Path(settings.data_dir).name
    recorded["run_dir"] = Path(settings.run_dir).name
    info = {"family": family, "settings": recorded, "command": portable_command(family, argv)}
    (run_dir / "settings.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def limit_threads(n: int) -> None:
    """Use at most ``n`` threads in torch and in SimpleITK (TorchIO's motion resampling), so a
    ``--threads 1`` run really stays on one core (0: leave the defaults)."""
    if n <= 0:
        return
    import torch

    torch.set_num_threads(n)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    except ImportError:  # pragma: no cover - SimpleITK comes with torchio
        pass


def parse_run(build_parser: Callable[[], Any], argv: list[str] | None):
    """``(argv, args, settings)`` of a ``bids_qa train FAMILY`` command (``sys.argv`` by default)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return argv, args, settings_from_args(args)


@dataclass
class Run:
    """A started (or resumed) run: network, optimiser, schedule, first step, checkpoint extras."""

    dir: Path
    net: Any
    opt: Any
    sched: Any
    start: int
    extra: dict[str, Any]
    log: RunLog
    init: dict[str, str | None] | None = field(default=None)


def start_run(
    settings: TrainSettings,
    family: str,
    argv: list[str] | None,
    build: Callable[[], Any],
    init: str | None = None,
    *,
    init_partial: bool = False,
    weight_decay: float = 0.0,
    lr_factor: Callable[[int], float] | None = None,
) -> Run:
    """The steps every trainer takes before its first batch, in the order that keeps runs
    reproducible: record the settings, limit threads, seed torch, ``build()`` the network, warm
    start from ``init``, Adam, resume from the run's checkpoint, and the learning-rate schedule
    (``lr_factor``; default: cosine annealing to 5 % over the run) fast-forwarded to the resumed
    step."""
    import torch

    run_dir = Path(settings.run_dir)
    write_settings(run_dir, settings, family, argv or [])
    limit_threads(settings.threads)
    torch.manual_seed(settings.seed)
    net = build().to(settings.device)
    fresh = warm_start(net, init, partial=init_partial)
    if fresh:
        print(f"warm start from {init}; freshly initialised: {', '.join(fresh)}", flush=True)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=weight_decay)
    start, extra = load_checkpoint(run_dir, net, opt)
    if lr_factor is None:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, settings.steps), eta_min=settings.lr * 0.05
        )
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    fast_forward(sched, start)
    return Run(run_dir, net, opt, sched, start, extra, RunLog(run_dir), file_record(init))


def weights_metadata(
    family: str, config: Any, run: Run, step: int, validation: Any, **training: Any
) -> dict[str, Any]:
    """Metadata of a run's weights: family, version ``<release>+s<step>``, architecture, and how
    they were trained (the run's settings, the step, its validation, the warm start as file name
    and sha256, and the family's own ``training`` entries)."""
    from bids_qa import __version__

    record = {
        "settings": json.loads((run.dir / "settings.json").read_text()),
        "step": step,
        "validation": validation,
        **training,
    }
    if run.init is not None:
        record["init"] = run.init
    return {
        "family": family,
        "version": f"{__version__}+s{step}",
        "config": config.to_dict(),
        "training": record,
    }
