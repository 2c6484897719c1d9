"""Copy a run's weights into the package under a distinct version string (maintainer tool).

A fine-tuned run restarts its step count, so its automatic version (``<release>+s<step>``) can
collide with the weights it started from; shipping under an explicit version keeps every output's
provenance unambiguous. The original version is kept in the metadata as ``run_version``.

    python scripts/ship_weights.py RUN/best.safetensors bids_qa/weights/ssim.safetensors 0.1.0+s2400.n2400
"""

from __future__ import annotations

import sys

from bids_qa.models.weights import load_weights, save_weights


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__)
        return 64
    src, dst, version = argv
    state, meta = load_weights(src)
    meta["run_version"] = meta.get("version")
    meta["version"] = version
    save_weights(dst, state, meta)
    print(f"{src} -> {dst} as version {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
