"""dataset.yaml: a good manifest parses; every kind of mistake is refused by name."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from enclave.errors import EnclaveError
from ingestion.manifest import (
    DatasetManifest,
    ManifestError,
    SegmentationSpec,
    TableSpec,
    load_manifest,
)

GOOD = """\
name: demo-ct
title: Demo chest CT
description: Synthetic chest CT with body and lesion masks.
license: CC-BY-4.0
modality: CT
body_part: chest
tags: [demo, segmentation]
deidentification: {method: "enclave samples", profile: "DICOM PS3.15 Annex E Basic Profile"}
labels: {0: background, 1: body, 2: lesion}
segmentations:
  - {mask: segmentations/SUBJ-0001.nii.gz, series: dicom/SUBJ-0001/ct}
tables:
  - name: clinical
    path: tables/clinical.csv
    subject_id: subject_id
    links_imaging: true
    columns: {subject_id: string, age: integer, sex: string, outcome: integer}
    expectations: expectations/clinical.json
"""


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A dataset folder holding every file GOOD refers to."""
    (tmp_path / "dicom/SUBJ-0001/ct").mkdir(parents=True)
    (tmp_path / "segmentations").mkdir()
    (tmp_path / "segmentations/SUBJ-0001.nii.gz").write_bytes(b"")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables/clinical.csv").write_text("subject_id,age,sex,outcome\n")
    (tmp_path / "expectations").mkdir()
    (tmp_path / "expectations/clinical.json").write_text('{"expectations": []}')
    (tmp_path / "dataset.yaml").write_text(GOOD)
    return tmp_path


def refuse(root: Path, text: str | None = None) -> ManifestError:
    if text is not None:
        (root / "dataset.yaml").write_text(textwrap.dedent(text))
    with pytest.raises(ManifestError) as caught:
        load_manifest(root)
    assert isinstance(caught.value, EnclaveError)
    return caught.value


def replace(root: Path, old: str, new: str) -> None:
    text = (root / "dataset.yaml").read_text()
    assert old in text
    (root / "dataset.yaml").write_text(text.replace(old, new))


def test_good_manifest_parses_into_typed_fields(dataset_dir):
    manifest = load_manifest(dataset_dir)
    assert isinstance(manifest, DatasetManifest)
    assert manifest.name == "demo-ct"
    assert manifest.modality == "CT"
    assert manifest.body_part == "CHEST"
    assert manifest.tags == ("demo", "segmentation")
    assert manifest.labels == {0: "background", 1: "body", 2: "lesion"}
    assert manifest.subject_id == "PatientID"
    assert manifest.deidentification.profile == "DICOM PS3.15 Annex E Basic Profile"
    assert manifest.segmentations == (
        SegmentationSpec(mask="segmentations/SUBJ-0001.nii.gz", series="dicom/SUBJ-0001/ct"),
    )
    (table,) = manifest.tables
    assert table == TableSpec(
        name="clinical",
        path="tables/clinical.csv",
        subject_id="subject_id",
        links_imaging=True,
        columns={"subject_id": "string", "age": "integer", "sex": "string", "outcome": "integer"},
        expectations="expectations/clinical.json",
    )
    assert manifest.referenced_paths() == {
        "tables/clinical.csv": "table",
        "expectations/clinical.json": "expectations",
        "segmentations/SUBJ-0001.nii.gz": "segmentation",
    }
    assert manifest.to_dict()["labels"] == {"0": "background", "1": "body", "2": "lesion"}


def test_minimal_manifest_takes_defaults(tmp_path):
    (tmp_path / "dataset.yaml").write_text(
        "name: x1\ntitle: X\ndescription: Y\nlicense: CC0-1.0\nmodality: mr\n"
    )
    manifest = load_manifest(tmp_path)
    assert manifest.modality == "MR"
    assert (manifest.tables, manifest.segmentations, manifest.labels) == ((), (), {})


def test_missing_manifest_names_the_file(tmp_path):
    error = refuse(tmp_path)
    assert "dataset.yaml" in str(error) and "not found" in str(error)


def test_not_yaml_gives_the_line(dataset_dir):
    error = refuse(dataset_dir, "name: demo\ntitle: [unclosed\ndescription: x\n")
    assert "not valid YAML" in str(error)
    assert error.problems[0].line is not None


def test_yaml_tags_that_construct_objects_are_refused(dataset_dir):
    error = refuse(dataset_dir, "name: !!python/object/apply:os.system ['true']\n")
    assert "not valid YAML" in str(error)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", ""])
def test_not_a_mapping(dataset_dir, text):
    error = refuse(dataset_dir, text)
    assert "must be a mapping" in str(error)


@pytest.mark.parametrize("key", ["name", "title", "description", "license", "modality"])
def test_each_required_key_missing_or_empty(dataset_dir, key):
    lines = [ln for ln in GOOD.splitlines() if not ln.startswith(f"{key}:")]
    error = refuse(dataset_dir, "\n".join(lines) + "\n")
    assert [p.key for p in error.problems] == [key]
    assert "is required" in str(error)

    refuse_empty = GOOD.replace(
        next(ln for ln in GOOD.splitlines() if ln.startswith(f"{key}:")), f'{key}: ""'
    )
    error = refuse(dataset_dir, refuse_empty)
    assert [p.key for p in error.problems] == [key]
    assert error.problems[0].line is not None


