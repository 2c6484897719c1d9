"""Group-level flow refit (Zuo et al.): dataset density when the contrast has enough scans."""

from __future__ import annotations

import numpy as np
import pytest

from bids_qa.group_flow import DATASET_COLUMNS, apply_dataset_refit
from bids_qa.group_table import GroupTable
from bids_qa.models.weights import packaged_weights


def _table(n: int, seed: int = 0) -> GroupTable:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, 2))
    m[0] = [8.0, -8.0]  # one scan far from the others
    rows = [
        {"scan_id": f"sub-{i:02d}_T1w", "verdict": "pass", "flow.m1": float(a), "flow.m2": float(b)}
        for i, (a, b) in enumerate(m)
    ]
    rows[1]["flow.m1"] = "n/a"  # a failed scan has no m
    return GroupTable(suffix="T1w", metric_columns=["flow.m1", "flow.m2"], rows=rows, thresholds={})


def test_dataset_refit_adds_columns_flags_the_outlier_and_is_deterministic(tmp_path):
    a, b = _table(40), _table(40)
    note = apply_dataset_refit(a, tmp_path / "a.png")
    apply_dataset_refit(b, tmp_path / "b.png")
    assert note["density"] == "dataset" and note["n_scans"] == 39
    assert all(k in a.metric_columns for k in DATASET_COLUMNS)
    assert a.rows[0]["flow.dataset_flag_5pct"] == 1
    assert a.rows[1]["flow.dataset_log_density"] is None
    flags = [r["flow.dataset_flag_5pct"] for r in a.rows if r["flow.dataset_flag_5pct"] is not None]
    assert 1 <= sum(flags) <= 5  # about 5% of 39
    assert [r["flow.dataset_log_density"] for r in a.rows] == [
        r["flow.dataset_log_density"] for r in b.rows
    ]
    assert (tmp_path / "a.png").stat().st_size > 1000


@pytest.mark.skipif(
    not packaged_weights("flow.safetensors").is_file(), reason="flow weights not installed"
)
def test_small_dataset_falls_back_to_the_reference_and_says_so(tmp_path):
    t = _table(10)
    note = apply_dataset_refit(t, tmp_path / "f.png")
    assert note["density"] == "reference"
    assert "fewer than 30" in note["message"]
    assert not any(k in t.metric_columns for k in DATASET_COLUMNS)


def test_tables_without_flow_columns_are_left_alone(tmp_path):
    t = GroupTable(suffix="T1w", metric_columns=["iqm.efc"], rows=[{"iqm.efc": 0.5}], thresholds={})
    assert apply_dataset_refit(t, tmp_path / "x.png") == {}
    assert not (tmp_path / "x.png").exists()
