"""``bids_qa ratings merge``: reading the reports' exports, the merged table, agreement figures."""

from __future__ import annotations

import json

import pytest
from conftest import read_tsv

from bids_qa.cli import main
from bids_qa.ratings import (
    RatingsError,
    cohen_kappa,
    fleiss_kappa,
    percent_agreement,
    read_export,
)


def _tsv(path, rows):
    """An export as rating.js writes it (BQ.toTSV)."""
    lines = ["scan_id\trating\tartifacts\tcomment\tupdated"]
    lines += ["\t".join(str(c) for c in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cohen_kappa_textbook_values():
    # identical ratings: 1; chance-level agreement: 0
    assert cohen_kappa([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert cohen_kappa([1, 1, 2, 2], [1, 2, 1, 2]) == pytest.approx(0.0)
    # 2x2 table [[20, 5], [10, 15]]: po = 0.7, pe = 0.5, kappa = 0.4
    a = [1] * 25 + [2] * 25
    b = [1] * 20 + [2] * 5 + [1] * 10 + [2] * 15
    assert percent_agreement(a, b) == pytest.approx(0.7)
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    # weighting: a near miss (3 vs 4) costs less than a far one (1 vs 4)
    near = cohen_kappa([1, 2, 3, 4, 4], [1, 2, 3, 4, 3], "quadratic")
    far = cohen_kappa([1, 2, 3, 4, 4], [1, 2, 3, 4, 1], "quadratic")
    assert near > far
    assert cohen_kappa([3, 3], [3, 3]) == 1.0 and cohen_kappa([], []) is None


def test_fleiss_kappa_perfect_and_split():
    assert fleiss_kappa([[1, 1, 1], [4, 4, 4]]) == pytest.approx(1.0)
    assert fleiss_kappa([[1, 2], [2, 1]]) < 0
    assert fleiss_kappa([]) is None


def test_read_tsv_and_json_exports(tmp_path):
    tsv = _tsv(
        tmp_path / "anna.tsv",
        [("sub-01_T1w", 3, "motion,noise", "a\\ttab", "2026-01-01"), ("sub-02_T1w", "", "", "", "")],
    )
    anna = read_export(tsv)
    assert anna.rater == "anna" and list(anna.ratings) == ["sub-01_T1w"]  # empty record dropped
    assert anna.ratings["sub-01_T1w"].artifacts == ["motion", "noise"]
    assert anna.ratings["sub-01_T1w"].comment == "a\ttab"
    js = tmp_path / "export.json"
    js.write_text(
        json.dumps({"format": "bids_qa-ratings", "version": 1, "suffix": "T1w", "rater": "Ben",
                    "ratings": [{"scan_id": "sub-01_T1w", "rating": 9}, {"scan_id": "x", "rating": 2}]}),
        encoding="utf-8",
    )  # fmt: skip
    ben = read_export(js)
    assert ben.rater == "Ben" and ben.ratings["x"].rating == 2 and "sub-01_T1w" not in ben.ratings
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\trating\n", encoding="utf-8")
    with pytest.raises(RatingsError, match="no scan_id column"):
        read_export(bad)


def test_merge_command_writes_table_and_agreement(tmp_path, capsys):
    ids = [f"sub-{i:02d}_T1w" for i in range(1, 7)]
    a = _tsv(tmp_path / "rater_a.tsv", [(s, r, "", "", "") for s, r in zip(ids, [1, 2, 3, 4, 4, 3], strict=True)])
    b = _tsv(tmp_path / "rater_b.tsv", [(s, r, "", "", "") for s, r in zip(ids, [1, 2, 3, 4, 3, 3], strict=True)])
    c = _tsv(tmp_path / "rater_c.tsv", [(s, 4, "motion", "", "") for s in ids[:3]])
    out = tmp_path / "merged.tsv"
    assert main(["ratings", "merge", str(a), str(b), str(c), "-o", str(out)]) == 0
    rows = read_tsv(out)
    assert [r["scan_id"] for r in rows] == ids
    assert list(rows[0])[:4] == ["scan_id", "n_raters", "mean_rating", "agree"]
    assert rows[0]["rater_a.rating"] == "1" and rows[0]["rater_c.artifacts"] == "motion"
    assert rows[4]["agree"] == "false" and rows[3]["agree"] == "true" and rows[3]["n_raters"] == "2"
    assert rows[5]["rater_c.rating"] == "n/a"
    meta = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    ab = meta["agreement"]["pairs"][0]
    assert ab["raters"] == ["rater_a", "rater_b"] and ab["n_scans"] == 6
    assert ab["percent_agreement"] == pytest.approx(100 * 5 / 6, abs=0.01)
    assert ab["cohen_kappa"] == pytest.approx(
        cohen_kappa([1, 2, 3, 4, 4, 3], [1, 2, 3, 4, 3, 3]), abs=1e-4
    )
    assert meta["agreement"]["pairs"][1]["n_scans"] == 3
    assert meta["agreement"]["all_raters"]["n_scans_rated_by_all"] == 3
    printed = capsys.readouterr().out
    assert "rater_a vs rater_b: 6 shared scan(s)" in printed and "Cohen's kappa" in printed
    # the same rater twice, and a missing file
    assert main(["ratings", "merge", str(a), str(a), "-o", str(out)]) == 65
    assert main(["ratings", "merge", str(tmp_path / "nope.tsv"), "-o", str(out)]) == 66
