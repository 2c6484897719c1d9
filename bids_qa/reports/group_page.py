"""The group report's context: the group table and its sidecar arranged for ``group.html``
(score columns in plot order, thresholds, per-scan rows with links that resolve, the flow
m-plane, the compact table's columns, colour-by columns; the montage page's context). Reads derivatives only; never an image or a per-scan score file.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bids_qa.errors import ScanError
from bids_qa.group_table import read_group_table
from bids_qa.reports.render import (
    GROUP_ID_COLUMNS,
    RATING_ARTIFACTS,
    RATINGS,
    TABLE_FIXED_COLUMNS,
    VERDICTS,
    finite_or_none,
    fmt,
    href,
    page_assets,
    rating_config,
    read_json,
)


def group_thresholds(meta: dict[str, Any], columns: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Thresholds in force per score column, from the group JSON sidecar.

    ``meta["thresholds"]`` holds ``{"<model>.<metric>": {"review": x, "fail": y, "direction": d,
    "inclusive": bool, "review_values": [...], "fail_values": [...]}}`` (what judged the scans, as
    :func:`bids_qa.group_table.write_group_table` stores it). A bare number is one fail threshold.
    """
    out: dict[str, dict[str, Any]] = {}
    table = meta.get("thresholds") if isinstance(meta.get("thresholds"), dict) else {}
    for col in columns:
        spec = table.get(col)
        if spec is None:
            continue
        if not isinstance(spec, dict):
            spec = {"fail": spec}
        entry = {"review": finite_or_none(spec.get("review")),
                 "fail": finite_or_none(spec.get("fail", spec.get("threshold"))),
                 "direction": str(spec.get("direction", "") or ""),
                 "inclusive": bool(spec.get("inclusive", False)),
                 "review_values": [str(v) for v in spec.get("review_values") or []],
                 "fail_values": [str(v) for v in spec.get("fail_values") or []],
                 "description": str(spec.get("description", "") or "")}
        if entry["review"] is not None or entry["fail"] is not None or entry["review_values"] or entry["fail_values"]:
            out[col] = entry
    return out


def column_descriptions(meta: dict[str, Any], columns: Iterable[str]) -> dict[str, str]:
    """Column descriptions from the group JSON (``{"columns": {col: text}}``, BIDS-style
    ``{col: {"Description": text}}`` objects also accepted)."""
    cols_meta = meta.get("columns") if isinstance(meta.get("columns"), dict) else {}
    out = {}
    for col in columns:
        d = cols_meta.get(col, meta.get(col))
        if isinstance(d, dict):
            d = d.get("Description") or d.get("description")
        if isinstance(d, str) and d:
            out[col] = d
    return out


def find_tier_column(columns: Iterable[str]) -> str | None:
    """The tier column (Loizillon et al.): ``tiers.tier`` or any ``<model>.tier``."""
    cols = list(columns)
    if "tiers.tier" in cols:
        return "tiers.tier"
    return next((c for c in cols if c.endswith(".tier")), None)


#: Models whose columns are descriptive (classical IQMs, header facts): plotted on request only.
SECONDARY_MODELS = ("iqm", "header")


def order_plot_columns(columns: list[str], thresholds: dict[str, Any]) -> tuple[list[str], int]:
    """Plot order and how many plots are drawn up front.

    First the scores that have a threshold in force, then the models' main outputs (:func:`headline`);
    then, drawn only when the reader opens "More metrics", every other column (classical IQMs,
    header facts, per-class probabilities, indices/counts such as ``worst_slice``): a group can have
    90 such columns, and a wall of plots hides the few that explain the verdicts.
    """
    def secondary(col: str) -> bool:
        model, _, metric = col.partition(".")
        return model in SECONDARY_MODELS or "worst_slice" in metric or metric.startswith("n_")

    first = [c for c in columns if c in thresholds]
    first += [c for c in columns if c not in thresholds and not secondary(c) and headline(c)]
    rest = [c for c in columns if c not in first]
    return first + rest, len(first)


