"""The validation orchestrator on whole datasets built by enclave.samples.

A good dataset passes and gets a radiomics table; a dataset with problems gets every problem
as a finding (never a PHI value), no derived table, and a stable content hash.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from enclave.samples import make_sample_dataset
from ingestion.validate import content_hash, validate_dataset
from tests.phi import PHI_VALUES, planting


@pytest.fixture(scope="module")
def sample_template(tmp_path_factory) -> Path:
    """A two-subject sample dataset, built once; tests work on copies."""
    return make_sample_dataset(tmp_path_factory.mktemp("samples"), subjects=2, slices=16, size=48)


@pytest.fixture
def dataset(sample_template, tmp_path) -> Path:
    copy = tmp_path / "demo-ct"
    shutil.copytree(sample_template, copy)
    return copy


def errors_of(outcome, check: str | None = None):
    return [f for f in outcome.report.errors if check is None or f.check == check]


def test_good_dataset_passes_with_inventory_series_and_radiomics(dataset):
    stages = set()
    outcome = validate_dataset(
        dataset, transfer_id="tr-1", progress=lambda stage, done, total: stages.add(stage)
    )
    report = outcome.report

    assert report.passed, [f.to_dict() for f in report.errors]
    assert report.dataset == "demo-ct" and report.transfer_id == "tr-1"
    assert outcome.manifest.name == "demo-ct"
    assert stages >= {"manifest", "files", "dicom", "tables", "radiomics"}

    kinds = {}
    for entry in outcome.files:
        kinds.setdefault(entry["kind"], []).append(entry["path"])
        assert len(entry["sha256"]) == 64 and entry["size"] > 0
    assert kinds["manifest"] == ["dataset.yaml", "expectations/clinical.json"]
    assert kinds["table"] == ["tables/clinical.csv"]
    assert kinds["segmentation"] == [
        "segmentations/SUBJ-0001.nii.gz",
        "segmentations/SUBJ-0002.nii.gz",
    ]
    assert kinds["derived"] == ["derived/radiomics.parquet"]
    assert len(kinds["dicom"]) == 32
    dicom_entry = next(f for f in outcome.files if f["kind"] == "dicom")
    assert dicom_entry["subject_id"].startswith("SUBJ-") and dicom_entry["series_uid"]

    assert len(outcome.series) == 2
    assert {s["directory"] for s in outcome.series} == {
        "dicom/SUBJ-0001/series-001",
        "dicom/SUBJ-0002/series-001",
    }
    assert outcome.tables == [
        {
            "name": "clinical",
            "path": "tables/clinical.csv",
            "rows": 2,
            "columns": ["subject_id", "age", "sex", "outcome"],
        }
    ]
    (features,) = outcome.feature_tables
    assert features["path"] == "derived/radiomics.parquet" and features["rows"] == 4

    summary = report.summary
    assert summary["files"] == 37  # 32 slices, 2 masks, table, suite, dataset.yaml
    assert summary["dicom_files"] == 32
    assert (summary["series"], summary["studies"], summary["subjects"]) == (2, 2, 2)
    assert (summary["tables"], summary["table_rows"]) == (1, 2)
    assert summary["bytes"] == sum(f["size"] for f in outcome.files if f["kind"] != "derived")
    assert set(summary["seconds"]) == {"manifest", "files", "dicom", "tables", "radiomics"}
    assert summary["content_hash"] == outcome.content_hash
    json.loads(report.to_json())


def test_content_hash_depends_on_names_and_contents_only(dataset, tmp_path):
    first = validate_dataset(dataset)
    # second run: derived/ from the first run is replaced, mtimes differ, same hash
    past = time.time() - 86400
    for path in dataset.rglob("*"):
        os.utime(path, (past, past))
    second = validate_dataset(dataset)
    assert first.content_hash == second.content_hash
    assert len(first.content_hash) == 64

    moved = tmp_path / "elsewhere" / "demo-ct"
    shutil.copytree(dataset, moved)
    assert validate_dataset(moved).content_hash == first.content_hash

    table = moved / "tables/clinical.csv"
    table.write_bytes(table.read_bytes() + b"\n")  # one byte more, same rows
    assert validate_dataset(moved).content_hash != first.content_hash


def test_content_hash_is_order_independent():
    files = [
        {"path": "b.dcm", "sha256": "1" * 64, "kind": "dicom"},
        {"path": "a.csv", "sha256": "2" * 64, "kind": "table"},
        {"path": "derived/radiomics.parquet", "sha256": "3" * 64, "kind": "derived"},
    ]
    assert content_hash(files) == content_hash(files[::-1]) == content_hash(files[:2])
    renamed = [dict(files[0], path="c.dcm"), files[1]]
    assert content_hash(renamed) != content_hash(files)


def test_manifest_error_stops_validation_gracefully(dataset):
    manifest = dataset / "dataset.yaml"
    manifest.write_text(manifest.read_text().replace("modality: CT", "modality: CTT"))
    outcome = validate_dataset(dataset)

    assert not outcome.report.passed
    (error,) = outcome.report.errors
    assert error.check == "manifest" and error.path == "dataset.yaml" and error.tag == "modality"
    assert "'CTT' is not a DICOM modality code" in error.message
    assert outcome.manifest is None
    assert outcome.series == [] and outcome.feature_tables == []
    assert len(outcome.files) == 37 and outcome.content_hash
    assert "dicom" not in outcome.report.summary["seconds"]
    assert not (dataset / "derived").exists()


def test_missing_folder_is_a_finding(tmp_path):
    outcome = validate_dataset(tmp_path / "nope")
    assert [f.check for f in outcome.report.errors] == ["dataset.folder"]


def test_dataset_with_problems_reports_each_and_skips_radiomics(tmp_path):
    root = make_sample_dataset(
        tmp_path, subjects=2, slices=8, size=32, edit_header=planting("patient-name")
    )
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "notes.txt").write_text("scanner notes\n")
    (root / "tools").mkdir()
    (root / "tools/run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "derived").mkdir()
    (root / "derived/mine.csv").write_text("a\n1\n")
    (root / "link.csv").symlink_to(root / "tables/clinical.csv")
    # a DICOM file whose preamble is a Windows executable header (PE/DICOM polyglot)
    slice_path = next((root / "dicom/SUBJ-0001/series-001").iterdir())
    data = bytearray(slice_path.read_bytes())
    data[:2] = b"MZ"
    slice_path.write_bytes(bytes(data))
    table = root / "tables/clinical.csv"
    table.write_text(table.read_text() + "SUBJ-0099,50,F,0\n")

    outcome = validate_dataset(root)
    report = outcome.report
    checks = {(f.check, f.path) for f in report.errors}

    assert ("files.hidden", ".DS_Store") in checks
    assert ("files.executable", "tools/run.sh") in checks
    assert ("files.executable", slice_path.relative_to(root).as_posix()) in checks
    assert ("files.reserved", "derived/mine.csv") in checks
    assert ("files.symlink", "link.csv") in checks
    assert any(f.check.startswith("deid") for f in report.errors)
    linkage = errors_of(outcome, "table.linkage")
    assert (
        len(linkage) == 1
        and "1 subject(s) have no DICOM images in the dataset (e.g. SUBJ-0099)"
        in linkage[0].message
    )
    undeclared = [f.path for f in report.findings if f.check == "files.undeclared"]
    assert undeclared == ["notes.txt", "tools/run.sh"]
    assert [f.check for f in report.findings if f.check == "radiomics.skipped"] == [
        "radiomics.skipped"
    ]
    assert outcome.feature_tables == []
    assert not (root / "derived/radiomics.parquet").exists()
    assert all(not f["path"].startswith(".") and f["path"] != "link.csv" for f in outcome.files)

    text = report.to_json() + report.to_html()
    assert PHI_VALUES["patient-name"] not in text
    assert "Doe" not in text


def test_table_phi_fails_the_dataset_without_copying_values(dataset):
    table = dataset / "tables/clinical.csv"
    lines = table.read_text().splitlines()
    lines[0] += ",contact"
    lines[1] += ",jane.doe.planted@example.org"
    lines[2] += ","
    table.write_text("\n".join(lines) + "\n")

    outcome = validate_dataset(dataset)

    checks = {f.check for f in outcome.report.errors}
    assert "table.phi-value" in checks
    assert "table.expectation" in checks  # the suite's ordered column list no longer matches
    assert "jane.doe.planted" not in outcome.report.to_json()
    assert outcome.feature_tables == []
