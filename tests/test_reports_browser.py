"""The reports in a real browser: headless Debian Chromium driven by Playwright.

Checks what only a browser can: no console errors, no request other than ``file://`` URLs of files
that exist, every link and image resolves, plot points open the right report, the rating widget's
export/import round-trips, and a scan id holding ``<script>`` stays text.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package;
Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

try:  # pytest's default (prepend) import mode puts tests/ on sys.path
    from test_reports import EVIL_ID, SCAN_IDS, make_derivatives, render_all
except ImportError:  # tests/ as a package
    from tests.test_reports import EVIL_ID, SCAN_IDS, make_derivatives, render_all

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

if not CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

KEYS = list(SCAN_IDS)  # row order of the group table
EVIL_I = KEYS.index("fail")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    info = make_derivatives(tmp_path_factory.mktemp("browser"))
    info["pages"] = render_all(info)
    return info


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(10_000)
    pg.watch = Watch(pg)
    yield pg
    ctx.close()


class Watch:
    """Everything a page does that a self-contained report must not."""

    def __init__(self, page) -> None:
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def assert_clean(self) -> None:
        assert self.console_errors == []
        assert self.page_errors == []
        assert self.dialogs == []
        for url in self.requests:
            if url.startswith("blob:"):  # the rating export's own download, never the network
                continue
            parsed = urlparse(url)
            assert parsed.scheme == "file", f"non-file request {url}"
            assert Path(unquote(parsed.path)).is_file(), f"request for a missing file {url}"


def url_of(path: Path) -> str:
    return path.resolve().as_uri()


def path_of(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


COLLECT_REFS = """async () => {
  const out = [];
  for (const a of document.querySelectorAll('a[href]')) {
    const raw = a.getAttribute('href');
    out.push({kind: 'a', raw: raw, url: new URL(raw, document.baseURI).href, ok: true});
  }
  for (const im of document.querySelectorAll('image')) {
    const raw = im.getAttribute('href');
    out.push({kind: 'image', raw: raw, url: new URL(raw, document.baseURI).href, ok: true});
  }
  for (const img of Array.from(document.images)) {
    img.loading = 'eager';
    const ok = await img.decode().then(() => img.naturalWidth > 0, () => false);
    out.push({kind: 'img', raw: img.getAttribute('src'), url: img.src, ok: ok});
  }
  return out;
}"""


def assert_refs_resolve(page) -> int:
    refs = page.evaluate(COLLECT_REFS)
    for ref in refs:
        if ref["raw"].startswith("#"):
            assert page.evaluate("id => !!document.getElementById(id)", ref["raw"][1:]), ref
            continue
        assert ref["url"].startswith("file://"), ref
        assert path_of(ref["url"]).is_file(), f"{ref['kind']} {ref['raw']!r} does not resolve"
        assert ref["ok"], f"image {ref['raw']!r} did not decode"
    return len(refs)


def test_every_page_loads_clean_and_all_references_resolve(site, page):
    n_refs = 0
    for _key, html in site["pages"].items():
        page.goto(url_of(html))
        page.wait_for_load_state("load")
        n_refs += assert_refs_resolve(page)
    page.watch.assert_clean()
    loaded = {path_of(u) for u in page.watch.requests}
    assert site["pages"]["group"].resolve() in loaded
    assert any(p.name == "thumb.png" for p in loaded)
    assert n_refs > 50


def test_plot_points_open_the_right_report(site, page):
    group = url_of(site["pages"]["group"])
    page.goto(group)
    point = page.locator(f'#plot-area .plot[data-col="severity.score"] a.pt-link[data-i="{EVIL_I}"] circle')
    assert point.count() == 1
    point.click()
    page.wait_for_url(lambda u: u.endswith("_report.html"))
    assert path_of(page.url) == site["pages"]["fail"].resolve()
    assert page.locator("#scan-id").text_content() == EVIL_ID
    # The m-plane points are links too.
    page.goto(group)
    page.locator('#mplane a.pt-link[data-i="2"] circle').click()
    page.wait_for_url(lambda u: u.endswith("_report.html"))
    assert path_of(page.url) == site["pages"]["review"].resolve()
    page.watch.assert_clean()


def test_script_in_file_name_renders_as_text(site, page):
    page.goto(url_of(site["pages"]["fail"]))
    heading = page.locator("#scan-id")
    assert heading.is_visible()
    assert heading.text_content() == EVIL_ID
    assert page.evaluate("document.scripts.length") == 2  # the JSON block and our own script
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("main i, main b").count() == 0
    page.goto(url_of(site["pages"]["group"]))
    link = page.locator(f'#scan-table tr[data-i="{EVIL_I}"] td a')
    assert link.text_content() == EVIL_ID and link.is_visible()
    page.fill("#subject-search", "sub-x<i>")
    assert page.locator("#search-status").text_content() == "sub-x<i>: 1 scan highlighted"
    page.watch.assert_clean()


def test_sort_filter_and_subject_search(site, page):
    page.goto(url_of(site["pages"]["group"]))

    def visible_order() -> list[int]:
        return page.evaluate("""() => Array.from(document.querySelectorAll('#scan-table tbody tr'))
            .filter(r => !r.hidden).map(r => parseInt(r.dataset.i, 10))""")

    header = page.locator("#scan-table th", has_text="severity.score")
    header.click()
    assert visible_order() == [0, 1, 5, 2, 3, 4]  # 0.42, 0.55, 1.05, 1.21, 2.62, then the error scan (n/a)
    header.click()
    assert visible_order() == [3, 2, 5, 1, 0, 4]
    page.select_option("#verdict-filter", "fail")
    assert visible_order() == [3]
    page.select_option("#verdict-filter", "")
    page.fill("#filter", "sub-02")
    assert visible_order() == [2]
    page.fill("#filter", "")

    page.fill("#subject-search", "sub-01")
    assert page.locator("#scan-table tr.hl").count() == 2
    n_plots = page.locator("#plot-area .plot").count() + 1  # strip plots + m-plane
    assert page.locator("svg .pt.hl").count() == 2 * n_plots
    assert page.locator("svg .pt.dim").count() == 3 * n_plots  # sub-02, sub-x<i>, sub-05; error has no point
    assert page.locator(".card.dim").count() == 3  # every flagged scan belongs to another subject
    assert page.locator("#plot-area-more .plot").count() == 0  # drawn only when opened
    page.click("#more-plots summary")
    page.locator("#plot-area-more .plot").first.wait_for()  # the toggle event is asynchronous
    assert page.locator("#plot-area-more .plot").count() == 2  # iqm.efc and the flow.flag_5pct bars
    assert page.locator("#plot-area-more svg .pt.hl").count() == 2  # the open search applies to new plots
    page.fill("#subject-search", "")
    assert page.locator("svg .pt.hl, svg .pt.dim, tr.hl, tr.dim").count() == 0
    page.watch.assert_clean()


def _storage(page, key: str) -> dict:
    return page.evaluate("k => JSON.parse(localStorage.getItem(k) || '{}')", key)


def test_rating_export_import_round_trip(site, page, tmp_path):
    page.goto(url_of(site["pages"]["group"]))
    key = page.evaluate("JSON.parse(document.getElementById('report-data').textContent).rating.storage_key")
    comment = "tab\there, new\nline, back\\slash, ünïcode, <b>not bold</b>"
    page.click('#scan-table tr[data-i="0"] .rate-btn')
    assert page.locator("#rating-scan").text_content() == SCAN_IDS["pass1"]
    page.check('#rating-panel input[name=rating][value="3"]')
    page.check('#rating-panel input[name=artifact][value="motion"]')
    page.check('#rating-panel input[name=artifact][value="noise"]')
    page.fill("#rating-comment", comment)
    page.click(f'.card[data-i="{EVIL_I}"] .rate-btn')  # from the flagged gallery
    assert page.locator("#rating-scan").text_content() == EVIL_ID
    page.check('#rating-panel input[name=rating][value="1"]')
    page.check('#rating-panel input[name=artifact][value="wrap"]')
    page.click("#rating-close")

    before = _storage(page, key)
    assert set(before) == {SCAN_IDS["pass1"], EVIL_ID}
    assert before[SCAN_IDS["pass1"]]["rating"] == 3 and before[SCAN_IDS["pass1"]]["comment"] == comment
    assert before[SCAN_IDS["pass1"]]["artifacts"] == ["motion", "noise"]
    assert before[EVIL_ID]["rating"] == 1 and before[EVIL_ID]["artifacts"] == ["wrap"]
    assert page.locator('#scan-table tr[data-i="0"] .rating-text').text_content() == "3 acceptable · motion, noise · comment"

    files = {}
    for fmt in ("tsv", "json"):
        with page.expect_download() as dl:
            page.click(f"#export-{fmt}")
        target = tmp_path / dl.value.suggested_filename
        dl.value.save_as(target)
        files[fmt] = target
    assert files["tsv"].name == "bids_qa_ratings.tsv" and files["json"].name == "bids_qa_ratings.json"
    exported = json.loads(files["json"].read_text(encoding="utf-8"))
    assert exported["format"] == "bids_qa-ratings" and len(exported["ratings"]) == 2
    lines = files["tsv"].read_text(encoding="utf-8").splitlines()
    # the original five columns first (older readers), then rater, seconds, blind
    assert lines[0] == "scan_id\trating\tartifacts\tcomment\tupdated\trater\tseconds\tblind" and len(lines) == 3

    for fmt in ("json", "tsv"):
        page.evaluate("localStorage.clear()")
        page.reload()
        assert _storage(page, key) == {}
        assert page.locator('#scan-table tr[data-i="0"] .rating-text').text_content() == ""
        page.set_input_files("#import-file", str(files[fmt]))
        page.wait_for_function("document.getElementById('ratings-status').textContent.startsWith('imported')")
        assert page.locator("#ratings-status").text_content() == f"imported 2 rating(s) from {files[fmt].name}"
        assert _storage(page, key) == before, f"{fmt} import differs from what was exported"
        assert page.locator('#scan-table tr[data-i="0"] .rating-text').text_content() == "3 acceptable · motion, noise · comment"
    page.watch.assert_clean()


def test_rating_in_scan_report_shows_in_group_report(site, page):
    page.goto(url_of(site["pages"]["review"]))
    page.check('#rating-form input[name=rating][value="2"]')
    page.check('#rating-form input[name=artifact][value="ghosting"]')
    assert page.locator("#rating-status").text_content() == "saved in this browser"
    page.goto(url_of(site["pages"]["group"]))
    assert page.locator('#scan-table tr[data-i="2"] .rating-text').text_content() == "2 poor · ghosting"
    page.goto(url_of(site["pages"]["review"]))
    assert page.locator('#rating-form input[name=rating][value="2"]').is_checked()
    page.watch.assert_clean()


# ---------------------------------------------------------------------------------------------
# Issue 24 / 23 report behaviour
# ---------------------------------------------------------------------------------------------


def mulberry32_order(seed: int, n: int) -> list[int]:
    """The group page's seeded shuffle (mulberry32 + Fisher-Yates), written again in Python."""
    state = seed & 0xFFFFFFFF

    def imul(a: int, b: int) -> int:
        return (a * b) & 0xFFFFFFFF

    def rand() -> float:
        nonlocal state
        state = (state + 0x6D2B79F5) & 0xFFFFFFFF
        t = state
        t = imul(t ^ (t >> 15), t | 1)
        t ^= (t + imul(t ^ (t >> 7), t | 61)) & 0xFFFFFFFF
        return ((t ^ (t >> 14)) & 0xFFFFFFFF) / 4294967296

    out = list(range(n))
    for j in range(n - 1, 0, -1):
        k = int(rand() * (j + 1))
        out[j], out[k] = out[k], out[j]
    return out


