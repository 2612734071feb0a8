"""Radiomics on a small synthetic CT series with NIfTI, NRRD and DICOM SEG masks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ingestion.manifest import DatasetManifest, SegmentationSpec
from ingestion.radiomics import compute_radiomics, geometry_mismatch, load_series

SLICES, ROWS, COLS = 12, 48, 48
SPACING = (0.8, 0.8, 2.5)  # column, row, slice (mm)
ORIGIN = (-20.0, -30.0, 100.0)


def write_ct_series(folder: Path, subject: str = "SUBJ-0001") -> SimpleNamespace:
    """A CT series with a bright sphere, slices written in shuffled order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    study_uid = generate_uid(entropy_srcs=[subject, "study"])
    series_uid = generate_uid(entropy_srcs=[subject, "series"])
    zz, yy, xx = np.mgrid[0:SLICES, 0:ROWS, 0:COLS]
    sphere = ((zz - 6) * 2.5) ** 2 + ((yy - 24) * 0.8) ** 2 + ((xx - 24) * 0.8) ** 2 < 9**2
    volume = rng.normal(40, 10, (SLICES, ROWS, COLS)) + sphere * 300
    files = []
    for k in list(range(SLICES))[::-1]:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid(entropy_srcs=[subject, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[subject, "for"])
        ds.Modality = "CT"
        ds.PatientID = subject
        ds.PatientName = ""
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyDate = ds.StudyTime = ds.StudyID = ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber = 1
        ds.PatientIdentityRemoved = "YES"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = (volume[k] + 1024).astype(np.uint16).tobytes()
        path = folder / f"{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append({"path": path, "series_uid": series_uid, "sop_instance_uid": sop})
    return SimpleNamespace(
        series_uid=series_uid, study_uid=study_uid, subject=subject, files=files, sphere=sphere
    )


def dicom_result(root: Path, *series: SimpleNamespace) -> SimpleNamespace:
    """What ingestion.validators.dicom returns, for the fields radiomics reads."""
    files, entries = [], []
    for s in series:
        for f in s.files:
            files.append(
                {
                    "path": Path(f["path"]).relative_to(root).as_posix(),
                    "kind": "dicom",
                    "series_uid": s.series_uid,
                    "study_uid": s.study_uid,
                    "sop_instance_uid": f["sop_instance_uid"],
                    "modality": "CT",
                    "subject_id": s.subject,
                }
            )
        directory = Path(s.files[0]["path"]).parent.relative_to(root).as_posix()
        entries.append(
            {
                "series_uid": s.series_uid,
                "study_uid": s.study_uid,
                "subject_id": s.subject,
                "modality": "CT",
                "directory": directory,
            }
        )
    return SimpleNamespace(findings=[], files=files, series=entries)


def write_nifti_mask(path: Path, labels: np.ndarray, *, spacing=SPACING, origin=ORIGIN) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(labels.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def manifest_for(*segmentations: SegmentationSpec, labels=None) -> DatasetManifest:
    return DatasetManifest(
        name="radiomics-demo",
        title="t",
        description="d",
        license="CC0-1.0",
        modality="CT",
        labels=labels or {1: "body", 2: "lesion"},
        segmentations=segmentations,
    )


def two_labels(sphere: np.ndarray) -> np.ndarray:
    labels = np.zeros(sphere.shape, np.uint8)
    labels[2:10, 8:40, 8:40] = 1
    labels[sphere] = 2
    return labels


def test_series_volume_has_patient_geometry(tmp_path):
    series = write_ct_series(tmp_path / "dicom" / "SUBJ-0001" / "ct")
    volume = load_series([f["path"] for f in series.files])
    assert volume.image.GetSize() == (COLS, ROWS, SLICES)
    assert volume.image.GetSpacing() == pytest.approx(SPACING)
    assert volume.image.GetOrigin() == pytest.approx(ORIGIN)
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(volume.image)
    # rescale applied and slices sorted by position: the sphere is where we put it
    assert array[6, 24, 24] > 200 and array[0, 0, 0] < 150


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_features_per_label_written_as_derived_table(tmp_path, suffix):
    import pandas as pd

    series = write_ct_series(tmp_path / "dicom" / "SUBJ-0001" / "ct")
    mask = f"segmentations/SUBJ-0001{suffix}"
    write_nifti_mask(tmp_path / mask, two_labels(series.sphere))
    manifest = manifest_for(SegmentationSpec(mask=mask, series="dicom/SUBJ-0001/ct"))

    findings, tables = compute_radiomics(
        tmp_path, manifest, dicom_result(tmp_path, series), tmp_path / "derived"
    )

    assert [f for f in findings if f.severity != "info"] == []
    assert tables[0]["name"] == "radiomics"
    assert tables[0]["path"] == "derived/radiomics.parquet"
    assert tables[0]["rows"] == 2
    frame = pd.read_parquet(tmp_path / tables[0]["path"])
    assert list(frame["label"]) == [1, 2]
    assert list(frame["label_name"]) == ["body", "lesion"]
    assert set(frame["subject_id"]) == {"SUBJ-0001"}
    assert set(frame["series_uid"]) == {series.series_uid}
    for family in ("firstorder", "shape", "glcm"):
        assert any(c.startswith(f"original_{family}_") for c in frame.columns)
    lesion = frame[frame["label"] == 2].iloc[0]
    # the sphere is ~300 HU brighter than its surroundings; its volume is that of the mask
    assert lesion["original_firstorder_Mean"] > 250
    voxel = SPACING[0] * SPACING[1] * SPACING[2]
    assert lesion["original_shape_VoxelVolume"] == pytest.approx(series.sphere.sum() * voxel)


def test_geometry_mismatch_is_an_error_and_writes_nothing(tmp_path):
    series = write_ct_series(tmp_path / "dicom" / "SUBJ-0001" / "ct")
    labels = two_labels(series.sphere)
    write_nifti_mask(tmp_path / "segmentations/short.nii.gz", labels[:-2])
    write_nifti_mask(
        tmp_path / "segmentations/shifted.nii.gz", labels, origin=(ORIGIN[0] + 4, *ORIGIN[1:])
    )
    write_nifti_mask(tmp_path / "segmentations/coarse.nii.gz", labels, spacing=(1.0, 1.0, 2.5))
    manifest = manifest_for(
        *(
            SegmentationSpec(mask=f"segmentations/{name}.nii.gz", series="dicom/SUBJ-0001/ct")
            for name in ("short", "shifted", "coarse")
        )
    )

    findings, tables = compute_radiomics(
        tmp_path, manifest, dicom_result(tmp_path, series), tmp_path / "derived"
    )

    errors = {f.path: f.message for f in findings if f.severity == "error"}
    assert set(errors) == {f"segmentations/{n}.nii.gz" for n in ("short", "shifted", "coarse")}
    assert "48x48x10 voxels but the series is 48x48x12" in errors["segmentations/short.nii.gz"]
    assert "origin" in errors["segmentations/shifted.nii.gz"]
    assert "spacing" in errors["segmentations/coarse.nii.gz"]
    assert tables == []
    assert not (tmp_path / "derived" / "radiomics.parquet").exists()


def test_geometry_tolerates_float32_rounding():
    import SimpleITK as sitk

    image = sitk.Image(8, 8, 4, sitk.sitkInt16)
    image.SetOrigin((-250.123456, 10.0, 3.0))
    image.SetSpacing((0.7031, 0.7031, 1.25))
    mask = sitk.Image(8, 8, 4, sitk.sitkUInt8)
    mask.SetOrigin(tuple(float(np.float32(v)) for v in image.GetOrigin()))
    mask.SetSpacing(tuple(float(np.float32(v)) for v in image.GetSpacing()))
    assert geometry_mismatch(mask, image) is None


def test_series_folder_without_dicom_and_empty_mask(tmp_path):
    series = write_ct_series(tmp_path / "dicom" / "SUBJ-0001" / "ct")
    (tmp_path / "dicom" / "other").mkdir()
    write_nifti_mask(tmp_path / "segmentations/empty.nii.gz", np.zeros((SLICES, ROWS, COLS)))
    write_nifti_mask(tmp_path / "segmentations/a.nii.gz", two_labels(series.sphere))
    manifest = manifest_for(
        SegmentationSpec(mask="segmentations/empty.nii.gz", series="dicom/SUBJ-0001/ct"),
        SegmentationSpec(mask="segmentations/a.nii.gz", series="dicom/other"),
    )

    findings, tables = compute_radiomics(
        tmp_path, manifest, dicom_result(tmp_path, series), tmp_path / "derived"
    )

    by_path = {f.path: f for f in findings}
    assert by_path["segmentations/empty.nii.gz"].severity == "warning"
    assert "empty" in by_path["segmentations/empty.nii.gz"].message
    assert by_path["segmentations/a.nii.gz"].severity == "error"
    assert "holds no valid DICOM series" in by_path["segmentations/a.nii.gz"].message
    assert tables == []


def write_dicom_seg(path: Path, series: SimpleNamespace, labels: np.ndarray) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    sources = sorted(
        (pydicom.dcmread(f["path"]) for f in series.files),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, name in ((1, "tissue"), (2, "mass"))
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=labels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Enclave tests",
        manufacturer_model_name="synthetic",
        software_versions="1",
        device_serial_number="1",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


def test_dicom_seg_mask_uses_its_segment_labels(tmp_path):
    import pandas as pd

    series = write_ct_series(tmp_path / "dicom" / "SUBJ-0001" / "ct")
    write_dicom_seg(tmp_path / "segmentations/seg.dcm", series, two_labels(series.sphere))
    manifest = DatasetManifest(
        name="seg-demo",
        title="t",
        description="d",
        license="CC0-1.0",
        modality="CT",
        segmentations=(
            SegmentationSpec(mask="segmentations/seg.dcm", series="dicom/SUBJ-0001/ct"),
        ),
    )

    findings, tables = compute_radiomics(
        tmp_path, manifest, dicom_result(tmp_path, series), tmp_path / "derived"
    )

    assert [f for f in findings if f.severity != "info"] == []
    frame = pd.read_parquet(tmp_path / tables[0]["path"])
    assert list(frame["label_name"]) == ["tissue", "mass"]
    mass = frame[frame["label"] == 2].iloc[0]
    voxel = SPACING[0] * SPACING[1] * SPACING[2]
    assert mass["original_shape_VoxelVolume"] == pytest.approx(series.sphere.sum() * voxel)


def test_dicom_seg_of_another_series_is_refused(tmp_path):
    first = write_ct_series(tmp_path / "dicom" / "SUBJ-0001" / "ct")
    second = write_ct_series(tmp_path / "dicom" / "SUBJ-0002" / "ct", subject="SUBJ-0002")
    write_dicom_seg(tmp_path / "segmentations/seg.dcm", second, two_labels(second.sphere))
    manifest = manifest_for(
        SegmentationSpec(mask="segmentations/seg.dcm", series="dicom/SUBJ-0001/ct")
    )

    findings, tables = compute_radiomics(
        tmp_path, manifest, dicom_result(tmp_path, first, second), tmp_path / "derived"
    )

    assert tables == []
    (error,) = [f for f in findings if f.severity == "error"]
    assert "does not reference the declared series" in error.message


def test_tiny_label_is_a_warning_and_other_labels_still_count(tmp_path):
    import pandas as pd

    series = write_ct_series(tmp_path / "dicom" / "SUBJ-0001" / "ct")
    labels = two_labels(series.sphere)
    labels[0, 0, 0] = 3  # a single voxel: too small for shape and texture features
    write_nifti_mask(tmp_path / "segmentations/m.nii.gz", labels)
    manifest = manifest_for(
        SegmentationSpec(mask="segmentations/m.nii.gz", series="dicom/SUBJ-0001/ct"),
        labels={1: "body", 2: "lesion", 3: "speck"},
    )

    findings, tables = compute_radiomics(
        tmp_path, manifest, dicom_result(tmp_path, series), tmp_path / "derived"
    )

    (warning,) = [f for f in findings if f.severity == "warning"]
    assert "label 3: no features computed" in warning.message
    assert not [f for f in findings if f.severity == "error"]
    assert list(pd.read_parquet(tmp_path / tables[0]["path"])["label"]) == [1, 2]


def test_fractional_mask_values_are_refused(tmp_path):
    import SimpleITK as sitk

    series = write_ct_series(tmp_path / "dicom" / "SUBJ-0001" / "ct")
    probabilities = series.sphere.astype(np.float32) * 0.7
    image = sitk.GetImageFromArray(probabilities)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    (tmp_path / "segmentations").mkdir()
    sitk.WriteImage(image, str(tmp_path / "segmentations/p.nii.gz"))
    manifest = manifest_for(
        SegmentationSpec(mask="segmentations/p.nii.gz", series="dicom/SUBJ-0001/ct")
    )

    findings, tables = compute_radiomics(
        tmp_path, manifest, dicom_result(tmp_path, series), tmp_path / "derived"
    )

    (error,) = findings
    assert error.severity == "error" and "whole label numbers" in error.message
    assert tables == []
