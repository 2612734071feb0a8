"""Realistic, fully de-identified sample datasets, built offline from data that ships in packages.

No multi-slice CT series ships in a Python package, so a series is made by cloning one real
slice (pydicom's bundled ``CT_small.dcm``): its header is de-identified with the same Basic
Profile table the ingestion verifier uses, geometry and UIDs are rewritten per slice
(deterministically, from the seed), and the pixels are a synthetic chest phantom with a
spherical "lesion" whose label mask is written as NIfTI, so a segmentation is meaningful.

Tests put identifiers back on purpose through ``edit_header`` (``tests/phi.py``).
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import click
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from enclave.errors import EnclaveError

TEMPLATE_FILE = "CT_small.dcm"
DEID_METHOD = "Enclave samples: PS3.15 Basic Profile; synthetic pixels"
DEID_PROFILE = "DICOM PS3.15 Annex E Basic Profile"
LABELS = {0: "background", 1: "body", 2: "lesion"}
#: A change applied to a series' header template before its slices are written.
HeaderEdit = Callable[[Dataset], object]
#: How ``make_sample_dataset`` writes its label masks.
SEGMENTATION_FORMATS = ("nifti", "dicom-seg")
#: A fixed dummy for dates a de-identified object must carry (SEG ContentDate is Type 1).
DUMMY_DATE, DUMMY_TIME = "20000101", "000000"
FIELD_OF_VIEW_MM = 340.0
SLICE_SPACING_MM = 5.0
RESCALE_INTERCEPT = -1024


class SampleDataError(EnclaveError):
    """The packaged sample data needed to build a dataset is not available."""


def sample_uid(*parts: object) -> UID:
    """A deterministic UID under pydicom's root, from the parts that identify the object."""
    return generate_uid(entropy_srcs=["enclave-sample", *(str(p) for p in parts)])


@lru_cache(1)
def _template() -> Dataset:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(TEMPLATE_FILE, download=False)
    if path is None:
        raise SampleDataError(
            f"pydicom's bundled test file {TEMPLATE_FILE} is missing: reinstall pydicom>=3.0"
        )
    return dcmread(path)


def deidentify_template(ds: Dataset) -> Dataset:
    """Apply the Basic Profile to a copy of ``ds``: remove X, empty Z, drop private and 50xx/60xx.

    UIDs (action U) are removed here and set again by the series writer.
    """
    from ingestion.validators.deid import basic_profile

    ds = copy.deepcopy(ds)
    ds.remove_private_tags()
    profile = basic_profile()

    def clean(item: Dataset) -> None:
        for elem in list(item.elements()):
            tag = elem.tag
            group = tag >> 16
            if (group & 0xFF00) in (0x5000, 0x6000) or tag == 0xFFFCFFFC:
                del item[tag]
                continue
            entry = profile.get(tag)
            if entry is None:
                if item[tag].VR == "SQ":
                    for sub in item[tag].value:
                        clean(sub)
                continue
            action = entry[1]
            if action in ("Z", "Z/D") or item[tag].VR == "PN":
                item[tag].value = None if item[tag].VR == "SQ" else ""
            else:  # X, X/Z, X/D, X/Z/D, X/Z/U*, D, U: gone (UIDs are set again)
                del item[tag]

    clean(ds)
    return ds


@dataclass(frozen=True)
class Lesion:
    """A sphere in patient coordinates relative to the volume centre (mm)."""

    x: float
    y: float
    z: float
    radius: float


