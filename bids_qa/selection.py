"""Which scans a run selects: the BIDS entity vocabulary, participant/session/run labels as the
BIDS-Apps convention gives them (with or without prefix, or a text file of labels), and
``--bids-filter-file`` queries, parsed once and matched against each scan's entities."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bids_qa.errors import ExitCode, FatalError

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


def value_matches(actual: str | None, wanted: Any, key: str) -> bool:
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
        all(value_matches(entities.get(k), v, k) for k, v in q.items()) for q in queries.values()
    )


def matches_labels(entities: Mapping[str, str], key: str, labels: Sequence[str]) -> bool:
    """BIDS-Apps label filter: keep files without the entity; others must carry a listed label."""
    if not labels or key not in entities:
        return True
    return value_matches(entities[key], list(labels), key)
