"""Command line: the BIDS-App (``bids_qa BIDS_DIR OUTPUT_DIR {participant,group}``) and the helper
commands (``bids_qa demo|simulate|evaluate|train ...``), each in its own module, imported lazily.

Nothing heavy is imported at module level, so ``bids_qa --help`` answers at once; torch is
imported inside the pipeline. ``main(argv)`` returns the exit code (tests call it directly);
``run()`` is the console entry point.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import NoReturn

from bids_qa import __version__
from bids_qa.config import ANALYSIS_LEVELS, DEVICES, available_cpus
from bids_qa.errors import ExitCode, FatalError

#: Helper commands dispatched on the first argument: name -> module exposing main(argv).
HELPERS = {
    "demo": "bids_qa.demo",
    "simulate": "bids_qa.simulate",
    "synthesize": "bids_qa.synthesize",
    "evaluate": "bids_qa.evaluate",
    "calibrate": "bids_qa.calibrate",
    "train": "bids_qa.training",
    "ratings": "bids_qa.ratings",
    "methods": "bids_qa.methods",
}
TRAIN_FAMILIES = ("severity", "flow", "ssim", "tiers")



class UsageError(Exception):
    """Raised instead of argparse's ``sys.exit(2)``: BIDS-Apps use 64 for usage errors."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


_EPILOG = """\
helper commands:
  bids_qa demo OUT                 build a small demo dataset in OUT and assess it
  bids_qa simulate ...             apply simulated artifacts to an image
  bids_qa synthesize LABELS OUT    draw synthetic heads of any contrast from label maps
  bids_qa evaluate ...             measure the models on labelled data
  bids_qa calibrate OUT --ratings FILE ...  learn thresholds from a dataset's ratings
  bids_qa train FAMILY ...         train a model family (severity, flow, ssim, tiers)
  bids_qa ratings merge FILE... -o merged.tsv   join raters' exports, with agreement (kappa)
  bids_qa methods OUTPUT_DIR       print a methods paragraph with citations

exit codes: 0 success; 1 internal failure; 16 invalid BIDS dataset; 17 unknown analysis level;
18 filters selected no files; 64 usage error; 65 every scan failed; 66 no input;
73 cannot create outputs; 74 output disk full (rerun to resume); 130/143 interrupted/terminated (rerun to resume).
See docs/usage.md.
"""


def _count_or_auto(text: str) -> int | None:
    """``auto`` -> None (resolved per device by the pipeline), else a positive integer."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or auto), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The BIDS-App argument parser (underscore spellings of BIDS-Apps options accepted)."""
    parser = _Parser(
        prog="bids_qa",
        description="Label-free artifact quality assessment of structural MRI (T1w, T2w, FLAIR, PDw, ...): "
        "per-scan metrics, pass/review/fail verdicts with reasons, and HTML reports.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "bids_dir",
        metavar="BIDS_DIR",
        help="input: a BIDS dataset, or any folder of .nii/.nii.gz files (plain-NIfTI mode)",
    )
    parser.add_argument(
        "output_dir", metavar="OUTPUT_DIR", help="where derivatives, reports and logs are written"
    )
    parser.add_argument(
        "analysis_level",
        metavar="{participant,group}",
        help="participant: assess each scan; group: tables and reports from participant outputs",
    )
    parser.add_argument("--version", action="version", version=f"bids_qa {__version__}")

    sel = parser.add_argument_group("selecting scans")
    for name, metavar, help_text in (
        ("participant-label", "LABEL",
         "subjects to assess (with or without 'sub-'), or a text file with one per line"),
        ("session-id", "LABEL",
         "sessions to assess (with or without 'ses-'); scans without a session are kept"),
        ("run-id", "INDEX", "runs to assess (with or without 'run-'); scans without a run are kept"),
    ):  # BIDS-Apps spell them with underscores; both spellings are accepted
        sel.add_argument(f"--{name}", f"--{name.replace('-', '_')}", nargs="+", action="extend",
                         default=[], metavar=metavar, help=help_text)
    sel.add_argument(
        "--suffix",
        "--modalities",
        "-m",
        dest="suffix",
        nargs="+",
        action="extend",
        default=[],
        metavar="SUFFIX",
        help="contrasts to assess (T1w T2w FLAIR PDw PD T2starw inplaneT1 inplaneT2 PDT2; "
        "aliases T1, T2, MPRAGE, T2star); default: every structural contrast found. In plain-NIfTI mode a "
        "single --suffix also names files whose name gives no contrast",
    )
    sel.add_argument(
        "--suffix-map",
        "--suffix_map",
        metavar="FILE",
        help="plain-NIfTI mode: glob pattern -> contrast, as JSON {\"*/t1_*\": \"T1w\"} or a TSV of "
        "pattern<TAB>suffix lines; the first matching pattern (on the path below BIDS_DIR or the file "
        "name) names a file's contrast before its name or sidecar is read",
    )
    sel.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        metavar="FILE",
        help='JSON entity filters, e.g. {"t1w": {"acquisition": "mprage"}, "t2w": {"suffix": "T2w"}}',
    )
    sel.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        action="store_true",
        help="also index files whose names are not valid BIDS (and accept an unreadable "
        "dataset_description.json by reading the folder as plain NIfTI files)",
    )
    sel.add_argument(
        "--bids-database-dir",
        "--bids_database_dir",
        metavar="DIR",
        help="persistent pybids index to create or reuse (default: an in-memory index)",
    )

    run = parser.add_argument_group("running")
    run.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda}",
        help="where the deep models run (default auto: cuda when available); cuda:N accepted",
    )
    run.add_argument(
        "--nprocs",
        "--n-cpus",
        "--n_cpus",
        dest="nprocs",
        type=int,
        default=None,
        metavar="N",
        help="threads that load scans ahead, run the IQMs and prepare the models' inputs "
        "(inference uses max(1, N/2) torch threads); at most N + scan-batch volumes are held in "
        f"memory (default: available CPUs, here {available_cpus()})",
    )
    run.add_argument(
        "--batch-size",
        "--batch_size",
        type=_count_or_auto,
        default=None,
        metavar="N|auto",
        help="slices per forward pass of the deep models (default auto: each model's own on CPU, "
        "64, the severity model 16; 512 on CUDA); lower it if the GPU runs out of memory",
    )
    run.add_argument(
        "--scan-batch",
        "--scan_batch",
        type=_count_or_auto,
        default=None,
        metavar="N|auto",
        help="consecutive scans scored together, sharing forward passes (default auto: 1 on CPU, "
        "8 on CUDA); scores do not depend on it",
    )
    run.add_argument(
        "--work-dir",
        "--work_dir",
        "-w",
        metavar="DIR",
        help="scratch folder for caches and temporary files (default OUTPUT_DIR/.bids_qa_work, removed "
        "at the end)",
    )
    run.add_argument(
        "--thresholds",
        metavar="FILE",
        help="JSON thresholds merged over the shipped ones (see docs/outputs.md#thresholds)",
    )
    run.add_argument(
        "--scorers",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="run only these registered scorers (header iqm severity flow ssim tiers)",
    )
    run.add_argument(
        "--no-reports",
        "--no_reports",
        dest="reports",
        action="store_false",
        help="do not render HTML reports",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute scans whose outputs are already complete (default: skip them)",
    )
    run.add_argument("-v", "--verbose", action="count", default=0, help="more messages (-v: debug)")
    run.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="fewer messages (-q: warnings, -qq: errors)",
    )
    return parser


