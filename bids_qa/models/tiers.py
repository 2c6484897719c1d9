"""Quality tiers from three artifact grades (Loizillon et al.: Loizillon, Bottani, Mabilie, Jacob et al.,
"Automated MRI quality assessment of brain T1-weighted MRI in clinical data warehouses: a transfer
learning approach relying on artefact simulation").

The paper grades motion, noise and poor contrast on a three-level scale (0 none, 1 moderate,
2 severe) with artifact-specific 3D CNNs (Conv5FC3: five blocks of conv -> batch norm -> ReLU ->
max-pool, then three fully connected layers), each trained on two binary tasks: moderate (0 vs 1)
and severe (0-1 vs 2). The overall quality tier is then read from the three grades (Table 2):

======  ==========================================================
tier    rule
======  ==========================================================
1       grade 0 for motion, noise and contrast
2       at least one grade 1, none with grade 2
3       at least one grade 2
======  ==========================================================

Our network (shape kept, sizes ours; see ``docs/models/tiers.md``):

- one shared Conv5FC3 trunk instead of three separate networks (multi-task, as in the image-ruler paper),
  with one small two-layer head per artifact giving two logits (moderate, severe): six binary
  outputs. The trunk's features (noise texture, ghosting, tissue contrast) are generic and the
  data are small, so sharing triples the examples each conv filter sees at a third of the cost;
- input: a ``grid``^3 cube (64^3) exactly as the artifacts are simulated on during training:
  with ``voxel_mm > 0`` (the shipped weights: 2.5 mm) a cube of that voxel size around the head
  (:meth:`Volume.cube`), otherwise the whole volume padded to a cube in mm and resized
  (:meth:`Volume.cube` with ``voxel_mm`` 0, ~3.6-4 mm voxels for a 230-260 mm field of view; the fixed voxel size keeps
  finer detail at the same cost). The first convolution has stride 2 (so the first
  block's output is 32^3) which keeps a volume near 0.1 GMAC on CPU while the filters still see
  every input voxel, where noise and ringing live. Loizillon et al. works at ~1 mm; a coarse grid is
  our price for grading a volume in well under a second on two CPU cores;
- grading (ours, from the paper's two tasks): grade 2 if ``p_severe >= 0.5``, else 1 if
  ``p_moderate >= 0.5``, else 0. Our moderate head is trained as "grade >= 1" (0 vs 1-2) so that a
  missed severe detection still falls back to grade 1; on 0-vs-1 data it is the paper's task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bids_qa.models.config import ModelConfig
from bids_qa.models.weights import NetworkScorer
from bids_qa.scoring import ScanScores
from bids_qa.volume import Volume

NAME = "tiers"
WEIGHTS_FILE = "tiers.safetensors"
#: Artifacts graded, in output order (Loizillon et al. Sec. 3.1).
ARTIFACTS: tuple[str, ...] = ("motion", "noise", "contrast")
#: The two binary tasks per artifact, in logit order.
TASKS: tuple[str, ...] = ("moderate", "severe")
#: Probability above which a task's head is taken as positive.
DECISION_THRESHOLD = 0.5
#: Human-readable grade names (the reasons say "noise: severe").
GRADE_NAMES: dict[int, str] = {0: "none", 1: "moderate", 2: "severe"}
@dataclass(frozen=True)
class TierRule:
    """One row of the paper's Table 2: the tier given by the worst grade over the artifacts."""

    tier: int
    worst_grade: int
    quality: str
    verdict: str
    rule: str


#: Loizillon et al., Table 2, as data. The tier is decided by the worst (largest) grade of the three
#: artifacts; the verdict is what bids_qa reports for that tier.
TIER_RULES: tuple[TierRule, ...] = (
    TierRule(1, 0, "good", "pass", "grade 0 for motion, noise and contrast"),
    TierRule(2, 1, "medium", "review", "at least one artifact with grade 1; none with grade 2"),
    TierRule(3, 2, "bad", "fail", "at least one artifact with grade 2"),
)


def tier_from_grades(grades: dict[str, int]) -> tuple[int, list[str]]:
    """Quality tier (1, 2 or 3) and the reasons behind it, from per-artifact grades.

    Parameters
    ----------
    grades
        Grade 0, 1 or 2 per artifact (e.g. ``{"motion": 0, "noise": 2, "contrast": 1}``). Any
        artifact names are accepted; the paper uses motion, noise and contrast.

    Returns
    -------
    tier, reasons
        ``tier`` from :data:`TIER_RULES` (worst grade 0 -> 1, 1 -> 2, 2 -> 3); ``reasons`` lists
        every artifact with a grade above 0 as ``"<artifact>: <moderate|severe>"``, worst first
        (ties keep the input order). Empty for tier 1.

    Raises
    ------
    ValueError
        If ``grades`` is empty or a grade is not 0, 1 or 2.
    """
    if not grades:
        raise ValueError("tier_from_grades needs at least one artifact grade, got none")
    for artifact, grade in grades.items():
        if grade not in (0, 1, 2) or isinstance(grade, bool):
            raise ValueError(f"grade of {artifact!r} must be 0, 1 or 2, got {grade!r}")
    worst = max(int(g) for g in grades.values())
    rule = next(r for r in TIER_RULES if r.worst_grade == worst)
    ordered = sorted(grades.items(), key=lambda kv: -int(kv[1]))  # stable: ties keep input order
    reasons = [f"{a}: {GRADE_NAMES[int(g)]}" for a, g in ordered if int(g) > 0]
    return rule.tier, reasons


