"""DICOM conformance and de-identification checks for one submission.

Each file is read once: hashed, parsed, checked (truncation, required Type 1/2 attributes for
its SOP class, values valid for their VR, de-identification) and its pixel data decoded. Then
each series is checked as a volume: same size, spacing and orientation, evenly spaced slices
along the normal, no gaps and no duplicates.

Required attributes come from highdicom's bundled copy of the standard (a private module of
highdicom 0.28.2, so the derived table is committed in ``data/required_attributes.json`` and a
test keeps it equal to what the installed highdicom holds).

Checks work on pydicom's raw, unconverted elements where they can: converting every value of a
512x512 slice costs more than reading it, and the benchmark target is half the raw ``dcmread``
rate. Big submissions are split over a process pool.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import math
import mmap
import os
import struct
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal, cast

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.charset import convert_encodings, decode_bytes, default_encoding
from pydicom.config import RAISE
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import ENCODED_VR, _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, validate_value
from pydicom.values import convert_string

from ingestion.report import Finding
from ingestion.validators.deid import (
    DeidConsistency,
    check_deidentification,
    declared_options,
    element_vr,
    has_value,
    tag_label,
)
from ingestion.validators.deid_options import DeidOption, DeidPolicy
from ingestion.validators.seg import (
    UID_REFERENCE_SEQUENCES,
    check_segmentations,
    is_segmentation,
    seg_summary,
)
from secret_sharing.allocator import tune_allocator

REQUIRED_ATTRIBUTES_PATH = Path(__file__).with_name("data") / "required_attributes.json"
HIGHDICOM_TABLES_VERSION = "0.28.2"

#: Submissions with at least this many files are checked by a process pool (forked workers
#: start at once; a forkserver's, used when other threads run, start far more slowly).
POOL_MIN_FILES = 48
POOL_MIN_FILES_FORKSERVER = 400
_CHUNK = 16

ProgressCallback = Callable[[int, int], None]  # (files done, files total)


@dataclass
class DicomResult:
    """What DICOM validation learned: findings, one record per file, one summary per series."""

    findings: list[Finding] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)
    #: PS3.16 option code -> number of files that declare it.
    deid_options: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def passed(self) -> bool:
        return not self.errors


# --- Required attributes from highdicom's standard tables --------------------------------


def build_required_attribute_table() -> dict[str, Any]:
    """Derive, per IOD, the top-level Type 1 and Type 2 attributes of its mandatory modules.

    Reads highdicom's ``_standard`` JSON files without importing highdicom. Conditional (1C/2C)
    attributes and those nested in sequences are not included: their conditions are not
    machine-readable in these tables.
    """
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("highdicom")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("highdicom is not installed")
    base = Path(list(spec.submodule_search_locations)[0]) / "_standard"
    sop_classes = json.loads((base / "sop_class_iod_map.json").read_text())
    iod_modules = json.loads((base / "iod_module_map.json").read_text())
    module_attributes = json.loads((base / "module_attribute_map.json").read_text())
    pixel_keywords = {"PixelData", "FloatPixelData", "DoubleFloatPixelData"}
    # The SR content module lists every content item macro's attributes at the top level;
    # they depend on each item's ValueType. Only the root container's are required there.
    flattened = {"sr-document-content": {"ValueType", "ContinuityOfContent"}}
    iods: dict[str, Any] = {}
    for iod in sorted(set(sop_classes.values())):
        required: dict[str, str] = {}
        pixel_data = False
        for module in iod_modules.get(iod, []):
            if module["usage"] != "M" or module["key"] not in module_attributes:
                continue
            for attr in module_attributes[module["key"]]:
                if attr["path"]:
                    continue
                keyword, kind = attr["keyword"], attr["type"]
                keep = flattened.get(module["key"])
                if keep is not None and keyword not in keep:
                    continue
                if keyword in pixel_keywords:
                    pixel_data = True
                if kind in ("1", "2") and required.get(keyword) != "1":
                    required[keyword] = kind
        iods[iod] = {
            "1": sorted(k for k, t in required.items() if t == "1"),
            "2": sorted(k for k, t in required.items() if t == "2"),
            "pixel_data": pixel_data,
        }
    return {
        "source": "highdicom {} highdicom/_standard/*.json (mandatory modules, top-level "
        "Type 1 and 2 attributes)".format(importlib.metadata.version("highdicom")),
        "sop_classes": dict(sorted(sop_classes.items())),
        "iods": iods,
    }


@dataclass(frozen=True)
class _Requirements:
    iod: str
    type1: tuple[int, ...]
    type2: tuple[int, ...]
    pixel_data: bool


@lru_cache(1)
def _required_table() -> dict[str, Any]:
    return json.loads(REQUIRED_ATTRIBUTES_PATH.read_text())


@lru_cache(256)
def requirements_for(sop_class_uid: str) -> _Requirements | None:
    table = _required_table()
    iod = table["sop_classes"].get(sop_class_uid)
    if iod is None:
        return None
    entry = table["iods"][iod]

    def tags(keywords: list[str]) -> tuple[int, ...]:
        return tuple(t for t in (tag_for_keyword(k) for k in keywords) if t is not None)

    return _Requirements(iod, tags(entry["1"]), tags(entry["2"]), entry["pixel_data"])


# --- Value representation checks on raw elements -----------------------------------------

_VR_NAMES = {
    "AE": "application entity",
    "AS": "age string",
    "CS": "code string",
    "DA": "date",
    "DS": "decimal string",
    "DT": "date time",
    "IS": "integer string",
    "TM": "time",
    "UI": "UID",
    "UR": "URI",
    "LO": "long string",
    "SH": "short string",
    "ST": "short text",
    "LT": "long text",
    "PN": "person name",
}
# VRs pydicom's validators check on bytes; single-valued ones are not split on backslash.
_CHECKED_TEXT_VRS = frozenset(_VR_NAMES)
_SINGLE_VALUED = frozenset({"ST", "LT", "UR"})
_CHARSET_DEPENDENT = frozenset({"LO", "SH", "ST", "LT", "PN"})
_BINARY_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "UV": 8, "SV": 8, "AT": 4}
_DEFAULT_CHARSETS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


# Slices of one series repeat most values (UIDs, spacing, dates): remember verdicts.
_VALID_CACHE: dict[tuple[str, bytes, tuple[str, ...] | None], bool] = {}
_VALID_CACHE_MAX = 100_000


def _value_valid(vr: str, value: bytes, encodings: list[str] | None) -> bool:
    key = (vr, value, tuple(encodings) if encodings else None)
    verdict = _VALID_CACHE.get(key)
    if verdict is None:
        if len(_VALID_CACHE) >= _VALID_CACHE_MAX:
            _VALID_CACHE.clear()
        verdict = _VALID_CACHE[key] = _validate_text(vr, value, encodings)
    return verdict


def _validate_text(vr: str, value: bytes, encodings: list[str] | None) -> bool:
    parts = [value] if vr in _SINGLE_VALUED else value.split(b"\\")
    for part in parts:
        part = part.rstrip(b" \x00")
        if not part:
            continue
        try:
            validate_value(vr, part, RAISE)
        except ValueError:
            if encodings is None or vr not in _CHARSET_DEPENDENT:
                return False
            # Byte length overstates the length of multi-byte characters: decode and retry.
            try:
                validate_value(vr, decode_bytes(part, encodings, set()), RAISE)
            except (ValueError, LookupError):
                return False
    return True


class _ValueChecker:
    """Checks values for their VR on raw bytes, as a visitor of the de-identification walk."""

    #: The walk calls the visitor only for these VRs: the others are not checked here.
    vrs = _CHECKED_TEXT_VRS | frozenset(_BINARY_SIZES)

    def __init__(self, path: str, encodings: list[str] | None) -> None:
        self.path = path
        self.encodings = encodings
        #: What the verdicts depend on besides the element: lets the walk replay them.
        self.cache_key = ("values", tuple(encodings) if encodings else None)
        self.findings: list[Finding] = []

    def __call__(self, elem: DataElement | RawDataElement, vr: str, prefix: str) -> None:
        value = elem.value
        if type(value) is not bytes:
            if value is None or not isinstance(value, bytes | bytearray):
                return  # converted by pydicom already, which validated it on the way
            value = bytes(value)
        if vr in _CHECKED_TEXT_VRS:
            ok = _value_valid(vr, value, self.encodings)  # verdicts cached across slices
        elif vr in _BINARY_SIZES:
            ok = len(value) % _BINARY_SIZES[vr] == 0
        else:
            return
        if not ok:
            self.findings.append(
                Finding(
                    "dicom.value",
                    "error",
                    f"value is not a valid {vr} ({_VR_NAMES.get(vr, 'binary number')}) for its VR",
                    path=self.path,
                    tag=prefix + tag_label(elem.tag),
                )
            )


# --- One file ----------------------------------------------------------------------------

_SEQ_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SEQ_DELIMITER_BE = b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
PIXEL_DATA = 0x7FE00010
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
MODALITY = 0x00080060
PATIENT_ID = 0x00100020
BODY_PART = 0x00180015
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
POSITION = 0x00200032
FRAME_OF_REFERENCE = 0x00200052
ORIENTATION = 0x00200037
SAMPLES_PER_PIXEL = 0x00280002
PHOTOMETRIC = 0x00280004
NUMBER_OF_FRAMES = 0x00280008
ROWS = 0x00280010
COLUMNS = 0x00280011
PIXEL_SPACING = 0x00280030
BITS_ALLOCATED = 0x00280100
BITS_STORED = 0x00280101
PIXEL_REPRESENTATION = 0x00280103
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
    }
)


def _truncation(elems: Elements, data: memoryview) -> tuple[int, str] | None:
    """pydicom stops quietly at the end of a short file: compare where the last element ends."""
    if not elems:
        return None
    last = elems[next(reversed(elems))]  # parse order: the last element read
    if not isinstance(last, RawDataElement) or last.value is None:
        return None
    start = last.value_tell
    if last.length == _UNDEFINED:
        end = start + len(last.value)
        delimiter = _SEQ_DELIMITER_LE if last.is_little_endian else _SEQ_DELIMITER_BE
        if bytes(data[end : end + 8]) != delimiter:
            return last.tag, "the file ends inside"
        end += 8
    else:
        if len(last.value) < last.length:
            return last.tag, "the file ends inside"
        end = start + last.length
    if end < len(data):
        return last.tag, "unreadable bytes follow"
    return None


Elements = dict[int, Any]  # tag (plain int) -> DataElement | RawDataElement


def element_index(ds: Dataset) -> Elements:
    """Top-level elements keyed by plain ints, in parse order.

    pydicom keys are ``BaseTag`` objects whose ``__eq__`` is Python code, so every
    ``ds.get_item`` pays for a tag conversion and a Python comparison; one plain dict per
    file makes the many lookups below C-speed.
    """
    return dict(zip(map(int, ds.keys()), ds.values(), strict=True))


def _raw_text(elems: Elements, tag: int) -> str | None:
    """An ASCII-VR value (UI, CS, DS, IS) straight from the raw bytes, without conversion."""
    elem = elems.get(tag)
    if elem is None:
        return None
    value = elem.value
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        try:
            text = bytes(value).decode("ascii").strip(" \x00")
        except UnicodeDecodeError:
            return None  # not ASCII: not a valid UI, CS, DS or IS (the value check says so)
    else:
        text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
        text = text.strip(" \x00")
    return text or None


def _converted_text(ds: Dataset, tag: int) -> str | None:
    try:
        value = ds[tag].value
    except Exception:
        return None
    if value is None:
        return None
    text = str(value).strip(" \x00")
    return text or None


def _raw_floats(elems: Elements, tag: int) -> tuple[float, ...] | None:
    text = _raw_text(elems, tag)
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None


def _raw_int(elems: Elements, tag: int) -> int | None:
    """US/SS/IS values from raw bytes (IS is text, US/SS binary)."""
    elem = elems.get(tag)
    if elem is None or elem.value is None:
        return None
    value = elem.value
    vr = element_vr(elem)
    try:
        if isinstance(value, bytes | bytearray):
            if vr in ("US", "SS"):
                if len(value) < 2:
                    return None
                order: Literal["little", "big"] = "little" if elem.is_little_endian else "big"
                return int.from_bytes(value[:2], order, signed=vr == "SS")
            text = bytes(value).decode("ascii").strip(" \x00").split("\\")[0]
            return int(text) if text else None
        if isinstance(value, MultiValue):
            value = value[0]
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, UnicodeDecodeError):
        return None


@dataclass
class _FileOutcome:
    record: dict[str, Any]
    findings: list[Finding]
    ids: dict[str, str] | None = None
    geometry: dict[str, Any] | None = None
    seg: dict[str, Any] | None = None  # seg_summary() of a DICOM Segmentation
    #: PS3.16 codes of the options the file declares (DeidentificationMethodCodeSequence).
    deid_options: tuple[str, ...] = ()


class _BufferReader:
    """A read-only file object over a memoryview, so pydicom parses without a second copy."""

    name = None

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def read(self, size: int | None = -1) -> bytes:
        end = (
            len(self._view) if size is None or size < 0 else min(self._pos + size, len(self._view))
        )
        out = self._view[self._pos : end].tobytes()
        self._pos = end
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, len(self._view))[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


#: Files up to this size are read into a buffer the checking thread reuses; larger ones
#: are mapped, so memory stays bounded whatever a submission holds.
READ_BUFFER_LIMIT = 16 * 1024 * 1024
_read_buffers = threading.local()


def _map_file(path: str) -> tuple[mmap.mmap | None, memoryview]:
    """The file's bytes for hashing, header parsing and native pixel decoding.

    A file up to ``READ_BUFFER_LIMIT`` is read into a buffer this thread keeps for the next
    file: its pages stay mapped, so a slice costs one copy out of the page cache, where mapping
    each file afresh faults in and unmaps every page of it (and a fresh buffer per file would
    fault in as many). Larger files are mapped, never copied. The view is valid until the next
    call on this thread; a caller drops every view into it before then (``_check_file``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None, memoryview(b"")
        if size > READ_BUFFER_LIMIT:
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            return mapped, memoryview(mapped)
        buffer = getattr(_read_buffers, "buffer", None)
        if buffer is None or len(buffer) < size:
            # A new buffer rather than a resized one: a view some garbage cycle still holds
            # into the old one keeps it alive instead of making the resize fail.
            buffer = bytearray(max(size, 1 << 20))
            _read_buffers.buffer = buffer
        whole = memoryview(buffer)
        got = 0
        while got < size:
            count = os.readv(fd, [whole[got:size]])
            if count == 0:  # shorter than it was a moment ago: what is there is the file
                break
            got += count
        return None, whole[:got]
    finally:
        os.close(fd)


_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"


_EXPLICIT_HEAD = struct.Struct("<HH2sH").unpack_from
_IMPLICIT_HEAD = struct.Struct("<HHL").unpack_from
_LENGTH_32 = struct.Struct("<L").unpack_from
_ITEM_DELIMITER = 0xFFFEE00D
_KNOWN_VRS = {raw: raw.decode(default_encoding) for raw in ENCODED_VR}
_LONG_LENGTH_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_new_tuple = tuple.__new__


def _read_plain_header(header: bytes) -> Dataset | None:
    """``dcmread(io.BytesIO(header))`` for the common case, without its per-element overhead.

    Does what pydicom's ``read_partial`` does for a little-endian native file whose elements
    (all of defined length, all explicit VRs known to pydicom) tile the header exactly: the
    same preamble and file meta readers, the same raw elements in the same order, the same
    Dataset and FileDataset construction and encodings. Returns None for anything else
    (undefined lengths, an implicit/explicit VR switch, a command set, trailing bytes...),
    and the caller parses with ``dcmread``.
    """
    fp = io.BytesIO(header)
    preamble = read_preamble(fp, False)
    file_meta = _read_file_meta_info(fp)
    syntax = file_meta.get("TransferSyntaxUID")
    if syntax == ExplicitVRLittleEndian:
        implicit = False
    elif syntax == ImplicitVRLittleEndian:
        implicit = True
    else:
        return None
    pos = fp.tell()
    end = len(header)
    if end - pos < 8:
        return None
    # read_partial's command set (group 0000) and read_dataset's VR-switch guess: take
    # neither path.
    first_vr = header[pos + 4 : pos + 6]
    looks_explicit = 0x40 < first_vr[0] < 0x5B and 0x40 < first_vr[1] < 0x5B
    if header[pos : pos + 2] == b"\x00\x00" or looks_explicit == implicit:
        return None
    # The Dataset takes this dict over and converts its raw elements in place when read.
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    while pos < end:
        if end - pos < 8:
            return None
        if implicit:
            group, elem, length = _IMPLICIT_HEAD(header, pos)
            vr = None
            pos += 8
        else:
            group, elem, raw_vr, length = _EXPLICIT_HEAD(header, pos)
            vr = _KNOWN_VRS.get(raw_vr)  # pydicom's ENCODED_VR, decoded
            if vr is None:
                return None
            pos += 8
            if vr in _LONG_LENGTH_VRS:
                if end - pos < 4:
                    return None
                length = _LENGTH_32(header, pos)[0]
                pos += 4
        tag = group << 16 | elem
        if tag == _ITEM_DELIMITER or length == _UNDEFINED or pos + length > end:
            return None
        # An empty raw value is b"" or None (empty_value_for_VR with raw=True).
        value = (
            header[pos : pos + length]
            if length > 0
            else cast("bytes | None", empty_value_for_VR(vr, raw=True))
        )
        if tag == 0x00080005:  # as pydicom's element generator does (it may warn or raise)
            convert_encodings(convert_string(value or b"", True))
        key = BaseTag(tag)
        # RawDataElement(key, vr, length, value, pos, implicit, True), without the Python-level
        # __new__ of a NamedTuple (is_raw=True and is_buffered=False are its defaults)
        elements[key] = _new_tuple(
            RawDataElement, (key, vr, length, value, pos, implicit, True, True, False)
        )
        pos += length
    dataset = Dataset(elements, parent_encoding=default_encoding)
    encoding: str | list[str]
    if 0x00080005 in elements:
        charset_element = elements[BaseTag(0x00080005)]
        assert isinstance(charset_element, RawDataElement)  # nothing has read the dataset yet
        charset = convert_raw_data_element(charset_element).value
        encoding = convert_encodings(charset)
    else:
        encoding = default_encoding
    dataset.set_original_encoding(implicit, True, encoding)
    fp.seek(0, os.SEEK_END)  # where dcmread leaves it
    ds = FileDataset(fp, dataset, preamble, file_meta, implicit, True)
    ds.set_original_encoding(implicit, True, dataset._character_set)
    return ds


def _transfer_syntax(meta: Dataset) -> str:
    """``str(meta.get("TransferSyntaxUID", "") or "")``; the file meta reader has already
    converted the element, so its value is taken without the keyword lookup."""
    elem = meta.get_item(0x00020010)
    value = elem.value if isinstance(elem, DataElement) else meta.get("TransferSyntaxUID", "")
    return str(value or "")


def _parse_fast(view: memoryview) -> Dataset | None:
    """Parse the header only, then attach native pixel data as a zero-copy view.

    The header ends where the first (7FE0,0010) tag starts; pydicom parses those few
    kilobytes and the pixel value is never copied. Returns None (parse the ordinary way) for
    anything unusual: big endian, compressed or deflated data, the tag bytes occurring inside
    an earlier value, elements after the pixel data, a truncated pixel data value.
    """
    buf = view.obj
    if not isinstance(buf, bytes | bytearray | mmap.mmap):
        return None
    pos = buf.find(_PIXEL_TAG_LE, 132, len(view))
    if pos < 0:
        return None
    header = bytes(view[:pos])
    try:
        ds = _read_plain_header(header)
        if ds is None:
            ds = dcmread(io.BytesIO(header))
    except Exception:
        return None
    syntax = _transfer_syntax(ds.file_meta)
    if syntax not in NATIVE_SYNTAXES or syntax in (DEFLATED, BIG_ENDIAN) or not len(ds):
        return None
    # pydicom annotates keys() as an AbstractSet; it is the dict's keys view, which reverses.
    last = ds.get_item(next(reversed(ds.keys())))  # type: ignore[call-overload]
    if (
        not isinstance(last, RawDataElement)
        or last.length == _UNDEFINED
        or last.value is None
        or len(last.value) != last.length
        or last.value_tell + last.length != pos
    ):
        return None  # the tag bytes were inside a value: not the real header end
    implicit = syntax == IMPLICIT_LITTLE
    head = bytes(view[pos : pos + 12])
    if implicit:
        start, length, vr = pos + 8, int.from_bytes(head[4:8], "little"), "OW"
    elif head[4:6] in (b"OB", b"OW"):
        start, length, vr = pos + 12, int.from_bytes(head[8:12], "little"), head[4:6].decode()
    else:
        return None
    if length == _UNDEFINED or start + length != len(view):
        return None
    ds[PIXEL_DATA] = RawDataElement(
        PIXEL_DATA,
        vr,
        length,
        view[start : start + length],
        start,
        implicit,
        True,
        True,
    )
    return ds


def _as_policy(policy: DeidPolicy | frozenset) -> DeidPolicy:
    """A bare private-tag allow-list (older callers) is a policy with no options allowed."""
    return policy if isinstance(policy, DeidPolicy) else DeidPolicy(frozenset(policy))


def _check_file(
    root: str,
    rel: str,
    policy: DeidPolicy | frozenset,
    subject_attribute: str,
    fast: bool = True,
) -> _FileOutcome:
    policy = _as_policy(policy)
    full = os.path.join(root, rel)
    record: dict[str, Any] = {
        "path": rel,
        "size": None,
        "sha256": None,
        "kind": "dicom",
        "study_uid": None,
        "series_uid": None,
        "sop_instance_uid": None,
        "modality": None,
        "subject_id": None,
    }
    try:
        mapped, view = _map_file(full)
    except (OSError, ValueError) as exc:
        return _FileOutcome(
            record,
            [
                Finding(
                    "dicom.read",
                    "error",
                    f"cannot read the file ({getattr(exc, 'strerror', None) or type(exc).__name__})",
                    path=rel,
                )
            ],
        )
    try:
        record["size"] = len(view)
        record["sha256"] = hashlib.sha256(view).hexdigest()
        return _parse_and_check(view, rel, record, policy, subject_attribute, fast)
    finally:
        view.release()
        if mapped is not None:
            try:
                mapped.close()
            except BufferError:  # a view survived in a reference cycle: the GC closes it
                pass


def _parse_and_check(
    view: memoryview,
    rel: str,
    record: dict[str, Any],
    policy: DeidPolicy,
    subject_attribute: str,
    fast: bool,
) -> _FileOutcome:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = _parse_fast(view) if fast else None
            if ds is None:
                ds = dcmread(_BufferReader(view))
        except InvalidDicomError:
            return _FileOutcome(
                record,
                [
                    Finding(
                        "dicom.parse",
                        "error",
                        "not a DICOM file: no DICM preamble and File Meta Information (DICOM PS3.10)",
                        path=rel,
                    )
                ],
            )
        except Exception as exc:
            return _FileOutcome(
                record,
                [
                    Finding(
                        "dicom.parse",
                        "error",
                        f"the file does not parse as DICOM ({type(exc).__name__}): truncated or corrupt",
                        path=rel,
                    )
                ],
            )
        try:
            return _check_dataset(ds, view, rel, record, policy, subject_attribute)
        except Exception as exc:
            return _FileOutcome(
                record,
                [
                    Finding(
                        "dicom.parse",
                        "error",
                        f"the file could not be checked: an element is malformed ({type(exc).__name__})",
                        path=rel,
                    )
                ],
            )
        finally:
            del ds  # drop views into the shared buffer before it is reused


def _encodings(ds: Dataset) -> list[str] | None:
    """Python codecs for a non-default SpecificCharacterSet (None for ASCII/Latin-1 defaults)."""
    charset = ds.get_item(0x00080005)
    if charset is None or not charset.value:
        return None
    raw = charset.value
    names = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    names_list = [n.strip() for n in names.split("\\")]
    if not set(names_list) - _DEFAULT_CHARSETS:
        return None
    try:
        return convert_encodings(names_list)
    except Exception:
        return None


def _check_dataset(
    ds: Dataset,
    data: memoryview,
    rel: str,
    record: dict[str, Any],
    policy: DeidPolicy,
    subject_attribute: str,
) -> _FileOutcome:
    findings: list[Finding] = []
    elems = element_index(ds)
    truncated = _truncation(elems, data)
    if truncated is not None:
        tag, how = truncated
        findings.append(
            Finding(
                "dicom.truncated",
                "error",
                f"the file is truncated or corrupt: {how} {tag_label(tag)}",
                path=rel,
                tag=tag_label(tag),
            )
        )
    values = _ValueChecker(rel, _encodings(ds))
    declared = declared_options(ds)
    deid = check_deidentification(ds, rel, policy=policy, declared=declared, element_visitor=values)
    findings += values.findings
    findings += _check_required(ds, elems, rel)
    findings += deid
    findings += _check_pixels(ds, elems, rel)

    subject_tag = tag_for_keyword(subject_attribute) or PATIENT_ID
    record.update(
        study_uid=_raw_text(elems, STUDY_UID),
        series_uid=_raw_text(elems, SERIES_UID),
        sop_instance_uid=_raw_text(elems, SOP_INSTANCE_UID),
        modality=_raw_text(elems, MODALITY),
        subject_id=_converted_text(ds, subject_tag),
    )
    patient_id = (
        record["subject_id"] if subject_tag == PATIENT_ID else _converted_text(ds, PATIENT_ID)
    )
    ids = {
        "study_uid": record["study_uid"] or "",
        "series_uid": record["series_uid"] or "",
        "sop_instance_uid": record["sop_instance_uid"] or "",
        "patient_id": patient_id or "",
    }
    seg = seg_summary(ds) if is_segmentation(_raw_text(elems, SOP_CLASS_UID)) else None
    return _FileOutcome(
        record,
        findings,
        ids,
        _geometry_of(elems, rel, record),
        seg,
        tuple(sorted(o.code for o in declared.options)),
    )


def _meta_uid(meta: Dataset, tag: int, keyword: str) -> str:
    """A file meta UID as its converted value's text, stripped.

    A plain single-valued raw UI value converts to its Latin-1 text without trailing
    padding (pydicom's ``convert_UI``), so it is read straight from the bytes; anything else
    takes pydicom's conversion.
    """
    elem = meta.get_item(tag)
    if (
        isinstance(elem, RawDataElement)
        and elem.VR == "UI"
        and type(elem.value) is bytes
        and b"\\" not in elem.value
    ):
        return elem.value.decode("latin-1").strip(" \x00")
    return str(meta.get(keyword, "") or "").strip(" \x00")


def _check_required(ds: Dataset, elems: Elements, path: str) -> list[Finding]:
    findings = []
    sop_class = _raw_text(elems, SOP_CLASS_UID)
    meta = ds.file_meta
    meta_class = _meta_uid(meta, 0x00020002, "MediaStorageSOPClassUID")
    meta_instance = _meta_uid(meta, 0x00020003, "MediaStorageSOPInstanceUID")
    sop_instance = _raw_text(elems, SOP_INSTANCE_UID)
    if sop_class and meta_class and meta_class != sop_class:
        findings.append(
            Finding(
                "dicom.file-meta",
                "error",
                "MediaStorageSOPClassUID differs from SOPClassUID",
                path=path,
                tag=tag_label(0x00020002),
            )
        )
    if sop_instance and meta_instance and meta_instance != sop_instance:
        findings.append(
            Finding(
                "dicom.file-meta",
                "error",
                "MediaStorageSOPInstanceUID differs from SOPInstanceUID",
                path=path,
                tag=tag_label(0x00020003),
            )
        )
    sop_class = sop_class or meta_class
    if not sop_class:
        return findings + [
            Finding(
                "dicom.required-attribute",
                "error",
                "Type 1 attribute is missing: without a SOP class the file cannot be checked",
                path=path,
                tag=tag_label(0x00080016),
            )
        ]
    req = requirements_for(sop_class)
    if req is None:
        return findings + [
            Finding(
                "dicom.sop-class",
                "warning",
                "SOP class is not in the standard tables: required attributes were not checked",
                path=path,
                tag=tag_label(0x00080016),
            )
        ]
    present = elems
    for tag in req.type1:
        if tag not in present:
            findings.append(
                Finding(
                    "dicom.required-attribute",
                    "error",
                    f"Type 1 attribute is missing; the {req.iod} IOD requires it with a value",
                    path=path,
                    tag=tag_label(tag),
                )
            )
        else:
            elem = elems[tag]
            if not has_value(elem, element_vr(elem)) and tag not in PIXEL_TAGS:
                findings.append(
                    Finding(
                        "dicom.required-attribute",
                        "error",
                        f"Type 1 attribute is empty; the {req.iod} IOD requires a value",
                        path=path,
                        tag=tag_label(tag),
                    )
                )
    for tag in req.type2:
        if tag not in present:
            findings.append(
                Finding(
                    "dicom.required-attribute",
                    "error",
                    f"Type 2 attribute is missing; the {req.iod} IOD requires it (empty if unknown)",
                    path=path,
                    tag=tag_label(tag),
                )
            )
    if req.pixel_data and not any(t in present for t in PIXEL_TAGS):
        findings.append(
            Finding(
                "dicom.pixel-data",
                "error",
                f"no pixel data, but the {req.iod} IOD is an image",
                path=path,
                tag=tag_label(0x7FE00010),
            )
        )
    return findings


class _PixelError(Exception):
    pass


def _decode_native(ds: Dataset, elems: Elements | None = None) -> np.ndarray:
    """Decode uncompressed pixel data the way pydicom's native decoder does, from raw bytes.

    ``Dataset.pixel_array`` converts every group 0028 element and copies the frame, which costs
    more than reading the slice. Here the header is read raw and the bytes viewed in place;
    the length rule is the decoder's.
    """
    elems = element_index(ds) if elems is None else elems
    elem = elems[PIXEL_DATA]
    rows, columns = _raw_int(elems, ROWS), _raw_int(elems, COLUMNS)
    samples = _raw_int(elems, SAMPLES_PER_PIXEL) or 1
    bits = _raw_int(elems, BITS_ALLOCATED)
    stored = _raw_int(elems, BITS_STORED)
    signed = _raw_int(elems, PIXEL_REPRESENTATION)
    frames = _raw_int(elems, NUMBER_OF_FRAMES) or 1
    if not rows or not columns:
        raise _PixelError("Rows and Columns must be positive")
    if bits not in (8, 16, 32, 64):
        raise _PixelError(f"BitsAllocated {bits} is not 8, 16, 32 or 64")
    if stored is None or not 0 < stored <= bits:
        raise _PixelError("BitsStored is missing or larger than BitsAllocated")
    if signed not in (0, 1):
        raise _PixelError("PixelRepresentation must be 0 or 1")
    if samples not in (1, 3, 4):
        raise _PixelError(f"SamplesPerPixel {samples} is not 1, 3 or 4")
    count = rows * columns * samples * frames
    expected = count * bits // 8
    value = elem.value or b""
    if len(value) < expected:
        raise _PixelError(
            f"the pixel data has {len(value)} bytes where Rows, Columns, SamplesPerPixel, "
            f"BitsAllocated and NumberOfFrames need {expected}"
        )
    order = "<" if elem.is_little_endian else ">"
    dtype = np.dtype(f"{order}{'i' if signed else 'u'}{bits // 8}")
    return np.frombuffer(value, dtype, count=count).reshape(frames, rows, columns, samples)


def _check_pixels(ds: Dataset, elems: Elements, path: str) -> list[Finding]:
    present = [t for t in PIXEL_TAGS if t in elems]
    if not present:
        return []
    syntax = _transfer_syntax(ds.file_meta)
    photometric = _raw_text(elems, PHOTOMETRIC) or ""
    native = (
        present == [PIXEL_DATA]
        and syntax in NATIVE_SYNTAXES
        and photometric != "YBR_FULL_422"
        and _raw_int(elems, BITS_ALLOCATED) != 1
    )
    try:
        if native:
            _decode_native(ds, elems)
        else:
            ds.pixel_array  # noqa: B018 - decoding is the check (pylibjpeg, pyjpegls, RLE)
    except Exception as exc:
        reason = str(exc).split("\n")[0][:200]
        return [
            Finding(
                "dicom.pixel-data",
                "error",
                f"pixel data does not decode ({type(exc).__name__}: {reason})",
                path=path,
                tag=tag_label(present[0]),
            )
        ]
    return []


def _geometry_of(elems: Elements, path: str, record: dict[str, Any]) -> dict[str, Any] | None:
    if not record["series_uid"]:
        return None
    frames = _raw_int(elems, NUMBER_OF_FRAMES) or 1
    return {
        "path": path,
        "series_uid": record["series_uid"],
        "study_uid": record["study_uid"],
        "subject_id": record["subject_id"],
        "modality": record["modality"],
        "body_part": _raw_text(elems, BODY_PART),
        "frames": frames,
        "rows": _raw_int(elems, ROWS),
        "columns": _raw_int(elems, COLUMNS),
        "pixel_spacing": _vector(elems, PIXEL_SPACING, 2),
        "orientation": _vector(elems, ORIENTATION, 6),
        "position": _vector(elems, POSITION, 3) if frames == 1 else None,
        "sop_instance_uid": record["sop_instance_uid"],
        "frame_of_reference": _raw_text(elems, FRAME_OF_REFERENCE),
    }


def _vector(elems: Elements, tag: int, length: int) -> tuple[float, ...] | None:
    """A fixed-length numeric vector, or None when absent, malformed or not finite."""
    values = _raw_floats(elems, tag)
    if values is None or len(values) != length or not all(map(math.isfinite, values)):
        return None
    return values


def _check_chunk(
    root: str, rels: list[str], policy: DeidPolicy, subject_attribute: str
) -> list[_FileOutcome]:
    """One pool task: a few files, to keep inter-process traffic small."""
    return [_check_file(root, rel, policy, subject_attribute) for rel in rels]


def precheck_files(
    root: str,
    rels: list[str],
    subject_attribute: str = "PatientID",
    policy: DeidPolicy | frozenset = frozenset(),
) -> list[tuple[str, Any]]:
    """The per-file checks of ``validate_dicom_files`` for a few files, as (path, outcome)
    pairs to hand back as its ``precomputed``: lets the ingestion worker check files in a
    process pool while reconstruction is still unpacking the rest. Picklable, top level."""
    return [(rel, _check_file(root, rel, policy, subject_attribute)) for rel in rels]


def prepare_pool_process() -> None:
    """Each validation process's initializer: keep freed memory (``tune_allocator``) and
    freeze what it inherited from the forkserver (``gc.freeze()``), so that a full collection
    walks only the objects the checks create, not the preloaded modules' (touching those
    would also copy their pages into every process)."""
    tune_allocator()
    gc.freeze()


def pool_context() -> Any:
    """The multiprocessing context the validation pool uses (fork, or forkserver when the
    caller runs threads)."""
    return _pool_context()


# --- Series geometry ---------------------------------------------------------------------


def _majority(values: Iterable[Any]) -> Any:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def _close(a: tuple[float, ...] | None, b: tuple[float, ...] | None, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def check_series_geometry(slices: list[dict[str, Any]]) -> tuple[list[Finding], float | None]:
    """Findings for one series of single-frame slices, and its slice spacing if it is a volume.

    A volume needs one size, pixel spacing and orientation, and positions along the normal
    that are evenly spaced: a missing slice shows as a gap of k spacings, a shifted one as an
    uneven step, a duplicate as a zero step.
    """
    findings: list[Finding] = []
    size = _majority((s["rows"], s["columns"]) for s in slices)
    spacing = _majority(s["pixel_spacing"] for s in slices)
    orientation = _majority(s["orientation"] for s in slices)
    consistent = True
    for s in slices:
        if (s["rows"], s["columns"]) != size:
            consistent = False
            findings.append(
                Finding(
                    "dicom.series-geometry",
                    "error",
                    f"image size {s['rows']}x{s['columns']} differs from the series' "
                    f"{size[0]}x{size[1]}",
                    path=s["path"],
                    tag=tag_label(0x00280010),
                )
            )
        if not _close(s["pixel_spacing"], spacing, 1e-3):
            consistent = False
            findings.append(
                Finding(
                    "dicom.series-geometry",
                    "error",
                    "PixelSpacing differs from the rest of the series",
                    path=s["path"],
                    tag=tag_label(0x00280030),
                )
            )
        if not _close(s["orientation"], orientation, 1e-4):
            consistent = False
            findings.append(
                Finding(
                    "dicom.series-geometry",
                    "error",
                    "ImageOrientationPatient differs from the rest of the series",
                    path=s["path"],
                    tag=tag_label(0x00200037),
                )
            )
    positioned = [s for s in slices if s["position"] is not None]
    if len(slices) < 2 or orientation is None or len(orientation) != 6:
        return findings, None
    if len(positioned) < len(slices):
        for s in slices:
            if s["position"] is None:
                findings.append(
                    Finding(
                        "dicom.series-geometry",
                        "error",
                        "slice has no usable ImagePositionPatient (three numbers): the series "
                        "cannot form a volume",
                        path=s["path"],
                        tag=tag_label(0x00200032),
                    )
                )
        return findings, None
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    positions = np.array([s["position"] for s in positioned], dtype=float)
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    distance = distance[order]
    ordered = [positioned[i] for i in order]
    steps = np.diff(distance)
    nonzero = steps[steps > 1e-3]
    if not len(nonzero):
        findings.append(
            Finding(
                "dicom.series-geometry",
                "error",
                "all slices share one position",
                path=ordered[-1]["path"],
                tag=tag_label(0x00200032),
            )
        )
        return findings, None
    step = float(np.median(nonzero))
    tol = max(0.01 * step, 1e-3)
    # In-plane offsets: a volume's slice positions lie on one line along the normal.
    in_plane = positions[order] - np.outer(distance, normal)
    drift = np.linalg.norm(in_plane - in_plane[0], axis=1)
    regular = consistent
    for i, gap in enumerate(steps):
        a, b = ordered[i], ordered[i + 1]
        if gap <= tol:
            regular = False
            findings.append(
                Finding(
                    "dicom.series-geometry",
                    "error",
                    f"slice has the same position as {a['path']} (duplicate slice)",
                    path=b["path"],
                    tag=tag_label(0x00200032),
                )
            )
        elif abs(gap - step) > tol:
            regular = False
            k = gap / step
            if abs(k - round(k)) * step <= tol and round(k) >= 2:
                msg = (
                    f"{round(k) - 1} slice(s) missing between {a['path']} and this one "
                    f"(gap {gap:.3g} mm, spacing {step:.3g} mm)"
                )
            else:
                msg = (
                    f"uneven slice spacing: {gap:.3g} mm after {a['path']} where the series "
                    f"has {step:.3g} mm (shifted slice)"
                )
            findings.append(
                Finding(
                    "dicom.series-geometry",
                    "error",
                    msg,
                    path=b["path"],
                    tag=tag_label(0x00200032),
                )
            )
    for s, d in zip(ordered, drift, strict=True):
        if d > max(tol, 0.01):
            regular = False
            findings.append(
                Finding(
                    "dicom.series-geometry",
                    "error",
                    f"slice is shifted {d:.3g} mm within its plane relative to the series",
                    path=s["path"],
                    tag=tag_label(0x00200032),
                )
            )
    return findings, (step if regular else None)


def _summarise_series(geoms: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Finding]]:
    first = geoms[0]
    single_frame = [g for g in geoms if g["frames"] == 1]
    findings: list[Finding] = []
    z = None
    if len(geoms) == len(single_frame) and len(geoms) > 1 and first["orientation"] is not None:
        findings, z = check_series_geometry(geoms)
    size = _majority((g["rows"], g["columns"]) for g in geoms)
    pixel_spacing = _majority(g["pixel_spacing"] for g in geoms)
    orientation = _majority(g["orientation"] for g in geoms)
    parents = [str(PurePosixPath(g["path"]).parent) for g in geoms]
    directory = os.path.commonpath(parents) if all(p != "." for p in parents) else "."
    summary = {
        "series_uid": first["series_uid"],
        "study_uid": _majority(g["study_uid"] for g in geoms),
        "subject_id": _majority(g["subject_id"] for g in geoms),
        "modality": _majority(g["modality"] for g in geoms),
        "rows": size[0] if size else None,
        "columns": size[1] if size else None,
        "slices": sum(g["frames"] for g in geoms),
        "spacing": [
            pixel_spacing[1] if pixel_spacing and len(pixel_spacing) == 2 else None,
            pixel_spacing[0] if pixel_spacing and len(pixel_spacing) == 2 else None,
            z,
        ],
        "orientation": list(orientation) if orientation else None,
        "body_part": _majority(g["body_part"] for g in geoms if g["body_part"]),
        "directory": directory,
    }
    return summary, findings


# --- Submission --------------------------------------------------------------------------


def _collapse_warnings(findings: list[Finding]) -> list[Finding]:
    """One warning per (check, tag) with a count: 200 slices need not say the same thing 200x."""
    groups: dict[tuple[str, str | None, str], list[Finding]] = defaultdict(list)
    out: list[Finding] = []
    for f in findings:
        if f.severity == "warning":
            key = (f.check, f.tag, f.message)
            if not groups[key]:
                out.append(f)
            groups[key].append(f)
        else:
            out.append(f)
    collapsed = []
    for f in out:
        group = groups.get((f.check, f.tag, f.message)) if f.severity == "warning" else None
        if group and len(group) > 1:
            f = Finding(
                f.check,
                f.severity,
                f"{f.message} (and {len(group) - 1} more file(s))",
                path=f.path,
                tag=f.tag,
            )
        collapsed.append(f)
    return collapsed


def _verified_reference(finding: Finding, resolved: set[str]) -> bool:
    """A dummy-value warning on a SEG reference sequence whose UIDs all resolved (see seg.py)."""
    return (
        finding.check == "deid.dummy-value"
        and finding.path in resolved
        and any((finding.tag or "").endswith(" " + k) for k in UID_REFERENCE_SEQUENCES)
    )


def _default_workers(count: int) -> int:
    threshold = POOL_MIN_FILES if _can_fork() else POOL_MIN_FILES_FORKSERVER
    if count < threshold:
        return 1
    return pool_size()


def pool_size() -> int:
    """Validation processes for a large submission: one per core this process may use, at
    most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def _can_fork() -> bool:
    """Forking is cheap and inherits the loaded tables, but only safe with no other threads
    (a lock held by another thread at fork time stays locked in the child)."""
    import multiprocessing

    return threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()


def warm_pool() -> None:
    """Start the forkserver (this module preloaded) now rather than at a transfer's first
    file: the ingestion worker calls this when it starts, so importing pydicom, numpy and the
    attribute tables is not done while a provider waits."""
    ctx = _pool_context()
    if ctx.get_start_method() == "forkserver":
        # One process forked by the server returns only once the server has loaded this
        # module: the import is then over, not merely started.
        child = ctx.Process(target=tune_allocator, name="validation-pool-warm-up")
        child.start()
        child.join(timeout=120)


def _pool_context() -> Any:
    import multiprocessing

    if _can_fork():
        return multiprocessing.get_context("fork")
    # forkserver children import the caller's __main__: service entry points must keep the
    # `if __name__ == "__main__":` guard (uvicorn, pytest and console scripts do). The server
    # imports this module once and every worker forks from it with pydicom, numpy and the
    # tables loaded, so a pool starts without a fresh import per worker.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def validate_dicom_files(
    root: Path,
    paths: Iterable[Path],
    *,
    progress: ProgressCallback | None = None,
    private_tag_allowlist: Iterable[Any] = frozenset(),
    subject_attribute: str = "PatientID",
    workers: int | None = None,
    precomputed: Mapping[str, Any] | None = None,
    allowed_options: Iterable[str | DeidOption] | None = (),
) -> DicomResult:
    """Check every DICOM file of a submission and summarise its series.

    ``precomputed`` maps relative paths to the outcome ``precheck_files`` gave for them
    (with the same subject attribute and policy) while the files were being unpacked;
    only the files it lacks are read here. The checks across files run here either way.

    ``allowed_options``: the de-identification options (PS3.16 codes) the provider may use;
    ``None`` applies whatever the files declare (a provider's own check before sending).
    ``result.deid_options`` counts the files declaring each option.

    ``paths`` are absolute or relative to ``root``; reports name them relative to ``root``.
    ``progress(done, total)`` is called as files finish. ``workers`` defaults to one process
    per core (at most 4) for submissions of ``POOL_MIN_FILES`` files or more
    (``POOL_MIN_FILES_FORKSERVER`` when other threads are running).
    """
    root = Path(root)
    rels = []
    for p in paths:
        p = Path(p)
        full = p if p.is_absolute() else root / p
        rels.append(full.relative_to(root).as_posix())
    rels.sort()
    policy = DeidPolicy.of(private_tag_allowlist, allowed_options)
    total = len(rels)
    outcomes: list[_FileOutcome] = []
    if precomputed:
        outcomes = [precomputed[rel] for rel in rels if rel in precomputed]
        rels = [rel for rel in rels if rel not in precomputed]
    workers = _default_workers(len(rels)) if workers is None else max(1, workers)
    _required_table()  # loaded before forking so the workers inherit it

    def done(batch: list[_FileOutcome]) -> None:
        outcomes.extend(batch)
        if progress is not None:
            progress(len(outcomes), total)

    if workers == 1:
        for rel in rels:
            done([_check_file(str(root), rel, policy, subject_attribute)])
    else:
        chunks = [rels[i : i + _CHUNK] for i in range(0, total, _CHUNK)]
        with ProcessPoolExecutor(
            workers, mp_context=_pool_context(), initializer=prepare_pool_process
        ) as pool:
            for batch in pool.map(
                _check_chunk,
                [str(root)] * len(chunks),
                chunks,
                [policy] * len(chunks),
                [subject_attribute] * len(chunks),
            ):
                done(batch)

    result = DicomResult()
    consistency = DeidConsistency()
    by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    findings: list[Finding] = []
    segs: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        result.files.append(outcome.record)
        findings += outcome.findings
        if outcome.ids is not None:
            consistency.add_identifiers(outcome.record["path"], **outcome.ids)
        if outcome.geometry is not None:
            by_series[outcome.geometry["series_uid"]].append(outcome.geometry)
        if outcome.seg is not None:
            segs[outcome.record["path"]] = outcome.seg
        for code in outcome.deid_options:
            result.deid_options[code] = result.deid_options.get(code, 0) + 1
    findings += consistency.findings()
    if segs:
        seg_findings, resolved = check_segmentations(
            segs, result.files, [g for geoms in by_series.values() for g in geoms]
        )
        findings = [f for f in findings if not _verified_reference(f, resolved)] + seg_findings
    for geoms in by_series.values():
        summary, series_findings = _summarise_series(geoms)
        result.series.append(summary)
        findings += series_findings
    result.findings = _collapse_warnings(findings)
    return result
