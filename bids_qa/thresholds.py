"""Thresholds that turn scores into verdicts, with the reasons behind each verdict.

The shipped defaults live in ``bids_qa/data/thresholds.json``::

    {"default": {"<model>.<metric>": {"review": x, "fail": y, "direction": "higher_is_worse",
                                       "inclusive": false, "description": "..."}},
     "T2w": {"<model>.<metric>": {...override...}}}

A user file (``--thresholds FILE``, same shape) is merged on top, field by field: an entry that
gives only ``review`` keeps the shipped ``fail`` and ``direction``; ``null`` for a whole entry
switches that threshold off; ``null`` for ``review`` or ``fail`` removes that level. Keys starting
with ``_`` are comments.

Comparison rule (why it is explicit): the papers state their cuts differently (Hays et al. flags
``> 1``; tiers flag ``>= 2``; the SSIM scheme calls ``>= 0.85`` good). A threshold therefore says
whether equality counts: ``higher_is_worse`` flags ``value > threshold`` (``>=`` when
``inclusive``), ``lower_is_worse`` flags ``value < threshold`` (``<=`` when ``inclusive``).
``categorical`` thresholds flag labels listed in ``review_values`` / ``fail_values``.
Values that could not be computed (NaN) are not judged (flag ``n/a``): a skull-stripped image has no
air, so air-based IQMs are undefined, which says nothing about the scan's quality.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa.scoring import ScanScores

DIRECTIONS = ("higher_is_worse", "lower_is_worse", "categorical")
FLAGS = ("pass", "review", "fail", "n/a")
_FIELDS = {
    "review",
    "fail",
    "direction",
    "inclusive",
    "review_values",
    "fail_values",
    "description",
    "explain",
    "justification",
}
#: Top-level keys of a thresholds file that are not contrasts.
_RULE_KEY = "rule"
_ORIGIN_KEY = "_origin"
#: Kind of statement a metric makes (DESIGN.md "The verdict"): header facts and protocol-group
#: context are notes unless given a level; everything else is evidence.
_KIND_OF_MODEL = {"header": "fact", "protocol": "context"}


def kind_of(key: str) -> str:
    """``fact``, ``evidence`` or ``context`` for a ``<model>.<metric>`` key."""
    return _KIND_OF_MODEL.get(key.split(".", 1)[0], "evidence")
_SEVERITY = {"n/a": 0, "pass": 1, "review": 2, "fail": 3}


class ThresholdError(ValueError):
    """A thresholds file is unreadable or inconsistent (the message names the file and key)."""


@dataclass(frozen=True)
class Threshold:
    """How one metric is judged.

    Attributes
    ----------
    review, fail
        Cut-offs (None: that level is not used).
    direction
        ``higher_is_worse``, ``lower_is_worse`` or ``categorical``.
    inclusive
        Whether a value equal to a cut-off is flagged.
    review_values, fail_values
        Labels flagged by a categorical threshold.
    description
        What the metric is and why the cut-off is where it is.
    explain
        Appended to a flag's reason: what such a flag usually means for this scan; ``{name}``
        is replaced by the same model's value of ``name`` (e.g. ``{tier_reason}``), so the
        reason says *why* in the scan's own numbers. A name the model did not report reads n/a.
    """

    review: float | None = None
    fail: float | None = None
    direction: str = "higher_is_worse"
    inclusive: bool = False
    review_values: tuple[str, ...] = ()
    fail_values: tuple[str, ...] = ()
    description: str = ""
    explain: str = ""
    justification: str = ""

    @property
    def active(self) -> bool:
        return any(x is not None for x in (self.review, self.fail)) or bool(
            self.review_values or self.fail_values
        )

    def _beyond(self, value: float, cut: float) -> bool:
        if self.direction == "higher_is_worse":
            return value >= cut if self.inclusive else value > cut
        return value <= cut if self.inclusive else value < cut

    def apply(self, value: Any) -> tuple[str, float | None]:
        """(flag, threshold compared with) for ``value``.

        The threshold returned is the fail cut-off for a fail, else the review cut-off (or the
        fail cut-off when there is no review level); None for categorical or unjudged values.
        """
        if self.direction == "categorical":
            label = str(value)
            if label in self.fail_values:
                return "fail", None
            if label in self.review_values:
                return "review", None
            return ("pass", None) if (self.review_values or self.fail_values) else ("n/a", None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy scalars, numeric strings
            except (TypeError, ValueError):
                return "n/a", None
        value = float(value)
        if not math.isfinite(value) or not self.active:
            return "n/a", None
        if self.fail is not None and self._beyond(value, self.fail):
            return "fail", self.fail
        if self.review is not None and self._beyond(value, self.review):
            return "review", self.review
        return "pass", self.review if self.review is not None else self.fail

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "direction": self.direction,
            "review": self.review,
            "fail": self.fail,
        }
        if self.inclusive:
            out["inclusive"] = True
        if self.review_values:
            out["review_values"] = list(self.review_values)
        if self.fail_values:
            out["fail_values"] = list(self.fail_values)
        if self.description:
            out["description"] = self.description
        if self.explain:
            out["explain"] = self.explain
        if self.justification:
            out["justification"] = self.justification
        return out


@dataclass(frozen=True)
class VerdictRule:
    """How flags combine into the verdict (``"rule"`` in a thresholds file).

    ``agree``: the number of evidence families (models) at review level or beyond that together
    fail a scan (0: never; a fail level alone still fails).
    """

    agree: int = 0
    description: str = ""
    justification: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "agree": self.agree,
            "description": self.description,
            "justification": self.justification,
        }


def parse_rule(spec: Any, where: str) -> VerdictRule:
    if spec is None:
        return VerdictRule()
    if not isinstance(spec, dict) or set(spec) - {"agree", "description", "justification"}:
        raise ThresholdError(
            f"{where}: 'rule' must be an object with agree, description, justification"
        )
    agree = spec.get("agree", 0)
    if isinstance(agree, bool) or not isinstance(agree, int) or agree < 0:
        raise ThresholdError(f"{where}: rule.agree must be a whole number >= 0, got {agree!r}")
    return VerdictRule(
        agree=agree,
        description=str(spec.get("description", "")),
        justification=str(spec.get("justification", "")),
    )


@dataclass(frozen=True)
class ThresholdTable:
    """Thresholds per contrast (``"default"`` applies to every contrast without an override).

    Attributes
    ----------
    table
        ``{contrast: {"<model>.<metric>": Threshold | None}}``; None switches a default off.
    sources
        Files merged, shipped defaults first.
    sha256
        Digest of the merged table (provenance; a change invalidates resumed scans).
    """

    table: dict[str, dict[str, Threshold | None]]
    sources: tuple[str, ...]
    sha256: str
    rule: VerdictRule = VerdictRule()
    origin: str = "default"

    def provenance(self) -> dict[str, Any]:
        """What the group tables say about the thresholds in force."""
        return {
            "origin": self.origin,
            "sources": list(self.sources),
            "sha256": self.sha256,
            "rule": self.rule.as_dict(),
        }

    def lookup(self, suffix: str, key: str) -> Threshold | None:
        """The threshold for ``key`` on contrast ``suffix``, or None when it has none."""
        specific = self.table.get(suffix, {})
        if key in specific:
            found = specific[key]
        else:
            found = self.table.get("default", {}).get(key)
        return found if found is not None and found.active else None

    def for_contrast(self, suffix: str) -> dict[str, Threshold]:
        """Every active threshold in force for ``suffix``."""
        keys = set(self.table.get("default", {})) | set(self.table.get(suffix, {}))
        out = {}
        for key in sorted(keys):
            found = self.lookup(suffix, key)
            if found is not None:
                out[key] = found
        return out

    def descriptions(self, suffix: str | None = None) -> dict[str, str]:
        """``{"<model>.<metric>": description}`` for documentation and group sidecars."""
        out: dict[str, str] = {}
        for contrast in ("default", suffix):
            for key, thr in self.table.get(contrast or "", {}).items():
                if thr is not None and thr.description:
                    out[key] = thr.description
        return out


def default_thresholds_path() -> Path:
    """The shipped ``thresholds.json``."""
    return Path(str(resources.files("bids_qa").joinpath("data", "thresholds.json")))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ThresholdError(f"cannot read thresholds file {path}: {err}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ThresholdError(f"thresholds file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ThresholdError(f"thresholds file {path} must hold a JSON object of contrasts")
    return data


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Field-wise merge of two raw threshold dicts (see the module docstring)."""
    merged = copy.deepcopy(dict(base))
    for contrast, entries in override.items():
        if contrast.startswith("_"):
            continue
        if contrast == _RULE_KEY:
            merged[_RULE_KEY] = {**(merged.get(_RULE_KEY) or {}), **(entries or {})}
            continue
        if not isinstance(entries, dict):
            raise ThresholdError(
                f"contrast {contrast!r} must map metric keys to threshold objects, got {entries!r}"
            )
        target = merged.setdefault(contrast, {})
        for key, spec in entries.items():
            if key.startswith("_"):
                continue
            if spec is None:
                target[key] = None
                continue
            if not isinstance(spec, dict):
                raise ThresholdError(
                    f'{contrast}/{key}: expected an object such as {{"review": 1.0}}, got {spec!r}'
                )
            start = target.get(key)
            if start is None and contrast != "default":
                start = merged.get("default", {}).get(key)
            target[key] = {**(start or {}), **spec}
    return merged


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ThresholdError(f"{where} must be a finite number or null, got {value!r}")
    return float(value)


