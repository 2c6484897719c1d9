"""Simulated MRI artifacts with recorded, replayable parameters and severity labels.

Every artifact works on a 2D slice (H, W) or a 3D volume (X, Y, Z) of *normalised* intensities
(head 99th percentile = 1, see :mod:`bids_qa.volume`). Random draws are separated from the
application, as in TorchIO: :func:`sample_params` draws every parameter with the caller's
:class:`numpy.random.Generator` into a JSON-serialisable dict; :func:`apply_artifact` is a pure,
deterministic function of (image, artifact, params, zooms). Any random realisation (noise field)
is driven by a ``seed`` stored in the params, through a local generator: global NumPy/torch random
state is never touched. :func:`simulate` does both and returns an :class:`ArtifactLabel` that
:func:`replay` turns back into the same image.

Artifacts of Hays et al. (Table 1) and their severity score (SS, 0 = clean, 1 = worst simulated):

============  ========================================  ==========================================
artifact      parameters drawn (uniform)                SS
============  ========================================  ==========================================
noise         std ~ U[0.005, 0.2] (normalised scale)    (std - 0.005) / 0.195
ghosting      num_ghosts ~ U{2..10}, intensity ~        ((intensity - 0.2) + num_ghosts/10) / 2.3
              U[0.2, 1.5], axis
bias          c ~ U[0.01, 0.3] + 20 term values         (c - 0.01) / 0.29
anisotropy    scale ~ U[1, 4], axis                     (scale - 1) / 3
motion        amplitude A ~ U[0, 8], 1-4 events         max(max|rotation| / 8 deg, max|translation| / 8 mm)
============  ========================================  ==========================================

Combinations (``"bias+noise"``) are applied in the physical order of :data:`COMBINATION_ORDER`
and get SS = 1 - prod(1 - SS_i): the probability-style union, which is 0 only when every
component is 0, never exceeds 1 and is at least the worst component.

See ``docs/simulation.md`` for the definitions, design choices and calibration.

References
----------
Pérez-García F, Sparks R, Ourselin S. TorchIO: a Python library for efficient loading,
preprocessing, augmentation and patch-based sampling of medical images in deep learning.
Comput Methods Programs Biomed 2021. doi:10.1016/j.cmpb.2021.106236
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bids_qa.kspace_motion import kspace_motion_2d

#: The single artifacts of Hays et al. plus our motion.
SEVERITY_ARTIFACTS = ("noise", "ghosting", "bias", "anisotropy", "motion")
#: Artifacts of the Loizillon et al. tiers (motion, noise, poor contrast).
TIER_ARTIFACTS = ("motion", "noise", "contrast")
#: Every artifact :func:`apply_artifact` knows.
ARTIFACTS = ("noise", "ghosting", "bias", "anisotropy", "motion", "contrast")
#: Order in which combined artifacts are applied: object/contrast first, then the coil field, the
#: acquisition (motion, ghosts), the resolution, and thermal noise last (it is added to the
#: measured signal, so nothing after it should smooth it).
COMBINATION_ORDER = ("contrast", "bias", "motion", "ghosting", "anisotropy", "noise")

# Hays et al., Table 1 ranges.
NOISE_STD_RANGE = (0.005, 0.2)
GHOST_NUM_RANGE = (2, 10)
GHOST_INTENSITY_RANGE = (0.2, 1.5)
BIAS_COEF_RANGE = (0.01, 0.3)
ANISOTROPY_SCALE_RANGE = (1.0, 4.0)
BIAS_ORDER = 3
#: Standard deviation of the log bias field over the field of view, per unit of ``c``. TorchIO's
#: RandomBiasField(c) draws every term in [-c, c]; its log-field SD is then 0.66 c (2D, median,
#: 10-90%: 0.43-0.96 c) or 0.88 c (3D). We scale every draw to exactly 0.7 c so that SS tracks
#: the visible strength instead of the luck of the draw.
BIAS_LOG_STD_PER_COEF = 0.7
# Motion: our SS reaches 1 at 8 degrees or 8 mm (Loizillon et al.'s most severe motion).
MOTION_FULL_DEG = 8.0
MOTION_FULL_MM = 8.0
MOTION_EVENTS_RANGE = (1, 4)
#: Motion events happen within this part of the acquisition (fractions of k-space lines).
MOTION_TIME_RANGE = (0.3, 0.7)
#: Our SS for poor contrast: |log gamma| / 0.45 (Loizillon et al.'s most severe beta).
CONTRAST_FULL_LOG_GAMMA = 0.45

#: Monomials of TorchIO's BiasField polynomial, in TorchIO's coefficient order.
BIAS_TERMS = tuple(
    (a, b, c)
    for a in range(BIAS_ORDER + 1)
    for b in range(BIAS_ORDER + 1 - a)
    for c in range(BIAS_ORDER + 1 - a - b)
)


@dataclass(frozen=True)
class ArtifactLabel:
    """What was done to an image, with enough detail to redo it exactly.

    Attributes
    ----------
    artifact
        One artifact name, names joined by ``"+"`` for a combination, or ``"none"`` for clean.
    severity
        Severity score SS in [0, 1].
    params
        Every drawn parameter (JSON-serialisable); for a combination
        ``{"components": [{"artifact", "severity", "params"}, ...]}`` in application order.
    level
        ``"none"``, ``"moderate"`` or ``"severe"`` for Loizillon et al. tier draws, else None.
    """

    artifact: str
    severity: float
    params: dict = field(default_factory=dict)
    level: str | None = None

    def to_json(self) -> str:
        """The label as one JSON string (sorted keys), e.g. for a TSV cell."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArtifactLabel:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(
            artifact=d["artifact"],
            severity=float(d["severity"]),
            params=d["params"],
            level=d.get("level"),
        )


