"""Clean training and validation volumes: the real-data manifest and synthetic MNI-based brains.

Real data: ``manifest.json`` (next to this module) lists every clean volume we may use, by subject,
with its split, license and attribution. Paths are relative to the data folder given on the
command line (``--data``; the layout of ``shared/data``). The split is by subject, so no subject
contributes to both training and validation. Shipped weights are trained only on the ``train``
split, which holds permissively licensed data (CC-BY, PDDL, BSD-2, Apache-2.0); the GPL-2 ISBI 2015
volumes are validation only; the MIT spinal-cord scans are flagged ``out_of_scope`` (non-brain
fields of view, for checking that the flow model calls them atypical). The preprocessed
``open_ms_data_crosssectional_processed`` folder is never listed.

Synthetic data: :func:`synthetic_volumes` paints nilearn's MNI152 tissue probability maps with
random tissue intensities in T1w-, T2w-, FLAIR- or PD-like orderings, adds a synthetic CSF rim,
skull and scalp (the MNI template is skull-stripped, real scans are not), light noise, and a mild
random affine and elastic deformation (TorchIO's fixed ``Affine`` / ``ElasticDeformation``, with
parameters drawn from the caller's generator). They add anatomical and contrast diversity; they
are not meant to look like any particular scanner.

Synthetic heads from label maps (:class:`SyntheticMix`, ``--synthetic-share F --label-maps DIR`` on
every ``bids_qa train`` command): :func:`clean_volumes` then returns a share F of heads drawn by
:mod:`bids_qa.synthesis` from the manifest's ``label_maps`` of the split (or DIR) among its volumes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa.volume import Volume, load_volume, volume_from_array

MANIFEST_PATH = Path(__file__).with_name("manifest.json")
SPLITS = ("train", "validation")

#: Relative tissue intensities (WM, GM, CSF, skull, scalp) per contrast; each synthetic volume
#: multiplies them by independent U[0.85, 1.15] factors, which keeps the contrast's ordering of
#: the main tissues in nearly all draws.
CONTRASTS: dict[str, dict[str, float]] = {
    "T1w": {"wm": 0.85, "gm": 0.55, "csf": 0.18, "skull": 0.08, "scalp": 1.0},
    "T2w": {"wm": 0.35, "gm": 0.50, "csf": 1.00, "skull": 0.05, "scalp": 0.60},
    "FLAIR": {"wm": 0.42, "gm": 0.58, "csf": 0.08, "skull": 0.05, "scalp": 0.75},
    "PDw": {"wm": 0.62, "gm": 0.78, "csf": 0.88, "skull": 0.10, "scalp": 0.85},
}


def load_manifest(path: str | Path | None = None) -> dict[str, Any]:
    """The manifest as a dict: ``{"description", "version", "excluded_folders", "entries"}``.

    Each entry has ``path`` (relative to the data folder), ``folder``, ``subject``, ``suffix``,
    ``split`` (``train``/``validation``), ``license``, ``attribution``, ``body_part`` and
    ``out_of_scope``; some have ``session`` and ``note``.
    """
    p = Path(path) if path is not None else MANIFEST_PATH
    manifest = json.loads(p.read_text())
    for entry in manifest["entries"]:
        if entry["split"] not in SPLITS:
            raise ValueError(f"manifest entry {entry['path']} has unknown split {entry['split']!r}")
    return manifest


def manifest_entries(split: str, *, include_out_of_scope: bool = False) -> list[dict[str, Any]]:
    """Entries of one split (out-of-scope, non-brain scans only when asked for)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return [
        e
        for e in load_manifest()["entries"]
        if e["split"] == split and (include_out_of_scope or not e.get("out_of_scope", False))
    ]


@dataclass(frozen=True)
class SyntheticMix:
    """Share of synthetic heads among the clean volumes (0: real volumes only, the old behaviour;
    1: synthetic only) and where their label maps come from (None: the manifest's ``label_maps`` of
    the split, under the data folder). Saved with the training settings."""

    share: float = 0.0
    label_maps: str | None = None
    seed: int = 0


#: Contrasts the synthetic heads of a mix cycle through.
MIX_CONTRASTS = ("T1w", "T2w", "FLAIR", "PDw", "random")
#: 3D voxel sizes of training heads: real training volumes are about 1 mm; finer heads cost memory.
MIX_ISO_MM = (1.0, 1.5)


