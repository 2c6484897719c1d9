"""``bids_qa ratings merge FILE... -o merged.tsv``: join several raters' exports into one table
with inter-rater agreement.

Input: the files the reports' "Export" buttons write (``bids_qa/templates/rating.js``): a TSV
with the columns ``scan_id rating artifacts comment updated`` (backslash escapes for backslash,
tab and line breaks; an optional ``rater`` column), or the JSON ``{"format": "bids_qa-ratings",
"ratings": [...]}`` (an optional ``"rater"`` key at the top or per record). Ratings are 1
exclude, 2 poor, 3 acceptable, 4 excellent. A file names its rater by its ``rater`` field, else by
its file name (``bids_qa_ratings_anna.tsv`` -> ``bids_qa_ratings_anna``).

Output: ``merged.tsv``, one row per scan rated by anyone (``scan_id``, ``n_raters``,
``mean_rating``, ``agree`` and per rater ``<rater>.rating``, ``<rater>.artifacts``,
``<rater>.comment``), and ``merged.json`` beside it with the agreement figures for every pair of
raters over the scans both rated: percent agreement, Cohen's kappa (Cohen 1960) and the
quadratic-weighted kappa for the ordinal scale (Cohen 1968), plus the overall percent agreement
and Fleiss' kappa (Fleiss 1971) over the scans every rater rated.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The rating scale of the reports (value -> label).
SCALE: dict[int, str] = {1: "exclude", 2: "poor", 3: "acceptable", 4: "excellent"}


class RatingsError(ValueError):
    """An export that cannot be read (the message names the file and the problem)."""


@dataclass
class Rating:
    """One rater's record of one scan."""

    scan_id: str
    rating: int | None
    artifacts: list[str] = field(default_factory=list)
    comment: str = ""


@dataclass
class RaterFile:
    """One rater's export: the rater's name and ratings by scan id (last record of a scan wins)."""

    rater: str
    path: Path
    ratings: dict[str, Rating]


def _unescape(text: str) -> str:
    """Undo rating.js's TSV escapes (``\\t``, ``\\n``, ``\\r``, ``\\\\``)."""
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), text)


def _clean(rec: dict[str, Any]) -> Rating | None:
    """A record as rating.js's ``clean`` keeps it: a scan id, a rating 1-4 or none, artifacts."""
    scan_id = rec.get("scan_id")
    if not isinstance(scan_id, str) or not scan_id:
        return None
    try:
        value: int | None = int(str(rec.get("rating", "")).strip())
    except ValueError:
        value = None
    if value not in SCALE:
        value = None
    arts = rec.get("artifacts") or []
    if isinstance(arts, str):
        arts = arts.split(",")
    artifacts = [str(a).strip() for a in arts if str(a).strip()]
    comment = rec.get("comment") if isinstance(rec.get("comment"), str) else ""
    if value is None and not artifacts and not comment:
        return None
    return Rating(scan_id, value, artifacts, comment)


