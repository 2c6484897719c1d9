"""Refit only the flow model's reference density (Zuo et al.): keep a trained encoder, rebuild the
clean reference population from every clean training volume and its natural variants, refit the
RealNVP, and compare weights per validation source.

Why: the shipped reference was fitted on 26 volumes (20 real, 6 synthetic MNI heads). The training
split has grown (ds000011, the FNNDSC FSE T2w), and a user's scanner rarely matches one of ours, so
the reference should hold every real volume we may train on, at the resolutions scans come in. The
encoder is kept as it is (``--init``): its embedding is not retrained, only the density over it.

Reference population (:func:`refit_population`): for every clean training volume, the volume as
loaded and its resolution variants (:data:`RESOLUTION_VARIANTS`: resampled to 1.5 mm and 2.5 mm
isotropic, and a thick-slice version with 1 mm in-plane and 4 mm along the slice axis; never finer
than the volume itself, see :func:`resample_volume`); each of them under the flips, gammas and
centre-window shifts of :func:`bids_qa.training.flow.reference_population`. Optionally synthetic
heads (MNI-derived, ``--synthetic N``; label-map heads, ``--synthetic-share F``), recorded in the
weights' metadata. ``--exclude-folder`` leaves whole sources out (the leave-one-site-out estimate).

Comparison (:func:`evaluate_sources`): the cases of :func:`bids_qa.training.flow.evaluation_cases`
are drawn once and scored by every weights file, and summarised per source (manifest ``folder``):
specificity on the clean scans and on their benign variants, sensitivity on the noise / motion /
ghosting cases and on all artifact-laden cases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bids_qa.volume import Volume, volume_from_array

#: Resolution variants of a reference volume: name -> target voxel sizes in mm, with ``None`` for
#: "the volume's slice axis" (thick-slice variant, 1 mm in-plane and 4 mm across).
RESOLUTION_VARIANTS: dict[str, tuple[float, float, float] | tuple[float, float]] = {
    "iso1.5": (1.5, 1.5, 1.5),
    "iso2.5": (2.5, 2.5, 2.5),
    "thick4": (1.0, 4.0),
}
#: A variant whose voxel sizes are within this factor of the volume's own on every axis is the
#: volume itself and is skipped.
SAME_RESOLUTION = 1.05
#: Categories counted as the severe cases of the sensitivity target.
SEVERE_CATEGORIES = ("noise", "motion", "ghosting")


def target_zooms(volume: Volume, variant: str) -> tuple[float, float, float]:
    """The voxel sizes of one resolution variant of ``volume``: never finer than the volume's own
    (a scan can be made coarser, not sharper), per axis."""
    spec = RESOLUTION_VARIANTS[variant]
    if len(spec) == 2:  # thick slice: in-plane, across the slice axis
        wanted = [spec[0]] * 3
        wanted[volume.slice_axis] = spec[1]
    else:
        wanted = list(spec)
    return tuple(max(float(z), float(w)) for z, w in zip(volume.zooms, wanted, strict=True))  # type: ignore[return-value]


def resample_volume(volume: Volume, zooms: tuple[float, float, float]) -> Volume | None:
    """``volume`` as a coarser acquisition with voxel sizes ``zooms`` would record it, or None when
    ``zooms`` matches the volume's own resolution.

    Each axis is blurred with a Gaussian whose FWHM makes up the difference between the old and the
    new voxel size (a slice profile), then sampled every ``new / old`` voxels with linear
    interpolation; the result is normalised again like any loaded scan.
    """
    from scipy import ndimage

    src = np.asarray(volume.zooms, dtype=np.float64)
    dst = np.asarray(zooms, dtype=np.float64)
    ratio = dst / src
    if np.all(ratio < SAME_RESOLUTION):
        return None
    sigma = np.sqrt(np.clip(ratio**2 - 1.0, 0.0, None)) / 2.3548
    data = volume.data.astype(np.float32)
    smooth = ndimage.gaussian_filter(data, sigma=sigma, mode="constant") if np.any(sigma > 0) else data
    shape = tuple(max(1, int((n - 1) // r) + 1) for n, r in zip(data.shape, ratio, strict=True))
    out = ndimage.affine_transform(smooth, ratio, output_shape=shape, order=1, prefilter=False)
    return volume_from_array(np.clip(out, 0, None).astype(np.float32), tuple(float(z) for z in dst))  # type: ignore[arg-type]


def volume_variants(name: str, volume: Volume, resolutions: Iterable[str]) -> list[tuple[str, Volume]]:
    """``[(name, volume)]`` and its resolution variants named ``name|res=<variant>``."""
    out = [(name, volume)]
    for variant in resolutions:
        resampled = resample_volume(volume, target_zooms(volume, variant))
        if resampled is not None:
            out.append((f"{name}|res={variant}", resampled))
    return out


def refit_population(net, volumes: Iterable[tuple[str, Volume]], size: int, resolutions: Iterable[str],
                     device: str = "cpu") -> tuple[np.ndarray, list[str]]:
    """Reference ``m`` (n, 2) and point names for every volume, its resolution variants, and each
    of those under the flips, gammas and window shifts of ``reference_population`` (one volume's
    variants at a time, so memory stays at one volume)."""
    from bids_qa.training.flow import reference_population

    resolutions = tuple(resolutions)
    ms, names = [], []
    for name, volume in volumes:
        m, n = reference_population(net, volume_variants(name, volume, resolutions), size, device)
        ms.append(m)
        names += n
    return np.concatenate(ms), names


def load_encoder(init: str):
    """(encoder in eval mode, its EncoderConfig, the init file's metadata) from a flow weights file."""
    from bids_qa.models.flow import EncoderConfig, build_encoder
    from bids_qa.models.weights import load_weights

    state, meta = load_weights(init)
    config = EncoderConfig.from_dict(meta["encoder_config"])
    net = build_encoder(config)
    net.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    return net.eval(), config, meta


def reference_volumes(data_dir: str, n_synthetic: int, mix, seed: int,
                      exclude_folders: Iterable[str] = ()) -> list[tuple[dict[str, Any], Volume]]:
    """Clean training volumes (every real one of the train split, minus ``exclude_folders``; with
    ``mix``, label-map heads) and ``n_synthetic`` MNI-derived heads, as ``(entry, Volume)``."""
    from bids_qa.training.data import clean_volumes, synthetic_volumes

    out = clean_volumes(data_dir, "train", mix=mix, exclude_folders=exclude_folders)
    if n_synthetic:
        out += synthetic_volumes(n_synthetic, np.random.default_rng([seed, 104729]))
    return out


def refit_weights(net, encoder_config, init: str, init_meta: dict, volumes, *, resolutions: Iterable[str],
                  fit, command: str, synthetic: dict, exclude_folders: Iterable[str] = ()):
    """(state, metadata, fitted flow, reference m) of a reference-only refit, with its provenance:
    the init file (name, sha256, version), the reference volumes and variants, the synthetic heads,
    the command and the time taken."""
    from bids_qa.models.flow import FlowConfig
    from bids_qa.training import loop
    from bids_qa.training.flow import REFERENCE_SHIFTS, REFERENCE_VARIANTS, build_weights

    resolutions = tuple(resolutions)
    t0 = time.time()
    named = [(str(e["path"]), v) for e, v in volumes]
    ref_m, ref_names = refit_population(net, named, encoder_config.input_size, resolutions)
    population_seconds = time.time() - t0
    flow_config = FlowConfig.from_dict(init_meta["flow_config"])
    init_version = str(init_meta.get("version", "unknown"))
    extra = {"training": init_meta.get("training", {})}
    if "run_version" in init_meta:
        extra["encoder_run_version"] = init_meta["run_version"]
    state, meta, fitted = build_weights(net, encoder_config, flow_config, fit, ref_m, ref_names, extra)
    meta["version"] = f"{init_version}.ref{len(named)}"
    meta["reference"].update({
        "resolutions": {k: list(RESOLUTION_VARIANTS[k]) for k in resolutions},
        "point_variants": {"flip_gamma": [list(v) for v in REFERENCE_VARIANTS], "shifts": list(REFERENCE_SHIFTS)},
        "synthetic": synthetic,
        "excluded_folders": sorted(set(exclude_folders)),
        "folders": sorted({str(e.get("folder", "")) for e, _ in volumes}),
    })
    meta["reference_refit"] = {
        "init": {**(loop.file_record(init) or {}), "version": init_version},
        "encoder": "kept from init, not retrained",
        "command": command,
        "population_seconds": round(population_seconds, 1),
    }
    return state, meta, fitted, ref_m


def run_reference_only(args, settings, argv: list[str]) -> int:
    """``bids_qa train flow --reference-only --init WEIGHTS ...``: write ``RUN/flow.safetensors``."""
    from bids_qa.models.flow import FitConfig, FlowScorer
    from bids_qa.models.weights import save_weights
    from bids_qa.training import loop
    from bids_qa.training.data import synthetic_mix

    if not args.init:
        raise SystemExit("bids_qa train flow --reference-only needs --init WEIGHTS (the encoder to keep)")
    unknown = [r for r in args.resolutions if r not in RESOLUTION_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --resolutions {unknown}; choose from {sorted(RESOLUTION_VARIANTS)}")
    run_dir = Path(settings.run_dir)
    loop.write_settings(run_dir, settings, "flow", argv)
    loop.limit_threads(settings.threads)
    net, enc_config, init_meta = load_encoder(args.init)
    mix = synthetic_mix(settings)
    n_synthetic = int(args.synthetic or 0)
    t0 = time.time()
    volumes = reference_volumes(settings.data_dir, n_synthetic, mix, settings.seed, args.exclude_folder)
    print(f"loaded {len(volumes)} reference volumes in {time.time() - t0:.0f}s", flush=True)
    synthetic = {"mni_heads": n_synthetic, "label_map_share": mix.share,
                 "label_maps": Path(mix.label_maps).name if mix.label_maps else None}
    fit = FitConfig(steps=args.flow_steps, seed=settings.seed)
    state, meta, fitted, ref_m = refit_weights(
        net, enc_config, args.init, init_meta, volumes, resolutions=args.resolutions, fit=fit,
        command=loop.portable_command("flow", argv), synthetic=synthetic, exclude_folders=args.exclude_folder)
    meta["reference_refit"]["seconds"] = round(time.time() - t0, 1)
    out_path = run_dir / "flow.safetensors"
    save_weights(out_path, state, meta)
    print(f"reference flow on {len(ref_m)} points of {len(volumes)} volumes; 5% level "
          f"{fitted.level(5):.3f}; version {meta['version']}", flush=True)
    if args.evaluate:
        from bids_qa.training.data import clean_volumes

        val = clean_volumes(settings.data_dir, "validation", include_out_of_scope=True)
        scorers = {"init": FlowScorer(weights=args.init), "refit": FlowScorer(weights=str(out_path))}
        result = evaluate_sources(scorers, val, np.random.default_rng([settings.seed, 424242]))
        (run_dir / "eval_sources.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        print(sources_markdown(result["summary"]), flush=True)
    loop.export_weights(out_path, args.export)
    return 0


# --------------------------------------------------------------------------------------------
# per-source comparison


def evaluate_sources(scorers: Mapping[str, Any], volumes, rng: np.random.Generator, n_clean_variants: int = 3,
                     severity: tuple[float, float] = (0.7, 1.0)) -> dict[str, Any]:
    """Score the cases of ``evaluation_cases`` (drawn once, one volume at a time, in the order and
    with the draws ``evaluate_flow`` makes) with every scorer; rows and a per-source summary.

    Returns ``{"rows": [...], "summary": {scorer: {source: figures}}}`` where a row holds the case's
    name, source (manifest ``folder``; out-of-scope scans are source ``non_brain``), category and
    each scorer's ``flag_5pct`` / ``log_density``.
    """
    from bids_qa.training.flow import evaluation_cases

    rows = []
    for entry, volume in volumes:
        source = "non_brain" if entry.get("out_of_scope") else str(entry.get("folder", "unknown"))
        for name, category, is_art, case, change in evaluation_cases([(entry, volume)], rng, n_clean_variants,
                                                                   severity):
            row: dict[str, Any] = {"name": name, "source": source, "category": category,
                                   "artifact": bool(is_art), "change": change}
            for key, scorer in scorers.items():
                v = scorer.score(case).values
                row[key] = {"flag_5pct": int(v["flag_5pct"]), "log_density": float(v["log_density"])}
            rows.append(row)
    return {"rows": rows, "summary": {k: summarise_sources(rows, k) for k in scorers},
            "severity": list(severity), "n_clean_variants": n_clean_variants}


def _rate(rows: list[dict], key: str, flagged: bool) -> dict[str, Any]:
    hits = sum(int(r[key]["flag_5pct"] == int(flagged)) for r in rows)
    return {"rate": hits / len(rows) if rows else None, "k": hits, "n": len(rows)}


def summarise_sources(rows: list[dict], key: str) -> dict[str, dict[str, Any]]:
    """Per source and pooled (``all``, in-scope sources only for the clean figures): specificity
    at the 5% level on clean scans (``spec_clean``) and clean plus variants (``spec_all_clean``),
    sensitivity on :data:`SEVERE_CATEGORIES` (``sens_severe``) and on every artifact-laden case
    (``sens_all``)."""
    out: dict[str, dict[str, Any]] = {}
    sources = list(dict.fromkeys(r["source"] for r in rows))
    for source in [*sources, "all"]:
        sel = [r for r in rows if source == "all" or r["source"] == source]
        out[source] = {
            "spec_clean": _rate([r for r in sel if r["category"] == "clean"], key, False),
            "spec_all_clean": _rate([r for r in sel if not r["artifact"]], key, False),
            "sens_severe": _rate([r for r in sel if r["category"] in SEVERE_CATEGORIES], key, True),
            "sens_all": _rate([r for r in sel if r["artifact"]], key, True),
        }
    return out


def sources_markdown(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One table: a row per source, for every scorer its four figures as ``k/n``."""

    def cell(f: Mapping[str, Any]) -> str:
        return "—" if not f["n"] else f"{100 * f['rate']:.0f}% ({f['k']}/{f['n']})"

    keys = list(summary)
    head = "| source | " + " | ".join(
        f"{k}: spec clean | {k}: spec clean+variants | {k}: sens severe | {k}: sens all" for k in keys) + " |"
    lines = [head, "|---|" + "---|" * (4 * len(keys))]
    for source in summary[keys[0]]:
        cells = []
        for k in keys:
            f = summary[k][source]
            cells += [cell(f["spec_clean"]), cell(f["spec_all_clean"]), cell(f["sens_severe"]), cell(f["sens_all"])]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
