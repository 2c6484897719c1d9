"""Rewrite the regression fixtures in tests/data/ from the shipped weights (maintainer tool).

Run once after shipping new weights for a family, then commit the fixture with the weights:

    python scripts/make_fixtures.py severity flow ssim tiers

Each fixture is computed on the same deterministic input its test uses (the test modules' own
helpers are imported, so input and check cannot drift apart).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
DATA = TESTS / "data"
# The checkout's package (with the weights just shipped), not an installed copy: run as a script,
# sys.path[0] is scripts/, and an installed bids_qa would silently write the old weights' fixture.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _round(v):
    return round(float(v), 6) if isinstance(v, (float, np.floating)) else v


def severity() -> dict:
    import test_severity as T

    from bids_qa.models.severity import SeverityScorer
    from bids_qa.volume import volume_from_array

    scorer = SeverityScorer()
    got = scorer.score(volume_from_array(T._mni_volume(), (2.0, 2.0, 2.0))).values
    return {
        "volume": "nilearn MNI152 template, resolution=2, volume_from_array zooms 2 mm",
        "weights_version": scorer.version,
        **{k: _round(got[k]) for k in ("score", "slice_max", "worst_slice")},
    }


def flow() -> dict:
    import test_flow as T

    from bids_qa.models.flow import FlowScorer

    scorer = FlowScorer()
    keys = ("m1", "m2", "log_density", "percentile", "flag_5pct", "flag_3pct")
    cases = {}
    for case, vol in (("clean", T._phantom()), ("noisy", T._noisy(T._phantom()))):
        v = scorer.score(vol).values
        cases[case] = {k: v[k] for k in keys}
    return {
        "description": "FlowScorer values on the nilearn MNI152 2 mm template (clean, and with "
        "Rician noise std 0.25, numpy seed 0) from bids_qa/weights/flow.safetensors.",
        "version": scorer.version,
        "level_5pct": scorer.reference.level(5.0),
        "cases": cases,
    }


def ssim() -> dict:
    import test_ssim_model as T
    from nilearn.datasets import load_mni152_template

    from bids_qa.models.ssim import SSIMScorer
    from bids_qa.volume import volume_from_array

    t = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    scorer = SSIMScorer(device="cpu", batch_size=64)
    out = {
        "description": "SSIMScorer on nilearn's MNI152 template (resolution 2), clean and with "
        "tests' strong_motion; regenerate only when the shipped ssim weights change",
        "version": scorer.version,
        "config": scorer.config.to_dict(),
    }
    for name, arr in (("clean", t), ("moved", T.strong_motion(t))):
        s = scorer.score(volume_from_array(arr, (2.0, 2.0, 2.0)))
        d = {
            "slice_index": s.per_slice["slice_index"].tolist(),
            "ssim": [round(float(x), 6) for x in s.per_slice["ssim"]],
        }
        for k in T.VALUE_KEYS:
            d[k] = _round(s.values[k])
        out[name] = d
    return out


def tiers() -> dict:
    import test_tiers as T

    from bids_qa.models.tiers import TierScorer

    scorer = TierScorer()
    values = scorer.score(T.fixture_volume()).values
    keys = [
        f"{a}_{k}"
        for a in ("contrast", "motion", "noise")
        for k in ("grade", "p_moderate", "p_severe")
    ]
    return {
        "description": "TierScorer values for tests/test_tiers.py::fixture_volume() (head_phantom "
        "n=64, 3 mm, seed 7) with the shipped bids_qa/weights/tiers.safetensors; regenerate only "
        "when the weights change.",
        "version": scorer.version,
        "values": {k: _round(values[k]) for k in [*keys, "tier", "tier_reason"]},
    }


MAKERS = {"severity": severity, "flow": flow, "ssim": ssim, "tiers": tiers}
FILES = {
    "severity": "severity_fixture.json",
    "flow": "flow_fixture.json",
    "ssim": "ssim_fixture.json",
    "tiers": "tiers_fixture.json",
}


def main(argv: list[str]) -> int:
    unknown = [a for a in argv if a not in MAKERS]
    if not argv or unknown:
        print(__doc__)
        return 64
    sys.path.insert(0, str(TESTS))
    for family in argv:
        out = MAKERS[family]()
        (DATA / FILES[family]).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
        print(
            f"{family}: wrote {DATA / FILES[family]} (version {out.get('version', out.get('weights_version'))})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