def add_synthetic_mix_arguments(parser) -> None:
    """``--synthetic-share`` and ``--label-maps`` (every ``bids_qa train`` command)."""
    parser.add_argument(
        "--synthetic-share",
        type=float,
        default=0.0,
        metavar="F",
        help="share of the clean volumes that are synthetic heads drawn from label maps "
        "(0: real volumes only; 1: synthetic only)",
    )
    parser.add_argument(
        "--label-maps",
        default=None,
        metavar="DIR",
        help="folder of label maps for the synthetic heads (default: the manifest's label_maps "
        "of each split under --data)",
    )


def synthetic_mix(settings) -> SyntheticMix:
    """The mix of a run's settings (anything with ``synthetic_share``, ``label_maps``, ``seed``)."""
    share = float(getattr(settings, "synthetic_share", 0.0))
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"--synthetic-share must lie in [0, 1], got {share}")
    return SyntheticMix(share, getattr(settings, "label_maps", None), int(getattr(settings, "seed", 0)))


def mix_count(n_real: int, share: float) -> int:
    """Synthetic heads to add to ``n_real`` volumes so that they make ``share`` of the total
    (share 1: as many heads as there were real volumes, at least one)."""
    if share <= 0.0:
        return 0
    if share >= 1.0:
        return max(1, n_real)
    return max(1, int(round(share / (1.0 - share) * n_real)))


def label_map_sources(data_dir: str | Path, split: str, label_maps: str | None = None):
    """(label map paths, generation_labels, generation_classes, licence, attribution) for a split."""
    from bids_qa.synthesis import load_generation_classes

    if label_maps:
        folder = Path(label_maps)
        paths = sorted(p for p in folder.glob("*.nii*") if p.name.endswith((".nii", ".nii.gz")))
        labels, classes = load_generation_classes(folder)
        return paths, labels, classes, f"as the label maps in {folder}", f"label maps in {folder}"
    info = load_manifest().get("label_maps") or {}
    root = Path(data_dir)
    paths = [root / e["path"] for e in info.get("entries", []) if e.get("split") == split]
    labels = classes = None
    if info.get("labels") and info.get("classes"):
        lab, cls = root / info["labels"], root / info["classes"]
        if lab.is_file() and cls.is_file():
            labels, classes = np.load(lab), np.load(cls)
    return paths, labels, classes, info.get("license", ""), info.get("attribution", "")


def synthetic_head_volumes(
    data_dir: str | Path, split: str, n: int, mix: SyntheticMix
) -> list[tuple[dict[str, Any], Volume]]:
    """``n`` synthetic heads as ``(entry, Volume)`` pairs: head ``i`` from label map ``i mod maps``,
    contrast ``MIX_CONTRASTS[i mod 5]``, drawn from ``default_rng([seed, split, i])``; the entry
    holds the drawn parameters (``synthesis``)."""
    from bids_qa import synthesis

    paths, gen_labels, gen_classes, licence, attribution = label_map_sources(data_dir, split, mix.label_maps)
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise FileNotFoundError(
            f"synthetic heads for split {split!r} need label maps: "
            + (f"missing {', '.join(missing[:3])}" if missing else "none found")
            + " (--label-maps DIR or --data with the shared/data layout)"
        )
    out = []
    maps: dict[Path, tuple[Any, list[list[int]]]] = {}
    for i in range(n):
        path = paths[i % len(paths)]
        if path not in maps:
            lm = synthesis.load_label_map(path)
            present = np.unique(lm.labels).astype(int).tolist()
            maps[path] = (lm, synthesis.label_classes(present, gen_labels, gen_classes))
        lm, classes = maps[path]
        rng = np.random.default_rng([mix.seed, SPLITS.index(split), i])
        head, params = synthesis.synthesize_head(
            lm, rng, MIX_CONTRASTS[i % len(MIX_CONTRASTS)], classes, iso_mm=MIX_ISO_MM
        )
        volume = _volume_from_head(head["image"], head["affine"])
        stem = path.name.split(".")[0]
        entry = {
            "path": f"synthetic/{stem}/{i:03d}_{params['suffix']}",
            "folder": "synthetic_heads",
            "subject": f"synthetic/{stem}",
            "suffix": params["suffix"],
            "split": split,
            "license": licence,
            "attribution": attribution,
            "body_part": "brain",
            "out_of_scope": False,
            "synthetic": True,
            "synthesis": params,
        }
        out.append((entry, volume))
    return out