# --------------------------------------------------------------------------------------------
# Severity scores
# --------------------------------------------------------------------------------------------


def _clip01(x: float) -> float:
    return float(min(max(x, 0.0), 1.0))


def motion_amplitude(params: dict) -> tuple[float, float]:
    """Largest absolute rotation angle (deg) and largest translation length (mm) of any pose."""
    rot = np.abs(np.asarray(params.get("rotations_deg", []), dtype=np.float64))
    trans = np.asarray(params.get("translations_mm", []), dtype=np.float64)
    max_rot = float(rot.max()) if rot.size else 0.0
    max_trans = float(np.linalg.norm(trans, axis=-1).max()) if trans.size else 0.0
    return max_rot, max_trans


def severity_of(artifact: str, params: dict) -> float:
    """Severity score SS in [0, 1] of an artifact with the given parameters.

    Notes
    -----
    Hays et al., Table 1: noise ``(std - 0.005) / 0.195``; ghosting
    ``((intensity - 0.2) + num_ghosts / 10) / 2.3``; bias ``(c - 0.01) / 0.29``; anisotropy
    ``(scale - 1) / 3``. Ours: motion ``max(max|angle| / 8 deg, max|translation| / 8 mm)`` over
    all poses; contrast ``|log gamma| / 0.45``. All are clipped to [0, 1], so identity
    parameters (std 0, intensity 0 with 2 ghosts, c 0, scale 1, no motion, gamma 1) give 0.
    Combinations ``"a+b"``: ``1 - prod(1 - SS_i)`` over ``params["components"]``.

    Raises
    ------
    ValueError
        For an unknown artifact name.
    """
    if artifact == "none":
        return 0.0
    if "+" in artifact:
        comps = params.get("components", [])
        names = [c["artifact"] for c in comps]
        if sorted(names) != sorted(artifact.split("+")):
            raise ValueError(f"combination {artifact!r} does not match its components {names}")
        keep = 1.0
        for comp in comps:
            keep *= 1.0 - severity_of(comp["artifact"], comp["params"])
        return _clip01(1.0 - keep)
    if artifact == "noise":
        lo, hi = NOISE_STD_RANGE
        return _clip01((float(params["std"]) - lo) / (hi - lo))
    if artifact == "ghosting":
        ilo, ihi = GHOST_INTENSITY_RANGE
        if float(params["intensity"]) == 0.0:
            return 0.0
        return _clip01(
            ((float(params["intensity"]) - ilo) + int(params["num_ghosts"]) / 10)
            / ((ihi - ilo) + 1)
        )
    if artifact == "bias":
        lo, hi = BIAS_COEF_RANGE
        return _clip01((float(params["c"]) - lo) / (hi - lo))
    if artifact == "anisotropy":
        lo, hi = ANISOTROPY_SCALE_RANGE
        return _clip01((float(params["scale"]) - lo) / (hi - lo))
    if artifact == "motion":
        rot, trans = motion_amplitude(params)
        return _clip01(max(rot / MOTION_FULL_DEG, trans / MOTION_FULL_MM))
    if artifact == "contrast":
        return _clip01(abs(float(params["log_gamma"])) / CONTRAST_FULL_LOG_GAMMA)
    raise ValueError(f"unknown artifact {artifact!r}; choose from {ARTIFACTS} or 'none'")