@dataclass(frozen=True)
class SeriesGeometry:
    size: int
    slices: int
    pixel_spacing: float
    slice_spacing: float
    origin: tuple[float, float, float]  # ImagePositionPatient of the first slice (LPS, mm)

    def position(self, k: int) -> list[float]:
        x, y, z = self.origin
        return [x, y, z + k * self.slice_spacing]

    def affine_ras(self) -> np.ndarray:
        """NIfTI affine (RAS) of a mask indexed [column, row, slice], from the DICOM geometry.

        Axial slices with ImageOrientationPatient [1,0,0, 0,1,0]: the column index runs along
        +x (patient left), the row index along +y (posterior), slices along +z (superior).
        DICOM is LPS, NIfTI RAS: flip x and y.
        """
        lps = np.eye(4)
        lps[0, 0] = self.pixel_spacing
        lps[1, 1] = self.pixel_spacing
        lps[2, 2] = self.slice_spacing
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _geometry(size: int, slices: int) -> SeriesGeometry:
    spacing = FIELD_OF_VIEW_MM / size
    half = (size - 1) * spacing / 2
    z0 = -(slices - 1) * SLICE_SPACING_MM / 2
    return SeriesGeometry(size, slices, spacing, SLICE_SPACING_MM, (-half, -half, round(z0, 3)))


def _lesion(rng: np.random.Generator, geometry: SeriesGeometry) -> Lesion:
    side = rng.choice([-1.0, 1.0])
    extent = (geometry.slices - 1) * geometry.slice_spacing / 2
    radius = float(rng.uniform(12.0, 24.0))
    zmax = max(extent - radius, 0.0) * 0.6
    return Lesion(
        x=float(side * rng.uniform(50.0, 70.0)),
        y=float(rng.uniform(-25.0, 5.0)),
        z=float(rng.uniform(-zmax, zmax)),
        radius=radius,
    )


class _Phantom:
    """A body-like CT slice: soft-tissue ellipse, two lungs, heart, spine, a lesion in a lung."""

    def __init__(self, geometry: SeriesGeometry, lesion: Lesion) -> None:
        n = geometry.size
        coords = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * geometry.pixel_spacing
        self.x = coords[np.newaxis, :]
        self.y = coords[:, np.newaxis]
        self.geometry = geometry
        self.lesion = lesion
        self.extent = max((geometry.slices - 1) * geometry.slice_spacing / 2, 1.0)

    def _ellipse(self, cx: float, cy: float, a: float, b: float) -> np.ndarray:
        return ((self.x - cx) / a) ** 2 + ((self.y - cy) / b) ** 2 <= 1.0

    def slice(self, z: float) -> tuple[np.ndarray, np.ndarray]:
        """Hounsfield units (float32) and labels (uint8) at height z (mm from centre)."""
        taper = float(np.sqrt(max(1.0 - 0.35 * (z / self.extent) ** 2, 0.2)))
        hu = np.full((self.y.shape[0], self.x.shape[1]), -1000.0, np.float32)
        labels = np.zeros(hu.shape, np.uint8)
        body = self._ellipse(0.0, 0.0, 150.0 * taper, 110.0 * taper)
        hu[body] = 40.0
        labels[body] = 1
        lung_a, lung_b = 48.0 * taper, 70.0 * taper
        for cx in (-62.0, 62.0):
            hu[self._ellipse(cx, -10.0, lung_a, lung_b)] = -850.0
        hu[self._ellipse(18.0, -35.0, 42.0 * taper, 38.0 * taper)] = 45.0
        hu[self._ellipse(0.0, 78.0, 18.0, 18.0)] = 700.0
        les = self.lesion
        dz = z - les.z
        if abs(dz) < les.radius:
            r = float(np.sqrt(les.radius**2 - dz**2))
            disk = self._ellipse(les.x, les.y, r, r) & body
            hu[disk] = 30.0
            labels[disk] = 2
        return hu, labels


