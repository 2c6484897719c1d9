"""Group level of the flow family (Zuo et al.): refit the density on this dataset's own scans.

Reads only the ``flow.m1``/``flow.m2`` columns the participant level wrote (never images). With at
least :data:`bids_qa.models.flow.MIN_GROUP_SCANS` scans of a contrast the density is refit on them and
four ``flow.dataset_*`` columns are added; with fewer, the reference-population values written at
participant level stand and the group JSON says so. Either way the m-plane figure with density
contours is written next to the group table for the report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

DATASET_COLUMNS = {
    "flow.dataset_log_density": "Log density of the scan's m under a flow refit on this dataset's scans of this contrast (Zuo et al.); empty when the dataset has too few scans.",
    "flow.dataset_percentile": "Percentile of that density among this dataset's scans of this contrast.",
    "flow.dataset_flag_5pct": "1 when the density lies below the dataset's own 5% density level, else 0.",
    "flow.dataset_flag_3pct": "1 when the density lies below the dataset's own 3% density level, else 0.",
}


def _float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def apply_dataset_refit(table, figure_path: Path, seed: int = 0) -> dict[str, Any]:
    """Add the dataset refit columns to ``table`` (a :class:`bids_qa.group_table.GroupTable`) in
    place when it has enough scans, write the m-plane figure, and return a note for the group JSON.
    Does nothing (returns ``{}``) when the table has no flow columns."""
    if "flow.m1" not in table.metric_columns or "flow.m2" not in table.metric_columns:
        return {}
    from bids_qa.models import flow

    m = np.array(
        [[_float(r.get("flow.m1")), _float(r.get("flow.m2"))] for r in table.rows], dtype=np.float64
    )
    finite = np.isfinite(m).all(axis=1)
    judged = flow.dataset_outliers(m, seed=seed)
    if judged is None:
        note = {
            "density": "reference",
            "n_scans": int(finite.sum()),
            "min_scans_for_refit": flow.MIN_GROUP_SCANS,
            "message": f"{int(finite.sum())} scan(s) with an m value: fewer than {flow.MIN_GROUP_SCANS}, so the "
            "reference population's density (participant-level flow.* columns) is used",
        }
        density = flow.load_reference()
    else:
        for row, (_, rec) in zip(table.rows, judged.iterrows(), strict=False):
            row["flow.dataset_log_density"] = (
                None if math.isnan(rec["log_density"]) else float(rec["log_density"])
            )
            row["flow.dataset_percentile"] = (
                None if math.isnan(rec["percentile"]) else float(rec["percentile"])
            )
            for k in ("flag_5pct", "flag_3pct"):
                v = rec[k]
                row[f"flow.dataset_{k}"] = (
                    None
                    if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "<NA>"
                    else int(v)
                )
        for key in DATASET_COLUMNS:
            if key not in table.metric_columns:
                table.metric_columns.append(key)
        note = {
            "density": "dataset",
            "n_scans": int(finite.sum()),
            "seed": seed,
            "message": f"density refit on this dataset's {int(finite.sum())} scans (Zuo et al.)",
        }
        density = flow.refit_flow(m[finite], seed=seed)
    if finite.any():
        labels = [
            str(r.get("verdict", "")) for r, ok in zip(table.rows, finite, strict=False) if ok
        ]
        from bids_qa.reports.figures import plot_m_plane

        plot_m_plane(
            m[finite],
            labels,
            density,
            figure_path,
            title=f"{table.suffix}: m-plane ({note['density']} density)",
        )
        note["figure"] = figure_path.name
        note["grid"] = density_grid(m[finite], density)
    return note


#: Cells per axis of the density grid stored for the group report's m-plane.
GRID_CELLS = 40


def density_grid(m: np.ndarray, density, cells: int = GRID_CELLS) -> dict[str, Any]:
    """The density's log values on a grid around the scans' m values (padded by 25% of their
    span, at least +-1.5 around them), with the 5% and 3% levels when the density has them: the
    group report shades its one m-plane plot with it (it never evaluates a density itself)."""
    lo, hi = m.min(0), m.max(0)
    pad = np.maximum(0.25 * (hi - lo), 1.5)
    lo, hi = lo - pad, hi + pad
    gx = np.linspace(lo[0], hi[0], cells)
    gy = np.linspace(lo[1], hi[1], cells)
    xx, yy = np.meshgrid(gx, gy)
    score = density.log_density if hasattr(density, "log_density") else density
    ld = np.asarray(score(np.column_stack([xx.ravel(), yy.ravel()])), dtype=np.float64).reshape(xx.shape)
    levels = {}
    if hasattr(density, "level"):
        from bids_qa.models.flow import LEVELS

        levels = {f"{p:g}%": round(float(density.level(p)), 4) for p in LEVELS}
    return {"extent": [float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])],
            "log_density": [[round(float(v), 3) for v in row] for row in ld], "levels": levels}