# --------------------------------------------------------------------------------------------
# Parameter draws
# --------------------------------------------------------------------------------------------


def draw_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _check_severity(severity: float | None) -> float | None:
    if severity is None:
        return None
    s = float(severity)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity!r}")
    return s


def _ghost_params(rng: np.random.Generator, s: float | None) -> tuple[int, float]:
    ilo, ihi = GHOST_INTENSITY_RANGE
    nlo, nhi = GHOST_NUM_RANGE
    if s is None:
        return int(rng.integers(nlo, nhi + 1)), float(rng.uniform(ilo, ihi))
    if s == 0.0:
        return nlo, 0.0
    total = s * ((ihi - ilo) + 1)  # (intensity - 0.2) + n / 10
    feasible = [
        n for n in range(nlo, nhi + 1) if ilo - 1e-12 <= total + ilo - n / 10 <= ihi + 1e-12
    ]
    if not feasible:  # SS below the Table-1 minimum (0.087): fewest ghosts, weaker than 0.2
        return nlo, float(total + ilo - nlo / 10)
    n = int(feasible[int(rng.integers(len(feasible)))])
    return n, float(min(max(total + ilo - n / 10, ilo), ihi))


def motion_record(times, rot: np.ndarray, trans: np.ndarray, ndim: int, rng: np.random.Generator) -> dict[str, Any]:
    """Motion parameters as applied: our k-space model on slices (one in-plane angle, a random
    phase-encode axis), TorchIO's Motion on volumes (three angles)."""
    params: dict[str, Any] = {
        "model": "kspace" if ndim == 2 else "torchio",
        "times": times,
        "rotations_deg": [float(r[0]) for r in rot] if ndim == 2 else rot.tolist(),
        "translations_mm": trans.tolist(),
    }
    if ndim == 2:
        params["pe_axis"] = int(rng.integers(2))
    return params


def _motion_params(rng: np.random.Generator, s: float | None, ndim: int) -> dict[str, Any]:
    if s is None:
        s = float(rng.uniform(0.0, 1.0))
    n_events = int(rng.integers(MOTION_EVENTS_RANGE[0], MOTION_EVENTS_RANGE[1] + 1))
    times = sorted(float(t) for t in rng.uniform(*MOTION_TIME_RANGE, size=n_events))
    max_deg, max_mm = s * MOTION_FULL_DEG, s * MOTION_FULL_MM
    n_rot = 1 if ndim == 2 else 3
    rot = rng.uniform(-max_deg, max_deg, size=(n_events, n_rot))
    direction = rng.normal(size=(n_events, ndim))
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    trans = direction * rng.uniform(0.0, max_mm, size=(n_events, 1))
    # One pose reaches the amplitude exactly, so SS is what was asked for.
    j = int(rng.integers(n_events))
    if rng.uniform() < 0.5:
        rot[j, int(rng.integers(n_rot))] = max_deg * (1.0 if rng.uniform() < 0.5 else -1.0)
    else:
        trans[j] = direction[j] * max_mm
    return motion_record(times, rot, trans, ndim, rng)


