"""The scorer interface and the registry of scorers.

A scorer turns a :class:`~bids_qa.volume.Volume` into named numbers. It never reads or writes files
(weights excepted, at construction). Adding a model family means one module with a subclass of
:class:`Scorer` and one line in :data:`REGISTRY`. The whole interface the pipeline uses is declared
on :class:`Scorer` with defaults, so the pipeline calls it directly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
        Optional :class:`bids_qa.rulers.Ruler` (the image-ruler paper) for the scorer's headline metric; the
        pipeline writes its images and records its levels in the scan's JSON sidecar.
    """

    scorer: str
    values: dict[str, float | int | str]
    per_slice: dict[str, np.ndarray] = field(default_factory=dict)
    slice_axis: int | None = None
    ruler: Any = None


class Scorer:
    """A model family or metric set; subclasses override :meth:`score` or :meth:`score_many`.

    Attributes
    ----------
    name
        The family's name: the ``model`` column of the outputs, ``--scorers`` and provenance.
    version
        The weights' or formulas' version, recorded in provenance and in the resume key.
    in_loader
        True for a CPU-only, thread-safe scorer (no network): the pipeline runs its ``score`` in
        the loader threads, right after the scan is loaded (``header``, ``iqm``).
    needs_suffix
        True when the values depend on the scan's BIDS suffix (a property where that depends on
        the weights); the pipeline then passes ``suffix`` to :meth:`score` / :meth:`score_many`.
    """

    name: str = ""
    version: str = "unknown"
    in_loader: bool = False
    needs_suffix: bool = False

    def prepare(self, volume: Volume) -> None:
        """Compute and cache on ``volume`` every input the network will read (slice stacks, cubes,
        ruler images) without running it; the pipeline calls it in the loader threads so the
        inference thread only runs networks. Default: nothing to prepare."""
        return None

    def score(self, volume: Volume, suffix: str | None = None) -> ScanScores:
        """One scan's scores. Default: :meth:`score_many` on that one scan."""
        return self.score_many([volume], [suffix])[0]

    def score_many(
        self, volumes: Sequence[Volume], suffixes: Sequence[str | None] | None = None
    ) -> list[ScanScores]:
        """Several scans' scores, e.g. with one batched pass of the network (outputs split back
        per scan); must equal :meth:`score` on each within float tolerance. Default: :meth:`score`
        on each volume."""
        suffixes = list(suffixes) if suffixes is not None else [None] * len(volumes)
        return [self.score(v, s) for v, s in zip(volumes, suffixes, strict=True)]


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
        module, name = self.target.split(":")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, Scorer)):
            raise TypeError(f"{self.target} is not a bids_qa.scoring.Scorer")
        return cls(**kwargs)


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


T = TypeVar("T")


def volume_view(volume: Volume, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
    """``volume.view(key, compute)`` (:meth:`Volume.view`: computed once, cached on the volume);
    a volume-like object without ``view`` gets the view computed every time."""
    view = getattr(volume, "view", None)
    return compute() if view is None else view(key, compute)


def anatomy_indices(volume: Volume) -> np.ndarray:
    """Cached :meth:`Volume.anatomy_slices` along the volume's reading axis."""
    return volume_view(volume, ("anatomy", volume.slice_axis), volume.anatomy_slices)


def scored_slices(
    volume: Volume, size: int, pixel_mm: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Cached (anatomy-bearing slices at ``size``, their indices).

    Several scorers read the same stack (at their own input size), and the fancy-indexed copy of
    the anatomy slices is made once per size instead of once per scorer. ``pixel_mm > 0`` reads
    :meth:`Volume.spacing_stack` (fixed pixel spacing, cut around the head) instead of
    :meth:`Volume.slice_stack` (whole field of view).
    """

    def compute() -> tuple[np.ndarray, np.ndarray]:
        stack = volume.slice_stack(size, pixel_mm=pixel_mm)
        anatomy = anatomy_indices(volume)
        if len(anatomy) == 0:
            anatomy = np.arange(len(stack))
        return stack[anatomy], anatomy

    key = ("scored_slices", size, volume.slice_axis) + ((float(pixel_mm),) if pixel_mm > 0 else ())
    return volume_view(volume, key, compute)


def checked_score_many(
    scorer: Scorer, volumes: Sequence[Volume], suffixes: Sequence[str | None]
) -> list[ScanScores]:
    """``scorer.score_many(volumes, suffixes)``, checked to give one :class:`ScanScores` per volume.

    Raises
    ------
    TypeError
        When it returns anything else (a bug in the scorer; the pipeline then scores the volumes
        one by one, so one bad scan never costs the others their scores).
    """
    out = list(scorer.score_many(list(volumes), list(suffixes)))
    if len(out) != len(volumes) or not all(isinstance(r, ScanScores) for r in out):
        raise TypeError(
            f"{scorer.name}.score_many returned {len(out)} result(s) for "
            f"{len(volumes)} volume(s), or something that is not ScanScores"
        )
    return out


def build_scorers(
    names: Sequence[str] | None = None,
    device: str = "cpu",
    batch_size: int = 0,
    weights: Mapping[str, str] | None = None,
) -> list[Scorer]:
    """Instantiate the available scorers (optionally only ``names``), in registry order.
    ``batch_size`` 0: each family's own default for ``device``; ``weights``: family -> weights
    file to use instead of the shipped one (benchmarks of new weights)."""
    out: list[Scorer] = []
    for entry in REGISTRY:
        if names is not None and entry.name not in names:
            continue
        if not entry.available():
            continue
        kwargs: dict[str, Any] = {}
        if entry.needs_weights is not None:
            kwargs = {"device": device, "batch_size": batch_size}
            if weights and entry.name in weights:
                kwargs["weights"] = weights[entry.name]
        out.append(entry.build(**kwargs))
    return out


def unavailable_scorers() -> list[str]:
    """Names of registered families whose weights are not in this installation."""
    return [e.name for e in REGISTRY if not e.available()]
