"""Turn an input folder and the user's filters into a sorted list of :class:`Scan` records.

Two modes:

* **BIDS mode** (the folder has a ``dataset_description.json``): pybids indexes the dataset without
  reading any metadata (fast, and a malformed sidecar cannot stop indexing). By default pybids'
  file-name validation is on: files whose names are not valid BIDS are left out, and we say how
  many. ``--skip-bids-validation`` indexes them too. The full bids-validator is never run.
* **Plain-NIfTI mode** (no ``dataset_description.json``): every ``.nii``/``.nii.gz`` below the
  folder, the contrast read from ``--suffix-map``, the file name or the sidecar
  (:mod:`bids_qa.contrasts`), BIDS-like ``key-value`` entities (``sub-``, ``ses-``, ``run-``,
  ...) parsed from the path where present, else subject and session from folder names that look
  like them (``patient01/`` -> subject ``patient01``, ``visit2/`` or a ``study1_`` file-name
  prefix -> session). Each scan's id is built from its path below the input folder
  (:func:`plain_scan_id`), so equal file names in different folders never share an id.

Symbolic links: a link loop is skipped with a warning; a link whose target is missing (a DataLad
file that was not fetched) is kept, and loading it gives an error row that says so.

Entity filters follow the BIDS-Apps convention: a file that does not have the filtered entity
at all is kept (``--session-id 1`` keeps scans of session-less subjects).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_qa import contrasts
from bids_qa.errors import ExitCode, FatalError
from bids_qa.plainpaths import (  # noqa: F401  (re-exported)
    SESSION_NAME_RE,
    SUBJECT_NAME_RE,
    folder_entities,
    link_problem,
    plain_scan_id,
    real_path,
)

#: Anatomical contrasts assessed by default (BIDS suffixes). Quantitative maps (T1map, ...) and
#: angiography are left out: their intensities do not follow the structural-image assumptions.
STRUCTURAL_SUFFIXES: tuple[str, ...] = (
    "T1w",
    "T2w",
    "FLAIR",
    "PDw",
    "PD",
    "T2starw",
    "inplaneT1",
    "inplaneT2",
    "PDT2",
)
#: Suffix given to plain-NIfTI files whose name names no contrast.
UNKNOWN_SUFFIX = "unknown"
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

#: File-name words (lower case) naming a contrast, for plain-NIfTI mode and ``--suffix`` aliases.
CONTRAST_ALIASES: dict[str, str] = {
    **contrasts.CONTRAST_WORDS,
    **{s.lower(): s for s in STRUCTURAL_SUFFIXES},
    "t1": "T1w",
    "mprage": "T1w",
    "mp2rage": "T1w",
    "spgr": "T1w",
    "fspgr": "T1w",
    "bravo": "T1w",
    "t2": "T2w",
    "pdw": "PDw",
    "pd": "PD",
    "t2star": "T2starw",
    "t2*": "T2starw",
    "t2s": "T2starw",
}
#: File-name words that mark a file we must not assess in plain-NIfTI mode (masks, maps, other
#: modalities), even when another word names a contrast.
NON_STRUCTURAL_WORDS = frozenset(
    {
        "mask", "brainmask", "seg", "dseg", "probseg", "aseg", "label", "labels", "parc", "atlas",
        "bold", "sbref", "dwi", "adc", "fa", "md", "trace", "asl", "m0scan", "cbf", "epi", "fmap",
        "phasediff", "phase", "magnitude", "magnitude1", "magnitude2", "fieldmap", "t1map", "t2map",
        "t2starmap", "r1map", "r2map", "r2starmap", "pdmap", "unit1", "angio", "tof", "swi", "qsm",
        "jacobian", "warp", "xfm", "pet", "ct",
    }
)  # fmt: skip

#: BIDS entities, short key -> long name, in BIDS file-name order.
ENTITY_KEYS: dict[str, str] = {
    "sub": "subject",
    "ses": "session",
    "sample": "sample",
    "task": "task",
    "acq": "acquisition",
    "ce": "ceagent",
    "trc": "tracer",
    "stain": "staining",
    "rec": "reconstruction",
    "dir": "direction",
    "run": "run",
    "mod": "modality",
    "echo": "echo",
    "flip": "flip",
    "inv": "inv",
    "mt": "mt",
    "part": "part",
    "proc": "proc",
    "chunk": "chunk",
}
#: Keys a ``--bids-filter-file`` query may use (long names, plus these).
FILTER_KEYS = frozenset(ENTITY_KEYS.values()) | {"suffix", "extension", "datatype", "space", "desc"}

_ENTITY_RE = re.compile(r"(?:^|[_/\\])([A-Za-z]+)-([^_/\\]+)")
_WORD_SPLIT_RE = re.compile(r"[^0-9A-Za-z*]+")
#: Sidecar fields copied into each scan's JSON (``scan.metadata``).
METADATA_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "ReceiveCoilName",
    "MRAcquisitionType",
    "ScanningSequence",
    "SequenceVariant",
    "SequenceName",
    "PulseSequenceType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ParallelReductionFactorInPlane",
    "AcquisitionDuration",
    "SoftwareVersions",
)


@dataclass(frozen=True)
class Scan:
    """One structural image to assess.

    Attributes
    ----------
    path
        The NIfTI file.
    entities
        BIDS entities by long name (``subject``, ``session``, ``run``, ``acquisition``, ...,
        ``suffix``, ``extension``), values as strings exactly as in the file name.
    sidecar
        The JSON sidecar with the same name, if any.
    bids
        True when found by BIDS indexing, False in plain-NIfTI mode.
    root
        The input folder the scan was found in (for relative paths in the outputs).
    name
        The scan's id when it is not the file name (plain-NIfTI files in subfolders).
    """

    path: Path
    entities: dict[str, str] = field(hash=False)
    sidecar: Path | None = None
    bids: bool = True
    root: Path | None = None
    name: str | None = None

    @property
    def suffix(self) -> str:
        return self.entities.get("suffix", UNKNOWN_SUFFIX)

    @property
    def subject(self) -> str | None:
        return self.entities.get("subject")

    @property
    def session(self) -> str | None:
        return self.entities.get("session")

    @property
    def run(self) -> str | None:
        return self.entities.get("run")

    @property
    def scan_id(self) -> str:
        """Source file name without ``.nii``/``.nii.gz`` (e.g. ``sub-01_ses-1_run-1_T1w``); for
        plain-NIfTI files in subfolders the id built from the path (:func:`plain_scan_id`)."""
        return self.name or strip_nifti_extension(self.path.name)

    @property
    def source(self) -> str:
        """Path relative to the input folder (POSIX separators), or the absolute path."""
        if self.root is not None:
            try:
                return self.path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return self.path.as_posix()


@dataclass
class Discovery:
    """What discovery found: the scans, the mode, and what the user should know."""

    scans: list[Scan]
    mode: str  # "bids" or "nifti"
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Small parsers


def strip_nifti_extension(name: str) -> str:
    """``x.nii.gz`` -> ``x`` and ``x.nii`` -> ``x`` (case-insensitive); other names unchanged."""
    lower = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def sidecar_of(path: Path) -> Path | None:
    """The JSON sidecar with the same name (``.json``), when one exists."""
    sidecar = path.with_name(strip_nifti_extension(path.name) + ".json")
    return sidecar if sidecar.is_file() else None


def _scan(
    path: Path, entities: dict[str, str], *, bids: bool, root: Path, name: str | None = None
) -> Scan:
    """A :class:`Scan` with its JSON sidecar when one exists."""
    return Scan(
        path=path, entities=entities, sidecar=sidecar_of(path), bids=bids, root=root, name=name
    )


def nifti_extension(name: str) -> str | None:
    """``.nii.gz`` or ``.nii`` (as spelled in BIDS), or None for other names."""
    lower = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if lower.endswith(ext):
            return ext
    return None


def normalise_labels(values: Iterable[str] | None, prefix: str) -> tuple[str, ...]:
    """Strip an optional ``prefix-`` from each label; a value naming a text file is read as one
    label per line (BIDS-Apps convention). Order kept, duplicates dropped.

    Raises
    ------
    FatalError
        (``ExitCode.USAGE``) for an empty label.
    """
    out: list[str] = []
    for raw in values or ():
        items = [raw]
        candidate = Path(raw)
        if (
            not raw.startswith(f"{prefix}-")
            and candidate.suffix in {".txt", ".tsv", ".list"}
            and candidate.is_file()
        ):
            items = [
                line.strip()
                for line in candidate.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
        for item in items:
            label = item.strip()
            if label.startswith(f"{prefix}-"):
                label = label[len(prefix) + 1 :]
            if not label:
                raise FatalError(ExitCode.USAGE, f"empty {prefix} label in {raw!r}")
            if label not in out:
                out.append(label)
    return tuple(out)


def normalise_suffixes(values: Iterable[str] | None) -> tuple[str, ...]:
    """Map user contrast names (case-insensitive, aliases such as ``T1``) to BIDS suffixes.

    Raises
    ------
    FatalError
        (``ExitCode.USAGE``) for a name that is not a structural contrast.
    """
    out: list[str] = []
    for value in values or ():
        key = value.strip().lower()
        if key not in CONTRAST_ALIASES:
            raise FatalError(
                ExitCode.USAGE,
                f"--suffix {value!r} is not a structural contrast; choose from {', '.join(STRUCTURAL_SUFFIXES)} "
                "(aliases such as T1, T2, MPRAGE, T2star are accepted)",
            )
        suffix = CONTRAST_ALIASES[key]
        if suffix not in out:
            out.append(suffix)
    return tuple(out)


def contrast_from_name(name: str) -> str | None:
    """The contrast a file name announces, or None (rules: :func:`bids_qa.contrasts.contrast_of_text`).

    Examples
    --------
    >>> contrast_from_name("sub-01_run-1_T1w.nii.gz")
    'T1w'
    >>> contrast_from_name("patient3_t2_flair_tra.nii")
    'FLAIR'
    >>> contrast_from_name("adi_brain_mocoMEMPRAGE_rms.nii.gz")
    'T1w'
    >>> contrast_from_name("brain.nii") is None
    True
    """
    found = contrasts.contrast_of_text(name)
    return found.suffix if found is not None else None


def is_non_structural_name(name: str) -> bool:
    """Whether a file name contains a word marking a mask, a map or another modality."""
    words = set(_WORD_SPLIT_RE.split(strip_nifti_extension(name).lower()))
    return bool(words & NON_STRUCTURAL_WORDS)


def _clean_label(value: str) -> str:
    """BIDS labels are alphanumeric: keep only those characters (Unicode letters included)."""
    return "".join(ch for ch in value if ch.isalnum())


def parse_entities(relative_path: str) -> dict[str, str]:
    """BIDS-like ``key-value`` entities found in a path (folders and file name; deeper wins).

    Values are reduced to alphanumeric characters; entities whose value becomes empty are
    dropped. Only known BIDS entity keys are kept.

    Examples
    --------
    >>> parse_entities("site A/sub-07/ses-pre/sub-07_ses-pre_run-2_T1w.nii.gz")
    {'subject': '07', 'session': 'pre', 'run': '2'}
    """
    out: dict[str, str] = {}
    stem = strip_nifti_extension(relative_path.replace("\\", "/"))
    for key, value in _ENTITY_RE.findall(stem):
        long = ENTITY_KEYS.get(key.lower())
        label = _clean_label(value)
        if long and label:
            out[long] = label
    order = list(ENTITY_KEYS.values())
    return {k: out[k] for k in sorted(out, key=order.index)}


def load_filter_file(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file``: ``{"name": {entity: value, ...}, ...}`` (several queries,
    union of their matches) or a flat ``{entity: value}`` (one query).

    Values: a string or number (equal), a list (any of), ``null`` (entity absent), ``"*"``
    (entity present). Short entity keys (``sub``, ``ses``, ``acq``) are accepted.

    Raises
    ------
    FatalError
        (``ExitCode.USAGE``) when the file is missing, is not JSON, or uses an unknown entity.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise FatalError(ExitCode.USAGE, f"cannot read --bids-filter-file {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise FatalError(ExitCode.USAGE, f"--bids-filter-file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not data:
        raise FatalError(ExitCode.USAGE, f"--bids-filter-file {path} must hold a non-empty JSON object")
    queries = data if all(isinstance(v, dict) for v in data.values()) else {"filter": data}
    out: dict[str, dict[str, Any]] = {}
    for name, query in queries.items():
        clean: dict[str, Any] = {}
        for key, value in query.items():
            long = ENTITY_KEYS.get(key, key)
            if long not in FILTER_KEYS:
                raise FatalError(
                    ExitCode.USAGE,
                    f"--bids-filter-file {path}: unknown entity {key!r} in query {name!r}; "
                    f"use BIDS entity names such as subject, session, run, acquisition, suffix",
                )
            if isinstance(value, dict):
                raise FatalError(
                    ExitCode.USAGE,
                    f"--bids-filter-file {path}: value of {key!r} in {name!r} must not be an object",
                )
            clean[long] = value
        out[str(name)] = clean
    return out


def _value_matches(actual: str | None, wanted: Any, key: str) -> bool:
    if wanted is None:
        return actual is None
    if wanted == "*":
        return actual is not None
    if actual is None:
        return False
    options = wanted if isinstance(wanted, list) else [wanted]
    for option in options:
        if option is None:
            continue
        if key == "extension":
            if "." + str(option).lstrip(".") == actual:
                return True
        elif (
            key in {"run", "echo", "flip", "inv", "chunk"}
            and str(option).isdigit()
            and actual.isdigit()
        ):
            if int(option) == int(actual):
                return True
        elif str(option) == actual:
            return True
    return False


def matches_filters(
    entities: Mapping[str, str], queries: Mapping[str, Mapping[str, Any]] | None
) -> bool:
    """Whether ``entities`` satisfy at least one filter-file query (all its keys)."""
    if not queries:
        return True
    return any(
        all(_value_matches(entities.get(k), v, k) for k, v in q.items()) for q in queries.values()
    )


def matches_labels(entities: Mapping[str, str], key: str, labels: Sequence[str]) -> bool:
    """BIDS-Apps label filter: keep files without the entity; others must carry a listed label."""
    if not labels or key not in entities:
        return True
    return _value_matches(entities[key], list(labels), key)


# --------------------------------------------------------------------------------------------
# Metadata


def read_metadata(scan: Scan) -> tuple[dict[str, Any], list[str]]:
    """Sidecar metadata for ``scan`` and warnings about unreadable sidecars.

    BIDS mode applies the inheritance principle: JSON files from the dataset root down to the
    scan's folder whose name entities are a subset of the scan's (same suffix) are merged, the
    most specific last. Plain-NIfTI mode reads only the same-name JSON. A malformed JSON file is
    skipped with a warning: the scan is still assessed.
    """
    warnings: list[str] = []
    candidates: list[Path] = []
    if scan.bids and scan.root is not None:
        try:
            rel_parts = scan.path.parent.relative_to(scan.root).parts
        except ValueError:
            rel_parts = ()
        folders = [scan.root]
        for part in rel_parts:
            folders.append(folders[-1] / part)
        own = {
            k: v for k, v in scan.entities.items() if k not in {"suffix", "extension", "datatype"}
        }
        for folder in folders:
            try:
                names = sorted(p for p in os.listdir(folder) if p.endswith(".json"))
            except OSError:
                continue
            level: list[tuple[int, Path]] = []
            for name in names:
                stem = name[: -len(".json")]
                if stem.rsplit("_", 1)[-1] != scan.suffix:
                    continue
                ents = parse_entities(stem + ".nii")
                if all(own.get(k) == v for k, v in ents.items()):
                    level.append((len(ents), folder / name))
            candidates += [p for _, p in sorted(level)]
    elif scan.sidecar is not None:
        candidates = [scan.sidecar]
    merged: dict[str, Any] = {}
    for path in candidates:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            warnings.append(
                f"sidecar {path.name} could not be read and was ignored ({type(err).__name__}: {err})"
            )
            continue
        if not isinstance(data, dict):
            warnings.append(f"sidecar {path.name} is not a JSON object and was ignored")
            continue
        merged.update(data)
    return merged, warnings


def metadata_subset(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The acquisition facts worth keeping in the outputs (:data:`METADATA_FIELDS`)."""
    return {k: metadata[k] for k in METADATA_FIELDS if k in metadata}


