"""Classical no-reference image quality metrics (IQMs) and the header facts of a scan.

The metric definitions follow MRIQC's published ones (Esteban et al. 2017,
doi:10.1371/journal.pone.0184661); every function below is pure (arrays and masks in, floats out)
and says in its docstring which direction is better and where the formula comes from.

========== ======================================= ================ ===============================
key        metric                                  better           reference
========== ======================================= ================ ===============================
efc        entropy focus criterion                 lower            Atkinson 1997
fber       foreground-background energy ratio      higher           Shehzad 2015 (QAP)
snr_*      foreground SNR per tissue class         higher           Magnotta & Friedman 2006
snrd_*     Dietrich (air-based) SNR per class      higher           Dietrich 2007
cjv        coefficient of joint variation (GM/WM)  lower            Ganzetti 2016
cnr        contrast-to-noise ratio (GM/WM)         higher           Magnotta & Friedman 2006
wm2max     WM median over the 99.95th percentile   ~0.6-0.8         MRIQC
qi1        fraction of artifactual air voxels      lower            Mortamet 2009
summary_*  mean/median/std/p05/p95/MAD/kurtosis/n  (descriptive)    MRIQC
========== ======================================= ================ ===============================

How the scorer gets its regions (no registration, no bias correction, no brain extraction; see
``docs/iqms.md``):

1. **Analysis grid.** Volumes larger than :data:`MAX_ANALYSIS_VOXELS` are read on a regular
   stride (every 2nd voxel of a 1 mm 256x256x176 volume). Striding, unlike averaging, keeps each
   voxel's noise untouched, so noise-based metrics are unbiased; it is what keeps the scorer fast.
2. **Frame.** Exact zeros connected to the image border (padding added by reslicing, defacing
   masks) are no measurement and are left out of every region.
3. **Head.** FSL BET's robust-range threshold (2nd percentile + 10% of the 2nd-98th percentile
   range), a one-voxel opening, the largest connected component, then holes filled slice by slice (ventricles, sinuses, mouth).
4. **Air.** Everything outside the head dilated by :data:`AIR_MARGIN_MM`, minus the frame.
5. **Tissue classes.** The head is eroded by :data:`TISSUE_EROSION_MM` (drops scalp, skull and
   the partial-volume rim), voxels darker than the head threshold are dropped, and the intensities are split into three classes by exact 1D k-means.
   Classes are named by the contrast's intensity order (:data:`TISSUE_ORDER`): in T1w the brightest
   class is WM-like, in T2w/PDw/T2starw the darkest, in FLAIR the middle one.
"""


from __future__ import annotations

import math
from typing import Any

import numpy as np

from bids_qa.errors import ScanError
from bids_qa.inu import inu_values
from bids_qa.iqm_formulas import (
    SUMMARY_FIELDS,
    _cjv_from,
    _cnr_from,
    _p9995,
    _qi1_from,
    _ratio,
    _snr_from,
    _snrd_from,
    _summary,
    _summary_energy,
    efc,
)
from bids_qa.iqm_regions import (
    MIN_REGION_VOXELS,
    SUMMARY_REGIONS,
    TISSUES,
    Regions,
    TissueClasses,
    analysis_stride,
    head_air_masks,
    tissue_classes,
    tissue_region,
)
from bids_qa.scoring import ScanScores, Scorer
from bids_qa.volume import ANISOTROPY_2D_RATIO, Volume

_PLANE_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


def _put(values: dict[str, Any], key: str, value: float, reason: str) -> None:
    """Store a metric; a non-finite one becomes NaN with ``<key>_note`` saying why."""
    if value is None or not math.isfinite(value):
        values[key] = math.nan
        values[f"{key}_note"] = reason or "not computable (zero or undefined denominator)"
    else:
        values[key] = float(value)


