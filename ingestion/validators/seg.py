"""DICOM Segmentation (SEG) objects checked against the images they segment.

A SEG is only useful, and only safe to keep, together with its source images: its frames
must lie on the referenced series' grid (same frame of reference, image size, pixel spacing,
orientation, and a slice position for every frame), and every image it references must be in
the same submission. The second rule is also what makes the SEG's reference sequences
acceptable under the Basic Profile: Table E.1-1 gives SourceImageSequence and
ReferencedImageSequence the action X/Z/U* ("remove, unless required, then replace the
contained UIDs"), and the Segmentation IOD requires them for a SEG derived from images. When
every contained UID names a de-identified image of this submission, the UIDs were replaced
consistently, which is what the action asks; a reference to anything else is an error.

``seg_summary`` runs in the per-file worker (it needs the parsed dataset);
``check_segmentations`` runs once per submission on the summaries and the image records.
Findings name attributes and files, never UIDs or other values.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from pydicom import Dataset

from ingestion.report import Finding
from ingestion.validators.deid import element_vr, tag_label

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

REFERENCED_SERIES = 0x00081115
REFERENCED_INSTANCES = 0x0008114A
REFERENCED_SOP_INSTANCE = 0x00081155
SOURCE_IMAGES = 0x00082112
REFERENCED_IMAGES = 0x00081140
SERIES_UID = 0x0020000E
FRAME_OF_REFERENCE = 0x00200052
PER_FRAME = 0x52009230
SHARED = 0x52009229
PLANE_POSITION = 0x00209113
PLANE_ORIENTATION = 0x00209116
PIXEL_MEASURES = 0x00289110
DERIVATION_IMAGES = 0x00089124
POSITION = 0x00200032
ORIENTATION = 0x00200037
PIXEL_SPACING = 0x00280030
ROWS = 0x00280010
PATIENT_ID = 0x00100020

#: Reference sequences whose Basic Profile action is X/Z/U*: kept when every UID resolves.
UID_REFERENCE_SEQUENCES = ("SourceImageSequence", "ReferencedImageSequence")

# A frame lies on a slice when its position is within this fraction of the smallest pixel side.
POSITION_VOXEL_FRACTION = 0.05
SPACING_RTOL = 1e-3
ORIENTATION_ATOL = 1e-4

_POSITION_TAG = f"{tag_label(PER_FRAME)} > {tag_label(PLANE_POSITION)} > {tag_label(POSITION)}"


def is_segmentation(sop_class_uid: str | None) -> bool:
    return (sop_class_uid or "").strip(" \x00") == SEGMENTATION_STORAGE


def seg_summary(ds: Dataset) -> dict[str, Any]:
    """What the submission-level check needs from one SEG (plain, picklable values).

    Malformed or missing functional groups give ``None`` entries; required-attribute and
    value checks report those, this summary only has to survive them.
    """
    shared = _first_item(ds, SHARED)
    per_frame = list(_items(ds, PER_FRAME))
    frames = []
    for item in per_frame:
        position = _vector(_first_item(item, PLANE_POSITION), POSITION, 3)
        sources = sorted(_referenced_uids(_first_item(item, DERIVATION_IMAGES)))
        frames.append(
            {
                "position": position,
                "sources": sources,
                "spacing": _vector(_first_item(item, PIXEL_MEASURES), PIXEL_SPACING, 2),
                "orientation": _vector(_first_item(item, PLANE_ORIENTATION), ORIENTATION, 6),
            }
        )
    referenced_series = []
    series_instances: set[str] = set()
    for item in _items(ds, REFERENCED_SERIES):
        uid = _text(item, SERIES_UID)
        if uid:
            referenced_series.append(uid)
        for inst in _items(item, REFERENCED_INSTANCES):
            if ref := _text(inst, REFERENCED_SOP_INSTANCE):
                series_instances.add(ref)
    return {
        "referenced_series": sorted(set(referenced_series)),
        "referenced_instances": sorted(series_instances | _referenced_uids(ds)),
        "frame_of_reference": _text(ds, FRAME_OF_REFERENCE),
        "rows": _int(ds, ROWS),
        "columns": _int(ds, ROWS + 1),
        "spacing": _vector(_first_item(shared, PIXEL_MEASURES), PIXEL_SPACING, 2),
        "orientation": _vector(_first_item(shared, PLANE_ORIENTATION), ORIENTATION, 6),
        "frames": frames,
    }


def check_segmentations(
    segs: dict[str, dict[str, Any]],
    files: list[dict[str, Any]],
    geometries: list[dict[str, Any]],
) -> tuple[list[Finding], set[str]]:
    """Findings for every SEG of a submission, and the SEG paths whose references all resolve.

    ``segs`` maps a SEG's path to its ``seg_summary``; ``files`` are the file records and
    ``geometries`` the per-file geometry records of the DICOM validator (image files only
    matter: a SEG never counts as the images another SEG refers to).
    """
    images = {
        f["sop_instance_uid"]: f
        for f in files
        if f.get("sop_instance_uid") and f.get("modality") != "SEG"
    }
    records = {f["path"]: f for f in files}
    series_slices: dict[str, list[dict[str, Any]]] = {}
    for g in geometries:
        if g.get("modality") != "SEG":
            series_slices.setdefault(g["series_uid"], []).append(g)
    findings: list[Finding] = []
    resolved: set[str] = set()
    for path, seg in sorted(segs.items()):
        subject = records.get(path, {}).get("subject_id")
        refs_ok = _check_references(path, seg, subject, images, series_slices, findings)
        if refs_ok:
            resolved.add(path)
        for uid in seg["referenced_series"]:
            if uid in series_slices:
                _check_geometry(path, seg, series_slices[uid], findings)
    return findings, resolved


# --- references ------------------------------------------------------------------------


def _check_references(
    path: str,
    seg: dict[str, Any],
    subject: str | None,
    images: dict[str, dict[str, Any]],
    series_slices: dict[str, list[dict[str, Any]]],
    findings: list[Finding],
) -> bool:
    def error(check: str, tag: str, message: str) -> None:
        findings.append(Finding(check, "error", message, path=path, tag=tag))

    series_tag = f"{tag_label(REFERENCED_SERIES)} > {tag_label(SERIES_UID)}"
    if not seg["referenced_series"]:
        error(
            "seg.referenced-series",
            tag_label(REFERENCED_SERIES),
            "the segmentation names no source series (ReferencedSeriesSequence is missing or "
            "empty): a SEG must say which images it was drawn on",
        )
        return False
    ok = True
    missing_series = [u for u in seg["referenced_series"] if u not in series_slices]
    if missing_series:
        ok = False
        error(
            "seg.referenced-series",
            series_tag,
            f"{len(missing_series)} of the {len(seg['referenced_series'])} series the "
            "segmentation references are not in this dataset: send the segmented images with "
            "it (same de-identified UIDs) or leave the segmentation out",
        )
    refs = seg["referenced_instances"]
    unknown = [u for u in refs if u not in images]
    if unknown and len(missing_series) < len(seg["referenced_series"]):
        ok = False
        error(
            "seg.referenced-image",
            tag_label(SOURCE_IMAGES),
            f"{len(unknown)} of the {len(refs)} images the segmentation references are not in "
            "this dataset: every referenced image must be sent with the same de-identified "
            "SOPInstanceUID",
        )
    elsewhere = {images[u].get("series_uid") for u in refs if u in images} - set(
        seg["referenced_series"]
    )
    if elsewhere:
        ok = False
        error(
            "seg.referenced-image",
            series_tag,
            "the segmentation references images of a series its ReferencedSeriesSequence "
            "does not list",
        )
    subjects = {images[u].get("subject_id") for u in refs if u in images} - {None}
    if subjects and subjects != {subject}:
        ok = False
        error(
            "seg.subject",
            tag_label(PATIENT_ID),
            "the subject identifier differs from that of the images the segmentation "
            "references: a segmentation must belong to the subject it segments",
        )
    return ok


# --- geometry --------------------------------------------------------------------------


def _check_geometry(
    path: str,
    seg: dict[str, Any],
    slices: list[dict[str, Any]],
    findings: list[Finding],
) -> None:
    def error(tag: str, message: str) -> None:
        findings.append(Finding("seg.geometry", "error", message, path=path, tag=tag))

    if any(s.get("frames", 1) != 1 for s in slices):
        return  # multi-frame source images: per-frame geometry of the source is not recorded
    series_for = _majority(s.get("frame_of_reference") for s in slices)
    if series_for and seg["frame_of_reference"] and seg["frame_of_reference"] != series_for:
        error(
            tag_label(FRAME_OF_REFERENCE),
            "FrameOfReferenceUID differs from the referenced series': the segmentation is not "
            "in the images' patient coordinate system",
        )
    size = _majority((s.get("rows"), s.get("columns")) for s in slices)
    if size and (seg["rows"], seg["columns"]) != size:
        error(
            tag_label(ROWS),
            f"segmentation frames are {seg['rows']}x{seg['columns']} pixels but the referenced "
            f"series' images are {size[0]}x{size[1]}: the frames do not match the series grid",
        )
    series_spacing = _majority(s.get("pixel_spacing") for s in slices)
    spacing = seg["spacing"] or _majority(f["spacing"] for f in seg["frames"])
    if series_spacing and not _close(spacing, series_spacing, rtol=SPACING_RTOL):
        error(
            f"{tag_label(SHARED)} > {tag_label(PIXEL_MEASURES)} > {tag_label(PIXEL_SPACING)}",
            "segmentation PixelSpacing "
            + (
                "is missing"
                if spacing is None
                else f"{_fmt(spacing)} mm differs from the series' {_fmt(series_spacing)} mm"
            ),
        )
    series_orientation = _majority(s.get("orientation") for s in slices)
    orientation = seg["orientation"] or _majority(f["orientation"] for f in seg["frames"])
    if series_orientation and not _close(orientation, series_orientation, atol=ORIENTATION_ATOL):
        error(
            f"{tag_label(SHARED)} > {tag_label(PLANE_ORIENTATION)} > {tag_label(ORIENTATION)}",
            "segmentation ImageOrientationPatient "
            + ("is missing" if orientation is None else "differs from the series'"),
        )
    _check_positions(seg, slices, series_spacing, error)


def _check_positions(
    seg: dict[str, Any],
    slices: list[dict[str, Any]],
    spacing: tuple[float, ...] | None,
    error: Any,
) -> None:
    by_uid = {s["sop_instance_uid"]: s for s in slices if s.get("sop_instance_uid")}
    positions = np.array([s["position"] for s in slices if s.get("position") is not None])
    frames = seg["frames"]
    if not frames or not len(positions):
        return
    tol = POSITION_VOXEL_FRACTION * (min(spacing) if spacing else 1.0)
    unplaced = off_grid = off_source = 0
    for frame in frames:
        if frame["position"] is None:
            unplaced += 1
            continue
        here = np.array(frame["position"])
        sources = [by_uid[u] for u in frame["sources"] if u in by_uid]
        if sources:
            if (
                min(
                    np.linalg.norm(here - np.array(s["position"]))
                    for s in sources
                    if s.get("position") is not None
                )
                > tol
            ):
                off_source += 1
        elif np.min(np.linalg.norm(positions - here, axis=1)) > tol:
            off_grid += 1
    total = len(frames)
    if unplaced:
        error(
            _POSITION_TAG,
            f"{unplaced} of {total} segmentation frame(s) have no ImagePositionPatient: the "
            "segmentation cannot be placed on the series",
        )
    if off_source:
        error(
            _POSITION_TAG,
            f"{off_source} of {total} segmentation frame(s) lie elsewhere than the slice they "
            "were derived from (DerivationImageSequence): the frames do not match the series "
            "geometry",
        )
    if off_grid:
        error(
            _POSITION_TAG,
            f"{off_grid} of {total} segmentation frame(s) lie where the referenced series has "
            "no slice: the frames do not match the series geometry",
        )


# --- small readers ---------------------------------------------------------------------


def _items(ds: Dataset | None, tag: int) -> list[Dataset]:
    if ds is None:
        return []
    elem = ds.get(tag)
    if elem is None or elem.VR != "SQ" or not elem.value:
        return []
    return list(elem.value)


def _first_item(ds: Dataset | None, tag: int) -> Dataset | None:
    items = _items(ds, tag)
    return items[0] if items else None


def _text(ds: Dataset | None, tag: int) -> str | None:
    if ds is None:
        return None
    elem = ds.get(tag)
    if elem is None or elem.value is None:
        return None
    return str(elem.value).strip(" \x00") or None


def _int(ds: Dataset, tag: int) -> int | None:
    elem = ds.get(tag)
    try:
        return int(elem.value) if elem is not None and elem.value is not None else None
    except (TypeError, ValueError):
        return None


def _vector(ds: Dataset | None, tag: int, length: int) -> tuple[float, ...] | None:
    if ds is None:
        return None
    elem = ds.get(tag)
    if elem is None or elem.value is None:
        return None
    try:
        values = tuple(float(v) for v in (elem.value if elem.VM > 1 else [elem.value]))
    except (TypeError, ValueError):
        return None
    if len(values) != length or not all(np.isfinite(values)):
        return None
    return values


def _referenced_uids(ds: Dataset | None) -> set[str]:
    """ReferencedSOPInstanceUIDs inside SourceImageSequence / ReferencedImageSequence, anywhere."""
    found: set[str] = set()
    if ds is None:
        return found
    for tag in list(ds.keys()):
        if element_vr(ds.get_item(tag)) != "SQ":  # raw check: pixel data is never converted
            continue
        elem = ds[tag]
        for item in elem.value or ():
            if elem.tag in (SOURCE_IMAGES, REFERENCED_IMAGES):
                if uid := _text(item, REFERENCED_SOP_INSTANCE):
                    found.add(uid)
            found |= _referenced_uids(item)
    return found


def _majority(values: Any) -> Any:
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def _close(
    a: tuple[float, ...] | None, b: tuple[float, ...], *, rtol: float = 0.0, atol: float = 0.0
) -> bool:
    return (
        a is not None
        and len(a) == len(b)
        and bool(np.allclose(a, b, rtol=rtol, atol=max(atol, 1e-6)))
    )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
