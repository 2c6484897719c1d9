"""Regenerate the README screenshots from a demo run (headless Debian Chromium via Playwright).

    python -m bids_qa demo /tmp/demo_out
    python scripts/screenshots.py /tmp/demo_out/qa docs/screenshots

Writes ``scan_report.png`` (the failing T2w scan's report) and ``group_report.png`` (the T2w
group report), each the top 1400 x 1800 px of the page at 1400 px width.
"""

from __future__ import annotations

import sys
from pathlib import Path

WIDTH, HEIGHT = 1400, 1800
CHROMIUM = "/usr/bin/chromium"


def main(qa: Path, out: Path, extra: bool = False) -> None:
    from playwright.sync_api import sync_playwright

    pages = {"scan_report": qa / "sub-02" / "anat" / "sub-02_T2w_report.html",
             "group_report": qa / "group_T2w.html"}
    if extra:  # further views, for looking at them (not committed)
        pages["montage"] = qa / "group_T2w_montage.html"
        pages["scan_report_full"] = pages["scan_report"]
        pages["group_report_full"] = pages["group_report"]
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        for name, html in pages.items():
            page.goto(html.resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(out / f"{name}.png"), full_page=name.endswith("_full"))
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), extra="--all" in sys.argv)
