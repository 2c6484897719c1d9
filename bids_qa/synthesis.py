"""Synthetic heads of any contrast drawn from whole-head label maps (domain randomisation).

After SynthSeg (Billot et al., Medical Image Analysis 2023): a label map is posed by a random affine
and a smooth elastic deformation, every class of labels gets an intensity drawn from a Gaussian
mixture whose components are T1w-, T2w-, FLAIR- and PD-like tissue orders plus a uniformly random
one, the image is blurred to the partial volume of a random acquisition (isotropic 3D or 2D with
thick slices in a random plane), multiplied by a smooth bias field and given Rician noise.

As for :mod:`bids_qa.artifacts`, drawing and rendering are apart: :func:`draw_params` takes all
randomness from the caller's ``numpy.random.Generator`` and returns plain JSON; :func:`render`
(alias :func:`replay`) is a pure function of the label map and those parameters (field
realisations come from seeds stored in them), so a head replays bit for bit. Label maps are
training data and never ship with the package. See docs/simulation.md, "Synthetic heads".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONTRASTS = ("T1w", "T2w", "FLAIR", "PDw")
#: contrast="random": weights of the mixture components (the four named orders, then uniform).
MIXTURE_WEIGHTS = {"T1w": 0.2, "T2w": 0.2, "FLAIR": 0.2, "PDw": 0.2, "uniform": 0.2}

#: Tissue of each FreeSurfer label (FreeSurferColorLUT). Labels 5xx are SynthSeg's unnamed
#: non-brain head tissues; the names here are our reading of where they lie (their neighbours
#: in the maps): 511 is the outer layer touching air, 515 lies against the CSF, 516 between 515
#: and the soft tissue, 506 two eye-sized bodies in front, ...; 136/137 and 163/164 sit against
#: the lateral and inferior lateral ventricles (choroid-plexus-like).
TISSUE_OF_LABEL: dict[int, str] = {
    0: "background",
    2: "wm", 41: "wm", 7: "wm", 46: "wm", 85: "wm",
    3: "gm", 42: "gm", 8: "gm", 47: "gm", 17: "gm", 53: "gm", 18: "gm", 54: "gm",
    26: "striatum", 58: "striatum", 11: "striatum", 50: "striatum", 12: "striatum", 51: "striatum",
    10: "thalamus", 49: "thalamus",
    13: "pallidum", 52: "pallidum",
    16: "brainstem", 28: "brainstem", 60: "brainstem", 512: "brainstem",
    4: "csf", 43: "csf", 5: "csf", 44: "csf", 14: "csf", 15: "csf", 24: "csf", 72: "csf",
    136: "choroid", 137: "choroid", 163: "choroid", 164: "choroid", 31: "choroid", 63: "choroid",
    30: "vessel", 62: "vessel",
    25: "lesion", 57: "lesion", 77: "lesion",
    506: "eye", 508: "optic", 530: "optic",
    515: "bone", 516: "marrow", 507: "soft_tissue", 511: "skin", 509: "skin",
    502: "air", 514: "dura",
}
#: Left label -> right twin (tied for symmetric heads).
TWINS: dict[int, int] = {
    **{left: left + 39 for left in (2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 17, 18)},
    25: 57, 26: 58, 28: 60, 30: 62, 31: 63, 136: 163, 137: 164,
}

#: Brain tissues whose level is a fixed mixture of the drawn WM, GM and CSF levels.
DERIVED: dict[str, dict[str, float]] = {
    "thalamus": {"wm": 0.5, "gm": 0.5},
    "striatum": {"wm": 0.2, "gm": 0.8},
    "pallidum": {"wm": 0.7, "gm": 0.3},
    "brainstem": {"wm": 0.75, "gm": 0.25},
    "choroid": {"gm": 0.7, "csf": 0.3},
    "vessel": {"wm": 0.3, "gm": 0.7},
}
#: Relative level (brightest brain tissue near 1) of every drawn tissue per contrast.
PROTOTYPES: dict[str, dict[str, float]] = {
    "T1w": {"wm": 0.85, "gm": 0.55, "csf": 0.18, "lesion": 0.45, "eye": 0.12, "optic": 0.55,
            "bone": 0.05, "marrow": 0.80, "soft_tissue": 0.45, "skin": 0.75, "air": 0.02, "dura": 0.2},
    "T2w": {"wm": 0.30, "gm": 0.45, "csf": 1.00, "lesion": 0.75, "eye": 1.0, "optic": 0.35,
            "bone": 0.04, "marrow": 0.55, "soft_tissue": 0.28, "skin": 0.45, "air": 0.02, "dura": 0.2},
    "FLAIR": {"wm": 0.45, "gm": 0.62, "csf": 0.08, "lesion": 0.9, "eye": 0.1, "optic": 0.45,
              "bone": 0.04, "marrow": 0.6, "soft_tissue": 0.3, "skin": 0.55, "air": 0.02, "dura": 0.25},
    "PDw": {"wm": 0.62, "gm": 0.78, "csf": 0.90, "lesion": 0.85, "eye": 0.85, "optic": 0.6,
            "bone": 0.06, "marrow": 0.8, "soft_tissue": 0.5, "skin": 0.7, "air": 0.02, "dura": 0.3},
}
#: Brightest-to-darkest order of WM, GM and CSF each named contrast guarantees.
ORDERS = {"T1w": ("wm", "gm", "csf"), "T2w": ("csf", "gm", "wm"),
          "FLAIR": ("gm", "wm", "csf"), "PDw": ("csf", "gm", "wm")}
MIN_STEP = 1.12  # consecutive WM/GM/CSF levels of a named contrast differ by at least 12%
LOG_JITTER = {"named": 0.10, "mixture": 0.22}  # SD of log level around the prototype
CLASS_JITTER = 0.03  # SD of log level of a class around its tissue's level

# acquisition
P_2D = 0.4
ISO_MM = (0.7, 1.5)
INPLANE_2D_MM = (0.7, 1.2)
SLICE_MM = (3.0, 6.0)
PLANES = ("axial", "coronal", "sagittal")
#: output voxel axes (scanner x=0, y=1, z=2) per 2D plane: the slice axis is the third.
PLANE_AXES = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0), "3d": (0, 1, 2)}
CHUNK_POINTS = 2_000_000


@dataclass(frozen=True)
class LabelMap:
    """A whole-head label map (integer labels, FreeSurfer values) with its voxel-to-world affine."""

    labels: np.ndarray
    affine: np.ndarray
    name: str = ""

    @property
    def zooms(self) -> tuple[float, float, float]:
        return tuple(float(z) for z in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def load_label_map(path: str | Path) -> LabelMap:
    import nibabel as nib

    img = nib.load(str(path))
    labels = np.asarray(img.dataobj)
    if labels.ndim != 3:
        raise ValueError(f"{path}: a label map must be 3D, got shape {labels.shape}")
    return LabelMap(np.ascontiguousarray(labels.astype(np.int32)), np.asarray(img.affine, float),
                    Path(path).name)


def label_classes(
    present: list[int],
    generation_labels: np.ndarray | None = None,
    generation_classes: np.ndarray | None = None,
    symmetric: bool = True,
) -> list[list[int]]:
    """Groups of labels that share one drawn intensity distribution.

    With SynthSeg's ``generation_labels``/``generation_classes`` the groups are its classes (labels
    it does not list get one group each), else one group per label; ``symmetric`` then merges every
    group holding a left label with the group of its right twin.
    """
    parent = {lab: lab for lab in present}

    def root(lab: int) -> int:
        while parent[lab] != lab:
            lab = parent[lab]
        return lab

    def tie(a: int, b: int) -> None:
        if a in parent and b in parent:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

    if generation_labels is not None and generation_classes is not None:
        by_class: dict[int, list[int]] = {}
        for lab, cls in zip(np.asarray(generation_labels).tolist(), np.asarray(generation_classes).tolist(), strict=True):
            by_class.setdefault(int(cls), []).append(int(lab))
        for members in by_class.values():
            for other in members[1:]:
                tie(members[0], other)
    if symmetric:
        for left, right in TWINS.items():
            tie(left, right)
    groups: dict[int, list[int]] = {}
    for lab in present:
        groups.setdefault(root(lab), []).append(lab)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def tissue_of(group: list[int]) -> str:
    """The tissue of a group of labels (its first known label; ``unknown`` if none is known)."""
    for lab in group:
        if lab in TISSUE_OF_LABEL:
            return TISSUE_OF_LABEL[lab]
    return "unknown"


def suffix_for_levels(levels: dict[str, float]) -> str:
    """BIDS suffix of a drawn head: the named contrast whose WM, GM, CSF prototype (each scaled to
    its brightest) is nearest (Euclidean) to the drawn levels scaled the same way."""
    drawn = np.array([levels["wm"], levels["gm"], levels["csf"]], float)
    drawn = drawn / max(float(drawn.max()), 1e-9)
    best, dist = CONTRASTS[0], math.inf
    for name in CONTRASTS:
        proto = np.array([PROTOTYPES[name][t] for t in ("wm", "gm", "csf")])
        d = float(np.linalg.norm(drawn - proto / proto.max()))
        if d < dist:
            best, dist = name, d
    return best


# ---------------------------------------------------------------------------------------------
# drawing


def _draw_tissue_levels(rng: np.random.Generator, contrast: str) -> tuple[str, dict[str, float]]:
    """(mixture component, level per tissue) for ``contrast`` (a named one or ``random``)."""
    if contrast == "random":
        names = list(MIXTURE_WEIGHTS)
        component = names[int(rng.choice(len(names), p=list(MIXTURE_WEIGHTS.values())))]
        jitter = LOG_JITTER["mixture"]
    elif contrast in CONTRASTS:
        component, jitter = contrast, LOG_JITTER["named"]
    else:
        raise ValueError(f"unknown contrast {contrast!r}; choose from {(*CONTRASTS, 'random')}")
    tissues = list(PROTOTYPES["T1w"])
    if component == "uniform":
        levels = {t: float(rng.uniform(0.02, 1.0)) for t in tissues}
    else:
        proto = PROTOTYPES[component]
        levels = {t: float(proto[t] * math.exp(jitter * rng.standard_normal())) for t in tissues}
        if contrast in CONTRASTS:  # keep the contrast's WM/GM/CSF order, with a visible step
            order = ORDERS[contrast]
            values = sorted((levels[t] for t in order), reverse=True)
            for i in range(1, 3):
                values[i] = min(values[i], values[i - 1] / MIN_STEP)
            levels.update(dict(zip(order, values, strict=True)))
    for name, weights in DERIVED.items():
        levels[name] = float(sum(w * levels[t] for t, w in weights.items()))
    levels["background"] = 0.0
    return component, levels


def draw_params(
    rng: np.random.Generator,
    label_map: LabelMap,
    contrast: str = "random",
    classes: list[list[int]] | None = None,
    acquisition: str | None = None,
    iso_mm: tuple[float, float] = ISO_MM,
) -> dict[str, Any]:
    """Every random choice of one head, as plain JSON (see docs/simulation.md for each entry).

    ``classes``: groups of labels sharing an intensity (default :func:`label_classes` of the labels
    present, symmetric); ``acquisition``: ``"3d"``, ``"2d"`` or None (drawn, 2D with P = 0.4);
    ``iso_mm``: range of the 3D voxel size (training narrows it to save memory).
    """
    if classes is None:
        classes = label_classes(np.unique(label_map.labels).astype(int).tolist())
    component, levels = _draw_tissue_levels(rng, contrast)
    intensities = []
    for group in classes:
        tissue = tissue_of(group)
        if tissue == "background":
            mean, std = 0.0, 0.0
        else:
            base = levels[tissue] if tissue in levels else float(rng.uniform(0.02, 1.0))
            mean = base * math.exp(CLASS_JITTER * float(rng.standard_normal()))
            std = mean * float(rng.uniform(0.01, 0.05))
        intensities.append({"labels": group, "tissue": tissue, "mean": mean, "std": std})

    if acquisition is None:
        acquisition = "2d" if rng.uniform() < P_2D else "3d"
    if acquisition == "3d":
        iso = float(rng.uniform(*iso_mm))
        acq = {"type": "3D", "plane": "3d", "voxel_mm": [iso, iso, iso], "slice_thickness_mm": iso}
    elif acquisition == "2d":
        plane = PLANES[int(rng.integers(len(PLANES)))]
        inplane = float(rng.uniform(*INPLANE_2D_MM))
        thick = float(rng.uniform(*SLICE_MM))
        spacing = thick * float(rng.uniform(1.0, 1.2))  # a slice gap of 0-20%
        acq = {"type": "2D", "plane": plane, "voxel_mm": [inplane, inplane, spacing],
               "slice_thickness_mm": thick}
    else:
        raise ValueError(f"acquisition must be '3d', '2d' or None, not {acquisition!r}")
    acq["margin_mm"] = [float(m) for m in rng.uniform(4.0, 20.0, 6)]

    return {
        "version": 1,
        "contrast": contrast,
        "component": component,
        "suffix": contrast if contrast in CONTRASTS else suffix_for_levels(levels),
        "tissue_levels": levels,
        "intensities": intensities,
        "texture_seed": int(rng.integers(2**31)),
        "pose": {
            "rotation_deg": [float(d) for d in rng.uniform(-12.0, 12.0, 3)],
            "scale": [float(s) for s in rng.uniform(0.9, 1.1, 3)],
            "shear": [float(s) for s in rng.uniform(-0.02, 0.02, 3)],
        },
        "elastic": {"control_points": 5, "std_mm": float(rng.uniform(0.0, 2.5)),
                    "seed": int(rng.integers(2**31))},
        "acquisition": acq,
        "partial_volume": {"fwhm_per_voxel": float(rng.uniform(0.8, 1.25))},
        "gamma": float(math.exp(0.1 * rng.standard_normal())),
        "gain": float(rng.uniform(600.0, 3000.0)),
        "bias": {"control_points": 4, "std_log": float(rng.uniform(0.01, 0.08)),
                 "seed": int(rng.integers(2**31))},
        "noise": {"std_relative": float(rng.uniform(0.01, 0.05)), "seed": int(rng.integers(2**31))},
    }


# ---------------------------------------------------------------------------------------------
# rendering


def _rotation(deg: list[float]) -> np.ndarray:
    ax, ay, az = (math.radians(d) for d in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def head_points(label_map: LabelMap, stride: int = 3) -> np.ndarray:
    """World coordinates of the labelled (non-zero) voxels on a ``stride`` sub-grid: the head's
    extent and centre, cheaply."""
    idx = np.argwhere(label_map.labels[::stride, ::stride, ::stride] > 0).astype(float) * stride
    if not len(idx):
        raise ValueError(f"label map {label_map.name or ''} holds no labelled voxel")
    return idx @ label_map.affine[:3, :3].T + label_map.affine[:3, 3]


def pose_matrix(pose: dict[str, Any], centre: np.ndarray) -> np.ndarray:
    """4x4 world -> scanner map: rotation, scale and shear about the head's ``centre``."""
    shear = np.eye(3)
    shear[0, 1], shear[0, 2], shear[1, 2] = pose["shear"]
    linear = _rotation(pose["rotation_deg"]) @ np.diag(pose["scale"]) @ shear
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre - linear @ centre
    return out


