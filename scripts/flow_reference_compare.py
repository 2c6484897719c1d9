"""Compare flow weights per validation source (maintainer tool; Zuo et al. figures per site).

Draws the evaluation cases of ``bids_qa.training.flow.evaluation_cases`` once and scores them with
every weights file given (``NAME=PATH``), then writes ``sources.json`` and ``sources.md`` to
``--out``. With ``--severity 0.7 1.0 --seed 0`` the cases are those of
``bids_qa evaluate --families flow --seed 0``; ``--severity 0.9 0.9`` gives the severe cases of
issue 22's sensitivity target.

    python scripts/flow_reference_compare.py --data /work/shared/data --out cmp \
        --severity 0.9 0.9 shipped=bids_qa/weights/flow.safetensors new=RUN/flow.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bids_qa


def main(argv: list[str] | None = None) -> int:
    from bids_qa.models.flow import FlowScorer
    from bids_qa.training.data import clean_volumes
    from bids_qa.training.flow_reference import evaluate_sources, sources_markdown

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--severity", type=float, nargs=2, default=[0.7, 1.0])
    p.add_argument("--variants", type=int, default=3, help="benign variants per clean scan")
    p.add_argument("weights", nargs="+", metavar="NAME=PATH")
    args = p.parse_args(argv)
    scorers = {}
    for item in args.weights:
        name, _, path = item.partition("=")
        scorers[name] = FlowScorer(weights=path)
    t0 = time.time()
    volumes = clean_volumes(args.data, args.split, include_out_of_scope=True)
    res = evaluate_sources(scorers, volumes, np.random.default_rng(args.seed), args.variants,
                           tuple(args.severity))
    res["seconds"] = round(time.time() - t0, 1)
    res["weights"] = {k: {"path": Path(v).name, "version": scorers[k].version}
                      for k, v in (w.partition("=")[::2] for w in args.weights)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sources.json").write_text(json.dumps(res, indent=1, sort_keys=True))
    md = (f"Seed {args.seed}, severity U{tuple(args.severity)}, {len(volumes)} volumes, "
          f"{res['seconds']:.0f} s; " + ", ".join(f"{k} = {v['version']}" for k, v in res["weights"].items())
          + "\n\n" + sources_markdown(res["summary"]))
    (out / "sources.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
