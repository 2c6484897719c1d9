"""Everything about output files: their names, atomic writing, resume, and reading them back.

Layout (see ``docs/outputs.md`` for every column and key)::

    OUTPUT_DIR/
      dataset_description.json
      sub-<label>/[ses-<label>/]anat/<scan_id>_qa.tsv      one row per metric
      sub-<label>/[ses-<label>/]anat/<scan_id>_qa.json     sidecar: scan, verdict, provenance, ...
      sub-<label>/[ses-<label>/]anat/<scan_id>_slices.tsv  per-slice values (when any)
      sub-<label>/[ses-<label>/]anat/<scan_id>_report.html (written by bids_qa.reports)
      nonbids/<relative folder>/<scan_id>_qa.*             plain-NIfTI scans without a subject
      group_<suffix>.tsv / group_<suffix>.json / group_<suffix>.html
      logs/bids_qa_<level>_<time>_<host>_<pid>.log

Every path is built by :func:`scan_paths` / :func:`group_paths` from the scan's entities; no other
module assembles output names. Every file is written to a hidden temporary file in the same folder
and renamed over the target (:func:`bids_qa.io.atomic_write_bytes`), so a reader — or a killed run — never
sees a half-written file under a final name, and two jobs writing into one output folder cannot
interleave their bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bids_qa import __version__
from bids_qa.io import (  # the writing API of the derivatives, re-exported
    MISSING,  # noqa: F401
    atomic_write_bytes,  # noqa: F401
    atomic_write_text,  # noqa: F401
    cleanup_stale_temp,  # noqa: F401
    dumps_json,  # noqa: F401
    format_value,  # noqa: F401
    host_tag,  # noqa: F401
    json_ready,  # noqa: F401
    parse_number,
    png_bytes,  # noqa: F401
    read_json_object,  # noqa: F401
    read_slices_tsv,
    render_tsv,  # noqa: F401
    write_json,  # noqa: F401
    write_tsv,  # noqa: F401
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from bids_qa.discover import Scan

#: BIDS version the derivative dataset declares.
BIDS_VERSION = "1.9.0"
#: Folder for plain-NIfTI scans that carry no subject entity.
NONBIDS_DIR = "nonbids"
LOGS_DIR = "logs"

#: Per-scan ``_qa.tsv`` columns and what they hold (also written into each ``_qa.json``).
QA_COLUMNS: dict[str, str] = {
    "model": "Scorer that produced the value (header, iqm, severity, flow, ssim, tiers), or 'error' for an "
    "error row.",
    "metric": "Metric name within the scorer; for error rows, the stage that failed (discover, load, score, "
    "write, report).",
    "value": "The metric's value (number, or a short label); for error rows, the error message.",
    "threshold": "The number the value was compared with: the fail threshold when flag is 'fail', else the "
    "review threshold; empty when the metric has no threshold.",
    "flag": "pass, review or fail from the thresholds; n/a when the metric has no threshold; error for error "
    "rows.",
    "direction": "higher_is_worse or lower_is_worse (for categorical thresholds: categorical); empty when "
    "the metric has no threshold.",
}
#: Fixed leading columns of ``_slices.tsv``; one further column per per-slice metric.
SLICE_COLUMNS: dict[str, str] = {
    "model": "Scorer that produced the per-slice values.",
    "slice_axis": "Array axis of the canonical (RAS) image the slices run along (0 = x/sagittal, "
    "1 = y/coronal, 2 = z/axial).",
    "slice_index": "Index of the slice along slice_axis, in the canonical (RAS) image.",
}
#: Fixed leading columns of ``group_<suffix>.tsv``; one further column per ``<model>.<metric>``.
GROUP_COLUMNS: dict[str, str] = {
    "scan_id": "Source file name without .nii/.nii.gz.",
    "subject": "Subject label (without 'sub-'); n/a when the file has none.",
    "session": "Session label (without 'ses-'); n/a when the file has none.",
    "run": "Run index as in the file name; n/a when the file has none.",
    "suffix": "Contrast (BIDS suffix) the scan was assessed as.",
    "source": "Path of the image relative to the input folder.",
    "acquisition": "BIDS acq entity (without 'acq-'); n/a when the file has none.",
    "reconstruction": "BIDS rec entity (without 'rec-'); n/a when the file has none.",
    "ceagent": "BIDS ce entity (contrast agent, without 'ce-'); in plain-NIfTI mode 'Gd' or 'post' when the "
    "file name marks a contrast-enhanced T1 (T1POST, T1Gd, T1CE); n/a when none.",
    "manufacturer": "Scanner manufacturer (sidecar Manufacturer); n/a without a sidecar.",
    "field_strength": "Magnetic field strength in tesla (sidecar MagneticFieldStrength); n/a when unknown.",
    "repetition_time": "Repetition time in seconds (sidecar RepetitionTime); n/a when unknown.",
    "echo_time": "Echo time in seconds (sidecar EchoTime); n/a when unknown.",
    "voxel_size": "Voxel size in mm from the image header, canonical (RAS) axis order, as 'x' x 'y' x 'z' "
    "(e.g. 1x1x1.2); n/a when the header could not be read.",
    "verdict": "pass, review, fail, or error when the scan could not be fully assessed.",
    "reasons": "Why the verdict is not pass: one message per flagged metric, then one per error, joined by "
    "'; '.",
    "notes": "Facts that do not change the verdict (acquisition, resolution, processed input, "
    "explained flags, protocol group too small), joined by ' | '.",
    "report": "Path of the scan's HTML report relative to the output folder; n/a when none was made.",
}

#: Group columns read from a scan's JSON ``scan`` block: column -> (where, key).
SCAN_INFO_COLUMNS: dict[str, tuple[str, str]] = {
    "acquisition": ("entities", "acquisition"),
    "reconstruction": ("entities", "reconstruction"),
    "ceagent": ("entities", "ceagent"),
    "manufacturer": ("metadata", "Manufacturer"),
    "field_strength": ("metadata", "MagneticFieldStrength"),
    "repetition_time": ("metadata", "RepetitionTime"),
    "echo_time": ("metadata", "EchoTime"),
}

_SAFE_EXTRA = set("-_.+")
_MAX_STEM = 150


# --------------------------------------------------------------------------------------------
# Names


def safe_stem(name: str) -> str:
    """A file-name-safe version of ``name``.

    Letters (any script), digits and ``-_.+`` are kept; anything else (spaces, ``<>&"'/``,
    control characters) becomes ``_``. When the name had to change, 8 hex digits of its SHA-1
    are appended so that two different source names can never map to the same output name.

    Examples
    --------
    >>> safe_stem("sub-01_T1w")
    'sub-01_T1w'
    >>> safe_stem("b>_T1w")
    'b__T1w_0f2fc09d'
    """
    clean = "".join(ch if (ch.isalnum() or ch in _SAFE_EXTRA) else "_" for ch in name)
    clean = clean.lstrip(".") or "scan"
    if clean != name or len(clean.encode("utf-8")) > _MAX_STEM:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
        while len(clean.encode("utf-8")) > _MAX_STEM:
            clean = clean[:-1]
        clean = f"{clean}_{digest}"
    return clean


@dataclass(frozen=True)
class ScanPaths:
    """The output files of one scan: ``folder/<stem>_qa.tsv`` and friends."""

    folder: Path
    stem: str

    @property
    def tsv(self) -> Path:
        return self.folder / f"{self.stem}_qa.tsv"

    @property
    def json(self) -> Path:
        return self.folder / f"{self.stem}_qa.json"

    @property
    def slices(self) -> Path:
        return self.folder / f"{self.stem}_slices.tsv"

    @property
    def report(self) -> Path:
        return self.folder / f"{self.stem}_report.html"

    @property
    def figures(self) -> Path:
        """Folder for the report's figures."""
        return self.folder / f"{self.stem}_figures"


