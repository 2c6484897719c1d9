"""Scoring a group of loaded scans with every scorer: one batched ``score_many`` call per scorer
(``--scan-batch`` scans at a time), falling back to one ``score`` per scan when the batch fails, so
one bad scan never costs the others their scores."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bids_qa.discover import Scan
from bids_qa.errors import ScanError
from bids_qa.plan import ScorerSet
from bids_qa.scoring import ScanScores, Scorer, checked_score_many

if TYPE_CHECKING:
    from bids_qa.loading import Loaded

LOGGER = logging.getLogger("bids_qa")


def score_error(scorer_name: str, err: BaseException, scan: Scan) -> str:
    """The error-row message of a scorer that failed on ``scan`` (the traceback goes to the log)."""
    if isinstance(err, ScanError):
        return f"{scorer_name}: {err.message}"
    if isinstance(err, MemoryError):
        return f"{scorer_name}: out of memory"
    LOGGER.debug(
        "scorer %s failed on %s:\n%s",
        scorer_name,
        scan.path,
        "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    )
    return f"{scorer_name}: {type(err).__name__}: {err}"




def suffix_for(scorer: Scorer, scan: Scan) -> str | None:
    """The BIDS suffix ``scorer`` is given for ``scan``: the scan's when it declares
    ``needs_suffix``, else None."""
    return scan.suffix if scorer.needs_suffix else None


def score_one(scorer: Scorer, volume: Any, scan: Scan) -> ScanScores:
    """``scorer.score`` on one scan, checked to return :class:`ScanScores`."""
    result = scorer.score(volume, suffix_for(scorer, scan))
    if not isinstance(result, ScanScores):
        raise TypeError(f"score() returned {type(result).__name__}, not ScanScores")
    return result


@dataclass
class ScanScoring:
    """One scan's scores from every scorer of the run (registry order), the score-stage errors
    (same order) and the seconds each step took."""

    results: list[ScanScores]
    errors: list[dict[str, str]]
    timings: dict[str, float]


def _score_members(scorer: Scorer, members: list[tuple[Scan, Loaded]]) -> list[ScanScores | str]:
    """One scorer on several loaded scans: a :func:`~bids_qa.scoring.checked_score_many` call when
    there are several, else, or when that call fails, one ``score`` per scan. Each entry is the
    scan's scores or its error message."""
    if len(members) > 1:
        try:
            return checked_score_many(
                scorer,
                [loaded.volume for _, loaded in members],
                [suffix_for(scorer, scan) for scan, _ in members],
            )
        except Exception as err:  # one bad scan must not cost the others their scores
            LOGGER.debug(
                "%s: scoring %d scans together failed (%s: %s); scoring them one by one:\n%s",
                scorer.name,
                len(members),
                type(err).__name__,
                err,
                traceback.format_exc(),
            )
    out: list[ScanScores | str] = []
    for scan, loaded in members:
        try:
            out.append(score_one(scorer, loaded.volume, scan))
        except Exception as err:
            out.append(score_error(scorer.name, err, scan))
    return out


def score_group(group: Sequence[tuple[Scan, Loaded]], scorer_set: ScorerSet) -> list[ScanScoring]:
    """Score a group of loaded scans with every scorer; never raises for a scan-level failure.

    What the loader threads did is not done again: results of the scorers run there
    (``in_loader``) and loader-side failures are taken from :class:`Loaded`. Each remaining
    scorer runs once for the whole group (:func:`_score_members`) on the scans that loaded and
    have no result or failure for it yet (a scan loaded without :func:`prepare_loaded` gets
    every scorer here). The time of a group call is shared equally among its scans in their
    ``score:<name>`` timings.
    """
    done: list[dict[str, ScanScores | str]] = [dict(loaded.failed) for _, loaded in group]
    timings: list[dict[str, float]] = [dict(loaded.timings) for _, loaded in group]
    for i, (_, loaded) in enumerate(group):
        done[i].update(loaded.results)
    for scorer in scorer_set.scorers:
        members = [
            i
            for i, (_, loaded) in enumerate(group)
            if loaded.volume is not None and scorer.name not in done[i]
        ]
        if not members:
            continue
        t0 = time.perf_counter()
        outs = _score_members(scorer, [group[i] for i in members])
        share = round((time.perf_counter() - t0) / len(members), 4)
        for i, out in zip(members, outs, strict=True):
            done[i][scorer.name] = out
            timings[i][f"score:{scorer.name}"] = share
    scorings = []
    for i, (_, loaded) in enumerate(group):
        results: list[ScanScores] = []
        errors: list[dict[str, str]] = []
        if loaded.volume is not None:
            for scorer in scorer_set.scorers:
                out = done[i].get(scorer.name)
                if isinstance(out, ScanScores):
                    results.append(out)
                elif out is not None:
                    errors.append({"stage": "score", "message": out})
        scorings.append(ScanScoring(results, errors, timings[i]))
    return scorings