def _base_series_dataset(
    *,
    subject_id: str,
    study_uid: str,
    series_uid: str,
    series_number: int,
    geometry: SeriesGeometry,
) -> Dataset:
    ds = deidentify_template(_template())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    for keyword in ("Laterality", "ContrastBolusAgent", "ContrastBolusRoute"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.ManufacturerModelName = "Chest phantom"
    ds.SoftwareVersions = "enclave-samples 1"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.Manufacturer = "Enclave synthetic phantom"
    ds.PatientName = ""
    ds.PatientID = subject_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEID_METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = DicomSequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    ds.BurnedInAnnotation = "NO"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = sample_uid("frame-of-reference", study_uid)
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.Rows = geometry.size
    ds.Columns = geometry.size
    ds.PixelSpacing = [f"{geometry.pixel_spacing:.6g}"] * 2
    ds.SliceThickness = f"{geometry.slice_spacing:g}"
    ds.SpacingBetweenSlices = f"{geometry.slice_spacing:g}"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    return ds


def _encode_slice(hu: np.ndarray) -> bytes:
    stored = np.clip(np.rint(hu) - RESCALE_INTERCEPT, -32768, 32767).astype("<i2")
    return stored.tobytes()


@dataclass
class _WrittenSeries:
    paths: list[Path]
    geometry: SeriesGeometry
    labels: np.ndarray | None  # [column, row, slice], None for benchmark series
    lesion: Lesion
    series_uid: str


def _write_series(
    out_dir: Path,
    *,
    slices: int,
    size: int,
    subject_id: str,
    seed: int,
    study_uid: str | None,
    series_number: int = 1,
    edit_header: HeaderEdit | None = None,
    fast: bool = False,
    progress: Callable[[int], None] | None = None,
) -> _WrittenSeries:
    if slices < 1 or size < 8:
        raise ValueError("a series needs at least 1 slice of at least 8x8 pixels")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, series_number, int.from_bytes(subject_id.encode()[-6:])])
    geometry = _geometry(size, slices)
    study_uid = study_uid or sample_uid("study", subject_id, seed)
    series_uid = sample_uid("series", study_uid, series_number, slices, size)
    ds = _base_series_dataset(
        subject_id=subject_id,
        study_uid=study_uid,
        series_uid=series_uid,
        series_number=series_number,
        geometry=geometry,
    )
    if edit_header is not None:
        edit_header(ds)
    lesion = _lesion(rng, geometry)
    phantom = _Phantom(geometry, lesion)
    labels_volume = None if fast else np.zeros((size, size, slices), np.uint8)
    if fast:  # benchmark series: one phantom, noise from a small bank, pixels still differ
        base_hu, _ = phantom.slice(0.0)
        noise_bank = rng.normal(0.0, 12.0, (8, size, size)).astype(np.float32)
    paths = []
    for k in range(slices):
        position = geometry.position(k)
        z_rel = position[2] - (geometry.origin[2] + (slices - 1) * geometry.slice_spacing / 2)
        if fast:
            hu = base_hu + np.roll(noise_bank[k % 8], k, axis=1)
        else:
            hu, labels = phantom.slice(z_rel)
            hu = hu + rng.normal(0.0, 12.0, hu.shape).astype(np.float32)
            assert labels_volume is not None  # allocated above unless fast
            labels_volume[:, :, k] = labels.T  # NIfTI order: [column, row, slice]
        sop_uid = sample_uid("instance", series_uid, k)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{position[2]:.4f}"
        ds.PixelData = _encode_slice(hu)
        path = out_dir / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        if progress is not None:
            progress(1)
    return _WrittenSeries(paths, geometry, labels_volume, lesion, series_uid)


def make_ct_series(
    out_dir: Path,
    *,
    slices: int = 24,
    size: int = 64,
    subject_id: str = "SUBJ-0001",
    seed: int = 0,
    study_uid: str | None = None,
    series_number: int = 1,
    edit_header: HeaderEdit | None = None,
) -> list[Path]:
    """Write one de-identified axial CT series (``0001.dcm``...) into ``out_dir``.

    ``edit_header`` is called once with the series' header before any slice is written, and
    every slice carries what it changed (tests plant identifiers with it).
    """
    return _write_series(
        Path(out_dir),
        slices=slices,
        size=size,
        subject_id=subject_id,
        seed=seed,
        study_uid=study_uid,
        series_number=series_number,
        edit_header=edit_header,
    ).paths


