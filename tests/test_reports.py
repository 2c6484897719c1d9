"""Reports: individual and group HTML rendered from a generated, contract-conformant derivatives folder.

The fixture writes what the pipeline writes (``_qa.tsv``, ``_qa.json``, ``_slices.tsv``,
``group_T1w.tsv``/``.json``) plus small NIfTI phantoms, including a scan whose id carries HTML and
script markup and a scan that failed to load, then checks the pages' content, links and escaping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from html import unescape as html_unescape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nibabel as nib
import numpy as np
import pytest

from bids_qa.errors import ScanError
from bids_qa.reports import figures, render, render_group_report, render_scan_report

EVIL_SUBJECT = "x<i>"
EVIL_ID = "sub-x<i>_acq-\"'&#?%<img src=x onerror=alert(1)><script>alert(2)<\\script>_T1w"
SCAN_IDS = {
    "pass1": "sub-01_ses-1_T1w",
    "pass2": "sub-01_ses-2_T1w",
    "review": "sub-02_T1w",
    "fail": EVIL_ID,
    "error": "sub-04_T1w",
    "safe": "sub-05_acq-a b&c<d>_T1w",
}
#: Output file stems: the pipeline makes unsafe names file-system safe (here only for "safe"; the
#: "fail" scan keeps its raw name to prove that the reports quote any file name in links).
STEMS = {k: (v if k != "safe" else "sub-05_acq-a_b_c_d__T1w_1a2b3c4d") for k, v in SCAN_IDS.items()}
THRESHOLDS = {
    "severity.score": {"review": 1.0, "fail": 1.5, "direction": "higher_is_worse"},
    "ssim.ssim": {"review": 0.85, "fail": 0.6, "direction": "lower_is_worse"},
    "iqm.snr": {"review": 8.0, "fail": 4.0, "direction": "lower_is_worse"},
}
SCORES = {  # severity, ssim, snr, tier, m1, m2
    "pass1": (0.42, 0.93, 15.2, 1, 0.1, -0.2),
    "pass2": (0.55, 0.91, 14.1, 1, 0.3, 0.1),
    "review": (1.21, 0.80, 9.5, 2, 1.7, 1.1),
    "fail": (2.62, 0.41, 3.3, 3, -2.4, 2.9),
    "safe": (1.05, 0.88, 12.0, 2, 0.9, -1.3),
}


NOTE_TEXT = {"pass1": "3D acquisition (from sidecar MRAcquisitionType), voxels 1.00x1.00x1.00 mm",
             "review": "2D acquisition, voxels 1.00x1.00x4.00 mm, anisotropy 4"}
MANUFACTURER = {"pass1": "Siemens", "pass2": "Siemens", "review": "GE", "fail": "Siemens<b>", "error": "n/a",
                "safe": "GE"}
FBER = {"pass1": 25000.0, "pass2": 18000.0, "review": 40.0, "fail": 2.5, "safe": 900.0}
FBER_THRESHOLDS = {"review": 30.0, "fail": 3.0, "direction": "lower_is_worse"}
METHODS_TEXT = "Image quality of 6 T1w scans was assessed with bids_qa 0.1.0 <script>x</script>."


def sev_flag(key: str) -> bool:
    return SCORES[key][0] > 1.0


def phantom(shape: tuple[int, int, int], rng: np.random.Generator, ghost: float = 0.0) -> np.ndarray:
    """An ellipsoid 'head' with a darker core, Rayleigh-like background noise and an optional ghost."""
    grids = np.ogrid[tuple(slice(-1, 1, complex(0, s)) for s in shape)]
    r2 = sum(((g / a) ** 2).astype(np.float32) for g, a in zip(grids, (0.7, 0.8, 0.75), strict=True))
    img = np.where(r2 < 1, np.float32(800), np.float32(0)) - np.where(r2 < 0.4, np.float32(300), np.float32(0))
    if ghost:
        img = img + np.float32(ghost) * np.roll(img, shape[1] // 2, axis=1)
    noise = np.hypot(rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32))
    return (img + 12 * noise).astype(np.float32)


def write_png(path: Path, value: int, size: int = 32) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L").save(path)


def scan_rows(key: str) -> list[list[str]]:
    sev, ssim, snr, tier, m1, m2 = SCORES[key]

    def flag(col: str, v: float) -> str:
        t = THRESHOLDS[col]
        worse = (lambda a, b: a > b) if t["direction"] == "higher_is_worse" else (lambda a, b: a < b)
        return "fail" if worse(v, t["fail"]) else "review" if worse(v, t["review"]) else "pass"

    def cut(col: str, v: float) -> str:  # the contract: the fail threshold when flagged fail, else review
        return f"{THRESHOLDS[col]['fail' if flag(col, v) == 'fail' else 'review']}"

    return [
        ["severity", "score", f"{sev}", cut("severity.score", sev), flag("severity.score", sev), "higher_is_worse"],
        ["ssim", "ssim", f"{ssim}", cut("ssim.ssim", ssim), flag("ssim.ssim", ssim), "lower_is_worse"],
        ["tiers", "tier", f"{tier}", "", "n/a", ""],
        ["flow", "m1", f"{m1}", "", "n/a", ""],
        ["flow", "m2", f"{m2}", "", "n/a", ""],
        ["iqm", "snr", f"{snr}", cut("iqm.snr", snr), flag("iqm.snr", snr), "lower_is_worse"],
        ["iqm", "efc", "0.4321", "", "n/a", "higher_is_worse"],
    ]


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


def make_derivatives(root: Path, with_rulers: bool = True) -> dict:
    """Write a derivatives folder following the contract; return paths and expectations."""
    rng = np.random.default_rng(7)
    bids, out = root / "bids", root / "out"
    out.mkdir(parents=True)
    (out / "dataset_description.json").write_text(json.dumps({
        "Name": "bids_qa outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bids_qa", "Version": "0.1.0"}]}), encoding="utf-8")
    layout = {
        "pass1": ("01", "1", (40, 48, 40), (1.0, 1.0, 1.0), 0.0),
        "pass2": ("01", "2", (40, 48, 40), (1.0, 1.0, 1.0), 0.0),
        "review": ("02", "", (48, 48, 12), (1.0, 1.0, 4.0), 0.15),
        "fail": (EVIL_SUBJECT, "", (36, 40, 36), (1.2, 1.2, 1.2), 0.3),
        "error": ("04", "", None, None, 0.0),
        "safe": ("05", "", (40, 40, 32), (1.0, 1.0, 1.0), 0.05),
    }
    info: dict = {"out": out, "bids": bids, "json": {}, "image": {}, "folder": {}}
    group_rows = []
    for key, (sub, ses, shape, zooms, ghost) in layout.items():
        scan_id, stem = SCAN_IDS[key], STEMS[key]
        rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "anat"
        folder = out / rel
        folder.mkdir(parents=True, exist_ok=True)
        src = bids / rel / f"{scan_id}.nii.gz"
        src.parent.mkdir(parents=True, exist_ok=True)
        info["folder"][key] = folder
        if shape is not None:
            nib.save(nib.Nifti1Image(phantom(shape, rng, ghost), np.diag([*zooms, 1.0])), src)
            info["image"][key] = src
        else:
            src.write_bytes(b"")
            info["image"][key] = None
        entities = {"subject": sub, "suffix": "T1w", "extension": ".nii.gz"}
        if ses:
            entities["session"] = ses
        if key == "error":
            verdict = "error"
            errors = [{"stage": "load", "message": f"{scan_id}.nii.gz is an empty (zero-byte) file"}]
            rows = [["error", "load", errors[0]["message"], "", "error", ""]]
            reasons: list = []
            scan = {"source": str(src.relative_to(bids)), "entities": entities}
        else:
            rows = scan_rows(key)
            flags = {f"{r[0]}.{r[1]}": r[4] for r in rows}
            verdict = "fail" if "fail" in flags.values() else "review" if "review" in flags.values() else "pass"
            reasons = [{"model": r[0], "metric": r[1], "value": float(r[2]), "threshold": float(r[3]),
                        "flag": r[4], "kind": "evidence", "rule": f"{r[0]}.{r[1]} beyond {r[4]} level {r[3]}",
                        "message": f"evidence: {r[0]}.{r[1]} = {r[2]} crossed {r[3]}"}
                       for r in rows if r[4] in ("review", "fail")]
            errors = []
            scan = {"source": str(src.relative_to(bids)), "entities": entities, "shape": list(shape),
                    "zooms": list(zooms), "affine": np.diag([*zooms, 1.0]).tolist(),
                    "slice_axis": 2, "anisotropy": max(zooms) / min(zooms),
                    "metadata": {"Manufacturer": "Siemens<b>" if key == "fail" else "Siemens",
                                 "MagneticFieldStrength": 3}}
            n = shape[2]
            idx = np.arange(n)
            sev = SCORES[key][0] + 0.3 * np.sin(idx / 3.0)
            sev[n // 2] = SCORES[key][0] + 1.0  # one clearly worst slice
            ssim = np.clip(SCORES[key][1] - 0.05 * np.cos(idx / 4.0), 0, 1)
            slices = folder / f"{stem}_slices.tsv"
            if key == "review":  # long layout
                lines = [["severity", "score", str(i), f"{v:.4f}"] for i, v in zip(idx, sev, strict=True)]
                lines += [["ssim", "ssim", str(i), f"{v:.4f}"] for i, v in zip(idx, ssim, strict=True)]
                write_tsv(slices, ["model", "metric", "slice_index", "value"], lines)
            elif key == "pass2":  # plain wide layout
                write_tsv(slices, ["slice_index", "severity.score", "ssim.ssim"],
                          [[str(i), f"{a:.4f}", f"{b:.4f}"] for i, a, b in zip(idx, sev, ssim, strict=True)])
            else:  # the derivatives layout: one row per model and slice, other models' columns n/a
                lines = [["severity", "2", str(i), f"{a:.4f}", "n/a"] for i, a in zip(idx, sev, strict=True)]
                lines += [["ssim", "2", str(i), "n/a", f"{b:.4f}"] for i, b in zip(idx, ssim, strict=True)]
                write_tsv(slices, ["model", "slice_axis", "slice_index", "severity", "ssim"], lines)
        write_tsv(folder / f"{stem}_qa.tsv", ["model", "metric", "value", "threshold", "flag", "direction"], rows)
        doc = {
            "scan_id": scan_id, "scan": scan, "verdict": verdict, "reasons": reasons, "errors": errors,
            "warnings": ["1 NaN voxel set to 0"] if key == "review" else [],
            "notes": [{"kind": "fact", "model": "header", "message": NOTE_TEXT[key]}] if key in NOTE_TEXT else [],
            "provenance": {"bids_qa_version": "0.1.0", "python_version": "3.11.2", "torch_version": "2.3.0",
                           "device": "cpu", "scorers": [{"name": "severity", "version": "1.0"},
                                                        {"name": "iqm", "version": "0.3"}],
                           "thresholds_source": "default", "started": "2025-01-01T10:00:00",
                           "finished": "2025-01-01T10:00:02", "timings_s": {"load": 0.21, "score": 0.9}},
            "columns": {"model": "scorer", "metric": "metric name"},
        }
        if with_rulers and key in ("pass1", "fail"):
            levels = []
            for k in range(8):
                img_rel = f"rulers/T1w_severity_level{k + 1}.png"
                write_png(folder / img_rel, 30 * k)
                levels.append({"severity": round(k / 7, 3), "score": round(0.2 + 0.35 * k, 3), "image": img_rel})
            doc["rulers"] = {"severity": {"metric": "score", "levels": levels, "threshold": 1.0,
                                          "scan_value": SCORES[key][0]}}
        json_path = folder / f"{stem}_qa.json"
        json_path.write_text(json.dumps(doc, sort_keys=True, indent=1), encoding="utf-8")
        info["json"][key] = json_path
        report = (rel / f"{stem}_report.html").as_posix()
        vals = SCORES.get(key)
        group_rows.append([scan_id, sub, ses or "n/a", "n/a", "T1w", scan["source"], verdict,
                           " | ".join(r["message"] for r in reasons) if reasons else (errors[0]["message"] if errors else "n/a"),
                           NOTE_TEXT.get(key, "n/a"), MANUFACTURER[key], "3" if key != "safe" else "1.5",
                           report] + ([f"{v}" for v in vals] if vals else ["n/a"] * 6)
                          + (["0.4321", f"{FBER[key]}", f"{int(sev_flag(key))}"] if vals else ["n/a"] * 3))
    write_tsv(out / "group_T1w.tsv",
              ["scan_id", "subject", "session", "run", "suffix", "source", "verdict", "reasons", "notes",
               "manufacturer", "field_strength", "report",
               "severity.score", "ssim.ssim", "iqm.snr", "tiers.tier", "flow.m1", "flow.m2", "iqm.efc",
               "iqm.fber", "flow.flag_5pct"], group_rows)
    write_png(out / "group_T1w_flow_density.png", 90, size=48)
    (out / "group_T1w.json").write_text(json.dumps({
        "suffix": "T1w", "n_scans": len(group_rows),
        "columns": {"severity.score": "artifact severity (Hays et al.)",
                    "ssim.ssim": "predicted SSIM to a motion-free slice"},
        "thresholds": {**THRESHOLDS, "iqm.fber": FBER_THRESHOLDS, "tiers.tier": {"review": 2, "fail": 3, "inclusive": True,
                                                    "direction": "higher_is_worse",
                                                    "description": "quality tier (Loizillon et al.)"}},
        "flow_density": {"image": "group_T1w_flow_density.png", "extent": [-4.0, 4.0, -4.0, 4.0]},
        "provenance": {
            "thresholds": {"origin": "calibrated from ratings", "sources": ["/data/thresholds_calibrated.json"],
                           "sha256": "ab" * 32, "rule": {"agree": 2, "description": "fail when two families agree",
                                                         "justification": "fitted to 40 ratings"}},
            "protocols": {"groups": [{"protocol": "T1w 1.0x1.0x1.0 mm | Siemens", "n_scans": 3, "judged": False,
                                      "flagged": 0, "status": "too small to judge"}], "z_level": 3.5, "min_group": 8},
            "methods": METHODS_TEXT,
        },
    }), encoding="utf-8")
    return info


def render_all(info: dict) -> dict:
    pages = {}
    for key, js in info["json"].items():
        pages[key] = render_scan_report(info["out"], js, info["image"][key])
    pages["group"] = render_group_report(info["out"], "T1w")
    return pages


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    info = make_derivatives(tmp_path_factory.mktemp("reports"))
    info["pages"] = render_all(info)
    return info


class _Collector(HTMLParser):
    """Elements of interest from a page: links, images, scripts, ids, visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.scripts: list[dict] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "script":
            self.scripts.append(a)


def parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    return c


def embedded_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m, "no embedded JSON data block"
    return json.loads(m.group(1))


def assert_refs_resolve(page: Path, refs: list[str]) -> None:
    for ref in refs:
        if ref.startswith("#"):
            continue
        assert "://" not in ref and not ref.startswith("//"), f"external reference {ref!r} in {page.name}"
        target = page.parent / unquote(ref.split("#")[0])
        assert target.is_file(), f"{page.name}: {ref!r} does not resolve to a file"


# ---------------------------------------------------------------------------------------------


def test_scan_report_sections_and_figures(rendered):
    page = rendered["pages"]["pass1"]
    assert page == rendered["folder"]["pass1"] / "sub-01_ses-1_T1w_report.html"
    html = page.read_text(encoding="utf-8")
    for text in ("sub-01_ses-1_T1w", "Siemens", "MagneticFieldStrength", "40 × 48 × 40", "1 × 1 × 1 mm",
                 "bids_qa_version", "0.1.0", "torch_version", "Timings", "0.210", "severity", "efc", "0.4321",
                 "higher is worse", "lower is worse", "Image rulers", "closest to this scan"):
        assert text in html, text
    assert 'class="big" id="verdict-text">pass<' in html
    c = parse(page)
    assert_refs_resolve(page, c.links + c.images)
    fig_dir = page.parent / "sub-01_ses-1_T1w_figures"
    names = {p.name for p in fig_dir.iterdir()}
    assert {"axial.png", "coronal.png", "sagittal.png", "background.png", "thumb.png", "worst_1.png"} <= names
    from PIL import Image

    with Image.open(fig_dir / "thumb.png") as im:
        assert im.size == (figures.THUMB, figures.THUMB)
    with Image.open(fig_dir / "axial.png") as im:
        assert im.size == (4 * figures.TILE + 3 * 2, 2 * figures.TILE + 2)  # (width, height): 2 rows x 4 cols
    # Ruler: eight level images from the _qa.json, the scan value and the threshold drawn.
    assert sum(1 for s in c.images if "rulers/" in s) == 8
    assert html.count("alt=\"ruler level") == 8
    # The worst slice is the one the fixture made worst (middle slice, 20).
    assert "slice 20: severity = 1.42" in html
    # Per-slice plots for both series, severity first, threshold drawn on severity.
    assert html.index("<h3>severity <") < html.index("<h3>ssim <")
    assert "threshold 1" in html


