"""The methods paragraph: written from the outputs, citing exactly the scorers that ran."""

from __future__ import annotations

from conftest import write_json

from bids_qa.cli import main
from bids_qa.methods import REFERENCES, gather, methods_text, paragraph


def _scan_json(out, subject, suffix, scorers, rulers=False):
    write_json(
        out / f"sub-{subject}" / "anat" / f"sub-{subject}_{suffix}_qa.json",
        {
            "scan": {"entities": {"subject": subject, "suffix": suffix}},
            "provenance": {
                "bids_qa_version": "9.9.9",
                "device": "cpu",
                "scorers": [{"name": n, "version": v} for n, v in scorers],
                "thresholds": {"sources": ["/x/bids_qa/data/thresholds.json"]},
            },
            **({"rulers": {"severity": {}}} if rulers else {}),
        },
    )


def test_paragraph_cites_only_what_ran(tmp_path):
    _scan_json(tmp_path, "01", "T1w", [("header", "1"), ("iqm", "2")])
    _scan_json(tmp_path, "02", "T1w", [("header", "1"), ("iqm", "2"), ("severity", "0.1")], rulers=True)
    _scan_json(tmp_path, "03", "FLAIR", [("tiers", "3")])
    text, cited = paragraph(gather(tmp_path, "T1w"))
    assert "2 T1w scan(s) of 2 subjects" in text and "bids_qa 9.9.9" in text
    assert "Hays et al., 2025" in text and "Loizillon" not in text
    assert cited[:2] == ["esteban2017", "atkinson1997"] and "hays2025" in cited
    assert "image_rulers" in cited and "thresholds.json" in text
    assert "severity 0.1" in text
    full = methods_text(tmp_path)
    assert "FLAIR and T1w" in full and REFERENCES["loizillon2024"] in full
    numbered = [line for line in full.splitlines() if line[:1].isdigit()]
    assert len(numbered) == len(set(numbered)) == 10  # 7 IQM papers, Hays, the image-ruler paper, Loizillon


def test_methods_command(tmp_path, capsys):
    assert main(["methods", str(tmp_path)]) == 66
    _scan_json(tmp_path, "01", "T2w", [("flow", "1")])
    assert main(["methods", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Zuo et al., 2023" in printed and "References" in printed
