"""The participant level: discover -> load -> score -> judge -> write -> report, scan by scan.

Reliability rules enforced here:

* one bad scan never stops a run: every failure becomes an error row (stage, message) in that
  scan's outputs, and the run goes on;
* a finished scan is skipped on the next run (unless ``--overwrite``), an errored or interrupted
  one is redone (the sidecar, written last, marks a scan as done).

Throughput (issue 10): each scan is loaded once and every scorer reads the same
:class:`~bids_qa.volume.Volume`. The loader threads (:mod:`bids_qa.loading`) do all the CPU-side
work of a scan; the calling thread runs the networks ``--scan-batch`` scans at a time
(:mod:`bids_qa.batching`), judges, writes and reports. Thread counts: :class:`bids_qa.plan.ExecutionPlan`.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from bids_qa import __version__
from bids_qa import derivatives as deriv
from bids_qa.batching import ScanScoring, score_group
from bids_qa.config import RunConfig
from bids_qa.discover import Discovery, Scan, discover, metadata_subset
from bids_qa.errors import (
    ExitCode,
    FatalError,
    ScanError,
    is_out_of_space,
    out_of_space_message,
)
from bids_qa.input_kind import describe_volume
from bids_qa.loading import Loaded, iter_groups, iter_loaded, load_and_prepare, one_torch_thread
from bids_qa.plan import ExecutionPlan, ScorerSet, build_scorer_set, execution_plan, resolve_device
from bids_qa.run_env import RunContext, open_output, run_level, software_versions
from bids_qa.scoring import ScanScores
from bids_qa.thresholds import ThresholdTable, judge_scan

LOGGER = logging.getLogger("bids_qa")


@dataclass
class ScanOutcome:
    """What happened to one scan (for the run summary and the exit code)."""

    scan: Scan
    paths: deriv.ScanPaths
    verdict: str
    errors: list[dict[str, str]]
    seconds: float

    @property
    def failed(self) -> bool:
        """True when the scan could not be assessed (load, score or write failed)."""
        return any(e["stage"] != "report" for e in self.errors)


def resume_key(scan: Scan, scorer_set: ScorerSet, thresholds: ThresholdTable) -> dict[str, Any]:
    """What must be unchanged for a previous result to be reused."""
    try:
        stat = scan.path.stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime = None, None
    return {
        "source_size": size,
        "source_mtime_ns": mtime,
        "scorers": [[d["name"], d["version"]] for d in scorer_set.describe()],
        "thresholds_sha256": thresholds.sha256,
    }


def _ruler_json(
    result: ScanScores, paths: deriv.ScanPaths, used: dict[str, Any], write_images: bool,
    suffix: str | None = None,
) -> dict[str, Any]:
    """A scorer's ruler (the image-ruler paper) as JSON, with the threshold in force (defaults or the user's
    file) placed on it and, when reports are made, its images written next to the report."""
    ruler = result.ruler
    key = f"{result.scorer}.{ruler.metric}"
    if key in used:
        t = used[key]
        cut = t.review if t.review is not None else t.fail
        if cut is not None:
            ruler.threshold = float(cut)
    ruler = ruler.for_display(suffix)  # hook(reports): a degraded scan's ruler from a clean reference
    images = deriv.write_ruler_images(paths, result.scorer, ruler.images) if write_images else None
    return deriv.json_ready(ruler.to_json(images))


@dataclass
class RunShared:
    """What every scan of a run shares."""

    ctx: RunContext
    scorer_set: ScorerSet
    thresholds: ThresholdTable
    device: str
    software: dict[str, str]


def scan_info(scan: Scan, loaded: Loaded) -> dict[str, Any]:
    """The ``scan`` block of the sidecar: where the scan comes from and its geometry (from the
    volume, or from the header alone when the image did not load)."""
    info: dict[str, Any] = {
        "source": scan.source,
        "bids": scan.bids,
        "entities": dict(scan.entities),
        "metadata": metadata_subset(loaded.metadata),
    }
    volume = loaded.volume
    if volume is not None:
        info.update(
            shape=list(volume.shape),
            zooms=[float(z) for z in volume.zooms],
            affine=[[float(v) for v in row] for row in volume.affine],
            slice_axis=int(volume.slice_axis),
            anisotropy=float(volume.anisotropy),
        )
    else:
        info.update(
            shape=loaded.header.get("shape"),
            zooms=loaded.header.get("zooms"),
            affine=None,
            slice_axis=None,
            anisotropy=None,
        )
    info["parameters"] = deriv.scan_parameters(info)
    return info


@dataclass
class ScanRecord:
    """What was found about one scan, from which its table and sidecar are written. ``errors``,
    ``warnings`` and ``timings`` grow while the scan is written and reported."""

    scan: Scan
    info: dict[str, Any]
    verdict: str
    reasons: list[Any]
    notes: list[Any]
    input_kind: dict[str, Any] | None
    rows: list[dict[str, Any]]
    errors: list[dict[str, str]]
    warnings: list[str]
    thresholds: dict[str, Any]
    rulers: dict[str, Any]
    started: str
    timings: dict[str, float]

    @property
    def final_verdict(self) -> str:
        """``error`` when loading, scoring or writing failed (a failed report alone does not)."""
        return "error" if any(e["stage"] != "report" for e in self.errors) else self.verdict


def scan_table(record: ScanRecord) -> list[dict[str, Any]]:
    """The rows of ``_qa.tsv``: the judged scores, then one ``error`` row per error."""
    error_rows = [
        {
            "model": "error",
            "metric": e["stage"],
            "value": e["message"],
            "threshold": "",
            "flag": "error",
            "direction": "",
        }
        for e in record.errors
    ]
    return record.rows + error_rows


def scan_sidecar(record: ScanRecord, shared: RunShared, status: str) -> dict[str, Any]:
    """The ``_qa.json`` sidecar: verdict, reasons, errors, thresholds used and provenance.
    ``status`` is ``scored`` (report pending) or ``complete``."""
    config = shared.ctx.config
    out: dict[str, Any] = {
        "scan_id": record.scan.scan_id,
        "scan": record.info,
        "verdict": record.final_verdict,
        "reasons": record.reasons,
        "notes": record.notes,
        "input_kind": record.input_kind,
        "errors": list(record.errors),
        "warnings": record.warnings,
        "thresholds": record.thresholds,
        "columns": dict(deriv.QA_COLUMNS),
        "provenance": {
            "bids_qa_version": __version__,
            **shared.software,
            "scorers": shared.scorer_set.describe(),
            "scorers_skipped": list(shared.scorer_set.skipped),
            "thresholds": {
                "sources": list(shared.thresholds.sources),
                "sha256": shared.thresholds.sha256,
            },
            "config": config.to_dict(),
            "run_id": shared.ctx.run_id,
            "log": shared.ctx.log_file.relative_to(config.output_dir).as_posix(),
            "started": record.started,
            "finished": deriv.utc_now(),
            "timings_s": dict(record.timings),
            "status": status,
            "resume_key": deriv.normalise_key(
                resume_key(record.scan, shared.scorer_set, shared.thresholds)
            ),
        },
    }
    if record.rulers:
        out["rulers"] = record.rulers
    return out


def write_scan(
    record: ScanRecord,
    shared: RunShared,
    paths: deriv.ScanPaths,
    slices: Any,
    status: str,
) -> bool:
    """Write the scan's tables, then its sidecar (last: it marks the scan as done); a write
    failure becomes an error row of the record. Whether everything was written."""
    t_write = time.perf_counter()
    try:
        deriv.write_scan_tables(paths, scan_table(record), slices)
        record.timings["write"] = round(
            record.timings.get("write", 0.0) + time.perf_counter() - t_write, 4
        )
        deriv.write_json(paths.json, scan_sidecar(record, shared, status))
    except OSError as err:
        if is_out_of_space(err):  # every further write would fail too: _process stops the run
            raise
        LOGGER.error("%s: cannot write outputs in %s: %s", record.scan.source, paths.folder, err)
        record.errors.append({"stage": "write", "message": f"cannot write outputs: {err}"})
        return False
    return True


def assess_scan(
    scan: Scan,
    paths: deriv.ScanPaths,
    loaded: Loaded,
    shared: RunShared,
    scoring: ScanScoring | None = None,
) -> ScanOutcome:
    """Judge, write and report one loaded scan, scoring it first unless ``scoring`` (from
    :func:`score_group`) is given. Never raises for a scan-level failure."""
    config = shared.ctx.config
    started = deriv.utc_now()
    t_start = time.perf_counter()
    if scoring is None:
        scoring = score_group([(scan, loaded)], shared.scorer_set)[0]
    timings: dict[str, float] = {"load": round(loaded.seconds, 4), **scoring.timings}
    errors = list(loaded.errors) + list(scoring.errors)
    warnings = list(loaded.warnings)
    results = list(scoring.results)
    volume = loaded.volume

    t0 = time.perf_counter()
    kind = describe_volume(volume) if volume is not None else None
    judgement = judge_scan(results, scan.suffix, shared.thresholds, loaded.metadata, kind)
    verdict, reasons, rows = judgement.verdict, judgement.reasons, judgement.rows
    if errors:
        verdict = "error"
    used = shared.thresholds.for_contrast(scan.suffix)
    judged = {f"{r['model']}.{r['metric']}" for r in rows}
    timings["judge"] = round(time.perf_counter() - t0, 4)

    rulers: dict[str, Any] = {}
    for r in results:
        if r.ruler is not None:
            try:
                rulers[r.scorer] = _ruler_json(r, paths, used, config.reports, scan.suffix)
            except OSError as err:
                warnings.append(f"ruler images of {r.scorer} not written: {err}")
    per_slice = [(r.scorer, r.slice_axis, r.per_slice) for r in results if r.per_slice]
    record = ScanRecord(
        scan=scan,
        info=scan_info(scan, loaded),
        verdict=verdict,
        reasons=reasons,
        notes=judgement.notes,
        input_kind=kind.as_dict() if kind is not None else None,
        rows=rows,
        errors=errors,
        warnings=warnings,
        thresholds={k: t.as_dict() for k, t in used.items() if k in judged},
        rulers=rulers,
        started=started,
        timings=timings,
    )
    slices = deriv.slice_rows(per_slice) if per_slice else None

    want_report = config.reports
    ok = write_scan(record, shared, paths, slices, "scored" if want_report else "complete")
    if ok and want_report:
        t_report = time.perf_counter()
        message = _render_scan_report(config, paths, scan, volume)
        timings["report"] = round(time.perf_counter() - t_report, 4)
        if message is not None:
            errors.append({"stage": "report", "message": message})
            LOGGER.warning("%s: report failed: %s", scan.source, message)
        write_scan(record, shared, paths, slices, "complete")
    work = sum(v for k, v in scoring.timings.items() if k.startswith(("score:", "prepare:")))
    return ScanOutcome(
        scan, paths, record.final_verdict, errors, time.perf_counter() - t_start + work
    )


def _render_scan_report(
    config: RunConfig, paths: deriv.ScanPaths, scan: Scan, volume: Any
) -> str | None:
    """``bids_qa.reports.render_scan_report`` for one scan; an error message instead of raising."""
    try:
        from bids_qa.reports import render_scan_report

        render_scan_report(config.output_dir, paths.json, scan.path, volume=volume)
    except ScanError as err:
        return err.message
    except Exception as err:
        LOGGER.debug("report failed for %s:\n%s", scan.path, traceback.format_exc())
        return f"{type(err).__name__}: {err}"
    return None


def _discover(config: RunConfig) -> Discovery:
    exclude = [config.output_dir, config.work_root]
    if config.bids_database_dir is not None:
        exclude.append(config.bids_database_dir)
    found = discover(config.bids_dir, **config.selection(), exclude=exclude)
    for message in found.warnings:
        LOGGER.warning("%s", message)
    if not found.scans:
        if config.has_entity_filters:
            raise FatalError(
                ExitCode.NO_FILES, f"the filters selected no structural scan in {config.bids_dir}"
            )
        raise FatalError(
            ExitCode.NO_INPUT, f"no structural scan (.nii/.nii.gz) found in {config.bids_dir}"
        )
    return found


def run_participant(config: RunConfig, thresholds: ThresholdTable | None = None) -> int:
    """Assess every selected scan; returns the exit code (see :class:`~bids_qa.errors.ExitCode`)."""
    return run_level(config, lambda ctx: _participant(ctx, thresholds))


def _participant(ctx: RunContext, thresholds: ThresholdTable | None) -> int:
    config = ctx.config
    out_dir = config.output_dir
    thresholds = open_output(config, thresholds)

    found = _discover(config)
    LOGGER.info(
        "found %d scan(s) in %s (%s mode)",
        len(found.scans),
        config.bids_dir,
        "BIDS" if found.mode == "bids" else "plain-NIfTI",
    )
    planned, collisions = deriv.plan_scan_paths(out_dir, found.scans)
    for message in collisions:
        LOGGER.warning("%s", message)

    device = resolve_device(config.device)
    plan = execution_plan(config, device)
    scorer_set = build_scorer_set(config.scorers, device, plan.batch_size)
    torch = sys.modules.get("torch")  # imported by the device check or by a deep scorer
    saved_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(plan.torch_threads)
    try:
        if scorer_set.skipped:
            LOGGER.info(
                "not installed, skipped: %s (their weights are not shipped with this version)",
                ", ".join(scorer_set.skipped),
            )
        LOGGER.info(
            "scorers: %s on %s", ", ".join(d["name"] for d in scorer_set.describe()), device
        )
        LOGGER.debug(
            "%d loader thread(s), %d torch thread(s) for inference, batches of %s, "
            "%d scan(s) per group",
            plan.loader_threads,
            plan.torch_threads,
            plan.batch_size or "each family's default",
            plan.scan_batch,
        )
        shared = RunShared(ctx, scorer_set, thresholds, device, software_versions(device))

        todo: list[tuple[Scan, deriv.ScanPaths]] = []
        done = 0
        for scan, paths in planned:
            if not config.overwrite and deriv.scan_is_complete(
                paths, resume_key(scan, scorer_set, thresholds), need_report=config.reports
            ):
                done += 1
                continue
            todo.append((scan, paths))
        if done:
            LOGGER.info("%d scan(s) already done (use --overwrite to redo them)", done)
        outcomes = _process(todo, shared, plan)
    finally:
        if torch is not None and saved_threads is not None:
            torch.set_num_threads(saved_threads)
    return _summarise(outcomes, done, len(collisions), ctx)


def _process(
    todo: list[tuple[Scan, deriv.ScanPaths]], shared: RunShared, plan: ExecutionPlan
) -> list[ScanOutcome]:
    """Load and prepare scans in the loader threads; score them group by group, then judge,
    write and report each, in the calling (inference) thread."""
    from tqdm import tqdm

    config = shared.ctx.config
    outcomes: list[ScanOutcome] = []
    bar = tqdm(
        total=len(todo),
        unit="scan",
        desc="bids_qa",
        disable=True if config.verbosity < 0 else None,
        dynamic_ncols=True,
        leave=False,
    )
    scorer_set = shared.scorer_set
    stream = iter_loaded(
        todo,
        lambda item: load_and_prepare(item[0], scorer_set),
        plan.loader_threads,
        initializer=one_torch_thread,
    )
    try:
        for group in iter_groups(stream, plan.scan_batch):
            scorings = score_group([(item[0], loaded) for item, loaded in group], scorer_set)
            for ((scan, paths), loaded), scoring in zip(group, scorings, strict=True):
                try:
                    outcome = assess_scan(scan, paths, loaded, shared, scoring)
                except OSError as err:  # a full disk stops the run (exit NO_SPACE)
                    if not is_out_of_space(err):
                        raise
                    raise FatalError(
                        ExitCode.NO_SPACE,
                        out_of_space_message(err, config.output_dir, len(outcomes), len(todo)),
                    ) from err
                loaded.volume = None  # free it now, not when the whole group is done
                outcomes.append(outcome)
                bar.update(1)
                if outcome.failed:
                    first = next(e for e in outcome.errors if e["stage"] != "report")
                    LOGGER.warning(
                        "%s: error [%s] %s", scan.source, first["stage"], first["message"]
                    )
                else:
                    LOGGER.info(
                        "%s: %s (%.1f s)",
                        scan.source,
                        outcome.verdict,
                        outcome.seconds + loaded.seconds,
                    )
    finally:
        bar.close()
    return outcomes


def _summarise(outcomes: list[ScanOutcome], done: int, dropped: int, ctx: RunContext) -> int:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    text = ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) or "nothing new"
    elapsed = time.monotonic() - ctx.started_monotonic
    LOGGER.info(
        "processed %d scan(s) in %.1f s: %s; %d already done; outputs in %s",
        len(outcomes),
        elapsed,
        text,
        done,
        ctx.config.output_dir,
    )
    failed = [o for o in outcomes if o.failed]
    if outcomes and len(failed) == len(outcomes):
        LOGGER.error(
            "every scan of this run failed; see the error rows in the outputs and %s", ctx.log_file
        )
        return ExitCode.ALL_FAILED
    if failed:
        LOGGER.warning("%d scan(s) failed; see their error rows (verdict 'error')", len(failed))
    return ExitCode.OK