class HeaderScorer(Scorer):
    """Resolution facts from the header, so a thick-slice scan is reported for what it is.

    Values (mm unless stated): ``vox_x``, ``vox_y``, ``vox_z`` (canonical RAS axes),
    ``slice_thickness`` (largest voxel size; NIfTI stores spacing, so slice gaps are included),
    ``inplane_resolution`` (larger of the two voxel sizes across the slice axis),
    ``anisotropy`` (largest / smallest voxel size), ``n_slices`` (along the slice axis),
    ``fov_x``, ``fov_y``, ``fov_z``, ``voxel_volume`` (mm^3), ``acquisition`` (``"2D"`` when
    anisotropy > 1.5, else ``"3D"``), ``acquisition_plane`` (``axial``/``coronal``/
    ``sagittal`` for 2D, ``n/a`` for 3D) and ``voxel_size`` (text, e.g. ``"0.72x0.72x4.00"``).
    """

    name = "header"
    version = "1.0"
    #: CPU-only and stateless: the pipeline runs it in the loader threads (bids_qa.scoring).
    in_loader = True

    def __init__(self, **kwargs: Any) -> None:
        pass

    def score(self, volume: Volume, suffix: str | None = None) -> ScanScores:
        zooms = tuple(float(z) for z in volume.zooms)
        shape = volume.shape
        axis = int(volume.slice_axis)
        inplane = [z for a, z in enumerate(zooms) if a != axis]
        anisotropy = max(zooms) / min(zooms)
        two_d = anisotropy > ANISOTROPY_2D_RATIO
        values: dict[str, float | int | str] = {
            "vox_x": zooms[0],
            "vox_y": zooms[1],
            "vox_z": zooms[2],
            "slice_thickness": max(zooms),
            "inplane_resolution": max(inplane),
            "anisotropy": float(anisotropy),
            "n_slices": int(shape[axis]),
            "fov_x": shape[0] * zooms[0],
            "fov_y": shape[1] * zooms[1],
            "fov_z": shape[2] * zooms[2],
            "voxel_volume": float(np.prod(zooms)),
            "acquisition": "2D" if two_d else "3D",
            "acquisition_plane": _PLANE_NAMES[axis] if two_d else "n/a",
            "voxel_size": "x".join(f"{z:.2f}" for z in zooms),
        }
        return ScanScores(scorer=self.name, values=values)