def scan_paths(out_dir: str | os.PathLike[str], scan: Scan, by_folder: bool = False) -> ScanPaths:
    """Output paths of ``scan``, from its entities.

    Scans with a subject go to ``sub-<l>/[ses-<s>/]anat/``; plain-NIfTI scans without one (or
    with ``by_folder``, used when two plain files would collide) go to
    ``nonbids/<folder relative to the input>/``. The stem is the source name (``scan_id``) made
    safe by :func:`safe_stem`.
    """
    out_dir = Path(out_dir)
    subject = scan.entities.get("subject")
    if subject and not (by_folder and not scan.bids):
        folder = out_dir / f"sub-{safe_stem(subject)}"
        session = scan.entities.get("session")
        if session:
            folder = folder / f"ses-{safe_stem(session)}"
        folder = folder / "anat"
    else:
        folder = out_dir / NONBIDS_DIR
        rel_parent = Path(scan.source).parent
        for part in rel_parent.parts:
            if part in ("", ".", "/") or part == rel_parent.anchor:
                continue
            folder = folder / safe_stem(part)
    return ScanPaths(folder=folder, stem=safe_stem(scan.scan_id))


def plan_scan_paths(
    out_dir: str | os.PathLike[str], scans: Sequence[Scan]
) -> tuple[list[tuple[Scan, ScanPaths]], list[str]]:
    """Output paths for every scan, resolving name collisions.

    Two plain-NIfTI files with the same name and subject (in different folders) would share
    ``sub-<l>/anat/<name>``; those are placed by folder instead. A collision that remains (e.g.
    ``x.nii`` next to ``x.nii.gz``) drops the later scan with a warning.

    Returns
    -------
    planned
        (scan, paths) in input order.
    warnings
        One message per dropped scan.
    """
    first = [scan_paths(out_dir, s) for s in scans]
    counts: dict[Path, int] = {}
    for p in first:
        counts[p.json] = counts.get(p.json, 0) + 1
    planned: list[tuple[Scan, ScanPaths]] = []
    seen: dict[Path, Scan] = {}
    warnings: list[str] = []
    for scan, paths in zip(scans, first, strict=True):
        if counts[paths.json] > 1 and not scan.bids:
            paths = scan_paths(out_dir, scan, by_folder=True)
        if paths.json in seen:
            warnings.append(
                f"{scan.source} skipped: its outputs would overwrite those of {seen[paths.json].source} "
                "(same name); rename one of them"
            )
            continue
        seen[paths.json] = scan
        planned.append((scan, paths))
    return planned, warnings