def output_grid(posed: np.ndarray, acq: dict[str, Any]) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, voxel-to-scanner affine) of the acquired image: the bounding box of the posed head
    points plus the drawn margins, voxel axes ordered so that a 2D scan's slice axis is the third."""
    margin = np.asarray(acq["margin_mm"], float)
    lo, hi = posed.min(axis=0) - margin[:3], posed.max(axis=0) + margin[3:]
    axes = PLANE_AXES[acq["plane"]]
    vox = np.asarray(acq["voxel_mm"], float)
    shape = tuple(max(2, int(math.ceil((hi[a] - lo[a]) / vox[i]))) for i, a in enumerate(axes))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for i, a in enumerate(axes):
        affine[a, i] = vox[i]
        affine[a, 3] = lo[a] + 0.5 * vox[i]
    return shape, affine  # type: ignore[return-value]


def _smooth_field(seed: int, points: int, channels: int, std: float) -> np.ndarray:
    """A (channels, P, P, P) grid of N(0, std) control values, from its own seed."""
    return (np.random.default_rng(seed).standard_normal((channels, points, points, points)) * std).astype(np.float32)


def _upsample(coarse: np.ndarray, shape) -> np.ndarray:
    """A smooth field on ``shape`` from a (C, P, P, P) control grid: cubic spline to 4x, then
    trilinear (corners aligned), returned as (C, *shape)."""
    import torch
    import torch.nn.functional as F
    from scipy import ndimage

    mid = torch.from_numpy(ndimage.zoom(coarse, (1, 4, 4, 4), order=3).astype(np.float32))[None]
    return F.interpolate(mid, size=tuple(shape), mode="trilinear", align_corners=True)[0].numpy()