def _volume_from_head(image: np.ndarray, affine: np.ndarray) -> Volume:
    """A head in RAS+ voxel order, as :func:`~bids_qa.volume.load_volume` would read its file."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(image, affine))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return volume_from_array(np.asanyarray(img.dataobj, dtype=np.float32), zooms)  # type: ignore[arg-type]


def clean_volumes(
    data_dir: str | Path,
    split: str,
    *,
    include_out_of_scope: bool = False,
    mix: SyntheticMix | None = None,
    exclude_folders: Sequence[str] = (),
) -> list[tuple[dict[str, Any], Volume]]:
    """Load every clean volume of a split as ``(entry, Volume)`` pairs, in manifest order, then
    (``mix``) synthetic heads so that they make ``mix.share`` of the in-scope volumes (share 1:
    the real in-scope volumes are replaced by as many heads).

    ``exclude_folders`` leaves whole sources out, unread (a leave-one-site-out run); the number
    of synthetic heads is still that of the whole split, so such a run differs from the full one
    by the site alone.

    Raises
    ------
    FileNotFoundError
        If a listed file is missing, naming all missing files and the folder searched (the data
        folder must have the ``shared/data`` layout).
    """
    root = Path(data_dir)
    entries = manifest_entries(split, include_out_of_scope=include_out_of_scope)
    share = mix.share if mix is not None else 0.0
    n_real = sum(not e.get("out_of_scope", False) for e in entries)
    if share >= 1.0:
        entries = [e for e in entries if e.get("out_of_scope", False)]
    excluded = set(exclude_folders)
    entries = [e for e in entries if e.get("folder") not in excluded]
    missing = [e["path"] for e in entries if not (root / e["path"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(entries)} {split} volumes are missing under {root}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
            "(--data must point at the folder laid out like shared/data)"
        )
    real = [(e, load_volume(root / e["path"])) for e in entries]
    if mix is None or share <= 0.0:
        return real
    return real + synthetic_head_volumes(root, split, mix_count(n_real, share), mix)


#: nilearn's bundled MNI ICBM152 2009a (symmetric) maps, read directly with nibabel: importing
#: nilearn.datasets and its resampling to 2 mm take seconds, a block average takes milliseconds.
_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _mni_file(key: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed; it provides the MNI152 tissue maps")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / _MNI_FILES[key]
    if not path.is_file():
        raise FileNotFoundError(f"nilearn's MNI152 map {path} is missing")
    return path


def _block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return data
    shape = [s // factor for s in data.shape]
    crop = data[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    return crop.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


@lru_cache(maxsize=2)
def _mni_tissues(
    resolution: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(GM probability, WM probability, brain mask, zooms) from nilearn's bundled MNI152 maps.

    Same maps as ``nilearn.datasets.load_mni152_gm_template`` / ``_wm_template`` (rescaled to a
    maximum of 1) and ``load_mni152_brain_mask`` (T1 template / max > 0.2), at 1 mm or block-
    averaged to ``resolution`` mm.
    """
    import nibabel as nib

    if resolution not in (1, 2, 3, 4):
        raise ValueError(f"resolution must be 1, 2, 3 or 4 mm, not {resolution!r}")
    maps = {}
    for key in _MNI_FILES:
        img = nib.load(str(_mni_file(key)))
        data = np.asarray(img.dataobj, dtype=np.float32)
        maps[key] = _block_mean(data / data.max(), resolution)
    zooms = tuple(float(z) * resolution for z in img.header.get_zooms()[:3])
    brain = maps["t1"] > 0.2
    return np.clip(maps["gm"], 0, 1), np.clip(maps["wm"], 0, 1), brain, zooms  # type: ignore[return-value]