def make_benchmark_series(
    out_dir: Path,
    *,
    series: int = 20,
    slices: int = 200,
    size: int = 512,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Full-size CT for benchmarks (defaults: 20 series x 200 slices of 512x512, ~2 GB).

    One template dataset per series is rewritten per slice; pixels come from one phantom slice
    plus rolled noise, so writing is bound by the disk, not by re-encoding headers or drawing
    random numbers.
    """
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for n in range(series):
        subject = f"BENCH-{n + 1:04d}"
        written = _write_series(
            out_dir / subject / "series-001",
            slices=slices,
            size=size,
            subject_id=subject,
            seed=seed,
            study_uid=None,
            fast=True,
            progress=progress,
        )
        paths.extend(written.paths)
    return paths


# --- Whole dataset -----------------------------------------------------------------------


def _clinical_rows(subjects: Sequence[str], lesions: dict[str, float], seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, 7])
    rows = []
    for subject in subjects:
        radius = lesions.get(subject, 0.0)
        rows.append(
            {
                "subject_id": subject,
                "age": int(rng.integers(35, 86)),
                "sex": str(rng.choice(["F", "M"])),
                "outcome": int(radius >= 18.0),
            }
        )
    return rows


def clinical_expectations(subjects: int) -> dict:
    """Great Expectations (1.x names) suite for tables/clinical.csv."""

    def exp(name: str, **kwargs: object) -> dict:
        return {"expectation_type": name, "kwargs": kwargs}

    return {
        "name": "clinical",
        "expectations": [
            exp(
                "expect_table_columns_to_match_ordered_list",
                column_list=["subject_id", "age", "sex", "outcome"],
            ),
            exp("expect_table_row_count_to_equal", value=subjects),
            exp("expect_column_values_to_not_be_null", column="subject_id"),
            exp("expect_column_values_to_be_unique", column="subject_id"),
            exp("expect_column_values_to_match_regex", column="subject_id", regex=r"^SUBJ-\d{4}$"),
            exp("expect_column_values_to_not_be_null", column="age"),
            # HIPAA Safe Harbor: ages over 89 must be aggregated.
            exp("expect_column_values_to_be_between", column="age", min_value=18, max_value=89),
            exp("expect_column_values_to_be_in_set", column="sex", value_set=["F", "M", "O"]),
            exp("expect_column_values_to_be_in_set", column="outcome", value_set=[0, 1]),
        ],
    }


def make_sample_dataset(
    out_dir: Path,
    *,
    name: str = "demo-ct",
    subjects: int = 2,
    slices: int = 24,
    size: int = 64,
    with_segmentation: bool = True,
    with_table: bool = True,
    seed: int = 0,
    edit_header: HeaderEdit | None = None,
    segmentation_format: str = "nifti",
) -> Path:
    """Write a complete dataset directory ``out_dir/<name>/`` that ingestion accepts.

    Layout: ``dataset.yaml``, ``dicom/<subject>/series-001/<nnnn>.dcm``,
    ``segmentations/<subject>.nii.gz`` (labels 0 background, 1 body, 2 lesion, affine from the
    DICOM geometry), ``tables/clinical.csv`` and ``expectations/clinical.json``.
    ``edit_header`` changes every series' header before its slices are written (as in
    ``make_ct_series``).
    ``segmentation_format="dicom-seg"`` writes the same labels as de-identified DICOM
    Segmentation objects, ``segmentations/<subject>.dcm`` (see ``make_dicom_seg``).
    """
    import yaml

    if subjects < 1:
        raise ValueError("a sample dataset needs at least one subject")
    if segmentation_format not in SEGMENTATION_FORMATS:
        raise ValueError(
            f"unknown segmentation format {segmentation_format!r}; choose from "
            + ", ".join(SEGMENTATION_FORMATS)
        )
    root = Path(out_dir) / name
    if root.exists() and any(root.iterdir()):
        raise SampleDataError(f"{root} already exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    subject_ids = [f"SUBJ-{i + 1:04d}" for i in range(subjects)]
    segmentations, lesions = [], {}
    for index, subject in enumerate(subject_ids):
        series_dir = root / "dicom" / subject / "series-001"
        subject_seed = seed * 1000 + index
        written = _write_series(
            series_dir,
            slices=slices,
            size=size,
            subject_id=subject,
            seed=subject_seed,
            study_uid=sample_uid("study", name, subject, seed),
            edit_header=edit_header,
        )
        lesions[subject] = written.lesion.radius
        assert written.labels is not None  # only fast (benchmark) series come without labels
        if with_segmentation and segmentation_format == "dicom-seg":
            mask = root / "segmentations" / f"{subject}.dcm"
            make_dicom_seg(written.paths, _labels_by_frame(written.labels), mask)
        elif with_segmentation:
            mask = root / "segmentations" / f"{subject}.nii.gz"
            _write_mask(mask, written.labels, written.geometry)
        if with_segmentation:
            segmentations.append(
                {
                    "mask": mask.relative_to(root).as_posix(),
                    "series": series_dir.relative_to(root).as_posix(),
                }
            )
    spec: dict = {
        "name": name,
        "title": "Demo chest CT (synthetic)",
        "description": (
            f"{subjects} synthetic chest CT series ({slices} axial slices of {size}x{size}) "
            "built from pydicom's de-identified CT_small header, with a lung lesion per "
            "subject"
            + (", lesion and body segmentations" if with_segmentation else "")
            + (" and a clinical table" if with_table else "")
            + ". For demos and tests."
        ),
        "license": "CC-BY-4.0",
        "modality": "CT",
        "body_part": "CHEST",
        "tags": ["demo", "synthetic"] + (["segmentation"] if with_segmentation else []),
        "deidentification": {"method": DEID_METHOD, "profile": DEID_PROFILE},
        "subject_id": "PatientID",
    }
    if with_segmentation:
        spec["labels"] = dict(LABELS)
        spec["segmentations"] = segmentations
    if with_table:
        _write_table(root, subject_ids, lesions, seed)
        spec["tables"] = [
            {
                "name": "clinical",
                "path": "tables/clinical.csv",
                "subject_id": "subject_id",
                "links_imaging": True,
                "columns": {
                    "subject_id": "string",
                    "age": "integer",
                    "sex": "string",
                    "outcome": "integer",
                },
                "expectations": "expectations/clinical.json",
            }
        ]
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def _labels_by_frame(labels: np.ndarray) -> np.ndarray:
    """NIfTI order [column, row, slice] to DICOM frame order [slice, row, column]."""
    return np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))


#: Contributing Equipment item attributes that describe software; everything else in an item
#: (institution, station, serial number, description, date) is dropped from a sample SEG.
_EQUIPMENT_KEEP = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "PurposeOfReferenceCodeSequence",
)


def make_dicom_seg(
    series_paths: Sequence[Path],
    labels: np.ndarray,
    out_path: Path,
    *,
    segment_labels: dict[int, str] | None = None,
    series_number: int = 100,
) -> Path:
    """Write a de-identified DICOM SEG (highdicom) of ``labels`` drawn on a sample CT series.

    ``labels`` is a label map in frame order ``[slice, row, column]``, slices ordered like
    ``series_paths``. highdicom copies the source's patient, study and de-identification
    attributes, but also writes what the Basic Profile removes: the acquisition date and any
    institution, station or serial number of the source scanner in ContributingEquipment
    items, free-text contribution descriptions and the instance creation date; it leaves
    BurnedInAnnotation out. Those are fixed here the way a provider's pipeline must fix them.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    names = segment_labels or {k: v for k, v in LABELS.items() if k}
    sources = [dcmread(p) for p in series_paths]
    series_uid = str(sources[0].SeriesInstanceUID)
    properties = {  # segmented property (category, type); anything else is "tissue"
        "body": (codes.SCT.AnatomicalStructure, codes.SCT.EntireBody),
        "lesion": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion),
    }
    descriptions = []
    for number, name in sorted(names.items()):
        category, kind = properties.get(name, (codes.SCT.Tissue, codes.SCT.Tissue))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.asarray(labels, dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=sample_uid("seg-series", series_uid),
        series_number=series_number,
        sop_instance_uid=sample_uid("seg-instance", series_uid),
        instance_number=1,
        manufacturer="Enclave samples",
        manufacturer_model_name="enclave-samples",
        software_versions="1",
        device_serial_number="0",  # Type 1 for SEG: a dummy, as the Basic Profile's D allows
    )
    _deidentify_seg(seg, series_uid)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_path, enforce_file_format=True)
    return out_path


