"""The scorer interface and the registry of scorers.

A scorer turns a :class:`~bids_qa.volume.Volume` into named numbers. It never reads or writes files
(weights excepted, at construction). Adding a model family means one module with a class following
:class:`Scorer` and one line in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bids_qa.volume import Volume


@dataclass
class ScanScores:
    """What one scorer says about one scan.

    Attributes
    ----------
    scorer
        The scorer's name (``"iqm"``, ``"severity"``, ...); the ``model`` column of the outputs.
    values
        Volume-level metrics: numbers, or short strings for class labels (``"good"``).
    per_slice
        Optional per-slice arrays (same length), with ``"slice_index"`` giving the slice numbers
        along ``slice_axis``.
    slice_axis
        Axis the per-slice values run along.
    ruler
        Optional :class:`bids_qa.rulers.Ruler` (paper 004) for the scorer's headline metric; the
        pipeline writes its images and records its levels in the scan's JSON sidecar.
    """

    scorer: str
    values: dict[str, float | int | str]
    per_slice: dict[str, np.ndarray] = field(default_factory=dict)
    slice_axis: int | None = None
    ruler: Any = None


@runtime_checkable
class Scorer(Protocol):
    """A model family or metric set. ``name`` and ``version`` go into provenance."""

    name: str
    version: str

    def score(self, volume: Volume) -> ScanScores:  # pragma: no cover - protocol
        ...


@dataclass(frozen=True)
class ScorerEntry:
    """Where a scorer lives and whether it needs shipped weights."""

    name: str
    target: str  # "module:Class"
    needs_weights: str | None = None  # package-relative weights file, if any

    def available(self) -> bool:
        if self.needs_weights is None:
            return True
        from importlib import resources

        return resources.files("bids_qa").joinpath(self.needs_weights).is_file()

    def build(self, **kwargs: Any) -> Scorer:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)(**kwargs)


#: Every scorer the tool knows, in output order. A family whose weights are not shipped yet is
#: skipped (and said so in the log) rather than run with untrained weights.
REGISTRY: list[ScorerEntry] = [
    ScorerEntry("header", "bids_qa.iqms:HeaderScorer"),
    ScorerEntry("iqm", "bids_qa.iqms:IQMScorer"),
    ScorerEntry("severity", "bids_qa.models.severity:SeverityScorer", "weights/severity.safetensors"),
    ScorerEntry("flow", "bids_qa.models.flow:FlowScorer", "weights/flow.safetensors"),
    ScorerEntry("ssim", "bids_qa.models.ssim:SSIMScorer", "weights/ssim.safetensors"),
    ScorerEntry("tiers", "bids_qa.models.tiers:TierScorer", "weights/tiers.safetensors"),
]


def build_scorers(names: list[str] | None = None, device: str = "cpu", batch_size: int = 64) -> list[Scorer]:
    """Instantiate the available scorers (optionally only ``names``), in registry order."""
    out: list[Scorer] = []
    for entry in REGISTRY:
        if names is not None and entry.name not in names:
            continue
        if not entry.available():
            continue
        kwargs: dict[str, Any] = {}
        if entry.needs_weights is not None:
            kwargs = {"device": device, "batch_size": batch_size}
        out.append(entry.build(**kwargs))
    return out


def unavailable_scorers() -> list[str]:
    """Names of registered families whose weights are not in this installation."""
    return [e.name for e in REGISTRY if not e.available()]