class IQMScorer(Scorer):
    """Classical IQMs on the raw intensities (see the module docstring and ``docs/iqms.md``).

    Parameters
    ----------
    suffix
        Default BIDS suffix naming the tissue classes when :meth:`score` is not given one.
    **kwargs
        Ignored (``device``, ``batch_size`` from :func:`bids_qa.scoring.build_scorers`).

    Notes
    -----
    The volume does not carry its contrast, and CJV/CNR/WM2MAX are defined on white and grey
    matter, whose intensity order depends on the contrast. Guessing the contrast from the
    histogram would make a T1w with a strong artifact look like a T2w; the suffix is known for
    every BIDS scan. So the caller says it: ``score(volume, suffix=scan.suffix)`` (or the
    constructor default). Without it the T1w order is used and ``tissue_order`` says "assumed".
    The keys are the same for every contrast, so group tables and thresholds line up.
    """

    name = "iqm"
    version = "1.0"
    #: CPU-only numpy/scipy, no shared state: the pipeline runs it in the loader threads.
    in_loader = True
    #: Some IQMs depend on the contrast (which tissue is bright): the pipeline passes the suffix.
    needs_suffix = True

    def __init__(self, suffix: str | None = None, **kwargs: Any) -> None:
        self.suffix = suffix

    def score(self, volume: Volume, suffix: str | None = None) -> ScanScores:
        raw = np.asarray(volume.raw)
        if raw.ndim != 3:
            raise ScanError("score", f"IQMs need a 3D image; got shape {raw.shape}")
        suffix = suffix if suffix is not None else self.suffix
        stride = analysis_stride(raw.shape, volume.zooms)
        img = np.ascontiguousarray(raw[:: stride[0], :: stride[1], :: stride[2]], dtype=np.float32)
        if not np.isfinite(img).all():
            raise ScanError(
                "score", "image holds NaN/Inf voxels; the loader should have zeroed them"
            )
        zooms = tuple(z * s for z, s in zip(volume.zooms, stride, strict=True))
        regions = head_air_masks(img, zooms, fill_axis=int(volume.slice_axis))
        n_head = int(regions.head.sum())
        if n_head < MIN_REGION_VOXELS:
            raise ScanError(
                "score",
                f"no head found: threshold {regions.threshold:g} left {n_head} voxels; "
                "the image looks empty or is pure noise",
            )
        region = tissue_region(img, regions, zooms)
        tissues = tissue_classes(img, region, suffix)
        values = self._values(img, regions, tissues, stride)
        values.update(inu_values(img, regions.head, region, zooms))
        return ScanScores(scorer=self.name, values=values)

    @staticmethod
    def _values(
        img: np.ndarray, regions: Regions, tissues: TissueClasses, stride: tuple[int, ...]
    ) -> dict[str, float | int | str]:
        values: dict[str, Any] = {}
        n_air = int(np.count_nonzero(regions.air))
        air_ok = n_air >= MIN_REGION_VOXELS
        if air_ok:
            air_reason = ""
        elif np.count_nonzero(regions.frame) > 0.05 * regions.frame.size:
            air_reason = (
                "no air region: the background is zero-filled "
                "(masked, defaced or skull-stripped image)"
            )
        else:
            air_reason = "no air region: the head fills the field of view"

        stats = {t: _summary(img[tissues.masks[t]]) for t in TISSUES}
        stats["air"] = _summary(img[regions.air] if air_ok else np.empty(0, np.float32))
        air = stats["air"]
        if air_ok and air["std"] == 0:
            air_reason = "air has zero spread (a constant, zero-filled background)"
            air_ok = False

        def small(*names: str) -> str:
            few = [t for t in names if stats[t]["n"] < MIN_REGION_VOXELS]
            if few:
                return f"tissue class {'/'.join(few)} has fewer than {MIN_REGION_VOXELS} voxels"
            return ""

        _put(values, "efc", efc(img, ~regions.frame), "image energy is zero")
        if air_ok:
            head_energy = _summary_energy(img[regions.head])
            fber_value = _ratio(head_energy, float(air["energy"]))
        else:
            fber_value = math.nan
        _put(
            values,
            "fber",
            fber_value,
            air_reason or "median air energy is 0 (mostly zero-valued background)",
        )

        for prefix in ("snr", "snrd"):
            for t in TISSUES:
                st = stats[t]
                if small(t):
                    value, reason = math.nan, small(t)
                elif prefix == "snr":
                    value, reason = _snr_from(st["mean"], st["std"], st["n"]), "class has no spread"
                else:
                    value = _snrd_from(st["mean"], air["std"]) if air_ok else math.nan
                    reason = air_reason
                _put(values, f"{prefix}_{t}", value, reason)
            parts = [values[f"{prefix}_{t}"] for t in TISSUES]
            notes = [
                values[f"{prefix}_{t}_note"] for t in TISSUES if f"{prefix}_{t}_note" in values
            ]
            _put(
                values,
                f"{prefix}_total",
                float(np.mean(parts)),
                notes[0] if notes else f"{prefix} of a tissue class is not available",
            )

        wm, gm = stats["wm"], stats["gm"]
        pair = small("wm", "gm")
        _put(
            values,
            "cjv",
            math.nan if pair else _cjv_from(wm["mean"], wm["std"], gm["mean"], gm["std"]),
            pair or "WM and GM classes have equal means",
        )
        cnr_value = math.nan
        if not pair and air_ok:
            cnr_value = _cnr_from(wm["mean"], wm["std"], gm["mean"], gm["std"], air["std"])
        _put(values, "cnr", cnr_value, pair or air_reason or "no spread in WM, GM or air")
        _put(
            values,
            "wm2max",
            math.nan if small("wm") else _ratio(wm["median"], _p9995(img)),
            small("wm") or "99.95th percentile of the image is 0",
        )
        qi1_value = math.nan
        if air_ok:
            qi1_value = _qi1_from(img, regions.air, air["median"], air["mad"], air["std"])
        _put(values, "qi1", qi1_value, air_reason)

        for region in SUMMARY_REGIONS:
            st = stats[region]
            reason = (air_reason if region == "air" else small(region)) or "region has no spread"
            for f in SUMMARY_FIELDS:
                key = f"summary_{region}_{f}"
                if f == "n":
                    values[key] = int(st["n"])
                else:
                    _put(values, key, st[f], reason)

        values["contrast"] = tissues.contrast
        values["tissue_order"] = tissues.order_text
        values["analysis_stride"] = "x".join(str(k) for k in stride)
        return values
