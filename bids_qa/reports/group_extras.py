"""What the group report shows beyond the table and plots: compact reasons and notes, the
headline columns of the compact table, categorical columns to colour plots by, the thresholds'
provenance, the protocol groups, the methods paragraph and each scan's figure files.

Everything is read from the group table, its JSON sidecar and which figure files exist; nothing is
scored or judged here (the kind and rule of a reason are the ones the judge wrote in its message).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Kinds of statement a reason or note makes (DESIGN.md "The verdict").
KINDS = ("evidence", "context", "fact")
#: Group columns never offered for colouring (identifiers and free text).
NOT_CATEGORICAL = {"scan_id", "subject", "source", "reasons", "notes", "report", "suffix"}
#: Most distinct values a column may have to colour points by it (a palette stays readable).
MAX_CATEGORIES = 10
#: Most score columns in the compact table by default.
MAX_HEADLINE = 6
#: Figure files of one scan's report folder the group pages may show.
SCAN_FIGURES = ("thumb", "overview", "axial", "coronal", "sagittal")

_NAMED = re.compile(r"^(?:(?P<kind>evidence|context|fact):\s*)?(?P<name>[A-Za-z0-9_]+\.[A-Za-z0-9_.]+)\s*=\s*(?P<value>\S+)")
_KIND = re.compile(r"^(?P<kind>evidence|context|fact|error)\b\s*(?:\[[^\]]*\])?:\s*")
_RULE = re.compile(r"rule:\s*(?P<rule>.+)$")
_CROSSED = re.compile(r"is (?P<side>above|below|at or above|at or below) the (?P<level>review|fail) (?:threshold|level) (?P<cut>\S+?)[\s:,;)]")


def split_items(text: Any) -> list[str]:
    """A ``reasons`` or ``notes`` cell as its items (the group table joins them with `` | ``)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    return [p.strip() for p in str(text).split(" | ") if p.strip() and p.strip() != "n/a"]


def reason_item(text: str) -> dict[str, str]:
    """One reason as ``{"kind", "short", "text", "rule"}``: its kind (the judge starts every
    message with it), a short label (``severity.score = 1.42``) and the rule it names, if any."""
    kind_match = _KIND.match(text)
    kind = kind_match.group("kind") if kind_match else ""
    named = _NAMED.match(text)
    agreeing = re.search(r"(\d+) families agree", text)
    if named:
        short = f"{named.group('name')} = {named.group('value').rstrip(',;:')}"
    elif agreeing:
        short = f"{agreeing.group(1)} families agree"
    else:
        body = text[kind_match.end():] if kind_match else text
        short = body if len(body) <= 48 else body[:46].rsplit(" ", 1)[0] + " …"
    rule = _RULE.search(text)
    crossed = _CROSSED.search(text + " ")
    if rule:
        rule_text = rule.group("rule").strip()
    elif named and crossed:
        op = {"above": ">", "below": "<", "at or above": ">=", "at or below": "<="}[crossed.group("side")]
        rule_text = f"{named.group('name')} {op} {crossed.group('level')} level {crossed.group('cut')}"
    elif agree := re.search(r"the rule fails a scan when (\d+) do", text):
        rule_text = f"{agree.group(1)} or more families at review level -> fail"
    else:
        rule_text = ""
    return {"kind": kind, "short": short, "text": text, "rule": rule_text}


def headline_columns(score_columns: Sequence[str], thresholds: Mapping[str, Any],
                     secondary: Iterable[str] = ("iqm", "header"), limit: int = MAX_HEADLINE) -> list[str]:
    """Score columns of the compact table: model scores with a threshold in force (classical
    IQMs and header facts only when nothing else has one), then the tier."""
    secondary = tuple(secondary)
    judged = [c for c in score_columns if c in thresholds]
    main = [c for c in judged if c.split(".", 1)[0] not in secondary and not c.startswith("protocol.")]
    out = (main or judged)[:limit]
    tier = next((c for c in score_columns if c.endswith(".tier")), None)
    if tier and tier not in out:
        out.append(tier)
    if "protocol.max_abs_z" in score_columns:
        out.append("protocol.max_abs_z")
    return out