def sample_params(
    artifact: str,
    rng: np.random.Generator,
    severity: float | None = None,
    *,
    ndim: int = 2,
) -> dict:
    """Draw the parameters of one artifact.

    Parameters
    ----------
    artifact
        One of :data:`ARTIFACTS` (``"contrast"`` draws a log-gamma with SS = |beta| / 0.45).
    rng
        The caller's generator; the only source of randomness.
    severity
        None: uniform draws in the Table-1 ranges. A value in [0, 1]: parameters whose SS is
        exactly that value (ghosting: a random feasible ``num_ghosts`` and the matching
        ``intensity``; motion: the amplitude; others invert the linear formula). 0 gives
        identity parameters (the image is left unchanged).
    ndim
        2 for slices, 3 for volumes (sets the axes drawn and the motion model).

    Returns
    -------
    dict
        JSON-serialisable parameters for :func:`apply_artifact`.
    """
    s = _check_severity(severity)
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, not {ndim!r}")
    if artifact == "noise":
        lo, hi = NOISE_STD_RANGE
        std = float(rng.uniform(lo, hi)) if s is None else (0.0 if s == 0.0 else lo + s * (hi - lo))
        return {"std": std, "rician": True, "seed": draw_seed(rng)}
    if artifact == "ghosting":
        n, intensity = _ghost_params(rng, s)
        return {
            "num_ghosts": n,
            "intensity": intensity,
            "axis": int(rng.integers(ndim)),
            "restore": None,
        }
    if artifact == "bias":
        lo, hi = BIAS_COEF_RANGE
        c = float(rng.uniform(lo, hi)) if s is None else (0.0 if s == 0.0 else lo + s * (hi - lo))
        values = rng.uniform(-1.0, 1.0, size=len(BIAS_TERMS))
        return {"c": c, "order": BIAS_ORDER, "term_values": [float(v) for v in values]}
    if artifact == "anisotropy":
        lo, hi = ANISOTROPY_SCALE_RANGE
        scale = float(rng.uniform(lo, hi)) if s is None else lo + s * (hi - lo)
        return {"scale": scale, "axis": int(rng.integers(ndim))}
    if artifact == "motion":
        return _motion_params(rng, s, ndim)
    if artifact == "contrast":
        beta = (
            float(rng.uniform(-CONTRAST_FULL_LOG_GAMMA, 0.0))
            if s is None
            else -s * CONTRAST_FULL_LOG_GAMMA
        )
        return {"log_gamma": beta}
    raise ValueError(f"unknown artifact {artifact!r}; choose from {ARTIFACTS}")


# --------------------------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------------------------


def _zooms_for(image: np.ndarray, zooms: Sequence[float] | None) -> tuple[float, ...]:
    if zooms is None:
        return (1.0,) * image.ndim
    z = tuple(float(v) for v in zooms)
    if len(z) != image.ndim:
        raise ValueError(f"zooms {z} do not match an image of shape {image.shape}")
    return z


def _to_tio(image: np.ndarray, zooms: tuple[float, ...]):
    """A TorchIO ScalarImage: 2D slices as (1, H, W, 1), volumes as (1, X, Y, Z)."""
    import torch
    import torchio as tio

    arr = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim == 2:
        tensor = torch.from_numpy(arr)[None, :, :, None]
        affine = np.diag([zooms[0], zooms[1], 1.0, 1.0])
    else:
        tensor = torch.from_numpy(arr)[None]
        affine = np.diag([*zooms, 1.0])
    return tio.ScalarImage(tensor=tensor, affine=affine)


def _from_tio(tio_image, ndim: int) -> np.ndarray:
    data = tio_image.data[0].numpy()
    if ndim == 2:
        data = data[:, :, 0]
    return np.ascontiguousarray(data, dtype=np.float32)


def _run_tio(transform, image):
    """Apply a fixed TorchIO transform without touching the global torch random state.

    Every TorchIO transform call draws ``torch.rand(1)`` (its probability check) from the global
    generator; the fork restores the state afterwards, so callers' torch random streams (weight
    init, dropout, samplers) do not depend on how many artifacts were simulated.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        return transform(image)


def _coords(n: int) -> np.ndarray:
    """TorchIO's bias-field coordinates along one axis: voxel centres spread over [-1, 1]."""
    return np.zeros(1) if n == 1 else np.linspace(-1.0, 1.0, n)


