"""Discovery in BIDS and plain-NIfTI mode, filters, contrast names, metadata inheritance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_json, write_nifti

from bids_qa.discover import (
    STRUCTURAL_SUFFIXES,
    Scan,
    contrast_from_name,
    discover,
    load_filter_file,
    matches_filters,
    normalise_labels,
    normalise_suffixes,
    parse_entities,
    read_metadata,
)
from bids_qa.errors import FatalError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sub-01_ses-1_run-2_T1w.nii.gz", "T1w"),
        ("sub-01_FLAIR.nii", "FLAIR"),
        ("sub-01_T2starw.nii.gz", "T2starw"),
        ("sub-01_acq-fast_PDw.nii.gz", "PDw"),
        ("sub-01_PD.nii.gz", "PD"),
        ("sub-01_inplaneT2.nii.gz", "inplaneT2"),
        ("patient3_t2_flair_tra.nii", "FLAIR"),
        ("T1_MPRAGE_SAG.nii.gz", "T1w"),
        ("mprage.NII.GZ", "T1w"),
        ("3DT1.nii", "T1w"),
        ("study1_T2W.nii.gz", "T2w"),
        ("spine_t2star_axial.nii.gz", "T2starw"),
        ("scan_t2*.nii", "T2starw"),
        ("pd_t2.nii", "PDw"),
        ("adi_brain_mocoMEMPRAGE_rms.nii.gz", "T1w"),
        ("T1POST_brain_MNI.nii.gz", "T1w"),
        ("adi_brain_ax_fse_t2.nii.gz", "T2w"),
        ("uih_umr770_t1_gre_fsp_3d_sag.nii.gz", "T1w"),
        ("brain.nii.gz", None),
        ("t1map.nii.gz", None),
    ],
)
def test_contrast_from_name(name, expected):
    assert contrast_from_name(name) == expected


def test_parse_entities_from_folders_and_names():
    assert parse_entities("site A/sub-07/ses-pre/sub-07_ses-pre_run-2_acq-x_T1w.nii.gz") == {
        "subject": "07",
        "session": "pre",
        "acquisition": "x",
        "run": "2",
    }
    # HTML in a name: the '/' of '</b>' splits it into a folder and a file; labels keep alnum only
    assert parse_entities("sub-01_acq-<b>x</b>_T1w.nii.gz") == {
        "subject": "01",
        "acquisition": "bx",
    }
    assert parse_entities("scan.nii") == {}
    assert parse_entities("sub-é1_T1w.nii") == {"subject": "é1"}


def test_normalise_labels_and_suffixes(tmp_path):
    assert normalise_labels(["sub-01", "02", "01"], "sub") == ("01", "02")
    listing = tmp_path / "subjects.txt"
    listing.write_text("sub-03\n04\n\n", encoding="utf-8")
    assert normalise_labels([str(listing)], "sub") == ("03", "04")
    assert normalise_labels(["run-1"], "run") == ("1",)
    with pytest.raises(FatalError) as err:
        normalise_labels(["sub-"], "sub")
    assert err.value.code == 64
    assert normalise_suffixes(["t1", "MPRAGE", "flair", "T2star"]) == ("T1w", "FLAIR", "T2starw")
    with pytest.raises(FatalError, match="not a structural contrast"):
        normalise_suffixes(["bold"])


def test_structural_suffixes_exclude_maps_and_angio():
    assert "T1map" not in STRUCTURAL_SUFFIXES and "angio" not in STRUCTURAL_SUFFIXES
    assert {"T1w", "T2w", "FLAIR", "PDw", "PD", "T2starw", "inplaneT1", "inplaneT2", "PDT2"} == set(
        STRUCTURAL_SUFFIXES
    )


def test_bids_mode_finds_structural_anat_scans_only(small_bids):
    found = discover(small_bids)
    assert found.mode == "bids"
    assert [s.source for s in found.scans] == [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T2w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_run-1_T1w.nii.gz",
    ]
    first, _, third = found.scans
    assert first.bids and first.sidecar == small_bids / "sub-01/anat/sub-01_T1w.json"
    assert first.scan_id == "sub-01_T1w" and first.subject == "01" and first.suffix == "T1w"
    assert third.entities == {
        "subject": "02",
        "session": "1",
        "run": "1",
        "suffix": "T1w",
        "extension": ".nii.gz",
        "datatype": "anat",
    }
    assert third.sidecar is None


def test_entity_filters_follow_bids_apps_rules(bids_factory):
    root = bids_factory(
        scans=(
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
            "sub-02/ses-2/anat/sub-02_ses-2_run-02_T1w.nii.gz",
            "sub-03/anat/sub-03_FLAIR.nii",
        ),
        extras=False,
    )
    ids = lambda **kw: [s.scan_id for s in discover(root, **kw).scans]  # noqa: E731
    # files without the filtered entity are kept (BIDS-Apps spec)
    assert ids(session_id=("1",)) == ["sub-01_T1w", "sub-02_ses-1_T1w", "sub-03_FLAIR"]
    assert ids(participant_label=("02",), run_id=("2",)) == [
        "sub-02_ses-1_T1w",
        "sub-02_ses-2_run-02_T1w",
    ]
    assert ids(suffixes=("FLAIR",)) == ["sub-03_FLAIR"]
    assert ids(participant_label=("99",)) == []


def test_filter_file_queries(tmp_path, bids_factory):
    root = bids_factory(
        scans=(
            "sub-01/anat/sub-01_acq-mprage_T1w.nii.gz",
            "sub-01/anat/sub-01_acq-fast_T1w.nii.gz",
            "sub-01/anat/sub-01_T2w.nii.gz",
            "sub-02/ses-1/anat/sub-02_ses-1_T2w.nii.gz",
        ),
        extras=False,
    )
    spec = write_json(
        tmp_path / "f.json",
        {"t1w": {"suffix": "T1w", "acq": "mprage"}, "t2w": {"suffix": "T2w", "session": None}},
    )
    queries = load_filter_file(spec)
    assert queries["t1w"] == {"suffix": "T1w", "acquisition": "mprage"}
    assert [s.scan_id for s in discover(root, bids_filters=queries).scans] == [
        "sub-01_T2w",
        "sub-01_acq-mprage_T1w",
    ]
    flat = load_filter_file(
        write_json(tmp_path / "g.json", {"session": "*", "extension": "nii.gz"})
    )
    assert [s.scan_id for s in discover(root, bids_filters=flat).scans] == ["sub-02_ses-1_T2w"]
    assert matches_filters({"run": "02"}, {"q": {"run": [2, 3]}})
    with pytest.raises(FatalError, match="unknown entity 'colour'"):
        load_filter_file(write_json(tmp_path / "h.json", {"q": {"colour": "red"}}))


def test_invalid_bids_names_are_reported_or_included(bids_factory):
    root = bids_factory(
        scans=("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_acq-a b_T1w.nii.gz"),
        extras=False,
    )
    strict = discover(root)
    assert [s.scan_id for s in strict.scans] == ["sub-01_T1w"]
    assert any("not valid BIDS" in w and "sub-01_acq-a b_T1w.nii.gz" in w for w in strict.warnings)
    loose = discover(root, skip_bids_validation=True)
    assert sorted(s.scan_id for s in loose.scans) == ["sub-01_T1w", "sub-01_acq-a b_T1w"]


def test_unreadable_dataset_description(bids_factory):
    root = bids_factory(scans=("sub-01/anat/sub-01_T1w.nii.gz",), extras=False)
    (root / "dataset_description.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(FatalError) as err:
        discover(root)
    assert err.value.code == 16 and "--skip-bids-validation" in err.value.message
    found = discover(root, skip_bids_validation=True)
    assert found.mode == "nifti" and [s.scan_id for s in found.scans] == ["sub-01_T1w"]


def test_missing_root_is_exit_66(tmp_path):
    with pytest.raises(FatalError) as err:
        discover(tmp_path / "absent")
    assert err.value.code == 66


def test_plain_nifti_mode(tmp_path, mni_small):
    root = tmp_path / "scans"
    for rel in (
        "site1/patient01/T1_MPRAGE.nii.gz",
        "site1/patient01/brain_mask.nii.gz",
        "site1/patient01/t2_flair_tra.nii",
        "sub-05/ses-b/sub-05_ses-b_run-3_T2w.nii.gz",
        "other/random.nii.gz",
        "other/dwi.nii.gz",
        ".hidden/sub-09_T1w.nii.gz",
    ):
        write_nifti(root / rel, mni_small)
    (root / "notes.txt").write_text("x", encoding="utf-8")
    write_nifti(root / "qa_out" / "x_T1w.nii.gz", mni_small)  # the output folder inside the input
    found = discover(root, exclude=[root / "qa_out"])
    assert found.mode == "nifti"
    got = {s.source: s for s in found.scans}
    assert sorted(got) == [
        "other/random.nii.gz",
        "site1/patient01/T1_MPRAGE.nii.gz",
        "site1/patient01/t2_flair_tra.nii",
        "sub-05/ses-b/sub-05_ses-b_run-3_T2w.nii.gz",
    ]
    assert got["site1/patient01/T1_MPRAGE.nii.gz"].suffix == "T1w"
    assert got["site1/patient01/t2_flair_tra.nii"].entities == {
        "subject": "patient01",  # the folder looks like a subject
        "suffix": "FLAIR",
        "extension": ".nii",
    }
    assert got["site1/patient01/t2_flair_tra.nii"].scan_id == "site1_patient01_t2_flair_tra"
    assert got["sub-05/ses-b/sub-05_ses-b_run-3_T2w.nii.gz"].scan_id == "sub-05_ses-b_run-3_T2w"
    assert got["other/random.nii.gz"].scan_id == "other_random"
    assert got["sub-05/ses-b/sub-05_ses-b_run-3_T2w.nii.gz"].entities == {
        "subject": "05",
        "session": "b",
        "run": "3",
        "suffix": "T2w",
        "extension": ".nii.gz",
    }
    assert got["other/random.nii.gz"].suffix == "unknown"
    assert any("name no contrast" in w for w in found.warnings)
    assert not any(s.bids for s in found.scans)
    # one --suffix names the unnamed file; several leave it out
    assert {
        s.source: s.suffix
        for s in discover(root, suffixes=("T1w",), exclude=[root / "qa_out"]).scans
    } == {"site1/patient01/T1_MPRAGE.nii.gz": "T1w", "other/random.nii.gz": "T1w"}
    several = discover(root, suffixes=("T1w", "FLAIR"), exclude=[root / "qa_out"])
    assert "other/random.nii.gz" not in {s.source for s in several.scans}


def test_metadata_inheritance_and_malformed_sidecar(bids_factory):
    root = bids_factory(scans=("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",), extras=False)
    write_json(root / "T1w.json", {"Manufacturer": "Top", "EchoTime": 0.1, "RepetitionTime": 2})
    write_json(root / "sub-01/sub-01_T1w.json", {"EchoTime": 0.2})
    write_json(root / "sub-01/ses-1/anat/sub-01_ses-1_T1w.json", {"RepetitionTime": 3})
    write_json(root / "sub-01/ses-1/anat/sub-01_ses-1_acq-other_T1w.json", {"RepetitionTime": 99})
    write_json(root / "T2w.json", {"Manufacturer": "Wrong"})
    scan = discover(root).scans[0]
    meta, warnings = read_metadata(scan)
    assert meta == {"Manufacturer": "Top", "EchoTime": 0.2, "RepetitionTime": 3} and warnings == []
    (root / "sub-01/sub-01_T1w.json").write_text("{broken", encoding="utf-8")
    meta, warnings = read_metadata(scan)
    assert meta == {"Manufacturer": "Top", "EchoTime": 0.1, "RepetitionTime": 3}
    assert len(warnings) == 1 and "sub-01_T1w.json could not be read" in warnings[0]


def test_plain_mode_reads_only_the_same_name_sidecar(tmp_path, mni_small):
    path = write_nifti(tmp_path / "x" / "t1.nii.gz", mni_small)
    write_json(tmp_path / "x" / "t1.json", {"Manufacturer": "A"})
    scan = Scan(
        path=path,
        entities={"suffix": "T1w"},
        sidecar=tmp_path / "x" / "t1.json",
        bids=False,
        root=tmp_path,
    )
    assert read_metadata(scan) == ({"Manufacturer": "A"}, [])
    assert scan.source == "x/t1.nii.gz"


def test_persistent_pybids_index_is_reused(small_bids, tmp_path):
    db = tmp_path / "db"
    first = discover(small_bids, database_dir=db)
    assert db.is_dir() and any(db.iterdir())
    second = discover(small_bids, database_dir=db)
    assert [s.source for s in second.scans] == [s.source for s in first.scans]


def test_discovery_never_writes_to_the_input(small_bids):
    from conftest import snapshot

    before = snapshot(small_bids)
    discover(small_bids)
    discover(small_bids, skip_bids_validation=True)
    assert snapshot(small_bids) == before
    assert (
        json.loads((small_bids / "dataset_description.json").read_text(encoding="utf-8"))["Name"]
        == "test"
    )


def test_scan_record_is_hashable_and_frozen(tmp_path):
    scan = Scan(
        path=Path("/d/sub-01_T1w.nii.gz"),
        entities={"suffix": "T1w", "subject": "01"},
        root=Path("/d"),
    )
    assert hash(scan) == hash(Scan(path=Path("/d/sub-01_T1w.nii.gz"), entities={}, root=Path("/d")))
    with pytest.raises(AttributeError):
        scan.path = Path("/other")  # type: ignore[misc]


def test_docstring_examples():
    import doctest

    import bids_qa.derivatives
    import bids_qa.discover
    import bids_qa.plainpaths

    for module in (bids_qa.discover, bids_qa.derivatives, bids_qa.plainpaths):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_plain_ids_are_unique_for_equal_file_names(tmp_path, mni_small):
    root = tmp_path / "ms"
    for rel in (
        "patient01/study1_FLAIR.nii.gz",
        "patient03/study1_FLAIR.nii.gz",
        "patient04/study1_FLAIR.nii.gz",
        "patient04/study2_FLAIR.nii.gz",
        "visits/case7/visit2/flair.nii",
    ):
        write_nifti(root / rel, mni_small)
    found = discover(root)
    got = {s.source: s for s in found.scans}
    ids = [s.scan_id for s in found.scans]
    assert len(set(ids)) == len(ids) == 5
    assert got["patient01/study1_FLAIR.nii.gz"].scan_id == "patient01_study1_FLAIR"
    assert got["patient03/study1_FLAIR.nii.gz"].scan_id == "patient03_study1_FLAIR"
    assert [(s.subject, s.session) for s in found.scans] == [
        ("patient01", "study1"),
        ("patient03", "study1"),
        ("patient04", "study1"),
        ("patient04", "study2"),
        ("case7", "visit2"),
    ]
    # stable: a new file elsewhere changes no existing id
    write_nifti(root / "study1_FLAIR.nii.gz", mni_small)
    again = {s.source: s.scan_id for s in discover(root).scans}
    assert all(again[source] == scan.scan_id for source, scan in got.items())
    assert again["study1_FLAIR.nii.gz"] == "study1_FLAIR"
    # and the outputs of the three patients land in three places
    from bids_qa.derivatives import plan_scan_paths

    planned, dropped = plan_scan_paths(tmp_path / "out", discover(root).scans)
    assert dropped == [] and len({p.json for _, p in planned}) == 6


def test_shortened_plain_ids_that_collide_fall_back_to_the_full_path(tmp_path, mni_small):
    root = tmp_path / "in"
    write_nifti(root / "sub-01" / "sub-01_T1w.nii.gz", mni_small)
    write_nifti(root / "sub-01_T1w.nii.gz", mni_small)
    ids = sorted(s.scan_id for s in discover(root).scans)
    assert ids == ["sub-01_T1w", "sub-01_sub-01_T1w"]


def test_sidecar_and_suffix_map_name_plain_files(tmp_path, mni_small):
    root = tmp_path / "in"
    write_nifti(root / "p1" / "series_0003.nii.gz", mni_small)
    write_json(root / "p1" / "series_0003.json", {"SeriesDescription": "AX T2 FLAIR"})
    write_nifti(root / "p1" / "series_0004.nii.gz", mni_small)
    found = {s.source: s.suffix for s in discover(root).scans}
    assert found == {"p1/series_0003.nii.gz": "FLAIR", "p1/series_0004.nii.gz": "unknown"}
    mapped = discover(root, suffix_map=(("*_0004*", "PDw"), ("*", "T1w")))
    assert {s.source: s.suffix for s in mapped.scans} == {
        "p1/series_0003.nii.gz": "T1w",
        "p1/series_0004.nii.gz": "PDw",
    }


def test_contrast_enhanced_t1_gets_a_ce_entity(tmp_path, mni_small):
    write_nifti(tmp_path / "patient07" / "T1POST_brain_MNI.nii.gz", mni_small)
    (scan,) = discover(tmp_path).scans
    assert scan.suffix == "T1w" and scan.entities["ceagent"] == "post"
    assert scan.subject == "patient07"


@pytest.mark.parametrize("bids", [False, True])
def test_symlink_loops_are_skipped_and_dangling_links_kept(bids_factory, tmp_path, mni_small, bids):
    if bids:
        root = bids_factory(scans=("sub-01/anat/sub-01_T1w.nii.gz",), extras=False)
        anat = root / "sub-01" / "anat"
    else:
        root = tmp_path / "plain"
        anat = root / "sub-01"
        write_nifti(anat / "sub-01_T1w.nii.gz", mni_small)
    (anat / "sub-01_T2w.nii.gz").symlink_to("sub-01_T2w.nii.gz")
    (anat / "sub-01_FLAIR.nii.gz").symlink_to(".git/annex/objects/XX/missing")
    found = discover(root)
    assert sorted(s.suffix for s in found.scans) == ["FLAIR", "T1w"]
    assert any("1 symbolic link(s) loop" in w and "sub-01_T2w" in w for w in found.warnings)


def test_unmatched_labels_are_warned_about(small_bids):
    found = discover(small_bids, participant_label=("99", "01"), run_id=("7",))
    assert {s.subject for s in found.scans} == {"01"}
    assert "--participant-label sub-99 matched no scan" in found.warnings
    assert not any("sub-01" in w for w in found.warnings)
    assert any(w.startswith("--run-id run-7 matched no scan") for w in found.warnings)


def test_unwritable_database_dir_is_exit_73(small_bids, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(FatalError) as info:
        discover(small_bids, database_dir=blocker / "db")
    assert info.value.code == 73 and "--bids-database-dir" in info.value.message
