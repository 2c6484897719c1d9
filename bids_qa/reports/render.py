"""Turn derivatives into the HTML reports: read, arrange, render with Jinja2 (autoescape on).

The reports only *show* what the pipeline wrote (``_qa.tsv``, ``_qa.json``, ``_slices.tsv``,
``group_<suffix>.tsv``/``.json``); no score is computed here. Verdicts and thresholds are the ones
stored with the scores, so a report always explains its own verdicts.

Safety (why so careful): scan ids come from file names and sidecars from scanners; either can hold
``<script>``. Every data string reaches the page through Jinja2 autoescaping or through a
``<script type="application/json">`` block written with ``|tojson`` (which escapes ``<``, ``>``,
``&`` and quotes), and the page scripts only ever assign ``textContent``. A Content-Security-Policy
allows exactly our own inline scripts (by SHA-256 hash) and no network access at all, so even a
missed escape could neither run code nor phone home.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from bids_qa.derivatives import GROUP_COLUMNS
from bids_qa.errors import ScanError
from bids_qa.io import parse_number

#: Per-scan table columns (contract).
SCAN_COLUMNS = ("model", "metric", "value", "threshold", "flag", "direction")
#: Group table columns before the ``<model>.<metric>`` score columns (contract).
#: The group table's fixed (non-score) columns, acquisition columns included.
GROUP_ID_COLUMNS = tuple(GROUP_COLUMNS)
#: Fixed columns the group table always shows in their own cells (the other fixed columns, scan
#: parameters such as manufacturer, are optional columns of the column chooser).
TABLE_FIXED_COLUMNS = ("scan_id", "subject", "session", "run", "suffix", "source", "verdict", "reasons",
                       "notes", "report")
#: Verdicts in display order.
VERDICTS = ("pass", "review", "fail", "error")
#: Models whose rows are shown as classical image-quality metrics rather than model scores.
IQM_MODELS = ("iqm",)
#: Keys of ``_qa.json["scan"]`` shown as facts; every other key is scanner/sidecar metadata.
SCAN_FACT_KEYS = ("source", "bids", "entities", "shape", "zooms", "affine", "slice_axis", "anisotropy",
                  "parameters")  # parameters: the group columns copied from the metadata (shown once)
#: Rating scale of the rating widget (value, label).
RATINGS = ((1, "exclude"), (2, "poor"), (3, "acceptable"), (4, "excellent"))
#: Artifact check boxes of the rating widget (key stored in exports, label shown).
RATING_ARTIFACTS = (
    ("motion", "Motion"),
    ("ghosting", "Ghosting / aliasing"),
    ("wrap", "Wrap-around"),
    ("noise", "Noise"),
    ("bias", "Intensity inhomogeneity"),
    ("blur", "Blur / low resolution"),
    ("contrast", "Poor contrast"),
    ("other", "Other"),
)


# ---------------------------------------------------------------------------------------------
# Reading derivatives (contract formats)
# ---------------------------------------------------------------------------------------------


def to_number(text: Any) -> float | None:
    """A cell as a float, or None when empty / not a number (``n/a``, labels):
    :func:`bids_qa.io.parse_number`."""
    return parse_number(text)


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float or None (JSON has no NaN; the page must parse it)."""
    v = to_number(value)
    return v if v is not None and math.isfinite(v) else None


def read_json(path: Path) -> dict[str, Any]:
    """A derivative JSON sidecar (:func:`bids_qa.derivatives.read_json_object`); ScanError (stage
    ``report``) when missing or malformed."""
    from bids_qa import derivatives as deriv

    try:
        return deriv.read_json_object(path)
    except (OSError, ValueError) as err:
        raise ScanError("report", f"cannot read {Path(path).name}: {err}") from err


@dataclass(frozen=True)
class ScoreRow:
    """One row of a per-scan ``_qa.tsv``."""

    model: str
    metric: str
    value: float | None
    text: str
    threshold: float | None
    flag: str
    direction: str

    @property
    def name(self) -> str:
        return f"{self.model}.{self.metric}"


