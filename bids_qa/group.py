"""The group level: participant-level derivatives -> one table per contrast (with the dataset's
own flow-density refit) -> group reports. It never opens an image."""

from __future__ import annotations

import logging
import traceback

from bids_qa import __version__
from bids_qa import derivatives as deriv
from bids_qa.config import RunConfig
from bids_qa.errors import ExitCode, FatalError
from bids_qa.group_flow import DATASET_COLUMNS, apply_dataset_refit
from bids_qa.methods import methods_text, write_methods_file
from bids_qa.protocols import PROTOCOL_COLUMNS, apply_protocol_flags
from bids_qa.run_env import RunContext, open_output, run_level
from bids_qa.thresholds import ThresholdTable

LOGGER = logging.getLogger("bids_qa")


def run_group(config: RunConfig, thresholds: ThresholdTable | None = None) -> int:
    """Write the group tables (and reports) from the participant-level derivatives."""
    return run_level(config, lambda ctx: _group(ctx, thresholds))


def _group(ctx: RunContext, thresholds: ThresholdTable | None) -> int:
    config = ctx.config
    out_dir = config.output_dir
    thresholds = open_output(config, thresholds)
    tables, problems = deriv.collect_group_rows(out_dir, config.suffixes, config.participant_label)
    for message in problems:
        LOGGER.warning("%s", message)
    if not tables:
        raise FatalError(
            ExitCode.NO_INPUT,
            f"no participant-level outputs (*_qa.json) in {out_dir}"
            f"{' match the filters' if config.participant_label or config.suffixes else ''}; "
            "run the participant level first",
        )
    render_group_report = None
    if config.reports:
        try:
            from bids_qa.reports import render_group_report
        except Exception as err:
            LOGGER.debug("importing bids_qa.reports failed:\n%s", traceback.format_exc())
            LOGGER.warning("group reports unavailable: %s: %s", type(err).__name__, err)
    provenance = {
        "bids_qa_version": __version__,
        "generated": deriv.utc_now(),
        "run_id": ctx.run_id,
        "log": ctx.log_file.relative_to(out_dir).as_posix(),
    }
    for suffix, table in tables.items():
        descriptions = dict(thresholds.descriptions(suffix))
        group_provenance = dict(provenance)
        try:
            note = apply_dataset_refit(table, deriv.group_paths(out_dir, suffix).tsv.with_name(
                f"group_{suffix}_flow_density.png"))
            if note:
                group_provenance["flow_density"] = note
                descriptions.update(DATASET_COLUMNS)
                LOGGER.info("%s: flow density: %s", suffix, note["message"])
        except Exception as err:  # the refit is an extra: never lose the group table over it
            LOGGER.debug("flow refit failed:\n%s", traceback.format_exc())
            LOGGER.error("%s: flow density refit failed: %s: %s", suffix, type(err).__name__, err)
        try:  # dataset-relative (protocol group) flags
            group_provenance["protocols"] = apply_protocol_flags(table)
            descriptions.update(PROTOCOL_COLUMNS)
        except Exception as err:  # an extra, like the refit: never lose the group table over it
            LOGGER.debug("protocol groups failed:\n%s", traceback.format_exc())
            LOGGER.error("%s: protocol groups failed: %s: %s", suffix, type(err).__name__, err)
        group_provenance["thresholds"] = thresholds.provenance()
        group_provenance["methods"] = methods_text(
            out_dir, suffix, flow_refit="flow_density" in group_provenance
        )
        paths = deriv.write_group_table(out_dir, table, descriptions, group_provenance)
        counts: dict[str, int] = {}
        for row in table.rows:
            counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
        LOGGER.info(
            "%s: %d scan(s) (%s) -> %s",
            suffix,
            len(table.rows),
            ", ".join(f"{n} {v}" for v, n in sorted(counts.items())),
            paths.tsv.name,
        )
        if render_group_report is not None:
            try:
                render_group_report(out_dir, suffix)
            except Exception as err:
                LOGGER.debug("group report failed:\n%s", traceback.format_exc())
                LOGGER.error(
                    "group report for %s failed: %s",
                    suffix,
                    getattr(err, "message", None) or f"{type(err).__name__}: {err}",
                )
    LOGGER.info("methods paragraph: %s", write_methods_file(out_dir).name)
    return ExitCode.OK