def _category(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return None if text in ("", "n/a") else text


def categorical_columns(records: Sequence[Mapping[str, Any]], columns: Sequence[str],
                        numeric: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Columns the score plots can be coloured by, with each scan's value as text.

    Any column with 2 to :data:`MAX_CATEGORIES` distinct values qualifies (scan parameters such
    as manufacturer or field strength, acq/rec entities, the protocol group, label columns); a
    numeric column only when it has few distinct values (field strength 1.5 / 3, not SNR).
    """
    numeric = set(numeric)
    out = []
    for col in columns:
        if col in NOT_CATEGORICAL or col == "verdict":
            continue
        values = [_category(r.get(col)) for r in records]
        distinct = sorted({v for v in values if v is not None})
        if not 2 <= len(distinct) <= (min(MAX_CATEGORIES, 6) if col in numeric else MAX_CATEGORIES):
            continue
        out.append({"column": col, "levels": distinct, "values": values})
    return out


def threshold_provenance(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """Where the thresholds in force came from (``provenance.thresholds`` of the group JSON):
    origin (default / user file / calibrated), source files, digest and the combination rule."""
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), Mapping) else {}
    spec = prov.get("thresholds") if isinstance(prov.get("thresholds"), Mapping) else None
    if spec is None:
        return None
    rule = spec.get("rule") if isinstance(spec.get("rule"), Mapping) else {}
    sources = spec.get("sources") if isinstance(spec.get("sources"), list) else []
    return {"origin": str(spec.get("origin") or "unknown"), "sources": [str(s) for s in sources],
            "sha256": str(spec.get("sha256") or ""), "agree": rule.get("agree"),
            "rule": str(rule.get("description") or ""), "justification": str(rule.get("justification") or "")}


def protocol_groups(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The protocol groups of the dataset-relative flags (``provenance.protocols``), each with
    its size and whether it was judged; groups too small to judge are named as such."""
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), Mapping) else {}
    spec = prov.get("protocols") if isinstance(prov.get("protocols"), Mapping) else None
    if spec is None:
        return None
    groups = []
    for g in spec.get("groups") or []:
        if not isinstance(g, Mapping):
            continue
        judged = bool(g.get("judged"))
        groups.append({"protocol": str(g.get("protocol", "")), "n_scans": g.get("n_scans"),
                       "judged": judged, "flagged": g.get("flagged"),
                       "status": "judged" if judged else str(g.get("status") or "too small to judge")})
    return {"groups": groups, "z_level": spec.get("z_level"), "min_group": spec.get("min_group")}


def methods_paragraph(meta: Mapping[str, Any], out_dir: Path, suffix: str) -> str | None:
    """The methods paragraph written at group level (``provenance.methods`` of the group JSON,
    else ``group_methods.md`` of the output folder), as plain text; None when neither exists."""
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), Mapping) else {}
    text = prov.get("methods")
    if isinstance(text, str) and text.strip():
        return text.strip()
    path = Path(out_dir) / "group_methods.md"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    lines = [line for line in text.splitlines() if not line.startswith("# ")]
    return "\n".join(lines).strip() or None


def scan_figure_files(out_dir: Path, report_rel: Path | None) -> dict[str, Path]:
    """Figure files of a scan's report that exist (``thumb``, ``overview``, mosaics), relative
    to the output folder; they lie in ``<stem>_figures/`` beside ``<stem>_report.html``."""
    if report_rel is None or not report_rel.name.endswith("_report.html"):
        return {}
    folder = report_rel.parent / f"{report_rel.name[: -len('_report.html')]}_figures"
    return {name: folder / f"{name}.png" for name in SCAN_FIGURES if (out_dir / folder / f"{name}.png").is_file()}


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def m_plane(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], density_png: str | None) -> dict[str, Any]:
    """Data of the report's one m-plane plot (Zuo et al.): each scan's ``flow.m1``/``flow.m2``,
    the density grid the group level stored (``provenance.flow_density.grid``) to shade it, or,
    from older outputs, a density image with its ``extent``. The group level's own m-plane PNG
    (axes of its own) is linked, not shown as a second plot."""
    from bids_qa.reports.figures import padded_range

    prov = meta.get("provenance") if isinstance(meta.get("provenance"), Mapping) else {}
    spec = prov.get("flow_density") if isinstance(prov.get("flow_density"), Mapping) else None
    if spec is None:
        spec = meta.get("flow_density") if isinstance(meta.get("flow_density"), Mapping) else {}
    m1 = [_finite(r.get("flow.m1")) for r in records]
    m2 = [_finite(r.get("flow.m2")) for r in records]
    grid = spec.get("grid") if isinstance(spec.get("grid"), Mapping) else None
    shade = None
    if grid is not None:
        ext = [_finite(e) for e in grid.get("extent") or []]
        cells = grid.get("log_density")
        if len(ext) == 4 and None not in ext and isinstance(cells, list) and cells and all(
                isinstance(row, list) and len(row) == len(cells[0]) for row in cells):
            values = [[_finite(v) for v in row] for row in cells]
            finite = [v for row in values for v in row if v is not None]
            levels = {str(k): _finite(v) for k, v in (grid.get("levels") or {}).items() if _finite(v) is not None}
            if finite:
                shade = {"extent": ext, "cells": values, "lo": min(finite), "hi": max(finite), "levels": levels}
    extent = spec.get("extent") if isinstance(spec.get("extent"), list) else None
    if extent is not None and (len(extent) != 4 or any(_finite(e) is None for e in extent)):
        extent = None
    image_extent = [float(e) for e in extent] if (extent and density_png and shade is None) else None
    box = (shade or {}).get("extent") or image_extent or []
    xs = [v for v in m1 if v is not None] + list(box[:2])
    ys = [v for v in m2 if v is not None] + list(box[2:])
    return {"m1": m1, "m2": m2, "shade": shade, "density": density_png if image_extent else None,
            "extent": image_extent, "figure": density_png,
            "density_kind": str(spec.get("density") or ""), "message": str(spec.get("message") or ""),
            "x_range": padded_range(xs, 0.02 if box else 0.06), "y_range": padded_range(ys, 0.02 if box else 0.06)}