def bias_log_field(shape: Sequence[int], coefficients: Sequence[float]) -> np.ndarray:
    """log of TorchIO's ``BiasField`` for the given coefficients, evaluated separably.

    Same polynomial and coordinates as ``tio.BiasField.generate_bias_field`` (axis 0 is TorchIO's
    x), without building full-size meshes, so a 1 mm volume costs a few outer products. A 2D
    shape is treated as (H, W, 1).
    """
    dims = tuple(int(s) for s in shape) + (1,) * (3 - len(shape))
    x, y, z = (_coords(n) for n in dims)
    out = np.zeros(dims, dtype=np.float64)
    for a in range(BIAS_ORDER + 1):
        plane = np.zeros(dims[1:], dtype=np.float64)
        for coef, (ta, tb, tc) in zip(coefficients, BIAS_TERMS, strict=True):
            if ta == a and coef:
                plane += coef * np.outer(y**tb, z**tc)
        if plane.any():
            out += (x**a)[:, None, None] * plane[None]
    return out.reshape(tuple(int(s) for s in shape))


def bias_coefficients(c: float, term_values: Sequence[float], ndim: int) -> list[float]:
    """TorchIO BiasField coefficients from the magnitude ``c`` and the drawn term values.

    The constant term is set so that the log field has zero mean over the field of view, and
    the others are scaled so that its standard deviation is :data:`BIAS_LOG_STD_PER_COEF` x c
    (measured on a 33^ndim grid over [-1, 1]^ndim). On a 2D slice the terms in z vanish.
    """
    values = np.asarray(term_values, dtype=np.float64).copy()
    if values.shape != (len(BIAS_TERMS),):
        raise ValueError(f"bias needs {len(BIAS_TERMS)} term values, got {values.shape}")
    values[0] = 0.0
    if ndim == 2:
        values[[i for i, t in enumerate(BIAS_TERMS) if t[2] > 0]] = 0.0
    if c == 0.0 or not values.any():
        return [0.0] * len(BIAS_TERMS)
    grid = bias_log_field((33,) * ndim, values)
    scale = BIAS_LOG_STD_PER_COEF * float(c) / float(grid.std())
    coefs = values * scale
    coefs[0] = -float(grid.mean()) * scale
    return [float(v) for v in coefs]


def _apply_noise(image: np.ndarray, params: dict) -> np.ndarray:
    std = float(params["std"])
    if std == 0.0:
        return image.astype(np.float32, copy=True)
    gen = np.random.default_rng(int(params["seed"]))
    real = image + std * gen.standard_normal(image.shape, dtype=np.float32)
    if not params.get("rician", True):
        return real.astype(np.float32)
    imag = std * gen.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)




def ghosting_spectrum(image: np.ndarray, num_ghosts: int, intensity: float, axis: int,
                      restore: float | None = None) -> np.ndarray:
    """TorchIO's ``Ghosting`` artifact computed directly with numpy's FFT (real part, like TorchIO).

    Every ``num_ghosts``-th k-space plane along ``axis`` (centred spectrum) is scaled by
    ``1 - intensity`` and the central plane(s) are restored, as ``tio.Ghosting`` does; the result
    equals TorchIO's to float32 precision (tested). Calling the transform through TorchIO costs
    ~80 ms per 2D slice in subject bookkeeping, which dominated severity training data generation.
    """
    spectrum = np.fft.fftshift(np.fft.fftn(image.astype(np.float64)))
    index = [slice(None)] * image.ndim
    size = spectrum.shape[axis]
    mid = size // 2
    if restore is None:
        index[axis] = slice(mid, mid + 1)
    else:
        half = int(np.round(float(restore) * size)) // 2
        index[axis] = slice(mid - half, mid + half)
    kept = spectrum[tuple(index)].copy()
    planes = [slice(None)] * image.ndim
    planes[axis] = slice(None, None, int(num_ghosts))
    spectrum[tuple(planes)] *= 1.0 - float(intensity)
    spectrum[tuple(index)] = kept
    return np.fft.ifftn(np.fft.ifftshift(spectrum)).real.astype(np.float32)


def _apply_ghosting(image: np.ndarray, params: dict, zooms: tuple[float, ...]) -> np.ndarray:
    n, intensity, axis = int(params["num_ghosts"]), float(params["intensity"]), int(params["axis"])
    if axis >= image.ndim:
        raise ValueError(f"ghosting axis {axis} does not exist in a {image.ndim}D image")
    if intensity == 0.0 or n == 0:
        return image.astype(np.float32, copy=True)
    out = ghosting_spectrum(image, n, intensity, axis, params.get("restore"))
    # TorchIO keeps the real part; a scanner shows the magnitude (never negative).
    return np.abs(out)


