"""``bids_qa demo OUT``: build a small BIDS dataset from the MNI template and assess it.

The dataset (in ``OUT/bids``) has a few subjects with a T1w scan (the MNI152 template nilearn
ships, so nothing is downloaded) and a synthetic T2w-like scan made from the template's tissue
maps. Two scans are corrupted on purpose so the outputs have something to show:

* ``sub-02_T1w``: strong Rician noise (noise sigma 15% of the white-matter intensity);
* ``sub-02_T2w``: ghosting along the phase-encoding (A-P) axis, made with TorchIO's ``Ghosting``
  transform (4 ghosts, intensity 0.8).

Both levels of the BIDS-App then run on it (outputs in ``OUT/qa``), exactly as
``bids_qa OUT/bids OUT/qa participant`` and ``... group`` would, and the paths of the results are
printed. At 2 mm the whole demo takes well under a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_qa.errors import ExitCode

#: Noise sigma of the noisy scan, as a fraction of the white-matter intensity.
NOISY_SIGMA = 0.15
#: Noise sigma of every other scan (a clean but realistic magnitude image).
CLEAN_SIGMA = 0.01
#: Ghosting of the ghosted scan (TorchIO ``Ghosting`` parameters).
GHOSTS = {"num_ghosts": 4, "axis": 1, "intensity": 0.8, "restore": 0.02}
#: Stored intensity of white matter (int16 images, as scanners write them).
WM_LEVEL = 1000.0


@dataclass(frozen=True)
class DemoScan:
    """One image of the demo dataset and what was done to it."""

    path: Path
    description: str


#: nilearn's shipped 1 mm MNI152 (ICBM 2009a symmetric) files, read directly when present: importing
#: ``nilearn.datasets`` pulls in scikit-learn, which costs seconds on every demo and test start.
_NILEARN_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
#: nilearn's brain-mask rule: template (scaled to max 1) above this value.
BRAIN_THRESHOLD = 0.2


@functools.lru_cache(maxsize=1)
def _load_1mm_templates() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The 1 mm T1w, GM and WM templates nilearn ships (scaled to max 1) and their affine.

    Cached (read once per process); callers must not modify the arrays.
    """
    import importlib.util

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    folder = (
        Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        if spec and spec.submodule_search_locations
        else None
    )
    if folder is not None and all((folder / f).is_file() for f in _NILEARN_FILES.values()):
        images = {k: nib.load(str(folder / f)) for k, f in _NILEARN_FILES.items()}
    else:  # another nilearn layout: use its public loaders
        from nilearn import datasets

        images = {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1),
        }
    arrays = {}
    for key, img in images.items():
        arr = np.asarray(img.get_fdata(), dtype=np.float32)
        arrays[key] = arr / max(float(arr.max()), 1e-6)
    return arrays, np.array(images["t1"].affine, dtype=np.float64)