def test_scores_table_shows_stored_values_thresholds_and_flags(rendered):
    html = rendered["pages"]["review"].read_text(encoding="utf-8")
    row = re.search(r"<tr class=\"flag-review\"><td>severity</td><td>score</td>(.*?)</tr>", html, re.S)
    assert row, "severity row with its review flag"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[0] == "1.21" and cells[1] == "1" and "higher is worse" in cells[2] and "review" in cells[3]
    assert "1 NaN voxel set to 0" in html  # warnings
    assert "reached a review level" in html
    # Long-layout slices table read and worst slice found in the anisotropic (1x1x4 mm) scan.
    assert "slice 6: severity.score = 2.21" in html


def test_report_shows_stored_verdict_without_recomputing(tmp_path):
    info = make_derivatives(tmp_path)
    js = info["json"]["review"]
    doc = json.loads(js.read_text())
    doc["verdict"] = "pass"  # stored verdict disagrees with the scores: the report must not re-judge
    doc["reasons"] = []
    js.write_text(json.dumps(doc))
    html = render_scan_report(info["out"], js, None).read_text(encoding="utf-8")
    assert 'id="verdict-text">pass<' in html
    assert "No slice images: no image was given" in html


def test_error_scan_report(rendered):
    page = rendered["pages"]["error"]
    html = page.read_text(encoding="utf-8")
    assert 'id="verdict-text">error<' in html
    assert "sub-04_T1w.nii.gz is an empty (zero-byte) file" in html
    assert "<strong>load</strong>" in html
    assert "No slice images" in html
    assert not (page.parent / "sub-04_T1w_figures").exists()
    c = parse(page)
    assert c.images == []
    assert_refs_resolve(page, c.links)


