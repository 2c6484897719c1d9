"""The two analysis levels: participant (discover -> load -> score -> judge -> write -> report) and
group (derivatives -> group tables -> group reports).

Reliability rules this module enforces:

* one bad scan never stops a run: every failure becomes an error row (stage, message) in that
  scan's outputs, and the run goes on;
* a finished scan is skipped on the next run (unless ``--overwrite``), an errored or interrupted
  one is redone;
* nothing is written outside OUTPUT_DIR and the work folder: caches (matplotlib, XDG, temporary
  files) are pointed into a per-run work folder that is removed at the end;
* loading runs ahead of scoring in ``--nprocs`` threads. Threads, not processes: a loaded volume
  is hundreds of MB of arrays that a process pool would have to pickle back, while nibabel's gzip
  decompression and numpy release the GIL.

Throughput (issue 10): each scan is loaded once and every scorer reads the same
:class:`~bids_qa.volume.Volume`. The loader threads do all the CPU-side work of a scan: load, the
CPU-only scorers (header, IQMs) and each network's input preparation (``prepare``: slice stacks,
grids, ruler images, cached on the volume). The calling thread then only runs the networks,
``--scan-batch`` scans at a time (``score_many``: one batched pass over the group's slices), judges,
writes and reports. Memory stays bounded: at most ``--nprocs`` prepared scans wait while a group
of ``--scan-batch`` scans is scored. Thread counts: :class:`ExecutionPlan`.

Exit codes (BIDS-Apps draft, Table 7) are listed in :data:`EXIT_CODES`.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings as pywarnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from bids_qa import __version__
from bids_qa import derivatives as deriv
from bids_qa.config import RunConfig
from bids_qa.discover import (
    Discovery,
    DiscoveryError,
    Scan,
    discover,
    metadata_subset,
    read_metadata,
)
from bids_qa.errors import ScanError, is_out_of_space, out_of_space_message
from bids_qa.methods import methods_text, write_methods_file
from bids_qa.scoring import (
    REGISTRY,
    ScanScores,
    Scorer,
    build_scorers,
    prepare_scorer,
    runs_in_loader,
    score_many,
)
from bids_qa.thresholds import ThresholdError, ThresholdTable, judge_scan, load_thresholds

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID_BIDS = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_NO_FILES = 18
EXIT_USAGE = 64
EXIT_ALL_FAILED = 65
EXIT_NO_INPUT = 66
EXIT_CANT_CREATE = 73
EXIT_NO_SPACE = 74  # hook(userfix): disk full
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: Every exit code ``bids_qa`` returns and what it means (also in ``docs/usage.md``).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success: every selected scan has outputs (some may hold error rows), or all were already done",
    EXIT_FAILURE: "internal failure (a bug or a broken installation, e.g. a scorer that cannot be built)",
    EXIT_INVALID_BIDS: "the input dataset failed BIDS validation (unreadable dataset_description.json)",
    EXIT_UNKNOWN_LEVEL: "unknown analysis level (not participant or group)",
    EXIT_NO_FILES: "the entity filters (--participant-label, --session-id, --run-id, --suffix, "
    "--bids-filter-file) selected no files",
    EXIT_USAGE: "command-line usage error (bad option, bad thresholds or filter file, unavailable device)",
    EXIT_ALL_FAILED: "every scan processed in this run failed (outputs with error rows were still written)",
    EXIT_NO_INPUT: "no input: the input folder is missing or holds no structural scan; at group level, "
    "no participant-level outputs were found",
    EXIT_CANT_CREATE: "the output or work folder cannot be created or written",
    EXIT_NO_SPACE: "the output disk is full (no space left); the run stopped at the first failed write, "
    "finished scans are kept, rerun to resume",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); finished scans are kept, rerun to resume",
    EXIT_TERMINATED: "terminated (SIGTERM, e.g. a scheduler's time limit); finished scans are kept",
}

LOGGER = logging.getLogger("bids_qa")


class PipelineError(Exception):
    """The run cannot go on; ``code`` is the exit code and ``message`` says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that ``finally`` blocks clean up."""


# --------------------------------------------------------------------------------------------
# Run environment: work folder, caches, logging, signals


@dataclass
class RunContext:
    """Per-run state that is not configuration."""

    config: RunConfig
    run_id: str
    work_dir: Path
    log_file: Path
    started: str
    started_monotonic: float = field(default_factory=time.monotonic)


class _TqdmHandler(logging.Handler):
    """Console handler that writes through tqdm so messages do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


#: Cache and temporary-file variables pointed into the work folder during a run.
_CACHE_VARS = (
    "MPLCONFIGDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "TMPDIR",
    "TEMP",
    "TMP",
    "TORCH_HOME",
    "NILEARN_DATA",
    "NUMBA_CACHE_DIR",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
)


