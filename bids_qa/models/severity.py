"""Artifact-severity model (Hays et al.: Hays et al., "An unsupervised approach for artifact severity
scoring in multi-contrast MR images", MIDL 2025 submission).

A small 2D encoder maps a slice to one non-negative number; a volume's score is the mean over the
middle 60% of its anatomy-bearing slices in the acquisition plane. ``<= 1`` is usable, ``> 1`` should
be looked at.

Architecture (paper Sec. 2.3, shape kept, sizes ours): two blocks of [conv3x3 -> InstanceNorm ->
LeakyReLU] x 2 with growing channels, a conv down to one channel, adaptive average pooling, absolute
value. Our choice: every conv in the blocks has stride 2 (input 128x128 -> 8x8 feature map). This makes
a slice cost ~15 MMAC (a 1 mm volume scores in well under 0.3 s on 2 CPU cores) and, more importantly,
gives the output a receptive field of about half the slice, which a smooth bias field needs to be
seen at all (the paper's bias row barely moves; its encoder has no downsampling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bids_qa.models.config import ModelConfig
from bids_qa.models.weights import NetworkScorer
from bids_qa.rulers import Ruler, build_ruler
from bids_qa.scoring import ScanScores, scored_slices, volume_view
from bids_qa.volume import Volume

NAME = "severity"
WEIGHTS_FILE = "severity.safetensors"
#: Hays et al.'s threshold: <= 1 usable, > 1 flag.
DEFAULT_THRESHOLD = 1.0
#: Fraction of the (anatomy-bearing) slices, centred, averaged into the volume score.
MIDDLE_FRACTION = 0.6
#: Artifact graded along the severity ruler (the image-ruler paper's rulers are noise rulers).
RULER_ARTIFACT = "noise"
#: Orders of the encoder's last two operations (see :class:`SeverityConfig`).
#: Pooling of the last map: ``"pool_abs"``, |spatial mean| (Hays et al.'s order; the only one
#: shipped weights use).
POOLINGS = ("pool_abs",)


@dataclass(frozen=True)
class SeverityConfig(ModelConfig):
    """Architecture hyper-parameters, stored in the weights' metadata."""

    input_size: int = 128
    channels: tuple[int, int] = (16, 32)
    negative_slope: float = 0.2
    #: see :data:`POOLINGS`
    pooling: str = "pool_abs"
    #: 0: each slice's whole field of view squeezed into ``input_size`` pixels (about 1.9 mm per
    #: pixel for a 240 mm head). > 0: slices resampled to this many mm per pixel and cut to
    #: ``input_size`` around the head, so sub-2-mm artifacts (in-plane anisotropy) stay visible.
    pixel_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pixel_mm < 0:
            raise ValueError(f"pixel_mm must be >= 0, got {self.pixel_mm}")