def test_unreadable_image_gives_report_with_reason(tmp_path):
    info = make_derivatives(tmp_path)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    html = render_scan_report(info["out"], info["json"]["pass1"], bad).read_text(encoding="utf-8")
    assert "No slice images: the image could not be read" in html
    assert "bad.nii.gz" in html


def test_rulers_absent_render_nothing(tmp_path):
    info = make_derivatives(tmp_path, with_rulers=False)
    html = render_scan_report(info["out"], info["json"]["pass1"], info["image"]["pass1"]).read_text()
    assert 'id="rulers"' not in html and "Image rulers" not in html


def test_malformed_ruler_is_a_note_not_an_error(tmp_path):
    info = make_derivatives(tmp_path)
    js = info["json"]["pass1"]
    doc = json.loads(js.read_text())
    doc["rulers"]["broken"] = {"metric": "x", "levels": [{"severity": 0.1}]}
    js.write_text(json.dumps(doc))
    html = render_scan_report(info["out"], js, None).read_text()
    assert "ruler for broken is malformed" in html
    assert html.count("alt=\"ruler level") == 8  # the good ruler still shown


def test_script_in_scan_id_is_escaped(rendered):
    page = rendered["pages"]["fail"]
    assert page.name == f"{EVIL_ID}_report.html"
    html = page.read_text(encoding="utf-8")
    assert "<script>alert" not in html and "<img src=x" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(2)" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "Siemens&lt;b&gt;" in html
    c = parse(page)
    assert [s.get("type") for s in c.scripts] == ["application/json", None]
    assert all(tag not in ("i", "b") for tag, _ in c.tags)
    assert all(src != "x" for src in c.images)
    assert_refs_resolve(page, c.links + c.images)  # figure folder name is URL-quoted
    assert embedded_data(html)["scan_id"] == EVIL_ID
    group = rendered["pages"]["group"].read_text(encoding="utf-8")
    assert "<script>alert" not in group and "<img src=x" not in group and "<i>" not in group
    assert [s.get("type") for s in parse(rendered["pages"]["group"]).scripts] == ["application/json", None]


