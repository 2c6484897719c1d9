"""Image rulers (paper 004: Zhang et al.): one slice at graded artifact levels, scored by the model.

A ruler makes a model's number visual: "this scan scores like version 5 of the ruler". Paper 004
uses a reference scan of the same body part and contrast; we build the ruler from the scan's own
central slice (in the plane the model reads), which is by construction the same contrast, scanner
and anatomy, needs no shipped reference images and costs eight extra slices through the model.

The ruler score is ``RS = argmin_v |D(x_r[v]) - D(x_test)|`` (paper 004, Eq. 5); the threshold's
position on the ruler is where the ruler's model outputs cross the threshold, so a user can see which
version is the last acceptable one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_qa.volume import Volume

#: Number of ruler versions (paper 004 uses m_r = 8).
RULER_LEVELS = 8


@dataclass
class Ruler:
    """A graded ruler for one model: the images, their severities and the model's outputs."""

    model: str
    metric: str
    artifact: str
    severities: np.ndarray  # (m,)
    scores: np.ndarray  # (m,) model output per version
    images: np.ndarray  # (m, S, S) model inputs, for display
    scan_value: float
    threshold: float | None
    higher_is_worse: bool = True

    @property
    def ruler_score(self) -> int:
        """Index of the ruler version whose output is nearest the scan's (paper 004, Eq. 5)."""
        return int(np.argmin(np.abs(self.scores - self.scan_value)))

    @property
    def threshold_position(self) -> float | None:
        """Fractional ruler index where the outputs cross the threshold (None when they never do)."""
        if self.threshold is None:
            return None
        s = self.scores if self.higher_is_worse else -self.scores
        t = self.threshold if self.higher_is_worse else -self.threshold
        for i in range(1, len(s)):
            if s[i - 1] <= t < s[i]:
                return float(i - 1 + (t - s[i - 1]) / (s[i] - s[i - 1]))
        return None

    def to_json(self, image_paths: list[str] | None = None) -> dict:
        levels = []
        for i, (sev, sc) in enumerate(zip(self.severities, self.scores, strict=False)):
            level = {"index": i, "severity": round(float(sev), 4), "score": float(sc)}
            if image_paths:
                level["image"] = image_paths[i]
            levels.append(level)
        return {
            "metric": self.metric,
            "artifact": self.artifact,
            "levels": levels,
            "threshold": self.threshold,
            "threshold_position": self.threshold_position,
            "scan_value": self.scan_value,
            "ruler_score": self.ruler_score,
            "higher_is_worse": self.higher_is_worse,
        }


def central_slice(volume: Volume) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The anatomy-centred slice in the scorer's reading plane (native resolution), its head mask
    and its voxel sizes."""
    idx = volume.anatomy_slices()
    index = int(idx[len(idx) // 2]) if len(idx) else volume.shape[volume.slice_axis] // 2
    # A view (np.take walks the whole array when it is not C-ordered, e.g. a loaded NIfTI's).
    where = (slice(None),) * volume.slice_axis + (index,)
    img, mask = volume.data[where], volume.mask[where]
    zooms = tuple(z for a, z in enumerate(volume.zooms) if a != volume.slice_axis)
    return np.ascontiguousarray(img), np.ascontiguousarray(mask), zooms  # type: ignore[return-value]


def build_ruler(
    volume: Volume,
    score_slices,
    *,
    model: str,
    metric: str,
    artifact: str,
    scan_value: float,
    threshold: float | None,
    input_size: int,
    pixel_mm: float = 0.0,
    higher_is_worse: bool = True,
    levels: int = RULER_LEVELS,
    seed: int = 0,
) -> Ruler:
    """Corrupt the central slice at ``levels`` evenly spaced severities in [0, 1] and score each.

    ``score_slices`` maps an (m, S, S) array of model inputs to m outputs (the scorer's own batch
    function), so the ruler is scored by exactly the network that scored the scan; ``input_size``
    and ``pixel_mm`` prepare the images as that network reads slices
    (:func:`bids_qa.preprocess.to_model_input`).
    """
    from bids_qa import artifacts
    from bids_qa.preprocess import renormalise, to_model_input

    img, mask, zooms = central_slice(volume)
    severities = np.linspace(0.0, 1.0, levels)
    images = []
    for k, sev in enumerate(severities):
        rng = np.random.default_rng([seed, k])
        params = artifacts.sample_params(artifact, rng, float(sev), ndim=2)
        out = artifacts.apply_artifact(img, artifact, params, zooms)
        images.append(
            to_model_input(renormalise(out, img, mask), zooms, input_size, mask, pixel_mm)
        )
    stack = np.stack(images).astype(np.float32)
    scores = np.asarray(score_slices(stack), dtype=np.float32)
    return Ruler(
        model=model,
        metric=metric,
        artifact=artifact,
        severities=severities,
        scores=scores,
        images=stack,
        scan_value=float(scan_value),
        threshold=threshold,
        higher_is_worse=higher_is_worse,
    )
