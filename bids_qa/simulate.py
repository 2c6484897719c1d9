"""``bids_qa simulate``: make a BIDS dataset of artifact-corrupted copies of clean scans.

For every structural scan found in CLEAN_DIR (a BIDS dataset or a plain folder of NIfTI files,
found by :func:`bids_qa.discover.discover`), every requested artifact and every level, the scan is
corrupted in 3D and written to OUT_DIR as a valid raw BIDS dataset next to a copy of the clean
scan, with ``simulation.tsv`` recording every parameter and the severity of every output file.

Corruption happens on the normalised scale the artifacts are defined on (0.5th percentile -> 0,
head 99th percentile -> 1; see :mod:`bids_qa.volume`) but without clipping, in the file's own
voxel order (whose axes usually are the scanner's readout/phase/slice axes), and the result is
mapped back to the scan's intensity scale and stored with the original header and data type, so
it looks like a scan from the same scanner.

Output names: the corrupted copy of ``sub-01_ses-1_run-1_T1w.nii.gz`` with noise at SS 0.6 is
``sub-01_ses-1_acq-noise060_run-1_T1w.nii.gz``; an existing ``acq`` label is kept as a prefix
(``acq-mprage`` -> ``acq-mprageNoise060``). See ``docs/simulation.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa import __version__
from bids_qa.errors import ExitCode, FatalError, ScanError

DEFAULT_LEVELS = ("0.3", "0.6", "0.9")
TIER_NAMES = ("moderate", "severe")
TABLE_NAME = "simulation.tsv"
TABLE_COLUMNS = (
    "path", "source", "artifact", "level", "severity", "severity_damage", "damage", "seed", "params",
)  # fmt: skip
#: pybids path pattern for anatomical files (entities in BIDS order).
PATH_PATTERN = (
    "sub-{subject}[/ses-{session}]/anat/sub-{subject}[_ses-{session}][_task-{task}][_acq-{acquisition}]"
    "[_ce-{ceagent}][_rec-{reconstruction}][_run-{run}][_echo-{echo}][_flip-{flip}][_inv-{inversion}]"
    "[_mt-{mtransfer}][_part-{part}][_chunk-{chunk}]_{suffix}{extension}"
)


@dataclass(frozen=True)
class Level:
    """One requested level: an SS in [0, 1], a Loizillon et al. tier, or a uniform random draw."""

    text: str
    severity: float | None = None
    tier: str | None = None

    @property
    def token(self) -> str:
        """The level as it appears in the ``acq`` label: ``060``, ``moderate``, ``random``."""
        if self.severity is not None:
            return f"{int(round(self.severity * 100)):03d}"
        return self.tier or "random"


def parse_level(text: str) -> Level:
    """``0.6`` -> SS 0.6; ``moderate``/``severe`` -> tier; ``random`` -> Table-1 uniform draw."""
    value = text.strip().lower()
    if value in TIER_NAMES:
        return Level(value, tier=value)
    if value == "random":
        return Level(value)
    try:
        s = float(value)
    except ValueError as err:
        raise ValueError(
            f"level {text!r} is neither a severity in [0, 1] nor one of {TIER_NAMES + ('random',)}"
        ) from err
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"severity level {text!r} is outside [0, 1]")
    return Level(value, severity=s)


def artifact_token(artifact: str) -> str:
    """``noise`` -> ``noise``; ``bias+noise`` -> ``biasNoise`` (BIDS labels are alphanumeric)."""
    parts = artifact.split("+")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def output_entities(entities: dict[str, str], artifact: str, level: Level) -> dict[str, str]:
    """Entities of a corrupted copy: the artifact and level go into ``acq``."""
    label = artifact_token(artifact) + level.token
    out = dict(entities)
    acq = entities.get("acquisition")
    out["acquisition"] = acq + label[:1].upper() + label[1:] if acq else label
    return out


def build_output_path(entities: dict[str, str]) -> str:
    """Relative BIDS path for the given entities (pybids ``build_path``)."""
    from bids.layout.writing import build_path

    wanted = {k: v for k, v in entities.items() if v not in (None, "")}
    wanted.setdefault("extension", ".nii.gz")
    path = build_path(wanted, [PATH_PATTERN], strict=False)
    if path is None:
        raise ValueError(f"cannot build a BIDS path from entities {wanted}")
    return path


def scan_entities(scan: Any) -> dict[str, str]:
    """BIDS entities of a discovered scan; plain-NIfTI files without a subject get one made from
    their relative path (alphanumeric characters only)."""
    keep = (
        "subject", "session", "task", "acquisition", "ceagent", "reconstruction", "run", "echo",
        "flip", "inversion", "mtransfer", "part", "chunk", "suffix", "extension",
    )  # fmt: skip
    ent = {k: str(v) for k, v in scan.entities.items() if k in keep and v not in (None, "")}
    if not ent.get("subject"):
        from bids_qa.discover import strip_nifti_extension

        ent["subject"] = (
            "".join(ch for ch in strip_nifti_extension(scan.source) if ch.isalnum()) or "unknown"
        )
    if ent.get("suffix", "unknown") == "unknown":
        ent["suffix"] = "T1w"
    ent["extension"] = ".nii.gz"
    return ent


# --------------------------------------------------------------------------------------------
# Intensity scale
# --------------------------------------------------------------------------------------------


def intensity_scale(raw: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Unclipped normalised image and the ``(lo, hi)`` mapping it back: ``raw = lo + x (hi - lo)``.

    Uses :func:`bids_qa.volume.normalise` (0.5th percentile -> 0, head 99th percentile -> 1) and
    recovers its linear map from voxels it did not clip, so the artifacts see exactly the scale
    they were designed on while values beyond the clip range survive the round trip.
    """
    from bids_qa.volume import NORM_CLIP, normalise

    clipped, _ = normalise(raw)
    inside = (clipped > NORM_CLIP[0]) & (clipped < NORM_CLIP[1])
    xs = clipped[inside].astype(np.float64)
    ys = raw[inside].astype(np.float64)
    if xs.size < 2 or float(xs.max() - xs.min()) == 0.0:
        raise ScanError("simulate", "cannot recover the intensity scale: too few unclipped voxels")
    step = max(1, xs.size // 200_000)
    slope, lo = np.polyfit(xs[::step], ys[::step], 1)
    hi = float(lo + slope)
    norm = ((raw.astype(np.float64) - lo) / slope).astype(np.float32)
    return norm, float(lo), hi


def read_scan(path: Path) -> tuple[Any, np.ndarray]:
    """(nibabel image, float32 array in file voxel order); refuses what cannot be a 3D scan."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises several types for bad files
        raise ScanError(
            "load", f"{path.name} is not a readable NIfTI image ({type(err).__name__}: {err})"
        ) from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise ScanError("load", f"{path.name} has shape {data.shape}; simulate needs one 3D volume")
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    if float(data.max()) == float(data.min()):
        raise ScanError("load", f"{path.name} is constant; nothing to corrupt")
    return img, data


def write_like(img: Any, data: np.ndarray, path: Path) -> None:
    """Save ``data`` with ``img``'s affine, header and on-disk data type (nibabel rescales
    integer types as needed; values are clipped to the type's range)."""
    import nibabel as nib

    header = img.header.copy()
    dtype = np.dtype(img.get_data_dtype())
    out = data.astype(np.float32)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    header.set_data_shape(out.shape)
    new = (
        nib.Nifti1Image(out, img.affine, header)
        if isinstance(img, nib.Nifti1Image)
        else nib.Nifti2Image(out, img.affine, header)
    )
    new.set_data_dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        new.header.set_slope_inter(np.nan, np.nan)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(new, str(path))


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def draw(
    image: np.ndarray,
    artifact: str,
    level: Level,
    rng: np.random.Generator,
    zooms: Sequence[float],
):
    """Corrupt a normalised 3D volume: returns ``(corrupted, ArtifactLabel)``.

    SS levels use :func:`bids_qa.artifacts.sample_params` with that severity (every component of
    a combination at that SS); tiers use :func:`bids_qa.artifact_tiers.sample_tier_params`; ``random``
    draws uniformly (combinations: :func:`bids_qa.artifacts.simulate_combination`).
    """
    from bids_qa import artifact_tiers
    from bids_qa import artifacts as A

    names = artifact.split("+")
    if level.tier is not None:
        bad = [n for n in names if n not in A.TIER_ARTIFACTS]
        if bad:
            raise ValueError(f"tier levels exist only for {A.TIER_ARTIFACTS}, not {bad}")
    if len(names) == 1:
        if level.tier is not None:
            params = artifact_tiers.sample_tier_params(artifact, level.tier, rng, ndim=3)
        else:
            params = A.sample_params(artifact, rng, level.severity, ndim=3)
        out = A.apply_artifact(image, artifact, params, zooms)
        return out, A.ArtifactLabel(
            artifact, A.severity_of(artifact, params), params, level=level.tier
        )
    if level.tier is None and level.severity is None:
        return A.simulate_combination(image, names, rng, zooms)
    ordered = sorted(dict.fromkeys(names), key=A.COMBINATION_ORDER.index)
    comps = []
    for name in ordered:
        if level.tier is not None:
            p = artifact_tiers.sample_tier_params(name, level.tier, rng, ndim=3)
        else:
            p = A.sample_params(name, rng, level.severity, ndim=3)
        comps.append({"artifact": name, "severity": A.severity_of(name, p), "params": p})
    combo = "+".join(ordered)
    params = {"components": comps}
    out = A.apply_artifact(image, combo, params, zooms)
    return out, A.ArtifactLabel(combo, A.severity_of(combo, params), params, level=level.tier)


def stable_seed(seed: int, source: str, artifact: str, level: Level) -> list[int]:
    """Seed sequence for one output: depends only on the seed and the output's identity, so a
    run restricted to some participants reproduces exactly the files of a full run."""
    key = f"{source}\0{artifact}\0{level.text}".encode()
    return [int(seed), zlib.crc32(key)]


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def read_simulation_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``simulation.tsv`` with a ``label`` (:class:`bids_qa.artifacts.ArtifactLabel`)
    rebuilt from the artifact, severity, level and params columns."""
    from bids_qa.artifacts import ArtifactLabel

    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"):
            level = row["level"]
            tier = level if level in ("none", *TIER_NAMES) else None
            row = dict(row)
            row["label"] = ArtifactLabel(
                row["artifact"], float(row["severity"]), json.loads(row["params"]), level=tier
            )
            rows.append(row)
    return rows


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(
            fh,
            fieldnames=TABLE_COLUMNS,
            delimiter="\t",
            lineterminator="\n",
            quoting=csv.QUOTE_NONE,
            escapechar="\\",
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in TABLE_COLUMNS})


TABLE_DESCRIPTION = {
    "path": "output file, relative to this dataset",
    "source": "clean input file, relative to the input folder",
    "artifact": "artifact name, names joined by '+' for combinations, 'none' for the clean copy",
    "level": "requested level: severity score, 'moderate'/'severe' (Loizillon et al. tiers) or 'random'",
    "severity": "severity score SS in [0, 1] of the drawn parameters (see docs/simulation.md)",
    "severity_damage": "damage-based SS in [0, 1]: the damage below through the artifact's "
    "calibration (bids_qa.damage; docs/simulation.md)",
    "damage": "visible damage 1 - SSIM between the corrupted and the clean normalised volume, "
    "inside the head",
    "seed": "seed sequence of the draw, as JSON [seed, crc32(source, artifact, level)]",
    "params": "every drawn parameter as JSON; bids_qa.artifacts.apply_artifact replays them on the "
    "normalised image (normalised exactly as bids_qa.simulate.intensity_scale does)",
}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids_qa simulate",
        description="Write a BIDS dataset of clean scans and simulated-artifact copies, with "
        "simulation.tsv recording every parameter and severity.",
    )
    parser.add_argument(
        "clean_dir",
        help="BIDS dataset (or folder of NIfTI files) with clean scans; never written to",
    )
    parser.add_argument("out_dir", help="output BIDS dataset folder (created)")
    parser.add_argument(
        "--artifacts",
        nargs="+",
        default=None,
        help="artifacts to simulate: noise ghosting bias anisotropy motion contrast, or combinations "
        "such as bias+noise (default: the five of Hays et al.)",
    )
    parser.add_argument(
        "--levels",
        nargs="+",
        default=list(DEFAULT_LEVELS),
        help="severity scores in [0, 1], 'moderate'/'severe' (Loizillon et al. tiers, for motion, noise, "
        f"contrast) or 'random' (default: {' '.join(DEFAULT_LEVELS)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    parser.add_argument(
        "--participant-label",
        nargs="+",
        default=None,
        help="subjects to use (with or without 'sub-')",
    )
    parser.add_argument(
        "--no-clean-copies", action="store_true", help="do not copy the clean scans"
    )
    return parser


def _usage(parser: argparse.ArgumentParser, message: str) -> int:
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return ExitCode.USAGE


def _inside(a: Path, b: Path) -> bool:
    try:
        a.relative_to(b)
        return True
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 ok, 1 some scans failed, 64 usage, 66 no
    input, 73 output not writable)."""
    from bids_qa import artifacts as A
    from bids_qa.discover import discover, normalise_labels

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and ExitCode.USAGE
    clean = Path(args.clean_dir).resolve()
    out = Path(args.out_dir).resolve()
    if not clean.is_dir():
        print(f"bids_qa simulate: input folder {clean} does not exist", file=sys.stderr)
        return ExitCode.NO_INPUT
    if _inside(out, clean) or _inside(clean, out):
        return _usage(
            parser, f"output {out} must lie outside the clean dataset {clean} (and not contain it)"
        )
    artifacts = args.artifacts or list(A.SEVERITY_ARTIFACTS)
    for art in artifacts:
        bad = [n for n in art.split("+") if n not in A.ARTIFACTS]
        if bad:
            return _usage(
                parser, f"unknown artifact(s) {bad}; choose from {', '.join(A.ARTIFACTS)}"
            )
    try:
        levels = [parse_level(v) for v in args.levels]
        labels = normalise_labels(args.participant_label, "sub")
    except ValueError as err:
        return _usage(parser, str(err))
    except FatalError as err:
        return _usage(parser, err.message)
    for art in artifacts:
        for lvl in levels:
            if lvl.tier and any(n not in A.TIER_ARTIFACTS for n in art.split("+")):
                return _usage(
                    parser,
                    f"tier level {lvl.text!r} exists only for {', '.join(A.TIER_ARTIFACTS)}, not {art!r}",
                )
    try:
        found = discover(clean, participant_label=labels)
    except FatalError as err:
        print(f"bids_qa simulate: {err.message}", file=sys.stderr)
        return err.code
    for w in found.warnings:
        print(f"bids_qa simulate: warning: {w}", file=sys.stderr)
    if not found.scans:
        print(f"bids_qa simulate: no structural scans found in {clean}", file=sys.stderr)
        return ExitCode.NO_INPUT
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_dataset_files(out, clean, args)
    except OSError as err:
        print(f"bids_qa simulate: cannot create {out}: {err}", file=sys.stderr)
        return ExitCode.CANT_CREATE

    rows: list[dict[str, Any]] = []
    failures = 0
    for scan in found.scans:
        try:
            rows += _simulate_scan(
                scan, out, artifacts, levels, args.seed, not args.no_clean_copies
            )
        except (ScanError, ValueError, OSError) as err:
            failures += 1
            print(f"bids_qa simulate: {scan.source}: {err}", file=sys.stderr)
    _write_table(out / TABLE_NAME, rows)
    print(
        f"bids_qa simulate: wrote {len(rows)} files for {len(found.scans) - failures} scans to {out}"
    )
    return ExitCode.FAILURE if failures else 0


def _write_dataset_files(out: Path, clean: Path, args: argparse.Namespace) -> None:
    source_name = clean.name
    desc = clean / "dataset_description.json"
    if desc.is_file():
        try:
            source_name = json.loads(desc.read_text(encoding="utf-8")).get("Name", source_name)
        except (OSError, json.JSONDecodeError):
            pass
    description = {
        "Name": f"{source_name} with simulated artifacts (bids_qa simulate)",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "GeneratedBy": [
            {
                "Name": "bids_qa simulate",
                "Version": __version__,
                "Description": f"artifacts {args.artifacts or 'Hays et al. set'}, levels {args.levels}, seed {args.seed}",
            }
        ],
        "SourceDatasets": [{"URL": clean.as_uri()}],
    }
    (out / "dataset_description.json").write_text(
        json.dumps(description, indent=2, sort_keys=True) + "\n"
    )
    (out / ".bidsignore").write_text(f"{TABLE_NAME}\n{Path(TABLE_NAME).stem}.json\n")
    (out / f"{Path(TABLE_NAME).stem}.json").write_text(
        json.dumps(TABLE_DESCRIPTION, indent=2, sort_keys=True) + "\n"
    )


def _sidecar(scan: Any) -> dict[str, Any]:
    if scan.sidecar is None:
        return {}
    try:
        return json.loads(Path(scan.sidecar).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _simulate_scan(
    scan: Any, out: Path, artifacts: list[str], levels: list[Level], seed: int, copy_clean: bool
) -> list[dict[str, Any]]:
    from bids_qa.damage import damage_label
    from bids_qa.volume import NORM_CLIP, head_mask

    img, raw = read_scan(Path(scan.path))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    norm, lo, hi = intensity_scale(raw)
    head = head_mask(np.clip(norm, NORM_CLIP[0], NORM_CLIP[1]))
    entities = scan_entities(scan)
    meta = _sidecar(scan)
    rows = []
    if copy_clean:
        rel = build_output_path(entities)
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if str(scan.path).endswith(".nii.gz"):
            shutil.copyfile(scan.path, target)
        else:
            write_like(img, raw, target)
        if meta:
            target.with_name(target.name.replace(".nii.gz", ".json")).write_text(
                json.dumps(meta, indent=2, sort_keys=True)
            )
        rows.append({"path": rel, "source": scan.source, "artifact": "none", "level": "none", "severity": 0.0,
                     "severity_damage": 0.0, "damage": 0.0, "seed": "", "params": "{}"})  # fmt: skip
    for artifact in artifacts:
        for level in levels:
            seq = stable_seed(seed, scan.source, artifact, level)
            corrupted, label = draw(norm, artifact, level, np.random.default_rng(seq), zooms)
            damage, severity_damage = damage_label(label.artifact, norm, corrupted, head)
            rel = build_output_path(output_entities(entities, artifact, level))
            target = out / rel
            write_like(img, lo + corrupted.astype(np.float64) * (hi - lo), target)
            side = dict(meta)
            side["BidsQASimulation"] = {
                "Source": scan.source,
                "Artifact": label.artifact,
                "Level": level.text,
                "Severity": label.severity,
                "SeverityDamage": severity_damage,
                "Damage": damage,
                "Parameters": label.params,
            }
            target.with_name(target.name.replace(".nii.gz", ".json")).write_text(
                json.dumps(side, indent=2, sort_keys=True)
            )
            rows.append({
                "path": rel,
                "source": scan.source,
                "artifact": label.artifact,
                "level": level.text,
                "severity": label.severity,
                "severity_damage": severity_damage,
                "damage": damage,
                "seed": json.dumps(seq),
                "params": json.dumps(label.params, sort_keys=True),
            })  # fmt: skip
    return rows


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
