"""Which structural contrast a plain (non-BIDS) NIfTI file holds, from its name, its sidecar or
the user's ``--suffix-map``.

Plain folders name their files after the scanner's protocol (``adi_brain_mocoMEMPRAGE_rms``,
``T1POST_brain_MNI``, ``ax_fse_t2``, ``t1_gre_fsp_3d_sag``), not after BIDS suffixes. The rules,
in order:

1. ``--suffix-map``: the first glob pattern (``fnmatch``, on the path relative to the input
   folder and on the file name) that matches gives the suffix;
2. the file name: a BIDS suffix as the last ``_`` part wins outright; otherwise every word
   (split on non-alphanumeric characters and at lower-to-upper case changes, a ``2d``/``3d``
   prefix removed) is looked up in :data:`CONTRAST_WORDS` (contrast names and sequence names
   that fix the contrast: MPRAGE, SPGR, BRAVO, TFE, TIRM, ...); long sequence names are also
   found inside words (``mocoMEMPRAGE``). Several contrasts: :data:`CONTRAST_PRIORITY` decides.
   Spin-echo family names (TSE, FSE, SE) are weak hints: they give T2w only when nothing
   else names a contrast (``t1_se`` is a T1w spin echo);
3. the sidecar's ``SeriesDescription``, then ``ProtocolName``, read with the same rules.

Contrast-enhanced T1 names (``T1POST``, ``T1Gd``, ``T1CE``, ``T1c+``) give ``T1w`` and a
``ceagent`` entity (``Gd`` when the name says gadolinium, else ``post``).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: BIDS suffixes recognised as the last ``_`` part of a name, exactly as BIDS spells them.
BIDS_SUFFIXES = ("T1w", "T2w", "FLAIR", "PDw", "PD", "T2starw", "inplaneT1", "inplaneT2", "PDT2")

#: Whole words (lower case) that name a contrast or a sequence that fixes it.
CONTRAST_WORDS: dict[str, str] = {
    **{s.lower(): s for s in BIDS_SUFFIXES},
    "t1": "T1w",
    "t1weighted": "T1w",
    "mprage": "T1w",
    "memprage": "T1w",
    "mp2rage": "T1w",
    "spgr": "T1w",
    "fspgr": "T1w",
    "irspgr": "T1w",
    "bravo": "T1w",
    "tfe": "T1w",
    "tfl": "T1w",
    "t1tfe": "T1w",
    "mpr": "T1w",
    "fsp": "T1w",
    "t2": "T2w",
    "t2weighted": "T2w",
    "flair": "FLAIR",
    "tirm": "FLAIR",
    "darkfluid": "FLAIR",
    "pd": "PDw",
    "pdw": "PDw",
    "pdt2": "PDT2",
    "t2star": "T2starw",
    "t2*": "T2starw",
    "t2s": "T2starw",
    "t2starw": "T2starw",
    "medic": "T2starw",
    "merge": "T2starw",
}
#: Sequence names found even inside longer words (long and distinctive enough not to clash).
EMBEDDED_WORDS: dict[str, str] = {
    "memprage": "T1w",
    "mp2rage": "T1w",
    "mprage": "T1w",
    "fspgr": "T1w",
    "spgr": "T1w",
    "bravo": "T1w",
    "flair": "FLAIR",
    "darkfluid": "FLAIR",
    "greir": "T1w",
    "grefsp": "T1w",
    "t2star": "T2starw",
}
#: Spin-echo family names: T2w only when no other word names a contrast.
WEAK_WORDS: dict[str, str] = {"tse": "T2w", "fse": "T2w", "se": "T2w", "frfse": "T2w", "space": "T2w"}
#: Contrast-enhanced T1 words: T1w with a contrast agent.
ENHANCED_T1_WORDS: dict[str, str] = {
    "t1post": "post",
    "t1gd": "Gd",
    "t1gad": "Gd",
    "t1gado": "Gd",
    "t1ce": "post",
    "t1c": "post",
    "t1c+": "post",
    "t1contrast": "post",
    "gd": "Gd",
    "gad": "Gd",
    "gado": "Gd",
    "postcontrast": "post",
    "postgd": "Gd",
}
#: When a name holds several contrast words ("T2_FLAIR", "PD_T2"), the first listed here wins.
CONTRAST_PRIORITY = ("FLAIR", "T2starw", "PDT2", "PDw", "PD", "inplaneT1", "inplaneT2", "T1w", "T2w")
#: Sidecar fields read, in this order, when the file name names no contrast.
SIDECAR_FIELDS = ("SeriesDescription", "ProtocolName")

_SPLIT_RE = re.compile(r"[^0-9A-Za-z*+]+")
_CAMEL_RE = re.compile(r"(?<=[a-z])(?=[A-Z])")
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


class SuffixMapError(ValueError):
    """A ``--suffix-map`` file that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Contrast:
    """A recognised contrast: the BIDS ``suffix``, the contrast agent (``ceagent``) when the name
    marks a contrast-enhanced scan, and where it was read (``name``, ``sidecar:<field>`` or
    ``suffix-map:<pattern>``)."""

    suffix: str
    ceagent: str | None = None
    source: str = "name"