def test_csp_allows_exactly_the_page_script(rendered):
    for page in (rendered["pages"]["pass1"], rendered["pages"]["group"]):
        html = page.read_text(encoding="utf-8")
        csp = html_unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1))
        script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"script-src 'sha256-{digest}'" in csp
        assert "default-src 'none'" in csp and "connect-src 'none'" in csp
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        no_ns = html.replace("http://www.w3.org/2000/svg", "")  # an XML namespace name, never fetched
        assert "http://" not in no_ns and "https://" not in no_ns


def test_group_report_content(rendered):
    page = rendered["pages"]["group"]
    assert page == rendered["out"] / "group_T1w.html"
    html = page.read_text(encoding="utf-8")
    counts = dict(re.findall(r'data-verdict="(\w+)"><span class="n">(\d+)</span>', html))
    assert counts == {"pass": "2", "review": "2", "fail": "1", "error": "1"}
    tier = re.search(r'<table id="tier-table">(.*?)</table>', html, re.S).group(1)
    assert "tier 1" in tier and "tier 3" in tier and "tier n/a" in tier
    thr = re.search(r'<table id="threshold-table">(.*?)</table>', html, re.S).group(1)
    assert "severity.score" in thr and ">1.5<" in thr and ">0.85<" in thr
    c = parse(page)
    assert_refs_resolve(page, c.links + c.images)
    report_links = {unquote(h) for h in c.links if h.endswith("_report.html")}
    assert len(report_links) == 6  # every scan, the error scan included, links its report
    thumbs = [unquote(s) for s in c.images if s.endswith("thumb.png")]
    assert len(thumbs) == 3 and any(EVIL_ID in t for t in thumbs)  # review + fail only
    # The thumbnail is found through the report's (safe) file stem, not the scan id.
    assert f"sub-05/anat/{STEMS['safe']}_figures/thumb.png" in thumbs
    assert "sub-05_acq-a b&amp;c&lt;d&gt;_T1w" in html

    data = embedded_data(html)
    # flow.m1/m2 go to the m-plane; thresholded scores are drawn first, iqm.efc (no threshold) on request.
    assert data["columns"] == ["severity.score", "ssim.ssim", "iqm.snr", "tiers.tier", "iqm.fber", "iqm.efc",
                               "flow.flag_5pct"]
    assert data["n_primary"] == 5 and 'id="more-plots"' in html
    assert data["thresholds"]["severity.score"] == {"review": 1.0, "fail": 1.5, "direction": "higher_is_worse"}
    ids = [s["id"] for s in data["scans"]]
    assert ids == list(SCAN_IDS.values())
    err = data["scans"][ids.index("sub-04_T1w")]
    assert err["verdict"] == "error" and err["v"] == [None] * 7
    assert data["flow"]["density"] == "group_T1w_flow_density.png"
    assert data["flow"]["extent"] == [-4.0, 4.0, -4.0, 4.0]
    lo, hi = data["flow"]["x_range"]
    assert lo < -4.0 and hi > 4.0  # density extent and every point inside the drawn range
    assert data["rating"]["storage_key"] == render.storage_key(rendered["out"])