# --------------------------------------------------------------------------------------------
# Discovery


def is_bids_dataset(root: Path) -> bool:
    """A folder is treated as BIDS when it has a ``dataset_description.json``."""
    return (root / "dataset_description.json").is_file()


def _excluded_dirs(root: Path, exclude: Iterable[Path]) -> list[Path]:
    out = []
    for path in exclude:
        try:
            real_path(path).relative_to(real_path(root))
        except ValueError:
            continue
        out.append(real_path(path))
    return out


def discover(
    root: str | os.PathLike[str],
    participant_label: Sequence[str] = (),
    session_id: Sequence[str] = (),
    run_id: Sequence[str] = (),
    suffixes: Sequence[str] = (),
    bids_filters: Mapping[str, Mapping[str, Any]] | None = None,
    skip_bids_validation: bool = False,
    database_dir: str | os.PathLike[str] | None = None,
    exclude: Iterable[Path] = (),
    suffix_map: Sequence[tuple[str, str]] = (),
) -> Discovery:
    """Find the scans to assess under ``root``.

    Parameters
    ----------
    root
        BIDS dataset or plain folder of NIfTI files.
    participant_label, session_id, run_id
        Labels without prefix (see :func:`normalise_labels`).
    suffixes
        BIDS suffixes (see :func:`normalise_suffixes`); empty means every structural contrast.
    bids_filters
        Parsed filter file (see :func:`load_filter_file`).
    skip_bids_validation
        Index files whose names pybids' validation would reject.
    database_dir
        Persistent pybids index folder (created, or reused when it exists).
    exclude
        Folders never to descend into (the output and work folders when they lie inside root).
    suffix_map
        ``(glob pattern, suffix)`` pairs for plain-NIfTI mode (``--suffix-map``, see
        :func:`bids_qa.contrasts.load_suffix_map`); the first match names a file's contrast.

    Raises
    ------
    FatalError
        ``NO_INPUT`` when root is missing, ``INVALID_BIDS`` when ``dataset_description.json`` is
        unreadable (unless validation is skipped, which then falls back to plain-NIfTI mode),
        ``CANT_CREATE`` when the ``database_dir`` cannot be created or written.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise FatalError(ExitCode.NO_INPUT, f"input folder {root} does not exist or is not a folder")
    exclude_dirs = _excluded_dirs(root, exclude)
    warnings: list[str] = []
    mode = "bids" if is_bids_dataset(root) else "nifti"
    if mode == "bids":
        try:
            json.loads((root / "dataset_description.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            if not skip_bids_validation:
                raise FatalError(
                    ExitCode.INVALID_BIDS,
                    f"{root / 'dataset_description.json'} is not valid JSON ({err}); fix it, or pass "
                    "--skip-bids-validation to treat the folder as plain NIfTI files",
                ) from err
            warnings.append(
                "dataset_description.json is not valid JSON: reading the folder as plain NIfTI files"
            )
            mode = "nifti"
    if mode == "bids":
        scans, more = _discover_bids(root, not skip_bids_validation, database_dir, exclude_dirs)
    else:
        scans, more = _discover_plain(root, suffixes, exclude_dirs, suffix_map)
    warnings += more
    wanted = (
        set(suffixes)
        if suffixes
        else set(STRUCTURAL_SUFFIXES) | ({UNKNOWN_SUFFIX} if mode == "nifti" else set())
    )
    selected = [
        s
        for s in scans
        if s.suffix in wanted
        and matches_labels(s.entities, "subject", participant_label)
        and matches_labels(s.entities, "session", session_id)
        and matches_labels(s.entities, "run", run_id)
        and matches_filters(s.entities, bids_filters)
    ]
    selected.sort(key=lambda s: s.source)
    warnings += unmatched_label_warnings(
        [s for s in scans if s.suffix in wanted],
        {"subject": participant_label, "session": session_id, "run": run_id},
    )
    return Discovery(scans=selected, mode=mode, warnings=warnings)


def unmatched_label_warnings(
    scans: Sequence[Scan], labels: Mapping[str, Sequence[str]]
) -> list[str]:
    """One warning per requested label that no scan carries (``--participant-label sub-99``
    would otherwise pass unnoticed when other labels match)."""
    prefixes = {"subject": "sub", "session": "ses", "run": "run"}
    options = {"subject": "--participant-label", "session": "--session-id", "run": "--run-id"}
    out: list[str] = []
    for key, wanted in labels.items():
        present = [s.entities[key] for s in scans if key in s.entities]
        for label in wanted:
            if not any(_value_matches(value, [label], key) for value in present):
                out.append(
                    f"{options[key]} {prefixes[key]}-{label} matched no scan"
                    f"{' (no scan has a ' + key + ' at all)' if not present else ''}"
                )
    return out


def _check_database_dir(database_dir: str | os.PathLike[str]) -> None:
    """The ``--bids-database-dir`` must be creatable and writable (pybids writes its index
    there); raise ``CANT_CREATE`` with a clear message otherwise."""
    folder = Path(database_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".bids_qa_write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FatalError(
            ExitCode.CANT_CREATE,
            f"--bids-database-dir {folder} cannot be created or written ({err.strerror or err}); "
            "choose a writable folder, or leave the option out to index in memory",
        ) from err


def _discover_bids(
    root: Path,
    validate: bool,
    database_dir: str | os.PathLike[str] | None,
    exclude_dirs: list[Path],
) -> tuple[list[Scan], list[str]]:
    from bids import BIDSLayout, BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    ignore: list[Any] = list(DEFAULT_LOCATIONS_TO_IGNORE)
    for path in exclude_dirs:
        ignore.append(path.relative_to(real_path(root)).as_posix())
    kwargs: dict[str, Any] = {}
    if database_dir is not None:
        _check_database_dir(database_dir)
        kwargs["database_path"] = str(database_dir)
    try:
        layout = BIDSLayout(
            str(root),
            validate=validate,
            indexer=BIDSLayoutIndexer(validate=validate, index_metadata=False, ignore=ignore),
            **kwargs,
        )
    except Exception as err:  # pybids raises several types for unusable datasets
        raise FatalError(
            ExitCode.INVALID_BIDS, f"pybids could not index {root}: {type(err).__name__}: {err}"
        ) from err
    warnings: list[str] = []
    scans: list[Scan] = []
    indexed: set[Path] = set()
    loops: list[str] = []
    for bfile in layout.get(datatype="anat", extension=list(NIFTI_EXTENSIONS)):
        path = Path(bfile.path)
        indexed.add(real_path(path))
        if link_problem(path) == "loop":
            loops.append(path.name)
            continue
        entities = {k: str(v) for k, v in bfile.get_entities().items()}
        entities["extension"] = nifti_extension(path.name) or entities.get("extension", "")
        scans.append(_scan(path, entities, bids=True, root=root))
    if validate:
        skipped = [
            p
            for p in root.glob("sub-*/**/anat/*.nii*")
            if real_path(p) not in indexed
            and nifti_extension(p.name)
            and not any(part.startswith(".") for part in p.parts)
        ]
        if skipped:
            shown = ", ".join(sorted(p.name for p in skipped)[:5])
            warnings.append(
                f"{len(skipped)} NIfTI file(s) in anat folders were ignored because their names are not valid "
                f"BIDS ({shown}{', ...' if len(skipped) > 5 else ''}); use --skip-bids-validation to include them"
            )
    if loops:
        warnings.append(
            f"{len(loops)} symbolic link(s) loop back on themselves and were skipped "
            f"({', '.join(sorted(loops)[:3])}{', ...' if len(loops) > 3 else ''})"
        )
    return scans, warnings


def _discover_plain(
    root: Path,
    suffixes: Sequence[str],
    exclude_dirs: list[Path],
    suffix_map: Sequence[tuple[str, str]] = (),
) -> tuple[list[Scan], list[str]]:
    warnings: list[str] = []
    scans: list[Scan] = []
    unnamed: list[str] = []
    loops: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and real_path(here / d) not in exclude_dirs
        )
        for name in sorted(files):
            ext = nifti_extension(name)
            if ext is None or name.startswith("."):
                continue
            path = here / name
            rel = path.relative_to(root).as_posix()
            problem = link_problem(path)
            if problem == "loop":
                loops.append(rel)
                continue
            if problem is None and not path.is_file():
                continue
            if is_non_structural_name(name):
                continue
            entities = parse_entities(rel)
            for key, value in folder_entities(rel).items():
                entities.setdefault(key, value)
            sidecar = sidecar_of(path)
            found = contrasts.recognise(rel, sidecar, suffix_map)
            if found is None:
                if len(suffixes) == 1:
                    contrast = suffixes[0]
                else:
                    contrast = UNKNOWN_SUFFIX
                    unnamed.append(rel)
            else:
                contrast = found.suffix
                if found.ceagent and "ceagent" not in entities:
                    entities["ceagent"] = found.ceagent
            order = list(ENTITY_KEYS.values())
            entities = {k: entities[k] for k in sorted(entities, key=order.index)}
            entities["suffix"] = contrast
            entities["extension"] = ext
            scans.append(
                Scan(path, entities, sidecar, bids=False, root=root, name=plain_scan_id(rel))
            )
    scans = _unique_plain_ids(scans)
    if loops:
        warnings.append(
            f"{len(loops)} symbolic link(s) loop back on themselves and were skipped "
            f"({', '.join(loops[:3])}{', ...' if len(loops) > 3 else ''})"
        )
    if unnamed and suffixes:
        warnings.append(
            f"{len(unnamed)} file(s) name no contrast and were left out because --suffix lists several "
            f"({', '.join(unnamed[:3])}{', ...' if len(unnamed) > 3 else ''}); give one --suffix or a "
            "--suffix-map to assess them"
        )
    elif unnamed:
        warnings.append(
            f"{len(unnamed)} file(s) name no contrast; assessed as '{UNKNOWN_SUFFIX}' with default thresholds "
            f"({', '.join(unnamed[:3])}{', ...' if len(unnamed) > 3 else ''}); use --suffix or --suffix-map "
            "to set it"
        )
    return scans, warnings


def _unique_plain_ids(scans: list[Scan]) -> list[Scan]:
    """Scans whose shortened ids collide get the id of their full path (every folder kept)."""
    counts: dict[str, int] = {}
    for scan in scans:
        counts[scan.scan_id] = counts.get(scan.scan_id, 0) + 1
    out = []
    for scan in scans:
        if counts[scan.scan_id] > 1:
            scan = Scan(
                scan.path,
                scan.entities,
                scan.sidecar,
                bids=False,
                root=scan.root,
                name=plain_scan_id(scan.source, full=True),
            )
        out.append(scan)
    return out