def read_export(path: str | Path) -> RaterFile:
    """Read one rater's TSV or JSON export.

    Raises
    ------
    RatingsError
        For an unreadable file, malformed JSON, a TSV without ``scan_id``, or several raters in
        one file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise RatingsError(f"cannot read {path}: {err}") from err
    records: list[dict[str, Any]]
    rater: str | None = None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise RatingsError(f"{path} is not valid JSON: {err}") from err
        if isinstance(data, dict):
            rater = data.get("rater") if isinstance(data.get("rater"), str) else None
            data = data.get("ratings")
        if not isinstance(data, list):
            raise RatingsError(f'{path} holds no "ratings" list (is it a bids_qa ratings export?)')
        records = [r for r in data if isinstance(r, dict)]
    else:
        lines = [line for line in text.replace("\r\n", "\n").split("\n") if line != ""]
        if not lines:
            records = []
        else:
            head = [h.strip() for h in lines[0].split("\t")]
            if "scan_id" not in head:
                raise RatingsError(f"{path} has no scan_id column (is it a bids_qa ratings export?)")
            records = []
            for line in lines[1:]:
                cells = line.split("\t")
                records.append(
                    {h: _unescape(cells[i]) if i < len(cells) else "" for i, h in enumerate(head)}
                )
    named = {str(r["rater"]).strip() for r in records if str(r.get("rater") or "").strip()}
    if len(named) > 1:
        raise RatingsError(f"{path} holds ratings of several raters ({', '.join(sorted(named))})")
    rater = rater or (named.pop() if named else None) or path.stem
    ratings: dict[str, Rating] = {}
    for rec in records:
        cleaned = _clean(rec)
        if cleaned is not None:
            ratings[cleaned.scan_id] = cleaned
    return RaterFile(rater=rater, path=path, ratings=ratings)


# --------------------------------------------------------------------------------------------
# Agreement


def percent_agreement(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Share of items given the same rating (0-1); None without items."""
    if not a:
        return None
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def cohen_kappa(
    a: Sequence[int], b: Sequence[int], weights: str | None = None, categories: Sequence[int] = tuple(SCALE)
) -> float | None:
    """Cohen's kappa of two raters' ratings of the same items (Cohen 1960); with ``weights``
    ``"quadratic"`` or ``"linear"``, the weighted kappa for ordinal scales (Cohen 1968).

    kappa = 1 - sum(w * observed) / sum(w * expected), with disagreement weights w (0 on the
    diagonal; 1 off it for the unweighted kappa) and the expected table the product of the two
    raters' marginals. None without items; 1.0 when both raters gave one and the same category
    to every item (no disagreement is possible or observed).
    """
    n = len(a)
    if n == 0:
        return None
    cats = list(categories)
    index = {c: i for i, c in enumerate(cats)}
    k = len(cats)
    observed = [[0.0] * k for _ in range(k)]
    for x, y in zip(a, b, strict=True):
        observed[index[x]][index[y]] += 1.0 / n
    row = [sum(observed[i]) for i in range(k)]
    col = [sum(observed[i][j] for i in range(k)) for j in range(k)]

    def weight(i: int, j: int) -> float:
        if weights == "quadratic":
            return ((i - j) / (k - 1)) ** 2
        if weights == "linear":
            return abs(i - j) / (k - 1)
        return 0.0 if i == j else 1.0

    seen = sum(weight(i, j) * observed[i][j] for i in range(k) for j in range(k))
    expected = sum(weight(i, j) * row[i] * col[j] for i in range(k) for j in range(k))
    if expected == 0.0:
        return 1.0 if seen == 0.0 else 0.0
    return 1.0 - seen / expected


def fleiss_kappa(table: Sequence[Sequence[int]], categories: Sequence[int] = tuple(SCALE)) -> float | None:
    """Fleiss' kappa (Fleiss 1971) of items each rated by the same number (>= 2) of raters;
    ``table`` holds each item's ratings. None with fewer than one item or two raters."""
    if not table or len(table[0]) < 2:
        return None
    m = len(table[0])
    n = len(table)
    counts = [[sum(1 for r in item if r == c) for c in categories] for item in table]
    p_item = [(sum(c * c for c in row) - m) / (m * (m - 1)) for row in counts]
    p_cat = [sum(row[j] for row in counts) / (n * m) for j in range(len(categories))]
    p_bar = sum(p_item) / n
    p_e = sum(p * p for p in p_cat)
    if p_e == 1.0:
        return 1.0
    return (p_bar - p_e) / (1.0 - p_e)


def agreement(files: Sequence[RaterFile]) -> dict[str, Any]:
    """Pairwise and overall agreement of the raters' numeric ratings."""
    pairs = []
    for fa, fb in itertools.combinations(files, 2):
        shared = sorted(
            sid
            for sid in set(fa.ratings) & set(fb.ratings)
            if fa.ratings[sid].rating is not None and fb.ratings[sid].rating is not None
        )
        a = [fa.ratings[s].rating for s in shared]
        b = [fb.ratings[s].rating for s in shared]
        pairs.append(
            {
                "raters": [fa.rater, fb.rater],
                "n_scans": len(shared),
                "percent_agreement": _pct(percent_agreement(a, b)),  # type: ignore[arg-type]
                "cohen_kappa": _round(cohen_kappa(a, b)),  # type: ignore[arg-type]
                "weighted_kappa_quadratic": _round(cohen_kappa(a, b, "quadratic")),  # type: ignore[arg-type]
            }
        )
    every = sorted(
        set.intersection(*(set(s for s, r in f.ratings.items() if r.rating is not None) for f in files))
    ) if files else []
    table = [[f.ratings[s].rating for f in files] for s in every]
    overall = {
        "n_scans_rated_by_all": len(every),
        "percent_agreement": _pct(
            sum(len(set(row)) == 1 for row in table) / len(table) if table else None
        ),
        "fleiss_kappa": _round(fleiss_kappa(table)) if len(files) >= 2 else None,  # type: ignore[arg-type]
    }
    return {"pairs": pairs, "all_raters": overall}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100.0 * float(value), 2)


