"""HTML reports: one page per scan (participant level) and one per contrast (group level).

Reports read derivatives (and, for the slice images, the scan itself); they never compute scores.
Both pages are self-contained: CSS and JavaScript inline, figures as PNG files next to the page,
no network request of any kind. See ``docs/reports.md`` for what each section shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bids_qa.errors import ScanError
from bids_qa.io import atomic_write_text
from bids_qa.reports import figures as _figures
from bids_qa.reports import group_page as _group_page
from bids_qa.reports import render as _render

__all__ = ["render_scan_report", "render_group_report"]


def render_scan_report(out_dir: Path, outputs_json: Path, image_path: Path | None, *,
                       volume: Any | None = None) -> Path:
    """Write ``<stem>_report.html`` (and ``<stem>_figures/``) next to a scan's ``<stem>_qa.json``.

    ``<stem>`` is the output file stem (the scan id made file-system safe by the pipeline); the
    page shows the scan id stored in the ``_qa.json``.

    Parameters
    ----------
    out_dir
        The derivatives root (``OUTPUT_DIR``); keys the browser storage of the ratings.
    outputs_json
        The scan's ``<scan_id>_qa.json``; its ``_qa.tsv`` and ``_slices.tsv`` are read from the
        same folder.
    image_path
        The scan's NIfTI, for the slice gallery. ``None`` (e.g. the scan failed to load) gives a
        report without images.
    volume
        Optional already loaded :class:`bids_qa.volume.Volume` of the scan; when given the image is
        not read again (saves the load time inside the pipeline).

    Returns
    -------
    Path
        The written HTML file.

    Raises
    ------
    ScanError
        Stage ``"report"`` when the derivatives cannot be read or the page cannot be rendered. An
        unreadable image is not an error: the report says why it has no pictures.
    """
    out_dir = Path(out_dir)
    outputs_json = Path(outputs_json)
    ctx = _render.scan_context(out_dir, outputs_json)
    stem, folder = ctx["stem"], ctx["folder"]
    note = None
    vol = None
    if volume is not None:
        vol = _figures.display_volume_from(volume)
    elif image_path is not None:
        try:
            vol = _figures.load_display_volume(Path(image_path))
        except ScanError as err:
            note = f"No slice images: the image could not be read ({err.message})."
    else:
        note = "No slice images: no image was given for this scan."
    if vol is not None:
        fig_name = f"{stem}_figures"
        try:
            ctx["figures"] = _figures.write_scan_figures(
                vol, folder / fig_name, _render.href(fig_name), ctx["slice_axis"],
                worst=ctx["worst"], worst_axis=ctx["worst_axis"])
        except (OSError, ValueError) as err:
            note = f"No slice images: drawing them failed ({type(err).__name__}: {err})."
    if note:
        ctx["notes"].append(note)
    out = folder / f"{stem}_report.html"
    try:
        atomic_write_text(out, _render.render_page("scan.html", ctx))
    except OSError as err:
        raise ScanError("report", f"cannot write {out}: {err}") from err
    return out


def render_group_report(out_dir: Path, suffix: str) -> Path:
    """Write ``group_<suffix>.html`` in ``out_dir`` from ``group_<suffix>.tsv`` (and ``.json``).

    Reads only the group table and its sidecar (plus which report and thumbnail files exist, so
    that every link on the page resolves); never the images or the per-scan scores.

    Raises
    ------
    ScanError
        Stage ``"report"`` when the group table is missing or unreadable.
    """
    out_dir = Path(out_dir)
    ctx = _group_page.group_context(out_dir, suffix)
    out = ctx["html_path"]
    try:
        atomic_write_text(out, _render.render_page("group.html", ctx))
    except OSError as err:
        raise ScanError("report", f"cannot write {out}: {err}") from err
    return out
