"""The de-identification verifier: every planted identifier is found, named by tag and file,
and its value never appears in a finding."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ingestion.report import ValidationReport
from ingestion.validators.deid import (
    DeidConsistency,
    basic_profile,
    check_deidentification,
    has_value,
    tag_label,
)
from tests.phi import PHI_KINDS, PHI_VALUES, plant_phi


@pytest.fixture
def clean_slice(ct_series) -> Dataset:
    return dcmread(ct_series[0])


def by_check(findings, check):
    return [f for f in findings if f.check == check]


def test_generated_slice_is_clean(clean_slice):
    assert check_deidentification(clean_slice, "series/0001.dcm") == []


@pytest.mark.parametrize(
    ("kind", "check", "tag", "severity"),
    [
        ("patient-name", "deid.person-name", "(0010,0010) PatientName", "error"),
        ("birth-date", "deid.patient-attribute", "(0010,0030) PatientBirthDate", "error"),
        ("private-tag", "deid.private-tag", "(0011,0010) PrivateCreator", "error"),
        ("overlay", "deid.repeating-group", "(6000,0010) OverlayRows", "error"),
        ("patient-address", "deid.basic-profile", "(0010,1040) PatientAddress", "error"),
        ("institution", "deid.dummy-value", "(0008,0080) InstitutionName", "warning"),
        (
            "identity-removed-missing",
            "deid.identity-removed",
            "(0012,0062) PatientIdentityRemoved",
            "error",
        ),
        ("burned-in-yes", "deid.burned-in-annotation", "(0028,0301) BurnedInAnnotation", "error"),
        (
            "sequence",
            "deid.person-name",
            "(0018,A001) ContributingEquipmentSequence[0] > (0008,1070) OperatorsName",
            "error",
        ),
    ],
)
def test_each_planted_identifier_is_found_by_tag_without_its_value(
    clean_slice, kind, check, tag, severity, assert_no_phi
):
    plant_phi(clean_slice, kind)
    findings = check_deidentification(clean_slice, "dicom/SUBJ-0001/0001.dcm")
    hits = by_check(findings, check)
    assert [(f.tag, f.severity, f.path) for f in hits] == [
        (tag, severity, "dicom/SUBJ-0001/0001.dcm")
    ], findings
    assert [f for f in findings if f.check != check] == []  # one finding per problem
    report = ValidationReport(dataset="demo", findings=findings)
    assert_no_phi(findings, report.to_json(), report.to_html())


def test_every_phi_kind_is_covered():
    assert set(PHI_KINDS) == set(PHI_VALUES)
    with pytest.raises(ValueError, match="unknown PHI kind"):
        plant_phi(Dataset(), "shoe-size")


def test_written_and_reread_phi_is_found_in_raw_elements(make_series, assert_no_phi):
    """Files read from disk keep raw, unconverted elements: the walk must see those too."""
    paths = make_series(phi=["patient-name", "birth-date", "sequence", "private-tag", "overlay"])
    ds = dcmread(paths[0])
    findings = check_deidentification(ds, "0001.dcm")
    assert {f.check for f in findings} == {
        "deid.person-name",
        "deid.patient-attribute",
        "deid.private-tag",
        "deid.repeating-group",
    }
    assert_no_phi(findings)


def test_private_tags_pass_only_when_allow_listed(clean_slice):
    plant_phi(clean_slice, "private-tag")
    assert by_check(check_deidentification(clean_slice, "f"), "deid.private-tag")
    by_tag = check_deidentification(clean_slice, "f", private_tag_allowlist={0x00111001})
    assert by_check(by_tag, "deid.private-tag") == []
    by_creator = check_deidentification(
        clean_slice, "f", private_tag_allowlist={("ACME_HOSPITAL_1", 0x0011, 0x01)}
    )
    assert by_check(by_creator, "deid.private-tag") == []
    wrong_creator = check_deidentification(
        clean_slice, "f", private_tag_allowlist={("OTHER_VENDOR", 0x0011, 0x01)}
    )
    assert len(by_check(wrong_creator, "deid.private-tag")) == 1


def test_private_tags_are_counted_per_group_not_listed_per_element(clean_slice):
    block = clean_slice.private_block(0x0019, "VENDOR_A", create=True)
    for offset in range(5):
        block.add_new(offset, "LO", "x")
    (finding,) = check_deidentification(clean_slice, "f")
    assert finding.check == "deid.private-tag"
    assert "6 private element(s) in group 0019" in finding.message  # 5 + the creator


def test_remove_action_with_empty_value_is_accepted(clean_slice):
    clean_slice.PatientAddress = ""
    clean_slice.ReferringPhysicianName = ""
    assert check_deidentification(clean_slice, "f") == []


def test_phi_nested_two_sequences_deep_is_found(clean_slice, assert_no_phi):
    inner = Dataset()
    inner.PatientBirthDate = PHI_VALUES["birth-date"]
    outer = Dataset()
    outer.CodeValue = "T-D3000"
    outer.CodingSchemeDesignator = "SRT"
    outer.CodeMeaning = "Chest"
    outer.PurposeOfReferenceCodeSequence = Sequence([inner])
    clean_slice.AnatomicRegionSequence = Sequence([Dataset(), outer])
    (finding,) = check_deidentification(clean_slice, "f")
    assert finding.tag == (
        "(0008,2218) AnatomicRegionSequence[1] > (0040,A170) PurposeOfReferenceCodeSequence[0] "
        "> (0010,0030) PatientBirthDate"
    )
    assert_no_phi(finding)


def test_removal_sequence_with_items_is_one_finding(clean_slice):
    item = Dataset()
    item.PatientID = "OTHER-ID-123"
    clean_slice.OtherPatientIDsSequence = Sequence([item])
    (finding,) = check_deidentification(clean_slice, "f")
    assert finding.check == "deid.basic-profile"
    assert finding.tag == "(0010,1002) OtherPatientIDsSequence"
    assert "OTHER-ID-123" not in repr(finding)


def test_declaration_needs_yes_and_a_method(clean_slice):
    clean_slice.PatientIdentityRemoved = "NO"
    del clean_slice.DeidentificationMethod
    checks = {f.check for f in check_deidentification(clean_slice, "f")}
    assert checks == {"deid.identity-removed"}  # the code sequence still names the method
    del clean_slice.DeidentificationMethodCodeSequence
    checks = {f.check for f in check_deidentification(clean_slice, "f")}
    assert checks == {"deid.identity-removed", "deid.method"}


def test_burned_in_annotation_missing_holds_images_but_not_other_objects(clean_slice):
    del clean_slice.BurnedInAnnotation
    (finding,) = check_deidentification(clean_slice, "f")
    assert finding.check == "deid.burned-in-annotation" and "missing" in finding.message
    assert finding.severity == "error" and "pixel review" in finding.message
    del clean_slice.PixelData  # a structured report or plan has no pixels to burn text into
    assert check_deidentification(clean_slice, "f") == []


def test_consistency_finds_reused_sop_uid_and_mixed_subjects():
    c = DeidConsistency()
    c.add_identifiers(
        "a.dcm",
        study_uid="1.2.1",
        series_uid="1.2.1.1",
        sop_instance_uid="1.2.9",
        patient_id="SUBJ-0001",
    )
    c.add_identifiers(
        "b.dcm",
        study_uid="1.2.1",
        series_uid="1.2.1.1",
        sop_instance_uid="1.2.9",
        patient_id="SUBJ-0001",
    )
    c.add_identifiers(
        "c.dcm",
        study_uid="1.2.1",
        series_uid="1.2.1.2",
        sop_instance_uid="1.2.10",
        patient_id="SUBJ-0002",
    )
    c.add_identifiers(
        "d.dcm",
        study_uid="1.2.2",
        series_uid="1.2.1.1",
        sop_instance_uid="1.2.11",
        patient_id="SUBJ-0003",
    )
    found = [(f.path, f.tag) for f in c.findings()]
    assert found == [
        ("b.dcm", "(0008,0018) SOPInstanceUID"),
        ("c.dcm", "(0010,0020) PatientID"),
        ("d.dcm", "(0020,000D) StudyInstanceUID"),
    ]
    messages = " ".join(f.message for f in c.findings())
    assert "a.dcm" in messages and "1.2.9" not in messages and "SUBJ-000" not in messages


def test_consistency_accepts_a_clean_series(ct_series):
    c = DeidConsistency()
    for p in ct_series:
        c.add(dcmread(p), p.name)
    assert c.findings() == []


def test_basic_profile_table_has_the_standard_actions():
    table = basic_profile()
    assert len(table) > 600
    assert table[0x00100010] == ("PatientName", "Z")
    assert table[0x00100020] == ("PatientID", "Z/D")
    assert table[0x00101040] == ("PatientAddress", "X")
    assert table[0x0020000D] == ("StudyInstanceUID", "U")
    assert table[0x00080080] == ("InstitutionName", "X/Z/D")
    assert 0x00120062 not in table  # the declaration itself is kept


def test_tag_labels_and_empty_values():
    assert tag_label(0x00100010) == "(0010,0010) PatientName"
    assert tag_label(0x00191002) == "(0019,1002) private"
    assert tag_label(0x00190010) == "(0019,0010) PrivateCreator"
    ds = Dataset()
    ds.PatientName = "^^^"
    ds.OtherPatientIDs = ["", ""]
    ds.Rows = 0
    assert not has_value(ds["PatientName"], "PN")
    assert not has_value(ds["OtherPatientIDs"], "LO")
    assert has_value(ds["Rows"], "US")