def build_encoder(config: SeverityConfig):
    """The paper's encoder with our strides; returns a ``torch.nn.Module`` mapping (B,1,S,S) -> (B,)."""
    import torch
    from torch import nn

    def conv_block(cin: int, cout: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(2):
            layers += [
                nn.Conv2d(cin if i == 0 else cout, cout, kernel_size=3, stride=2, padding=1),
                nn.InstanceNorm2d(cout, affine=True),
                nn.LeakyReLU(config.negative_slope),
            ]
        return nn.Sequential(*layers)

    class SeverityEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c1, c2 = config.channels
            self.blocks = nn.Sequential(conv_block(1, c1), conv_block(c1, c2))
            self.reduce = nn.Conv2d(c2, 1, kernel_size=3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            last = self.reduce(self.blocks(x))
            return self.pool(last).flatten(1)[:, 0].abs()

    return SeverityEncoder()


def middle_slices(indices: np.ndarray, fraction: float = MIDDLE_FRACTION) -> np.ndarray:
    """The centred ``fraction`` of a sorted index array (at least one element)."""
    n = len(indices)
    if n == 0:
        return indices
    keep = max(1, int(round(n * fraction)))
    start = (n - keep) // 2
    return indices[start : start + keep]


class SeverityScorer(NetworkScorer):
    """Scores a volume with the shipped severity weights (or weights passed explicitly)."""

    name = NAME
    weights_file = WEIGHTS_FILE
    config_class = SeverityConfig
    network_builder = staticmethod(build_encoder)
    #: Batches of 16 slices: 0.17 CPU s per 128 slices of 160 x 160 against 0.32 s in batches of
    #: 64 (one thread; the activations of a small batch stay in cache), identical scores.
    cpu_batch_size = 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: id(reference images) -> (images, their scores); see :meth:`score_many`.
        self._reference_scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def score_slices(self, slices) -> np.ndarray:
        """Per-slice scores for an array (n, S, S) already at the model's input size (or a list
        of such arrays, scored as their concatenation)."""
        out = self.forward(slices)
        return out.reshape(len(out))

    def ruler_template(self, volume: Volume) -> Ruler:
        """The ruler's images for ``volume`` (the image-ruler paper), not yet scored (NaN scores), cached.

        Corrupting the central slice is CPU work; :meth:`prepare` does it in the loader threads,
        and :meth:`score_many` sends the images through the network together with the scan's
        slices.
        """

        def unscored(images: np.ndarray) -> np.ndarray:
            return np.full(len(images), np.nan, np.float32)

        size, px = self.config.input_size, self.config.pixel_mm
        return volume_view(
            volume,
            ("ruler", NAME, RULER_ARTIFACT, size, px),
            lambda: build_ruler(
                volume,
                unscored,
                model=NAME,
                metric="score",
                artifact=RULER_ARTIFACT,
                scan_value=math.nan,
                threshold=DEFAULT_THRESHOLD,
                input_size=size,
                pixel_mm=px,
                with_references=True,
            ),
        )

    def prepare(self, volume: Volume) -> None:
        """Cache the network's inputs on ``volume`` (anatomy slices at the input size, ruler
        images) without running the network; see :mod:`bids_qa.scoring`."""
        scored_slices(volume, self.config.input_size, self.config.pixel_mm)
        self.ruler_template(volume)

    def score_many(
        self, volumes: Sequence[Volume], suffixes: Sequence[str | None] | None = None
    ) -> list[ScanScores]:
        """Score several volumes with one batched pass over all their slices and ruler images.

        The reference rulers' images are the same for every scan of a slice axis (made once per
        process, :func:`bids_qa.rulers.reference_rulers`), so their scores are computed the first
        time they are met and reused: 24 fewer slices through the network per scan."""
        parts = [
            (
                *scored_slices(v, self.config.input_size, self.config.pixel_mm),
                self.ruler_template(v),
            )
            for v in volumes
        ]
        new_refs = {
            id(ref.images): ref.images
            for _, _, r in parts
            for ref in r.references.values()
            if id(ref.images) not in self._reference_scores
        }
        outputs = self.score_slices(
            [a for slices, _, r in parts for a in (slices, r.images)] + list(new_refs.values())
        )
        pos = sum(len(slices) + len(r.images) for slices, _, r in parts)
        for key, images in new_refs.items():
            # the images are kept with their scores, so their id cannot be reused by another array
            self._reference_scores[key] = (images, np.asarray(outputs[pos : pos + len(images)], np.float32))
            pos += len(images)
        results, pos = [], 0
        for volume, (slices, anatomy, template) in zip(volumes, parts, strict=True):
            per_slice = outputs[pos : pos + len(slices)]
            pos += len(slices)
            ruler_scores = outputs[pos : pos + len(template.images)]
            pos += len(template.images)
            references = {  # reference rulers (shown for a degraded scan)
                family: replace(ref, scores=self._reference_scores[id(ref.images)][1].copy())
                for family, ref in template.references.items()
            }
            results.append(self._summarise(volume, anatomy, per_slice, replace(template, references=references),
                                           ruler_scores))
        return results

    @staticmethod
    def _summarise(
        volume: Volume,
        anatomy: np.ndarray,
        per_slice: np.ndarray,
        template: Ruler,
        ruler_scores: np.ndarray,
    ) -> ScanScores:
        middle = np.isin(anatomy, middle_slices(anatomy))
        value = float(per_slice[middle].mean())
        worst = int(anatomy[int(np.argmax(per_slice))])
        ruler = replace(
            template, scores=np.asarray(ruler_scores, dtype=np.float32), scan_value=value
        )
        return ScanScores(
            scorer=NAME,
            values={
                "score": value,
                "slice_max": float(per_slice.max()),
                "worst_slice": worst,
                "n_slices_scored": int(middle.sum()),
            },
            per_slice={"slice_index": anatomy.astype(np.int32), "severity": per_slice.copy()},
            slice_axis=volume.slice_axis,
            ruler=ruler,
        )
