"""``bids_qa synthesize``: a BIDS dataset of synthetic heads drawn from whole-head label maps.

``bids_qa synthesize LABEL_DIR OUTPUT_DIR [--n N] [--seed S] [--contrast T1w|T2w|FLAIR|PDw|random]``
draws head ``i`` from label map ``i mod (number of maps)`` (sorted by name) with
``numpy.random.default_rng([S, i])`` (:mod:`bids_qa.synthesis`) and writes it as
``sub-<i>/anat/sub-<i>_<suffix>.nii.gz`` with a JSON sidecar holding ``MRAcquisitionType``,
``SliceThickness`` and every drawn parameter (``SynthesisParameters``; replay with
:func:`bids_qa.synthesis.replay`). The suffix is the contrast asked for; with ``random`` it is the
named contrast whose WM/GM/CSF order is nearest the drawn one (:func:`~bids_qa.synthesis.suffix_for_levels`).

LABEL_DIR holds label maps (``*.nii.gz`` / ``*.nii``, FreeSurfer label values) and optionally
SynthSeg's ``generation_labels.npy`` / ``generation_classes.npy``, which then group labels that
share an intensity (left and right twins are tied either way). Useful as test data for the tool.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bids_qa import __version__
from bids_qa.errors import ExitCode

CONTRAST_CHOICES = ("T1w", "T2w", "FLAIR", "PDw", "random")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids_qa synthesize", description=__doc__.splitlines()[0])
    p.add_argument("label_dir", metavar="LABEL_DIR", help="folder of label maps (*.nii.gz) [+ generation_*.npy]")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="where the BIDS dataset is written")
    p.add_argument("--n", type=int, default=4, help="number of heads (default 4)")
    p.add_argument("--seed", type=int, default=0, help="head i is drawn from default_rng([seed, i])")
    p.add_argument("--contrast", choices=CONTRAST_CHOICES, default="random", help="tissue order (default random)")
    p.add_argument("--acquisition", choices=("3d", "2d", "random"), default="random",
                   help="3D isotropic, 2D thick slices, or drawn per head (default)")
    return p


def label_map_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".nii.gz", ".nii")))


def write_head(out_dir: Path, subject: str, image: np.ndarray, affine: np.ndarray, sidecar: dict) -> Path:
    """Write one head (int16, qform/sform set) and its sidecar; returns the image path."""
    import nibabel as nib

    anat = out_dir / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{subject}_{sidecar['SynthesisParameters']['suffix']}"
    img = nib.Nifti1Image(np.clip(image, 0, 32767).astype(np.int16), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(anat / f"{stem}.nii.gz"))
    (anat / f"{stem}.json").write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
    return anat / f"{stem}.nii.gz"


def main(argv: list[str] | None = None) -> int:
    from bids_qa import synthesis

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and ExitCode.USAGE
    if args.n < 1:
        print("bids_qa synthesize: --n must be at least 1", file=sys.stderr)
        return ExitCode.USAGE
    label_dir, out_dir = Path(args.label_dir), Path(args.output_dir)
    maps = label_map_files(label_dir) if label_dir.is_dir() else []
    if not maps:
        print(f"bids_qa synthesize: no label map (*.nii.gz, *.nii) in {label_dir}", file=sys.stderr)
        return ExitCode.NO_INPUT
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"bids_qa synthesize: cannot create {out_dir}: {err}", file=sys.stderr)
        return ExitCode.CANT_CREATE
    gen_labels, gen_classes = synthesis.load_generation_classes(label_dir)
    acquisition = None if args.acquisition == "random" else args.acquisition
    width = max(2, len(str(args.n)))
    rows = ["participant_id\tlabel_map\tsuffix\tcomponent\tacquisition"]
    loaded: dict[Path, tuple[synthesis.LabelMap, list[list[int]]]] = {}
    for i in range(args.n):
        path = maps[i % len(maps)]
        if path not in loaded:
            try:
                lm = synthesis.load_label_map(path)
            except Exception as err:  # one bad map must not stop the others
                print(f"bids_qa synthesize: skipping {path.name}: {err}", file=sys.stderr)
                continue
            present = np.unique(lm.labels).astype(int).tolist()
            loaded[path] = (lm, synthesis.label_classes(present, gen_labels, gen_classes))
        lm, classes = loaded[path]
        rng = np.random.default_rng([args.seed, i])
        out, params = synthesis.synthesize_head(lm, rng, args.contrast, classes, acquisition)
        acq = params["acquisition"]
        subject = f"{i + 1:0{width}d}"
        sidecar = {
            "MRAcquisitionType": acq["type"],
            "SliceThickness": round(acq["slice_thickness_mm"], 4),
            "SynthesisParameters": params,
            "SynthesisLabelMap": path.name,
            "SynthesisSeed": [args.seed, i],
            "SynthesisMethod": "bids_qa.synthesis (domain randomisation after Billot et al., "
            "Medical Image Analysis 2023)",
        }
        write_head(out_dir, subject, out["image"], out["affine"], sidecar)
        rows.append(f"sub-{subject}\t{path.name}\t{params['suffix']}\t{params['component']}\t{acq['type']}")
        print(f"sub-{subject}: {params['suffix']} ({params['component']}, {acq['type']} {acq['plane']}, "
              f"{'x'.join(f'{v:.2f}' for v in acq['voxel_mm'])} mm) from {path.name}", flush=True)
    if len(rows) == 1:
        print("bids_qa synthesize: no head written", file=sys.stderr)
        return ExitCode.NO_INPUT
    description = {
        "Name": f"bids_qa synthetic heads ({args.contrast}, seed {args.seed})",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": "bids_qa synthesize", "Version": __version__}],
        "HowToAcknowledge": "Synthetic heads drawn by domain randomisation after Billot et al., Medical Image "
        "Analysis 2023, from the label maps in " + label_dir.name + "; credit their source and licence.",
    }
    (out_dir / "dataset_description.json").write_text(json.dumps(description, indent=2), encoding="utf-8")
    (out_dir / "participants.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (out_dir / "README").write_text(
        "Synthetic heads written by `bids_qa synthesize` (see docs/simulation.md, 'Synthetic heads'). "
        "Each sidecar's SynthesisParameters replays its image with bids_qa.synthesis.replay.\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