def parse_threshold(spec: Mapping[str, Any], where: str) -> Threshold:
    """Validate one raw threshold object.

    Raises
    ------
    ThresholdError
        Unknown fields (typos), bad direction, non-numbers, or a fail level that is milder than
        the review level.
    """
    unknown = set(spec) - _FIELDS
    if unknown:
        raise ThresholdError(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}"
        )
    direction = spec.get("direction", "higher_is_worse")
    if direction not in DIRECTIONS:
        raise ThresholdError(f"{where}: direction {direction!r} is not one of {DIRECTIONS}")
    review = _number(spec.get("review"), f"{where}.review")
    fail = _number(spec.get("fail"), f"{where}.fail")
    if review is not None and fail is not None:
        if direction == "higher_is_worse" and fail < review:
            raise ThresholdError(
                f"{where}: fail ({fail:g}) must not be below review ({review:g}) when higher is worse"
            )
        if direction == "lower_is_worse" and fail > review:
            raise ThresholdError(
                f"{where}: fail ({fail:g}) must not be above review ({review:g}) when lower is worse"
            )
    inclusive = spec.get("inclusive", False)
    if not isinstance(inclusive, bool):
        raise ThresholdError(f"{where}.inclusive must be true or false, got {inclusive!r}")
    values: dict[str, tuple[str, ...]] = {}
    for name in ("review_values", "fail_values"):
        raw = spec.get(name, [])
        if not isinstance(raw, list) or not all(isinstance(v, (str, int, float)) for v in raw):
            raise ThresholdError(f"{where}.{name} must be a list of labels, got {raw!r}")
        values[name] = tuple(str(v) for v in raw)
    if direction == "categorical" and (review is not None or fail is not None):
        raise ThresholdError(
            f"{where}: a categorical threshold uses review_values/fail_values, not numbers"
        )
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise ThresholdError(f"{where}.description must be text")
    explain = spec.get("explain", "")
    if not isinstance(explain, str):
        raise ThresholdError(f"{where}.explain must be text")
    justification = spec.get("justification", "")
    if not isinstance(justification, str):
        raise ThresholdError(f"{where}.justification must be text")
    return Threshold(
        review=review,
        fail=fail,
        direction=direction,
        inclusive=inclusive,
        review_values=values["review_values"],
        fail_values=values["fail_values"],
        description=description,
        explain=explain,
        justification=justification,
    )


