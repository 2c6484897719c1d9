"""CPU seconds of each stage of one scan, run sequentially in one thread.

Wall-clock stage times of ``bench/throughput.py`` move with the machine's load (the pipeline's
threads compete with each other and with other processes); CPU time (``time.process_time``) of the
same work run one step after another in one thread moves much less, so it is the figure to compare
code versions by on a shared machine. Prints, per stage, the median CPU seconds over the files and
the ratio to nibabel's read of the same file (``get_fdata``), also in CPU seconds.

Usage::

    python bench/stage_cpu.py /tmp/bench12/bids/sub-0*/anat/*.nii.gz
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__)
        return 2
    import nibabel as nib
    import numpy as np
    import torch

    from bids_qa.input_kind import describe_volume
    from bids_qa.scoring import build_scorers
    from bids_qa.volume import load_volume

    torch.set_num_threads(1)
    scorers = build_scorers()
    cpu: dict[str, list[float]] = {}

    def clock(stage: str, fn):  # type: ignore[no-untyped-def]
        start = time.process_time()
        out = fn()
        cpu.setdefault(stage, []).append(time.process_time() - start)
        return out

    for path in paths:
        clock("nibabel floor", lambda p=path: nib.load(p).get_fdata(dtype=np.float32))
        volume = clock("load", lambda p=path: load_volume(p))
        clock("input facts", lambda v=volume: describe_volume(v))
        for scorer in scorers:
            if not scorer.in_loader:
                clock(f"prepare:{scorer.name}", lambda s=scorer, v=volume: s.prepare(v))
            clock(f"score:{scorer.name}", lambda s=scorer, v=volume: s.score(v, suffix="T1w"))
    floor = statistics.median(cpu["nibabel floor"])
    print(f"{len(paths)} files; CPU seconds per volume (median); load average {os.getloadavg()[0]:.2f}")
    total = 0.0
    for stage, values in cpu.items():
        med = statistics.median(values)
        total += med if stage != "nibabel floor" else 0.0
        print(f"{stage:<20}{med:>8.3f}{med / floor:>8.2f}x")
    print(f"{'all stages':<20}{total:>8.3f}{total / floor:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
