"""The group tables: every scan's participant-level derivatives of one contrast gathered into
``group_<suffix>.tsv`` (one row per scan, the fixed columns of
:data:`bids_qa.derivatives.GROUP_COLUMNS`, then one column per score) with its JSON sidecar, and
read back for the group report. The group level never opens an image."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_qa.derivatives import (
    GROUP_COLUMNS,
    MISSING,
    GroupPaths,
    find_scan_outputs,
    group_paths,
    read_scan_outputs,
    scan_parameters,
    write_json,
    write_tsv,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class GroupTable:
    """One contrast's group table assembled from derivatives.

    Attributes
    ----------
    suffix
        The contrast.
    metric_columns
        ``<model>.<metric>`` columns, first-seen order.
    rows
        One dict per scan: the :data:`GROUP_COLUMNS` plus its metric values (as written).
    thresholds
        ``{"<model>.<metric>": {review, fail, direction, ...}}`` that judged these scans (from
        their ``_qa.json``; the first scan listing a key wins).
    """

    suffix: str
    metric_columns: list[str]
    rows: list[dict[str, Any]]
    thresholds: dict[str, Any]


def collect_group_rows(
    out_dir: str | os.PathLike[str],
    suffixes: Sequence[str] = (),
    participant_label: Sequence[str] = (),
) -> tuple[dict[str, GroupTable], list[str]]:
    """Build the group tables from the participant-level derivatives (never from images).

    Returns
    -------
    tables
        ``{suffix: GroupTable}``.
    warnings
        Unreadable derivatives that were skipped.
    """
    out_dir = Path(out_dir)
    tables: dict[str, GroupTable] = {}
    warnings: list[str] = []
    for json_path in find_scan_outputs(out_dir):
        try:
            outputs = read_scan_outputs(json_path)
        except (OSError, ValueError) as err:
            warnings.append(f"skipped {json_path.relative_to(out_dir)}: {err}")
            continue
        scan = outputs.sidecar.get("scan") or {}
        entities = scan.get("entities") or {}
        suffix = str(entities.get("suffix") or "unknown")
        if suffixes and suffix not in suffixes:
            continue
        subject = entities.get("subject")
        if participant_label and subject is not None and subject not in participant_label:
            continue
        reasons = [str(r.get("message", "")) for r in outputs.sidecar.get("reasons") or []]
        reasons += [
            f"error [{e.get('stage')}]: {e.get('message')}"
            for e in outputs.sidecar.get("errors") or []
        ]
        report = outputs.paths.report
        row: dict[str, Any] = {
            "scan_id": outputs.sidecar.get("scan_id") or outputs.paths.stem,
            "subject": subject,
            "session": entities.get("session"),
            "run": entities.get("run"),
            "suffix": suffix,
            "source": scan.get("source"),
            **scan_parameters(scan),
            "verdict": outputs.sidecar.get("verdict", "error"),
            # " | ": a reason's own explanation may hold "; " (e.g. a tier's graded artifacts)
            "reasons": " | ".join(reasons),
            "notes": " | ".join(
                str(n.get("message", "")) for n in outputs.sidecar.get("notes") or []
            ),
            "report": report.relative_to(out_dir).as_posix() if report.is_file() else None,
            "_metadata": scan.get("metadata") or {},  # for protocol groups; not a column
        }
        table = tables.setdefault(suffix, GroupTable(suffix, [], [], {}))
        for model, metric, value in zip(
            outputs.metrics["model"],
            outputs.metrics["metric"],
            outputs.metrics["value"],
            strict=True,
        ):
            if model == "error":
                continue
            key = f"{model}.{metric}"
            if key not in table.metric_columns:
                table.metric_columns.append(key)
            row[key] = value
        for key, spec in (outputs.sidecar.get("thresholds") or {}).items():
            table.thresholds.setdefault(key, spec)
        table.rows.append(row)
    for table in tables.values():
        table.rows.sort(key=lambda r: (str(r["source"]), str(r["scan_id"])))
    return dict(sorted(tables.items())), warnings


def write_group_table(
    out_dir: str | os.PathLike[str],
    table: GroupTable,
    metric_descriptions: Mapping[str, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> GroupPaths:
    """Write ``group_<suffix>.tsv`` and its ``.json`` (column descriptions, verdict counts, the
    thresholds that judged the scans, provenance). Missing values are written as ``n/a``."""
    suffix, metric_columns, rows = table.suffix, table.metric_columns, table.rows
    paths = group_paths(out_dir, suffix)
    columns = list(GROUP_COLUMNS) + list(metric_columns)
    write_tsv(
        paths.tsv, columns, [{k: (None if v == "" else v) for k, v in r.items()} for r in rows]
    )
    descriptions = dict(GROUP_COLUMNS)
    for key in metric_columns:
        model, _, metric = key.partition(".")
        described = (metric_descriptions or {}).get(key)
        descriptions[key] = (
            described or f"Metric '{metric}' of scorer '{model}' (see docs/outputs.md)."
        )
    verdicts: dict[str, int] = {}
    for r in rows:
        verdicts[str(r.get("verdict"))] = verdicts.get(str(r.get("verdict")), 0) + 1
    write_json(
        paths.json,
        {
            "suffix": suffix,
            "n_scans": len(rows),
            "verdicts": verdicts,
            "columns": descriptions,
            "thresholds": {k: v for k, v in table.thresholds.items() if k in metric_columns},
            "provenance": dict(provenance or {}),
        },
    )
    return paths


def read_group_table(out_dir: str | os.PathLike[str], suffix: str) -> pd.DataFrame:
    """``group_<suffix>.tsv`` as a DataFrame: fixed columns as strings (labels such as ``01``
    stay text), ``n/a`` as missing, metric columns numeric where they parse."""
    import pandas as pd

    path = group_paths(out_dir, suffix).tsv
    table = pd.read_csv(
        path,
        sep="\t",
        dtype={c: str for c in GROUP_COLUMNS},
        keep_default_na=False,
        na_values=[MISSING],
    )
    for col in table.columns:
        if col in GROUP_COLUMNS:
            continue
        converted = pd.to_numeric(table[col], errors="coerce")
        if converted.notna().sum() == table[col].notna().sum():
            table[col] = converted
    return table