def headline(col: str) -> bool:
    """A model's main output, plotted up front even without a threshold (a volume score, a
    tier, a mean); per-class probabilities, percentiles and the like wait under "More metrics"."""
    metric = col.partition(".")[2]
    return metric in ("score", "tier", "ssim_mean", "log_density") or col.startswith("protocol.max")


def _text(value: Any) -> str:
    """A group-table cell as text (missing -> empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def group_rows(records: list[dict[str, Any]], out_dir: Path, score_columns: list[str],
               numeric: set[str]) -> list[dict[str, Any]]:
    """Display rows of the group table: links that resolve, figures that exist, formatted cells,
    reasons and notes as items with their kind (:mod:`bids_qa.reports.group_extras`).

    The figures lie in the report's figure folder, named after the report's file stem (which
    may differ from ``scan_id``: output names are made file-system safe).
    """
    from bids_qa.reports import group_extras as extras

    rows = []
    for i, rec in enumerate(records):
        scan_id = _text(rec.get("scan_id"))
        report_rel: Path | None = None
        raw = _text(rec.get("report")).strip()
        if raw and raw != "n/a":
            p: Path | None = Path(raw)
            if p.is_absolute():
                try:
                    p = p.resolve().relative_to(out_dir.resolve())
                except ValueError:
                    p = None  # a report outside the output folder cannot be linked relatively
            if p is not None and (out_dir / p).is_file():
                report_rel = p
        figs = {k: href(v) for k, v in extras.scan_figure_files(out_dir, report_rel).items()}
        cells = []
        for col in score_columns:
            num = finite_or_none(rec.get(col)) if col in numeric else None
            text = _text(rec.get(col))
            cells.append({"col": col, "text": fmt(num) if num is not None else (text or "n/a"), "sort": num})
        verdict = _text(rec.get("verdict")).strip().lower() or "n/a"
        rows.append({"i": i, "scan_id": scan_id, "subject": _text(rec.get("subject")),
                     "session": _text(rec.get("session")), "run": _text(rec.get("run")),
                     "source": _text(rec.get("source")), "verdict": verdict,
                     "reasons": _text(rec.get("reasons")),
                     "reason_items": [extras.reason_item(t) for t in extras.split_items(rec.get("reasons"))],
                     "note_items": extras.split_items(rec.get("notes")),
                     "href": href(report_rel) if report_rel is not None else None,
                     "thumb": figs.get("thumb"), "figs": figs, "cells": cells})
    return rows


def montage_path(out_dir: Path, suffix: str) -> Path:
    """``group_<suffix>_montage.html``: every scan of a contrast as one small overview image."""
    return Path(out_dir) / f"group_{suffix}_montage.html"


def montage_context(group: dict[str, Any]) -> dict[str, Any]:
    """What ``montage.html`` needs, from the group page's context (same rows, no scores)."""
    return {"suffix": group["suffix"], "title": f"bids_qa montage: {group['suffix']}", "rows": group["rows"],
            "n_scans": group["n_scans"], "group_href": href(group["html_path"].name), **page_assets([])}