def _visible_columns(page) -> list[str]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('#scan-table thead th'))
        .filter(th => !th.hidden).map(th => th.dataset.col)""")


def test_column_chooser_compact_by_default(site, page):
    page.goto(url_of(site["pages"]["group"]))
    data = page.evaluate("JSON.parse(document.getElementById('report-data').textContent)")
    shown = _visible_columns(page)
    assert shown == ["scan"] + [c for c in ["subject", "session", "run", "verdict", "reasons", "notes", "rating"]
                                + data["table_columns"] if c in data["default_columns"]]
    assert "iqm.efc" not in shown and "manufacturer" not in shown and "severity.score" in shown
    assert len(shown) < len(data["table_columns"])
    # Reason cells are one line until opened.
    row = page.locator(f'#scan-table tr[data-i="{EVIL_I}"]')
    assert row.bounding_box()["height"] < 40
    summary = row.locator("td.reasons details summary")
    assert summary.locator(".kind").first.text_content() == "evidence"
    page.click("#column-chooser summary")
    page.click("#columns-all")
    assert "iqm.efc" in _visible_columns(page) and "manufacturer" in _visible_columns(page)
    page.uncheck('#column-list input[value="severity.score"]')
    assert "severity.score" not in _visible_columns(page)
    assert page.locator('#scan-table td[data-col="severity.score"]:not([hidden])').count() == 0
    page.click("#columns-compact")
    assert _visible_columns(page) == shown
    page.watch.assert_clean()


def test_plot_kinds_strip_log_bars_and_one_m_plane(site, page):
    page.goto(url_of(site["pages"]["group"]))
    sev = page.locator('#plot-area .plot[data-col="severity.score"]')
    assert sev.get_attribute("data-kind") == "strip"  # 5 scans with a value: points, no box
    assert sev.locator("rect.box").count() == 0 and sev.locator("circle.pt").count() == 5
    fber = page.locator('#plot-area .plot[data-col="iqm.fber"]')
    assert fber.get_attribute("data-scale") == "log"  # 2.5 ... 25000 spans four decades
    ticks = fber.locator("svg > text").all_text_contents()
    assert {"10", "100", "1000"} <= set(ticks)
    boxes = [fber.locator("text.thr-label").nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["y"] + boxes[0]["height"] <= boxes[1]["y"] or boxes[1]["y"] + boxes[1]["height"] <= boxes[0]["y"]
    assert sev.get_attribute("data-scale") == "linear"
    page.click("#more-plots summary")
    flags = page.locator('#plot-area-more .plot[data-col="flow.flag_5pct"]')
    flags.wait_for()
    assert flags.get_attribute("data-kind") == "bars"
    counts = {flags.locator("rect.bar").nth(i).get_attribute("data-value"):
              flags.locator("rect.bar").nth(i).get_attribute("data-count") for i in range(2)}
    assert counts == {"0": "2", "1": "3"}  # severity above 1: 1.21, 2.62 and 1.05
    # One m-plane: a single plot, no second density figure with axes of its own.
    assert page.locator("svg#mplane-svg").count() == 1 and page.locator("#mplane svg").count() == 1
    assert page.locator("#mplane img").count() == 0
    page.watch.assert_clean()


def test_colour_points_by_a_categorical_column(site, page):
    page.goto(url_of(site["pages"]["group"]))
    options = page.locator("#colour-by option").all_text_contents()
    assert "manufacturer" in options and "field_strength" in options
    page.select_option("#colour-by", "manufacturer")
    legend = page.locator("#colour-legend .legend-item").all_text_contents()
    assert legend == ["GE", "Siemens", "Siemens<b>", "n/a"]  # sorted, escaped as text; the error scan has none
    fills = page.evaluate("""() => Array.from(document.querySelectorAll('#plot-area .plot[data-col="severity.score"] circle.pt'))
        .map(c => [c.getAttribute('data-i'), c.style.fill])""")
    by_scan = dict(fills)
    assert by_scan["0"] == by_scan["1"] and by_scan["2"] != by_scan["0"] and by_scan["2"] == by_scan["5"]
    page.select_option("#colour-by", "")
    assert page.evaluate("document.querySelector('#plot-area circle.pt').style.fill") == ""
    page.watch.assert_clean()


def test_blind_mode_hides_scores_and_uses_a_seeded_order(site, page):
    page.goto(url_of(site["pages"]["group"]))
    page.fill("#blind-seed", "7")
    page.check("#blind-mode")
    for hidden in ("#summary", "#scans", "#plots", "#mplane", "#flagged", "#thresholds"):
        assert not page.locator(hidden).is_visible(), hidden
    assert page.locator("#blind").is_visible()
    order = []
    for k in range(len(KEYS)):
        assert page.locator("#blind-position").text_content() == f"scan {k + 1} of {len(KEYS)}"
        order.append(page.locator("#blind-scan").text_content())
        text = page.locator("#blind").text_content()
        assert "severity" not in text and "review" not in text.lower().replace("preview", "")
        page.click("#blind-next")
    expected = [SCAN_IDS[KEYS[i]] for i in mulberry32_order(7, len(KEYS))]
    assert order == expected and order != [SCAN_IDS[k] for k in KEYS]
    # The shown scan's mosaics come from its report's figure folder; the rating form is there too.
    page.click("#blind-prev")
    assert page.locator("#blind #rating-form").count() == 1
    page.uncheck("#blind-mode")
    assert page.locator("#scans").is_visible() and not page.locator("#blind").is_visible()
    page.watch.assert_clean()


def test_rater_name_time_and_blind_flag_in_export(site, page, tmp_path):
    from bids_qa import calibrate, ratings

    page.goto(url_of(site["pages"]["group"]))
    page.evaluate("localStorage.clear()")
    page.reload()
    page.fill("#rater-name", "anna")
    page.fill("#blind-seed", "3")
    page.check("#blind-mode")
    first = page.locator("#blind-scan").text_content()
    page.wait_for_timeout(1300)
    page.check('#blind-form-slot input[name=rating][value="2"]')
    page.click("#blind-next")  # leaving the scan adds the time it was open
    page.uncheck("#blind-mode")
    files = {}
    for fmt in ("tsv", "json"):
        with page.expect_download() as dl:
            page.click(f"#export-{fmt}")
        target = tmp_path / dl.value.suggested_filename
        dl.value.save_as(target)
        files[fmt] = target
    exported = json.loads(files["json"].read_text(encoding="utf-8"))
    assert exported["rater"] == "anna"
    (rec,) = exported["ratings"]
    assert rec["scan_id"] == first and rec["rating"] == 2 and rec["rater"] == "anna" and rec["blind"] is True
    assert 1.2 <= rec["seconds"] < 30
    head, row = files["tsv"].read_text(encoding="utf-8").splitlines()
    cells = dict(zip(head.split("\t"), row.split("\t"), strict=True))
    assert cells["rater"] == "anna" and cells["blind"] == "1" and float(cells["seconds"]) >= 1.2
    # Both exports stay readable by `bids_qa ratings merge` and `bids_qa calibrate`.
    for path in files.values():
        parsed = ratings.read_export(path)
        assert parsed.rater == "anna" and parsed.ratings[first].rating == 2
        assert calibrate.read_ratings(path) == [{"id": first, "rating": 2}]
    page.watch.assert_clean()


def test_montage_page_links_every_scan_to_its_report(site, page):
    page.goto(url_of(site["pages"]["group"]))
    page.click("text=Montage of every scan")
    page.wait_for_url(lambda u: u.endswith("_montage.html"))
    figures = page.locator("#montage figure")
    assert figures.count() == len(KEYS)
    n_refs = assert_refs_resolve(page)
    assert n_refs >= 2 * len(KEYS)
    links = page.evaluate("""() => Array.from(document.querySelectorAll('#montage figcaption a'))
        .map(a => new URL(a.getAttribute('href'), document.baseURI).href)""")
    assert sorted(path_of(u) for u in links) == sorted(site["pages"][k].resolve() for k in KEYS)
    page.locator(f'#montage figure[data-i="{EVIL_I}"] figcaption a').click()
    page.wait_for_url(lambda u: u.endswith("_report.html"))
    assert page.locator("#scan-id").text_content() == EVIL_ID
    page.watch.assert_clean()


def test_notes_are_shown_apart_from_reasons(site, page):
    page.goto(url_of(site["pages"]["review"]))
    reasons = page.locator("#reason-list li")
    assert reasons.count() >= 1
    assert reasons.first.locator(".kind").text_content() == "evidence"
    assert "rule: severity.score beyond review level 1" in page.locator("#reason-list").text_content()
    notes = page.locator("#note-list").text_content()
    assert "2D acquisition, voxels 1.00x1.00x4.00 mm" in notes
    assert "2D acquisition" not in page.locator("#reason-list").text_content()
    assert page.locator("#note-list li .kind").first.text_content() == "fact"
    page.goto(url_of(site["pages"]["group"]))
    cell = page.locator('#scan-table tr[data-i="2"] td.notes')
    assert cell.locator("summary").text_content().strip() == "1 note"
    cell.locator("summary").click()
    assert "2D acquisition" in cell.text_content()
    assert "2D acquisition" not in page.locator('#scan-table tr[data-i="2"] td.reasons').text_content()
    # The protocol groups and the thresholds' provenance are named.
    assert "too small to judge" in page.locator("#protocol-table").text_content()
    assert "calibrated from ratings" in page.locator("#threshold-summary").text_content()
    page.watch.assert_clean()
