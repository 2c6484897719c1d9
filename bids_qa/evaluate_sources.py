"""Per-source figures of ``bids_qa evaluate``: every family's figures for each validation source
(a dataset folder: one site or scanner), beside the pooled ones.

Why: a pooled figure hides the site a model fails on, and a user's own scanner is such a site.
The shipped severity and flow weights never saw ``ds000011_openfmri`` (their training split
predates it), so that source's row is their leave-one-site-out figure.

Severity and flow figures are read from the rows the family benchmarks already wrote (no
rescoring). SSIM and tiers are scored here at the scan level, as a user meets them: each clean
validation scan, and copies of it with k-space motion and Rician noise at three strengths, with
the true SSIM of each copy to its clean scan (:func:`bids_qa.damage.slice_ssim`, the severity
benchmark's ``ssim_source``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from bids_qa.metrics import roc_auc, spearman

#: Parameter SS from which a corrupted copy counts as damaged (the severity AUC's positives).
DAMAGED_SS = 0.6
#: Strengths of the scan-level copies (parameter SS, :func:`bids_qa.evaluate.corrupt_volume`).
SCAN_LEVELS = (0.3, 0.6, 0.9)
SCAN_ARTIFACTS = ("motion", "noise")
POOLED = "all"


def source_of(path: str) -> str:
    """The validation source of a manifest path: its dataset folder."""
    return str(path).replace("\\", "/").split("/", 1)[0]


def _by_source(items: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], str]):
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out = {name: groups[name] for name in sorted(groups)}
    out[POOLED] = [i for g in groups.values() for i in g]
    return out


def _auc(clean: list[float], damaged: list[float]) -> float:
    truth = np.r_[np.zeros(len(clean), bool), np.ones(len(damaged), bool)]
    return roc_auc(truth, np.r_[clean, damaged])


def severity_by_source(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per source: clean scans <= 1, AUC clean vs SS >= :data:`DAMAGED_SS` per artifact, and
    Spearman of the score with the damage-based SS (clean copies at 0) per artifact."""
    out = {}
    for name, sel in _by_source(rows, lambda r: source_of(r["volume"])).items():
        clean = [r["score"] for r in sel if r["artifact"] == "none"]
        arts = sorted({r["artifact"] for r in sel if r["artifact"] != "none"})
        fig: dict[str, Any] = {
            "n_volumes": len(clean),
            "clean_le1": float(np.mean(np.asarray(clean) <= 1.0)) if clean else float("nan"),
            "clean_mean": float(np.mean(clean)) if clean else float("nan"),
            "auc": {},
            "spearman_damage": {},
        }
        for a in arts:
            damaged = [r["score"] for r in sel if r["artifact"] == a and r["ss"] >= DAMAGED_SS]
            fig["auc"][a] = _auc(clean, damaged)
            if a == "bias" and all("inu_range" in r for r in sel):
                # the severity score is blind to a smooth field by design; the INU measure is not
                fig["inu_range_auc_bias"] = _auc(
                    [r["inu_range"] for r in sel if r["artifact"] == "none"],
                    [r["inu_range"] for r in sel if r["artifact"] == a and r["ss"] >= DAMAGED_SS],
                )
            pair = [r for r in sel if r["artifact"] in ("none", a) and "ss_damage" in r]
            fig["spearman_damage"][a] = spearman(
                [r["ss_damage"] for r in pair], [r["score"] for r in pair]
            )
        out[name] = fig
    return out


def _rate(group: list[dict[str, Any]], flagged: bool) -> float:
    """Share of flow cases whose 5% flag is ``flagged`` (NaN for none)."""
    if not group:
        return float("nan")
    return float(np.mean([bool(c["flag_5pct"]) == flagged for c in group]))


def flow_by_source(cases: list[dict[str, Any]], volumes: list[str]) -> dict[str, dict[str, Any]]:
    """Per source: specificity at the 5% level on the clean scans and on their natural variants,
    sensitivity on the corrupted cases. Flow cases are named ``<file name>|<case>``."""
    source = {p.replace("\\", "/").rsplit("/", 1)[-1]: source_of(p) for p in volumes}
    out = {}
    for name, sel in _by_source(cases, lambda c: source.get(c["name"].split("|")[0], "?")).items():
        clean = [c for c in sel if c["category"] == "clean"]
        variants = [c for c in sel if c["category"] == "clean_variant"]
        damaged = [c for c in sel if c["artifact"]]
        out[name] = {
            "n_clean": len(clean),
            "specificity_clean": _rate(clean, False),
            "specificity_variants": _rate(variants, False),
            "n_damaged": len(damaged),
            "sensitivity": _rate(damaged, True),
        }
    return out