def _apply_bias(image: np.ndarray, params: dict) -> np.ndarray:
    coefs = bias_coefficients(float(params["c"]), params["term_values"], image.ndim)
    if not any(coefs):
        return image.astype(np.float32, copy=True)
    field = np.exp(bias_log_field(image.shape, coefs)).astype(np.float32)
    return (image * field).astype(np.float32)


def _apply_anisotropy(image: np.ndarray, params: dict, zooms: tuple[float, ...]) -> np.ndarray:
    import torchio as tio

    scale, axis = float(params["scale"]), int(params["axis"])
    if axis >= image.ndim:
        raise ValueError(f"anisotropy axis {axis} does not exist in a {image.ndim}D image")
    if scale <= 1.0:
        return image.astype(np.float32, copy=True)
    img = _to_tio(image, zooms)
    spacing = [float(s) for s in img.spacing]
    spacing[axis] *= scale
    # As tio.RandomAnisotropy: nearest-neighbour downsampling, linear interpolation back.
    down = _run_tio(tio.Resample(tuple(spacing), image_interpolation="nearest"), img)
    up = _run_tio(tio.Resample((img.spatial_shape, img.affine), image_interpolation="linear"), down)
    return _from_tio(up, image.ndim)


def _tio_motion_2d(image: np.ndarray, params: dict, zooms: tuple[float, ...]) -> np.ndarray:
    """tio.Motion on a slice laid out as (1, 1, H, W): in-plane rotation is about TorchIO's x
    axis and k-space segments run along W (TorchIO segments the last axis)."""
    import torch
    import torchio as tio

    rots = np.asarray(params["rotations_deg"], dtype=np.float64).reshape(-1)
    trans = np.asarray(params["translations_mm"], dtype=np.float64).reshape(-1, 2)
    degrees = np.zeros((len(rots), 3))
    degrees[:, 0] = rots
    translation = np.zeros((len(rots), 3))
    translation[:, 1:] = trans
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    img = tio.ScalarImage(tensor=tensor, affine=np.diag([1.0, zooms[0], zooms[1], 1.0]))
    motion = tio.Motion(
        degrees=degrees,
        translation=translation,
        times=np.asarray(params["times"], dtype=np.float64),
        image_interpolation="linear",
    )
    out = _run_tio(motion, img)
    return np.abs(out.data[0, 0].numpy()).astype(np.float32)


def _apply_motion(image: np.ndarray, params: dict, zooms: tuple[float, ...]) -> np.ndarray:
    import torchio as tio

    if not params.get("times") or motion_amplitude(params) == (0.0, 0.0):
        return image.astype(np.float32, copy=True)
    model = params.get("model", "kspace" if image.ndim == 2 else "torchio")
    if image.ndim == 2 and model == "kspace":
        return kspace_motion_2d(
            image,
            int(params["pe_axis"]),
            params["times"],
            [float(r) for r in np.asarray(params["rotations_deg"]).reshape(-1)],
            params["translations_mm"],
            zooms,
        )
    if image.ndim == 2 and model == "torchio":
        return _tio_motion_2d(image, params, zooms)
    if image.ndim == 3 and model == "torchio":
        motion = tio.Motion(
            degrees=np.asarray(params["rotations_deg"], dtype=np.float64).reshape(-1, 3),
            translation=np.asarray(params["translations_mm"], dtype=np.float64).reshape(-1, 3),
            times=np.asarray(params["times"], dtype=np.float64),
            image_interpolation="linear",
        )
        out = _run_tio(motion, _to_tio(image, zooms))
        return np.abs(_from_tio(out, 3))
    raise ValueError(f"motion model {model!r} is not available for a {image.ndim}D image")


def _apply_contrast(image: np.ndarray, params: dict) -> np.ndarray:
    import torchio as tio

    beta = float(params["log_gamma"])
    if beta == 0.0:
        return image.astype(np.float32, copy=True)
    out = _run_tio(tio.Gamma(gamma=float(np.exp(beta))), _to_tio(image, (1.0,) * image.ndim))
    return _from_tio(out, image.ndim)


