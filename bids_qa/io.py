"""The one writer of output files, and the encoders (and readers) of the formats written.

Every TSV, JSON, PNG and HTML file of a run goes through :func:`atomic_write_bytes`: a hidden
temporary file in the target's folder (``.<name>.bqtmp-<host>-<pid>-<random>``), ``fsync``, then
``os.replace`` over the target. A reader, or a killed run, never sees a half-written file under a
final name; two jobs writing into one output folder cannot interleave their bytes; the temporary
files of killed processes are recognised by their name and removed by :func:`cleanup_stale_temp`
at the start of the next run. :mod:`bids_qa.derivatives` owns the names of the files; reports
render strings and PNG bytes and hand them here.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: What every missing or non-finite value is written as in a TSV.
MISSING = "n/a"

TMP_MARK = ".bqtmp-"
_TMP_RE = re.compile(r"\.bqtmp-([A-Za-z0-9]*)-(\d+)-[0-9a-f]+$")


def host_tag() -> str:
    return "".join(ch for ch in socket.gethostname() if ch.isalnum())[:32]



def _temp_name(path: Path) -> Path:
    return path.with_name(
        f".{path.name}{TMP_MARK}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    )


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, ``fsync`` and
    ``os.replace``; the one way every output file of bids_qa is written.

    The target either keeps its old content or gets the whole new content; the temporary file is
    removed if anything fails (including KeyboardInterrupt), and one left by a killed process is
    found by :func:`cleanup_stale_temp`. The file gets the mode the process umask gives
    (``0o666 & ~umask``, e.g. 0644 under umask 022), so colleagues on a shared server can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_ready(obj: Any) -> Any:
    """Copy of ``obj`` that strict JSON accepts: numpy scalars/arrays to Python, paths to strings,
    NaN/Inf to None, tuples and sets to lists."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [json_ready(v) for v in items]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def dumps_json(obj: Any) -> str:
    """Sorted-key, indented, strict JSON (UTF-8 characters kept)."""
    return (
        json.dumps(json_ready(obj), sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False)
        + "\n"
    )


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as JSON (see :func:`dumps_json`)."""
    return atomic_write_text(path, dumps_json(obj))


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grey (2D) or RGB (3D, last axis 3) array encoded as PNG (zlib level 4: fast, and
    within a few percent of the smallest file)."""
    import io

    from PIL import Image

    arr = np.ascontiguousarray(image, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB" if arr.ndim == 3 else "L").save(
        buf, format="PNG", optimize=False, compress_level=4
    )
    return buf.getvalue()


def format_value(value: Any) -> str:
    """One TSV cell: numbers with 6 significant digits, non-finite or None as ``n/a``, text with
    tabs and line breaks replaced by spaces."""
    if value is None:
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return MISSING
        return f"{value:.6g}"
    text = str(value)
    return re.sub(r"[\t\r\n]+", " ", text)


def parse_number(text: Any) -> float | None:
    """A cell written by :func:`format_value` read back as a float: None when it is empty, a
    missing value (``n/a``, ``na``, ``none``), NaN or not a number (a label)."""
    if text is None:
        return None
    if isinstance(text, (int, float, np.integer, np.floating)) and not isinstance(text, bool):
        return None if math.isnan(float(text)) else float(text)
    s = str(text).strip()
    if not s or s.lower() in (MISSING, "na", "none"):
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    return None if math.isnan(v) else v


def render_tsv(
    columns: Sequence[str], rows: Iterable[Mapping[str, Any]], empty: str = MISSING
) -> str:
    """TSV text with a header line; missing keys become ``empty``."""
    lines = ["\t".join(columns)]
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            if value is None or (isinstance(value, str) and value == ""):
                cells.append(empty if value is None else "")
            else:
                cells.append(format_value(value))
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def write_tsv(
    path: str | os.PathLike[str],
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    empty: str = MISSING,
) -> Path:
    """Atomically write a TSV (see :func:`render_tsv`)."""
    return atomic_write_text(path, render_tsv(columns, rows, empty=empty))


def cleanup_stale_temp(out_dir: str | os.PathLike[str], max_age_s: float = 86400.0) -> int:
    """Remove temporary files left by killed runs; returns how many were removed.

    A temporary file is stale when it was made on this host by a process that no longer exists,
    or is older than ``max_age_s`` (other hosts of a cluster sharing the folder). Files of live
    concurrent jobs are left alone.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return 0
    host = host_tag()
    now = time.time()
    removed = 0
    for folder, _dirs, files in os.walk(out_dir):
        for name in files:
            match = _TMP_RE.search(name)
            if not match:
                continue
            path = Path(folder) / name
            tmp_host, pid = match.group(1), int(match.group(2))
            stale = False
            if tmp_host == host and pid != os.getpid():
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    stale = True
                except PermissionError:
                    stale = False
            try:
                if not stale and now - path.stat().st_mtime > max_age_s:
                    stale = True
                if stale:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A derivative JSON file that must hold an object.

    Raises
    ------
    OSError
        When it cannot be read.
    ValueError
        When it is not valid JSON or not an object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} holds a {type(data).__name__}, expected a JSON object")
    return data


def read_slices_tsv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A ``_slices.tsv`` with numeric columns (``n/a`` and empty cells are missing)."""
    import pandas as pd

    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[MISSING, ""])