@dataclass(frozen=True)
class ScanDerivatives:
    """A scan's derivatives as the report needs them."""

    folder: Path
    stem: str
    sidecar: dict[str, Any]
    rows: list[ScoreRow]
    slices: Any  # pandas.DataFrame | None

    @property
    def scan_id(self) -> str:
        return str(self.sidecar.get("scan_id") or self.stem)


def read_scan_derivatives(outputs_json: Path) -> ScanDerivatives:
    """Read ``_qa.json``, ``_qa.tsv`` and ``_slices.tsv`` with :func:`bids_qa.derivatives.read_scan_outputs`.

    Raises
    ------
    ScanError
        Stage ``"report"`` when a file is missing or malformed.
    """
    from bids_qa import derivatives as deriv

    try:
        outputs = deriv.read_scan_outputs(outputs_json)
    except (OSError, ValueError) as err:
        raise ScanError("report", f"cannot read the derivatives of {Path(outputs_json).name}: {err}") from err
    if not isinstance(outputs.sidecar, dict):
        raise ScanError("report", f"{outputs.paths.json.name} holds a {type(outputs.sidecar).__name__}, "
                                  "expected a JSON object")
    metrics = outputs.metrics
    missing = [c for c in ("model", "metric", "value") if c not in metrics.columns]
    if missing:
        raise ScanError("report", f"{outputs.paths.tsv.name} lacks column(s) {missing}; expected {list(SCAN_COLUMNS)}")
    rows = [ScoreRow(model=str(rec["model"]), metric=str(rec["metric"]), value=to_number(rec["value"]),
                     text=str(rec["value"]), threshold=to_number(rec.get("threshold", "")),
                     flag=(str(rec.get("flag") or "n/a")).strip().lower(),
                     direction=str(rec.get("direction") or "").strip())
            for rec in metrics.to_dict(orient="records")]
    return ScanDerivatives(folder=outputs.paths.folder, stem=outputs.paths.stem, sidecar=outputs.sidecar,
                           rows=rows, slices=outputs.slices)


@dataclass(frozen=True)
class SliceSeries:
    """One per-slice score: values along slice indices of one axis."""

    name: str
    model: str
    metric: str
    index: np.ndarray
    values: np.ndarray
    axis: int | None


_SLICE_FIXED = ("model", "metric", "value", "slice_index", "slice", "index", "slice_axis", "axis")


def slice_series(df) -> list[SliceSeries]:
    """Per-slice series from a ``_slices.tsv`` table.

    Reads the derivatives layout (``model slice_axis slice_index`` then one column per per-slice
    metric, one row per model and slice; a model leaves other models' columns ``n/a``), the long
    layout (``model metric slice_index value``) and a plain wide table (``slice_index`` then
    ``<model>.<metric>`` columns). Series are named ``<model>.<metric>``, or just ``<model>`` when
    the metric is named after its model (``severity``).
    """
    import pandas as pd

    cols = [str(c) for c in df.columns]
    slice_col = next((c for c in ("slice_index", "slice", "index") if c in cols), None)
    if slice_col is None:
        raise ScanError("report", f"the per-slice table has no slice_index column (columns: {cols})")

    def axis_of(frame) -> int | None:
        for c in ("slice_axis", "axis"):
            if c in frame.columns:
                vals = pd.to_numeric(frame[c], errors="coerce").dropna()
                if len(vals):
                    return int(vals.iloc[0])
        return None

    def build(name: str, model: str, metric: str, frame, column: str) -> SliceSeries | None:
        idx = pd.to_numeric(frame[slice_col], errors="coerce").to_numpy(float)
        vals = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        keep = np.isfinite(idx)
        idx, vals = idx[keep], vals[keep]
        if not np.isfinite(vals).any():
            return None
        order = np.argsort(idx, kind="stable")
        return SliceSeries(name, model, metric, idx[order], vals[order], axis_of(frame))

    out: list[SliceSeries] = []
    if {"model", "metric", "value"} <= set(cols):
        for (model, metric), g in df.groupby(["model", "metric"], sort=False):
            s = build(f"{model}.{metric}", str(model), str(metric), g, "value")
            if s:
                out.append(s)
        return out
    groups = df.groupby("model", sort=False) if "model" in cols else [("", df)]
    for model, g in groups:
        model = "" if model is None or (isinstance(model, float) and math.isnan(model)) else str(model)
        for c in cols:
            if c in _SLICE_FIXED:
                continue
            if model:
                name, metric = (model, c) if c == model else (f"{model}.{c}", c)
                s = build(name, model, metric, g, c)
            else:
                m, _, metric = c.partition(".")
                s = build(c, m, metric or c, g, c)
            if s:
                out.append(s)
    return out