def synthetic_head(
    rng: np.random.Generator,
    contrast: str | None = None,
    resolution: int = 2,
    deform: bool = True,
) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """One synthetic head image (raw scale), its voxel sizes and its contrast name.

    Tissue maps: GM and WM probabilities from MNI152; CSF = brain mask minus both, plus a rim
    0-2.5 mm outside the brain; skull from 2.5 to 6-8 mm; scalp to 10-14 mm (thicknesses drawn
    per volume). Intensities from :data:`CONTRASTS` with +-15% per-tissue jitter, a 1-voxel
    Gaussian partial-volume blur, Rician noise at 1-2% of the WM-GM mean, then (``deform``) a
    random affine (scales 0.9-1.1, rotations +-10 deg, translations +-5 mm) and an elastic
    deformation (7^3 control points, up to 4 mm).
    """
    from scipy import ndimage

    gm, wm, brain, zooms = _mni_tissues(resolution)
    name = contrast if contrast is not None else str(rng.choice(sorted(CONTRASTS)))
    if name not in CONTRASTS:
        raise ValueError(f"unknown contrast {name!r}; choose from {sorted(CONTRASTS)}")
    levels = {k: v * float(rng.uniform(0.85, 1.15)) for k, v in CONTRASTS[name].items()}

    dist = ndimage.distance_transform_edt(~brain, sampling=zooms).astype(np.float32)
    skull_in = 2.5
    skull_out = float(rng.uniform(6.0, 8.0))
    scalp_out = skull_out + float(rng.uniform(4.0, 6.0))
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    csf[(dist > 0) & (dist <= skull_in)] = 1.0
    skull = ((dist > skull_in) & (dist <= skull_out)).astype(np.float32)
    scalp = ((dist > skull_out) & (dist <= scalp_out)).astype(np.float32)
    img = (
        levels["wm"] * wm
        + levels["gm"] * gm
        + levels["csf"] * csf
        + levels["skull"] * skull
        + levels["scalp"] * scalp
    )
    img = ndimage.gaussian_filter(img, sigma=0.6).astype(np.float32)
    sigma = float(rng.uniform(0.01, 0.02)) * (levels["wm"] + levels["gm"]) / 2
    noise = rng.standard_normal((2, *img.shape), dtype=np.float32) * sigma
    img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)
    if deform:
        img = _random_deformation(img, zooms, rng)
    return img.astype(np.float32), zooms, name


def _random_deformation(
    img: np.ndarray, zooms: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """Mild random affine then elastic deformation, drawn with ``rng``, applied with TorchIO's
    fixed transforms (no global random state involved)."""
    import torch
    import torchio as tio

    image = tio.ScalarImage(tensor=torch.from_numpy(img)[None], affine=np.diag([*zooms, 1.0]))
    affine = tio.Affine(
        scales=tuple(float(s) for s in rng.uniform(0.9, 1.1, 3)),
        degrees=tuple(float(d) for d in rng.uniform(-10, 10, 3)),
        translation=tuple(float(t) for t in rng.uniform(-5, 5, 3)),
        default_pad_value=0.0,
    )
    with torch.random.fork_rng(devices=[]):  # TorchIO draws torch.rand(1) per call: keep it local
        image = affine(image)
    control = rng.uniform(-1.0, 1.0, size=(7, 7, 7, 3)).astype(np.float32) * 4.0
    control[[0, -1]] = 0
    control[:, [0, -1]] = 0
    control[:, :, [0, -1]] = 0
    elastic = tio.ElasticDeformation(control_points=control, max_displacement=(4.0, 4.0, 4.0))
    with torch.random.fork_rng(devices=[]):
        image = elastic(image)
    return np.clip(image.data[0].numpy(), 0, None)


def synthetic_volumes(
    n: int,
    rng: np.random.Generator,
    *,
    resolution: int = 2,
    contrasts: tuple[str, ...] | None = None,
) -> list[tuple[dict[str, Any], Volume]]:
    """``n`` synthetic multi-contrast heads as ``(entry, Volume)`` pairs (like :func:`clean_volumes`).

    Entries carry ``path`` ``"synthetic/<i>_<contrast>"``, ``suffix``, ``license`` (the MNI152
    ICBM 2009 maps shipped by nilearn) and ``synthetic: True``. Contrasts cycle through
    ``contrasts`` (default: all of :data:`CONTRASTS`) so every contrast is represented.
    """
    names = tuple(contrasts) if contrasts else tuple(sorted(CONTRASTS))
    out = []
    for i in range(n):
        img, zooms, name = synthetic_head(
            rng, contrast=names[i % len(names)], resolution=resolution
        )
        entry = {
            "path": f"synthetic/{i:03d}_{name}",
            "folder": "synthetic",
            "subject": f"synthetic/{i:03d}",
            "suffix": name,
            "split": "train",
            "license": "MNI ICBM152 2009 (nilearn bundle; free use with copyright notice)",
            "attribution": "Fonov V et al. NeuroImage 2011, doi:10.1016/j.neuroimage.2010.07.033",
            "body_part": "brain",
            "out_of_scope": False,
            "synthetic": True,
        }
        out.append((entry, volume_from_array(img, zooms)))
    return out