def parse_table(
    raw: Mapping[str, Any], origin: str = "thresholds"
) -> dict[str, dict[str, Threshold | None]]:
    """Validate a merged raw table into :class:`Threshold` objects."""
    table: dict[str, dict[str, Threshold | None]] = {}
    for contrast, entries in raw.items():
        if contrast.startswith("_") or contrast == _RULE_KEY:
            continue
        if not isinstance(entries, dict):
            raise ThresholdError(
                f"{origin}: contrast {contrast!r} must map metric keys to threshold objects"
            )
        parsed: dict[str, Threshold | None] = {}
        for key, spec in entries.items():
            if key.startswith("_"):
                continue
            if "." not in key:
                raise ThresholdError(
                    f"{origin}: key {key!r} in {contrast!r} must be '<model>.<metric>', e.g. 'iqm.cjv'"
                )
            parsed[key] = (
                None if spec is None else parse_threshold(spec, f"{origin}: {contrast}/{key}")
            )
        table[contrast] = parsed
    return table


def load_thresholds(user_file: str | os.PathLike[str] | None = None) -> ThresholdTable:
    """The shipped thresholds, with ``user_file`` merged on top when given.

    Raises
    ------
    ThresholdError
        When a file is unreadable or a threshold is inconsistent.
    """
    shipped = default_thresholds_path()
    raw = merge_tables({}, _read_json(shipped))
    sources = [str(shipped)]
    origin = "shipped thresholds"
    kind = "default"
    if user_file is not None:
        user_path = Path(user_file)
        user_raw = _read_json(user_path)
        raw = merge_tables(raw, user_raw)
        sources.append(str(user_path))
        origin = f"thresholds file {user_path}"
        kind = str(user_raw.get(_ORIGIN_KEY) or "user file")
    table = parse_table(raw, origin)
    rule = parse_rule(raw.get(_RULE_KEY), origin)
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode("utf-8")).hexdigest()
    return ThresholdTable(
        table=table, sources=tuple(sources), sha256=digest, rule=rule, origin=kind
    )


