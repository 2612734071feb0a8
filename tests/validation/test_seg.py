"""Datasets whose segmentations are DICOM SEG objects, through validate_dataset end to end."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from enclave.samples import make_ct_series, make_dicom_seg, make_sample_dataset, samples
from ingestion.validate import validate_dataset
from tests.phi import PHI_VALUES

SEG = "segmentations/SUBJ-0001.dcm"


class SampleOptions(TypedDict):
    subjects: int
    slices: int
    size: int
    with_table: bool
    seed: int


SAMPLE: SampleOptions = {"subjects": 2, "slices": 10, "size": 32, "with_table": False, "seed": 3}


@pytest.fixture(scope="module")
def seg_and_nifti_datasets(tmp_path_factory) -> tuple[Path, Path]:
    """The same two-subject dataset twice, masks as DICOM SEG and as NIfTI; read-only."""
    base = tmp_path_factory.mktemp("seg")
    seg = make_sample_dataset(base / "seg", segmentation_format="dicom-seg", **SAMPLE)
    nifti = make_sample_dataset(base / "nifti", segmentation_format="nifti", **SAMPLE)
    return seg, nifti


@pytest.fixture
def seg_dataset(seg_and_nifti_datasets, tmp_path) -> Path:
    """A private copy of the SEG dataset, free to tamper with."""
    return Path(shutil.copytree(seg_and_nifti_datasets[0], tmp_path / "demo-ct"))


def edit_seg(root: Path, change) -> None:
    path = root / SEG
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def errors_of(outcome) -> list:
    return [f for f in outcome.report.findings if f.severity == "error"]


def test_seg_dataset_passes_and_features_equal_the_nifti_masks(seg_and_nifti_datasets, tmp_path):
    seg_root, nifti_root = (
        Path(shutil.copytree(d, tmp_path / name / "demo-ct"))
        for d, name in zip(seg_and_nifti_datasets, ("seg", "nifti"), strict=True)
    )

    seg, nifti = validate_dataset(seg_root), validate_dataset(nifti_root)

    assert seg.passed, errors_of(seg)
    assert nifti.passed, errors_of(nifti)
    # a correct SEG raises nothing but the dummy its IOD requires (DeviceSerialNumber, Type 1)
    warnings = {(f.check, f.tag) for f in seg.report.findings if f.severity == "warning"}
    assert warnings == {("deid.dummy-value", "(0018,1000) DeviceSerialNumber")}
    kinds = {f["path"]: f["kind"] for f in seg.files}
    assert kinds[SEG] == "segmentation"
    assert seg.report.summary["feature_rows"] == 4

    keys = ["subject_id", "series_uid", "label"]
    a = pd.read_parquet(seg_root / "derived/radiomics.parquet").sort_values(keys)
    b = pd.read_parquet(nifti_root / "derived/radiomics.parquet").sort_values(keys)
    assert list(a["label_name"]) == list(b["label_name"]) == ["body", "lesion"] * 2
    assert a[keys].values.tolist() == b[keys].values.tolist()
    features = [c for c in a.columns if c.startswith("original_")]
    assert len(features) == 56  # firstorder, shape, glcm
    np.testing.assert_allclose(a[features].to_numpy(), b[features].to_numpy(), rtol=1e-6)


def test_sample_seg_keeps_software_equipment(seg_and_nifti_datasets):
    ds = pydicom.dcmread(seg_and_nifti_datasets[0] / SEG)
    assert ds.BurnedInAnnotation == "NO" and ds.PatientIdentityRemoved == "YES"
    makers = [item.Manufacturer for item in ds.ContributingEquipmentSequence]
    assert len(makers) == 2  # the source scanner and the highdicom library: both accepted
    for item in ds.ContributingEquipmentSequence:
        assert "InstitutionName" not in item and "ContributionDateTime" not in item


def plant_equipment_institution(ds: Dataset) -> None:
    ds.ContributingEquipmentSequence[0].InstitutionName = PHI_VALUES["institution"]


def plant_equipment_operator(ds: Dataset) -> None:
    ds.ContributingEquipmentSequence[1].OperatorsName = PHI_VALUES["sequence"]


def plant_patient_name(ds: Dataset) -> None:
    ds.PatientName = PHI_VALUES["patient-name"]


def plant_private(ds: Dataset) -> None:
    ds.private_block(0x0011, "ACME_HOSPITAL_1", create=True).add_new(
        0x01, "LO", PHI_VALUES["private-tag"]
    )


def plant_acquisition_date(ds: Dataset) -> None:
    ds.ContributingEquipmentSequence[0].ContributionDateTime = PHI_VALUES["birth-date"] + "0930"


@pytest.mark.parametrize(
    ("plant", "check", "tag"),
    [
        (plant_patient_name, "deid.person-name", "(0010,0010) PatientName"),
        (
            plant_equipment_institution,
            "deid.contributing-equipment",
            "(0018,A001) ContributingEquipmentSequence[0] > (0008,0080) InstitutionName",
        ),
        (
            plant_equipment_operator,
            "deid.person-name",
            "(0018,A001) ContributingEquipmentSequence[1] > (0008,1070) OperatorsName",
        ),
        (plant_private, "deid.private-tag", "(0011,0010) PrivateCreator"),
        (
            plant_acquisition_date,
            "deid.basic-profile",
            "(0018,A001) ContributingEquipmentSequence[0] > (0018,A002) ContributionDateTime",
        ),
    ],
    ids=[
        "patient-name",
        "equipment-institution",
        "equipment-operator",
        "private-tag",
        "acquisition-date",
    ],
)
def test_seg_with_phi_is_refused_naming_the_tag(seg_dataset, assert_no_phi, plant, check, tag):
    edit_seg(seg_dataset, plant)

    outcome = validate_dataset(seg_dataset)

    assert not outcome.passed
    assert (check, SEG, tag) in {(f.check, f.path, f.tag) for f in errors_of(outcome)}
    assert not (seg_dataset / "derived/radiomics.parquet").exists()
    assert_no_phi(outcome.report.to_json(), outcome.report.to_html())


def test_highdicom_defaults_are_named_one_by_one(seg_dataset):
    """What highdicom writes that a de-identified SEG must not keep (the sample removes it)."""
    series = sorted((seg_dataset / "dicom/SUBJ-0001/series-001").glob("*.dcm"))
    source = pydicom.dcmread(series[0])
    source.InstitutionName = PHI_VALUES["institution"]  # copied into the equipment item
    source.save_as(series[0], enforce_file_format=True)
    labels = np.zeros((len(series), 32, 32), np.uint8)
    labels[3:6, 10:20, 10:20] = 1
    import highdicom as hd
    from pydicom.sr.codedict import codes

    seg = hd.seg.Segmentation(
        source_images=[pydicom.dcmread(p) for p in series],
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="lesion",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lesion,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=9,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="m",
        manufacturer_model_name="m",
        software_versions="1",
        device_serial_number="0",
    )
    seg.save_as(seg_dataset / SEG)

    outcome = validate_dataset(seg_dataset)

    named = {(f.check, f.tag) for f in errors_of(outcome) if f.path == SEG}
    equipment = "(0018,A001) ContributingEquipmentSequence"
    assert named >= {
        ("deid.burned-in-annotation", "(0028,0301) BurnedInAnnotation"),
        ("deid.contributing-equipment", f"{equipment}[0] > (0008,0080) InstitutionName"),
        ("deid.basic-profile", f"{equipment}[0] > (0018,A003) ContributionDescription"),
        ("deid.basic-profile", f"{equipment}[1] > (0018,A002) ContributionDateTime"),
    }
    burned = next(f for f in errors_of(outcome) if f.check == "deid.burned-in-annotation")
    assert "write NO into the SEG" in burned.message
    assert PHI_VALUES["institution"] not in outcome.report.to_json()


def test_seg_of_a_series_not_in_the_dataset(seg_dataset, tmp_path):
    elsewhere = make_ct_series(
        tmp_path / "elsewhere", slices=10, size=32, subject_id="SUBJ-0001", seed=99, study_uid=None
    )
    labels = np.zeros((10, 32, 32), np.uint8)
    labels[4:6, 12:18, 12:18] = 2
    make_dicom_seg(elsewhere, labels, seg_dataset / SEG)

    outcome = validate_dataset(seg_dataset)

    (finding,) = [f for f in errors_of(outcome) if f.check == "seg.referenced-series"]
    assert finding.path == SEG
    assert finding.tag == "(0008,1115) ReferencedSeriesSequence > (0020,000E) SeriesInstanceUID"
    assert "not in this dataset" in finding.message
    assert not any(f.check == "seg.geometry" for f in outcome.report.findings)


def test_seg_with_images_missing_from_the_series(seg_dataset):
    (seg_dataset / "dicom/SUBJ-0001/series-001/0010.dcm").unlink()  # the last slice: no gap

    outcome = validate_dataset(seg_dataset)

    (finding,) = [f for f in errors_of(outcome) if f.check == "seg.referenced-image"]
    assert finding.path == SEG and "1 of the 10 images" in finding.message


def shift_frames(dz: float, *, drop_sources: bool = False):
    def change(ds: Dataset) -> None:
        for item in ds.PerFrameFunctionalGroupsSequence:
            position = item.PlanePositionSequence[0]
            x, y, z = (float(v) for v in position.ImagePositionPatient)
            position.ImagePositionPatient = [x, y, z + dz]
            if drop_sources:
                del item.DerivationImageSequence
        if drop_sources:
            del ds.SourceImageSequence

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (shift_frames(2.5), "lie elsewhere than the slice they were derived from"),
        (shift_frames(2.5, drop_sources=True), "lie where the referenced series has no slice"),
    ],
    ids=["derived-from-other-slice", "between-slices"],
)
def test_seg_frames_off_the_series_grid(seg_dataset, change, expected):
    edit_seg(seg_dataset, change)

    outcome = validate_dataset(seg_dataset)

    (finding,) = [f for f in errors_of(outcome) if f.check == "seg.geometry"]
    frames = len(pydicom.dcmread(seg_dataset / SEG).PerFrameFunctionalGroupsSequence)
    assert finding.path == SEG
    assert f"{frames} of {frames} segmentation frame(s) {expected}" in finding.message
    assert finding.tag.endswith("(0020,0032) ImagePositionPatient")


def test_seg_pixel_spacing_differs_from_the_series(seg_dataset):
    def coarser(ds: Dataset) -> None:
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        measures.PixelSpacing = [float(v) * 2 for v in measures.PixelSpacing]

    edit_seg(seg_dataset, coarser)

    outcome = validate_dataset(seg_dataset)

    (finding,) = [f for f in errors_of(outcome) if f.check == "seg.geometry"]
    assert finding.tag.endswith("(0028,0030) PixelSpacing") and "differs" in finding.message


def test_seg_without_referenced_series(seg_dataset):
    edit_seg(seg_dataset, lambda ds: setattr(ds, "ReferencedSeriesSequence", DicomSequence()))

    outcome = validate_dataset(seg_dataset)

    assert any(
        f.check == "seg.referenced-series" and "names no source series" in f.message
        for f in errors_of(outcome)
    )


def test_seg_of_another_subject(seg_dataset):
    edit_seg(seg_dataset, lambda ds: setattr(ds, "PatientID", "SUBJ-0002"))

    outcome = validate_dataset(seg_dataset)

    assert "seg.subject" in {f.check for f in errors_of(outcome)}


def test_samples_cli_writes_dicom_seg(tmp_path):
    result = CliRunner().invoke(
        samples,
        [
            "demo",
            str(tmp_path),
            "--subjects",
            "1",
            "--slices",
            "4",
            "--size",
            "16",
            "--no-table",
            "--segmentation-format",
            "dicom-seg",
        ],
    )

    assert result.exit_code == 0, result.output
    root = tmp_path / "demo-ct"
    assert (root / SEG).is_file() and not list(root.glob("segmentations/*.nii.gz"))
    assert "segmentations/SUBJ-0001.dcm" in (root / "dataset.yaml").read_text()
    assert pydicom.dcmread(root / SEG).Modality == "SEG"
