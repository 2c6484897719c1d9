"""Scores must not depend on how the work is split: --nprocs and --batch-size (issue 10)."""

from __future__ import annotations

import math

from bids_qa.cli import main
from bids_qa.derivatives import read_group_table


def _numeric_scores(out) -> dict[tuple[str, str], float]:
    table = read_group_table(out, "T1w")
    scores = {}
    for _, row in table.iterrows():
        for col in table.columns:
            if "." in col and isinstance(row[col], (int, float)) and not isinstance(row[col], bool):
                scores[(row["scan_id"], col)] = float(row[col])
    return scores


def test_nprocs_and_batch_size_do_not_change_scores(small_bids, tmp_path):
    runs = {}
    for name, extra in {
        "serial": ["--nprocs", "1", "--batch-size", "64"],
        "parallel_small_batches": ["--nprocs", "2", "--batch-size", "3"],
    }.items():
        out = tmp_path / name
        assert (
            main(
                [
                    str(small_bids),
                    str(out),
                    "participant",
                    "--no-reports",
                    "-q",
                    "--suffix",
                    "T1w",
                    *extra,
                ]
            )
            == 0
        )
        assert main([str(small_bids), str(out), "group", "--no-reports", "-q"]) == 0
        runs[name] = _numeric_scores(out)
    a, b = runs["serial"], runs["parallel_small_batches"]
    assert a.keys() == b.keys() and len(a) > 20
    models = {col.split(".")[0] for _, col in a}
    assert "iqm" in models and "header" in models
    for key, value in a.items():
        other = b[key]
        if math.isnan(value):
            assert math.isnan(other), key
        else:
            assert math.isclose(value, other, rel_tol=1e-4, abs_tol=1e-5), (key, value, other)