def words_of(text: str) -> list[str]:
    """Lower-case words of ``text``: split on non-alphanumeric characters and at lower-to-upper
    case changes (``mocoMEMPRAGE`` -> ``moco``, ``memprage``); each word also without a leading
    ``2d``/``3d``."""
    out: list[str] = []
    for part in _SPLIT_RE.split(text):
        if not part:
            continue
        pieces = [part] + [p for p in _CAMEL_RE.split(part) if p and p != part]
        for piece in pieces:
            low = piece.lower()
            for word in (low, re.sub(r"^[23]d", "", low)):
                if word and word not in out:
                    out.append(word)
    return out


def contrast_of_text(text: str, source: str = "name") -> Contrast | None:
    """The contrast that a name or description announces, or None (rules in the module doc)."""
    stem = _NIFTI_RE.sub("", text.strip())
    if not stem:
        return None
    last = stem.rsplit("_", 1)[-1]
    if last in BIDS_SUFFIXES:
        return Contrast(last, None, source)
    words = words_of(stem)
    compact = re.sub(r"[^0-9a-z*]", "", stem.lower())
    found: set[str] = set()
    ceagent: str | None = None
    for word in words:
        if word in ENHANCED_T1_WORDS:
            ceagent = ceagent or ENHANCED_T1_WORDS[word]
            if word.startswith("t1"):
                found.add("T1w")
        if word in CONTRAST_WORDS:
            found.add(CONTRAST_WORDS[word])
    for needle, suffix in EMBEDDED_WORDS.items():
        if needle in compact:
            found.add(suffix)
    if "t2star" in compact:
        found.discard("T2w")
    suffix = next((s for s in CONTRAST_PRIORITY if s in found), None)
    if suffix is None:
        suffix = next((WEAK_WORDS[w] for w in words if w in WEAK_WORDS), None)
    if suffix is None:
        return None
    return Contrast(suffix, ceagent if suffix == "T1w" else None, source)


def contrast_from_sidecar(metadata: Mapping[str, Any]) -> Contrast | None:
    """The contrast named by the sidecar's ``SeriesDescription`` or ``ProtocolName``."""
    for key in SIDECAR_FIELDS:
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            found = contrast_of_text(value, source=f"sidecar:{key}")
            if found is not None:
                return found
    return None


def read_sidecar_fields(path: Path | None) -> dict[str, Any]:
    """The :data:`SIDECAR_FIELDS` of a JSON sidecar (empty when missing or unreadable: contrast
    recognition must never stop discovery)."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return {k: data[k] for k in SIDECAR_FIELDS if isinstance(data, dict) and k in data}


def match_suffix_map(relative_path: str, suffix_map: Sequence[tuple[str, str]]) -> Contrast | None:
    """The first ``(pattern, suffix)`` whose glob matches the relative path or the file name."""
    name = relative_path.rsplit("/", 1)[-1]
    for pattern, suffix in suffix_map:
        if fnmatch.fnmatchcase(relative_path, pattern) or fnmatch.fnmatchcase(name, pattern):
            return Contrast(suffix, None, f"suffix-map:{pattern}")
    return None


def recognise(
    relative_path: str,
    sidecar: Path | None = None,
    suffix_map: Sequence[tuple[str, str]] = (),
) -> Contrast | None:
    """The contrast of a plain-folder file: ``--suffix-map``, then its name, then its sidecar."""
    found = match_suffix_map(relative_path, suffix_map) if suffix_map else None
    if found is None:
        found = contrast_of_text(relative_path.rsplit("/", 1)[-1])
    if found is None:
        found = contrast_from_sidecar(read_sidecar_fields(sidecar))
    return found


def load_suffix_map(
    path: str | os.PathLike[str], normalise: Any = None
) -> tuple[tuple[str, str], ...]:
    """Read a ``--suffix-map`` file: JSON ``{"pattern": "suffix", ...}`` (file order kept) or a
    TSV of ``pattern<TAB>suffix`` lines (an optional ``pattern suffix`` header, ``#`` comments).

    ``normalise`` maps a user's suffix (``T1``, ``mprage``) to a BIDS suffix and raises for one
    that is not structural; its message is passed on.

    Raises
    ------
    SuffixMapError
        For an unreadable file, a malformed line or an unknown suffix.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SuffixMapError(f"cannot read --suffix-map {path}: {err}") from err
    pairs: list[tuple[str, str]] = []
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SuffixMapError(f"--suffix-map {path} is not valid JSON: {err}") from err
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise SuffixMapError(
                f'--suffix-map {path} must hold a JSON object {{"glob pattern": "suffix", ...}}'
            )
        pairs = [(str(k), v) for k, v in data.items()]
    else:
        for number, row in enumerate(csv.reader(text.splitlines(), delimiter="\t"), start=1):
            cells = [c.strip() for c in row]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if number == 1 and [c.lower() for c in cells[:2]] == ["pattern", "suffix"]:
                continue
            if len(cells) < 2 or not cells[1]:
                raise SuffixMapError(
                    f"--suffix-map {path} line {number}: expected 'pattern<TAB>suffix', got {row!r}"
                )
            pairs.append((cells[0], cells[1]))
    if not pairs:
        raise SuffixMapError(f"--suffix-map {path} maps no pattern")
    out: list[tuple[str, str]] = []
    for pattern, suffix in pairs:
        if normalise is not None:
            try:
                suffix = normalise(suffix)
            except Exception as err:
                raise SuffixMapError(
                    f"--suffix-map {path}: pattern {pattern!r}: {getattr(err, 'message', err)}"
                ) from err
        out.append((pattern, suffix))
    return tuple(out)
