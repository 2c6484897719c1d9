"""Load a structural scan once and serve every view the scorers ask for.

A :class:`Volume` holds the canonical (RAS+) float32 image, its robustly normalised copy, a head
mask and the header facts (voxel sizes, acquisition plane). Slice stacks and resampled 3D grids are
computed on first request and cached, so all scorers share one load ("one load, many views").

Normalisation (why): raw intensities differ by orders of magnitude between scanners, and min-max
scaling is ruined by one hot voxel. We map the 0.5th percentile of the whole image to 0 and the
99th percentile *inside the head mask* to 1, then clip to [0, 2]. Simulated noise levels in
:mod:`bids_qa.artifacts` are expressed on this scale.

Acquisition plane (why): most clinical scans are 2D multi-slice (e.g. 0.7x0.7x4 mm). Their slices
are sharp in the acquisition plane and blurry across it by design. Scorers therefore read slices in
the plane spanned by the two smallest voxel sizes; isotropic volumes are read axially. The
resolution itself is reported as its own metric (see :class:`bids_qa.iqms.HeaderScorer`).
"""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bids_qa.errors import ScanError
from bids_qa.morphology import open_cross

T = TypeVar("T")

#: Refuse headers that would need more voxels than this (about 2 GB as float32) before allocating.
MAX_VOXELS = 400_000_000
#: Voxel sizes (mm) outside this range are refused as a corrupt header: nothing scanned in a
#: clinical or research MRI has voxels under 10 micrometres or over 5 cm.
VOXEL_MM_RANGE = (0.01, 50.0)
#: Largest field of view (mm) along any axis; a whole-spine scan spans about 1 m.
MAX_FOV_MM = 2000.0
#: Voxel-size ratio above which a volume is treated as a 2D (thick-slice) acquisition.
ANISOTROPY_2D_RATIO = 1.5
#: Output range of the normalised image.
NORM_CLIP = (0.0, 2.0)