@contextlib.contextmanager
def run_environment(config: RunConfig) -> Iterator[RunContext]:
    """Create the output and work folders, route caches and logs, and clean up afterwards.

    The work folder is ``<work root>/run-<id>`` (work root: ``--work-dir`` or
    ``OUTPUT_DIR/.bids_qa_work``); it is removed at the end, and so is the default work root when
    no other run is using it.

    Raises
    ------
    PipelineError
        73 when a folder cannot be created.
    """
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    out_dir = config.output_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        work_dir = config.work_root / f"run-{run_id}"
        work_dir.mkdir(parents=True, exist_ok=True)
        log_file = deriv.log_path(out_dir, config.analysis_level)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".bids_qa_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PipelineError(
            EXIT_CANT_CREATE, f"cannot create or write the output/work folders: {err}"
        ) from err

    saved_env = {k: os.environ.get(k) for k in _CACHE_VARS}
    saved_tempdir = tempfile.tempdir
    tmp = work_dir / "tmp"
    for sub in ("tmp", "matplotlib", "cache", "config"):
        (work_dir / sub).mkdir(exist_ok=True)
    os.environ.update(
        MPLCONFIGDIR=str(work_dir / "matplotlib"),
        XDG_CACHE_HOME=str(work_dir / "cache"),
        XDG_CONFIG_HOME=str(work_dir / "config"),
        TMPDIR=str(tmp),
        TEMP=str(tmp),
        TMP=str(tmp),
        TORCH_HOME=str(work_dir / "cache" / "torch"),
        NILEARN_DATA=str(work_dir / "cache" / "nilearn"),
        NUMBA_CACHE_DIR=str(work_dir / "cache" / "numba"),
        TORCHINDUCTOR_CACHE_DIR=str(work_dir / "cache" / "torchinductor"),
        TRITON_CACHE_DIR=str(work_dir / "cache" / "triton"),
    )
    tempfile.tempdir = str(tmp)

    handlers = _setup_logging(log_file, config.verbosity)
    old_term = None
    if _in_main_thread():

        def _on_term(signum: int, frame: Any) -> None:
            raise Terminated()

        old_term = signal.signal(signal.SIGTERM, _on_term)
    saved_showwarning = pywarnings.showwarning

    def _log_warning(
        message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        LOGGER.debug(
            "library warning: %s: %s (%s:%s)", category.__name__, message, filename, lineno
        )

    pywarnings.showwarning = _log_warning  # type: ignore[assignment]
    ctx = RunContext(
        config=config, run_id=run_id, work_dir=work_dir, log_file=log_file, started=deriv.utc_now()
    )
    try:
        LOGGER.info("bids_qa %s, %s level; log: %s", __version__, config.analysis_level, log_file)
        LOGGER.debug("configuration: %s", config.to_dict())
        yield ctx
    finally:
        pywarnings.showwarning = saved_showwarning
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(work_dir, ignore_errors=True)
        if config.work_dir is None:
            with contextlib.suppress(OSError):
                config.work_root.rmdir()  # only succeeds when no concurrent run is using it
        for handler in handlers:
            LOGGER.removeHandler(handler)
            handler.close()


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _QuietFileHandler(logging.FileHandler):
    """A log file that falls silent when it cannot be written (a full disk): the console still
    says what happened, without a logging traceback. hook(userfix)"""

    def handleError(self, record: logging.LogRecord) -> None:
        return None


def _setup_logging(log_file: Path, verbosity: int) -> list[logging.Handler]:
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    file_handler = _QuietFileHandler(log_file, encoding="utf-8")
    file_handler.setLevel(logging.DEBUG)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    console = _TqdmHandler()
    level = {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}.get(max(-1, min(1, verbosity)))
    if verbosity <= -2:
        level = logging.ERROR
    console.setLevel(level or logging.INFO)
    console.setFormatter(logging.Formatter("bids_qa: %(message)s"))
    LOGGER.addHandler(file_handler)
    LOGGER.addHandler(console)
    return [file_handler, console]


# --------------------------------------------------------------------------------------------
# Scorers


@dataclass
class ScorerSet:
    """The scorers of a run and the registered families left out."""

    scorers: list[Scorer]
    skipped: list[str]
    wants_suffix: dict[str, bool]

    def describe(self) -> list[dict[str, str]]:
        return [
            {"name": s.name, "version": str(getattr(s, "version", "unknown"))} for s in self.scorers
        ]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``. (``cpu`` does not import torch,
    so a run of the classical scorers alone starts faster.)

    Raises
    ------
    PipelineError
        64 when CUDA is requested but not available.
    """
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(
            EXIT_USAGE,
            f"--device {device} was requested but no CUDA GPU is visible; use --device cpu or auto",
        )
    return device


def build_scorer_set(names: Sequence[str], device: str, batch_size: int) -> ScorerSet:
    """Instantiate the registered scorers (all, or ``names``), skipping families whose weights
    are not installed.

    Raises
    ------
    PipelineError
        1 when an installed scorer cannot be built (a bug or broken installation: the user's data
        has nothing to do with it, and silently dropping a metric family would be worse); 64 when
        no scorer is left to run.
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
            raise PipelineError(
                EXIT_FAILURE,
                f"scorer {entry.name!r} ({entry.target}) could not be built: {type(err).__name__}: {err}. "
                "This is a bug or a broken installation, not a problem with your data.",
            ) from err
    if not scorers:
        raise PipelineError(
            EXIT_USAGE,
            f"no scorer to run: {', '.join(skipped) or 'the requested ones'} "
            f"{'are' if len(skipped) != 1 else 'is'} not installed (weights missing)",
        )
    wants_suffix = {scorer.name: scorer_wants_suffix(scorer) for scorer in scorers}
    return ScorerSet(scorers=scorers, skipped=skipped, wants_suffix=wants_suffix)


def scorer_wants_suffix(scorer: Scorer) -> bool:
    """Whether ``scorer.score`` is called with the scan's BIDS suffix: what the scorer declares
    in a boolean ``needs_suffix`` (absent: no). It may depend on the scorer's weights, as for
    contrast-aware tiers. Scorers that need it are not batched."""
    return getattr(scorer, "needs_suffix", False) is True


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

    ``auto`` batch size: 64 items per forward pass on CPU, 512 on CUDA
    (:func:`bids_qa.models.weights.default_batch_size`); ``auto`` scan batch: 1 scan per group on
    CPU (grouping saves nothing there), :data:`CUDA_SCAN_BATCH` on CUDA.
    """
    from bids_qa.models.weights import default_batch_size

    cuda = device.startswith("cuda")
    return ExecutionPlan(
        device=device,
        batch_size=config.batch_size if config.batch_size else default_batch_size(device),
        scan_batch=config.scan_batch if config.scan_batch else (CUDA_SCAN_BATCH if cuda else 1),
        loader_threads=config.nprocs,
        torch_threads=max(1, config.nprocs // 2),
    )


# --------------------------------------------------------------------------------------------
# Loading


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


def _score_error(scorer_name: str, err: BaseException, scan: Scan) -> str:
    """The error-row message of a scorer that failed on ``scan`` (the traceback goes to the log)."""
    if isinstance(err, ScanError):
        return f"{scorer_name}: {err.message}"
    if isinstance(err, MemoryError):
        return f"{scorer_name}: out of memory"
    LOGGER.debug(
        "scorer %s failed on %s:\n%s",
        scorer_name,
        scan.path,
        "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    )
    return f"{scorer_name}: {type(err).__name__}: {err}"


def prepare_loaded(scan: Scan, loaded: Loaded, scorer_set: ScorerSet) -> None:
    """The loader thread's share of a scan's scoring, recorded in ``loaded`` (never raises).

    CPU-only scorers (``in_loader``, e.g. header and IQMs) are run outright; every other scorer
    with a ``prepare`` method computes and caches its network's inputs on the volume (slice
    stacks, grids, anatomy slices, ruler images). A failure is recorded per scorer in
    ``loaded.failed`` and becomes that scan's usual error row.
    """
    volume = loaded.volume
    if volume is None:
        return
    for scorer in scorer_set.scorers:
        t0 = time.perf_counter()
        try:
            if runs_in_loader(scorer):
                key = f"score:{scorer.name}"
                loaded.results[scorer.name] = _score(
                    scorer, volume, scan, scorer_set.wants_suffix.get(scorer.name, False)
                )
            else:
                key = f"prepare:{scorer.name}"
                if not prepare_scorer(scorer, volume):
                    continue
        except Exception as err:  # MemoryError included
            loaded.failed[scorer.name] = _score_error(scorer.name, err, scan)
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


def _one_torch_thread() -> None:
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


# --------------------------------------------------------------------------------------------
# One scan


@dataclass
class ScanOutcome:
    """What happened to one scan (for the run summary and the exit code)."""

    scan: Scan
    paths: deriv.ScanPaths
    verdict: str
    errors: list[dict[str, str]]
    seconds: float

    @property
    def failed(self) -> bool:
        """True when the scan could not be assessed (load, score or write failed)."""
        return any(e["stage"] != "report" for e in self.errors)


def resume_key(scan: Scan, scorer_set: ScorerSet, thresholds: ThresholdTable) -> dict[str, Any]:
    """What must be unchanged for a previous result to be reused."""
    try:
        stat = scan.path.stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime = None, None
    return {
        "source_size": size,
        "source_mtime_ns": mtime,
        "scorers": [[d["name"], d["version"]] for d in scorer_set.describe()],
        "thresholds_sha256": thresholds.sha256,
    }


def _score(scorer: Scorer, volume: Any, scan: Scan, wants_suffix: bool) -> ScanScores:
    result = scorer.score(volume, suffix=scan.suffix) if wants_suffix else scorer.score(volume)  # type: ignore[call-arg]
    if not isinstance(result, ScanScores):
        raise TypeError(f"score() returned {type(result).__name__}, not ScanScores")
    return result


@dataclass
class ScanScoring:
    """One scan's scores from every scorer of the run (registry order), the score-stage errors
    (same order) and the seconds each step took."""

    results: list[ScanScores]
    errors: list[dict[str, str]]
    timings: dict[str, float]


def _score_members(
    scorer: Scorer, members: list[tuple[Scan, Loaded]], wants_suffix: bool
) -> list[ScanScores | str]:
    """One scorer on several loaded scans: a :func:`~bids_qa.scoring.score_many` call when there
    are several (and the scorer does not need the suffix), else, or when that call fails, one
    ``score`` per scan. Each entry is the scan's scores or its error message."""
    if len(members) > 1 and not wants_suffix:
        try:
            return list(score_many(scorer, [loaded.volume for _, loaded in members]))
        except Exception as err:  # one bad scan must not cost the others their scores
            LOGGER.debug(
                "%s: scoring %d scans together failed (%s: %s); scoring them one by one:\n%s",
                scorer.name,
                len(members),
                type(err).__name__,
                err,
                traceback.format_exc(),
            )
    out: list[ScanScores | str] = []
    for scan, loaded in members:
        try:
            out.append(_score(scorer, loaded.volume, scan, wants_suffix))
        except Exception as err:
            out.append(_score_error(scorer.name, err, scan))
    return out


