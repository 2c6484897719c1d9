"""The loader stage of a participant-level run: read each scan, run the CPU-only scorers and
prepare the networks' inputs, ``--nprocs`` scans ahead in threads.

Threads, not processes: a loaded volume is hundreds of MB of arrays that a process pool would have
to pickle back, while nibabel's gzip decompression and numpy release the GIL. Memory stays
bounded: at most ``--nprocs`` prepared scans wait while a group of ``--scan-batch`` scans is scored.
Nothing here raises for a bad scan: every failure becomes the scan's error row.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from bids_qa.batching import score_error, score_one
from bids_qa.discover import Scan, read_metadata
from bids_qa.errors import ScanError
from bids_qa.input_kind import describe_volume
from bids_qa.plan import ScorerSet
from bids_qa.scoring import ScanScores

LOGGER = logging.getLogger("bids_qa")


@dataclass
class Loaded:
    """A scan after the loader stage: the volume or the error, header facts and metadata, and what
    the loader thread already did with it.

    Attributes
    ----------
    results
        Scores of the CPU-only scorers (``in_loader``), run in the loader thread.
    failed
        Scorer name -> error message, for scorers whose loader-side step (scoring or ``prepare``)
        failed on this scan; the inference thread does not run them again.
    timings
        Seconds of each loader-side step (``score:<name>``, ``prepare:<name>``).
    """

    volume: Any | None
    errors: list[dict[str, str]]
    warnings: list[str]
    metadata: dict[str, Any]
    header: dict[str, Any]
    seconds: float
    results: dict[str, ScanScores] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def header_facts(path: Path) -> dict[str, Any]:
    """Shape and voxel sizes from the header alone (best effort, for error rows)."""
    try:
        import nibabel as nib

        img = nib.load(str(path))
        return {
            "shape": [int(s) for s in img.shape],
            "zooms": [float(z) for z in img.header.get_zooms()[: len(img.shape)]],
        }
    except Exception:
        return {}


def load_scan(scan: Scan) -> Loaded:
    """Read the sidecar metadata and the image; never raises for a bad file."""
    from bids_qa.volume import load_volume

    start = time.perf_counter()
    metadata, warnings = read_metadata(scan)
    errors: list[dict[str, str]] = []
    volume = None
    try:
        volume = load_volume(scan.path)
        warnings += list(volume.warnings)
    except ScanError as err:
        errors.append({"stage": err.stage, "message": err.message})
    except MemoryError:
        errors.append(
            {"stage": "load", "message": f"{scan.path.name}: not enough memory to load the image"}
        )
    except Exception as err:  # a loader bug must not stop the run either
        LOGGER.debug("unexpected load failure for %s:\n%s", scan.path, traceback.format_exc())
        errors.append(
            {"stage": "load", "message": f"{scan.path.name}: {type(err).__name__}: {err}"}
        )
    header = {} if volume is not None else header_facts(scan.path)
    return Loaded(volume, errors, warnings, metadata, header, time.perf_counter() - start)




def prepare_loaded(scan: Scan, loaded: Loaded, scorer_set: ScorerSet) -> None:
    """The loader thread's share of a scan's scoring, recorded in ``loaded`` (never raises).

    CPU-only scorers (``in_loader``, e.g. header and IQMs) are run outright; every other scorer's
    ``prepare`` computes and caches its network's inputs on the volume (slice
    stacks, grids, anatomy slices, ruler images). A failure is recorded per scorer in
    ``loaded.failed`` and becomes that scan's usual error row.
    """
    volume = loaded.volume
    if volume is None:
        return
    t0 = time.perf_counter()
    describe_volume(volume)  # the judge's input facts, cached on the volume (CPU work, here)
    loaded.timings["prepare:input_kind"] = round(time.perf_counter() - t0, 4)
    for scorer in scorer_set.scorers:
        t0 = time.perf_counter()
        try:
            if scorer.in_loader:
                key = f"score:{scorer.name}"
                loaded.results[scorer.name] = score_one(scorer, volume, scan)
            else:
                key = f"prepare:{scorer.name}"
                scorer.prepare(volume)
        except Exception as err:  # MemoryError included
            loaded.failed[scorer.name] = score_error(scorer.name, err, scan)
        loaded.timings[key] = round(time.perf_counter() - t0, 4)


def load_and_prepare(scan: Scan, scorer_set: ScorerSet | None = None) -> Loaded:
    """What a loader thread does with one scan: :func:`load_scan`, then :func:`prepare_loaded`.

    Never raises: whatever goes wrong (even a bug here) becomes the scan's error row, so a worker
    can never stop the run.
    """
    start = time.perf_counter()
    try:
        loaded = load_scan(scan)
        if scorer_set is not None:
            prepare_loaded(scan, loaded, scorer_set)
        return loaded
    except Exception as err:  # MemoryError included
        LOGGER.debug("loader failure for %s:\n%s", scan.path, traceback.format_exc())
        message = (
            "not enough memory to load the image"
            if isinstance(err, MemoryError)
            else f"{type(err).__name__}: {err}"
        )
        return Loaded(
            None,
            [{"stage": "load", "message": f"{scan.path.name}: {message}"}],
            [],
            {},
            header_facts(scan.path),
            time.perf_counter() - start,
        )


def one_torch_thread() -> None:
    """Loader-thread initialiser: torch ops in this thread (the interpolations behind slice
    stacks and grids) use one intra-op thread. torch's OpenMP thread count is per calling thread,
    so this leaves the inference thread's count alone; see :class:`ExecutionPlan`."""
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(RuntimeError):
            torch.set_num_threads(1)


def iter_loaded(
    items: Sequence[Any],
    load: Callable[[Any], Loaded],
    nprocs: int,
    initializer: Callable[[], None] | None = None,
) -> Iterator[tuple[Any, Loaded]]:
    """Yield ``(item, load(item))`` in order, loading up to ``nprocs`` items ahead in threads.

    At most ``nprocs`` loaded-but-unconsumed volumes wait at a time, which bounds memory: the
    run holds at most ``nprocs`` + (the scans being scored) volumes. ``initializer`` runs once in
    each loader thread. With ``nprocs`` 1 everything runs in the calling thread.
    """
    if nprocs <= 1 or len(items) <= 1:
        for item in items:
            yield item, load(item)
        return
    source = iter(items)
    pending: deque[tuple[Any, Future[Loaded]]] = deque()
    with ThreadPoolExecutor(
        max_workers=nprocs, thread_name_prefix="bids_qa-load", initializer=initializer
    ) as pool:
        try:
            for item in islice(source, nprocs):
                pending.append((item, pool.submit(load, item)))
            while pending:
                item, future = pending.popleft()
                nxt = next(source, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(load, nxt)))
                yield item, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def iter_groups(stream: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``size`` items from ``stream`` (the last one may be shorter), taken
    lazily so that a group is scored as soon as its last scan is loaded."""
    size = max(1, int(size))
    while True:
        group = list(islice(stream, size))
        if not group:
            return
        yield group

