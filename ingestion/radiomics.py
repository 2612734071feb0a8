"""Radiomics features for declared segmentations, stored as a derived table of the dataset.

Researchers get standard, reproducible features (pyradiomics first-order, shape and GLCM
classes) per subject, series and label without handling the images themselves; the table is
computed once at ingestion, after everything else passed, so a malformed mask is caught as a
finding instead of failing someone's notebook later.

Images are read with pydicom (which decodes every transfer syntax the DICOM validator accepts)
and assembled into a SimpleITK volume with patient geometry; masks are NIfTI or NRRD (read
with SimpleITK, which converts NIfTI's RAS to DICOM's LPS) or DICOM SEG (highdicom). A mask
must lie on the image grid: same size, spacing, origin and orientation within tolerance.
SimpleITK, pyradiomics, highdicom and pandas are imported lazily.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ingestion.manifest import DatasetManifest, SegmentationSpec, dataset_relative_path
from ingestion.report import Finding

if TYPE_CHECKING:  # pragma: no cover
    from ingestion.validators.dicom import DicomResult

FEATURE_CLASSES: tuple[str, ...] = ("firstorder", "shape", "glcm")
TABLE_NAME = "radiomics"
TABLE_FILE = "radiomics.parquet"
# Geometry tolerances: spacing relative, origin as a fraction of the smallest voxel side,
# direction cosines absolute. NIfTI stores geometry as float32, hence not exact equality.
SPACING_RTOL = 1e-3
ORIGIN_VOXEL_FRACTION = 0.05
DIRECTION_ATOL = 1e-3
SLICE_SPACING_RTOL = 1e-2

Progress = Callable[[str, int, int | None], None]


class SeriesLoadError(Exception):
    """The series cannot be assembled into a regular volume (message names why)."""


@dataclass
class _Volume:
    image: Any  # SimpleITK.Image
    sop_uids: list[str]  # in slice order


def compute_radiomics(
    root: Path,
    manifest: DatasetManifest,
    dicom: DicomResult,
    out_dir: Path,
    *,
    progress: Progress | None = None,
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """Compute features for every segmentation; write ``out_dir/radiomics.parquet``.

    Returns the findings and the descriptors (name, path, rows, columns) of the tables
    written; no table is written when no mask produced features.
    """
    root = Path(root)
    findings: list[Finding] = []
    if not manifest.segmentations:
        return findings, []
    _quiet_radiomics()
    rows: list[dict[str, Any]] = []
    total = len(manifest.segmentations)
    for i, spec in enumerate(manifest.segmentations):
        if progress:
            progress("radiomics", i, total)
        rows.extend(_one_segmentation(root, manifest, dicom, spec, findings))
    if progress:
        progress("radiomics", total, total)
    if not rows:
        return findings, []

    import pandas as pd

    frame = pd.DataFrame(rows)
    leading = ["subject_id", "series_uid", "mask", "label", "label_name"]
    features = sorted(c for c in frame.columns if c not in leading)
    frame = frame[leading + features]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / TABLE_FILE
    frame.to_parquet(out, index=False)
    try:
        shown = out.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        shown = str(out)
    descriptor = {
        "name": TABLE_NAME,
        "path": shown,
        "rows": len(frame),
        "columns": list(frame.columns),
    }
    return findings, [descriptor]


def extract_features(image: Any, mask: Any, label: int) -> dict[str, float]:
    """pyradiomics features of one label (original image, FEATURE_CLASSES)."""
    from radiomics import featureextractor

    _quiet_radiomics()
    extractor = featureextractor.RadiomicsFeatureExtractor(additionalInfo=False)
    extractor.disableAllFeatures()
    for name in FEATURE_CLASSES:
        extractor.enableFeatureClassByName(name)
    result = extractor.execute(image, mask, label=int(label))
    return {k: float(v) for k, v in result.items() if k.startswith("original_")}


def load_series(paths: Sequence[Path]) -> _Volume:
    """Read single-frame slices with pydicom and stack them into a SimpleITK volume (LPS)."""
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    if not paths:
        raise SeriesLoadError("the series has no files")
    slices = []
    for path in paths:
        ds = pydicom.dcmread(path)
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise SeriesLoadError("multi-frame images are not supported for radiomics yet")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if keyword not in ds:
                raise SeriesLoadError(f"a slice has no {keyword}")
        slices.append(ds)

    orientation = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    for ds in slices[1:]:
        other = np.array([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(other, orientation, atol=DIRECTION_ATOL):
            raise SeriesLoadError("slices have different orientations")
    slices.sort(key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    depth = positions @ normal
    if len(slices) > 1:
        steps = np.diff(depth)
        if np.any(steps <= 1e-6):
            raise SeriesLoadError("two slices share a position")
        step = float(np.median(steps))
        if np.max(np.abs(steps - step)) > SLICE_SPACING_RTOL * step:
            raise SeriesLoadError("slice spacing is not uniform (missing or shifted slices)")
    else:
        step = float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    rows, cols = int(slices[0].Rows), int(slices[0].Columns)
    planes = []
    for ds in slices:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise SeriesLoadError("slices have different sizes")
        pixels = ds.pixel_array.astype(np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        planes.append(pixels * slope + intercept)
    volume = np.stack(planes)
    if np.all(volume == np.round(volume)) and volume.min() >= -32768 and volume.max() <= 32767:
        volume = volume.astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
    image.SetSpacing((col_spacing, row_spacing, step))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    direction = np.column_stack([row_dir, col_dir, normal])
    image.SetDirection(tuple(float(v) for v in direction.flatten()))
    return _Volume(image=image, sop_uids=[str(ds.SOPInstanceUID) for ds in slices])


def load_mask(path: Path, volume: _Volume, series_uid: str) -> tuple[Any, dict[int, str]]:
    """The mask as an integer SimpleITK image and label names it carries (DICOM SEG only)."""
    import numpy as np
    import SimpleITK as sitk

    if path.name.lower().endswith(".dcm"):
        return _load_seg(path, volume, series_uid)
    mask = sitk.ReadImage(str(path))
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise SeriesLoadError("the mask has several components per voxel; give one label image")
    if mask.GetDimension() == 4 and mask.GetSize()[3] == 1:
        mask = mask[:, :, :, 0]
    if mask.GetDimension() != 3:
        raise SeriesLoadError(f"the mask has {mask.GetDimension()} dimensions, not 3")
    values = sitk.GetArrayViewFromImage(mask)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise SeriesLoadError("mask values must be whole label numbers")
    if values.size and values.min() < 0:
        raise SeriesLoadError("mask values must not be negative")
    return sitk.Cast(mask, sitk.sitkUInt16), {}


def geometry_mismatch(mask: Any, image: Any) -> str | None:
    """Why the mask is not on the image grid (None when it is)."""
    import numpy as np

    if tuple(mask.GetSize()) != tuple(image.GetSize()):
        return f"mask is {_size(mask)} voxels but the series is {_size(image)}"
    m_sp, i_sp = np.array(mask.GetSpacing()), np.array(image.GetSpacing())
    if not np.allclose(m_sp, i_sp, rtol=SPACING_RTOL, atol=1e-5):
        return f"mask voxel spacing {_triple(m_sp)} mm differs from the series {_triple(i_sp)} mm"
    if not np.allclose(mask.GetDirection(), image.GetDirection(), atol=DIRECTION_ATOL):
        return "mask orientation differs from the series orientation"
    m_or, i_or = np.array(mask.GetOrigin()), np.array(image.GetOrigin())
    if np.linalg.norm(m_or - i_or) > ORIGIN_VOXEL_FRACTION * float(i_sp.min()):
        return f"mask origin {_triple(m_or)} mm differs from the series origin {_triple(i_or)} mm"
    return None


# --- internals -----------------------------------------------------------------------------


def _quiet_radiomics() -> None:
    # pyradiomics logs every feature class at INFO and warns about GLCM symmetry.
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    import radiomics

    radiomics.setVerbosity(logging.ERROR)


def _size(image: Any) -> str:
    return "x".join(str(n) for n in image.GetSize())


def _triple(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _one_segmentation(
    root: Path,
    manifest: DatasetManifest,
    dicom: DicomResult,
    spec: SegmentationSpec,
    findings: list[Finding],
) -> list[dict[str, Any]]:
    import numpy as np
    import SimpleITK as sitk

    def fail(message: str, severity: str = "error") -> None:
        findings.append(Finding("radiomics.segmentation", severity, message, path=spec.mask))  # type: ignore[arg-type]

    series_dir = PurePosixPath(spec.series).as_posix()
    candidates = [
        s
        for s in dicom.series
        if dataset_relative_path(root, str(s.get("directory", ""))) == series_dir
        and s.get("modality") != "SEG"
    ]
    if not candidates:
        fail(f"segmentation '{spec.mask}': folder '{series_dir}' holds no valid DICOM series")
        return []
    if len(candidates) > 1:
        fail(
            f"segmentation '{spec.mask}': folder '{series_dir}' holds {len(candidates)} series; "
            "put each series in its own folder"
        )
        return []
    series = candidates[0]
    series_uid = str(series["series_uid"])
    series_files = [f for f in dicom.files if f.get("series_uid") == series_uid]
    paths = sorted(root / dataset_relative_path(root, str(f["path"])) for f in series_files)
    # the file records carry the manifest's subject attribute; the series summary may not
    subjects = Counter(str(f["subject_id"]) for f in series_files if f.get("subject_id"))
    subject_id = subjects.most_common(1)[0][0] if subjects else str(series.get("subject_id") or "")
    started = time.perf_counter()
    try:
        volume = load_series(paths)
    except SeriesLoadError as exc:
        fail(f"segmentation '{spec.mask}': series in '{series_dir}' cannot be used: {exc}")
        return []
    except Exception as exc:  # pydicom decode errors etc.: name the kind, not the content
        fail(
            f"segmentation '{spec.mask}': series in '{series_dir}' cannot be read "
            f"({type(exc).__name__})"
        )
        return []

    try:
        mask, seg_names = load_mask(root / spec.mask, volume, series_uid)
    except SeriesLoadError as exc:
        fail(f"segmentation '{spec.mask}': {exc}")
        return []
    except Exception as exc:
        fail(f"segmentation '{spec.mask}' cannot be read as a label mask ({type(exc).__name__})")
        return []

    why = geometry_mismatch(mask, volume.image)
    if why:
        fail(f"segmentation '{spec.mask}' does not match series '{series_dir}': {why}")
        return []
    mask.CopyInformation(volume.image)  # remove float32 rounding so pyradiomics agrees

    labels = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(mask)) if v != 0]
    if not labels:
        fail(f"segmentation '{spec.mask}' is empty (no voxel has a label)", "warning")
        return []
    if manifest.labels:
        unknown = [v for v in labels if v not in manifest.labels]
        if unknown:
            fail(
                f"segmentation '{spec.mask}' uses label(s) {', '.join(map(str, unknown))} that "
                "dataset.yaml 'labels' does not name",
                "warning",
            )

    rows = []
    for label in labels:
        try:
            features = extract_features(volume.image, mask, label)
        except Exception as exc:  # pyradiomics raises ValueError for too-small regions
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            fail(
                f"segmentation '{spec.mask}' label {label}: no features computed ({reason})",
                "warning",
            )
            continue
        rows.append(
            {
                "subject_id": subject_id,
                "series_uid": series_uid,
                "mask": spec.mask,
                "label": label,
                "label_name": manifest.labels.get(label)
                or seg_names.get(label)
                or f"label-{label}",
                **features,
            }
        )
    findings.append(
        Finding(
            "radiomics.features",
            "info",
            f"segmentation '{spec.mask}': {len(rows)} label(s), "
            f"{time.perf_counter() - started:.1f} s",
            path=spec.mask,
        )
    )
    return rows


def _load_seg(path: Path, volume: _Volume, series_uid: str) -> tuple[Any, dict[int, str]]:
    import highdicom as hd
    import numpy as np
    import SimpleITK as sitk

    seg = hd.seg.segread(path)
    referenced = {uids[1] for uids in seg.get_source_image_uids()}
    if series_uid not in referenced:
        raise SeriesLoadError("the DICOM SEG does not reference the declared series")
    segment_numbers = list(seg.get_segment_numbers())
    if not segment_numbers:
        raise SeriesLoadError("the DICOM SEG has no segments")
    array = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=volume.sop_uids,
        combine_segments=True,
        assert_missing_frames_are_empty=True,
        skip_overlap_checks=True,
        dtype=np.uint16,
    )
    if array.shape != (len(volume.sop_uids), *volume.image.GetSize()[1::-1]):
        raise SeriesLoadError("the DICOM SEG frames do not match the series' slices")
    mask = sitk.GetImageFromArray(array.astype(np.uint16))
    mask.CopyInformation(volume.image)
    names = {}
    for number in segment_numbers:
        label = getattr(seg.get_segment_description(number), "segment_label", None)
        if label:
            names[int(number)] = str(label)
    return mask, names