def _fmt(value: float) -> str:
    return f"{value:.4g}"


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_explanation(template: str, values: dict[str, Any]) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]`` (numbers to 4 significant
    digits); a name the model did not report reads ``n/a``, so a user's text never breaks a run."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            return "n/a"
        value = values[name]
        if isinstance(value, (float, np.floating)):
            return _fmt(float(value))
        return str(value)

    return _PLACEHOLDER.sub(one, template)


def reason_message(
    key: str,
    value: Any,
    threshold: Threshold,
    flag: str,
    cut: float | None,
    values: dict[str, Any] | None = None,
) -> str:
    """One-line explanation, e.g. ``iqm.cjv = 0.812 is above the review threshold 0.6 (higher is
    worse)``, followed by the threshold's ``explain`` text filled from the model's ``values``."""
    base = _comparison(key, value, threshold, flag, cut)
    if threshold.explain:
        return f"{base}: {fill_explanation(threshold.explain, values or {})}"
    return base


def _comparison(key: str, value: Any, threshold: Threshold, flag: str, cut: float | None) -> str:
    if threshold.direction == "categorical":
        return f"{key} = {value} is listed as a {flag} value"
    shown = _fmt(float(value))
    assert cut is not None
    if threshold.direction == "higher_is_worse":
        side = "at or above" if threshold.inclusive else "above"
        note = "higher is worse"
    else:
        side = "at or below" if threshold.inclusive else "below"
        note = "lower is worse"
    return f"{key} = {shown} is {side} the {flag} threshold {_fmt(cut)} ({note})"


def worst_flag(flags: Sequence[str]) -> str:
    """The most severe of ``flags`` among pass/review/fail (``pass`` when none is judged)."""
    worst = "pass"
    for flag in flags:
        if _SEVERITY.get(flag, 0) > _SEVERITY[worst]:
            worst = flag
    return worst


