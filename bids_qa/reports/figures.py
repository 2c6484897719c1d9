"""Figures for the HTML reports: slice mosaics as small PNG files and plot geometry for inline SVG.

Why PNG tiles without matplotlib: a report must add at most about one second per scan on two CPU
cores. Building a matplotlib figure per mosaic costs 100-300 ms each (and importing matplotlib
0.6 s per process); composing the mosaic as an array and encoding it once with Pillow costs a few
milliseconds.
Plots (per-slice scores, rulers) are drawn as inline SVG by the templates; this module computes their
geometry (pure functions, numbers in, coordinates out) so the HTML stays small, crisp and escaped.

Orientation: every view is taken from the canonical RAS+ array (:func:`bids_qa.volume.load_volume`)
and shown in neurological convention (subject's right on the viewer's right, anterior/superior up).

Nothing here computes a quality score; the reports only show what the pipeline wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bids_qa.io import atomic_write_bytes, png_bytes
from bids_qa.volume import otsu_threshold

if TYPE_CHECKING:  # pragma: no cover
    from bids_qa.models.flow import FittedFlow

#: Edge of one square mosaic tile in pixels.
TILE = 144
#: Edge of the thumbnail the group report links to.
THUMB = 112
#: Slices per orientation in the anatomical mosaics.
N_SLICES = 8
#: Slices shown in the background-enhanced (ghost/wrap-around) view per orientation.
N_BACKGROUND = 3
#: How many of the worst slices (per-slice scores) are drawn.
N_WORST = 3
#: Names of the three canonical slicing axes.
AXIS_NAMES = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class DisplayVolume:
    """What the figures need from a scan: normalised intensities, head mask and voxel sizes.

    ``data`` is the canonical (RAS+) image scaled so that the head's 99th percentile is 1, the
    scale :func:`bids_qa.volume.normalise` produces, so every report shows the same contrast range.
    """

    data: np.ndarray
    mask: np.ndarray
    zooms: tuple[float, float, float]


@dataclass(frozen=True)
class SliceTile:
    """One written slice image: where it lies (relative to the report) and what it shows."""

    href: str
    axis: int
    index: int
    label: str


@dataclass
class ScanFigures:
    """Paths (relative to the report's folder, POSIX) of the figures written for one scan."""

    mosaics: dict[str, str] = field(default_factory=dict)
    background: str | None = None
    worst: list[SliceTile] = field(default_factory=list)
    thumb: str | None = None


def display_volume_from(volume) -> DisplayVolume:
    """Wrap a loaded :class:`bids_qa.volume.Volume` (or anything with data/mask/zooms)."""
    return DisplayVolume(data=np.asarray(volume.data, dtype=np.float32), mask=np.asarray(volume.mask, dtype=bool),
                         zooms=tuple(float(z) for z in volume.zooms))  # type: ignore[arg-type]


def load_display_volume(path: Path) -> DisplayVolume:
    """Load a NIfTI image the way the scorers saw it (:func:`bids_qa.volume.load_volume`).

    Raises
    ------
    bids_qa.errors.ScanError
        With stage ``"load"`` when the image cannot be read.
    """
    from bids_qa.volume import load_volume

    return display_volume_from(load_volume(path))


def pick_slices(mask: np.ndarray, axis: int, n: int, lo: float = 0.12, hi: float = 0.88) -> list[int]:
    """``n`` evenly spaced slice indices along ``axis`` within the head's extent.

    The extent is the range of slices whose mask is not empty; ``lo``/``hi`` trim its ends, where
    slices hold only a sliver of scalp. Falls back to the whole axis for an empty mask.
    """
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(mask.any(axis=other))
    size = mask.shape[axis]
    first, last = (int(present[0]), int(present[-1])) if present.size else (0, size - 1)
    span = last - first
    if n <= 1:
        return [first + span // 2]
    pos = np.linspace(first + lo * span, first + hi * span, n)
    return sorted({int(round(p)) for p in pos})


def head_box(mask: np.ndarray, margin: int = 4) -> tuple[slice, slice, slice]:
    """Bounding box of the head mask with a margin; the whole image when the mask is empty."""
    boxes = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            boxes.append(slice(0, mask.shape[axis]))
        else:
            boxes.append(slice(max(0, int(present[0]) - margin), min(mask.shape[axis], int(present[-1]) + margin + 1)))
    return boxes[0], boxes[1], boxes[2]


def oriented_slice(data: np.ndarray, zooms: Sequence[float], axis: int, index: int) -> tuple[np.ndarray, float, float]:
    """Slice ``index`` along ``axis`` as a display array (rows top to bottom) and its pixel sizes.

    Returns ``(image, row_mm, col_mm)``. For a RAS+ array the remaining axes (a, b) become columns
    (a, increasing to the right) and rows (b, increasing upwards), i.e. neurological convention.
    """
    plane = data[(slice(None),) * axis + (int(index),)]  # a view: np.take would copy via the whole array
    a, b = (ax for ax in range(3) if ax != axis)
    return plane.T[::-1, :], float(zooms[b]), float(zooms[a])


def to_square_tile(image: np.ndarray, row_mm: float, col_mm: float, size: int) -> np.ndarray:
    """Resize a 2D image to its physical aspect ratio inside a ``size`` x ``size`` square (padded).

    Keeping millimetres square matters for 2D acquisitions (e.g. 0.7 x 0.7 x 4 mm): without it a
    coronal view of such a scan would be squashed four times.
    """
    from PIL import Image

    rows, cols = image.shape
    height_mm, width_mm = rows * row_mm, cols * col_mm
    scale = size / max(height_mm, width_mm, 1e-6)
    h = max(1, min(size, int(round(height_mm * scale))))
    w = max(1, min(size, int(round(width_mm * scale))))
    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F").resize(
        (w, h), Image.Resampling.BILINEAR)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - h) // 2, (size - w) // 2
    out[top:top + h, left:left + w] = np.asarray(resized)
    return out