def _dispatch_helper(argv: list[str]) -> int:
    name = argv[0]
    rest = argv[1:]
    module_name = HELPERS[name]
    if name == "train":
        if not rest or rest[0] in ("-h", "--help"):
            print(f"usage: bids_qa train {{{','.join(TRAIN_FAMILIES)}}} [options]", file=sys.stderr)
            return 0 if rest else ExitCode.USAGE
        family, rest = rest[0], rest[1:]
        if family not in TRAIN_FAMILIES:
            print(
                f"bids_qa train: unknown family {family!r}; choose from {', '.join(TRAIN_FAMILIES)}",
                file=sys.stderr,
            )
            return ExitCode.USAGE
        module_name = f"bids_qa.training.{family}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (err.name == module_name or module_name.startswith(err.name + ".")):
            print(
                f"bids_qa {name}: this command is not available in this installation ({err})",
                file=sys.stderr,
            )
            return ExitCode.USAGE
        raise
    return int(module.main(rest) or 0)


#: Options taking one or more values: given before the positional arguments, they take those too.
_LIST_OPTIONS = ("--participant-label", "--participant_label", "--session-id", "--session_id",
                 "--run-id", "--run_id", "--suffix", "--modalities", "-m", "--scorers")  # fmt: skip


def positional_hint(message: str, argv: list[str]) -> str | None:
    """A hint for "the following arguments are required" when options came first: a list option
    (``--participant-label 01 ...``) takes every word after it, positional arguments included."""
    if "the following arguments are required" not in message:
        return None
    listed = [a for a in argv if a.split("=", 1)[0] in _LIST_OPTIONS]
    if listed:
        return (
            f"{listed[0]} takes every value after it, so BIDS_DIR OUTPUT_DIR and the analysis level "
            "were read as its values: give the positional arguments first "
            "(bids_qa BIDS_DIR OUTPUT_DIR participant --participant-label 01 02), or end the list "
            "with -- before them"
        )
    if argv and argv[0].startswith("-"):
        return "the positional arguments BIDS_DIR OUTPUT_DIR {participant,group} come first, then the options"
    return None


def _usage_error(
    parser: argparse.ArgumentParser, message: str, argv: list[str] | None = None
) -> int:
    parser.print_usage(sys.stderr)
    print(f"bids_qa: error: {message}", file=sys.stderr)
    hint = positional_hint(message, argv or [])
    if hint:
        print(f"bids_qa: hint: {hint}", file=sys.stderr)
    return ExitCode.USAGE