def judge(
    scores: Sequence[ScanScores],
    suffix: str,
    thresholds: ThresholdTable,
    metadata: Mapping[str, Any] | None = None,
    input_kind: Any = None,
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Verdict, reasons and table rows for one scan (:func:`judge_scan` without its notes)."""
    out = judge_scan(scores, suffix, thresholds, metadata, input_kind)
    return out.verdict, out.reasons, out.rows


@dataclass
class Judgement:
    """What :func:`judge_scan` decided about one scan.

    ``verdict``: pass/review/fail. ``reasons``: one dict per flag that counts (model, metric,
    value, threshold, flag, kind, rule, message). ``rows``: one dict per metric (the ``_qa.tsv``
    rows). ``notes``: facts and explained flags that do not change the verdict (kind, message).
    """

    verdict: str
    reasons: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    notes: list[dict[str, Any]]


def _acquisition(values: dict[str, Any], metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Header values with the sidecar's ``MRAcquisitionType`` deciding 2D/3D when present."""
    values = dict(values)
    declared = str((metadata or {}).get("MRAcquisitionType", "")).upper()
    if declared in ("2D", "3D"):
        values["acquisition"] = declared
        values["acquisition_source"] = "sidecar MRAcquisitionType"
        if declared == "3D":
            values["acquisition_plane"] = "n/a"
    else:
        values["acquisition_source"] = "voxel shape"
    return values


def header_note(values: Mapping[str, Any]) -> str:
    """``2D acquisition (axial; from voxel shape), voxels 0.72x0.72x4.00 mm, ...``."""

    def num(name: str, fmt: str = ".3g") -> str:
        v = values.get(name)
        return format(float(v), fmt) if isinstance(v, (int, float)) else "n/a"

    plane = values.get("acquisition_plane")
    where = f"{plane}; " if plane and plane != "n/a" else ""
    fov = "x".join(num(k, ".0f") for k in ("fov_x", "fov_y", "fov_z"))
    return (
        f"{values.get('acquisition', '?')} acquisition ({where}from {values.get('acquisition_source')}), "
        f"voxels {values.get('voxel_size')} mm, anisotropy {num('anisotropy')}, slice thickness "
        f"{num('slice_thickness')} mm, field of view {fov} mm"
    )


def _rule_text(key: str, thr: Threshold, flag: str, cut: float | None, suffix: str) -> str:
    if thr.direction == "categorical":
        return f"{key} in {flag}_values ({suffix})"
    op = {"higher_is_worse": ">=" if thr.inclusive else ">", "lower_is_worse": "<=" if thr.inclusive else "<"}[thr.direction]
    return f"{key} {op} {flag} level {_fmt(cut) if cut is not None else '?'} ({suffix})"


def judge_scan(
    scores: Sequence[ScanScores],
    suffix: str,
    thresholds: ThresholdTable,
    metadata: Mapping[str, Any] | None = None,
    input_kind: Any = None,
) -> Judgement:
    """Judge one scan by the table's levels and combination rule.

    Facts (``header.*``) are notes unless the table gives them a level. Metrics that need air
    are not judged when ``input_kind`` (:class:`bids_qa.input_kind.InputKind`) says the
    background was zeroed; a flow outlier flag on a processed input is a note. The verdict is
    ``fail`` when one flag is at fail level or ``thresholds.rule.agree`` (> 0) evidence families
    are at review level or beyond, ``review`` when any flag is, else ``pass``.
    """
    from bids_qa.input_kind import is_background_metric

    rows: list[dict[str, Any]] = []
    reasons: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    no_air = input_kind is not None and not input_kind.background_applicable
    processed = input_kind is not None and input_kind.processed
    if input_kind is not None:
        notes += [{"kind": "fact", "model": "input", "message": m} for m in input_kind.notes]
    for result in scores:
        values = result.values
        if result.scorer == "header":
            values = _acquisition(values, metadata)
            notes.insert(0, {"kind": "fact", "model": "header", "message": header_note(values)})
            values.pop("acquisition_source", None)  # in the note, not a metric row
        for metric, value in values.items():
            key = f"{result.scorer}.{metric}"
            thr = thresholds.lookup(suffix, key)
            row = {
                "model": result.scorer,
                "metric": metric,
                "value": value,
                "threshold": "",
                "flag": "n/a",
                "direction": "",
            }
            rows.append(row)
            if thr is None:
                continue
            row["direction"] = thr.direction
            if no_air and is_background_metric(key):
                continue  # not applicable: the input-kind note says why
            flag, cut = thr.apply(value)
            row["flag"] = flag
            row["threshold"] = cut if cut is not None else ""
            if flag not in ("review", "fail"):
                continue
            kind = kind_of(key)
            message = f"{kind}: " + reason_message(key, value, thr, flag, cut, result.values)
            rule = _rule_text(key, thr, flag, cut, suffix)
            if result.scorer == "flow" and processed:
                row["flag"] = "note"
                notes.append(
                    {
                        "kind": "fact",
                        "model": "flow",
                        "message": f"{message} — explained by the processing detected "
                        "(the flow reference holds unprocessed heads): a note, not a review",
                    }
                )
                continue
            reasons.append(
                {
                    "model": result.scorer,
                    "metric": metric,
                    "value": value,
                    "threshold": cut,
                    "flag": flag,
                    "kind": kind,
                    "rule": rule,
                    "message": message,
                }
            )
    reasons.sort(key=lambda r: -_SEVERITY[r["flag"]])
    verdict = worst_flag([r["flag"] for r in reasons])
    agree = thresholds.rule.agree
    families = sorted({r["model"] for r in reasons if r["kind"] == "evidence"})
    if verdict == "review" and agree > 0 and len(families) >= agree:
        verdict = "fail"
        reasons.insert(
            0,
            {
                "model": "rule",
                "metric": "agree",
                "value": len(families),
                "threshold": agree,
                "flag": "fail",
                "kind": "evidence",
                "rule": f"{agree} or more families at review level -> fail",
                "message": f"evidence: {len(families)} families agree at review level or beyond "
                f"({', '.join(families)}); the rule fails a scan when {agree} do",
            },
        )
    return Judgement(verdict, reasons, rows, notes)