def _deidentify_seg(seg: Dataset, source_series_uid: str) -> None:
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):  # Type 3, X/D in E.1-1
        if keyword in seg:
            delattr(seg, keyword)
    seg.ContentDate, seg.ContentTime = DUMMY_DATE, DUMMY_TIME  # Type 1 here: a dummy (D)
    seg.BurnedInAnnotation = "NO"  # a label map, drawn by software: no burned-in text
    seg.PatientIdentityRemoved = "YES"
    seg.DeidentificationMethod = DEID_METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    seg.DeidentificationMethodCodeSequence = DicomSequence([code])
    for item in seg.get("ContributingEquipmentSequence", []):
        for keyword in [e.keyword for e in item if e.keyword not in _EQUIPMENT_KEEP]:
            delattr(item, keyword)
    # highdicom draws a random dimension organization UID: make the sample reproducible
    fixed = sample_uid("seg-dimensions", source_series_uid)
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(keyword, []):
            item.DimensionOrganizationUID = fixed


def _write_mask(path: Path, labels: np.ndarray, geometry: SeriesGeometry) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(labels, geometry.affine_ras())
    image.header.set_xyzt_units("mm")
    image.set_qform(geometry.affine_ras(), code=1)
    image.set_sform(geometry.affine_ras(), code=1)
    nib.save(image, path)