@dataclass(frozen=True)
class GroupPaths:
    """Group-level files of one contrast."""

    tsv: Path
    json: Path
    html: Path


def group_paths(out_dir: str | os.PathLike[str], suffix: str) -> GroupPaths:
    """``group_<suffix>.tsv/.json/.html`` in the output folder."""
    out_dir = Path(out_dir)
    stem = f"group_{safe_stem(suffix)}"
    return GroupPaths(out_dir / f"{stem}.tsv", out_dir / f"{stem}.json", out_dir / f"{stem}.html")


def log_path(out_dir: str | os.PathLike[str], level: str) -> Path:
    """A log file name unique to this process and moment (concurrent jobs never share one)."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
    return (
        Path(out_dir)
        / LOGS_DIR
        / f"bids_qa_{level}_{stamp}_{host_tag() or 'host'}_{os.getpid()}.log"
    )


def write_ruler_images(paths: ScanPaths, model: str, images: np.ndarray) -> list[str]:
    """Write a ruler's versions (the image-ruler paper) as 8-bit PNGs in the scan's figures folder, atomically.

    Returns the paths relative to the scan's output folder, in ruler order, for the JSON sidecar.
    Grey levels map the normalised intensity range [0, 1.2] to [0, 255], the same window for every
    version so that the eye compares like with like.
    """
    out = []
    for i, img in enumerate(images):
        grey = (np.clip(np.asarray(img, dtype=np.float32) / 1.2, 0.0, 1.0) * 255).astype(np.uint8)
        name = f"ruler_{model}_{i}.png"
        atomic_write_bytes(paths.figures / name, png_bytes(grey.T[::-1]))
        out.append(f"{paths.figures.name}/{name}")
    return out


# --------------------------------------------------------------------------------------------
# dataset_description.json


#: Set by the bids_qa Dockerfile (``ENV BIDS_QA_IMAGE=bids_qa:<version>``): marks an
#: installation that is the container's own application, not a pip install that merely runs
#: inside some container (a CI job, a development container).
IMAGE_MARKER_VAR = "BIDS_QA_IMAGE"


def container_info() -> dict[str, str] | None:
    """The bids_qa container this process runs in (BIDS ``GeneratedBy.Container``), or None.

    Singularity/Apptainer set ``SINGULARITY_CONTAINER``/``APPTAINER_CONTAINER`` to the image
    they run. Docker and Podman leave ``/.dockerenv`` or ``/run/.containerenv``, which also exist
    when a pip-installed bids_qa runs in any other container; those count only together with the
    image marker (:data:`IMAGE_MARKER_VAR`) that bids_qa's own image sets.
    """
    for var, kind in (
        ("APPTAINER_CONTAINER", "apptainer"),
        ("SINGULARITY_CONTAINER", "singularity"),
    ):
        image = os.environ.get(var)
        if image:
            return {"Type": kind, "Tag": Path(image).name}
    tag = os.environ.get(IMAGE_MARKER_VAR)
    if not tag:
        return None
    if Path("/run/.containerenv").exists() or os.environ.get("container") == "podman":
        return {"Type": "podman", "Tag": tag}
    if Path("/.dockerenv").exists():
        return {"Type": "docker", "Tag": tag}
    return None


def dataset_description(source_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Content of the derivative ``dataset_description.json``."""
    generated: dict[str, Any] = {
        "Name": "bids_qa",
        "Version": __version__,
        "Description": "Label-free artifact quality assessment of structural MRI (per-scan metrics, verdicts "
        "and reports).",
    }
    container = container_info()
    if container:
        generated["Container"] = container
    out: dict[str, Any] = {
        "Name": "bids_qa quality assessment",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
    }
    if source_dir is not None:
        out["SourceDatasets"] = [{"URL": Path(source_dir).absolute().as_uri()}]
    return out