def score_group(group: Sequence[tuple[Scan, Loaded]], scorer_set: ScorerSet) -> list[ScanScoring]:
    """Score a group of loaded scans with every scorer; never raises for a scan-level failure.

    What the loader threads did is not done again: results of the scorers run there
    (``in_loader``) and loader-side failures are taken from :class:`Loaded`. Each remaining
    scorer runs once for the whole group (:func:`_score_members`) on the scans that loaded and
    have no result or failure for it yet (a scan loaded without :func:`prepare_loaded` gets
    every scorer here). The time of a group call is shared equally among its scans in their
    ``score:<name>`` timings.
    """
    done: list[dict[str, ScanScores | str]] = [dict(loaded.failed) for _, loaded in group]
    timings: list[dict[str, float]] = [dict(loaded.timings) for _, loaded in group]
    for i, (_, loaded) in enumerate(group):
        done[i].update(loaded.results)
    for scorer in scorer_set.scorers:
        members = [
            i
            for i, (_, loaded) in enumerate(group)
            if loaded.volume is not None and scorer.name not in done[i]
        ]
        if not members:
            continue
        t0 = time.perf_counter()
        outs = _score_members(
            scorer,
            [group[i] for i in members],
            scorer_set.wants_suffix.get(scorer.name, False),
        )
        share = round((time.perf_counter() - t0) / len(members), 4)
        for i, out in zip(members, outs, strict=True):
            done[i][scorer.name] = out
            timings[i][f"score:{scorer.name}"] = share
    scorings = []
    for i, (_, loaded) in enumerate(group):
        results: list[ScanScores] = []
        errors: list[dict[str, str]] = []
        if loaded.volume is not None:
            for scorer in scorer_set.scorers:
                out = done[i].get(scorer.name)
                if isinstance(out, ScanScores):
                    results.append(out)
                elif out is not None:
                    errors.append({"stage": "score", "message": out})
        scorings.append(ScanScoring(results, errors, timings[i]))
    return scorings