def verdict_of_tier(tier: int) -> str:
    """``pass`` / ``review`` / ``fail`` for tier 1 / 2 / 3."""
    for rule in TIER_RULES:
        if rule.tier == tier:
            return rule.verdict
    raise ValueError(f"tier must be 1, 2 or 3, got {tier!r}")


def grade_from_probabilities(
    p_moderate: float, p_severe: float, threshold: float = DECISION_THRESHOLD
) -> int:
    """Grade 2 if ``p_severe >= threshold``, else 1 if ``p_moderate >= threshold``, else 0."""
    if p_severe >= threshold:
        return 2
    if p_moderate >= threshold:
        return 1
    return 0


@dataclass(frozen=True)
class TierConfig(ModelConfig):
    """Architecture hyper-parameters, stored in the weights' metadata."""

    grid: int = 64
    channels: tuple[int, ...] = (16, 32, 48, 64, 96)
    fc: tuple[int, int] = (128, 32)
    first_stride: int = 2
    dropout: float = 0.2
    #: 0: the whole field of view squeezed into the ``grid``^3 cube (:meth:`Volume.cube` with ``voxel_mm`` 0, about
    #: 3.8 mm voxels at 64^3). > 0: a cube of this voxel size hung around the head
    #: (:meth:`Volume.cube`), which keeps noise texture and ringing visible at the same cost.
    voxel_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.voxel_mm < 0:
            raise ValueError(f"voxel_mm must be >= 0, got {self.voxel_mm}")

    def input_cube(self, volume: Volume) -> np.ndarray:
        """The network's input for ``volume`` (cached on the volume)."""
        return volume.cube(self.grid, self.voxel_mm)


    def trunk_output_size(self) -> int:
        """Spatial size after the five blocks (each block halves, ceil; block 1 also strides)."""
        size = self.grid
        for i in range(len(self.channels)):
            if i == 0 and self.first_stride > 1:
                size = (size - 1) // self.first_stride + 1
            size = -(-size // 2)
        return size


def build_network(config: TierConfig):
    """Shared Conv5FC3 trunk + one head per artifact; ``(B, 1, G, G, G) -> (B, 3, 2)`` logits.

    Logit ``[:, a, 0]`` is artifact ``ARTIFACTS[a]``'s moderate task (grade >= 1), ``[:, a, 1]``
    its severe task (grade 2).
    """
    from torch import nn

    class Conv5FC3(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks: list[nn.Module] = []
            cin = 1
            for i, cout in enumerate(config.channels):
                stride = config.first_stride if i == 0 else 1
                blocks += [
                    nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm3d(cout),
                    nn.ReLU(inplace=True),
                    nn.MaxPool3d(2, ceil_mode=True),
                ]
                cin = cout
            self.trunk = nn.Sequential(*blocks)
            flat = cin * config.trunk_output_size() ** 3
            h1, h2 = config.fc
            # FC 1 is shared; FC 2 and FC 3 belong to each artifact (three FC layers per path).
            self.shared = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(flat, h1))
            self.heads = nn.ModuleList(
                nn.Sequential(
                    nn.Dropout(config.dropout),
                    nn.Linear(h1, h2),
                    nn.ReLU(inplace=True),
                    nn.Linear(h2, len(TASKS)),
                )
                for _ in ARTIFACTS
            )

        def forward(self, x):
            import torch

            z = self.shared(self.trunk(x))
            z = torch.relu(z)
            return torch.stack([head(z) for head in self.heads], dim=1)

    net = Conv5FC3()
    net.config = config
    return net


def scores_from_probabilities(probs: np.ndarray) -> dict[str, float | int | str]:
    """Scorer values from one volume's probabilities ``(3, 2)`` = (artifact, [moderate, severe])."""
    values: dict[str, float | int | str] = {}
    grades: dict[str, int] = {}
    for a, artifact in enumerate(ARTIFACTS):
        p_mod, p_sev = float(probs[a, 0]), float(probs[a, 1])
        grades[artifact] = grade_from_probabilities(p_mod, p_sev)
        values[f"{artifact}_grade"] = grades[artifact]
        values[f"{artifact}_p_moderate"] = p_mod
        values[f"{artifact}_p_severe"] = p_sev
    tier, reasons = tier_from_grades(grades)
    values["tier"] = tier
    values["tier_reason"] = "; ".join(reasons) if reasons else "no artifact graded above 0"
    return values


class TierScorer(NetworkScorer):
    """Grades motion, noise and contrast and derives the paper's quality tier for a volume."""

    name = NAME
    weights_file = WEIGHTS_FILE
    config_class = TierConfig
    network_builder = staticmethod(build_network)

    def probabilities(self, grids) -> np.ndarray:
        """Sigmoid outputs ``(n, 3, 2)`` for a stack of model-grid cubes ``(n, G, G, G)`` (or a
        list of such stacks, taken as their concatenation)."""
        import torch

        probs = self.forward(grids, post=torch.sigmoid)
        return probs.reshape(len(probs), len(ARTIFACTS), len(TASKS))

    def prepare(self, volume: Volume) -> None:
        """Cache the model's input cube on ``volume`` (loader threads)."""
        self.config.input_cube(volume)

    @property
    def needs_suffix(self) -> bool:
        """The grades do not depend on the scan's BIDS suffix."""
        return False

    def score_many(
        self, volumes: Sequence[Volume], suffixes: Sequence[str | None] | None = None
    ) -> list[ScanScores]:
        """Grade several volumes with one batched pass over their grids (``suffixes`` unused)."""
        grids = [self.config.input_cube(v)[None] for v in volumes]
        probs = self.probabilities(grids)
        return [ScanScores(scorer=NAME, values=scores_from_probabilities(p)) for p in probs]
