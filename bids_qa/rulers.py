"""Image rulers (the image-ruler paper): one slice at graded artifact levels, scored by the model.

A ruler makes a model's number visual: "this scan scores like version 5 of the ruler". The image-ruler
paper uses a reference scan of the same body part and contrast; we build the ruler from the scan's own
central slice (in the plane the model reads), which is by construction the same contrast, scanner
and anatomy and costs eight extra slices through the model.

That fails on a degraded scan: its own "clean" level already carries the artifact, every level
scores above the threshold and the ruler cannot show where acceptable ends. So a second ruler is
built from a reference slice of the same contrast family that the model scores as clean: nilearn's
MNI152 2009a template (shipped inside nilearn, no download), the T1 template itself for T1-like
contrasts, its grey- and white-matter probability maps painted with T2-like or FLAIR-like tissue
intensities otherwise (:func:`painted_reference`). :meth:`Ruler.for_display` keeps the scan's own
ruler when its first level is on the acceptable side of the threshold and switches to the
reference otherwise, saying which one the report shows.

The ruler score is ``RS = argmin_v |D(x_r[v]) - D(x_test)|`` (the image-ruler paper, Eq. 5); the threshold's
position on the ruler is where the ruler's model outputs cross the threshold, so a user can see which
version is the last acceptable one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa.volume import Volume

#: Number of ruler versions (the image-ruler paper uses m_r = 8).
RULER_LEVELS = 8
#: Tissue intensities (CSF, GM, WM, scalp; head 99th percentile about 1) of the painted references.
PAINT = {"T2": (1.0, 0.55, 0.38, 0.5), "FLAIR": (0.12, 0.78, 0.55, 0.5)}
#: Contrast family of a BIDS suffix: which reference a degraded scan's ruler is built from.
FAMILY = {"T1w": "T1", "UNIT1": "T1", "T1map": "T1", "MPRAGE": "T1", "inplaneT1": "T1",
          "T2w": "T2", "PDw": "T2", "PD": "T2", "T2starw": "T2", "T2star": "T2", "inplaneT2": "T2",
          "PDT2": "T2", "FLAIR": "FLAIR", "T2FLAIR": "FLAIR"}
#: What the report says the reference is.
REFERENCE_TEXT = {"T1": "nilearn's MNI152 2009a T1 template",
                  "T2": "nilearn's MNI152 2009a tissue maps painted with T2-like intensities",
                  "FLAIR": "nilearn's MNI152 2009a tissue maps painted with FLAIR-like intensities"}


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
    #: What the ruler was built from (shown in the report).
    source: str = "this scan's central slice"
    #: Reference rulers by contrast family ({family: Ruler}), scored with the scan's.
    references: dict[str, Ruler] = field(default_factory=dict)

    def acceptable_start(self) -> bool:
        """Whether the first (least corrupted) level is on the acceptable side of the threshold."""
        if self.threshold is None or not len(self.scores) or not np.isfinite(self.scores[0]):
            return True
        first = float(self.scores[0])
        return first <= self.threshold if self.higher_is_worse else first >= self.threshold

    def for_display(self, suffix: str | None) -> Ruler:
        """The ruler to show: this one, or, when its first level already crosses the threshold
        (a degraded scan), the reference of ``suffix``'s contrast family when that one starts on
        the acceptable side. The threshold and the scan's value are carried over."""
        if self.acceptable_start():
            return self
        family = FAMILY.get(str(suffix or ""))
        ref = self.references.get(family) if family else None
        if ref is None or not len(ref.scores):
            return self
        chosen = replace(ref, threshold=self.threshold, scan_value=self.scan_value, references={})
        if not chosen.acceptable_start():
            return self
        return chosen

    @property
    def ruler_score(self) -> int:
        """Index of the ruler version whose output is nearest the scan's (the image-ruler paper, Eq. 5)."""
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
            "reference": self.source,
            "starts_acceptable": self.acceptable_start(),
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
    with_references: bool = False,
) -> Ruler:
    """Corrupt the central slice at ``levels`` evenly spaced severities in [0, 1] and score each.

    ``score_slices`` maps an (m, S, S) array of model inputs to m outputs (the scorer's own batch
    function), so the ruler is scored by exactly the network that scored the scan; ``input_size``
    and ``pixel_mm`` prepare the images as that network reads slices
    (:func:`bids_qa.preprocess.to_model_input`). ``with_references`` also builds the
    :func:`reference_rulers` (in :attr:`Ruler.references`) for a degraded scan.
    """
    img, mask, zooms = central_slice(volume)
    kwargs = dict(model=model, metric=metric, artifact=artifact, scan_value=scan_value, threshold=threshold,
                  input_size=input_size, pixel_mm=pixel_mm, higher_is_worse=higher_is_worse, levels=levels, seed=seed)
    ruler = _ruler_from_slice(img, mask, zooms, score_slices, **kwargs)
    if with_references:
        ruler.references = reference_rulers(volume.slice_axis, score_slices, **kwargs)
    return ruler