def read_slice_table(path: Path) -> list[SliceSeries]:
    """:func:`slice_series` of a ``_slices.tsv`` file (``n/a`` and empty cells are missing)."""
    from bids_qa import derivatives as deriv

    try:
        df = deriv.read_slices_tsv(path)
    except (OSError, ValueError) as err:
        raise ScanError("report", f"cannot read {Path(path).name}: {err}") from err
    return slice_series(df)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    """Numbers with 4 significant digits, integers as integers, everything else as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e9:
            return str(int(v))
        return f"{v:.4g}"
    return str(value)


def split_name(text: Any) -> list[str]:
    """``sub-01_ses-2_T1w`` as ``["sub-", "01_", "ses-", "2_", "T1w"]``: the pieces a page may
    break a long name between (after ``_ - . /``), so a caption never breaks inside a word."""
    import re

    return [p for p in re.split(r"(?<=[_\-./])", str(text)) if p]


def href(path: str | Path) -> str:
    """A relative POSIX path as a URL reference (percent-encoding ``#``, ``?``, ``%``, ``<``...)."""
    return quote(Path(path).as_posix(), safe="/")


def storage_key(out_dir: Path) -> str:
    """localStorage key of the ratings of one output folder (every report of a run shares it)."""
    digest = hashlib.sha1(str(Path(out_dir).resolve()).encode()).hexdigest()[:12]
    return f"bids_qa.ratings.{digest}"


# ---------------------------------------------------------------------------------------------
# Jinja2 environment and page assets
# ---------------------------------------------------------------------------------------------


def template_folder() -> Path:
    """The report templates: ``bids_qa/templates`` in an installed wheel (which ships the top-level
    ``templates/`` folder there), else the source checkout's ``templates/`` (editable install)."""
    package = Path(__file__).resolve().parent.parent
    for folder in (package / "templates", package.parent / "templates"):
        if (folder / "scan.html").is_file():
            return folder
    raise FileNotFoundError(f"report templates not found in {package} or beside it")


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment: the report templates, autoescape on for every template, strict
    undefined."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_folder()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["split_name"] = split_name
    return env


@lru_cache(maxsize=8)
def asset(name: str) -> str:
    """A static asset (CSS/JS) shipped beside the templates (:func:`template_folder`), read once."""
    source, _, _ = environment().loader.get_source(environment(), name)
    if "</script" in source.lower() or "</style" in source.lower():
        raise ValueError(f"asset {name} must not contain a closing script/style tag")
    return source


def page_assets(scripts: Iterable[str]) -> dict[str, Any]:
    """CSS, the concatenated page script and the Content-Security-Policy that allows only it.

    The script is allowed by its SHA-256 hash (no ``'unsafe-inline'``), so an injected inline
    script or event handler would be refused by the browser even if escaping ever failed.
    """
    from markupsafe import Markup

    js = "\n".join(asset(s) for s in scripts)
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()
    csp = ("default-src 'none'; "
           f"script-src 'sha256-{digest}'; "
           "style-src 'unsafe-inline'; img-src 'self' file: data: blob:; "
           "connect-src 'none'; form-action 'none'; base-uri 'none'")
    return {"css": Markup(asset("report.css")), "script": Markup(js), "csp": csp}


def rating_config(out_dir: Path, suffix: str) -> dict[str, Any]:
    """What the rating widget needs, embedded as JSON."""
    return {"storage_key": storage_key(out_dir), "suffix": suffix,
            "ratings": [{"value": v, "label": lbl} for v, lbl in RATINGS],
            "artifacts": [{"key": k, "label": lbl} for k, lbl in RATING_ARTIFACTS]}


def render_page(template: str, context: dict[str, Any]) -> str:
    """Render one template with the given context."""
    import jinja2

    try:
        return environment().get_template(template).render(**context)
    except jinja2.TemplateError as err:
        raise ScanError("report", f"rendering {template} failed: {type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------------------------------
# Individual (scan) report context
# ---------------------------------------------------------------------------------------------


def scan_facts(scan: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(facts, entities, scanner metadata) rows from ``_qa.json["scan"]``."""
    facts: list[tuple[str, str]] = []
    if scan.get("source"):
        facts.append(("File", str(scan["source"])))
    if isinstance(scan.get("bids"), bool):
        facts.append(("Found as", "BIDS dataset file" if scan["bids"] else "plain NIfTI file (not BIDS)"))
    shape = scan.get("shape")
    if isinstance(shape, (list, tuple)) and shape:
        facts.append(("Matrix", " × ".join(fmt(s) for s in shape)))
    zooms = scan.get("zooms")
    if isinstance(zooms, (list, tuple)) and zooms:
        facts.append(("Voxel size", " × ".join(f"{float(z):.3g}" for z in zooms) + " mm"))
    if scan.get("anisotropy") is not None:
        facts.append(("Anisotropy (largest / smallest voxel)", fmt(to_number(scan["anisotropy"]) or scan["anisotropy"])))
    if scan.get("slice_axis") is not None:
        try:
            ax = int(scan["slice_axis"])
            facts.append(("Slice plane scored", f"{('sagittal', 'coronal', 'axial')[ax]} (axis {ax})"))
        except (TypeError, ValueError, IndexError):
            facts.append(("Slice plane scored", str(scan["slice_axis"])))
    entities = [(str(k), fmt(v)) for k, v in (scan.get("entities") or {}).items()]
    meta: list[tuple[str, str]] = []
    for key, value in scan.items():
        if key in SCAN_FACT_KEYS:
            continue
        if isinstance(value, dict):
            meta += [(str(k), _short(v)) for k, v in value.items()]
        else:
            meta.append((str(key), _short(value)))
    return facts, entities, meta


def _short(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return fmt(value)


def provenance_rows(prov: dict[str, Any]) -> dict[str, Any]:
    """Provenance split into scalar items, scorer versions, stage timings and anything else."""
    items, other = [], []
    scorers: list[tuple[str, str]] = []
    timings: list[tuple[str, float]] = []
    for key, value in prov.items():
        if key in ("scorers", "models") and isinstance(value, list):
            for s in value:
                if isinstance(s, dict):
                    scorers.append((str(s.get("name", "")), fmt(s.get("version", ""))))
                else:
                    scorers.append((str(s), ""))
        elif key.startswith("timings") and isinstance(value, dict):
            timings = [(str(k), float(v)) for k, v in value.items() if to_number(v) is not None]
        elif isinstance(value, (dict, list)):
            other.append((str(key), json.dumps(value, indent=1, sort_keys=True)))
        else:
            items.append((str(key), fmt(value)))
    return {"items": items, "scorers": scorers, "timings": timings,
            "total": sum(t for _, t in timings) if timings else None, "other": other}


def reason_rows(reasons: list[Any]) -> list[dict[str, str]]:
    """Reasons as display rows with their kind (evidence / context / fact) and the rule that
    fired, as the judge stored them; tolerate plain strings and older reasons without them."""
    from bids_qa.reports.group_extras import reason_item

    out = []
    for r in reasons or []:
        if isinstance(r, dict):
            message = str(r.get("message", ""))
            parsed = reason_item(message)
            out.append({"name": f"{r.get('model', '')}.{r.get('metric', '')}".strip("."),
                        "value": fmt(finite_or_none(r.get("value")) if to_number(r.get("value")) is not None
                                     else r.get("value", "")),
                        "threshold": fmt(to_number(r.get("threshold"))),
                        "flag": str(r.get("flag", "")).lower(),
                        "kind": str(r.get("kind") or parsed["kind"]),
                        "rule": str(r.get("rule") or parsed["rule"]),
                        "message": _without_kind(message)})
        else:
            parsed = reason_item(str(r))
            out.append({"name": "", "value": "", "threshold": "", "flag": "", "kind": parsed["kind"],
                        "rule": parsed["rule"], "message": _without_kind(str(r))})
    return out


def _without_kind(message: str) -> str:
    """A message without its leading ``evidence:`` / ``context:`` / ``fact:`` (shown as a badge)."""
    for kind in ("evidence", "context", "fact"):
        if message.startswith(kind + ": "):
            return message[len(kind) + 2:]
    return message


def input_kind_text(kind: Any) -> str:
    """One line saying what kind of input the scan was detected as (``_qa.json["input_kind"]``)."""
    if not isinstance(kind, dict):
        return ""
    parts = [label for key, label in (("skull_stripped", "skull-stripped"), ("defaced", "defaced"),
                                      ("zero_filled", "zero-filled background")) if kind.get(key) is True]
    grid = kind.get("standard_grid")
    if isinstance(grid, str) and grid:
        parts.append(f"on a standard grid ({grid})")
    elif grid is True:
        parts.append("on a standard (registered or conformed) grid")
    if not parts:
        parts.append("unprocessed head image (not skull-stripped, not defaced, native grid)")
    if kind.get("background_metrics_applicable") is False:
        parts.append("background metrics (EFC, FBER, SNRd, QI1 ...) not applicable")
    return "; ".join(parts)


def note_rows(notes: Any) -> list[dict[str, str]]:
    """The judge's notes (``_qa.json["notes"]``: facts that do not change the verdict, such as
    the acquisition, the detected input kind, explained flags) as ``{"kind", "source", "message"}``."""
    out = []
    for n in notes or []:
        if isinstance(n, dict):
            out.append({"kind": str(n.get("kind") or "fact"), "source": str(n.get("model") or ""),
                        "message": _without_kind(str(n.get("message", "")))})
        elif n:
            out.append({"kind": "fact", "source": "", "message": str(n)})
    return out


def match_row(series: SliceSeries, rows: list[ScoreRow]) -> tuple[float | None, str]:
    """Threshold and direction a per-slice series is drawn with, from the scan's ``_qa.tsv``.

    The row of the same ``<model>.<metric>`` when there is one; else, for a series named after its
    model, the model's only thresholded row (per-slice ``severity`` against ``severity.score``:
    Hays et al.'s cut of 1 applies to slices and volumes alike); ``flow.m1`` gets nothing from
    ``flow.log_density``. The direction falls back to any of the model's rows, then to the name
    (SSIM: lower is worse).
    """
    exact = next((r for r in rows if r.model == series.model and r.metric == series.metric), None)
    same_model = [r for r in rows if r.model == series.model]
    thresholded = [r for r in same_model if r.threshold is not None]
    # A series named after its model (per-slice ``severity``) is judged like the model's one
    # thresholded score; any other series (``flow.m1``, an embedding coordinate) only by its own
    # row: the density flag's level means nothing on an m axis.
    named_after_model = series.metric == series.model
    threshold = exact.threshold if exact and exact.threshold is not None else (
        thresholded[0].threshold if len(thresholded) == 1 and named_after_model else None)
    direction = (exact.direction if exact and exact.direction else
                 next((r.direction for r in same_model if r.direction in ("higher_is_worse", "lower_is_worse")), ""))
    if not direction:
        direction = "lower_is_worse" if "ssim" in series.name.lower() else "higher_is_worse"
    return threshold, direction


def ruler_blocks(rulers: Any, base_dir: Path, rel_prefix: str = "") -> tuple[list[dict[str, Any]], list[str]]:
    """Display data for the image rulers in ``_qa.json["rulers"]`` (the image-ruler paper).

    Ruler image paths are relative to the folder of the ``_qa.json``; a level whose image is missing
    is shown without a picture. Malformed entries are skipped with a note, never an error.
    """
    from bids_qa.reports.figures import ruler_scale

    blocks, notes = [], []
    if not isinstance(rulers, dict):
        return blocks, ([f"rulers entry is a {type(rulers).__name__}, expected an object; not shown"]
                        if rulers not in (None, {}) else [])
    for model, spec in rulers.items():
        try:
            levels = []
            for i, lev in enumerate(spec["levels"]):
                img = lev.get("image")
                ref = None
                if img:
                    p = Path(str(img))
                    if not p.is_absolute() and (base_dir / p).is_file():
                        ref = rel_prefix + href(p)
                levels.append({"n": i + 1, "severity": to_number(lev.get("severity")),
                               "score": float(lev["score"]), "href": ref})
            threshold = finite_or_none(spec.get("threshold"))
            scan_value = finite_or_none(spec.get("scan_value"))
            higher = spec.get("higher_is_worse", True) is not False
            for lv in levels:
                lv["crosses"] = threshold is not None and (lv["score"] > threshold if higher else lv["score"] < threshold)
            scale = ruler_scale([lv["score"] for lv in levels], threshold, scan_value)
            blocks.append({"model": str(model), "metric": str(spec.get("metric", "")), "levels": levels,
                           "threshold": threshold, "scan_value": scan_value, "scale": scale,
                           "source": str(spec.get("reference") or "this scan's central slice"),
                           "position": ruler_position(levels, scan_value, threshold, higher, scale.nearest)})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            notes.append(f"ruler for {model!s} is malformed ({type(err).__name__}: {err}); not shown")
    return blocks, notes


def ruler_position(levels: list[dict[str, Any]], scan_value: float | None, threshold: float | None,
                   higher_is_worse: bool, nearest: int | None) -> str:
    """Where the scan lies on its ruler, in words that cannot read as clean on a degraded scan."""
    if scan_value is None or nearest is None or not levels:
        return ""
    scores = [lv["score"] for lv in levels]
    worse = (lambda a, b: a > b) if higher_is_worse else (lambda a, b: a < b)
    side = "above" if higher_is_worse else "below"
    crossed = threshold is not None and worse(scan_value, threshold)
    verdict = f"this scan ({fmt(scan_value)}) is {side} the threshold {fmt(threshold)}" if crossed else (
        f"this scan ({fmt(scan_value)}) is within the threshold {fmt(threshold)}" if threshold is not None
        else f"this scan scores {fmt(scan_value)}")
    if all(worse(s, scan_value) for s in scores):
        return f"{verdict}; every ruler level scores worse than it (even level 1)"
    if all(worse(scan_value, s) for s in scores):
        return f"{verdict}; it scores worse than every ruler level (beyond level {len(levels)})"
    lv = levels[nearest]
    return (f"{verdict}; closest ruler level: {lv['n']} (score {fmt(lv['score'])}"
            + (f", {side} the threshold)" if lv.get("crosses") else ")"))


def slice_panels(series: list[SliceSeries], rows: list[ScoreRow], default_axis: int) -> tuple[list[Any], list[tuple[int, str]], int]:
    """Per-slice plots and the worst slices of the primary series.

    Returns ``(plots, worst, axis)``: ``worst`` lists ``(slice index, caption)`` of the primary
    series (severity when present, else the first one) along ``axis``, for the slice images.
    """
    from bids_qa.reports.figures import slice_plot, worst_slices

    ordered = sorted(series, key=lambda s: s.model != "severity")
    plots, worst = [], []
    axis = default_axis
    for k, s in enumerate(ordered):
        threshold, direction = match_row(s, rows)
        if threshold is None and s.metric != s.model:
            direction = ""  # an unjudged coordinate (flow.m1): no "worse" side, no worst slices
        bad = worst_slices(s.index, s.values, direction) if direction else []
        plots.append(slice_plot(s.name, s.index, s.values, threshold, bad, direction))
        if k == 0:
            axis = default_axis if s.axis is None else s.axis
            lookup = dict(zip(s.index.astype(int).tolist(), s.values.tolist(), strict=True))
            worst = [(i, f"slice {i}: {s.name} = {fmt(lookup[i])}") for i in bad]
    return plots, worst, axis


def judged_row(row: ScoreRow) -> bool:
    """Whether a metric row was judged (has a threshold or a flag): the others are information,
    listed compactly under "other metrics" instead of as a wall of n/a badges."""
    return row.threshold is not None or row.flag not in ("n/a", "", "none")


def scan_context(out_dir: Path, outputs_json: Path) -> dict[str, Any]:
    """Everything the scan template needs, read from the scan's derivatives.

    The figures are not made here: the caller draws them (they need an image) using
    ``context["slice_axis"]``, ``context["worst"]`` and ``context["worst_axis"]``, then sets
    ``context["figures"]``.
    """
    d = read_scan_derivatives(Path(outputs_json))
    info, rows = d.sidecar, d.rows
    scan = info.get("scan") if isinstance(info.get("scan"), dict) else {}
    facts, entities, meta = scan_facts(scan)
    ents = scan.get("entities") if isinstance(scan.get("entities"), dict) else {}
    suffix = str(ents.get("suffix", ""))

    notes: list[str] = []
    slice_axis = int(scan["slice_axis"]) if to_number(scan.get("slice_axis")) in (0.0, 1.0, 2.0) else 2
    plots: list[Any] = []
    worst: list[tuple[int, str]] = []
    worst_axis = slice_axis
    if d.slices is not None:
        try:
            plots, worst, worst_axis = slice_panels(slice_series(d.slices), rows, slice_axis)
        except ScanError as err:
            notes.append(err.message)
    rulers, ruler_notes = ruler_blocks(info.get("rulers"), d.folder)
    notes += ruler_notes

    errors = [{"stage": str(e.get("stage", "")), "message": str(e.get("message", ""))} if isinstance(e, dict)
              else {"stage": "", "message": str(e)} for e in (info.get("errors") or [])]
    listed = {(e["stage"], e["message"]) for e in errors}
    for r in rows:
        if r.model == "error" and (r.metric, r.text) not in listed:
            errors.append({"stage": r.metric, "message": r.text})
    verdict = str(info.get("verdict") or ("error" if errors else "n/a")).lower()
    prov = info.get("provenance") if isinstance(info.get("provenance"), dict) else {}
    scan_id = d.scan_id
    data = {"scan_id": scan_id, "rating": rating_config(out_dir, suffix)}
    return {
        "title": f"bids_qa report: {scan_id}", "scan_id": scan_id, "stem": d.stem, "folder": d.folder,
        "suffix": suffix, "verdict": verdict,
        "reasons": reason_rows(info.get("reasons") or []), "errors": errors,
        "scan_notes": note_rows(info.get("notes")),
        "input_kind": input_kind_text(info.get("input_kind")),
        "warnings": [str(w) for w in (info.get("warnings") or [])], "notes": notes,
        "facts": facts, "entities": entities, "metadata": meta,
        "scores": [r for r in rows if r.model not in IQM_MODELS and r.model != "error" and judged_row(r)],
        "other_scores": [r for r in rows if r.model not in IQM_MODELS and r.model != "error" and not judged_row(r)],
        "iqms": [r for r in rows if r.model in IQM_MODELS and judged_row(r)],
        "other_iqms": [r for r in rows if r.model in IQM_MODELS and not judged_row(r)],
        "figures": None, "extra_figures": None, "slice_axis": slice_axis, "worst": worst, "worst_axis": worst_axis,
        "slice_plots": plots, "rulers": rulers,
        "provenance": provenance_rows(prov), "data": data,
        "ratings": RATINGS, "artifacts": RATING_ARTIFACTS,
        **page_assets(["rating.js", "scan.js"]),
    }
