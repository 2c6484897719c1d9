"""Classical image quality metrics as pure functions: arrays and masks in, numbers out.

Each metric has its formula, reference and limits in its docstring (and ``docs/iqms.md``); the
masks and tissue classes they are computed on come from :mod:`bids_qa.iqm_regions`, and
:class:`bids_qa.iqms.IQMScorer` puts both together for a scan.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from bids_qa.morphology import open_cross

#: QI1 threshold, in robust standard deviations (scaled MAD) above the air median.
QI1_THRESHOLD_SD = 2.0
#: Rayleigh correction of Dietrich et al. (2007): sigma = std(air) * sqrt(2 / (4 - pi)); the one
#: Rayleigh constant of the package (the tier noise simulation uses its inverse,
#: sqrt(2 - pi / 2), the standard deviation of a unit-sigma Rayleigh variable).
RAYLEIGH_STD_TO_SIGMA = math.sqrt(2.0 / (4.0 - math.pi))
#: Scale that makes the median absolute deviation a consistent estimator of a Gaussian's sigma.
MAD_TO_SD = 1.482602218505602
#: 6-connected structuring element (the face neighbours of a voxel).
CROSS = ndimage.generate_binary_structure(3, 1)
SUMMARY_FIELDS = ("mean", "median", "std", "p05", "p95", "mad", "k", "n")


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
    opened = open_cross(candidates)
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
