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
