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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from bids_qa.errors import ScanError
from bids_qa.inu import inu_values
from bids_qa.scoring import ScanScores
from bids_qa.volume import ANISOTROPY_2D_RATIO, Volume

#: Volumes with more voxels are analysed on a regular stride (see :func:`analysis_stride`).
MAX_ANALYSIS_VOXELS = 2_000_000
#: Head threshold as a fraction of the 2nd-98th percentile range (see :func:`head_threshold`).
HEAD_THRESHOLD_FRACTION = 0.1
#: Gap (mm) between the head and the air region, so the blurred head edge is not counted as air.
AIR_MARGIN_MM = 5.0
#: Erosion (mm) of the head before tissue clustering: removes scalp, skull and the air rim.
TISSUE_EROSION_MM = 10.0
#: Fewest voxels (on the analysis grid) an air region or tissue class needs to be measured.
MIN_REGION_VOXELS = 100
#: QI1 threshold, in robust standard deviations (scaled MAD) above the air median.
QI1_THRESHOLD_SD = 2.0
#: Rayleigh correction of Dietrich et al. (2007): sigma = std(air) * sqrt(2 / (4 - pi)).
RAYLEIGH_STD_TO_SIGMA = math.sqrt(2.0 / (4.0 - math.pi))
#: Scale that makes the median absolute deviation a consistent estimator of a Gaussian's sigma.
MAD_TO_SD = 1.482602218505602

#: Tissue names of the three intensity classes, darkest first, per BIDS suffix. In T1w
#: CSF < GM < WM; in T2w, PDw and T2starw WM < GM < CSF; in FLAIR the CSF is nulled, so
#: CSF < WM < GM. Unknown suffixes use the T1w order and say so in ``tissue_order``.
TISSUE_ORDER: dict[str, tuple[str, str, str]] = {
    "T1w": ("csf", "gm", "wm"),
    "UNIT1": ("csf", "gm", "wm"),
    "T2w": ("wm", "gm", "csf"),
    "PDw": ("wm", "gm", "csf"),
    "PD": ("wm", "gm", "csf"),
    "T2starw": ("wm", "gm", "csf"),
    "T2star": ("wm", "gm", "csf"),
    "FLAIR": ("csf", "wm", "gm"),
}
DEFAULT_CONTRAST = "T1w"
TISSUES = ("csf", "gm", "wm")
SUMMARY_REGIONS = ("csf", "gm", "wm", "air")
SUMMARY_FIELDS = ("mean", "median", "std", "p05", "p95", "mad", "k", "n")

_CROSS = ndimage.generate_binary_structure(3, 1)
_PLANE_NAMES = {0: "sagittal", 1: "coronal", 2: "axial"}


# --------------------------------------------------------------------------------------------
# Metrics: pure functions
# --------------------------------------------------------------------------------------------


