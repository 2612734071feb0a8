"""3D volumes with patient geometry: DICOM series and label masks through MONAI readers.

DICOM series are read with MONAI's ``PydicomReader`` (pydicom decodes every transfer syntax
ingestion accepts and loads a series quickly; ITK is slow on first use and is not
installed). Volumes come back channel-first as MONAI ``MetaTensor`` in RAS with the affine
from the DICOM geometry, so a mask written in the same patient space (NIfTI, NRRD) lands on the
same voxels. MONAI and torch are imported inside the functions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from enclave.data.mounts import DatasetAccessError


class VolumeError(DatasetAccessError):
    """A series or mask cannot be read as a 3D volume (the message names the file)."""


def _quiet_monai() -> None:
    """Call before importing MONAI.

    MONAI logs once per process that an optional GPU DICOM decoder is missing; it is noise for
    researchers (pylibjpeg decodes everything ingestion accepts).
    """
    import logging

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def reader_for(path: Path) -> str:
    """MONAI reader name for a series folder or a mask file."""
    name = Path(path).name.lower()
    if Path(path).is_dir() or name.endswith(".dcm"):
        return "PydicomReader"
    if name.endswith((".nii", ".nii.gz")):
        return "NibabelReader"
    if name.endswith((".nrrd", ".nhdr")):
        return "NrrdReader"
    raise VolumeError(f"{path}: no volume reader for this kind of file (DICOM, NIfTI or NRRD)")


@lru_cache(8)
def _loader(reader: str) -> Any:
    _quiet_monai()
    from monai.transforms import LoadImage

    return LoadImage(reader=reader, image_only=True, ensure_channel_first=True)


def load_volume(path: Path) -> Any:
    """A channel-first ``MetaTensor`` (1, X, Y, Z) in RAS, with ``affine`` and ``pixdim``."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path} does not exist")
    reader = reader_for(path)
    try:
        with warnings.catch_warnings():
            _quiet_monai()
            return _loader(reader)(str(path))
    except Exception as exc:  # MONAI wraps reader failures in RuntimeError/ValueError
        raise VolumeError(
            f"{path}: cannot be read as a volume ({type(exc).__name__}: {exc})"
        ) from exc


@dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels are in the patient, in the terms radiologists use."""

    shape: tuple[int, ...]  # spatial, voxels along the array axes
    spacing: tuple[float, ...]  # mm along the array axes
    orientation: str  # anatomical direction each array axis points to, e.g. "RAS" or "LPS"
    origin: tuple[float, ...]  # RAS mm of voxel (0, 0, 0)

    def __str__(self) -> str:
        shape = "x".join(str(s) for s in self.shape)
        spacing = " x ".join(f"{s:.3g}" for s in self.spacing)
        return f"{shape} voxels, {spacing} mm, {self.orientation}"


def geometry(volume: Any) -> Geometry:
    """The geometry of a channel-first ``MetaTensor`` from :func:`load_volume`."""
    import nibabel
    import numpy as np

    affine = np.asarray(volume.affine, dtype=float)
    spatial = tuple(int(s) for s in volume.shape[1:])
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    codes = "".join(nibabel.aff2axcodes(affine))
    return Geometry(spatial, spacing, codes, tuple(float(v) for v in affine[:3, 3]))


def series_spacing(folder: Path) -> tuple[float, float, float] | None:
    """(column, row, slice) spacing in mm from two slice headers, without reading pixels.

    Used to pick a common resampling grid cheaply; ``None`` when the headers do not say.
    """
    import numpy as np
    from pydicom import dcmread

    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    headers = []
    for path in files[:2]:
        try:
            headers.append(dcmread(path, stop_before_pixels=True))
        except Exception:
            return None
    try:
        row_mm, col_mm = (float(v) for v in headers[0].PixelSpacing)
        if len(headers) == 2:
            orient = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
            normal = np.cross(orient[:3], orient[3:])
            p0 = np.asarray(headers[0].ImagePositionPatient, dtype=float)
            p1 = np.asarray(headers[1].ImagePositionPatient, dtype=float)
            slice_mm = abs(float(np.dot(p1 - p0, normal)))
            instances = abs(int(headers[1].InstanceNumber) - int(headers[0].InstanceNumber)) or 1
            slice_mm /= instances
        else:
            slice_mm = float(getattr(headers[0], "SliceThickness", 0) or 0)
    except (AttributeError, TypeError, ValueError):
        return None
    if not slice_mm:
        return None
    return (col_mm, row_mm, slice_mm)