def apply_artifact(
    image: np.ndarray,
    artifact: str,
    params: dict,
    zooms: Sequence[float] | None = None,
) -> np.ndarray:
    """Apply one artifact (or a ``"+"`` combination) with fixed parameters.

    Parameters
    ----------
    image
        Normalised 2D slice (H, W) or 3D volume (X, Y, Z).
    artifact
        A name from :data:`ARTIFACTS`, ``"none"``, or names joined by ``"+"`` with
        ``params = {"components": [...]}``.
    params
        As returned by :func:`sample_params` / :func:`sample_tier_params`.
    zooms
        Voxel sizes in mm (default 1 mm); motion translations are in mm.

    Returns
    -------
    numpy.ndarray
        New float32 array of the same shape; the input is never modified.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"artifacts need a 2D slice or a 3D volume, got shape {image.shape}")
    z = _zooms_for(image, zooms)
    img = image.astype(np.float32, copy=False)
    if artifact == "none":
        return img.copy()
    if "+" in artifact:
        out = img
        for comp in params["components"]:
            out = apply_artifact(out, comp["artifact"], comp["params"], z)
        return out if out is not img else img.copy()
    if artifact == "noise":
        return _apply_noise(img, params)
    if artifact == "ghosting":
        return _apply_ghosting(img, params, z)
    if artifact == "bias":
        return _apply_bias(img, params)
    if artifact == "anisotropy":
        return _apply_anisotropy(img, params, z)
    if artifact == "motion":
        return _apply_motion(img, params, z)
    if artifact == "contrast":
        return _apply_contrast(img, params)
    raise ValueError(f"unknown artifact {artifact!r}; choose from {ARTIFACTS} or 'none'")


def simulate(
    image: np.ndarray,
    artifact: str,
    rng: np.random.Generator,
    severity: float | None = None,
    zooms: Sequence[float] | None = None,
) -> tuple[np.ndarray, ArtifactLabel]:
    """Draw parameters for ``artifact`` (optionally at a given SS), apply them, label the result.

    ``artifact`` may be ``"none"`` (clean copy, SS 0) or a ``"+"`` combination (delegates to
    :func:`simulate_combination`; ``severity`` is then not supported).
    """
    image = np.asarray(image)
    if artifact == "none":
        return image.astype(np.float32, copy=True), ArtifactLabel("none", 0.0, {})
    if "+" in artifact:
        if severity is not None:
            raise ValueError("a severity can only be requested for a single artifact")
        return simulate_combination(image, artifact.split("+"), rng, zooms)
    params = sample_params(artifact, rng, severity, ndim=image.ndim)
    out = apply_artifact(image, artifact, params, zooms)
    return out, ArtifactLabel(artifact, severity_of(artifact, params), params)


def simulate_combination(
    image: np.ndarray,
    artifacts: Sequence[str],
    rng: np.random.Generator,
    zooms: Sequence[float] | None = None,
) -> tuple[np.ndarray, ArtifactLabel]:
    """Several artifacts at once, each drawn uniformly, applied in :data:`COMBINATION_ORDER`.

    The label's artifact is the names joined by ``"+"`` in application order; its SS is
    ``1 - prod(1 - SS_i)``; its params hold every component's params and SS.
    """
    names = list(dict.fromkeys(artifacts))
    unknown = [a for a in names if a not in ARTIFACTS]
    if unknown or not names:
        raise ValueError(f"unknown or no artifacts {unknown or names}; choose from {ARTIFACTS}")
    names.sort(key=COMBINATION_ORDER.index)
    image = np.asarray(image)
    comps = []
    for name in names:
        p = sample_params(name, rng, None, ndim=image.ndim)
        comps.append({"artifact": name, "severity": severity_of(name, p), "params": p})
    params = {"components": comps}
    artifact = "+".join(names)
    out = apply_artifact(image, artifact, params, zooms)
    return out, ArtifactLabel(artifact, severity_of(artifact, params), params)


def replay(
    image: np.ndarray, label: ArtifactLabel, zooms: Sequence[float] | None = None
) -> np.ndarray:
    """Re-create the corrupted image a label describes (bit-identical on the same platform)."""
    return apply_artifact(image, label.artifact, label.params, zooms)