def _render_image_on_label_grid(label_map: LabelMap, params: dict[str, Any]) -> np.ndarray:
    """Class mean + Gaussian texture per voxel, blurred isotropically to the partial volume of the
    acquisition's in-plane voxel (FWHM = fwhm_per_voxel x voxel)."""
    from scipy import ndimage

    labels = label_map.labels
    top = int(labels.max()) + 1
    mean_lut = np.zeros(top, np.float32)
    std_lut = np.zeros(top, np.float32)
    for entry in params["intensities"]:
        for lab in entry["labels"]:
            if 0 <= lab < top:
                mean_lut[lab], std_lut[lab] = entry["mean"], entry["std"]
    texture = np.random.default_rng(params["texture_seed"]).standard_normal(labels.shape, dtype=np.float32)
    image = mean_lut[labels] + std_lut[labels] * texture
    inplane = float(min(params["acquisition"]["voxel_mm"][:2]))
    sigma_mm = params["partial_volume"]["fwhm_per_voxel"] * inplane / 2.3548
    return ndimage.gaussian_filter(image, [sigma_mm / z for z in label_map.zooms], mode="constant").astype(np.float32)


def _warp(source: np.ndarray, index_to_source: np.ndarray, displacement: np.ndarray, shape, mode: str) -> np.ndarray:
    """``source`` sampled at ``index_to_source @ i + displacement[:, i]`` for every index i of
    ``shape`` (coordinates in source voxels), in slabs along the first axis."""
    import torch
    import torch.nn.functional as F

    src = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None, None]
    size = torch.tensor(source.shape, dtype=torch.float32)
    m = torch.from_numpy(index_to_source.astype(np.float32))
    disp = torch.from_numpy(displacement)
    axes = [torch.arange(n, dtype=torch.float32) for n in shape]
    out = np.empty(shape, np.float32)
    step = max(1, CHUNK_POINTS // (shape[1] * shape[2]))
    for start in range(0, shape[0], step):
        i = axes[0][start:start + step]
        coords = (m[:3, 3] + i[:, None, None, None] * m[:3, 0] + axes[1][None, :, None, None] * m[:3, 1]
                  + axes[2][None, None, :, None] * m[:3, 2])
        coords = coords + disp[:, start:start + step].permute(1, 2, 3, 0)
        grid = (2.0 * coords / (size - 1.0).clamp(min=1.0) - 1.0).flip(-1)[None]
        out[start:start + step] = F.grid_sample(src, grid, mode=mode, padding_mode="zeros",
                                                align_corners=True)[0, 0].numpy()
    return out


def render(label_map: LabelMap, params: dict[str, Any], with_labels: bool = False) -> dict[str, Any]:
    """The head drawn with ``params``: ``{"image": float32 array, "affine": 4x4 voxel-to-scanner,
    "labels": the label map on the image grid (only ``with_labels``)}``. Pure and deterministic."""
    from scipy import ndimage

    acq = params["acquisition"]
    points = head_points(label_map)
    pose = pose_matrix(params["pose"], points.mean(axis=0))
    shape, affine = output_grid(points @ pose[:3, :3].T + pose[:3, 3], acq)
    # a 2D scan's slice profile is integrated on a ~1 mm grid along the slice axis (odd factor)
    fine = 1
    if acq["type"] == "2D":
        fine = max(1, int(round(acq["voxel_mm"][2])))
        fine += 1 - fine % 2
    fine_shape = (shape[0], shape[1], shape[2] * fine)
    fine_affine = affine.copy()
    fine_affine[:3, 2] = affine[:3, 2] / fine
    fine_affine[:3, 3] = affine[:3, 3] - affine[:3, 2] * (fine - 1) / (2 * fine)

    to_label_vox = np.linalg.inv(label_map.affine) @ np.linalg.inv(pose)
    el = params["elastic"]  # displacement in scanner mm, expressed in label voxels (linear map)
    ctrl = np.einsum("ij,jxyz->ixyz", to_label_vox[:3, :3],
                     _smooth_field(el["seed"], el["control_points"], 3, el["std_mm"])).astype(np.float32)
    disp = _upsample(ctrl, fine_shape)
    image = _warp(_render_image_on_label_grid(label_map, params), to_label_vox @ fine_affine, disp,
                  fine_shape, "bilinear")
    labels_out = None
    if with_labels:
        centre = slice(fine // 2, None, fine)
        labels_out = _warp(label_map.labels, to_label_vox @ affine,
                           np.ascontiguousarray(disp[:, :, :, centre][:, :, :, : shape[2]]), shape, "nearest")
    del disp
    if fine > 1:  # slice profile: Gaussian of FWHM = slice thickness, then one sample per slice
        sigma = acq["slice_thickness_mm"] / (acq["voxel_mm"][2] / fine) / 2.3548
        image = ndimage.gaussian_filter1d(image, sigma, axis=2, mode="constant")
        image = np.ascontiguousarray(image[:, :, fine // 2::fine][:, :, : shape[2]])
    image = np.clip(image, 0.0, None)

    levels = params["tissue_levels"]
    ref = max(max(e["mean"] for e in params["intensities"]), 1e-6)
    image = (image / ref) ** params["gamma"] * params["gain"]
    bias = params["bias"]
    image *= np.exp(_upsample(_smooth_field(bias["seed"], bias["control_points"], 1, bias["std_log"]), shape)[0])
    brain = (levels["wm"] + levels["gm"]) / 2 / ref
    sigma_n = params["noise"]["std_relative"] * params["gain"] * brain ** params["gamma"]
    noise = np.random.default_rng(params["noise"]["seed"]).standard_normal((2, *shape), dtype=np.float32)
    image = np.sqrt((image + sigma_n * noise[0]) ** 2 + (sigma_n * noise[1]) ** 2)
    image = np.round(np.minimum(image, 32000.0)).astype(np.float32)
    out: dict[str, Any] = {"image": image, "affine": affine}
    if with_labels:
        out["labels"] = labels_out.astype(np.int32)
    return out


replay = render


def synthesize_head(
    label_map: LabelMap,
    rng: np.random.Generator,
    contrast: str = "random",
    classes: list[list[int]] | None = None,
    acquisition: str | None = None,
    with_labels: bool = False,
    iso_mm: tuple[float, float] = ISO_MM,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Draw and render one head: ``(render output, params)``; ``replay(label_map, params)`` repeats it."""
    params = draw_params(rng, label_map, contrast, classes, acquisition, iso_mm)
    return render(label_map, params, with_labels=with_labels), params


def load_generation_classes(folder: str | Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """SynthSeg's ``generation_labels.npy`` and ``generation_classes.npy`` in ``folder`` (None when absent
    or when their lengths differ)."""
    folder = Path(folder)
    lab, cls = folder / "generation_labels.npy", folder / "generation_classes.npy"
    if not (lab.is_file() and cls.is_file()):
        return None, None
    labels, classes = np.load(lab), np.load(cls)
    if labels.shape != classes.shape:
        return None, None
    return labels, classes