def _ruler_from_slice(img, mask, zooms, score_slices, *, model: str, metric: str, artifact: str,
                      scan_value: float, threshold: float | None, input_size: int, pixel_mm: float,
                      higher_is_worse: bool, levels: int, seed: int) -> Ruler:
    from bids_qa import artifacts
    from bids_qa.preprocess import renormalise, to_model_input

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


@lru_cache(maxsize=1)
def _mni_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's MNI152 2009a T1 template and GM/WM probability maps (1 mm, the files shipped in
    nilearn's package data), each scaled to [0, 1]. Read with nibabel from nilearn's folder:
    importing ``nilearn.datasets`` costs seconds of start-up for three small files."""
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nilearn is not installed: no MNI template for the reference ruler")
    folder = Path(spec.origin).parent / "datasets" / "data"

    def load(tissue: str) -> np.ndarray:
        img = nib.load(folder / f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz")
        data = np.asarray(nib.as_closest_canonical(img).get_fdata(), dtype=np.float32)
        top = float(data.max())
        return data / top if top > 0 else data

    return load("t1"), load("gm"), load("wm")


def painted_reference(family: str, axis: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A clean reference slice of a contrast family: the central MNI slice across ``axis``.

    ``T1``: the T1 template itself. ``T2`` / ``FLAIR``: the GM and WM probability maps painted
    with :data:`PAINT` intensities, the rest of the intracranial space as CSF and the rest of the
    head as scalp. Returns the slice (head 99th percentile 1), its head mask and its pixel sizes.
    """
    from scipy import ndimage

    t1, gm, wm = _mni_maps()
    index = t1.shape[axis] // 2
    # Basic indexing: a view (np.take walks and copies the whole Fortran-ordered volume).
    pick = (slice(None),) * axis + (index,)
    t1s, gms, wms = (v[pick] for v in (t1, gm, wm))
    head = t1s > 0.08
    if family == "T1":
        img = t1s.copy()
    else:
        csf_i, gm_i, wm_i, scalp_i = PAINT[family]
        brain = ndimage.binary_fill_holes(ndimage.binary_closing(gms + wms > 0.2, iterations=4))
        csf = np.clip(1.0 - gms - wms, 0.0, 1.0) * brain
        img = gms * gm_i + wms * wm_i + csf * csf_i
        img = np.where(head & ~brain, scalp_i * t1s / max(float(t1s[head].mean()), 1e-6), img)
        img = ndimage.gaussian_filter(img, 0.7).astype(np.float32)
    img = np.where(head, img, 0.0).astype(np.float32)
    p99 = float(np.percentile(img[head], 99)) if head.any() else 1.0
    return np.ascontiguousarray(img / max(p99, 1e-6)), np.ascontiguousarray(head), (1.0, 1.0)


def reference_rulers(axis: int, score_slices, **kwargs) -> dict[str, Ruler]:
    """One ruler per contrast family from :func:`painted_reference` (see :func:`build_ruler`),
    scored by ``score_slices``. The images depend on the slice axis and the model's input only, so
    they are made once per process (:func:`_reference_templates`), not once per scan."""
    scan_value, threshold = kwargs.pop("scan_value"), kwargs.pop("threshold")
    out = {}
    for family, ruler in _reference_templates(axis, tuple(sorted(kwargs.items()))).items():
        scores = np.asarray(score_slices(ruler.images), dtype=np.float32)
        out[family] = replace(ruler, scores=scores, scan_value=float(scan_value), threshold=threshold)
    return out


@lru_cache(maxsize=8)
def _reference_templates(axis: int, options: tuple[tuple[str, Any], ...]) -> dict[str, Ruler]:
    """The unscored reference rulers of every contrast family for one slice axis and model input."""
    def unscored(images: np.ndarray) -> np.ndarray:
        return np.full(len(images), np.nan, np.float32)

    out = {}
    for family in ("T1", "T2", "FLAIR"):
        img, mask, zooms = painted_reference(family, axis)
        ruler = _ruler_from_slice(img, mask, zooms, unscored, scan_value=math.nan, threshold=None,
                                  **dict(options))
        ruler.source = f"a reference slice: {REFERENCE_TEXT[family]} (this scan's own slice is already degraded)"
        out[family] = ruler
    return out
