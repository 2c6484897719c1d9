"""Exit codes and the two exception types of a run: a fatal condition that ends the run with an
exit code (:class:`FatalError`), and a scan-level failure that becomes an error row
(:class:`ScanError`)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit code ``bids_qa`` returns (BIDS-Apps draft, Table 7; sysexits for the rest)."""

    OK = 0
    FAILURE = 1
    INVALID_BIDS = 16
    UNKNOWN_LEVEL = 17
    NO_FILES = 18
    USAGE = 64
    ALL_FAILED = 65
    NO_INPUT = 66
    CANT_CREATE = 73
    NO_SPACE = 74
    INTERRUPTED = 130
    TERMINATED = 143


#: What each exit code means (also in ``docs/usage.md`` and ``bids_qa --help``).
EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success: every selected scan has outputs (some may hold error rows), or all were already done",
    ExitCode.FAILURE: "internal failure (a bug or a broken installation, e.g. a scorer that cannot be built)",
    ExitCode.INVALID_BIDS: "the input dataset failed BIDS validation (unreadable dataset_description.json)",
    ExitCode.UNKNOWN_LEVEL: "unknown analysis level (not participant or group)",
    ExitCode.NO_FILES: "the entity filters (--participant-label, --session-id, --run-id, --suffix, "
    "--bids-filter-file) selected no files",
    ExitCode.USAGE: "command-line usage error (bad option, bad thresholds or filter file, unavailable device)",
    ExitCode.ALL_FAILED: "every scan processed in this run failed (outputs with error rows were still written)",
    ExitCode.NO_INPUT: "no input: the input folder is missing or holds no structural scan; at group level, "
    "no participant-level outputs were found",
    ExitCode.CANT_CREATE: "the output or work folder cannot be created or written",
    ExitCode.NO_SPACE: "the output disk is full (no space left or quota exceeded): the run stopped at the first "
    "failed write; what was written is valid and a rerun resumes",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); finished scans are kept, rerun to resume",
    ExitCode.TERMINATED: "terminated (SIGTERM, e.g. a scheduler's time limit); finished scans are kept",
}


class FatalError(Exception):
    """The run cannot go on (bad usage, no input, unwritable output, ...): ``code`` is the exit
    code and ``message`` says why. Raised by discovery, the CLI's checks and the pipeline."""

    def __init__(self, code: ExitCode | int, message: str) -> None:
        super().__init__(message)
        self.code = ExitCode(code)
        self.message = message


class ScanError(Exception):
    """A scan could not be processed at some stage (load, score, write, report).

    The pipeline catches it, records ``stage`` and ``message`` in the scan's outputs and goes on
    with the next scan, so one bad file never stops a run.

    Parameters
    ----------
    stage
        Where it failed: ``"load"``, ``"score"``, ``"write"``, ``"report"`` or ``"discover"``.
    message
        What went wrong, with the offending value and, where possible, what to do about it.
    """

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"[{stage}] {message}")
        self.stage = stage
        self.message = message


def is_out_of_space(err: BaseException) -> bool:
    """Whether ``err`` is an OS error for a full disk or quota (``ENOSPC``, ``EDQUOT``): every
    further write would fail too, so the run stops instead of failing each remaining scan."""
    import errno

    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


def out_of_space_message(err: BaseException, output_dir: object, done: int, total: int) -> str:
    """What the user is told when the disk fills up: how far the run got and how to resume."""
    progress = (
        f"stopped after {done} of {total} scan(s) of this run" if total else "stopped"
    )
    return (
        f"no space left on the device holding {output_dir} ({err}); {progress}. What was written is "
        "complete and valid: free some space and rerun the same command to resume with the "
        "remaining scans"
    )
