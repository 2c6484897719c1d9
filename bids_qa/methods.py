"""A methods paragraph, ready to paste into a paper, written from what a run actually used.

Everything comes from the participant-level outputs (``*_qa.json``: scorers and their versions,
thresholds, contrasts, counts) and the group JSON (the flow model's dataset refit), never from
defaults: a scorer that was not run is not mentioned, and each one that was is cited. The text
goes into each ``group_<suffix>.json`` (``provenance.methods``), into ``group_methods.md`` at
group level, and is printed by ``bids_qa methods OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Full references, by short key.
REFERENCES: dict[str, str] = {
    "esteban2017": "Esteban O, Birman D, Schaer M, Koyejo OO, Poldrack RA, Gorgolewski KJ. MRIQC: Advancing "
    "the automatic prediction of image quality in MRI from unseen sites. PLoS ONE 2017;12(9):e0184661. "
    "doi:10.1371/journal.pone.0184661",
    "atkinson1997": "Atkinson D, Hill DLG, Stoyle PNR, Summers PE, Keevil SF. Automatic correction of motion "
    "artifacts in magnetic resonance images using an entropy focus criterion. IEEE Trans Med Imaging "
    "1997;16(6):903-910. doi:10.1109/42.650886",
    "shehzad2015": "Shehzad Z, Giavasis S, Li Q, et al. The Preprocessed Connectomes Project Quality "
    "Assessment Protocol. Front Neurosci Conf Abstr: Neuroinformatics 2015. "
    "doi:10.3389/conf.fnins.2015.91.00047",
    "magnotta2006": "Magnotta VA, Friedman L. Measurement of signal-to-noise and contrast-to-noise in the "
    "fBIRN multicenter imaging study. J Digit Imaging 2006;19(2):140-147. doi:10.1007/s10278-006-0264-x",
    "dietrich2007": "Dietrich O, Raya JG, Reeder SB, Reiser MF, Schoenberg SO. Measurement of signal-to-noise "
    "ratios in MR images: influence of multichannel coils, parallel imaging, and reconstruction filters. "
    "J Magn Reson Imaging 2007;26(2):375-385. doi:10.1002/jmri.20969",
    "ganzetti2016": "Ganzetti M, Wenderoth N, Mantini D. Intensity inhomogeneity correction of structural MR "
    "images: a data-driven approach to define input algorithm parameters. Front Neuroinform 2016;10:10. "
    "doi:10.3389/fninf.2016.00010",
    "mortamet2009": "Mortamet B, Bernstein MA, Jack CR Jr, et al. Automatic quality assessment in structural "
    "brain magnetic resonance imaging. Magn Reson Med 2009;62(2):365-372. doi:10.1002/mrm.21992",
    "hays2025": "Hays SP, Zuo L, Dewey BE, Remedios SW, et al. An unsupervised approach for artifact "
    "severity scoring in multi-contrast MR images. MIDL 2025 (under review)",
    "zuo2023": "Zuo L, Xue Y, Dewey BE, Liu Y, Prince JL, Carass A. A latent space for unsupervised MR image "
    "quality control via artifact assessment. SPIE Medical Imaging 2023",
    "sciarra": "Sciarra A, Chatterjee S, Dünwald M, Placidi G, Nürnberger A, Speck O, Oeltze-Jafra S. "
    "Automated SSIM regression for detection and quantification of motion artefacts in brain MR images",
    "loizillon2024": "Loizillon S, Bottani S, Mabilie S, et al. Automated MRI quality assessment of brain "
    "T1-weighted MRI in clinical data warehouses: a transfer learning approach relying on artefact "
    "simulation. Medical Image Analysis 2024",
    "image_rulers": "Multi-task CNN assessment of MRI noise and motion with calibrated labels, "
    "interpreted with image rulers (the image-ruler paper; authors not given in our copy)",
}

#: What each scorer measures, as a sentence part, and the references it rests on.
SCORER_TEXT: dict[str, tuple[str, tuple[str, ...]]] = {
    "header": ("header checks of voxel size, anisotropy and field of view", ()),
    "iqm": (
        "classical image-quality metrics computed in a head mask and three intensity classes as in "
        "MRIQC (Esteban et al., 2017): the entropy focus criterion (EFC; Atkinson et al., 1997), the "
        "foreground-background energy ratio (FBER; Shehzad et al., 2015), signal- and contrast-to-noise "
        "ratios (Magnotta and Friedman, 2006; Dietrich et al., 2007), the coefficient of joint "
        "variation (CJV; Ganzetti et al., 2016) and the fraction of artifactual air voxels "
        "(QI1; Mortamet et al., 2009)",
        ("esteban2017", "atkinson1997", "shehzad2015", "magnotta2006", "dietrich2007", "ganzetti2016",
         "mortamet2009"),
    ),  # fmt: skip
    "severity": (
        "an unsupervised artifact-severity score (Hays et al., 2025; scores above 1 indicate an "
        "artifact worth inspecting)",
        ("hays2025",),
    ),
    "flow": (
        "an outlier score from the density of a normalizing flow over an artifact-encoding latent "
        "space (Zuo et al., 2023)",
        ("zuo2023",),
    ),
    "ssim": (
        "the per-slice structural similarity to a motion-free image predicted by a regression network "
        "(Sciarra et al.)",
        ("sciarra",),
    ),
    "tiers": (
        "motion, noise and contrast grades combined into quality tiers (Loizillon et al., 2024)",
        ("loizillon2024",),
    ),
}


@dataclass
class RunFacts:
    """What the outputs say about the run(s) behind one contrast (or all of them)."""

    n_scans: int = 0
    subjects: set[str] = field(default_factory=set)
    suffixes: set[str] = field(default_factory=set)
    versions: set[str] = field(default_factory=set)
    scorers: dict[str, set[str]] = field(default_factory=dict)
    thresholds: set[str] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)
    rulers: bool = False
    flow_refit: bool = False


def gather(out_dir: str | Path, suffix: str | None = None) -> RunFacts:
    """Read the facts of every ``*_qa.json`` (of ``suffix``, or all) and the group JSONs."""
    from bids_qa.derivatives import find_scan_outputs, group_paths

    out_dir = Path(out_dir)
    facts = RunFacts()
    for path in find_scan_outputs(out_dir):
        try:
            sidecar = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        scan = sidecar.get("scan") or {}
        entities = scan.get("entities") or {}
        scan_suffix = str(entities.get("suffix") or "unknown")
        if suffix is not None and scan_suffix != suffix:
            continue
        facts.n_scans += 1
        facts.suffixes.add(scan_suffix)
        if entities.get("subject"):
            facts.subjects.add(str(entities["subject"]))
        prov = sidecar.get("provenance") or {}
        if prov.get("bids_qa_version"):
            facts.versions.add(str(prov["bids_qa_version"]))
        if prov.get("device"):
            facts.devices.add(str(prov["device"]))
        for scorer in prov.get("scorers") or []:
            if isinstance(scorer, dict) and scorer.get("name"):
                facts.scorers.setdefault(str(scorer["name"]), set()).add(str(scorer.get("version", "")))
        sources = (prov.get("thresholds") or {}).get("sources") or []
        facts.thresholds.update(str(s) for s in sources)
        facts.rulers = facts.rulers or bool(sidecar.get("rulers"))
    for group_json in out_dir.glob("group_*.json"):
        if suffix is not None and group_json != group_paths(out_dir, suffix).json:
            continue
        try:
            meta = json.loads(group_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance((meta.get("provenance") or {}).get("flow_density"), dict):
            facts.flow_refit = True
    return facts


def _join(parts: Sequence[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def paragraph(facts: RunFacts) -> tuple[str, list[str]]:
    """The methods paragraph and the keys of the references it cites (in order of citation)."""
    if facts.n_scans == 0:
        return "No participant-level outputs were found.", []
    version = _join(sorted(facts.versions)) or "unknown version"
    contrasts = _join(sorted(facts.suffixes))
    subjects = f" of {len(facts.subjects)} subjects" if facts.subjects else ""
    cited: list[str] = []
    parts = []
    for name in SCORER_TEXT:
        if name in facts.scorers:
            text, refs = SCORER_TEXT[name]
            if name == "flow" and facts.flow_refit:
                text += ", its density refitted to this dataset"
            parts.append(text)
            cited += [r for r in refs if r not in cited]
    unknown = sorted(set(facts.scorers) - set(SCORER_TEXT))
    parts += [f"the '{name}' scorer" for name in unknown]
    versions = "; ".join(
        f"{name} {'/'.join(sorted(v for v in facts.scorers[name] if v)) or 'unversioned'}"
        for name in sorted(facts.scorers)
    )
    sentences = [
        f"Image quality of {facts.n_scans} {contrasts} scan(s){subjects} was assessed with bids_qa "
        f"{version}, a BIDS-App for label-free artifact assessment of structural MRI.",
        f"Each scan was scored with {_join(parts)}." if parts else "",
    ]
    if facts.rulers:
        sentences.append(
            "Model outputs were illustrated with image rulers, one slice at graded artifact levels "
            "scored by the same model (the image-ruler paper)."
        )
        cited.append("image_rulers")
    thresholds = ", ".join(sorted(Path(t).name for t in facts.thresholds)) or "the shipped defaults"
    sentences.append(
        "Each metric with a threshold was compared with its review and fail thresholds "
        f"({thresholds}); the verdict (pass, review or fail) follows from the flagged metrics, "
        "each reported as a reason."
    )
    sentences.append(f"Scorer versions: {versions}.")
    return " ".join(s for s in sentences if s), cited


def methods_text(
    out_dir: str | Path, suffix: str | None = None, flow_refit: bool | None = None
) -> str:
    """The paragraph followed by its numbered references, as Markdown. ``flow_refit`` overrides
    what the group JSON on disk says (the group level knows it before writing that file)."""
    facts = gather(out_dir, suffix)
    if flow_refit is not None:
        facts.flow_refit = flow_refit
    text, cited = paragraph(facts)
    if not cited:
        return text + "\n"
    refs = "\n".join(f"{i}. {REFERENCES[key]}" for i, key in enumerate(cited, start=1))
    return f"{text}\n\nReferences\n\n{refs}\n"


def write_methods_file(out_dir: str | Path) -> Path:
    """Write ``group_methods.md`` (every contrast of the output folder) and return its path."""
    from bids_qa.derivatives import atomic_write_text

    path = Path(out_dir) / "group_methods.md"
    atomic_write_text(path, "# Methods (generated by bids_qa)\n\n" + methods_text(out_dir))
    return path


def main(argv: list[str] | None = None) -> int:
    """``bids_qa methods OUTPUT_DIR [--suffix T1w]``: print the paragraph; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="bids_qa methods",
        description="Print a methods paragraph with citations for the scans in OUTPUT_DIR.",
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR")
    parser.add_argument("--suffix", default=None, help="only this contrast")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 64
    facts_dir = Path(args.output_dir)
    if not facts_dir.is_dir():
        print(f"bids_qa methods: error: {facts_dir} is not a folder", file=sys.stderr)
        return 66
    text = methods_text(facts_dir, args.suffix)
    print(text, end="")
    return 0 if not text.startswith("No participant-level outputs") else 66