def _ruler_json(
    result: ScanScores, paths: deriv.ScanPaths, used: dict[str, Any], write_images: bool
) -> dict[str, Any]:
    """A scorer's ruler (paper 004) as JSON, with the threshold in force (defaults or the user's
    file) placed on it and, when reports are made, its images written next to the report."""
    ruler = result.ruler
    key = f"{result.scorer}.{ruler.metric}"
    if key in used:
        t = used[key]
        cut = t.review if t.review is not None else t.fail
        if cut is not None:
            ruler.threshold = float(cut)
    images = deriv.write_ruler_images(paths, result.scorer, ruler.images) if write_images else None
    return deriv.json_ready(ruler.to_json(images))


def _software_versions(device: str) -> dict[str, str]:
    import importlib.metadata

    import nibabel
    import numpy

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - torch is a dependency
        torch_version = "not installed"
    return {
        "python": platform.python_version(),
        "torch": torch_version,
        "numpy": numpy.__version__,
        "nibabel": nibabel.__version__,
        "device": device,
    }


@dataclass
class RunShared:
    """What every scan of a run shares."""

    ctx: RunContext
    scorer_set: ScorerSet
    thresholds: ThresholdTable
    device: str
    software: dict[str, str]
    report_fn: Callable[..., Any] | None
    report_error: str | None
    report_takes_volume: bool