def _values(img: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Voxel values under ``mask`` (all voxels if None) as float64."""
    vals = np.asarray(img).ravel() if mask is None else np.asarray(img)[np.asarray(mask, bool)]
    return vals.astype(np.float64, copy=False)


def _mean_sd(vals: np.ndarray) -> tuple[float, float, int]:
    """Mean, population standard deviation and count; NaNs for an empty sample."""
    n = int(vals.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(vals.mean())
    return mean, float(np.sqrt(np.mean((vals - mean) ** 2))), n


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is zero or either side is not finite."""
    if not (math.isfinite(num) and math.isfinite(den)) or den == 0:
        return math.nan
    return float(num / den)


def efc(img: np.ndarray, mask: np.ndarray | None = None) -> float:
    r"""Entropy focus criterion (EFC), normalised by its maximum so it lies in [0, 1].

    Motion ghosts and blurring spread the image energy over more voxels; EFC measures that spread.

    Parameters
    ----------
    img
        Image (any shape). Absolute values are used, so reconstructions with small negative
        values do not break the logarithm.
    mask
        Voxels to include (e.g. all but the zero-padded frame); all voxels when None.

    Returns
    -------
    float
        EFC in [0, 1]. **Lower is better** (0: all energy in one voxel; 1: every voxel equal).
        NaN when fewer than two voxels are given or the image energy is zero.

    Notes
    -----
    With :math:`x_j` the N included intensities and :math:`B = \sqrt{\sum_j x_j^2}`:

    .. math::

        E = -\sum_j \frac{x_j}{B} \ln \frac{x_j}{B}, \qquad
        E_{max} = -N \frac{1}{\sqrt N} \ln \frac{1}{\sqrt N} = \tfrac12 \sqrt N \ln N,
        \qquad \text{EFC} = E / E_{max}.

    :math:`E_{max}` is the entropy of an image whose N voxels are all equal (MRIQC's
    normalisation), which makes EFC comparable between image sizes. A constant block of M voxels
    in an otherwise zero image has :math:`\text{EFC} = \sqrt{M/N} \ln M / \ln N`.

    References
    ----------
    Atkinson D, Hill DLG, Stoyle PNR, et al. Automatic correction of motion artifacts in magnetic
    resonance images using an entropy focus criterion. IEEE Trans Med Imaging 1997;16(6):903-910.
    doi:10.1109/42.650886
    """
    x = np.abs(_values(img, mask))
    n = x.size
    if n < 2:
        return math.nan
    energy = float(np.sqrt(np.dot(x, x)))
    if energy == 0:
        return math.nan
    p = x[x > 0] / energy
    entropy = float(-np.dot(p, np.log(p)))
    return entropy / (0.5 * math.sqrt(n) * math.log(n))


def fber(img: np.ndarray, head_mask: np.ndarray, air_mask: np.ndarray | None = None) -> float:
    r"""Foreground-background energy ratio (FBER).

    Parameters
    ----------
    img
        Image.
    head_mask
        Foreground (head) voxels.
    air_mask
        Background voxels; every voxel outside ``head_mask`` when None (the textbook definition).
        The scorer passes its air region (outside the dilated head, without the zero frame).

    Returns
    -------
    float
        FBER. **Higher is better.** NaN when either region is empty or the air's median energy is
        0 (a zero-filled background: the ratio is unbounded and says nothing about the scan).
        MRIQC returns -1 in that case; we return NaN so that no sentinel value enters group
        statistics or threshold comparisons, and the scorer records why.

    Notes
    -----
    .. math::

        \text{FBER} = \frac{\operatorname{median}_{head} |x|^2}{\operatorname{median}_{air} |x|^2}

    The median (MRIQC's current choice) rather than the mean keeps a few hot voxels or a small
    artifact from dominating either energy.

    References
    ----------
    Shehzad Z, Giavasis S, Li Q, et al. The Preprocessed Connectomes Project Quality Assessment
    Protocol - a resource for measuring the quality of MRI data. Front Neurosci Conference
    Abstract: Neuroinformatics 2015. doi:10.3389/conf.fnins.2015.91.00047
    """
    head_mask = np.asarray(head_mask, bool)
    air_mask = ~head_mask if air_mask is None else np.asarray(air_mask, bool)
    fg = _values(img, head_mask)
    bg = _values(img, air_mask)
    if fg.size == 0 or bg.size == 0:
        return math.nan
    return _ratio(float(np.median(fg * fg)), float(np.median(bg * bg)))


def _snr_from(mean: float, sd: float, n: int) -> float:
    if n < 2:
        return math.nan
    return _ratio(mean, sd * math.sqrt(n / (n - 1)))


def snr(img: np.ndarray, fg_mask: np.ndarray) -> float:
    r"""Foreground signal-to-noise ratio: mean over the (sample-corrected) standard deviation.

    Parameters
    ----------
    img
        Image.
    fg_mask
        The region (a tissue class, in the scorer).

    Returns
    -------
    float
        SNR. **Higher is better.** NaN with fewer than 2 voxels or zero spread.

    Notes
    -----
    .. math::

        \text{SNR} = \frac{\mu_F}{\sigma_F \sqrt{n / (n-1)}}

    with :math:`\sigma_F` the population standard deviation of the n voxels (so the denominator
    is the sample standard deviation). Within a tissue class the spread mixes thermal noise with
    anatomy and bias field, so this is a lower bound on the thermal SNR.

    References
    ----------
    Magnotta VA, Friedman L; FIRST BIRN. Measurement of signal-to-noise and contrast-to-noise in
    the fBIRN multicenter imaging study. J Digit Imaging 2006;19(2):140-147.
    doi:10.1007/s10278-006-0264-x
    """
    return _snr_from(*_mean_sd(_values(img, fg_mask)))


def _snrd_from(mean_fg: float, sd_air: float) -> float:
    return _ratio(mean_fg, RAYLEIGH_STD_TO_SIGMA * sd_air)


def snr_dietrich(img: np.ndarray, fg_mask: np.ndarray, air_mask: np.ndarray) -> float:
    r"""Dietrich's SNR: foreground mean over the noise sigma estimated from the air.

    Parameters
    ----------
    img
        Magnitude image.
    fg_mask
        Foreground region (a tissue class, in the scorer).
    air_mask
        Air (background) region, ideally free of artifacts.

    Returns
    -------
    float
        SNR. **Higher is better.** NaN when a region is empty or the air has no spread.

    Notes
    -----
    Background noise of a single-channel magnitude image is Rayleigh distributed; its standard
    deviation is :math:`\sigma\sqrt{(4-\pi)/2}`, so the Gaussian noise level is recovered as

    .. math::

        \text{SNR}_D = \frac{\mu_F}{\sqrt{2/(4-\pi)}\;\sigma_{air}}

    (Dietrich et al. 2007, eq. A12). Multichannel coils (non-central chi noise), parallel
    imaging (spatially varying noise) and zero-filled backgrounds break the Rayleigh assumption;
    compare values only within one protocol.

    References
    ----------
    Dietrich O, Raya JG, Reeder SB, Reiser MF, Schoenberg SO. Measurement of signal-to-noise
    ratios in MR images: influence of multichannel coils, parallel imaging, and reconstruction
    filters. J Magn Reson Imaging 2007;26(2):375-385. doi:10.1002/jmri.20969
    """
    mean_fg = _mean_sd(_values(img, fg_mask))[0]
    return _snrd_from(mean_fg, _mean_sd(_values(img, air_mask))[1])


def _cjv_from(mu_wm: float, sd_wm: float, mu_gm: float, sd_gm: float) -> float:
    return _ratio(sd_wm + sd_gm, abs(mu_wm - mu_gm))


def cjv(img: np.ndarray, wm: np.ndarray, gm: np.ndarray) -> float:
    r"""Coefficient of joint variation of white and grey matter (CJV).

    Parameters
    ----------
    img
        Image.
    wm, gm
        White-matter-like and grey-matter-like regions.

    Returns
    -------
    float
        CJV. **Lower is better**: noise, bias field and motion widen both tissue distributions.
        NaN when a region is empty or the two means are equal.

    Notes
    -----
    .. math::

        \text{CJV} = \frac{\sigma_{WM} + \sigma_{GM}}{|\mu_{WM} - \mu_{GM}|}

    with population means and standard deviations.

    References
    ----------
    Ganzetti M, Wenderoth N, Mantini D. Intensity inhomogeneity correction of structural MR
    images: a data-driven approach to define input algorithm parameters. Front Neuroinform
    2016;10:10. doi:10.3389/fninf.2016.00010
    """
    mu_wm, sd_wm, _ = _mean_sd(_values(img, wm))
    mu_gm, sd_gm, _ = _mean_sd(_values(img, gm))
    return _cjv_from(mu_wm, sd_wm, mu_gm, sd_gm)


def _cnr_from(mu_wm: float, sd_wm: float, mu_gm: float, sd_gm: float, sd_air: float) -> float:
    return _ratio(abs(mu_gm - mu_wm), math.sqrt(sd_air**2 + sd_wm**2 + sd_gm**2))


def cnr(img: np.ndarray, wm: np.ndarray, gm: np.ndarray, air: np.ndarray) -> float:
    r"""Contrast-to-noise ratio between grey and white matter (CNR).

    Parameters
    ----------
    img
        Image.
    wm, gm, air
        White-matter-like, grey-matter-like and air regions.

    Returns
    -------
    float
        CNR. **Higher is better.** NaN when a region is empty or every spread is zero.

    Notes
    -----
    .. math::

        \text{CNR} = \frac{|\mu_{GM} - \mu_{WM}|}{\sqrt{\sigma_{air}^2 + \sigma_{WM}^2 +
        \sigma_{GM}^2}}

    (the form MRIQC uses; population standard deviations).

    References
    ----------
    Magnotta VA, Friedman L; FIRST BIRN. Measurement of signal-to-noise and contrast-to-noise in
    the fBIRN multicenter imaging study. J Digit Imaging 2006;19(2):140-147.
    doi:10.1007/s10278-006-0264-x
    """
    mu_wm, sd_wm, _ = _mean_sd(_values(img, wm))
    mu_gm, sd_gm, _ = _mean_sd(_values(img, gm))
    sd_air = _mean_sd(_values(img, air))[1]
    return _cnr_from(mu_wm, sd_wm, mu_gm, sd_gm, sd_air)


def _p9995(img: np.ndarray) -> float:
    return _order_stats(np.asarray(img).ravel(), (99.95,))[0][0]


def wm2max(img: np.ndarray, wm: np.ndarray) -> float:
    r"""White-matter-to-maximum intensity ratio (WM2MAX).

    Parameters
    ----------
    img
        Image; the whole array enters the percentile.
    wm
        White-matter-like region.

    Returns
    -------
    float
        WM2MAX. MRIQC calls values around **0.6-0.8** good; low values mean a long bright tail
        (vessels, fat, spikes) far above the WM level. NaN when ``wm`` is empty or the percentile
        is 0. Only comparable within a contrast (in T2w the WM is the darkest tissue).

    Notes
    -----
    .. math::

        \text{WM2MAX} = \frac{\operatorname{median}_{WM}(x)}{P_{99.95}(x)}

    References
    ----------
    Esteban O, Birman D, Schaer M, Koyejo OO, Poldrack RA, Gorgolewski KJ. MRIQC: Advancing the
    automatic prediction of image quality in MRI from unseen sites. PLoS One
    2017;12(9):e0184661. doi:10.1371/journal.pone.0184661
    """
    vals = _values(img, wm)
    if vals.size == 0:
        return math.nan
    return _ratio(float(np.median(vals)), _p9995(img))


def qi1(img: np.ndarray, air_mask: np.ndarray, threshold_sd: float = QI1_THRESHOLD_SD) -> float:
    r"""Mortamet's quality index 1: the fraction of air voxels that hold artifactual signal.

    Parameters
    ----------
    img
        3D magnitude image.
    air_mask
        Air region (outside the head, no padding).
    threshold_sd
        Detection threshold in robust standard deviations above the air median.

    Returns
    -------
    float
        QI1 in [0, 1]. **Lower is better** (0: the air holds nothing but noise). NaN when the
        air region is empty.

    Notes
    -----
    Our simplification of Mortamet et al. (2009): candidate voxels are air voxels brighter than

    .. math::

        t = \operatorname{median}_{air} + k \cdot 1.4826 \operatorname{MAD}_{air}, \quad k = 2

    (about the 95th percentile of pure Rayleigh noise). When more than half of the air holds one
    value (heavily quantised backgrounds, e.g. noise below one integer step), the MAD is 0 and the
    air's standard deviation is used instead. A binary opening with the 6-connected
    3x3x3 cross removes isolated noise voxels, which almost never clear the threshold together
    with all six neighbours; structured signal (ghosts, wrap-around, ringing, spikes spread by
    motion) does. :math:`\text{QI}_1 = |\text{opened}| / |\text{air}|`. Unlike the original we
    fit no chi distribution, use no registered "hat" mask (the whole air outside the dilated head
    is searched) and do not compute QI2. Robust statistics keep the threshold meaningful while
    artifacts cover less than half the air; a background with no spread at all (zero-filled)
    makes every structure above that constant count.

    References
    ----------
    Mortamet B, Bernstein MA, Jack CR Jr, et al. Automatic quality assessment in structural brain
    magnetic resonance imaging. Magn Reson Med 2009;62(2):365-372. doi:10.1002/mrm.21992
    """
    img = np.asarray(img)
    air_mask = np.asarray(air_mask, bool)
    if not air_mask.any():
        return math.nan
    vals = img[air_mask].astype(np.float64, copy=False)
    med = float(np.median(vals))
    spread = MAD_TO_SD * float(np.median(np.abs(vals - med)))
    return _qi1_from(img, air_mask, med, spread, float(vals.std()), threshold_sd)


def _qi1_from(
    img: np.ndarray,
    air_mask: np.ndarray,
    median: float,
    mad: float,
    std: float,
    threshold_sd: float = QI1_THRESHOLD_SD,
) -> float:
    spread = mad if mad > 0 else std  # heavily quantised air: most voxels share one value
    candidates = air_mask & (img > median + threshold_sd * spread)
    if not candidates.any():
        return 0.0
    # Outside the array counts as background, so voxels on the array border never survive.
    opened = ndimage.binary_opening(candidates, structure=_CROSS)
    return float(np.count_nonzero(opened)) / float(np.count_nonzero(air_mask))


def summary_stats(img: np.ndarray, mask: np.ndarray) -> dict[str, float | int]:
    r"""Descriptive statistics of the intensities in a region.

    Parameters
    ----------
    img
        Image (raw scanner units).
    mask
        Region.

    Returns
    -------
    dict
        ``mean``, ``median``, ``std`` (population), ``p05``, ``p95``, ``mad`` (median absolute
        deviation scaled by 1.4826, a consistent estimator of a Gaussian's sigma), ``k``
        (excess kurtosis, 0 for a Gaussian), ``n`` (voxel count, int). With ``n == 0`` every
        float is NaN; ``k`` is NaN when the region has no spread. Not a quality direction:
        these describe the regions the other metrics used and let users spot odd segmentations.

    Notes
    -----
    .. math::

        \text{MAD} = 1.4826\,\operatorname{median}|x - \operatorname{median}(x)|, \qquad
        k = \frac{m_4}{m_2^2} - 3

    with :math:`m_r` the r-th central sample moment (the biased, Fisher form SciPy returns).

    References
    ----------
    Esteban O, Birman D, Schaer M, Koyejo OO, Poldrack RA, Gorgolewski KJ. MRIQC: Advancing the
    automatic prediction of image quality in MRI from unseen sites. PLoS One
    2017;12(9):e0184661. doi:10.1371/journal.pone.0184661
    """
    out = _summary(_values(img, mask))
    del out["energy"]
    return out


def _order_stats(vals: np.ndarray, qs: tuple[float, ...]) -> tuple[list[float], np.ndarray]:
    """Percentiles ``qs`` (NumPy's default linear interpolation) from one partition.

    Returns the percentiles and the partitioned copy, whose elements at the percentile positions
    are in sorted place (used for the median energy without a second pass).
    """
    n = vals.size
    pos = np.asarray(qs, dtype=np.float64) / 100.0 * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    part = np.partition(vals, np.unique(np.concatenate([lo, hi])))
    a = part[lo].astype(np.float64)
    b = part[hi].astype(np.float64)
    return [float(x) for x in a + (b - a) * (pos - lo)], part


def _summary_energy(vals: np.ndarray) -> float:
    """Median of the squared values (one partition for non-negative data)."""
    n = vals.size
    if n == 0:
        return math.nan
    if float(vals.min()) < 0:
        return float(np.median(np.square(vals, dtype=np.float64)))
    mid = (n - 1) // 2
    part = np.partition(vals, [mid, n // 2])[[mid, n // 2]].astype(np.float64)
    return float(np.mean(part * part))


def _summary(vals: np.ndarray) -> dict[str, float | int]:
    """Summary statistics of a 1D sample (see :func:`summary_stats`), plus ``energy``, the
    median of the squared values, computed from the same partition."""
    n = int(vals.size)
    if n == 0:
        out: dict[str, float | int] = {f: math.nan for f in SUMMARY_FIELDS}
        out["n"] = 0
        out["energy"] = math.nan
        return out
    mean = float(np.mean(vals, dtype=np.float64))
    dev = vals.astype(np.float64) - mean
    dev *= dev
    m2 = float(dev.mean())
    m4 = float(np.dot(dev, dev) / n)
    (p05, median, p95), part = _order_stats(vals, (5.0, 50.0, 95.0))
    if float(vals.min()) >= 0:  # squaring keeps the order: the middle pair gives the median
        pair = part[[(n - 1) // 2, n // 2]].astype(np.float64)
        energy = float(np.mean(pair * pair))
    else:
        energy = _summary_energy(vals)
    return {
        "mean": mean,
        "median": median,
        "std": math.sqrt(m2),
        "p05": p05,
        "p95": p95,
        "mad": MAD_TO_SD * float(np.median(np.abs(vals - np.float32(median)))),
        "k": m4 / (m2 * m2) - 3.0 if m2 > 0 else math.nan,
        "n": n,
        "energy": energy,
    }


# --------------------------------------------------------------------------------------------
# Regions: analysis grid, frame, head, air, tissue classes
# --------------------------------------------------------------------------------------------


def analysis_stride(
    shape: tuple[int, ...], zooms: tuple[float, ...], max_voxels: int = MAX_ANALYSIS_VOXELS
) -> tuple[int, int, int]:
    """Per-axis stride that brings the volume under ``max_voxels`` with near-isotropic spacing.

    Thin axes are strided first, so a 0.5x0.5x4 mm clinical scan keeps every slice (stride
    (2, 2, 1)) and a 1 mm 256x256x176 volume becomes 128x128x88 (stride 2).
    """
    if int(np.prod(shape)) <= max_voxels:
        return (1, 1, 1)
    zmin = min(zooms)
    factor = 1.5
    while True:
        # The tolerance keeps 0.66667 vs 0.666670 mm header noise from changing the stride.
        stride = tuple(max(1, int(factor * zmin / z + 1e-3)) for z in zooms)
        n = int(np.prod([math.ceil(s / k) for s, k in zip(shape, stride, strict=True)]))
        if n <= max_voxels:
            return stride  # type: ignore[return-value]
        factor += 0.5


def frame_mask(img: np.ndarray) -> np.ndarray:
    """Exact zeros connected (6-neighbourhood) to the array border: padding, not measurement.

    Zero-valued voxels inside the air (quantised noise) are kept, because they do not touch the
    border as one connected block.
    """
    zero = img == 0
    if not zero.any():
        return zero
    labels, n = ndimage.label(zero, structure=_CROSS)
    faces = [labels.take(i, axis=a).ravel() for a in range(3) for i in (0, -1)]
    lut = np.zeros(n + 1, dtype=bool)
    lut[np.concatenate(faces)] = True
    lut[0] = False
    return lut[labels]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (empty stays empty)."""
    labels, n = ndimage.label(mask, structure=_CROSS)
    if n <= 1:
        return labels > 0
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == int(np.argmax(counts))


def fill_holes_in_planes(mask: np.ndarray, axis: int = 2) -> np.ndarray:
    """Fill every hole of ``mask`` in each plane perpendicular to ``axis``.

    A background component of a plane is a hole when it does not reach the plane's edge. This
    closes dark interiors that are open in 3D but enclosed in-plane (sinuses, mouth) as well as
    fully enclosed ones (ventricles).
    """
    struct = np.zeros((3, 3, 3), dtype=bool)
    struct[1, 1, 1] = True
    for a in range(3):
        if a != axis:
            idx = [1, 1, 1]
            for i in (0, 2):
                idx[a] = i
                struct[tuple(idx)] = True
    labels, n = ndimage.label(~mask, structure=struct)
    if n == 0:
        return mask.copy()
    hole = np.ones(n + 1, dtype=bool)
    hole[0] = False
    for a in range(3):
        if a != axis:
            for i in (0, -1):
                hole[labels.take(i, axis=a).ravel()] = False
    return mask | hole[labels]


def _radii(zooms: tuple[float, ...], mm: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(mm / z))) for z in zooms)


def dilate_box(mask: np.ndarray, radii: tuple[int, ...]) -> np.ndarray:
    """Dilation by a box of half-widths ``radii`` (voxels per axis); separable, hence fast."""
    out = mask.view(np.uint8)
    for axis, r in enumerate(radii):
        if r > 0:
            out = ndimage.maximum_filter1d(out, 2 * r + 1, axis=axis, mode="constant", cval=0)
    return out.astype(bool)


def erode_box(mask: np.ndarray, radii: tuple[int, ...]) -> np.ndarray:
    """Erosion by a box of half-widths ``radii``. The array edge does not erode (``nearest``):
    a head cut by the field of view keeps its cut face."""
    out = mask.view(np.uint8)
    for axis, r in enumerate(radii):
        if r > 0:
            out = ndimage.minimum_filter1d(out, 2 * r + 1, axis=axis, mode="nearest")
    return out.astype(bool)


@dataclass(frozen=True)
class Regions:
    """Head, air and frame masks on one grid, and the threshold that made the head."""

    head: np.ndarray
    air: np.ndarray
    frame: np.ndarray
    threshold: float


def head_threshold(img: np.ndarray, fraction: float = HEAD_THRESHOLD_FRACTION) -> float:
    """Intensity separating head from air: ``p2 + fraction * (p98 - p2)`` of the image.

    The robust-range rule of FSL BET (Smith 2002, doi:10.1002/hbm.10062). Otsu's threshold was
    tried first and rejected: on whole-head images it splits dark tissue (CSF, skull, T1w grey
    matter) from bright tissue rather than head from air, leaving a ragged head mask. Percentiles
    (on a regular subsample of about 200k voxels) ignore a few hot voxels.
    """
    step = max(1, int(round((img.size / 2e5) ** (1 / 3))))
    sample = np.asarray(img)[::step, ::step, ::step].ravel()
    p2, p98 = np.percentile(sample, [2, 98])
    return float(p2 + fraction * (p98 - p2))


def head_air_masks(
    img: np.ndarray,
    zooms: tuple[float, ...] = (1.0, 1.0, 1.0),
    fill_axis: int = 2,
    margin_mm: float = AIR_MARGIN_MM,
) -> Regions:
    """Head and air masks of a magnitude image, computed in-process (no registration).

    Parameters
    ----------
    img
        3D image (raw intensities).
    zooms
        Voxel sizes of ``img`` in mm (after any striding), used for the air margin.
    fill_axis
        Holes are filled in the planes perpendicular to this axis (the acquisition axis).
    margin_mm
        Gap between the head and the air region.

    Returns
    -------
    Regions
        ``head``: voxels above :func:`head_threshold` (robust-range rule), opened once with
        the 6-connected cross, largest component, holes filled per plane. ``air``: outside the head dilated by ``margin_mm`` (box), minus ``frame``, the
        exact zeros touching the border.
    """
    img = np.asarray(img)
    frame = frame_mask(img)
    threshold = head_threshold(img)
    head = img > threshold
    head = ndimage.binary_opening(head, structure=_CROSS)
    head = largest_component(head)
    head = fill_holes_in_planes(head, axis=fill_axis)
    air = ~dilate_box(head, _radii(zooms, margin_mm)) & ~frame
    return Regions(head=head, air=air, frame=frame, threshold=float(threshold))


def kmeans_1d(values: np.ndarray, n_classes: int = 3, max_iter: int = 200) -> np.ndarray:
    """Exact 1D k-means (Lloyd) centroids, ascending.

    In 1D each class is an interval between midpoints of neighbouring centroids, so after one
    sort every iteration costs ``n_classes`` binary searches and prefix-sum lookups. Initialised
    deterministically at the quantiles (2i+1)/(2k); iterated until no centroid moves.
    """
    v = np.sort(np.asarray(values).ravel()).astype(np.float64)
    if v.size == 0:
        raise ValueError("kmeans_1d needs at least one value")
    csum = np.concatenate([[0.0], np.cumsum(v)])
    q = (2 * np.arange(n_classes) + 1) / (2 * n_classes)
    centroids = v[np.minimum((q * v.size).astype(np.intp), v.size - 1)]
    for _ in range(max_iter):
        bounds = (centroids[:-1] + centroids[1:]) / 2
        idx = np.concatenate([[0], np.searchsorted(v, bounds, side="right"), [v.size]])
        counts = np.diff(idx)
        sums = csum[idx[1:]] - csum[idx[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(new, centroids):
            break
        centroids = new
    return np.sort(centroids)


def tissue_region(
    img: np.ndarray,
    regions: Regions,
    zooms: tuple[float, ...],
    erosion_mm: float = TISSUE_EROSION_MM,
) -> np.ndarray:
    """Where tissue classes are fitted: the head eroded by ``erosion_mm``, without the filled
    holes that are darker than the head threshold (sinuses, air pockets, signal voids).

    The erosion strips scalp, skull and the partial-volume rim with air. If too little is left
    (small head, tight field of view, thin slab), the uneroded head is used.
    """
    region = erode_box(regions.head, _radii(zooms, erosion_mm)) & (img > regions.threshold)
    if np.count_nonzero(region) < 10 * MIN_REGION_VOXELS:
        region = regions.head & (img > regions.threshold)
    return region


@dataclass(frozen=True)
class TissueClasses:
    """Three intensity classes of the head named as tissues for one contrast.

    Attributes
    ----------
    masks
        ``{"csf": mask, "gm": mask, "wm": mask}`` on the image grid.
    centroids
        Class means (k-means centroids), darkest first.
    order
        Tissue names darkest first, e.g. ``("csf", "gm", "wm")`` for T1w.
    contrast
        The suffix whose order was used; ``assumed`` is True when it was not given or not known.
    """

    masks: dict[str, np.ndarray]
    centroids: tuple[float, ...]
    order: tuple[str, str, str]
    contrast: str
    assumed: bool = field(default=False)

    @property
    def order_text(self) -> str:
        text = "<".join(self.order)
        return f"{text} (assumed: contrast not given)" if self.assumed else text


def tissue_classes(
    img: np.ndarray,
    region: np.ndarray,
    suffix: str | None = None,
    max_samples: int = 200_000,
) -> TissueClasses:
    """Split ``region`` into three intensity classes and name them CSF/GM/WM-like for ``suffix``.

    Parameters
    ----------
    img
        Image.
    region
        Where to cluster (the scorer passes the eroded head).
    suffix
        BIDS suffix (``T1w``, ``T2w``, ``PDw``, ``T2starw``, ``FLAIR``, ...); see
        :data:`TISSUE_ORDER`. Unknown or None: T1w order, flagged ``assumed``.
    max_samples
        The centroids are fitted on at most this many values (a regular stride through the
        region); every voxel is then assigned to the nearest centroid.

    Notes
    -----
    Plain intensity k-means without bias correction, spatial priors or partial-volume modelling:
    the classes are "tissue-like". The WM-like class of a T1w head also holds fat and the brightest
    vessels; a strong bias field shifts voxels between classes, which also inflates CJV.
    """
    region = np.asarray(region, bool)
    contrast = suffix if suffix in TISSUE_ORDER else DEFAULT_CONTRAST
    order = TISSUE_ORDER[contrast]
    vals = img[region]
    if vals.size == 0:
        empty = np.zeros(img.shape, dtype=bool)
        return TissueClasses(
            {t: empty for t in TISSUES}, (math.nan,) * 3, order, contrast, contrast != suffix
        )
    step = max(1, vals.size // max_samples)
    centroids = kmeans_1d(vals[::step], 3)
    b1, b2 = (centroids[:-1] + centroids[1:]) / 2
    ranked = [region & (img <= b1), region & (img > b1) & (img <= b2), region & (img > b2)]
    masks = {name: ranked[i] for i, name in enumerate(order)}
    return TissueClasses(
        masks, tuple(float(c) for c in centroids), order, contrast, contrast != suffix
    )


# --------------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------------


def _put(values: dict[str, Any], key: str, value: float, reason: str) -> None:
    """Store a metric; a non-finite one becomes NaN with ``<key>_note`` saying why."""
    if value is None or not math.isfinite(value):
        values[key] = math.nan
        values[f"{key}_note"] = reason or "not computable (zero or undefined denominator)"
    else:
        values[key] = float(value)


class HeaderScorer:
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

    def score(self, volume: Volume) -> ScanScores:
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


class IQMScorer:
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
