"""Outputs of de-identifiers providers use (Kitware's dicom-anonymizer, pydicom/deid's default
recipe) over pydicom's CT and MR test files: each is refused with a report naming exactly what
the tool left, and the option that would have allowed a kept characteristic."""

from __future__ import annotations

import warnings
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file

from ingestion.validators.dicom import validate_dicom_files

SOURCES = [str(get_testdata_file(n, download=False)) for n in ("CT_small.dcm", "MR_small.dcm")]


def errors_by_tag(root: Path, files: list[Path]) -> set[tuple[str, str]]:
    result = validate_dicom_files(root, files, workers=1)
    return {(f.check, str(f.tag)) for f in result.findings if f.severity == "error"}


def test_dicom_anonymizer_output_is_refused_for_the_declaration_it_does_not_write(tmp_path):
    from dicomanonymizer import anonymize_dataset

    files = []
    for src in SOURCES:
        ds = dcmread(src)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            anonymize_dataset(ds, delete_private_tags=True)
        files.append(tmp_path / Path(src).name)
        ds.save_as(files[-1])
    found = errors_by_tag(tmp_path, files)
    assert ("deid.identity-removed", "(0012,0062) PatientIdentityRemoved") in found
    assert ("deid.method", "(0012,0063) DeidentificationMethod") in found
    assert ("deid.patient-attribute", "(0010,0030) PatientBirthDate") in found  # a dummy date
    assert not any(check == "deid.private-tag" for check, _ in found)


def test_deid_default_recipe_output_is_refused_naming_what_it_kept(tmp_path):
    from deid.dicom import replace_identifiers

    out = tmp_path / "out"
    out.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = replace_identifiers(
            dicom_files=SOURCES, save=True, output_folder=str(out), remove_private=True
        )
    files = [Path(p) for p in written]
    result = validate_dicom_files(out, files, workers=1)
    found = {(f.check, str(f.tag)) for f in result.findings if f.severity == "error"}
    assert ("deid.basic-profile", "(0010,1030) PatientWeight") in found
    assert ("deid.basic-profile", "(0008,1030) StudyDescription") in found
    weight = next(f for f in result.findings if str(f.tag) == "(0010,1030) PatientWeight")
    assert "Retain Patient Characteristics Option (DCM 113108)" in weight.message
    description = next(f for f in result.findings if str(f.tag) == "(0008,1030) StudyDescription")
    assert "Clean Descriptors Option (DCM 113105)" in description.message


def dicom_anonymizer_recipe() -> dict:
    """docs/providers.md's recipe for dicom-anonymizer 2.1.0: extra rules that remove the
    dates and times its table removes (it writes 00010101 instead, by design), empty every
    person name and PatientBirthDate."""
    from dicomanonymizer.simpledicomanonymizer import initialize_actions, keep
    from pydicom.datadict import dictionary_VR

    def drop(dataset, tag):
        if tag in dataset:
            del dataset[tag]

    def blank(dataset, tag):
        if tag in dataset:
            dataset[tag].value = ""

    def vr(tag) -> str:
        try:
            return dictionary_VR(tag)
        except KeyError:
            return ""

    rules = {}
    for tag, action in initialize_actions().items():
        if len(tag) != 2 or action is keep:
            continue
        if vr(tag) in ("DA", "DT", "TM") and action.__name__.startswith("delete"):
            rules[tag] = drop
        elif vr(tag) == "PN":
            rules[tag] = blank
    rules[(0x0010, 0x0030)] = blank  # PatientBirthDate: empty, never a dummy
    return rules


def test_dicom_anonymizer_with_the_documented_recipe_passes_with_no_error(tmp_path):
    from dicomanonymizer import anonymize_dataset

    rules = dicom_anonymizer_recipe()
    files = []
    for src in SOURCES:
        ds = dcmread(src)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            anonymize_dataset(ds, rules, delete_private_tags=True)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "dicom-anonymizer 2.1.0 with the Enclave recipe"
        ds.BurnedInAnnotation = "NO"  # after reviewing the pixels
        files.append(tmp_path / Path(src).name)
        ds.save_as(files[-1])
    result = validate_dicom_files(tmp_path, files, workers=1)
    errors = [f"{f.check} {f.tag}: {f.message}" for f in result.findings if f.severity == "error"]
    assert errors == []
    # What stays is dummies the verifier asks a person to confirm, never an error.
    assert {f.check for f in result.findings} <= {"deid.dummy-value"}
