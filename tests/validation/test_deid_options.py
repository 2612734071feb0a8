"""Profile options: an attribute kept is accepted only under an option the file declares and
the provider may use, and every refusal names the option that would have allowed it."""

from __future__ import annotations

import json

import pytest
import yaml
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from enclave.samples import make_sample_dataset
from ingestion.validate import validate_dataset
from ingestion.validators.deid import check_deidentification, declared_options
from ingestion.validators.deid_options import (
    DeidOption,
    DeidPolicy,
    option_table,
    safe_private_keys,
    safe_private_table,
)

PATIENT = DeidOption.RETAIN_PATIENT_CHARACTERISTICS
SAFE_PRIVATE = DeidOption.RETAIN_SAFE_PRIVATE


def declare(ds: Dataset, *options: DeidOption) -> Dataset:
    """Write the Basic Profile code and ``options`` into DeidentificationMethodCodeSequence."""
    items = []
    for value, meaning in [("113100", "Basic Application Confidentiality Profile")] + [
        (o.code, o.meaning) for o in options
    ]:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    return ds


@pytest.fixture
def with_characteristics(ct_series) -> Dataset:
    ds = dcmread(ct_series[0])
    ds.PatientAge, ds.PatientWeight, ds.PatientSize = "063Y", "71.5", "1.72"
    return ds


def errors(findings, check=None):
    return [f for f in findings if f.severity == "error" and (check is None or f.check == check)]


def test_kept_patient_characteristics_are_refused_naming_the_option_that_would_allow_them(
    with_characteristics,
):
    findings = check_deidentification(
        declare(with_characteristics), "s/1.dcm", policy=DeidPolicy.of((), [PATIENT])
    )
    refused = errors(findings, "deid.basic-profile")
    assert {f.tag for f in refused} == {
        "(0010,1010) PatientAge",
        "(0010,1020) PatientSize",
        "(0010,1030) PatientWeight",
    }
    for f in refused:
        assert "Retain Patient Characteristics Option (DCM 113108)" in f.message
        assert "this provider may use it" in f.message
        assert "063Y" not in f.message and "71.5" not in f.message


def test_a_declared_and_allowed_option_keeps_what_its_column_keeps(with_characteristics):
    ds = declare(with_characteristics, PATIENT)
    assert declared_options(ds).options == {PATIENT}
    findings = check_deidentification(ds, "s/1.dcm", policy=DeidPolicy.of((), ["113108"]))
    assert errors(findings) == []


def test_a_declared_option_the_provider_may_not_use_is_an_error_and_keeps_nothing(
    with_characteristics,
):
    ds = declare(with_characteristics, PATIENT)
    findings = check_deidentification(ds, "s/1.dcm", policy=DeidPolicy.of((), []))
    (not_allowed,) = errors(findings, "deid.option-not-allowed")
    assert "Retain Patient Characteristics Option (DCM 113108)" in not_allowed.message
    refused = errors(findings, "deid.basic-profile")
    assert len(refused) == 3
    assert all("declared, but this provider is not allowed it" in f.message for f in refused)


def test_an_option_keeps_only_its_own_attributes(with_characteristics):
    ds = declare(with_characteristics, DeidOption.RETAIN_DEVICE_IDENTITY)
    findings = check_deidentification(ds, "s/1.dcm", policy=DeidPolicy.of((), ["113109"]))
    assert len(errors(findings, "deid.basic-profile")) == 3


def test_clean_descriptors_allows_a_series_description(ct_series):
    ds = dcmread(ct_series[0])
    ds.SeriesDescription = "CT chest with contrast"
    plain = check_deidentification(declare(ds), "s/1.dcm", policy=DeidPolicy.of((), ["113105"]))
    (refused,) = errors(plain)
    assert refused.tag == "(0008,103E) SeriesDescription"
    assert "Clean Descriptors Option (DCM 113105)" in refused.message
    declared = declare(ds, DeidOption.CLEAN_DESCRIPTORS)
    assert (
        errors(check_deidentification(declared, "s/1.dcm", policy=DeidPolicy.of((), ["113105"])))
        == []
    )


@pytest.fixture
def gems_slice() -> Dataset:
    """pydicom's CT_small (a GE CT with nine GEMS private blocks), made otherwise acceptable."""
    ds = dcmread(str(get_testdata_file("CT_small.dcm", download=False)))
    ds.PatientName, ds.PatientBirthDate = "", ""
    for kw in ("OtherPatientIDs", "PatientAddress"):
        if kw in ds:
            delattr(ds, kw)
    ds.PatientIdentityRemoved, ds.BurnedInAnnotation = "YES", "NO"
    return ds