def main(argv: list[str] | None = None) -> int:
    """Run ``bids_qa`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HELPERS and not (len(argv) >= 3 and argv[2] in ANALYSIS_LEVELS):
        return _dispatch_helper(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        return _usage_error(parser, str(err), argv)
    except SystemExit as exit_:  # --help and --version
        return int(exit_.code or 0)

    if args.analysis_level not in ANALYSIS_LEVELS:
        parser.print_usage(sys.stderr)
        print(
            f"bids_qa: error: unknown analysis level {args.analysis_level!r}; use participant or group",
            file=sys.stderr,
        )
        return ExitCode.UNKNOWN_LEVEL

    from bids_qa.config import RunConfig
    from bids_qa.contrasts import SuffixMapError, load_suffix_map
    from bids_qa.discover import load_filter_file, normalise_labels, normalise_suffixes
    from bids_qa.scoring import REGISTRY
    from bids_qa.thresholds import ThresholdError, load_thresholds

    bids_dir = Path(args.bids_dir).expanduser().absolute()
    output_dir = Path(args.output_dir).expanduser().absolute()
    if args.analysis_level == "participant" and not bids_dir.is_dir():
        print(
            f"bids_qa: error: input folder {bids_dir} does not exist or is not a folder",
            file=sys.stderr,
        )
        return ExitCode.NO_INPUT
    if output_dir == bids_dir:
        return _usage_error(
            parser,
            "OUTPUT_DIR must differ from BIDS_DIR (the input is never written to); "
            "use e.g. BIDS_DIR/derivatives/bids_qa",
        )
    if args.device not in DEVICES and not args.device.startswith("cuda:"):
        return _usage_error(parser, f"--device {args.device!r}: choose auto, cpu, cuda or cuda:N")
    known = [e.name for e in REGISTRY]
    unknown = [s for s in args.scorers if s not in known]
    if unknown:
        return _usage_error(
            parser,
            f"--scorers {' '.join(unknown)}: unknown; registered scorers are {' '.join(known)}",
        )
    if args.nprocs is not None and args.nprocs < 1:
        return _usage_error(parser, f"--nprocs must be at least 1, got {args.nprocs}")
    try:
        participants = normalise_labels(args.participant_label, "sub")
        sessions = normalise_labels(args.session_id, "ses")
        runs = normalise_labels(args.run_id, "run")
        suffixes = normalise_suffixes(args.suffix)
        filters = load_filter_file(args.bids_filter_file) if args.bids_filter_file else None
        suffix_map = (
            load_suffix_map(
                Path(args.suffix_map).expanduser(),
                normalise=lambda name: normalise_suffixes([name])[0],
            )
            if args.suffix_map
            else ()
        )
    except FatalError as err:
        return _usage_error(parser, err.message)
    except SuffixMapError as err:
        return _usage_error(parser, str(err))
    thresholds_file = Path(args.thresholds).expanduser().absolute() if args.thresholds else None
    try:
        thresholds = load_thresholds(thresholds_file)
    except ThresholdError as err:
        return _usage_error(parser, str(err))

    config = RunConfig(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=args.analysis_level,
        participant_label=participants,
        session_id=sessions,
        run_id=runs,
        suffixes=suffixes,
        suffix_map=suffix_map,
        bids_filters=filters,
        skip_bids_validation=args.skip_bids_validation,
        bids_database_dir=Path(args.bids_database_dir).expanduser().absolute()
        if args.bids_database_dir
        else None,
        device=args.device,
        nprocs=args.nprocs if args.nprocs is not None else available_cpus(),
        batch_size=args.batch_size,
        scan_batch=args.scan_batch,
        work_dir=Path(args.work_dir).expanduser().absolute() if args.work_dir else None,
        thresholds_file=thresholds_file,
        scorers=tuple(args.scorers),
        reports=args.reports,
        overwrite=args.overwrite,
        verbosity=args.verbose - args.quiet,
    )
    if config.analysis_level == "group" and not _has_participant_outputs(output_dir):
        print(
            f"bids_qa: error: no participant-level outputs (*_qa.json) in {output_dir}; run the "
            "participant level first (nothing was written)",
            file=sys.stderr,
        )
        return ExitCode.NO_INPUT
    if config.analysis_level == "participant":
        from bids_qa.participant import run_participant

        return run_participant(config, thresholds)
    from bids_qa.group import run_group

    return run_group(config, thresholds)


def _has_participant_outputs(output_dir: Path) -> bool:
    """Whether the group level has anything to read; checked before any folder is created, so
    that a group run on an empty or mistyped folder leaves it untouched."""
    from bids_qa.derivatives import find_scan_outputs

    return output_dir.is_dir() and bool(find_scan_outputs(output_dir))


def run() -> None:
    """Console entry point (``bids_qa``)."""
    sys.exit(main())