def resample_isotropic(arr: np.ndarray, voxel_size: float) -> np.ndarray:
    """Box-average a 1 mm array over ``voxel_size`` mm and sample it every ``voxel_size`` voxels
    (linear interpolation), i.e. what a coarser acquisition of the same object would record."""
    from scipy import ndimage

    if abs(voxel_size - 1.0) < 1e-6:
        return arr.astype(np.float32)
    size = max(1, int(round(voxel_size)))
    smooth = ndimage.uniform_filter(arr.astype(np.float32), size=size, mode="constant")
    shape = tuple(int((n - 1) // voxel_size) + 1 for n in arr.shape)
    return ndimage.affine_transform(
        smooth, np.full(3, voxel_size), output_shape=shape, order=1, prefilter=False
    ).astype(np.float32)


def template_maps(
    voxel_size: float = 2.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1w template, GM and WM maps, brain mask (float32 in [0, 1]) and affine at ``voxel_size`` mm.

    The source is nilearn's 1 mm MNI152 template (no download); the brain mask follows nilearn's
    rule (template > 0.2).
    """
    if not voxel_size > 0:
        raise ValueError(f"voxel size must be positive, got {voxel_size}")
    arrays, affine = _load_1mm_templates()
    maps = {k: np.clip(resample_isotropic(v, voxel_size), 0, 1) for k, v in arrays.items()}
    brain = (maps["t1"] > BRAIN_THRESHOLD).astype(np.float32)
    out_affine = affine @ np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    return maps["t1"], maps["gm"], maps["wm"], brain, out_affine


def t2_like(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """A T2w-like image from tissue maps: dark WM, grey GM, bright CSF (inside the brain mask)."""
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return (0.35 * wm + 0.6 * gm + 1.0 * csf).astype(np.float32)


def add_rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise (what an MR magnitude image holds)."""
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def add_ghosting(image: np.ndarray) -> np.ndarray:
    """TorchIO ghosting with the fixed :data:`GHOSTS` parameters (deterministic).

    TorchIO returns the real part of the inverse FFT; a scanner stores the magnitude, so the
    absolute value is taken (the ghosts' negative lobes stay visible, as on a real scan).
    """
    import torchio as tio

    transform = tio.Ghosting(**GHOSTS)
    out = transform(tio.ScalarImage(tensor=image[None].astype(np.float32), affine=np.eye(4)))
    return np.abs(np.asarray(out.data[0].numpy(), dtype=np.float32))


def _scale_to_wm(image: np.ndarray, wm: np.ndarray) -> np.ndarray:
    level = float(np.median(image[wm > 0.9])) if (wm > 0.9).any() else float(image.max())
    return image / max(level, 1e-6)


def make_demo_dataset(
    bids_dir: str | Path, n_subjects: int = 2, voxel_size: float = 2.0, seed: int = 0
) -> list[DemoScan]:
    """Write the demo BIDS dataset; returns the images with a description of each.

    Parameters
    ----------
    bids_dir
        Folder to write (created; existing demo files are replaced).
    n_subjects
        At least 2: ``sub-02`` holds the corrupted scans, the others are clean.
    voxel_size
        Isotropic voxel size in mm (the template is 2 mm; other sizes are resampled).
    seed
        Seed of the ``numpy.random.Generator`` drawing the noise.
    """
    import nibabel as nib

    if n_subjects < 2:
        raise ValueError(
            f"the demo needs at least 2 subjects (sub-02 holds the corrupted scans), got {n_subjects}"
        )
    rng = np.random.default_rng(seed)
    bids_dir = Path(bids_dir)
    bids_dir.mkdir(parents=True, exist_ok=True)
    t1, gm, wm, brain, affine = template_maps(voxel_size)
    t1 = _scale_to_wm(t1, wm)
    t2 = t2_like(gm, wm, brain)  # CSF at 1, like the T1w's white matter
    (bids_dir / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "bids_qa demo (MNI152 template with simulated artifacts)",
                "BIDSVersion": "1.9.0",
                "DatasetType": "raw",
                "License": "see nilearn's MNI152 template licence",
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    (bids_dir / "README").write_text(
        "Synthetic dataset written by `bids_qa demo`: the MNI152 template (T1w) and a T2w-like image made from "
        "its tissue maps. sub-02_T1w has strong Rician noise, sub-02_T2w has TorchIO ghosting.\n",
        encoding="utf-8",
    )
    lines = ["participant_id"] + [f"sub-{i:02d}" for i in range(1, n_subjects + 1)]
    (bids_dir / "participants.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    written: list[DemoScan] = []
    for i in range(1, n_subjects + 1):
        sub = f"sub-{i:02d}"
        anat = bids_dir / sub / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        gain = float(rng.uniform(0.9, 1.1))
        for suffix, base, meta in (
            ("T1w", t1, {"RepetitionTime": 2.3, "EchoTime": 0.00298, "InversionTime": 0.9}),
            ("T2w", t2, {"RepetitionTime": 3.2, "EchoTime": 0.409}),
        ):
            image = base * gain
            description = f"clean {suffix} (noise sigma {CLEAN_SIGMA:.0%} of WM)"
            if sub == "sub-02" and suffix == "T1w":
                image = add_rician_noise(image, NOISY_SIGMA * gain, rng)
                description = f"T1w with strong Rician noise (sigma {NOISY_SIGMA:.0%} of WM)"
            else:
                image = add_rician_noise(image, CLEAN_SIGMA * gain, rng)
                if sub == "sub-02" and suffix == "T2w":
                    image = add_ghosting(image)
                    description = (
                        f"T2w with TorchIO ghosting ({GHOSTS['num_ghosts']} ghosts along the A-P axis, "
                        f"intensity {GHOSTS['intensity']})"
                    )
            data = np.clip(np.round(image * WM_LEVEL), 0, 32767).astype(np.int16)
            path = anat / f"{sub}_{suffix}.nii.gz"
            img = nib.Nifti1Image(data, affine)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(path))
            sidecar = {
                "Manufacturer": "bids_qa demo",
                "MagneticFieldStrength": 3,
                "MRAcquisitionType": "3D",
                **meta,
            }
            path.with_name(f"{sub}_{suffix}.json").write_text(
                json.dumps(sidecar, indent=2) + "\n", encoding="utf-8"
            )
            written.append(DemoScan(path, description))
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_qa demo",
        description="Build a small demo BIDS dataset (MNI template, one noisy and one ghosted scan) in OUT/bids, "
        "assess it into OUT/qa (participant and group levels) and print where the results are.",
    )
    parser.add_argument("out", metavar="OUT", help="folder for the demo dataset and its outputs")
    parser.add_argument(
        "--subjects", type=int, default=2, help="number of subjects (at least 2; default 2)"
    )
    parser.add_argument(
        "--voxel-size", type=float, default=2.0, help="isotropic voxel size in mm (default 2)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the simulated noise (default 0)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument(
        "--nprocs", type=int, default=None, help="loading threads (default: available CPUs)"
    )
    parser.add_argument("--no-reports", action="store_true", help="skip the HTML reports")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print the summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns 0 on success, else the failing level's exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exit_:
        return int(exit_.code or 0) if exit_.code in (0, None) else ExitCode.USAGE
    from bids_qa import cli
    from bids_qa.derivatives import group_paths, read_group_table

    out = Path(args.out).expanduser().absolute()
    bids_dir, qa_dir = out / "bids", out / "qa"
    try:
        scans = make_demo_dataset(bids_dir, args.subjects, args.voxel_size, args.seed)
    except (ValueError, OSError) as err:
        print(f"bids_qa demo: {err}", file=sys.stderr)
        return ExitCode.USAGE if isinstance(err, ValueError) else ExitCode.CANT_CREATE
    print(f"demo dataset: {bids_dir}")
    for scan in scans:
        print(f"  {scan.path.relative_to(bids_dir)}: {scan.description}")
    common = ["--device", args.device]
    if args.nprocs is not None:
        common += ["--nprocs", str(args.nprocs)]
    if args.no_reports:
        common.append("--no-reports")
    if args.quiet:
        common.append("-q")
    for level in ("participant", "group"):
        code = cli.main([str(bids_dir), str(qa_dir), level, *common])
        if code != 0:
            print(
                f"bids_qa demo: the {level} level ended with exit code {code}; see {qa_dir / 'logs'}",
                file=sys.stderr,
            )
            return code

    print(f"\nresults: {qa_dir}")
    for suffix in ("T1w", "T2w"):
        paths = group_paths(qa_dir, suffix)
        if not paths.tsv.is_file():
            continue
        table = read_group_table(qa_dir, suffix)
        print(
            f"  {paths.tsv.name}"
            + (f"  (report: {paths.html.name})" if paths.html.is_file() else "")
        )
        for _, row in table.iterrows():
            reasons = row["reasons"] if isinstance(row["reasons"], str) else ""
            print(f"    {row['scan_id']:<16} {row['verdict']:<7} {reasons[:110]}")
    reports = sorted(qa_dir.rglob("*_report.html"))
    if reports:
        print(f"  per-scan reports: {len(reports)}, e.g. {reports[0]}")
    print(f"  logs: {qa_dir / 'logs'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
