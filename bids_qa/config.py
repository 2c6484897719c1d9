"""Run settings as one immutable value.

Everything the command line decides is gathered in :class:`RunConfig`, passed explicitly to the
pipeline and saved verbatim in every scan's provenance, so an output can always be traced back to
the settings that produced it. There is no module-level mutable state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

#: The analysis levels this BIDS-App implements.
ANALYSIS_LEVELS = ("participant", "group")
#: Accepted values of ``--device`` (``cuda:N`` is accepted too).
DEVICES = ("auto", "cpu", "cuda")
#: Name of the default work folder, created inside OUTPUT_DIR when ``--work-dir`` is not given.
DEFAULT_WORK_NAME = ".bids_qa_work"


def available_cpus() -> int:
    """CPUs this process may use (respects affinity masks set by schedulers such as SLURM)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RunConfig:
    """Settings of one ``bids_qa`` run.

    Attributes
    ----------
    bids_dir
        Input folder: a BIDS dataset, or any folder of NIfTI files (plain-NIfTI mode).
    output_dir
        Where derivatives, reports and logs go.
    analysis_level
        ``"participant"`` or ``"group"``.
    participant_label, session_id, run_id
        Entity filters (labels without their ``sub-``/``ses-``/``run-`` prefix); empty means all.
    suffixes
        Contrasts to assess (``T1w``, ``T2w``, ...); empty means every structural contrast found.
    suffix_map
        ``(glob pattern, suffix)`` pairs from ``--suffix-map`` (plain-NIfTI mode).
    bids_filters
        Parsed ``--bids-filter-file`` (a mapping of queries), or ``None``.
    skip_bids_validation
        Index every file, even those whose names are not valid BIDS.
    bids_database_dir
        Folder of a persistent pybids index to create or reuse; ``None`` keeps it in memory.
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    nprocs
        Loader threads (load scans ahead, run the CPU-only scorers and prepare the networks'
        inputs); inference uses ``max(1, nprocs // 2)`` torch threads (the thread rule is in
        :class:`bids_qa.plan.ExecutionPlan`).
    batch_size
        Slices (or grids) per forward pass of the deep models; ``None`` (``auto``) means 64 on CPU
        and 512 on CUDA.
    scan_batch
        Consecutive scans scored together, their slices sharing forward passes; ``None``
        (``auto``) means 1 on CPU and 8 on CUDA. Scores do not depend on it, nor on
        ``batch_size`` and ``nprocs`` (within float tolerance).
    work_dir
        Scratch space (caches, temporary files); ``None`` means ``OUTPUT_DIR/.bids_qa_work``.
    thresholds_file
        User JSON overriding the shipped thresholds, or ``None``.
    scorers
        Registered scorer names to run; empty means every available one.
    reports
        Render HTML reports (``--no-reports`` sets it to False).
    overwrite
        Recompute scans whose outputs are already complete.
    verbosity
        0 normal, positive more detail, negative quieter.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    participant_label: tuple[str, ...] = ()
    session_id: tuple[str, ...] = ()
    run_id: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    suffix_map: tuple[tuple[str, str], ...] = ()
    bids_filters: dict[str, Any] | None = field(default=None, hash=False)
    skip_bids_validation: bool = False
    bids_database_dir: Path | None = None
    device: str = "auto"
    nprocs: int = field(default_factory=available_cpus)
    batch_size: int | None = None
    scan_batch: int | None = None
    work_dir: Path | None = None
    thresholds_file: Path | None = None
    scorers: tuple[str, ...] = ()
    reports: bool = True
    overwrite: bool = False
    verbosity: int = 0

    def __post_init__(self) -> None:
        if self.analysis_level not in ANALYSIS_LEVELS:
            raise ValueError(
                f"analysis level {self.analysis_level!r} is not one of {ANALYSIS_LEVELS}"
            )
        if self.nprocs < 1:
            raise ValueError(f"nprocs must be at least 1, got {self.nprocs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (or None for auto), got {self.batch_size}")
        if self.scan_batch is not None and self.scan_batch < 1:
            raise ValueError(f"scan_batch must be at least 1 (or None for auto), got {self.scan_batch}")
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise ValueError(f"device {self.device!r} is not one of {DEVICES} or cuda:N")

    @property
    def work_root(self) -> Path:
        """The scratch folder: ``--work-dir`` or ``OUTPUT_DIR/.bids_qa_work``."""
        return self.work_dir if self.work_dir is not None else self.output_dir / DEFAULT_WORK_NAME

    @property
    def has_entity_filters(self) -> bool:
        """Whether the user narrowed the selection (used to tell exit code 18 from 66)."""
        return bool(
            self.participant_label
            or self.session_id
            or self.run_id
            or self.suffixes
            or self.bids_filters
        )

    def selection(self) -> dict[str, Any]:
        """The keyword arguments of :func:`bids_qa.discover.discover` that select the scans."""
        return {
            "participant_label": self.participant_label,
            "session_id": self.session_id,
            "run_id": self.run_id,
            "suffixes": self.suffixes,
            "bids_filters": self.bids_filters,
            "skip_bids_validation": self.skip_bids_validation,
            "database_dir": self.bids_database_dir,
            "suffix_map": self.suffix_map,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (paths as strings, tuples as lists) for provenance."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out