# --------------------------------------------------------------------------------------------
# Merged table


def merged_rows(files: Sequence[RaterFile]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of the merged table (one row per scan rated by anyone, sorted by id)."""
    columns = ["scan_id", "n_raters", "mean_rating", "agree"]
    for f in files:
        columns += [f"{f.rater}.rating", f"{f.rater}.artifacts", f"{f.rater}.comment"]
    ids = sorted(set().union(*(f.ratings for f in files))) if files else []
    rows = []
    for sid in ids:
        row: dict[str, Any] = {"scan_id": sid}
        values = []
        for f in files:
            rec = f.ratings.get(sid)
            row[f"{f.rater}.rating"] = rec.rating if rec else None
            row[f"{f.rater}.artifacts"] = ",".join(rec.artifacts) if rec and rec.artifacts else None
            row[f"{f.rater}.comment"] = rec.comment if rec and rec.comment else None
            if rec and rec.rating is not None:
                values.append(rec.rating)
        row["n_raters"] = len(values)
        row["mean_rating"] = round(sum(values) / len(values), 3) if values else None
        row["agree"] = (len(set(values)) == 1) if len(values) >= 2 else None
        rows.append(row)
    return columns, rows


def merge(paths: Sequence[str | Path], output: str | Path) -> dict[str, Any]:
    """Read the exports, write ``output`` (TSV) and its ``.json`` sidecar; return the sidecar.

    Raises
    ------
    RatingsError
        For an unreadable export, or two exports naming the same rater.
    """
    from bids_qa.derivatives import utc_now, write_json, write_tsv

    files = [read_export(p) for p in paths]
    seen: dict[str, Path] = {}
    for f in files:
        if f.rater in seen:
            raise RatingsError(
                f"{f.path} and {seen[f.rater]} both name rater {f.rater!r}; rename one file"
            )
        seen[f.rater] = f.path
    columns, rows = merged_rows(files)
    output = Path(output)
    write_tsv(output, columns, rows)
    sidecar = {
        "raters": [{"rater": f.rater, "file": str(f.path), "n_rated": len(f.ratings)} for f in files],
        "scale": {str(k): v for k, v in SCALE.items()},
        "n_scans": len(rows),
        "agreement": agreement(files),
        "methods": "Percent agreement; Cohen's kappa (Cohen 1960) and quadratic-weighted kappa "
        "(Cohen 1968) per pair of raters over the scans both rated; Fleiss' kappa (Fleiss 1971) "
        "over the scans every rater rated.",
        "generated": utc_now(),
    }
    write_json(output.with_suffix(".json"), sidecar)
    return sidecar


def main(argv: list[str] | None = None) -> int:
    """``bids_qa ratings merge FILE... -o merged.tsv``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="bids_qa ratings",
        description="Join several raters' exports of the reports' ratings into one table with "
        "agreement figures (percent agreement, Cohen's kappa).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    merge_p = sub.add_parser("merge", help="merge rating exports (TSV or JSON) into one TSV")
    merge_p.add_argument("files", nargs="+", metavar="FILE", help="exports, one per rater")
    merge_p.add_argument("-o", "--output", required=True, metavar="TSV", help="merged table to write")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 64
    try:
        sidecar = merge(args.files, args.output)
    except RatingsError as err:
        print(f"bids_qa ratings: error: {err}", file=sys.stderr)
        return 66 if "cannot read" in str(err) else 65
    except OSError as err:
        print(f"bids_qa ratings: error: cannot write {args.output}: {err}", file=sys.stderr)
        return 73
    print(f"{sidecar['n_scans']} scan(s) rated by {len(sidecar['raters'])} rater(s) -> {args.output}")
    for pair in sidecar["agreement"]["pairs"]:
        print(
            f"  {pair['raters'][0]} vs {pair['raters'][1]}: {pair['n_scans']} shared scan(s), "
            f"agreement {_show(pair['percent_agreement'], '%')}, Cohen's kappa {_show(pair['cohen_kappa'])}, "
            f"quadratic-weighted kappa {_show(pair['weighted_kappa_quadratic'])}"
        )
    overall = sidecar["agreement"]["all_raters"]
    if len(sidecar["raters"]) > 2:
        print(
            f"  all raters: {overall['n_scans_rated_by_all']} scan(s), agreement "
            f"{_show(overall['percent_agreement'], '%')}, Fleiss' kappa {_show(overall['fleiss_kappa'])}"
        )
    return 0


def _show(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:g}{unit}"
