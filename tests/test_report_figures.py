"""Report figures and group-page data (issues 23 and 24): rulers from a clean reference on a
degraded scan, ruler labels that never overprint, the measured-regions and overview figures, the
compact group table's data, the one m-plane's density grid. No network, no /work/shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bids_qa import group_flow, rulers
from bids_qa.iqms import MeasuredRegions, measured_regions
from bids_qa.reports import figures, group_extras, region_figures, render


def _ruler(scores, threshold=1.0, source="this scan's central slice", references=None) -> rulers.Ruler:
    n = len(scores)
    return rulers.Ruler(model="severity", metric="score", artifact="noise", severities=np.linspace(0, 1, n),
                        scores=np.asarray(scores, np.float32), images=np.zeros((n, 4, 4), np.float32),
                        scan_value=1.4, threshold=threshold, source=source, references=references or {})


# ---------------------------------------------------------------------------------------------
# Rulers


def test_degraded_scan_ruler_switches_to_the_clean_reference_of_its_contrast():
    ref_t2 = _ruler([0.1, 1.4, 2.5, 2.8], source="reference T2")
    ref_t1 = _ruler([0.2, 0.4, 1.6, 2.0], source="reference T1")
    degraded = _ruler([2.0, 2.7, 3.0, 3.4], references={"T2": ref_t2, "T1": ref_t1})
    assert not degraded.acceptable_start()
    shown = degraded.for_display("T2w")
    assert shown.source == "reference T2" and shown.threshold == 1.0 and shown.scan_value == pytest.approx(1.4)
    assert shown.to_json()["reference"] == "reference T2" and shown.to_json()["starts_acceptable"] is True
    assert degraded.for_display("T1w").source == "reference T1"
    assert degraded.for_display("FLAIR") is degraded  # no FLAIR reference was scored: keep its own
    clean = _ruler([0.1, 1.2, 2.0, 3.0], references={"T2": ref_t2})
    assert clean.for_display("T2w") is clean  # a clean scan keeps its own slice
    # A reference that also starts above the threshold is no better: the scan's own ruler stays.
    bad_ref = _ruler([1.5, 2.0, 2.5, 3.0], source="bad")
    assert _ruler([2.0, 2.5, 3.0, 3.5], references={"T2": bad_ref}).for_display("T2w").source != "bad"
    # lower-is-worse scores (SSIM-like) start acceptable above the threshold
    ssim_like = _ruler([0.95, 0.9, 0.7, 0.5], threshold=0.85)
    ssim_like.higher_is_worse = False
    assert ssim_like.acceptable_start()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_painted_references_have_each_contrast_family_tissue_order(axis):
    t1, gm, wm = rulers._mni_maps()
    gm_s, wm_s = (np.take(v, t1.shape[axis] // 2, axis=axis) for v in (gm, wm))
    means = {}
    for family in ("T1", "T2", "FLAIR"):
        img, mask, zooms = rulers.painted_reference(family, axis)
        assert img.shape == gm_s.shape and mask.shape == img.shape and zooms == (1.0, 1.0)
        assert mask.mean() > 0.2 and np.percentile(img[mask], 99) == pytest.approx(1.0, abs=0.02)
        means[family] = (float(img[gm_s > 0.8].mean()), float(img[wm_s > 0.9].mean()))
    assert means["T1"][1] > means["T1"][0]  # T1: WM brighter than GM
    assert means["T2"][1] < means["T2"][0]  # T2: WM darker than GM
    assert means["FLAIR"][1] < means["FLAIR"][0]
    assert rulers.FAMILY["T2w"] == "T2" and rulers.FAMILY["FLAIR"] == "FLAIR" and rulers.FAMILY["T1w"] == "T1"


def test_ruler_level_numbers_never_overprint():
    scale = figures.ruler_scale([2.04, 2.74, 2.96, 3.38, 3.55, 3.50, 3.36, 3.43], 1.0, 1.42)
    assert len(scale.levels) == 8
    by_row: dict[float, list[float]] = {}
    for lv in scale.levels:
        by_row.setdefault(lv["label_y"], []).append(lv["x"])
    assert len(by_row) >= 2  # close levels are moved to a second row
    for xs in by_row.values():
        xs.sort()
        assert all(b - a >= 12 for a, b in zip(xs, xs[1:], strict=False))
    assert all(lv["label_y"] < scale.axis_y for lv in scale.levels)
    texts = [t for _, t in scale.ticks]
    assert len(texts) == len(set(texts))


def test_ruler_position_never_reads_as_clean_on_a_degraded_scan():
    levels = [{"n": i + 1, "score": s, "crosses": s > 1.0} for i, s in enumerate([2.04, 2.74, 2.96])]
    text = render.ruler_position(levels, 1.42, 1.0, True, 0)
    assert "above the threshold 1" in text and "every ruler level scores worse" in text
    levels = [{"n": i + 1, "score": s, "crosses": s > 1.0} for i, s in enumerate([0.1, 1.44, 2.47])]
    text = render.ruler_position(levels, 1.42, 1.0, True, 1)
    assert text.startswith("this scan (1.42) is above the threshold 1")
    assert "closest ruler level: 2 (score 1.44, above the threshold)" in text
    assert "within the threshold" in render.ruler_position(levels, 0.3, 1.0, True, 0)


# ---------------------------------------------------------------------------------------------
# Scan-report figures


def _display_volume(shape=(40, 44, 36)) -> figures.DisplayVolume:
    grids = np.ogrid[tuple(slice(-1, 1, complex(0, s)) for s in shape)]
    r2 = sum((g / 0.7) ** 2 for g in grids)
    data = np.where(r2 < 1, 0.8, 0.02).astype(np.float32) + np.where(r2 < 0.3, 0.2, 0.0).astype(np.float32)
    return figures.DisplayVolume(data=data, mask=r2 < 1, zooms=(1.0, 1.0, 1.0))


def test_region_figure_from_the_measured_masks_and_from_the_head_mask(tmp_path):
    from PIL import Image

    vol = _display_volume()
    stride = (2, 2, 2)
    small = vol.mask[::2, ::2, ::2]
    core = np.zeros_like(small)
    core[8:12, 9:13, 7:11] = True
    regions = MeasuredRegions(stride=stride, head=small, air=~small,
                              tissues={"csf": core, "gm": small & ~core & (np.indices(small.shape)[0] < 10),
                                       "wm": small & ~core & (np.indices(small.shape)[0] >= 10)})
    labels, names = region_figures.label_volume(vol.data.shape, regions, vol.mask)
    assert labels.shape == vol.data.shape and names == ["air", "head", "csf", "gm", "wm"]
    assert labels[20, 22, 18] == 3  # the CSF core, upsampled from the analysis grid
    assert labels[0, 0, 0] == 1  # air
    href, present = region_figures.write_regions_figure(vol, tmp_path, "figs", 2, regions)
    assert href == "figs/regions.png" and set(present) == {"air", "csf", "gm", "wm"}
    with Image.open(tmp_path / "regions.png") as im:
        assert im.mode == "RGB" and im.size[1] == figures.TILE
        rgb = np.asarray(im)
    assert (rgb[..., 2].astype(int) - rgb[..., 1]).max() > 40  # blue CSF tint is drawn
    href, present = region_figures.write_regions_figure(vol, tmp_path, "figs", 2, None)
    assert present == ["head"]  # without the scorer's masks: the loaded volume's head mask only
    assert region_figures.write_overview(vol, tmp_path, "figs") == "figs/overview.png"
    with Image.open(tmp_path / "overview.png") as im:
        side = figures.THUMB + 16
        assert im.size == (3 * side + 4, side)


def test_measured_regions_are_read_from_the_volume_cache_only():
    class Fake:
        _cache: dict = {}

    assert measured_regions(Fake()) is None
    from bids_qa.iqms import MEASURED_REGIONS_KEY

    f = Fake()
    f._cache = {MEASURED_REGIONS_KEY: MeasuredRegions((1, 1, 1), np.ones((2, 2, 2), bool), np.zeros((2, 2, 2), bool), {})}
    assert measured_regions(f) is not None


def test_flow_embedding_slices_get_no_density_threshold():
    rows = [render.ScoreRow("flow", "log_density", -3.0, "-3", -6.0, "pass", "lower_is_worse"),
            render.ScoreRow("flow", "m1", 0.1, "0.1", None, "n/a", ""),
            render.ScoreRow("severity", "score", 1.2, "1.2", 1.0, "review", "higher_is_worse")]
    m1 = render.SliceSeries("flow.m1", "flow", "m1", np.arange(3.0), np.ones(3), 2)
    sev = render.SliceSeries("severity", "severity", "severity", np.arange(3.0), np.ones(3), 2)
    assert render.match_row(m1, rows)[0] is None
    assert render.match_row(sev, rows) == (1.0, "higher_is_worse")
    plots, worst, _ = render.slice_panels([m1], rows, 2)
    assert plots[0].threshold is None and plots[0].marks == [] and plots[0].direction == ""


def test_split_name_breaks_only_between_parts():
    assert render.split_name("sub-01_ses-2_T1w") == ["sub-", "01_", "ses-", "2_", "T1w"]
    assert "".join(render.split_name("a<b>_c")) == "a<b>_c"
    html = render.environment().from_string('{% import "_macros.html" as m %}{{ m.breakable(x) }}').render(x="a<b>_c")
    assert html == "a&lt;b&gt;_<wbr>c"


def test_other_metrics_are_not_judged_rows():
    assert render.judged_row(render.ScoreRow("iqm", "fber", 3.0, "3", 30.0, "fail", "lower_is_worse"))
    assert not render.judged_row(render.ScoreRow("iqm", "summary_gm_k", 3.0, "3", None, "n/a", ""))


# ---------------------------------------------------------------------------------------------
# Group page data


def test_reason_items_name_kind_short_label_and_rule():
    it = group_extras.reason_item("evidence: iqm.inu_range = 0.7551 is above the review threshold 0.6 (higher is worse): x")
    assert it == {"kind": "evidence", "short": "iqm.inu_range = 0.7551", "rule": "iqm.inu_range > review level 0.6",
                  "text": "evidence: iqm.inu_range = 0.7551 is above the review threshold 0.6 (higher is worse): x"}
    ctx = group_extras.reason_item("context: severity.score = 2.1 has robust z 4.0 within protocol group 'g' of 20 "
                                   "scans; rule: |z| > 3.5 -> review")
    assert ctx["kind"] == "context" and ctx["rule"] == "|z| > 3.5 -> review"
    agree = group_extras.reason_item("evidence: 4 families agree at review level or beyond (a, b); the rule fails a "
                                     "scan when 2 do")
    assert agree["rule"] == "2 or more families at review level -> fail" and agree["short"] == "4 families agree"
    assert group_extras.split_items("a | b | n/a") == ["a", "b"] and group_extras.split_items(float("nan")) == []


def test_headline_and_categorical_columns():
    cols = ["iqm.fber", "severity.score", "severity.slice_max", "ssim.ssim_mean", "tiers.tier", "tiers.noise_p"]
    thresholds = {"iqm.fber": {}, "severity.score": {}, "ssim.ssim_mean": {}, "tiers.tier": {}}
    assert group_extras.headline_columns(cols, thresholds) == ["severity.score", "ssim.ssim_mean", "tiers.tier"]
    recs = [{"manufacturer": "GE", "field_strength": 3.0, "iqm.snr": 10.0 + i, "scan_id": f"s{i}", "acquisition": None}
            for i in range(8)]
    recs[0]["manufacturer"], recs[1]["field_strength"] = "Siemens", 1.5
    found = {c["column"]: c for c in group_extras.categorical_columns(
        recs, ["manufacturer", "field_strength", "iqm.snr", "scan_id", "acquisition"], {"field_strength", "iqm.snr"})}
    assert set(found) == {"manufacturer", "field_strength"}  # SNR has 8 values: not a category
    assert found["field_strength"]["levels"] == ["1.5", "3"] and found["manufacturer"]["values"][0] == "Siemens"


def test_provenance_protocols_and_methods(tmp_path):
    meta = {"provenance": {"thresholds": {"origin": "default", "sources": ["a.json"], "sha256": "x",
                                          "rule": {"agree": 2, "description": "d", "justification": "j"}},
                           "protocols": {"groups": [{"protocol": "T1w 1x1x1", "n_scans": 2, "judged": False,
                                                     "flagged": 0, "status": "too small to judge"},
                                                    {"protocol": "T1w 2x2x2", "n_scans": 9, "judged": True,
                                                     "flagged": 1}], "z_level": 3.5, "min_group": 8}}}
    src = group_extras.threshold_provenance(meta)
    assert src["origin"] == "default" and src["sources"] == ["a.json"] and src["agree"] == 2
    groups = group_extras.protocol_groups(meta)["groups"]
    assert [g["status"] for g in groups] == ["too small to judge", "judged"]
    assert group_extras.methods_paragraph(meta, tmp_path, "T1w") is None
    (tmp_path / "group_methods.md").write_text("# Methods (generated by bids_qa)\n\nImage quality was ...\n",
                                               encoding="utf-8")
    assert group_extras.methods_paragraph(meta, tmp_path, "T1w") == "Image quality was ..."
    meta["provenance"]["methods"] = "From the JSON."
    assert group_extras.methods_paragraph(meta, tmp_path, "T1w") == "From the JSON."
    assert group_extras.threshold_provenance({}) is None and group_extras.protocol_groups({}) is None


def test_density_grid_shades_the_one_m_plane():
    m = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]])

    def log_density(points):
        return -0.5 * (points ** 2).sum(axis=1)

    grid = group_flow.density_grid(m, log_density, cells=12)
    assert len(grid["log_density"]) == 12 and len(grid["log_density"][0]) == 12 and grid["levels"] == {}
    x0, x1, y0, y1 = grid["extent"]
    assert x0 < -1 and x1 > 1 and y0 < 0 and y1 > 2
    json.dumps(grid)  # stored in the group JSON
    records = [{"flow.m1": a, "flow.m2": b} for a, b in m]
    meta = {"provenance": {"flow_density": {"density": "reference", "grid": grid, "message": "msg"}}}
    plane = group_extras.m_plane(records, meta, "group_T1w_flow_density.png")
    assert plane["shade"]["extent"] == grid["extent"] and plane["density"] is None  # no second picture
    assert plane["figure"] == "group_T1w_flow_density.png"
    assert plane["x_range"][0] <= x0 and plane["x_range"][1] >= x1
    peak = max(v for row in plane["shade"]["cells"] for v in row)
    assert plane["shade"]["hi"] == pytest.approx(peak)


def test_montage_page_is_written_beside_the_group_report(tmp_path):
    from test_reports import make_derivatives, render_all

    info = make_derivatives(tmp_path)
    render_all(info)
    montage = info["out"] / "group_T1w_montage.html"
    html = montage.read_text(encoding="utf-8")
    assert html.count("<figure") == 6 and "group_T1w.html" in html
    overview = [p for p in Path(info["out"]).rglob("overview.png")]
    assert len(overview) == 5  # every scan with an image
    assert "&lt;script&gt;" in html and "<script>alert" not in html
    group = (info["out"] / "group_T1w.html").read_text(encoding="utf-8")
    assert 'loading="lazy"' not in group and 'loading="eager"' in group  # thumbnails print
    assert "@media print" in group and "_montage.html" in group