@dataclass
class Volume:
    """A loaded, validated, canonically oriented 3D scan with cached derived views.

    Attributes
    ----------
    raw
        Canonical-orientation float32 intensities as stored (scaled by the header slope); for a
        loaded file a strided view of the stored array (reoriented without a copy).
    data
        Robustly normalised copy of ``raw`` (0.5th percentile -> 0, head 99th percentile -> 1,
        clipped to [0, 2]), in the file's memory order (Fortran order for NIfTI; axes canonical).
        Views accept any memory order and give the same arrays as for a C-ordered copy.
    mask
        Boolean head (foreground) mask from Otsu's threshold on the normalised image.
    zooms
        Voxel sizes in mm along the canonical axes (R, A, S).
    affine
        The canonical affine.
    slice_axis
        Axis (0, 1 or 2) along which scorers take 2D slices: the acquisition (thickest) axis of a
        2D acquisition, else 2 (axial).
    warnings
        Non-fatal problems found while loading (e.g. a few non-finite voxels set to 0).
    """

    raw: np.ndarray
    data: np.ndarray
    mask: np.ndarray
    zooms: tuple[float, float, float]
    affine: np.ndarray
    slice_axis: int
    warnings: list[str] = field(default_factory=list)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None  # a lock cannot be pickled; each copy gets its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def anisotropy(self) -> float:
        """Largest over smallest voxel size (1 for isotropic volumes)."""
        return float(max(self.zooms) / min(self.zooms))

    @property
    def is_2d_acquisition(self) -> bool:
        return self.anisotropy > ANISOTROPY_2D_RATIO

    def view(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        """The derived array ``key`` of this volume: ``compute()`` on first request, then cached.

        Every resampled view (slice stacks, cubes) and every scorer's prepared input lives here, so
        a view made in a loader thread is found by the inference thread, scorers asking for the
        same key share one copy, and all of it is freed with the volume. Keys are tuples that
        start with a view name. Thread-safe: a view asked for by two threads at once is computed
        once (the volume's re-entrant lock; a view may build on other views).
        """
        if key in self._cache:
            return self._cache[key]
        with self._lock:
            if key not in self._cache:
                self._cache[key] = compute()
            return self._cache[key]

    def slice_stack(self, size: int, axis: int | None = None, pixel_mm: float = 0.0) -> np.ndarray:
        """Slices along ``axis`` (default: :attr:`slice_axis`), each padded to a square field of
        view in mm and resized to ``size`` x ``size``; float32 array of shape (n, size, size).
        ``pixel_mm > 0`` gives :meth:`spacing_stack` instead (the one place scorers choose)."""
        if pixel_mm > 0:
            return self.spacing_stack(size, pixel_mm, axis)
        axis = self.slice_axis if axis is None else axis
        return self.view(
            ("slices", size, axis), lambda: slices_to_square(self.data, self.zooms, axis, size)
        )

    def spacing_stack(self, size: int, pixel_mm: float, axis: int | None = None) -> np.ndarray:
        """Slices along ``axis`` at a fixed pixel spacing, cut to ``size`` x ``size`` around each
        slice's head (:func:`slices_at_spacing`); float32 array of shape (n, size, size)."""
        axis = self.slice_axis if axis is None else axis
        return self.view(
            ("spacing_slices", size, float(pixel_mm), axis),
            lambda: slices_at_spacing(self.data, self.mask, self.zooms, axis, size, pixel_mm),
        )

    def cube(self, size: int, voxel_mm: float = 0.0) -> np.ndarray:
        """A ``size``^3 cube (:func:`resample_to_cube`): ``voxel_mm`` voxels around the head, or
        with ``voxel_mm = 0`` the whole field of view; the one place 3D scorers
        choose their view."""
        key = ("cube", size, float(voxel_mm)) if voxel_mm > 0 else ("grid", size)
        return self.view(
            key, lambda: resample_to_cube(self.data, self.mask, self.zooms, size, voxel_mm)
        )

    def anatomy_slices(self, axis: int | None = None, min_fraction: float = 0.02) -> np.ndarray:
        """Indices of slices along ``axis`` whose head mask covers at least ``min_fraction``."""
        axis = self.slice_axis if axis is None else axis
        other = tuple(a for a in range(3) if a != axis)
        cover = self.mask.mean(axis=other)
        return np.flatnonzero(cover >= min_fraction)


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of a 1D sample.

    References
    ----------
    Otsu N. A threshold selection method from gray-level histograms. IEEE Trans SMC 1979.
    doi:10.1109/TSMC.1979.4310076
    """
    hist, edges = np.histogram(values, bins=bins)
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


def head_mask(data: np.ndarray) -> np.ndarray:
    """Foreground mask: Otsu threshold, then a morphological opening on a 2x-subsampled grid.

    Good enough for intensity normalisation and for finding anatomy-bearing slices (air vs head);
    it is not a brain mask. The opening (which removes isolated noise speckles in the air) runs on
    the subsampled grid because at full resolution it dominated the load time. ``data`` may be any
    strided view (e.g. the lazily reoriented array of :func:`load_volume`); the result is a
    boolean array of ``data.shape`` in ``data``'s memory order (:func:`upsample_mask`).
    """

    sample = data[:: max(1, data.shape[0] // 64), :: max(1, data.shape[1] // 64), :: max(1, data.shape[2] // 64)]
    thr = otsu_threshold(sample.ravel())
    coarse = data[::2, ::2, ::2] > thr
    # The output keeps the input's memory order, so the upsampling below copies without a transpose.
    small = open_cross(coarse)
    return upsample_mask(small, data)


def upsample_mask(small: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``small`` (a mask on every second voxel) repeated 2x along each axis and cut to the shape
    of ``like``, in ``like``'s memory order: one write of the full-size mask (eight strided
    assignments) instead of three growing copies."""
    mask = np.empty_like(like, dtype=bool, order="K")
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                part = mask[i::2, j::2, k::2]
                part[...] = small[: part.shape[0], : part.shape[1], : part.shape[2]]
    return mask


#: Bytes of output written per step of the fused normalisation pass (fits in a core's L2 cache).
_NORMALISE_CHUNK_BYTES = 1 << 18


def normalisation_range(raw: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(lo, hi) of :func:`normalise`: the 0.5th percentile of the image and the 99th inside the
    head mask, both on a strided subsample of about 2 million voxels (every ``step``-th voxel per
    axis; a 256 x 256 x 176 volume is read at step 2). Why a subsample: the exact percentiles need
    a full partition of the volume, the subsample's differ from them by well under 1 % of the range
    (docs/performance.md gives the measured tolerance), and the shipped models were trained on it.
    Raises :class:`ScanError` for an image without range (constant)."""
    step = max(1, int(np.ceil((raw.size / 2e6) ** (1 / 3))))
    sub = np.ascontiguousarray(raw[::step, ::step, ::step])
    lo = float(np.percentile(sub, 0.5))
    fg = sub[mask[::step, ::step, ::step]]
    hi = float(np.percentile(fg, 99)) if fg.size > 10 else float(np.percentile(sub, 99.5))
    if not hi > lo:
        hi = float(sub.max())
    if not hi > lo:
        raise ScanError("load", "image is constant (every voxel has the same value); nothing to assess")
    return lo, hi


def normalise(raw: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Robust intensity normalisation and the head mask it was computed with.

    Returns the normalised float32 image (0.5th percentile -> 0, 99th percentile in the head -> 1,
    clipped to :data:`NORM_CLIP`; :func:`normalisation_range`) and the boolean mask. ``raw`` may be
    any strided view: the output is written in ``raw``'s memory order (Fortran order for a NIfTI
    file, whatever the orientation) in one pass, slab by slab (copy, shift, scale and clip while
    the slab is in cache), so it is the only whole-volume array made here.
    """
    if mask is None:
        mask = head_mask(raw)
    lo, hi = normalisation_range(raw, mask)
    # Same memory order as ``raw`` (a NIfTI file's is Fortran order): no transposition, and slabs
    # along the outermost axis in memory are contiguous on both sides.
    out = np.empty_like(raw, dtype=np.float32, order="K")
    shift, scale = np.float32(lo), np.float32(1.0 / (hi - lo))
    axis = int(np.argmax(np.abs(out.strides))) if out.ndim else 0
    plane = max(1, out.size // max(1, out.shape[axis]) * 4)
    rows = max(1, _NORMALISE_CHUNK_BYTES // plane)
    index: list[Any] = [slice(None)] * out.ndim
    for start in range(0, out.shape[axis], rows):
        index[axis] = slice(start, start + rows)
        part = out[tuple(index)]
        np.copyto(part, raw[tuple(index)], casting="unsafe")
        part -= shift
        part *= scale
        np.clip(part, *NORM_CLIP, out=part)
    return out, mask


def canonical_view(img: Any, data: np.ndarray) -> tuple[np.ndarray, Any]:
    """``data`` (the voxels of ``img`` in stored order) as a view in the closest canonical (RAS+)
    orientation, and the canonical image header/affine holder.

    Same result as ``nibabel.as_closest_canonical`` (orientation from ``io_orientation`` of the
    affine, the affine and header updated the same way), but the voxels are only transposed and
    flipped as a strided view, never copied: :func:`normalise` reads the view once and writes the
    normalised image in the file's memory order (canonical axes, no transposition pass).
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(img.affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return data, img
    view = apply_orientation(data, ornt)
    affine = img.affine.dot(inv_ornt_aff(ornt, data.shape))
    # The canonical image is built around the view (no copy) only to get nibabel's header update.
    canonical = img.__class__(view, affine, img.header)
    if isinstance(canonical, (nib.Nifti1Image, nib.Nifti2Image)):
        dims = [None if d is None else int(ornt[d, 0]) for d in img.header.get_dim_info()]
        canonical.header.set_dim_info(*dims)
    return view, canonical


def load_volume(path: str | Path, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read a NIfTI file into a validated, canonical, normalised :class:`Volume`.

    Raises
    ------
    ScanError
        With stage ``"load"`` for anything that makes the file unusable: unreadable or not NIfTI,
        zero bytes, truncated, 2D, 4D with more than one volume, absurd dimensions (refused before
        any memory is allocated), all non-finite, constant.
    """
    import nibabel as nib

    path = Path(path)
    warnings: list[str] = []
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ScanError("load", _unreadable_message(path, err)) from err
    if size == 0:
        raise ScanError("load", f"{path.name} is an empty (zero-byte) file")
    try:
        if _gz_name_without_gzip(path):
            img = _load_uncompressed(path)
            warnings.append(
                f"{path.name} is named .nii.gz but is not gzip-compressed; read as a plain .nii"
            )
        else:
            img = nib.load(str(path))
    except ScanError:
        raise
    except Exception as err:  # nibabel raises several types for bad files
        raise ScanError("load", f"{path.name} is not a readable NIfTI image ({type(err).__name__}: {err})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanError("load", f"{path.name} is a {type(img).__name__}, not NIfTI")

    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3 or (len(shape) == 3 and min(shape) < 2):
        raise ScanError("load", f"{path.name} has shape {shape}: a 3D volume is needed, this is 2D")
    if len(shape) > 3:
        extra = int(np.prod(shape[3:]))
        if extra != 1:
            raise ScanError(
                "load",
                f"{path.name} has shape {shape}: a 4D series of {extra} volumes; structural QA needs "
                "one 3D volume (split it, e.g. with fslsplit, and run on the volume you want assessed)",
            )
    if any(s <= 0 for s in shape[:3]) or int(np.prod(shape[:3])) > max_voxels:
        raise ScanError(
            "load",
            f"{path.name} declares dimensions {shape[:3]} ({int(np.prod(shape[:3])):,} voxels), over the "
            f"limit of {max_voxels:,}; refusing to allocate it (corrupt header?)",
        )
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        warnings.append(f"invalid voxel sizes {zooms} in header; assuming 1 mm")
        zooms = (1.0, 1.0, 1.0)
    check_geometry(path.name, shape[:3], zooms, max_voxels)  # type: ignore[arg-type]
    if len(shape) > 3:
        img = img.slicer[..., 0] if len(shape) == 4 else nib.Nifti1Image(
            np.asanyarray(img.dataobj).reshape(shape[:3]), img.affine, img.header
        )

    try:
        stored = np.asanyarray(img.dataobj, dtype=np.float32)
    except Exception as err:
        raise ScanError("load", f"{path.name}: could not read the voxel data ({type(err).__name__}: {err})") from err
    always_finite = _always_finite(img)
    raw, img = canonical_view(img, stored.reshape(stored.shape[:3]))

    if not always_finite:
        finite = np.isfinite(raw)
        if not finite.all():
            n_bad = int(raw.size - finite.sum())
            if n_bad > 0.5 * raw.size:
                raise ScanError("load", f"{path.name}: {n_bad:,} of {raw.size:,} voxels are NaN or Inf; no usable image")
            raw[~finite] = 0.0
            warnings.append(f"{n_bad:,} NaN/Inf voxels set to 0")
        del finite

    # canonical reorientation permutes the axes: the voxel sizes follow
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) if all(
        np.isfinite(z) and z > 0 for z in img.header.get_zooms()[:3]
    ) else (1.0, 1.0, 1.0)
    try:
        data, mask = normalise(raw)
    except ScanError:
        # The subsample saw one value; say so with the full image's range when it has none.
        if float(raw.max()) == float(raw.min()):
            raise ScanError("load", f"{path.name}: image is constant (every voxel is {float(raw.min()):g}); nothing to assess") from None
        raise
    ratio = max(zooms) / min(zooms)
    slice_axis = int(np.argmax(zooms)) if ratio > ANISOTROPY_2D_RATIO else 2
    return Volume(raw=raw, data=data, mask=mask, zooms=zooms, affine=img.affine,  # type: ignore[arg-type]
                  slice_axis=slice_axis, warnings=warnings)


def _always_finite(img: Any) -> bool:
    """Whether every voxel read from ``img`` is finite without looking: integer storage with a
    finite scale factor (most scanner output) cannot hold NaN or Inf, so the check pass is skipped."""
    if img.get_data_dtype().kind not in "iub":
        return False
    slope, inter = img.header.get_slope_inter()
    return all(v is None or np.isfinite(v) for v in (slope, inter))


def _unreadable_message(path: Path, err: OSError) -> str:
    """Why a file cannot be opened, with what to do for broken symbolic links."""
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if getattr(err, "errno", None) == errno.ELOOP:
            return f"{path.name} is a symbolic link that loops back on itself ({target})"
        return (
            f"{path.name} is a symbolic link whose target is missing ({target}); in a DataLad "
            f"dataset, `datalad get {path.name}` fetches the file"
        )
    return f"cannot read {path.name}: {err}"


def _gz_name_without_gzip(path: Path) -> bool:
    """Whether a ``.gz`` file lacks the gzip magic bytes (a plain NIfTI misnamed ``.nii.gz``)."""
    if not path.name.lower().endswith(".gz"):
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(2) != b"\x1f\x8b"
    except OSError:
        return False


def _load_uncompressed(path: Path) -> Any:
    """A plain NIfTI-1/2 image from a file whose name says gzip (header checked before data)."""
    import nibabel as nib

    with path.open("rb") as handle:
        head = handle.read(540)
    nifti1 = len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00")
    nifti2 = len(head) >= 540 and head[4:8] == b"n+2\x00"
    if not (nifti1 or nifti2):
        raise ScanError(
            "load",
            f"{path.name} is not a readable NIfTI image (named .nii.gz, but neither gzip-compressed "
            "nor starting with a NIfTI header)",
        )
    kind = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    header = kind.header_class.from_fileobj(io.BytesIO(head))
    shape = tuple(int(s) for s in header.get_data_shape())
    if len(shape) >= 3 and int(np.prod(shape[:3])) > MAX_VOXELS:
        raise ScanError(
            "load",
            f"{path.name} declares dimensions {shape[:3]}, over the limit of {MAX_VOXELS:,} voxels; "
            "refusing to allocate it (corrupt header?)",
        )
    return kind.from_bytes(path.read_bytes())


def check_geometry(
    name: str, shape: tuple[int, int, int], zooms: tuple[float, float, float], max_voxels: int = MAX_VOXELS
) -> None:
    """Refuse voxel sizes, fields of view and resampled grids no real scan has, before any
    allocation (a corrupt header must give an error row, not a 20 TB allocation).

    The resampled grid is the largest square-slice stack the slice models build (each slice
    padded to a square field of view at its own pixel size, :func:`slices_to_square`).

    Raises
    ------
    ScanError
        Stage ``"load"``, with the offending values.
    """
    lo, hi = VOXEL_MM_RANGE
    bad = [z for z in zooms if not lo <= z <= hi]
    if bad:
        raise ScanError(
            "load",
            f"{name}: voxel sizes {tuple(round(z, 6) for z in zooms)} mm are outside {lo}-{hi} mm; "
            "refusing the image (corrupt header?)",
        )
    fov = [n * z for n, z in zip(shape, zooms, strict=True)]
    if max(fov) > MAX_FOV_MM:
        raise ScanError(
            "load",
            f"{name}: field of view {tuple(round(f, 1) for f in fov)} mm exceeds {MAX_FOV_MM:g} mm; "
            "refusing the image (corrupt header?)",
        )
    for axis in range(3):
        (h, zh), (w, zw) = [(shape[a], zooms[a]) for a in range(3) if a != axis]
        extent = max(h * zh, w * zw)
        voxels = max(h, round(extent / zh)) * max(w, round(extent / zw)) * shape[axis]
        if voxels > max_voxels:
            raise ScanError(
                "load",
                f"{name}: resampling to square slices along axis {axis} would need {voxels:,} voxels "
                f"(limit {max_voxels:,}) for voxel sizes {zooms} mm; refusing the image",
            )


def volume_from_array(data: np.ndarray, zooms: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Volume:
    """Build a :class:`Volume` from an in-memory array already in RAS+ order (tests, training)."""
    raw = np.ascontiguousarray(data, dtype=np.float32)
    norm, mask = normalise(raw)
    ratio = max(zooms) / min(zooms)
    slice_axis = int(np.argmax(zooms)) if ratio > ANISOTROPY_2D_RATIO else 2
    return Volume(raw=raw, data=norm, mask=mask, zooms=tuple(zooms), affine=np.diag([*zooms, 1.0]),
                  slice_axis=slice_axis)


def slices_to_square(data: np.ndarray, zooms: tuple[float, ...], axis: int, size: int) -> np.ndarray:
    """Every slice along ``axis``, zero-padded to a square field of view in mm, resized to size^2.

    Padding keeps the anatomy's aspect ratio and physical scale comparable between scans with
    different matrices, so one model sees the same kind of input everywhere.
    """
    import torch
    import torch.nn.functional as F

    arr = np.moveaxis(data, axis, 0)
    plane_zooms = [z for a, z in enumerate(zooms) if a != axis]
    h, w = arr.shape[1:]
    extent = max(h * plane_zooms[0], w * plane_zooms[1])
    ph = max(h, int(round(extent / plane_zooms[0])))
    pw = max(w, int(round(extent / plane_zooms[1])))
    top, left = (ph - h) // 2, (pw - w) // 2
    # The slices are copied once, straight into the zero-padded stack (not copied, then padded).
    padded = np.zeros((arr.shape[0], ph, pw), dtype=np.float32)
    padded[:, top : top + h, left : left + w] = arr
    t = torch.from_numpy(padded)[:, None]
    antialias = ph > size or pw > size
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return t[:, 0].numpy()


def slices_at_spacing(
    data: np.ndarray,
    mask: np.ndarray,
    zooms: tuple[float, ...],
    axis: int,
    size: int,
    pixel_mm: float,
) -> np.ndarray:
    """Every slice along ``axis`` resampled to ``pixel_mm`` pixels and cut to ``size`` x ``size``
    around the centre of its head mask (zero outside the image).

    Unlike :func:`slices_to_square`, which squeezes a whole field of view into ``size`` pixels
    (about 1.9 mm per pixel for a 240 mm head), this keeps a fixed physical resolution, so
    fine-scale artifacts of a 1 mm scan (in-plane anisotropy, ringing) survive the resize.
    """
    import torch
    import torch.nn.functional as F

    arr = np.moveaxis(np.asarray(data, dtype=np.float32), axis, 0)
    marr = np.moveaxis(np.asarray(mask, dtype=bool), axis, 0)
    zh, zw = [z for a, z in enumerate(zooms) if a != axis]
    n, h, w = arr.shape
    th = max(1, int(round(h * zh / pixel_mm)))
    tw = max(1, int(round(w * zw / pixel_mm)))
    t = torch.from_numpy(np.ascontiguousarray(arr))[:, None]
    antialias = th < h or tw < w
    t = F.interpolate(t, size=(th, tw), mode="bilinear", align_corners=False, antialias=antialias)
    res = t[:, 0].numpy()
    out = np.zeros((n, size, size), dtype=np.float32)
    rows_any, cols_any = marr.any(axis=2), marr.any(axis=1)
    for i in range(n):
        rows, cols = np.flatnonzero(rows_any[i]), np.flatnonzero(cols_any[i])
        if len(rows) and len(cols):
            ch = (rows[0] + rows[-1] + 1) / 2 * zh / pixel_mm
            cw = (cols[0] + cols[-1] + 1) / 2 * zw / pixel_mm
        else:
            ch, cw = th / 2, tw / 2
        top, left = int(round(ch - size / 2)), int(round(cw - size / 2))
        r0, r1 = max(0, top), min(th, top + size)
        c0, c1 = max(0, left), min(tw, left + size)
        if r1 > r0 and c1 > c0:
            out[i, r0 - top : r1 - top, c0 - left : c1 - left] = res[i, r0:r1, c0:c1]
    return out


def cube_at_spacing(
    data: np.ndarray,
    mask: np.ndarray,
    zooms: tuple[float, ...],
    size: int,
    voxel_mm: float,
) -> np.ndarray:
    """A ``size``^3 cube of ``voxel_mm`` isotropic voxels around the head mask's bounding box
    (centred left-right and front-back, from the top of the head down; trilinear, zero outside
    the image; voxels much smaller than ``voxel_mm`` are averaged first).

    :func:`volume_to_cube` squeezes the whole field of view into the cube (about 3.8 mm voxels at
    64^3 for a 240 mm field of view); a fixed voxel size keeps the brain at a resolution where
    noise texture and motion ringing are still visible, at the same cost.
    """
    import torch
    import torch.nn.functional as F

    kernel = [max(1, int(voxel_mm / z)) for z in zooms]
    if max(kernel) > 1:  # anti-aliasing: average blocks no larger than the target voxel
        t = pool_in_memory_order(data, kernel)
    else:
        t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None]
    pooled_zooms = [z * k for z, k in zip(zooms, kernel, strict=True)]
    hits = [np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    if all(len(h) for h in hits):
        lo = np.array([h[0] for h in hits]) * np.asarray(zooms)
        hi = np.array([h[-1] + 1 for h in hits]) * np.asarray(zooms)
        centre_mm = (lo + hi) / 2
        # Axis 2 is superior (RAS+): hang the cube from the top of the head, so that a field of
        # view reaching down to the neck does not pull the brain's top out of the cube.
        centre_mm[2] = max(centre_mm[2], hi[2] - size * voxel_mm / 2)
    else:
        centre_mm = np.asarray(data.shape) * np.asarray(zooms) / 2
    offsets = (np.arange(size) - size / 2 + 0.5) * voxel_mm
    axes = []
    for a in range(3):
        extent = t.shape[2 + a] * pooled_zooms[a]
        pos = centre_mm[a] + offsets  # mm from the image edge
        axes.append(torch.from_numpy((2 * pos / extent - 1).astype(np.float32)))
    g0, g1, g2 = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    grid = torch.stack([g2, g1, g0], dim=-1)[None]  # grid_sample wants (W, H, D) order
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0, 0].numpy()


def pool_in_memory_order(data: np.ndarray, kernel: list[int]) -> Any:
    """``avg_pool3d(data, kernel, stride=kernel, ceil_mode=True)`` as a C-contiguous (1, 1, ...)
    float32 tensor, for ``data`` in any memory order (a loaded NIfTI's is Fortran order), without
    a transposed copy of the whole volume.

    The blocks are summed in torch's order (kernel offsets along axis 0, then 1, then 2, in
    float32) and divided by the number of voxels in the block, so the result is bit-identical to
    pooling a C-ordered copy; the work runs slab by slab along the axis that is outermost in
    memory, so each slab is read from cache.
    """
    import torch

    arr = np.asarray(data, dtype=np.float32)
    shape = arr.shape
    out_shape = tuple(-(-n // k) for n, k in zip(shape, kernel, strict=True))
    # The sums are accumulated in ``arr``'s memory order (contiguous slabs), reordered at the end.
    order = [int(a) for a in np.argsort([-abs(st) for st in arr.strides], kind="stable")]
    out = np.zeros([out_shape[a] for a in order], dtype=np.float32).transpose(np.argsort(order))
    # Voxels per block (blocks at the far edges are cut by the image border, as with ceil_mode).
    counts = [np.minimum(k, n - np.arange(m) * k) for n, k, m in zip(shape, kernel, out_shape, strict=True)]
    divisor = (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]).astype(np.float32)
    axis = int(np.argmax(np.abs(arr.strides)))
    plane = max(1, arr.size // max(1, shape[axis]) * 4)
    step = max(1, _NORMALISE_CHUNK_BYTES // (plane * kernel[axis]))
    offsets = [(a, b, c) for a in range(kernel[0]) for b in range(kernel[1]) for c in range(kernel[2])]
    for start in range(0, out_shape[axis], step):
        stop = min(out_shape[axis], start + step)
        out_index: list[Any] = [slice(None)] * 3
        in_index: list[Any] = [slice(None)] * 3
        out_index[axis] = slice(start, stop)
        in_index[axis] = slice(start * kernel[axis], stop * kernel[axis])
        block, acc = arr[tuple(in_index)], out[tuple(out_index)]
        for off in offsets:
            part = block[off[0] :: kernel[0], off[1] :: kernel[1], off[2] :: kernel[2]]
            acc[: part.shape[0], : part.shape[1], : part.shape[2]] += part
        acc /= divisor[tuple(out_index)]
    return torch.from_numpy(np.ascontiguousarray(out))[None, None]


def resample_to_cube(
    data: np.ndarray, mask: np.ndarray, zooms: tuple[float, ...], size: int, voxel_mm: float = 0.0
) -> np.ndarray:
    """``data`` on a ``size``^3 cube: :func:`cube_at_spacing` around ``mask`` when ``voxel_mm > 0``,
    else :func:`volume_to_cube` (the whole field of view). Used for an image and for its head mask
    alike, so both land on the same voxels."""
    if voxel_mm > 0:
        return cube_at_spacing(data, mask, zooms, size, voxel_mm)
    return volume_to_cube(data, zooms, size)


def volume_to_cube(data: np.ndarray, zooms: tuple[float, ...], size: int) -> np.ndarray:
    """The volume zero-padded to a cube in mm and resized (trilinear) to size^3."""
    import torch
    import torch.nn.functional as F

    dims = data.shape
    extent = max(d * z for d, z in zip(dims, zooms, strict=False))
    padded = [max(d, int(round(extent / z))) for d, z in zip(dims, zooms, strict=False)]
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None, None]
    pads: list[int] = []
    for d, p in reversed(list(zip(dims, padded, strict=False))):
        before = (p - d) // 2
        pads += [before, p - d - before]
    t = F.pad(t, pads)
    # Area-average first when shrinking a lot, so thin structures do not alias.
    factor = max(1, min(padded) // size)
    if factor > 1:
        t = F.avg_pool3d(t, kernel_size=factor, stride=factor, ceil_mode=True)
    t = F.interpolate(t, size=(size, size, size), mode="trilinear", align_corners=False)
    return t[0, 0].numpy()