def _write_table(root: Path, subjects: list[str], lesions: dict[str, float], seed: int) -> None:
    table = root / "tables" / "clinical.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    rows = _clinical_rows(subjects, lesions, seed)
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["subject_id", "age", "sex", "outcome"])
        writer.writeheader()
        writer.writerows(rows)
    suite = root / "expectations" / "clinical.json"
    suite.parent.mkdir(parents=True, exist_ok=True)
    suite.write_text(json.dumps(clinical_expectations(len(subjects)), indent=2) + "\n")


# --- Command line: `enclave samples ...` ---------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def samples() -> None:
    """Make de-identified sample datasets for demos, tests and benchmarks (no download)."""


@samples.command("demo")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="demo-ct", show_default=True, help="Dataset slug.")
@click.option("--subjects", default=2, show_default=True, type=click.IntRange(1, 9999))
@click.option("--slices", default=24, show_default=True, type=click.IntRange(1, 2000))
@click.option("--size", default=64, show_default=True, type=click.IntRange(8, 2048))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-segmentation", is_flag=True, help="Leave out the label masks.")
@click.option(
    "--segmentation-format",
    type=click.Choice(SEGMENTATION_FORMATS),
    default="nifti",
    show_default=True,
    help="Label masks as NIfTI files or as DICOM SEG objects.",
)
@click.option("--no-table", is_flag=True, help="Leave out the clinical table.")
def demo_command(
    out_dir: Path,
    name: str,
    subjects: int,
    slices: int,
    size: int,
    seed: int,
    no_segmentation: bool,
    segmentation_format: str,
    no_table: bool,
) -> None:
    """Write a complete sample dataset to OUT_DIR/NAME, ready to split and send."""
    root = make_sample_dataset(
        out_dir,
        name=name,
        subjects=subjects,
        slices=slices,
        size=size,
        seed=seed,
        with_segmentation=not no_segmentation,
        with_table=not no_table,
        segmentation_format=segmentation_format,
    )
    click.echo(f"wrote {root} ({subjects} subject(s), {slices} slices of {size}x{size} each)")


@samples.command("benchmark")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--series", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--slices", default=200, show_default=True, type=click.IntRange(1, 5000))
@click.option("--size", default=512, show_default=True, type=click.IntRange(8, 4096))
def benchmark_command(out_dir: Path, series: int, slices: int, size: int) -> None:
    """Write full-size CT series (default 20 x 200 slices of 512x512, about 2 GB)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("writing slices", total=series * slices)
        paths = make_benchmark_series(
            out_dir,
            series=series,
            slices=slices,
            size=size,
            progress=lambda n: bar.advance(task, n),
        )
    total = sum(p.stat().st_size for p in paths)
    click.echo(f"wrote {len(paths)} files, {total / 1e9:.2f} GB, under {out_dir}")


if __name__ == "__main__":
    samples()
