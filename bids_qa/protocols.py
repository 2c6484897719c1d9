"""Dataset-relative flags: each scan compared with the other scans of its protocol (group level).

A protocol group is the scans of one contrast with the same voxel size (rounded to 0.1 mm) and,
when the sidecars say, the same scanner and sequence (Manufacturer, ManufacturersModelName,
SeriesDescription or SequenceName). Within a group of at least :data:`MIN_GROUP` scans each main
score gets a robust z-score, ``(value - median) / (1.4826 * MAD)``; ``|z| > Z_LEVEL`` on the worse
side is a context reason naming the group and its size. Smaller groups are named "too small to
judge". Reads only the group table's columns (never images).

The verdict: a context flag raises a ``pass`` to ``review`` (never to ``fail``): a scan unlike
its own protocol's others is worth a look, but that alone does not prove an artifact.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: (column, direction): main scores compared within a protocol group.
MAIN_SCORES = (
    ("severity.score", "higher_is_worse"),
    ("ssim.ssim_mean", "lower_is_worse"),
    ("flow.log_density", "lower_is_worse"),
    ("iqm.inu_range", "higher_is_worse"),
)
Z_LEVEL = 3.5
MIN_GROUP = 8
MAD_TO_SD = 1.4826
#: Floor on the robust spread, relative to |median| (identical scores must not give infinite z).
MIN_SPREAD = 1e-3

PROTOCOL_COLUMNS = {
    "protocol.group": "Protocol group of the scan: contrast, voxel size (0.1 mm) and, where the "
    "sidecar says, scanner and sequence.",
    "protocol.group_size": "Number of scans in the protocol group.",
    "protocol.judged": "1 when the group is large enough to judge (>= 8 scans), else 0 (too small to judge).",
    "protocol.max_abs_z": "Largest robust z-score (median, 1.4826 x MAD) of the scan's main scores "
    "on their worse side within its protocol group.",
    "protocol.flag": "1 when a main score lies beyond the z level (3.5) on its worse side within "
    "the protocol group, else 0.",
}


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _voxel_text(row: dict[str, Any]) -> str:
    sizes = [_float(row.get(f"header.vox_{a}")) for a in "xyz"]
    if all(math.isfinite(s) for s in sizes):
        return "x".join(f"{s:.1f}" for s in sizes)
    text = row.get("header.voxel_size")
    if isinstance(text, str) and text:
        try:
            return "x".join(f"{float(p):.1f}" for p in text.split("x"))
        except ValueError:
            return text
    return "?"


def protocol_key(row: dict[str, Any], metadata: dict[str, Any] | None = None) -> str:
    """``T1w 1.0x1.0x1.0 mm | Siemens Prisma MPRAGE`` (scanner part only when known)."""
    metadata = metadata or {}
    scanner = " ".join(
        str(metadata[k]).strip()
        for k in ("Manufacturer", "ManufacturersModelName")
        if metadata.get(k)
    )
    sequence = next(
        (
            str(metadata[k]).strip()
            for k in ("SeriesDescription", "ProtocolName", "SequenceName")
            if metadata.get(k)
        ),
        "",
    )
    key = f"{row.get('suffix', '?')} {_voxel_text(row)} mm"
    extra = " ".join(p for p in (scanner, sequence) if p)
    return f"{key} | {extra}" if extra else key


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 MAD), NaN where the value is missing."""
    finite = np.isfinite(values)
    out = np.full(values.shape, np.nan)
    if finite.sum() < 2:
        return out
    med = float(np.median(values[finite]))
    spread = MAD_TO_SD * float(np.median(np.abs(values[finite] - med)))
    spread = max(spread, MIN_SPREAD * max(abs(med), 1e-6))
    out[finite] = (values[finite] - med) / spread
    return out


def protocol_flags(
    rows: list[dict[str, Any]],
    metadata: list[dict[str, Any]] | None = None,
    z_level: float = Z_LEVEL,
    min_group: int = MIN_GROUP,
) -> dict[str, Any]:
    """Add the ``protocol.*`` columns and context reasons to ``rows`` in place.

    Each row gains ``protocol_reasons`` (messages) when it is an outlier in its group; a row
    whose verdict is ``pass`` becomes ``review``. Returns a summary for the group JSON:
    ``{"groups": [{"protocol", "n_scans", "judged", "flagged"}], "z_level", "min_group"}``.
    """
    metadata = metadata or [{} for _ in rows]
    keys = [protocol_key(r, m) for r, m in zip(rows, metadata, strict=True)]
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    summary = []
    for key, members in groups.items():
        n = len(members)
        judged = n >= min_group
        flagged = 0
        zs: dict[str, np.ndarray] = {}
        if judged:
            for column, direction in MAIN_SCORES:
                vals = np.array([_float(rows[i].get(column)) for i in members])
                if np.isfinite(vals).sum() >= min_group:
                    sign = 1.0 if direction == "higher_is_worse" else -1.0
                    zs[column] = sign * robust_z(vals)
        for j, i in enumerate(members):
            row = rows[i]
            row["protocol.group"] = key
            row["protocol.group_size"] = n
            row["protocol.judged"] = int(judged)
            worst = [(c, float(z[j])) for c, z in zs.items() if np.isfinite(z[j])]
            row["protocol.max_abs_z"] = max((z for _, z in worst), default=None)
            hits = [(c, z) for c, z in worst if z > z_level]
            row["protocol.flag"] = int(bool(hits)) if judged else None
            messages = [
                f"context: {c} = {_float(row.get(c)):.4g} has robust z {z:.1f} (worse side) "
                f"within protocol group '{key}' of {n} scans; rule: |z| > {z_level:g} -> review"
                for c, z in hits
            ]
            if messages:
                flagged += 1
                row["protocol_reasons"] = messages
                if row.get("verdict") == "pass":
                    row["verdict"] = "review"
                row["reasons"] = " | ".join(
                    [r for r in [str(row.get("reasons") or "")] if r] + messages
                )
            if not judged:
                note = f"protocol group '{key}' has {n} scan(s): too small to judge (needs {min_group})"
                row["notes"] = " | ".join([p for p in [str(row.get("notes") or "")] if p] + [note])
        summary.append(
            {"protocol": key, "n_scans": n, "judged": judged, "flagged": flagged}
            | ({} if judged else {"status": "too small to judge"})
        )
    return {"groups": summary, "z_level": z_level, "min_group": min_group}


def apply_protocol_flags(table: Any) -> dict[str, Any]:
    """:func:`protocol_flags` on a :class:`bids_qa.derivatives.GroupTable`, adding its columns."""
    metadata = [r.pop("_metadata", {}) or {} for r in table.rows]
    out = protocol_flags(table.rows, metadata)
    for key in PROTOCOL_COLUMNS:
        if key not in table.metric_columns:
            table.metric_columns.append(key)
    for row in table.rows:
        row.pop("protocol_reasons", None)
    return out