def test_group_without_flow_or_thresholds(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_tsv(out / "group_T2w.tsv", ["scan_id", "subject", "session", "run", "suffix", "source", "verdict",
                                      "reasons", "report", "severity.score", "ssim.class"],
              [["sub-01_T2w", "01", "n/a", "n/a", "T2w", "sub-01/anat/sub-01_T2w.nii.gz", "pass", "n/a", "n/a", "0.3", "good"],
               ["sub-NA_T2w", "NA", "n/a", "n/a", "T2w", "sub-NA/anat/sub-NA_T2w.nii.gz", "review", "x", "n/a", "n/a", "rescan"]])
    html = render_group_report(out, "T2w").read_text(encoding="utf-8")
    data = embedded_data(html)
    assert data["flow"] is None and data["thresholds"] == {}
    assert data["columns"] == ["severity.score"]  # ssim.class is text: table only
    assert ">rescan<" in html and 'id="mplane"' not in html
    assert "No thresholds were recorded" in html
    assert data["scans"][1]["subject"] == "NA"  # "NA" is a label, not a missing value
    assert data["scans"][1]["href"] is None  # no report: no link
    assert data["scans"][1]["v"] == [None]


def test_group_report_missing_table(tmp_path):
    with pytest.raises(ScanError, match="group_T1w.tsv"):
        render_group_report(tmp_path, "T1w")


def test_missing_qa_json_raises_scan_error(tmp_path):
    with pytest.raises(ScanError) as err:
        render_scan_report(tmp_path, tmp_path / "sub-01_T1w_qa.json", None)
    assert err.value.stage == "report"


# --- readers and figure geometry -------------------------------------------------------------


def test_slice_tables_in_every_layout_agree(tmp_path):
    """Derivatives layout (one row per model and slice), long layout and plain wide layout."""
    write_tsv(tmp_path / "deriv.tsv", ["model", "slice_axis", "slice_index", "severity", "ssim"],
              [["severity", "1", "2", "0.5", "n/a"], ["severity", "1", "0", "0.1", "n/a"],
               ["severity", "1", "1", "0.3", "n/a"], ["ssim", "1", "1", "n/a", "0.8"], ["ssim", "1", "2", "n/a", "0.9"]])
    write_tsv(tmp_path / "long.tsv", ["model", "metric", "slice_index", "value"],
              [["severity", "severity", "0", "0.1"], ["severity", "severity", "1", "0.3"],
               ["severity", "severity", "2", "0.5"], ["ssim", "ssim", "1", "0.8"], ["ssim", "ssim", "2", "0.9"]])
    write_tsv(tmp_path / "wide.tsv", ["slice_index", "severity.severity", "ssim.ssim"],
              [["2", "0.5", "0.9"], ["0", "0.1", "n/a"], ["1", "0.3", "0.8"]])
    deriv = {s.name: s for s in render.read_slice_table(tmp_path / "deriv.tsv")}
    long = {s.name: s for s in render.read_slice_table(tmp_path / "long.tsv")}
    wide = {s.name: s for s in render.read_slice_table(tmp_path / "wide.tsv")}
    assert set(deriv) == {"severity", "ssim"} and set(long) == set(wide) == {"severity.severity", "ssim.ssim"}
    assert deriv["severity"].axis == 1 and long["ssim.ssim"].axis is None
    for a, b, c in ((deriv["severity"], long["severity.severity"], wide["severity.severity"]),
                    (deriv["ssim"], long["ssim.ssim"], wide["ssim.ssim"])):
        assert a.model == b.model == c.model and a.metric == b.metric == c.metric
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_allclose(a.values, b.values)
        finite = np.isfinite(c.values)
        np.testing.assert_array_equal(c.index[finite], a.index)
        np.testing.assert_allclose(c.values[finite], a.values)
    np.testing.assert_array_equal(deriv["severity"].index, [0, 1, 2])  # sorted, n/a rows of ssim dropped


def test_per_slice_threshold_and_direction_from_scan_table():
    rows = [render.ScoreRow("severity", "score", 1.2, "1.2", 1.0, "review", "higher_is_worse"),
            render.ScoreRow("ssim", "ssim_mean", 0.9, "0.9", 0.85, "pass", "lower_is_worse"),
            render.ScoreRow("ssim", "ssim_p05", 0.7, "0.7", 0.6, "pass", "lower_is_worse")]
    series = lambda model, metric: render.SliceSeries(model, model, metric, np.arange(3.0), np.ones(3), 2)  # noqa: E731
    assert render.match_row(series("severity", "severity"), rows) == (1.0, "higher_is_worse")
    assert render.match_row(series("ssim", "ssim"), rows) == (None, "lower_is_worse")  # two candidates
    assert render.match_row(series("flow", "m1"), rows) == (None, "higher_is_worse")


def test_worst_slices_follow_direction():
    idx = np.array([10, 11, 12, 13])
    vals = np.array([0.2, np.nan, 0.9, 0.5])
    assert figures.worst_slices(idx, vals, "higher_is_worse", 2) == [12, 13]
    assert figures.worst_slices(idx, vals, "lower_is_worse", 2) == [10, 13]
    assert figures.worst_slices(idx, np.full(4, np.nan)) == []


def test_slice_plot_keeps_threshold_and_breaks_at_gaps():
    p = figures.slice_plot("s", np.arange(6), np.array([0.1, 0.2, np.nan, 0.3, 0.2, 0.1]), threshold=2.0, worst=[3])
    assert len(p.segments) == 2  # the missing slice splits the line
    assert p.top <= p.threshold[0] <= p.top + p.plot_h  # threshold far above the data still drawn
    assert p.marks[0]["slice"] == 3
    ys = [float(pt.split(",")[1]) for seg in p.segments for pt in seg.split()]
    assert all(p.top <= y <= p.top + p.plot_h for y in ys)


def test_ruler_scale_places_scan_and_nearest_level():
    s = figures.ruler_scale([0.1, 0.5, 0.9, 1.3], threshold=1.0, scan_value=0.95)
    assert s.nearest == 2
    xs = [lv["x"] for lv in s.levels]
    assert xs == sorted(xs) and s.levels[2]["x"] < s.threshold["x"] and s.scan["x"] < s.threshold["x"]
    assert 0 < min(xs) and max(xs) < s.width


def test_square_tiles_keep_physical_aspect():
    img = np.ones((12, 48), dtype=np.float32)  # rows of 4 mm, columns of 1 mm: 48 x 48 mm
    tile = figures.to_square_tile(img, 4.0, 1.0, 64)
    assert tile.shape == (64, 64)
    assert np.count_nonzero(tile[:, 32]) == 64 and np.count_nonzero(tile[32]) == 64
    wide = figures.to_square_tile(np.ones((10, 40), np.float32), 1.0, 1.0, 64)
    assert np.count_nonzero(wide[:, 32]) == 16  # 10 x 40 mm -> 16 x 64 px, padded


def test_oriented_slice_is_neurological():
    vol = np.zeros((4, 5, 6), dtype=np.float32)
    vol[3, 4, 2] = 1  # right, anterior
    img, row_mm, col_mm = figures.oriented_slice(vol, (1.0, 2.0, 3.0), 2, 2)
    assert img.shape == (5, 4) and (row_mm, col_mm) == (2.0, 1.0)
    assert img[0, 3] == 1  # anterior at the top, right on the right


def test_background_range_bounded():
    rng = np.random.default_rng(0)
    data = np.abs(rng.normal(0, 0.02, (20, 20, 20))).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    data[mask] = 1.0
    v = figures.background_range(data, mask)
    assert 0.01 <= v <= 0.3 and v == pytest.approx(3 * np.median(data[~mask]), rel=0.05)
    assert figures.background_range(np.where(mask, 1.0, 0.0).astype(np.float32), mask) == 0.01


def test_render_time_per_scan_is_small(tmp_path):
    """A 1 mm head-sized scan (176 x 240 x 256) renders in well under a second once loaded."""
    from bids_qa.volume import volume_from_array

    info = make_derivatives(tmp_path, with_rulers=True)
    vol = volume_from_array(phantom((176, 240, 256), np.random.default_rng(1), 0.1), (1.0, 1.0, 1.0))
    render_scan_report(info["out"], info["json"]["pass1"], None, volume=vol)  # warm imports/templates
    t0 = time.perf_counter()
    page = render_scan_report(info["out"], info["json"]["pass1"], None, volume=vol)
    elapsed = time.perf_counter() - t0
    assert (page.parent / "sub-01_ses-1_T1w_figures" / "axial.png").is_file()
    assert elapsed < 1.0, f"rendering took {elapsed:.2f} s"
