"""The one exception type a scan's processing raises, so the pipeline can turn it into an error row."""

from __future__ import annotations


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


#: Exit code of a run stopped because the output disk is full (sysexits' EX_IOERR).
EXIT_NO_SPACE = 74


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
