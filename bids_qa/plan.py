"""The scoring plan of a participant-level run: which scorers run, on which device, with how
many threads and how many scans per batched call."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from bids_qa.config import RunConfig
from bids_qa.errors import ExitCode, FatalError
from bids_qa.scoring import REGISTRY, Scorer, build_scorers

LOGGER = logging.getLogger("bids_qa")


@dataclass
class ScorerSet:
    """The scorers of a run and the registered families left out."""

    scorers: list[Scorer]
    skipped: list[str]

    def describe(self) -> list[dict[str, str]]:
        return [
            {"name": s.name, "version": str(s.version)} for s in self.scorers
        ]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``. (``cpu`` does not import torch,
    so a run of the classical scorers alone starts faster.)

    Raises
    ------
    FatalError
        ``USAGE`` when CUDA is requested but not available.
    """
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FatalError(
            ExitCode.USAGE,
            f"--device {device} was requested but no CUDA GPU is visible; use --device cpu or auto",
        )
    return device


def build_scorer_set(names: Sequence[str], device: str, batch_size: int) -> ScorerSet:
    """Instantiate the registered scorers (all, or ``names``), skipping families whose weights
    are not installed.

    Raises
    ------
    FatalError
        ``FAILURE`` when an installed scorer cannot be built (a bug or broken installation: the
        user's data has nothing to do with it, and silently dropping a metric family would be
        worse); ``USAGE`` when no scorer is left to run.
    """
    scorers: list[Scorer] = []
    skipped: list[str] = []
    for entry in REGISTRY:
        if names and entry.name not in names:
            continue
        if not entry.available():
            skipped.append(entry.name)
            continue
        try:
            scorers += build_scorers([entry.name], device=device, batch_size=batch_size)
        except Exception as err:
            LOGGER.debug("building scorer %s failed:\n%s", entry.name, traceback.format_exc())
            raise FatalError(
                ExitCode.FAILURE,
                f"scorer {entry.name!r} ({entry.target}) could not be built: {type(err).__name__}: {err}. "
                "This is a bug or a broken installation, not a problem with your data.",
            ) from err
    if not scorers:
        raise FatalError(
            ExitCode.USAGE,
            f"no scorer to run: {', '.join(skipped) or 'the requested ones'} "
            f"{'are' if len(skipped) != 1 else 'is'} not installed (weights missing)",
        )
    return ScorerSet(scorers=scorers, skipped=skipped)


#: Scans per group on CUDA when ``--scan-batch`` is ``auto``: eight 1 mm volumes give severity and
#: SSIM about 1,400 slices per call (a few full batches) and tiers a batch of eight grids.
CUDA_SCAN_BATCH = 8


@dataclass(frozen=True)
class ExecutionPlan:
    """How a participant-level run uses the machine (the ``auto`` settings resolved).

    Thread rule (why): the ``loader_threads`` (= ``--nprocs``) load, run the CPU-only scorers and
    prepare the networks' inputs, each with one torch intra-op thread (their work is zlib,
    numpy and scipy, single-threaded anyway; one torch thread keeps the small interpolations
    from starting ``nprocs`` OpenMP threads per loader). The inference thread runs the networks
    with ``torch_threads`` = ``max(1, nprocs // 2)`` intra-op threads: about two thirds of the CPU
    work of a scan happens in the loaders, and an OpenMP team that shares its cores with busy
    loader threads waits at every barrier for its descheduled members (measured on 2 cores:
    2 inference threads beside 2 loaders made a run 2.6x slower than 1). torch's OpenMP thread
    count is per calling thread, so both settings hold at once, and at most ``1.5 x nprocs``
    threads are busy. Loaders that are ahead wait (the queue is full), leaving the cores to
    inference. With ``--nprocs 1`` everything runs in one thread.
    """

    device: str
    batch_size: int
    scan_batch: int
    loader_threads: int
    torch_threads: int


def execution_plan(config: RunConfig, device: str) -> ExecutionPlan:
    """Resolve ``--batch-size`` / ``--scan-batch`` ``auto`` for ``device`` and the thread counts.

    ``auto`` batch size (0 here): each family's own items per forward pass, 512 on CUDA
    (:func:`bids_qa.models.weights.default_batch_size`; on CPU 64, the severity encoder 16);
    ``auto`` scan batch: 1 scan per group on CPU (grouping saves nothing there),
    :data:`CUDA_SCAN_BATCH` on CUDA.
    """
    cuda = device.startswith("cuda")
    return ExecutionPlan(
        device=device,
        batch_size=config.batch_size if config.batch_size else 0,
        scan_batch=config.scan_batch if config.scan_batch else (CUDA_SCAN_BATCH if cuda else 1),
        loader_threads=config.nprocs,
        torch_threads=max(1, config.nprocs // 2),
    )