@pytest.mark.parametrize("name", ["Demo-CT", "demo_ct", "-demo", "demo ct", "x" * 65])
def test_bad_name_slug(dataset_dir, name):
    replace(dataset_dir, "name: demo-ct", f"name: '{name}'")
    error = refuse(dataset_dir)
    assert error.problems[0].key == "name"
    assert error.problems[0].line == 1
    assert "not a valid dataset name" in str(error)


def test_unknown_modality_suggests_a_close_one(dataset_dir):
    replace(dataset_dir, "modality: CT", "modality: CTT")
    error = refuse(dataset_dir)
    assert "'CTT' is not a DICOM modality code" in str(error)
    assert "did you mean 'CT'" in str(error)
    assert error.problems[0].line == 5


def test_unknown_keys_are_named_with_suggestions(dataset_dir):
    replace(dataset_dir, "license:", "licence:")
    replace(dataset_dir, "    links_imaging: true", "    link_imaging: true")
    error = refuse(dataset_dir)
    messages = {p.key: p.message for p in error.problems}
    assert "did you mean 'license'" in messages["licence"]
    assert "did you mean 'links_imaging'" in messages["tables[0].link_imaging"]
    assert messages["license"] == "is required"


@pytest.mark.parametrize(
    "old, new, key, words",
    [
        ("tags: [demo, segmentation]", "tags: demo", "tags", "list"),
        (
            "    links_imaging: true",
            "    links_imaging: 'yes'",
            "tables[0].links_imaging",
            "true or false",
        ),
        (
            "outcome: integer}",
            "outcome: number}",
            "tables[0].columns.outcome",
            "type must be one of",
        ),
        ("labels: {0: background", "labels: {-1: background", "labels.-1", "whole numbers"),
        ("title: Demo chest CT", "title: {a: 1}", "title", "must be text"),
        ("tables:\n", "tables: clinical\nx_unused:\n", "tables", "list of tables"),
    ],
)
def test_wrong_types_name_the_key(dataset_dir, old, new, key, words):
    replace(dataset_dir, old, new)
    error = refuse(dataset_dir)
    assert key in [p.key for p in error.problems]
    assert words in str(error)


@pytest.mark.parametrize(
    "path, words",
    [
        ("../outside.csv", "contains '..'"),
        ("/etc/passwd", "is absolute"),
        ("tables/../../outside.csv", "contains '..'"),
        ("C:/data/clinical.csv", "is absolute"),
        ("tables\\clinical.csv", "backslashes"),
    ],
)
def test_paths_that_escape_the_dataset_are_refused(dataset_dir, path, words):
    (dataset_dir.parent / "outside.csv").write_text("subject_id\n")
    replace(dataset_dir, "path: tables/clinical.csv", f"path: '{path}'")
    error = refuse(dataset_dir)
    assert error.problems[0].key == "tables[0].path"
    assert words in str(error)


def test_symlink_out_of_the_dataset_is_refused(dataset_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    (outside / "clinical.csv").write_text("subject_id\n")
    (dataset_dir / "tables/clinical.csv").unlink()
    (dataset_dir / "tables/clinical.csv").symlink_to(outside / "clinical.csv")
    error = refuse(dataset_dir)
    assert "outside the dataset folder" in str(error)
    assert error.problems[0].key == "tables[0].path"


@pytest.mark.parametrize(
    "remove, key",
    [
        ("tables/clinical.csv", "tables[0].path"),
        ("expectations/clinical.json", "tables[0].expectations"),
        ("segmentations/SUBJ-0001.nii.gz", "segmentations[0].mask"),
    ],
)
def test_missing_referenced_file(dataset_dir, remove, key):
    (dataset_dir / remove).unlink()
    error = refuse(dataset_dir)
    assert [p.key for p in error.problems] == [key]
    assert f"'{remove}' does not exist" in str(error)


def test_missing_series_folder(dataset_dir):
    (dataset_dir / "dicom/SUBJ-0001/ct").rmdir()
    error = refuse(dataset_dir)
    assert error.problems[0].key == "segmentations[0].series"
    assert "is not a folder" in str(error)


def test_table_subject_column_must_be_declared_and_names_unique(dataset_dir):
    replace(dataset_dir, "columns: {subject_id: string, ", "columns: {")
    text = (dataset_dir / "dataset.yaml").read_text()
    text += "  - {name: clinical, path: tables/clinical.csv}\n"
    error = refuse(dataset_dir, text)
    messages = " / ".join(str(p) for p in error.problems)
    assert "does not declare the subject id column 'subject_id'" in messages
    assert "table name 'clinical' is used twice" in messages


def test_all_problems_are_reported_together(dataset_dir):
    replace(dataset_dir, "name: demo-ct", "name: Demo")
    replace(dataset_dir, "modality: CT", "modality: XYZ")
    (dataset_dir / "tables/clinical.csv").unlink()
    error = refuse(dataset_dir)
    assert len(error.problems) == 3
    assert str(error).startswith("dataset.yaml has 3 problems")


def test_subject_attribute_must_be_a_dicom_keyword(dataset_dir):
    text = GOOD + "subject_id: PatientIdentifier\n"
    error = refuse(dataset_dir, text)
    assert error.problems[0].key == "subject_id"
    assert "'PatientIdentifier' is not a DICOM attribute keyword" in str(error)
    (dataset_dir / "dataset.yaml").write_text(GOOD + "subject_id: OtherPatientIDs\n")
    assert load_manifest(dataset_dir).subject_id == "OtherPatientIDs"