def test_retain_safe_private_keeps_the_standards_safe_list_and_nothing_else(gems_slice):
    policy = DeidPolicy.of((), [SAFE_PRIVATE])
    without = check_deidentification(declare(gems_slice), "ct.dcm", policy=policy)
    private = errors(without, "deid.private-tag")
    assert private, "CT_small carries GE private blocks"
    advised = [f for f in private if "Retain Safe Private list" in f.message]
    assert advised and all("DCM 113111" in f.message for f in advised)

    withopt = check_deidentification(declare(gems_slice, SAFE_PRIVATE), "ct.dcm", policy=policy)
    still = errors(withopt, "deid.private-tag")
    # Fewer private elements refused, but GE's identifying blocks (GEMS_IDEN_01...) still are.
    assert len(still) <= len(private)
    refused_count = sum(int(f.message.split()[0]) for f in still)
    before_count = sum(int(f.message.split()[0]) for f in private)
    safe = [
        e.tag
        for e in gems_slice
        if e.tag.is_private
        and e.tag.element >= 0x1000
        and (
            str(gems_slice[(e.tag.group << 16) | (e.tag.element >> 8)].value).strip(),
            e.tag.group,
            e.tag.element & 0xFF,
        )
        in safe_private_keys()
    ]
    creators = {(t.group, t.element >> 8) for t in safe}  # kept with what they define
    assert safe
    assert refused_count == before_count - len(safe) - len(creators)


def test_the_safe_private_list_is_the_standards_table_less_bulk_data():
    rows = safe_private_table()
    assert ("GEMS_PARM_01", 0x0043, 0x27) in safe_private_keys()
    assert ("SIEMENS MR HEADER", 0x0019, 0x0C) in safe_private_keys()
    bulk = [r for r in rows if r.vr == "OB"]
    assert bulk and all((r.creator, r.group, r.offset) not in safe_private_keys() for r in bulk)


def test_option_columns_cover_dates_characteristics_and_descriptors():
    table = option_table()
    assert table[0x00080022] == {
        DeidOption.RETAIN_LONGITUDINAL_FULL_DATES: "K",
        DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: "C",
    }
    assert table[0x00101010] == {PATIENT: "K"}
    assert table[0x0008103E] == {DeidOption.CLEAN_DESCRIPTORS: "C"}
    assert 0x00100010 not in table  # a patient's name is never kept


def test_option_parsing_accepts_codes_names_and_scheme_prefixes_and_names_a_bad_one():
    assert DeidOption.parse("113108") is PATIENT
    assert DeidOption.parse("DCM:113108") is PATIENT
    assert DeidOption.parse("retain-patient-characteristics") is PATIENT
    with pytest.raises(ValueError, match="'keep-everything'"):
        DeidOption.parse("keep-everything")


def _dataset_with(tmp_path, header_options, manifest_options):
    def edit(ds: Dataset) -> None:
        ds.PatientAge = "063Y"
        declare(ds, *header_options)

    root = make_sample_dataset(
        tmp_path / "ds",
        subjects=1,
        slices=2,
        size=16,
        with_segmentation=False,
        with_table=False,
        edit_header=edit,
    )
    manifest_path = root / "dataset.yaml"
    data = yaml.safe_load(manifest_path.read_text())
    data.setdefault("deidentification", {})["options"] = manifest_options
    manifest_path.write_text(yaml.safe_dump(data))
    return root


def test_a_dataset_declaring_an_allowed_option_in_files_and_manifest_passes(tmp_path):
    root = _dataset_with(tmp_path, [PATIENT], ["retain-patient-characteristics"])
    outcome = validate_dataset(root, allowed_options=["113108"])
    assert outcome.report.errors == [], [f.to_dict() for f in outcome.report.errors]
    assert outcome.manifest.deidentification.options == ("113108",)


def test_files_declaring_an_option_the_manifest_does_not_list_are_refused(tmp_path):
    root = _dataset_with(tmp_path, [PATIENT], [])
    outcome = validate_dataset(root, allowed_options=["113108"])
    (undeclared,) = [f for f in outcome.report.errors if f.check == "deid.option-undeclared"]
    assert "2 DICOM file(s)" in undeclared.message and "113108" in undeclared.message


def test_a_manifest_option_the_provider_may_not_use_is_refused_with_every_kept_attribute(tmp_path):
    root = _dataset_with(tmp_path, [PATIENT], ["113108"])
    outcome = validate_dataset(root, allowed_options=[])
    checks = sorted({f.check for f in outcome.report.errors})
    assert checks == ["deid.basic-profile", "deid.option-not-allowed"]
    report = json.dumps([f.to_dict() for f in outcome.report.findings])
    assert "063Y" not in report
