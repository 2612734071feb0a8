"""What a file is, from its bytes: the airlock trusts content, never a file's name.

``sniff(head)`` reads the first bytes of a file (``HEAD_BYTES``) and names its kind: medical
images (DICOM with or without its preamble, NIfTI-1 and -2, NRRD, MetaImage), gzip (whose
content is sniffed again: ``.nii.gz``), the image and document formats results come in (PNG,
JPEG, GIF, TIFF, PDF, SVG), containers (zip: xlsx, PyTorch checkpoints), Python pickles,
safetensors, ONNX and Parquet, and text.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
from enum import StrEnum
from pathlib import Path

HEAD_BYTES = 64 * 1024


class Kind(StrEnum):
    DICOM = "dicom"
    NIFTI = "nifti"
    NRRD = "nrrd"
    METAIMAGE = "metaimage"
    GZIP = "gzip"
    PNG = "png"
    JPEG = "jpeg"
    GIF = "gif"
    TIFF = "tiff"
    PDF = "pdf"
    SVG = "svg"
    ZIP = "zip"
    XLSX = "xlsx"
    TORCH_ZIP = "torch-zip"
    PICKLE = "pickle"
    SAFETENSORS = "safetensors"
    ONNX = "onnx"
    PARQUET = "parquet"
    TEXT = "text"
    EMPTY = "empty"
    BINARY = "binary"


#: Kinds that are medical images: they never leave.
IMAGING = frozenset({Kind.DICOM, Kind.NIFTI, Kind.NRRD, Kind.METAIMAGE})
#: Kinds whose loading runs code (pickle), whatever their extension says.
PICKLED = frozenset({Kind.PICKLE, Kind.TORCH_ZIP})

# The first element tags of a DICOM file written without its 128-byte preamble and "DICM":
# group 0x0002 (file meta) or 0x0008 (identifying), little endian.
_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00")


def _dicom(head: bytes) -> bool:
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8 or head[:2] not in _DICOM_GROUPS:
        return False
    # explicit VR: two upper-case letters after the tag; implicit VR: a 4-byte length
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    (length,) = struct.unpack_from("<I", head, 4)
    return length < 1024 and head[2:4] in (b"\x00\x00", b"\x05\x00", b"\x08\x00", b"\x16\x00")


def _nifti(head: bytes) -> bool:
    if len(head) < 348:
        return False
    for order in ("<", ">"):
        (size,) = struct.unpack_from(order + "i", head, 0)
        if size == 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
            return True
        if size == 540 and len(head) >= 12 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
            return True
    return False


def _text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the head is still text.
        return exc.start >= len(head) - 3
    return True


def _zip_kind(path: Path | None) -> Kind:
    if path is None:
        return Kind.ZIP
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return Kind.ZIP
    if any(n.endswith("data.pkl") for n in names):
        return Kind.TORCH_ZIP
    if "[Content_Types].xml" in names and any(n.startswith("xl/") for n in names):
        return Kind.XLSX
    return Kind.ZIP


def _safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    (length,) = struct.unpack_from("<Q", head, 0)
    if not 2 <= length <= 100_000_000 or head[8:9] != b"{":
        return False
    body = head[8 : 8 + length] if 8 + length <= len(head) else None
    if body is None:
        return True  # a header longer than what was read: the shape fits
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False


def _onnx(head: bytes) -> bool:
    # ModelProto: field 1 (ir_version, varint) first, and an opset import naming a domain.
    return head[:1] == b"\x08" and (b"onnx" in head[:4096] or b"ai.onnx" in head[:8192])


def sniff(head: bytes, path: Path | None = None) -> Kind:
    """The kind of a file whose first bytes are ``head`` (``path`` lets containers be opened)."""
    if not head:
        return Kind.EMPTY
    if _dicom(head):
        return Kind.DICOM
    if _nifti(head):
        return Kind.NIFTI
    if head.startswith(b"NRRD000"):
        return Kind.NRRD
    if head.startswith(b"\x1f\x8b"):
        inner = _gunzip_head(head)
        if inner is not None:
            kind = sniff(inner)
            if kind in IMAGING:
                return kind
        return Kind.GZIP
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Kind.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return Kind.JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Kind.GIF
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return Kind.TIFF
    if head.startswith(b"%PDF-"):
        return Kind.PDF
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head.startswith(b"PAR1"):
        return Kind.PARQUET
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return Kind.PICKLE
    if _safetensors(head):
        return Kind.SAFETENSORS
    if _onnx(head):
        return Kind.ONNX
    if _text(head):
        text = head.lstrip().lower()
        if text.startswith(b"objecttype") or b"\nobjecttype = image" in head.lower():
            return Kind.METAIMAGE
        if b"<svg" in text[:2048]:
            return Kind.SVG
        return Kind.TEXT
    return Kind.BINARY


def _gunzip_head(head: bytes) -> bytes | None:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(head)) as stream:
            return stream.read(1024)
    except (OSError, EOFError):
        return None


def sniff_file(path: Path) -> Kind:
    with open(path, "rb") as fh:
        return sniff(fh.read(HEAD_BYTES), path)
