"""What the paths of a plain (non-BIDS) folder say: subject and session from folder names,
readable scan ids, and the state of symbolic links.

Plain folders (``patient01/study1_FLAIR.nii.gz``) carry their entities in folder names and their
uniqueness in the path; the file name alone (``study1_FLAIR``) is shared by every patient. The ids
built here are the paths made readable, so they are unique within the input folder and do not
change when other files are added.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def _stem(name: str) -> str:
    return _NIFTI_RE.sub("", name)


def _clean_label(value: str) -> str:
    """BIDS labels are alphanumeric: keep only those characters (Unicode letters included)."""
    return "".join(ch for ch in value if ch.isalnum())


def link_problem(path: Path) -> str | None:
    """``"loop"`` for a symbolic link that loops, ``"dangling"`` for one whose target is missing,
    else None."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as err:
        return "loop" if err.errno == errno.ELOOP else "dangling"
    return None


def real_path(path: Path) -> Path:
    """``path`` with symbolic links resolved as far as they go (never raises on a loop, unlike
    ``Path.resolve`` in Python 3.11)."""
    return Path(os.path.realpath(path))


#: Folder names read as a subject in plain-NIfTI mode (``patient01``, ``sub_3``, ``case12``).
SUBJECT_NAME_RE = re.compile(
    r"^(?:sub|subj|subject|patient|pat|pt|participant|case|control|ctrl|volunteer)[-_ ]?\d[0-9A-Za-z]*$",
    re.IGNORECASE,
)
#: Folder names (or a file name's first ``_`` part) read as a session (``visit2``, ``study1``).
SESSION_NAME_RE = re.compile(
    r"^(?:ses|session|visit|study|tp|timepoint|wave|followup|fu|month|week|year)[-_]?\d+[A-Za-z]?$"
    r"|^(?:baseline|followup)$",
    re.IGNORECASE,
)
#: BIDS datatype folders left out of plain-NIfTI ids (``anat/`` adds nothing to a name).
_DATATYPE_FOLDERS = frozenset({"anat", "func", "dwi", "fmap", "perf"})


def folder_entities(relative_path: str) -> dict[str, str]:
    """Subject and session read from folder names that look like them (plain-NIfTI mode).

    The outermost folder matching :data:`SUBJECT_NAME_RE` gives the subject (the whole name,
    alphanumeric: ``patient01`` -> ``patient01``); a folder below it, or else the file name's
    first ``_`` part, matching :data:`SESSION_NAME_RE` gives the session.

    Examples
    --------
    >>> folder_entities("site1/patient01/study1_FLAIR.nii.gz")
    {'subject': 'patient01', 'session': 'study1'}
    >>> folder_entities("scans/brain.nii")
    {}
    """
    parts = relative_path.replace("\\", "/").split("/")
    folders, name = parts[:-1], _stem(parts[-1])
    out: dict[str, str] = {}
    for i, folder in enumerate(folders):
        if SUBJECT_NAME_RE.match(folder) and _clean_label(folder):
            out["subject"] = _clean_label(folder)
            for below in folders[i + 1 :]:
                if SESSION_NAME_RE.match(below) and _clean_label(below):
                    out["session"] = _clean_label(below)
                    break
            break
    if "subject" in out and "session" not in out:
        first = name.split("_", 1)[0]
        if "_" in name and SESSION_NAME_RE.match(first) and _clean_label(first):
            out["session"] = _clean_label(first)
    return out


def plain_scan_id(relative_path: str, full: bool = False) -> str:
    """A readable id for a plain-NIfTI file, unique within the input folder and stable across
    runs: the folders below the input folder and the file name, joined by ``_``.

    Folders the file name already holds as a ``_`` part (``sub-05/sub-05_T1w``), or that
    start it, and BIDS datatype folders (``anat``) are left out unless ``full``.

    Examples
    --------
    >>> plain_scan_id("patient01/study1_FLAIR.nii.gz")
    'patient01_study1_FLAIR'
    >>> plain_scan_id("sub-05/ses-b/anat/sub-05_ses-b_T2w.nii.gz")
    'sub-05_ses-b_T2w'
    >>> plain_scan_id("T1.nii")
    'T1'
    """
    parts = relative_path.replace("\\", "/").split("/")
    stem = _stem(parts[-1])
    tokens = stem.split("_")
    kept = [
        folder
        for folder in parts[:-1]
        if folder
        and (
            full
            or not (
                folder in tokens
                or stem.startswith(folder + "_")
                or folder.lower() in _DATATYPE_FOLDERS
            )
        )
    ]
    return "_".join([*kept, stem])