def assess_scan(
    scan: Scan,
    paths: deriv.ScanPaths,
    loaded: Loaded,
    shared: RunShared,
    scoring: ScanScoring | None = None,
) -> ScanOutcome:
    """Judge, write and report one loaded scan, scoring it first unless ``scoring`` (from
    :func:`score_group`) is given. Never raises for a scan-level failure."""
    config = shared.ctx.config
    started = deriv.utc_now()
    t_start = time.perf_counter()
    if scoring is None:
        scoring = score_group([(scan, loaded)], shared.scorer_set)[0]
    timings: dict[str, float] = {"load": round(loaded.seconds, 4), **scoring.timings}
    errors = list(loaded.errors) + list(scoring.errors)
    warnings = list(loaded.warnings)
    results = list(scoring.results)
    volume = loaded.volume

    t0 = time.perf_counter()
    from bids_qa.input_kind import describe_volume  # issue 23: processed-input facts, notes

    input_kind = describe_volume(volume) if volume is not None else None
    judgement = judge_scan(results, scan.suffix, shared.thresholds, loaded.metadata, input_kind)
    verdict, reasons, rows = judgement.verdict, judgement.reasons, judgement.rows
    if errors:
        verdict = "error"
    used = shared.thresholds.for_contrast(scan.suffix)
    judged = {f"{r['model']}.{r['metric']}" for r in rows}
    timings["judge"] = round(time.perf_counter() - t0, 4)

    scan_info: dict[str, Any] = {
        "source": scan.source,
        "bids": scan.bids,
        "entities": dict(scan.entities),
        "metadata": metadata_subset(loaded.metadata),
    }
    if volume is not None:
        scan_info.update(
            shape=list(volume.shape),
            zooms=[float(z) for z in volume.zooms],
            affine=[[float(v) for v in row] for row in volume.affine],
            slice_axis=int(volume.slice_axis),
            anisotropy=float(volume.anisotropy),
        )
    else:
        scan_info.update(
            shape=loaded.header.get("shape"),
            zooms=loaded.header.get("zooms"),
            affine=None,
            slice_axis=None,
            anisotropy=None,
        )
    scan_info["parameters"] = deriv.scan_parameters(scan_info)  # hook(userfix): group columns
    rulers: dict[str, Any] = {}
    for r in results:
        if r.ruler is not None:
            try:
                rulers[r.scorer] = _ruler_json(r, paths, used, config.reports)
            except OSError as err:
                warnings.append(f"ruler images of {r.scorer} not written: {err}")
    per_slice = [(r.scorer, r.slice_axis, r.per_slice) for r in results if r.per_slice]
    slices = deriv.slice_rows(per_slice) if per_slice else None

    def sidecar(status: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        error_rows = [
            {
                "model": "error",
                "metric": e["stage"],
                "value": e["message"],
                "threshold": "",
                "flag": "error",
                "direction": "",
            }
            for e in errors
        ]
        out = {
            "scan_id": scan.scan_id,
            "scan": scan_info,
            "verdict": "error" if any(e["stage"] != "report" for e in errors) else verdict,
            "reasons": reasons,
            "notes": judgement.notes,
            "input_kind": input_kind.as_dict() if input_kind is not None else None,
            "errors": list(errors),
            "warnings": warnings,
            "thresholds": {k: t.as_dict() for k, t in used.items() if k in judged},
            "columns": dict(deriv.QA_COLUMNS),
            "provenance": {
                "bids_qa_version": __version__,
                **shared.software,
                "scorers": shared.scorer_set.describe(),
                "scorers_skipped": list(shared.scorer_set.skipped),
                "thresholds": {
                    "sources": list(shared.thresholds.sources),
                    "sha256": shared.thresholds.sha256,
                },
                "config": config.to_dict(),
                "run_id": shared.ctx.run_id,
                "log": shared.ctx.log_file.relative_to(config.output_dir).as_posix(),
                "started": started,
                "finished": deriv.utc_now(),
                "timings_s": dict(timings),
                "status": status,
                "resume_key": deriv.normalise_key(
                    resume_key(scan, shared.scorer_set, shared.thresholds)
                ),
            },
        }
        if rulers:
            out["rulers"] = rulers
        return rows + error_rows, out

    def write(status: str) -> bool:
        t_write = time.perf_counter()
        try:
            table, _ = sidecar(status)
            deriv.write_scan_tables(paths, table, slices)
            timings["write"] = round(timings.get("write", 0.0) + time.perf_counter() - t_write, 4)
            deriv.write_json(paths.json, sidecar(status)[1])  # last: it marks the scan as done
        except OSError as err:
            if is_out_of_space(err):  # hook(userfix): stop the run, see _process
                raise
            LOGGER.error("%s: cannot write outputs in %s: %s", scan.source, paths.folder, err)
            errors.append({"stage": "write", "message": f"cannot write outputs: {err}"})
            return False
        return True

    want_report = config.reports
    ok = write("scored" if want_report else "complete")
    if ok and want_report:
        t_report = time.perf_counter()
        message = _render_scan_report(shared, paths, scan, volume)
        timings["report"] = round(time.perf_counter() - t_report, 4)
        if message is not None:
            errors.append({"stage": "report", "message": message})
            LOGGER.warning("%s: report failed: %s", scan.source, message)
        write("complete")
    final_verdict = "error" if any(e["stage"] != "report" for e in errors) else verdict
    work = sum(v for k, v in scoring.timings.items() if k.startswith(("score:", "prepare:")))
    return ScanOutcome(scan, paths, final_verdict, errors, time.perf_counter() - t_start + work)


def _render_scan_report(
    shared: RunShared, paths: deriv.ScanPaths, scan: Scan, volume: Any
) -> str | None:
    """Call ``bids_qa.reports.render_scan_report``; return an error message instead of raising."""
    if shared.report_fn is None:
        return shared.report_error or "bids_qa.reports is not available"
    try:
        kwargs = {"volume": volume} if shared.report_takes_volume and volume is not None else {}
        shared.report_fn(shared.ctx.config.output_dir, paths.json, scan.path, **kwargs)
    except ScanError as err:
        return err.message
    except Exception as err:
        LOGGER.debug("report failed for %s:\n%s", scan.path, traceback.format_exc())
        return f"{type(err).__name__}: {err}"
    return None


def load_report_function(name: str) -> tuple[Callable[..., Any] | None, str | None]:
    """``bids_qa.reports.<name>`` or (None, why it is unavailable)."""
    try:
        module = importlib.import_module("bids_qa.reports")
    except Exception as err:
        LOGGER.debug("importing bids_qa.reports failed:\n%s", traceback.format_exc())
        return None, f"bids_qa.reports could not be imported ({type(err).__name__}: {err})"
    fn = getattr(module, name, None)
    if not callable(fn):
        return None, f"bids_qa.reports provides no {name}()"
    return fn, None


# --------------------------------------------------------------------------------------------
# Participant level


def _discover(config: RunConfig) -> Discovery:
    exclude = [config.output_dir, config.work_root]
    if config.bids_database_dir is not None:
        exclude.append(config.bids_database_dir)
    try:
        found = discover(
            config.bids_dir,
            participant_label=config.participant_label,
            session_id=config.session_id,
            run_id=config.run_id,
            suffixes=config.suffixes,
            bids_filters=config.bids_filters,
            skip_bids_validation=config.skip_bids_validation,
            database_dir=config.bids_database_dir,
            exclude=exclude,
            suffix_map=config.suffix_map,  # hook(userfix)
        )
    except DiscoveryError as err:
        raise PipelineError(err.code, err.message) from err
    for message in found.warnings:
        LOGGER.warning("%s", message)
    if not found.scans:
        if config.has_entity_filters:
            raise PipelineError(
                EXIT_NO_FILES, f"the filters selected no structural scan in {config.bids_dir}"
            )
        raise PipelineError(
            EXIT_NO_INPUT, f"no structural scan (.nii/.nii.gz) found in {config.bids_dir}"
        )
    return found


def run_participant(config: RunConfig, thresholds: ThresholdTable | None = None) -> int:
    """Assess every selected scan; returns the exit code (see :data:`EXIT_CODES`)."""
    return _run_level(config, lambda ctx: _participant(ctx, thresholds))


def _run_level(config: RunConfig, body: Callable[[RunContext], int]) -> int:
    """Run one analysis level inside its environment, turning fatal conditions into exit codes
    (logged to the run's log file and the console)."""
    try:
        with run_environment(config) as ctx:
            try:
                return body(ctx)
            except PipelineError as err:
                LOGGER.error("%s", err.message)
                return err.code
            except OSError as err:  # hook(userfix): a full disk outside a scan's writes
                if not is_out_of_space(err):
                    raise
                LOGGER.error("%s", out_of_space_message(err, config.output_dir, 0, 0))
                return EXIT_NO_SPACE
            except KeyboardInterrupt:
                LOGGER.error("interrupted; finished scans are kept, rerun to resume")
                return EXIT_INTERRUPTED
            except Terminated:
                LOGGER.error("terminated (SIGTERM); finished scans are kept, rerun to resume")
                return EXIT_TERMINATED
    except PipelineError as err:  # the environment itself could not be set up
        print(f"bids_qa: error: {err.message}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Terminated:
        return EXIT_TERMINATED


def _load_thresholds(config: RunConfig) -> ThresholdTable:
    try:
        return load_thresholds(config.thresholds_file)
    except ThresholdError as err:
        raise PipelineError(EXIT_USAGE, str(err)) from err


def _participant(ctx: RunContext, thresholds: ThresholdTable | None) -> int:
    config = ctx.config
    out_dir = config.output_dir
    deriv.write_dataset_description(out_dir, config.bids_dir)
    removed = deriv.cleanup_stale_temp(out_dir)
    if removed:
        LOGGER.info("removed %d temporary file(s) left by an interrupted run", removed)
    if thresholds is None:
        thresholds = _load_thresholds(config)

    found = _discover(config)
    LOGGER.info(
        "found %d scan(s) in %s (%s mode)",
        len(found.scans),
        config.bids_dir,
        "BIDS" if found.mode == "bids" else "plain-NIfTI",
    )
    planned, collisions = deriv.plan_scan_paths(out_dir, found.scans)
    for message in collisions:
        LOGGER.warning("%s", message)

    device = resolve_device(config.device)
    plan = execution_plan(config, device)
    scorer_set = build_scorer_set(config.scorers, device, plan.batch_size)
    torch = sys.modules.get("torch")  # imported by the device check or by a deep scorer
    saved_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(plan.torch_threads)
    try:
        if scorer_set.skipped:
            LOGGER.info(
                "not installed, skipped: %s (their weights are not shipped with this version)",
                ", ".join(scorer_set.skipped),
            )
        LOGGER.info(
            "scorers: %s on %s", ", ".join(d["name"] for d in scorer_set.describe()), device
        )
        LOGGER.debug(
            "%d loader thread(s), %d torch thread(s) for inference, batches of %d, "
            "%d scan(s) per group",
            plan.loader_threads,
            plan.torch_threads,
            plan.batch_size,
            plan.scan_batch,
        )
        report_fn, report_error, takes_volume = None, None, False
        if config.reports:
            report_fn, report_error = load_report_function("render_scan_report")
            if report_fn is not None:
                with contextlib.suppress(TypeError, ValueError):
                    takes_volume = "volume" in inspect.signature(report_fn).parameters
            else:
                LOGGER.warning("reports unavailable: %s", report_error)
        shared = RunShared(
            ctx,
            scorer_set,
            thresholds,
            device,
            _software_versions(device),
            report_fn,
            report_error,
            takes_volume,
        )

        todo: list[tuple[Scan, deriv.ScanPaths]] = []
        done = 0
        for scan, paths in planned:
            if not config.overwrite and deriv.scan_is_complete(
                paths, resume_key(scan, scorer_set, thresholds), need_report=config.reports
            ):
                done += 1
                continue
            todo.append((scan, paths))
        if done:
            LOGGER.info("%d scan(s) already done (use --overwrite to redo them)", done)
        outcomes = _process(todo, shared, plan)
    finally:
        if torch is not None and saved_threads is not None:
            torch.set_num_threads(saved_threads)
    return _summarise(outcomes, done, len(collisions), ctx)


def _process(
    todo: list[tuple[Scan, deriv.ScanPaths]], shared: RunShared, plan: ExecutionPlan
) -> list[ScanOutcome]:
    """Load and prepare scans in the loader threads; score them group by group, then judge,
    write and report each, in the calling (inference) thread."""
    from tqdm import tqdm

    config = shared.ctx.config
    outcomes: list[ScanOutcome] = []
    bar = tqdm(
        total=len(todo),
        unit="scan",
        desc="bids_qa",
        disable=True if config.verbosity < 0 else None,
        dynamic_ncols=True,
        leave=False,
    )
    scorer_set = shared.scorer_set
    stream = iter_loaded(
        todo,
        lambda item: load_and_prepare(item[0], scorer_set),
        plan.loader_threads,
        initializer=_one_torch_thread,
    )
    try:
        for group in iter_groups(stream, plan.scan_batch):
            scorings = score_group([(item[0], loaded) for item, loaded in group], scorer_set)
            for ((scan, paths), loaded), scoring in zip(group, scorings, strict=True):
                try:
                    outcome = assess_scan(scan, paths, loaded, shared, scoring)
                except OSError as err:  # hook(userfix): a full disk stops the run (exit 74)
                    if not is_out_of_space(err):
                        raise
                    raise PipelineError(
                        EXIT_NO_SPACE,
                        out_of_space_message(err, config.output_dir, len(outcomes), len(todo)),
                    ) from err
                loaded.volume = None  # free it now, not when the whole group is done
                outcomes.append(outcome)
                bar.update(1)
                if outcome.failed:
                    first = next(e for e in outcome.errors if e["stage"] != "report")
                    LOGGER.warning(
                        "%s: error [%s] %s", scan.source, first["stage"], first["message"]
                    )
                else:
                    LOGGER.info(
                        "%s: %s (%.1f s)",
                        scan.source,
                        outcome.verdict,
                        outcome.seconds + loaded.seconds,
                    )
    finally:
        bar.close()
    return outcomes


def _summarise(outcomes: list[ScanOutcome], done: int, dropped: int, ctx: RunContext) -> int:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    text = ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "nothing new"
    elapsed = time.monotonic() - ctx.started_monotonic
    LOGGER.info(
        "processed %d scan(s) in %.1f s: %s; %d already done; outputs in %s",
        len(outcomes),
        elapsed,
        text,
        done,
        ctx.config.output_dir,
    )
    failed = [o for o in outcomes if o.failed]
    if outcomes and len(failed) == len(outcomes):
        LOGGER.error(
            "every scan of this run failed; see the error rows in the outputs and %s", ctx.log_file
        )
        return EXIT_ALL_FAILED
    if failed:
        LOGGER.warning("%d scan(s) failed; see their error rows (verdict 'error')", len(failed))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Group level


def run_group(config: RunConfig, thresholds: ThresholdTable | None = None) -> int:
    """Write the group tables (and reports) from the participant-level derivatives."""
    return _run_level(config, lambda ctx: _group(ctx, thresholds))


def _group(ctx: RunContext, thresholds: ThresholdTable | None) -> int:
    config = ctx.config
    out_dir = config.output_dir
    deriv.write_dataset_description(out_dir, config.bids_dir)
    deriv.cleanup_stale_temp(out_dir)
    if thresholds is None:
        thresholds = _load_thresholds(config)
    tables, problems = deriv.collect_group_rows(out_dir, config.suffixes, config.participant_label)
    for message in problems:
        LOGGER.warning("%s", message)
    if not tables:
        raise PipelineError(
            EXIT_NO_INPUT,
            f"no participant-level outputs (*_qa.json) in {out_dir}"
            f"{' match the filters' if config.participant_label or config.suffixes else ''}; "
            "run the participant level first",
        )
    report_fn, report_error = (
        load_report_function("render_group_report") if config.reports else (None, None)
    )
    if config.reports and report_fn is None:
        LOGGER.warning("group reports unavailable: %s", report_error)
    provenance = {
        "bids_qa_version": __version__,
        "generated": deriv.utc_now(),
        "run_id": ctx.run_id,
        "log": ctx.log_file.relative_to(out_dir).as_posix(),
    }
    for suffix, table in tables.items():
        descriptions = dict(thresholds.descriptions(suffix))
        group_provenance = dict(provenance)
        try:
            from bids_qa.group_flow import DATASET_COLUMNS, apply_dataset_refit

            note = apply_dataset_refit(table, deriv.group_paths(out_dir, suffix).tsv.with_name(
                f"group_{suffix}_flow_density.png"))
            if note:
                group_provenance["flow_density"] = note
                descriptions.update(DATASET_COLUMNS)
                LOGGER.info("%s: flow density: %s", suffix, note["message"])
        except Exception as err:  # the refit is an extra: never lose the group table over it
            LOGGER.debug("flow refit failed:\n%s", traceback.format_exc())
            LOGGER.error("%s: flow density refit failed: %s: %s", suffix, type(err).__name__, err)
        try:  # issue 23: dataset-relative (protocol group) flags
            from bids_qa.protocols import PROTOCOL_COLUMNS, apply_protocol_flags

            group_provenance["protocols"] = apply_protocol_flags(table)
            descriptions.update(PROTOCOL_COLUMNS)
        except Exception as err:  # an extra, like the refit: never lose the group table over it
            LOGGER.error("%s: protocol groups failed: %s: %s", suffix, type(err).__name__, err)
        group_provenance["thresholds"] = thresholds.provenance()
        group_provenance["methods"] = methods_text(  # hook(userfix)
            out_dir, suffix, flow_refit="flow_density" in group_provenance
        )
        paths = deriv.write_group_table(out_dir, table, descriptions, group_provenance)
        counts: dict[str, int] = {}
        for row in table.rows:
            counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
        LOGGER.info(
            "%s: %d scan(s) (%s) -> %s",
            suffix,
            len(table.rows),
            ", ".join(f"{n} {v}" for v, n in sorted(counts.items())),
            paths.tsv.name,
        )
        if report_fn is not None:
            try:
                report_fn(out_dir, suffix)
            except Exception as err:
                LOGGER.debug("group report failed:\n%s", traceback.format_exc())
                LOGGER.error(
                    "group report for %s failed: %s",
                    suffix,
                    getattr(err, "message", None) or f"{type(err).__name__}: {err}",
                )
    LOGGER.info("methods paragraph: %s", write_methods_file(out_dir).name)  # hook(userfix)
    return EXIT_OK
