"""The run environment of both analysis levels: work folder, caches, logging, signals, and the
turning of fatal conditions into exit codes.

Nothing is written outside OUTPUT_DIR and the work folder: caches (matplotlib, XDG, temporary
files) are pointed into a per-run work folder that is removed at the end. SIGTERM (e.g. a
scheduler's time limit) is raised as :class:`Terminated` in the main thread so ``finally`` blocks
clean up; finished scans are kept and a rerun resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import warnings as pywarnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_qa import __version__
from bids_qa import derivatives as deriv
from bids_qa.config import RunConfig
from bids_qa.errors import ExitCode, FatalError, is_out_of_space, out_of_space_message
from bids_qa.thresholds import ThresholdError, ThresholdTable, load_thresholds

LOGGER = logging.getLogger("bids_qa")


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
    FatalError
        ``CANT_CREATE`` when a folder cannot be created.
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
        raise FatalError(
            ExitCode.CANT_CREATE, f"cannot create or write the output/work folders: {err}"
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
    says what happened, without a logging traceback."""

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



def run_level(config: RunConfig, body: Callable[[RunContext], int]) -> int:
    """Run one analysis level inside its environment, turning fatal conditions into exit codes
    (logged to the run's log file and the console)."""
    try:
        with run_environment(config) as ctx:
            try:
                return body(ctx)
            except FatalError as err:
                LOGGER.error("%s", err.message)
                return err.code
            except OSError as err:  # a full disk outside a scan's writes
                if not is_out_of_space(err):
                    raise
                LOGGER.error("%s", out_of_space_message(err, config.output_dir, 0, 0))
                return ExitCode.NO_SPACE
            except KeyboardInterrupt:
                LOGGER.error("interrupted; finished scans are kept, rerun to resume")
                return ExitCode.INTERRUPTED
            except Terminated:
                LOGGER.error("terminated (SIGTERM); finished scans are kept, rerun to resume")
                return ExitCode.TERMINATED
    except FatalError as err:  # the environment itself could not be set up
        print(f"bids_qa: error: {err.message}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Terminated:
        return ExitCode.TERMINATED



def load_run_thresholds(config: RunConfig) -> ThresholdTable:
    try:
        return load_thresholds(config.thresholds_file)
    except ThresholdError as err:
        raise FatalError(ExitCode.USAGE, str(err)) from err


def open_output(config: RunConfig, thresholds: ThresholdTable | None) -> ThresholdTable:
    """What both levels do first in OUTPUT_DIR: write ``dataset_description.json``, remove the
    temporary files of killed runs, and load the thresholds unless given."""
    deriv.write_dataset_description(config.output_dir, config.bids_dir)
    removed = deriv.cleanup_stale_temp(config.output_dir)
    if removed:
        LOGGER.info("removed %d temporary file(s) left by an interrupted run", removed)
    return thresholds if thresholds is not None else load_run_thresholds(config)



def software_versions(device: str) -> dict[str, str]:
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