def write_dataset_description(
    out_dir: str | os.PathLike[str], source_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``dataset_description.json`` unless an identical one is already there.

    Concurrent jobs write the same content through atomic renames, so whichever lands last the
    file is whole and valid.
    """
    path = Path(out_dir) / "dataset_description.json"
    text = dumps_json(dataset_description(source_dir))
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return path


# --------------------------------------------------------------------------------------------
# Per-scan outputs


def normalise_key(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, NaN None), for comparisons."""
    return json.loads(json.dumps(json_ready(obj), sort_keys=True))


def scan_is_complete(
    paths: ScanPaths, resume_key: Mapping[str, Any], need_report: bool = False
) -> bool:
    """Whether a previous run finished this scan with the same inputs and settings.

    True when the ``_qa.json`` is readable, says ``provenance.status == "complete"``, has no
    errors, carries the same ``provenance.resume_key`` (source size and mtime, scorers and their
    versions, thresholds), the ``_qa.tsv`` exists, and — when reports are requested — the report
    exists. Anything else means the scan is (re)computed.
    """
    try:
        sidecar = json.loads(paths.json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(sidecar, dict):
        return False
    prov = sidecar.get("provenance") or {}
    if prov.get("status") != "complete" or sidecar.get("errors"):
        return False
    if prov.get("resume_key") != normalise_key(resume_key):
        return False
    if not paths.tsv.is_file():
        return False
    if need_report and not paths.report.is_file():
        return False
    return True


def slice_rows(
    per_slice: Sequence[tuple[str, int | None, Mapping[str, np.ndarray]]],
) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ``_slices.tsv`` from (model, slice_axis, per_slice arrays) triples.

    One row per (model, slice); one column per per-slice metric (union over models, first-seen
    order); a model's rows leave other models' columns as ``n/a``.
    """
    columns = list(SLICE_COLUMNS)
    rows: list[dict[str, Any]] = []
    for model, axis, arrays in per_slice:
        arrays = {k: np.asarray(v).reshape(-1) for k, v in arrays.items()}
        lengths = {len(v) for v in arrays.values()}
        if not arrays or len(lengths) != 1:
            continue
        n = lengths.pop()
        index = arrays.pop("slice_index", np.arange(n))
        for key in arrays:
            if key not in columns:
                columns.append(key)
        for i in range(n):
            row: dict[str, Any] = {"model": model, "slice_axis": axis, "slice_index": int(index[i])}
            for key, values in arrays.items():
                row[key] = values[i].item() if hasattr(values[i], "item") else values[i]
            rows.append(row)
    return columns, rows


def write_scan_tables(
    paths: ScanPaths,
    rows: Sequence[Mapping[str, Any]],
    slices: tuple[list[str], list[dict[str, Any]]] | None = None,
) -> None:
    """Write ``_qa.tsv`` and ``_slices.tsv`` (or remove a stale one from an earlier run)."""
    write_tsv(paths.tsv, list(QA_COLUMNS), rows, empty="")
    if slices is not None and slices[1]:
        write_tsv(paths.slices, slices[0], slices[1])
    else:
        try:
            paths.slices.unlink()
        except FileNotFoundError:
            pass


def write_scan_outputs(
    paths: ScanPaths,
    rows: Sequence[Mapping[str, Any]],
    sidecar: Mapping[str, Any],
    slices: tuple[list[str], list[dict[str, Any]]] | None = None,
) -> None:
    """Write the tables (:func:`write_scan_tables`) and, last, ``_qa.json``.

    The JSON goes last because its ``provenance.status`` is what :func:`scan_is_complete` trusts.
    """
    write_scan_tables(paths, rows, slices)
    write_json(paths.json, sidecar)


@dataclass
class ScanOutputs:
    """A scan's derivatives read back.

    Attributes
    ----------
    paths
        Where they are.
    sidecar
        The ``_qa.json`` content.
    metrics
        ``_qa.tsv`` as strings (empty cells stay ``""``).
    slices
        ``_slices.tsv`` with numeric columns, or None.
    """

    paths: ScanPaths
    sidecar: dict[str, Any]
    metrics: pd.DataFrame
    slices: pd.DataFrame | None

    @property
    def verdict(self) -> str:
        return str(self.sidecar.get("verdict", "error"))

    def values(self) -> dict[str, float | str]:
        """``{"<model>.<metric>": value}`` of the non-error rows; numbers as float."""
        out: dict[str, float | str] = {}
        for model, metric, value in zip(
            self.metrics["model"], self.metrics["metric"], self.metrics["value"], strict=True
        ):
            if model == "error":
                continue
            out[f"{model}.{metric}"] = _to_number(value)
        return out


def _to_number(text: str) -> float | str:
    """A ``_qa.tsv`` value: a number, NaN for ``n/a``, else the label itself."""
    if text == MISSING:
        return float("nan")
    number = parse_number(text)
    return text if number is None else number


_OUTPUT_ENDINGS = ("_qa.json", "_qa.tsv", "_slices.tsv", "_report.html", "_figures")


def paths_from_output(path: str | os.PathLike[str]) -> ScanPaths:
    """The :class:`ScanPaths` a given output file (``_qa.json``, ``_qa.tsv``, ...) belongs to."""
    path = Path(path)
    for ending in _OUTPUT_ENDINGS:
        if path.name.endswith(ending):
            return ScanPaths(folder=path.parent, stem=path.name[: -len(ending)])
    return ScanPaths(folder=path.parent, stem=path.name)


def read_scan_outputs(path: str | os.PathLike[str]) -> ScanOutputs:
    """Read a scan's derivatives given any of its output paths (or the common stem).

    Raises
    ------
    FileNotFoundError
        When the ``_qa.json`` or ``_qa.tsv`` is missing.
    ValueError
        When the ``_qa.json`` is not valid JSON.
    """
    import pandas as pd

    paths = paths_from_output(path)
    try:
        sidecar = json.loads(paths.json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{paths.json} is not valid JSON: {err}") from err
    metrics = pd.read_csv(paths.tsv, sep="\t", dtype=str, keep_default_na=False)
    slices = read_slices_tsv(paths.slices) if paths.slices.is_file() else None
    return ScanOutputs(paths=paths, sidecar=sidecar, metrics=metrics, slices=slices)


def find_scan_outputs(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Every ``_qa.json`` under the output folder (hidden folders and logs skipped), sorted."""
    out_dir = Path(out_dir)
    found: list[Path] = []
    for folder, dirs, files in os.walk(out_dir):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and not (Path(folder) == out_dir and d == LOGS_DIR)
        )
        found += [
            Path(folder) / f for f in files if f.endswith("_qa.json") and not f.startswith(".")
        ]
    return sorted(found)


# --------------------------------------------------------------------------------------------
# Group tables


def scan_parameters(scan: Mapping[str, Any]) -> dict[str, Any]:
    """The acquisition columns of a scan (:data:`SCAN_INFO_COLUMNS` and ``voxel_size``) from its
    JSON ``scan`` block: entities, sidecar metadata and header voxel sizes. Values a sidecar gives
    in an unexpected type (a list for TE) are kept as text; absent ones are None."""
    out: dict[str, Any] = {}
    for column, (where, key) in SCAN_INFO_COLUMNS.items():
        block = scan.get(where) or {}
        value = block.get(key) if isinstance(block, Mapping) else None
        if isinstance(value, (list, tuple)):
            value = ",".join(format_value(v) for v in value)
        out[column] = value
    zooms = scan.get("zooms")
    if isinstance(zooms, (list, tuple)) and len(zooms) >= 3:
        try:
            out["voxel_size"] = "x".join(f"{float(z):.3g}" for z in zooms[:3])
        except (TypeError, ValueError):
            out["voxel_size"] = None
    else:
        out["voxel_size"] = None
    return out


def utc_now() -> str:
    """ISO 8601 UTC timestamp (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