def tile_grid(tiles: Sequence[np.ndarray], cols: int, gap: int = 2) -> np.ndarray:
    """Arrange equal square tiles in rows of ``cols`` with a ``gap`` of background between them."""
    if not tiles:
        raise ValueError("tile_grid needs at least one tile")
    size = tiles[0].shape[0]
    cols = max(1, min(cols, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    out = np.zeros((rows * size + (rows - 1) * gap, cols * size + (cols - 1) * gap), dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = tile
    return out


def background_range(data: np.ndarray, mask: np.ndarray) -> float:
    """Upper display limit that spreads the air (outside-head) intensities over the grey scale.

    Three times the median non-zero background intensity puts the noise floor mid-scale (for
    Rayleigh noise the median is about 1.18 sigma), so anything brighter than noise - ghosts,
    wrap-around, spikes - saturates and stands out. Exact zeros (defaced or zero-filled air) are
    left out of the median, or they would hide the noise that remains. Bounded to [0.01, 0.3] of the head's 99th percentile so a
    zero-filled (masked, skull-stripped) background or a very noisy one still gives a usable view.
    """
    step = max(1, int(round((data.size / 2e6) ** (1 / 3))))
    sub = data[::step, ::step, ::step]
    bg = sub[~mask[::step, ::step, ::step]]
    if bg.size == 0:
        bg = sub[sub <= otsu_threshold(sub.ravel())]
    bg = bg[bg > 0]  # zero-filled regions (defacing, masking, padding) are not noise
    median = float(np.median(bg)) if bg.size else 0.0
    return float(np.clip(3.0 * median, 0.01, 0.3))


def gray_png(image: np.ndarray, vmax: float = 1.0) -> bytes:
    """Grey PNG of ``image`` with [0, ``vmax``] mapped to black..white."""
    arr = np.clip(image / vmax, 0.0, 1.0)
    return png_bytes((arr * 255 + 0.5).astype(np.uint8))


#: Anchor colours of a magma-like perceptual map (black -> purple -> orange -> pale yellow); linear
#: interpolation between them is close enough for a background view and spares importing
#: matplotlib (about 0.6 s per process) for one colour map.
_MAGMA_ANCHORS = np.array([(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
                           (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191)], dtype=float)


def colour_lut(anchors: np.ndarray = _MAGMA_ANCHORS, n: int = 256) -> np.ndarray:
    """An (n, 3) uint8 lookup table interpolating ``anchors`` evenly over [0, 1]."""
    pos = np.linspace(0.0, 1.0, len(anchors))
    x = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(x, pos, anchors[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def colour_png(image: np.ndarray, vmax: float) -> bytes:
    """Colour-mapped PNG with a square-root gamma (makes faint structure in the noise visible)."""
    lut = colour_lut()
    idx = (np.sqrt(np.clip(image / vmax, 0.0, 1.0)) * 255 + 0.5).astype(np.uint8)
    return png_bytes(lut[idx])


def write_scan_figures(vol: DisplayVolume, fig_dir: Path, rel_dir: str, slice_axis: int,
                       worst: Sequence[tuple[int, str]] = (), worst_axis: int | None = None) -> ScanFigures:
    """Write the mosaics, the background view, the worst slices and the thumbnail of one scan.

    Parameters
    ----------
    vol
        The scan as the scorers saw it.
    fig_dir
        Folder to write into (created; existing files of the same names are replaced).
    rel_dir
        ``fig_dir`` as the report links to it (POSIX, relative to the report, already URL-quoted).
    slice_axis
        Acquisition axis; the background view and the thumbnail use this plane first.
    worst
        ``(slice index, caption)`` of the slices to show from the per-slice scores.
    worst_axis
        Axis those indices run along (default ``slice_axis``).

    Returns
    -------
    ScanFigures
        Relative hrefs of what was written.
    """
    fig_dir.mkdir(parents=True, exist_ok=True)
    data, mask, zooms = vol.data, vol.mask, vol.zooms
    figs = ScanFigures()

    box = head_box(mask)
    cropped, cmask = data[box], mask[box]
    for axis in (2, 1, 0):
        tiles = [to_square_tile(*oriented_slice(cropped, zooms, axis, k), TILE)
                 for k in pick_slices(cmask, axis, N_SLICES)]
        name = AXIS_NAMES[axis]
        atomic_write_bytes(fig_dir / f"{name}.png", gray_png(tile_grid(tiles, cols=4)))
        figs.mosaics[name] = f"{rel_dir}/{name}.png"

    # Background-enhanced view: full field of view (wrap-around lies at its edges), acquisition
    # plane first, then the two other planes.
    vmax = background_range(data, mask)
    order = [slice_axis] + [a for a in (2, 1, 0) if a != slice_axis]
    tiles = [to_square_tile(*oriented_slice(data, zooms, axis, k), TILE)
             for axis in order for k in pick_slices(mask, axis, N_BACKGROUND, 0.25, 0.75)]
    atomic_write_bytes(
        fig_dir / "background.png", colour_png(tile_grid(tiles, cols=N_BACKGROUND), vmax)
    )
    figs.background = f"{rel_dir}/background.png"

    axis_w = slice_axis if worst_axis is None else worst_axis
    for rank, (index, caption) in enumerate(worst[:N_WORST]):
        if not 0 <= index < data.shape[axis_w]:
            continue
        tile = to_square_tile(*oriented_slice(data, zooms, axis_w, int(index)), 2 * TILE)
        name = f"worst_{rank + 1}.png"
        atomic_write_bytes(fig_dir / name, gray_png(tile))
        figs.worst.append(SliceTile(f"{rel_dir}/{name}", axis_w, int(index), caption))

    mid = pick_slices(cmask, slice_axis, 1)[0]
    thumb = to_square_tile(*oriented_slice(cropped, zooms, slice_axis, mid), THUMB)
    atomic_write_bytes(fig_dir / "thumb.png", gray_png(thumb))
    figs.thumb = f"{rel_dir}/thumb.png"
    return figs


# ---------------------------------------------------------------------------------------------
# Plot geometry for inline SVG (pure)
# ---------------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def padded_range(values: Sequence[float], pad: float = 0.06) -> tuple[float, float]:
    """[min, max] of the finite values widened by ``pad`` of the span (so no mark touches an edge)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi == lo:
        width = abs(lo) * 0.1 or 1.0
        return lo - width, hi + width
    span = hi - lo
    return lo - pad * span, hi + pad * span


@dataclass(frozen=True)
class SlicePlot:
    """Geometry of one per-slice score panel (SVG user units)."""

    name: str
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    segments: list[str]
    yticks: list[tuple[float, str]]
    xticks: list[tuple[float, str]]
    threshold: tuple[float, str] | None
    marks: list[dict]
    direction: str
    n_values: int


def slice_plot(name: str, index: np.ndarray, values: np.ndarray, threshold: float | None = None,
               worst: Sequence[int] = (), direction: str = "higher_is_worse",
               width: int = 640, height: int = 150) -> SlicePlot:
    """Geometry of a line plot of one per-slice score against slice index.

    Non-finite values break the line (a slice without a score is not drawn as zero). The y range
    includes the threshold, so the line it is compared with is always visible.
    """
    left, right, top, bottom = 52, 12, 10, 26
    pw, ph = width - left - right, height - top - bottom
    index = np.asarray(index, dtype=float)
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values) & np.isfinite(index)
    y_lo, y_hi = padded_range(list(values[finite]) + ([threshold] if threshold is not None else []))
    x_lo, x_hi = (float(index[finite].min()), float(index[finite].max())) if finite.any() else (0.0, 1.0)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * ph

    segments: list[str] = []
    current: list[str] = []
    for x, y, ok in zip(index, values, finite, strict=True):
        if ok:
            current.append(f"{sx(x):.1f},{sy(y):.1f}")
        elif current:
            segments.append(" ".join(current))
            current = []
    if current:
        segments.append(" ".join(current))

    lookup = {int(i): float(v) for i, v, ok in zip(index, values, finite, strict=True) if ok}
    marks = [{"x": round(sx(i), 1), "y": round(sy(lookup[i]), 1), "slice": int(i), "value": lookup[i]}
             for i in worst if i in lookup]
    yt = [(round(sy(t), 1), f"{t:g}") for t in nice_ticks(y_lo, y_hi, 4) if y_lo <= t <= y_hi]
    xt = [(round(sx(t), 1), f"{int(t)}") for t in nice_ticks(x_lo, x_hi, 8) if x_lo <= t <= x_hi and float(t).is_integer()]
    thr = (round(sy(threshold), 1), f"{threshold:g}") if threshold is not None and math.isfinite(threshold) else None
    return SlicePlot(name=name, width=width, height=height, left=left, top=top, plot_w=pw, plot_h=ph,
                     segments=segments, yticks=yt, xticks=xt, threshold=thr, marks=marks,
                     direction=direction, n_values=int(finite.sum()))


def worst_slices(index: np.ndarray, values: np.ndarray, direction: str = "higher_is_worse",
                 n: int = N_WORST) -> list[int]:
    """Slice indices of the ``n`` worst finite values (highest unless ``lower_is_worse``)."""
    index = np.asarray(index)
    values = np.asarray(values, dtype=float)
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 0:
        return []
    order = ok[np.argsort(values[ok], kind="stable")]
    if direction != "lower_is_worse":
        order = order[::-1]
    return [int(index[i]) for i in order[:n]]


@dataclass(frozen=True)
class RulerScale:
    """Geometry of a ruler's number line: level ticks, threshold and this scan's value."""

    width: int
    height: int
    axis_y: int
    levels: list[dict]
    threshold: dict | None
    scan: dict | None
    ticks: list[tuple[float, str]]
    nearest: int | None


def ruler_scale(level_scores: Sequence[float], threshold: float | None, scan_value: float | None,
                width: int = 640, height: int = 84) -> RulerScale:
    """Place the ruler levels' model outputs, the threshold and the scan's value on one axis.

    ``nearest`` is the level whose model output is closest to the scan's value: the image-ruler paper's ruler
    position ("this scan looks like ruler image k"), shown to orient the reader, not as a new score.
    """
    margin = 24
    values = [float(s) for s in level_scores] + [v for v in (threshold, scan_value) if v is not None]
    lo, hi = padded_range(values, 0.04)

    def sx(v: float) -> float:
        return round(margin + (v - lo) / (hi - lo) * (width - 2 * margin), 1)

    axis_y = height - 26
    levels = [{"x": sx(float(s)), "n": i + 1, "score": float(s)} for i, s in enumerate(level_scores)
              if math.isfinite(float(s))]
    # Level numbers sit above the axis in up to three rows, so numbers of close levels never
    # print on top of each other (a row takes a number only 12 px clear of its last one).
    last: list[float] = []
    for lv in sorted(levels, key=lambda d: d["x"]):
        row = next((r for r, x in enumerate(last) if lv["x"] - x >= 12), None)
        if row is None and len(last) < 3:
            last.append(lv["x"])
            row = len(last) - 1
        elif row is None:
            row = int(np.argmin(last))
        last[row] = lv["x"]
        lv["label_y"] = axis_y - 8 - 12 * row
    nearest = None
    scan = None
    if scan_value is not None and math.isfinite(scan_value):
        scan = {"x": sx(scan_value), "value": scan_value}
        finite = [(abs(float(s) - scan_value), i) for i, s in enumerate(level_scores) if math.isfinite(float(s))]
        if finite:
            nearest = min(finite)[1]
    thr = {"x": sx(threshold), "value": threshold} if threshold is not None and math.isfinite(threshold) else None
    ticks = [(sx(t), f"{t:g}") for t in nice_ticks(lo, hi, 6) if lo <= t <= hi]
    return RulerScale(width=width, height=height, axis_y=axis_y, levels=levels, threshold=thr, scan=scan,
                      ticks=ticks, nearest=nearest)


# ---------------------------------------------------------------------------------------------
# The flow model's m-plane (Zuo et al.)
# ---------------------------------------------------------------------------------------------


def m_plane_png(m: np.ndarray, labels, flow_or_density: FittedFlow | Callable[[np.ndarray], np.ndarray],
                title: str | None = None, reference_m: np.ndarray | None = None) -> bytes:
    """Scatter of volume ``m`` values over the density's contours (Zuo et al. Fig. 3b / 4a).

    Parameters
    ----------
    m
        Points to show, (n, 2).
    labels
        One label per point (strings; one colour per distinct label).
    flow_or_density
        A :class:`FittedFlow` (its 5% and 3% levels are drawn as dashed contours) or any callable
        returning log densities for an (k, 2) array.
    reference_m
        Optional population points drawn small and grey (e.g. the flow's own population).

    Returns
    -------
    bytes
        The PNG file's content.
    """
    import io

    import matplotlib

    from bids_qa.models.flow import LEVELS, FittedFlow

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.atleast_2d(np.asarray(m, dtype=np.float64))
    labels = [str(x) for x in labels]
    if len(labels) != len(m):
        raise ValueError(f"{len(labels)} labels for {len(m)} points")
    density = flow_or_density.log_density if isinstance(flow_or_density, FittedFlow) else flow_or_density
    pts = m if reference_m is None else np.vstack([m, reference_m])
    lo, hi = pts.min(0), pts.max(0)
    pad = 0.15 * np.maximum(hi - lo, 1e-3)
    gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 160)
    gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 160)
    xx, yy = np.meshgrid(gx, gy)
    ld = np.asarray(density(np.column_stack([xx.ravel(), yy.ravel()]))).reshape(xx.shape)
    floor = np.percentile(ld, 2)
    fig, ax = plt.subplots(figsize=(6.4, 5.2), dpi=110)
    cs = ax.contourf(xx, yy, np.maximum(ld, floor), levels=14, cmap="Blues")
    fig.colorbar(cs, ax=ax, label="log density  log p(m)")
    if isinstance(flow_or_density, FittedFlow):
        levels = sorted((flow_or_density.level(p), p) for p in LEVELS)
        styles = {5.0: "--", 3.0: ":"}
        for value, p in levels:
            if ld.min() < value < ld.max():
                c = ax.contour(xx, yy, ld, levels=[value], colors="k", linestyles=styles.get(p, "--"), linewidths=1.2)
                ax.clabel(c, fmt={value: f"{p:g}%"}, fontsize=8)
    if reference_m is not None:
        ax.scatter(reference_m[:, 0], reference_m[:, 1], s=6, c="0.45", alpha=0.5, label="reference")
    cmap = plt.get_cmap("tab10")
    for i, lab in enumerate(dict.fromkeys(labels)):
        sel = np.array([x == lab for x in labels])
        ax.scatter(m[sel, 0], m[sel, 1], s=28, color=cmap(i % 10), edgecolors="k", linewidths=0.4, label=lab)
    ax.set_xlabel("m1")
    ax.set_ylabel("m2")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_m_plane(m: np.ndarray, labels, flow_or_density: FittedFlow | Callable[[np.ndarray], np.ndarray],
                 path: str | Path, title: str | None = None, reference_m: np.ndarray | None = None) -> Path:
    """Write :func:`m_plane_png` to ``path`` (atomically); returns ``path``."""
    return atomic_write_bytes(path, m_plane_png(m, labels, flow_or_density, title, reference_m))
