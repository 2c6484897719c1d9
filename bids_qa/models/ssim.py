"""SSIM-regression model for motion artifacts (Sciarra et al.: Sciarra, Chatterjee et al., "Automated SSIM
regression for detection and quantification of motion artefacts in brain MR images").

A ResNet-18 reads one 2D slice and predicts the structural similarity (SSIM) the slice would have
against its motion-free original, without that original. A volume is scored slice by slice over the
slices that hold anatomy, in the acquisition plane; the volume summaries are the mean, the 5th
percentile and the minimum of the per-slice predictions, and the slice with the lowest one.

Architecture (paper Sec. II): ResNet-18, i.e. a 7x7/2 stem convolution, 3x3/2 max-pooling, four
stages of two BasicBlocks (two 3x3 conv-BatchNorm pairs with an identity or 1x1/2 projection
shortcut), global average pooling and one linear output squashed to [0, 1] by a sigmoid. One input
channel. Our sizes: base width 16 (stages 16-32-64-128 instead of 64-128-256-512) and a 128x128
input instead of the paper's 256x256, so that a 1 mm volume (~240 slices) scores in about 0.25 s on
two idle CPU cores and the weights are 2.8 MB. ``docs/models/ssim.md`` records what this costs.

Classes (paper Sec. II):

- clinical scheme (the paper's subjective-rating classes): SSIM >= 0.85 ``"good"`` (good to high
  quality), 0.60 <= SSIM < 0.85 ``"review"`` (sufficient; structures may be hard to delineate),
  SSIM < 0.60 ``"rescan"`` (insufficient quality);
- equal bins: [0, 1] divided into ``n`` equal-width ranges (n = 3, 5, 10), numbered 1..n as in the
  paper's Table III (class 1 = [0, 1/n), ..., class n = [(n-1)/n, 1]). A value on an inner edge goes to
  the upper class; 1.0 belongs to class n; values outside [0, 1] are clipped first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bids_qa.models.config import ModelConfig
from bids_qa.models.weights import NetworkScorer
from bids_qa.scoring import ScanScores, scored_slices
from bids_qa.volume import Volume

NAME = "ssim"
WEIGHTS_FILE = "ssim.safetensors"
#: Clinical-scheme edges (paper Sec. II): >= GOOD_EDGE good, >= RESCAN_EDGE review, else rescan.
GOOD_EDGE = 0.85
RESCAN_EDGE = 0.60
CLINICAL_CLASSES = ("good", "review", "rescan")
#: Numbers of equal-width SSIM bins reported (paper Table III).
BIN_COUNTS = (3, 5, 10)


@dataclass(frozen=True)
class SSIMConfig(ModelConfig):
    """Architecture hyper-parameters, stored in the weights' metadata.

    Attributes
    ----------
    input_size
        Side of the square slice the network reads (slices are padded to a square field of view and
        resized, :meth:`bids_qa.volume.Volume.slice_stack`).
    width
        Channels of the first stage; stages have ``width * (1, 2, 4, 8)`` channels (64 in ResNet-18).
    blocks
        BasicBlocks per stage (ResNet-18: 2-2-2-2).
    """

    input_size: int = 128
    width: int = 16
    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)

    def __post_init__(self) -> None:
        if self.input_size < 32:
            raise ValueError(f"input_size {self.input_size} is too small for a ResNet (need >= 32)")
        if self.width < 1 or len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"invalid ResNet shape: width {self.width}, blocks {self.blocks}")

def build_resnet(config: SSIMConfig):
    """ResNet-18-style regressor: ``torch.nn.Module`` mapping (B, 1, S, S) -> (B,) in [0, 1]."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        """Two 3x3 conv-BN layers plus a shortcut (1x1 projection when the shape changes)."""

        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + self.shortcut(x))

    class SSIMResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = config.width
            self.stem = nn.Sequential(
                nn.Conv2d(1, w, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
            stages: list[nn.Module] = []
            cin = w
            for i, n in enumerate(config.blocks):
                cout = w * 2**i
                layers = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
                layers += [BasicBlock(cout, cout, 1) for _ in range(n - 1)]
                stages.append(nn.Sequential(*layers))
                cin = cout
            self.stages = nn.Sequential(*stages)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, 1)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            # Zero-init the last BN of each block (blocks start as identities: faster, stabler start)
            # and start the output near SSIM 0.8, the middle of the label distribution.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
            nn.init.zeros_(self.fc.weight)
            nn.init.constant_(self.fc.bias, math.log(0.8 / 0.2))

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))[:, 0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.logits(x))

    return SSIMResNet()


def class_bins(value: float, n: int) -> int:
    """Equal-width SSIM class, numbered 1..``n`` as in the paper (class k = [(k-1)/n, k/n)).

    Notes
    -----
    ``k = floor(n * clip(value, 0, 1)) + 1``, capped at ``n`` so that SSIM 1 falls in the top class.
    A tiny tolerance (1e-9) keeps values such as 0.3 or 0.7, whose binary representation sits a hair
    below the edge, in the class the printed number belongs to.
    """
    if n < 1:
        raise ValueError(f"number of classes must be >= 1, got {n}")
    v = min(max(float(value), 0.0), 1.0)
    return int(min(n, math.floor(v * n + 1e-9) + 1))


def class_clinical(value: float) -> str:
    """Clinical scheme (paper Sec. II): ``good`` >= 0.85 > ``review`` >= 0.60 > ``rescan``."""
    v = float(value)
    if v >= GOOD_EDGE:
        return "good"
    if v >= RESCAN_EDGE:
        return "review"
    return "rescan"


def summarise(per_slice: np.ndarray, slice_index: np.ndarray) -> dict[str, float | int | str]:
    """Volume-level values from per-slice predicted SSIM.

    Returns ``ssim_mean``, ``ssim_p05`` (5th percentile, linear interpolation), ``ssim_min``,
    ``worst_slice`` (slice number of the minimum), ``n_slices_scored`` and the classes of
    ``ssim_mean``: ``class_clinical`` and ``class_bins3``/``class_bins5``/``class_bins10``.
    """
    if len(per_slice) == 0:
        raise ValueError("no slice to summarise")
    mean = float(np.mean(per_slice))
    values: dict[str, float | int | str] = {
        "ssim_mean": mean,
        "ssim_p05": float(np.percentile(per_slice, 5)),
        "ssim_min": float(np.min(per_slice)),
        "worst_slice": int(slice_index[int(np.argmin(per_slice))]),
        "n_slices_scored": int(len(per_slice)),
        "class_clinical": class_clinical(mean),
    }
    for n in BIN_COUNTS:
        values[f"class_bins{n}"] = class_bins(mean, n)
    return values


class SSIMScorer(NetworkScorer):
    """Predicts per-slice SSIM with the shipped weights (or weights passed explicitly)."""

    name = NAME
    weights_file = WEIGHTS_FILE
    config_class = SSIMConfig
    network_builder = staticmethod(build_resnet)
    channels_last_on_cpu = True

    def predict_slices(self, slices) -> np.ndarray:
        """Predicted SSIM for an array (n, S, S) of slices already at the model's input size (or a
        list of such arrays, predicted as their concatenation)."""
        parts = [slices] if isinstance(slices, np.ndarray) else list(slices)
        for part in parts:
            if part.ndim != 3 or part.shape[1:] != (self.config.input_size,) * 2:
                raise ValueError(
                    f"expected slices of shape (n, {self.config.input_size}, {self.config.input_size}), "
                    f"got {part.shape}"
                )
        out = self.forward(parts)
        return out.reshape(len(out))

    def prepare(self, volume: Volume) -> None:
        """Cache the anatomy slices at the input size on ``volume`` (loader threads)."""
        scored_slices(volume, self.config.input_size)

    def score_many(
        self, volumes: Sequence[Volume], suffixes: Sequence[str | None] | None = None
    ) -> list[ScanScores]:
        """Score several volumes with one batched pass over all their anatomy slices."""
        parts = [scored_slices(v, self.config.input_size) for v in volumes]
        outputs = self.predict_slices([slices for slices, _ in parts])
        results, pos = [], 0
        for volume, (slices, anatomy) in zip(volumes, parts, strict=True):
            per_slice = outputs[pos : pos + len(slices)].copy()
            pos += len(slices)
            results.append(
                ScanScores(
                    scorer=NAME,
                    values=summarise(per_slice, anatomy),
                    per_slice={"slice_index": anatomy.astype(np.int32), "ssim": per_slice},
                    slice_axis=volume.slice_axis,
                )
            )
        return results
