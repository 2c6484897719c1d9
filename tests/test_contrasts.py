"""Contrast recognition for plain-NIfTI folders: sequence-name families, sidecar fields and the
user's --suffix-map."""

from __future__ import annotations

import json

import pytest

from bids_qa.contrasts import (
    Contrast,
    SuffixMapError,
    contrast_from_sidecar,
    contrast_of_text,
    load_suffix_map,
    match_suffix_map,
    recognise,
    words_of,
)
from bids_qa.discover import normalise_suffixes


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        # T1-weighted sequence families
        ("adi_brain_mocoMEMPRAGE_rms.nii.gz", "T1w"),
        ("philips_elitionx_ADNI_Sag3D_MPRAGE.nii.gz", "T1w"),
        ("mp2rage_uni.nii", "T1w"),
        ("ax_3d_spgr.nii.gz", "T1w"),
        ("FSPGR_BRAVO.nii.gz", "T1w"),
        ("sag_bravo.nii.gz", "T1w"),
        ("3D_T1_TFE.nii.gz", "T1w"),
        ("t1_tfe_sag.nii", "T1w"),
        ("GRE-IR_sag.nii.gz", "T1w"),
        ("uih_umr770_t1_gre_fsp_3d_sag.nii.gz", "T1w"),
        ("gre_fsp_3d.nii.gz", "T1w"),
        ("T1_brain_MNI.nii.gz", "T1w"),
        ("study2_T1W.nii.gz", "T1w"),
        # T2-weighted: named, or only a spin-echo family word
        ("adi_brain_ax_fse_t2.nii.gz", "T2w"),
        ("ax_tse.nii.gz", "T2w"),
        ("AX_FSE.nii", "T2w"),
        ("cor_se.nii", "T2w"),
        ("test02_01_t2.nii.gz", "T2w"),
        # a spin-echo word does not beat a named contrast
        ("t1_se_tra.nii.gz", "T1w"),
        ("pd_tse.nii.gz", "PDw"),
        # FLAIR family
        ("FLAIR_brain_MNI.nii.gz", "FLAIR"),
        ("t2_tirm_tra_dark-fluid.nii.gz", "FLAIR"),
        ("tirm_cor.nii", "FLAIR"),
        ("dark_fluid.nii", "FLAIR"),
        ("t2_flair_sag_p2.nii.gz", "FLAIR"),
        # proton density
        ("test02_01_pd.nii.gz", "PDw"),
        ("PDW_tra.nii", "PDw"),
        # T2-star
        ("spine_t2star_axial.nii.gz", "T2starw"),
        ("t2_star_gre.nii", "T2starw"),
        ("swi_T2*.nii", "T2starw"),
        # BIDS suffixes win as written
        ("sub-01_PD.nii.gz", "PD"),
        ("sub-01_inplaneT2.nii.gz", "inplaneT2"),
        ("sub-01_acq-mprage_T2w.nii.gz", "T2w"),
        # nothing recognisable
        ("brain.nii.gz", None),
        ("series_0003.nii", None),
        ("t1map.nii.gz", None),
    ],
)
def test_name_families(name, suffix):
    found = contrast_of_text(name)
    assert (found.suffix if found else None) == suffix


@pytest.mark.parametrize(
    ("name", "ceagent"),
    [
        ("T1POST_brain_MNI.nii.gz", "post"),
        ("T1Gd.nii.gz", "Gd"),
        ("t1_ce_tra.nii", None),
        ("T1CE.nii.gz", "post"),
        ("t1_mprage_gd.nii.gz", "Gd"),
        ("T1_brain_MNI.nii.gz", None),
    ],
)
def test_contrast_enhanced_t1_keeps_the_agent(name, ceagent):
    found = contrast_of_text(name)
    assert found is not None and found.suffix == "T1w" and found.ceagent == ceagent


def test_words_split_case_changes_and_dimension_prefixes():
    assert words_of("mocoMEMPRAGE_3DT1") == ["mocomemprage", "moco", "memprage", "3dt1", "t1"]


def test_sidecar_series_description_then_protocol_name(tmp_path):
    assert contrast_from_sidecar({"SeriesDescription": "Sag CUBE FLAIR"}) == Contrast(
        "FLAIR", None, "sidecar:SeriesDescription"
    )
    assert contrast_from_sidecar(
        {"SeriesDescription": "series 3", "ProtocolName": "t1_mprage_sag_p2_iso"}
    ) == Contrast("T1w", None, "sidecar:ProtocolName")
    assert contrast_from_sidecar({"SeriesDescription": "localizer"}) is None
    sidecar = tmp_path / "series_0003.json"
    sidecar.write_text(json.dumps({"ProtocolName": "AX T2 FSE"}), encoding="utf-8")
    assert recognise("p1/series_0003.nii.gz", sidecar).suffix == "T2w"
    # the name is read before the sidecar
    assert recognise("p1/t1_mprage.nii.gz", sidecar).suffix == "T1w"
    sidecar.write_text("{broken", encoding="utf-8")
    assert recognise("p1/series_0003.nii.gz", sidecar) is None


def test_suffix_map_first_match_wins_over_the_name(tmp_path):
    mapping = (("site2/*", "T2w"), ("*.nii.gz", "T1w"))
    assert match_suffix_map("site2/t1_mprage.nii.gz", mapping).suffix == "T2w"
    assert recognise("site1/x.nii.gz", None, mapping) == Contrast("T1w", None, "suffix-map:*.nii.gz")
    assert match_suffix_map("site1/x.nii", mapping) is None


def test_load_suffix_map_json_and_tsv(tmp_path):
    normalise = lambda name: normalise_suffixes([name])[0]  # noqa: E731
    as_json = tmp_path / "map.json"
    as_json.write_text('{"*flair*": "FLAIR", "*_0003*": "t1"}', encoding="utf-8")
    assert load_suffix_map(as_json, normalise) == (("*flair*", "FLAIR"), ("*_0003*", "T1w"))
    as_tsv = tmp_path / "map.tsv"
    as_tsv.write_text("pattern\tsuffix\n# comment\n*_0004*\tPDw\n\n", encoding="utf-8")
    assert load_suffix_map(as_tsv, normalise) == (("*_0004*", "PDw"),)
    for text, fragment in (
        ('{"*": "bold"}', "not a structural contrast"),
        ("*_0004*\n", "expected 'pattern<TAB>suffix'"),
        ("{oops", "not valid JSON"),
        ("pattern\tsuffix\n", "maps no pattern"),
    ):
        bad = tmp_path / "bad.txt"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(SuffixMapError, match=fragment):
            load_suffix_map(bad, normalise)
    with pytest.raises(SuffixMapError, match="cannot read"):
        load_suffix_map(tmp_path / "missing.tsv")