def scan_level_rows(
    volumes: list[tuple[dict[str, Any], Any]],
    seed: int,
    device: str,
    weights: dict[str, str],
    families: Iterable[str],
) -> list[dict[str, Any]]:
    """SSIM and tier scores of each clean scan and of its motion / noise copies at
    :data:`SCAN_LEVELS`, with each copy's true SSIM to the clean scan."""
    from bids_qa.damage import slice_ssim
    from bids_qa.evaluate import corrupt_volume
    from bids_qa.scoring import build_scorers
    from bids_qa.volume import volume_from_array

    wanted = [f for f in ("ssim", "tiers") if f in families]
    scorers = {s.name: s for s in build_scorers(wanted, device=device, weights=weights)} if wanted else {}
    if not scorers:
        return []
    rows = []
    for v_index, (entry, vol) in enumerate(volumes):
        cases = [("none", 0.0)] + [(a, s) for a in SCAN_ARTIFACTS for s in SCAN_LEVELS]
        for c_index, (artifact, ss) in enumerate(cases):
            if artifact == "none":
                scan, true_ssim = vol, 1.0
            else:
                rng = np.random.default_rng([seed, 4242, v_index, c_index])
                data, _ = corrupt_volume(vol.data, vol.zooms, vol.slice_axis, artifact, ss, rng)
                scan = volume_from_array(data, vol.zooms)
                true_ssim = slice_ssim(vol.data, data, vol.mask, vol.slice_axis)
            row: dict[str, Any] = {
                "volume": entry["path"],
                "artifact": artifact,
                "ss": ss,
                "true_ssim": float(true_ssim),
            }
            if "ssim" in scorers:
                row["ssim_mean"] = float(scorers["ssim"].score(scan).values["ssim_mean"])
            if "tiers" in scorers:
                row["tier"] = int(scorers["tiers"].score(scan).values["tier"])
            rows.append(row)
        print(f"  by source: {entry['path']} done", file=sys.stderr, flush=True)
    return rows


def scan_level_by_source(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per source: mean predicted SSIM of the clean scans, Spearman(predicted, true SSIM) over
    the clean and motion copies, clean scans at tier 1, severe (SS 0.9) copies at tier 3."""
    out = {}
    for name, sel in _by_source(rows, lambda r: source_of(r["volume"])).items():
        clean = [r for r in sel if r["artifact"] == "none"]
        fig: dict[str, Any] = {"n_volumes": len(clean)}
        if clean and "ssim_mean" in clean[0]:
            motion = [r for r in sel if r["artifact"] in ("none", "motion")]
            fig["ssim_clean_mean"] = float(np.mean([r["ssim_mean"] for r in clean]))
            fig["ssim_clean_min"] = float(np.min([r["ssim_mean"] for r in clean]))
            fig["ssim_spearman_motion"] = spearman(
                [r["true_ssim"] for r in motion], [r["ssim_mean"] for r in motion]
            )
        if clean and "tier" in clean[0]:
            fig["tier1_clean"] = float(np.mean([r["tier"] == 1 for r in clean]))
            for a in SCAN_ARTIFACTS:
                severe = [r["tier"] for r in sel if r["artifact"] == a and r["ss"] == max(SCAN_LEVELS)]
                fig[f"tier3_{a}_severe"] = float(np.mean(np.asarray(severe) == 3)) if severe else float("nan")
        out[name] = fig
    return out


def _pct(v: Any) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{100 * v:.0f}%"


def _num(v: Any, digits: int = 2) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def sources_markdown(by_source: dict[str, Any]) -> str:
    """The per-source tables of ``benchmark.md``."""
    lines = ["### Per validation source", ""]
    sev = by_source.get("severity")
    if sev:
        arts = sorted({a for f in sev.values() for a in f["auc"]})
        lines += [
            f"Severity: clean scans <= 1, AUC clean vs SS >= {DAMAGED_SS} and Spearman(score, "
            "damage SS) per artifact (clean copies included at 0).",
            "",
            "| source | scans | clean <= 1 | " + " | ".join(f"AUC {a}" for a in arts) + " | "
            + " | ".join(f"rho {a}" for a in arts) + " | AUC bias, INU range |",
            "|---|---|---|" + "---|" * (2 * len(arts) + 1),
        ]
        for name, f in sev.items():
            lines.append(
                f"| {name} | {f['n_volumes']} | {_pct(f['clean_le1'])} | "
                + " | ".join(_num(f["auc"].get(a)) for a in arts) + " | "
                + " | ".join(_num(f["spearman_damage"].get(a)) for a in arts)
                + f" | {_num(f.get('inu_range_auc_bias'))} |"
            )
        lines.append("")
    flow = by_source.get("flow")
    if flow:
        lines += [
            "Flow (5% level): specificity on the clean scans and on their natural variants "
            "(flips, gamma, resolution), sensitivity on the corrupted cases.",
            "",
            "| source | clean | specificity clean | specificity variants | corrupted | sensitivity |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {f['n_clean']} | {_pct(f['specificity_clean'])} | "
            f"{_pct(f['specificity_variants'])} | {f['n_damaged']} | {_pct(f['sensitivity'])} |"
            for n, f in flow.items()
        ]
        lines.append("")
    scan = by_source.get("scan_level")
    if scan:
        levels = ", ".join(f"{s:g}" for s in SCAN_LEVELS)
        lines += [
            f"SSIM and tiers on whole scans: each clean scan and its motion and noise copies at SS "
            f"{levels}; true SSIM of a copy to its clean scan; severe = SS {max(SCAN_LEVELS):g}.",
            "",
            "| source | scans | SSIM clean mean | SSIM clean min | Spearman(SSIM, true), clean + motion "
            "| tier 1 clean | tier 3 severe motion | tier 3 severe noise |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {f['n_volumes']} | {_num(f.get('ssim_clean_mean'), 3)} | "
            f"{_num(f.get('ssim_clean_min'), 3)} | {_num(f.get('ssim_spearman_motion'))} | "
            f"{_pct(f.get('tier1_clean'))} | {_pct(f.get('tier3_motion_severe'))} | "
            f"{_pct(f.get('tier3_noise_severe'))} |"
            for n, f in scan.items()
        ]
        lines.append("")
    return "\n".join(lines) + "\n"