def group_context(out_dir: Path, suffix: str) -> dict[str, Any]:
    """Everything the group template needs, from ``group_<suffix>.tsv`` and its JSON sidecar
    (read with :func:`bids_qa.group_table.read_group_table`)."""
    import pandas as pd

    from bids_qa import derivatives as deriv
    from bids_qa.reports import group_extras as extras

    out_dir = Path(out_dir)
    paths = deriv.group_paths(out_dir, suffix)
    if not paths.tsv.is_file():
        raise ScanError("report", f"no group table {paths.tsv.name} in {out_dir}; run the group level first")
    try:
        table = read_group_table(out_dir, suffix)
    except (OSError, ValueError) as err:
        raise ScanError("report", f"cannot read {paths.tsv.name}: {err}") from err
    meta = read_json(paths.json) if paths.json.is_file() else {}
    records = table.to_dict(orient="records")
    columns = [str(c) for c in table.columns]
    score_columns = [c for c in columns if c not in GROUP_ID_COLUMNS]
    param_columns = [c for c in columns if c in GROUP_ID_COLUMNS and c not in TABLE_FIXED_COLUMNS]
    numeric = {c for c in score_columns + param_columns if pd.api.types.is_numeric_dtype(table[c])
               and any(finite_or_none(r.get(c)) is not None for r in records)}
    rows = group_rows(records, out_dir, param_columns + score_columns, numeric)
    thresholds = group_thresholds(meta, score_columns)
    plot_columns, n_primary = order_plot_columns(
        [c for c in score_columns if c in numeric and c not in ("flow.m1", "flow.m2")], thresholds)
    descriptions = column_descriptions(meta, score_columns)
    for col, t in thresholds.items():
        if col not in descriptions and t["description"]:
            descriptions[col] = t["description"]

    counts = {v: 0 for v in VERDICTS}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    tier_col = find_tier_column(score_columns)
    tiers: dict[str, Any] | None = None
    if tier_col:
        def tier_of(rec: dict[str, Any]) -> str:
            num = finite_or_none(rec.get(tier_col))
            return fmt(num) if num is not None else (_text(rec.get(tier_col)) or "n/a")

        labels = sorted({tier_of(r) for r in records})
        grid = {v: {t: 0 for t in labels} for v in counts}
        for rec, row in zip(records, rows, strict=True):
            grid[row["verdict"]][tier_of(rec)] += 1
        tiers = {"column": tier_col, "labels": labels, "grid": grid,
                 "totals": {t: sum(grid[v][t] for v in grid) for t in labels}}

    flow = None
    if {"flow.m1", "flow.m2"} <= numeric:
        density = paths.tsv.with_name(f"{paths.tsv.stem}_flow_density.png")
        flow = extras.m_plane(records, meta, href(density.name) if density.is_file() else None)

    plot_thresholds = {c: {k: thresholds[c][k] for k in ("review", "fail", "direction")}
                       for c in plot_columns if c in thresholds}
    headline = extras.headline_columns(score_columns, thresholds, SECONDARY_MODELS)
    colour_by = extras.categorical_columns(records, param_columns + ["session", "run"] + score_columns, numeric)
    data = {
        "suffix": suffix,
        "columns": plot_columns,
        "n_primary": n_primary,
        "descriptions": {c: descriptions.get(c, "") for c in plot_columns},
        "thresholds": plot_thresholds,
        "scans": [{"id": r["scan_id"], "subject": r["subject"], "verdict": r["verdict"], "href": r["href"],
                   "figs": r["figs"], "v": [finite_or_none(records[r["i"]].get(c)) for c in plot_columns]}
                  for r in rows],
        "flow": flow,
        "colour_by": colour_by,
        "table_columns": param_columns + score_columns,
        "default_columns": ["verdict", "reasons", "notes", "rating"] + headline,
        "rating": rating_config(out_dir, suffix),
    }
    subjects = sorted({r["subject"] for r in rows if r["subject"]})
    return {
        "suffix": suffix, "title": f"bids_qa group report: {suffix}", "rows": rows,
        "score_columns": param_columns + score_columns, "param_columns": param_columns,
        "numeric": numeric, "descriptions": descriptions, "headline": headline,
        "threshold_source": extras.threshold_provenance(meta), "protocols": extras.protocol_groups(meta),
        "methods": extras.methods_paragraph(meta, out_dir, suffix),
        "montage_href": href(montage_path(out_dir, suffix).name),
        "thresholds": thresholds, "counts": counts, "tiers": tiers, "n_scans": len(rows),
        "flagged": [r for r in rows if r["verdict"] in ("review", "fail")],
        "flow": flow, "subjects": subjects, "data": data, "html_path": paths.html,
        "ratings": RATINGS, "artifacts": RATING_ARTIFACTS,
        **page_assets(["rating.js", "group.js"]),
    }
