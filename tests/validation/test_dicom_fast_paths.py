"""The per-file checks' shortcuts (a lean header reader, replayed sequence outcomes, file meta
UIDs read from bytes) must give exactly what the plain pydicom path gives."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from ingestion.validators import deid
from ingestion.validators.dicom import (
    _PIXEL_TAG_LE,
    _check_file,
    _meta_uid,
    _read_plain_header,
    validate_dicom_files,
)
from tests.phi import PHI_VALUES


def edit(path: Path, change, **save) -> None:
    ds = dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        change(ds)
        ds.save_as(path, **save)


def header_of(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: data.find(_PIXEL_TAG_LE, 132)]


def snapshot(ds: Dataset) -> tuple:
    """Everything a check can see of a parsed header."""
    attrs = {
        k: v
        for k, v in vars(ds).items()
        if k not in ("_dict", "file_meta", "buffer", "fileobj_type", "timestamp")
    }
    return (
        type(ds),
        [(int(t), e) for t, e in ds._dict.items()],
        type(ds.file_meta),
        [(int(t), e) for t, e in ds.file_meta._dict.items()],
        ds.is_implicit_VR,
        ds.is_little_endian,
        ds.original_character_set,
        attrs,
        ds.buffer.tell(),
    )


def plain_read(header: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(header))


def test_lean_header_reader_gives_what_dcmread_gives(make_series):
    clean = make_series("clean", slices=1)[0]
    phi = make_series("phi", slices=1, phi=list(PHI_VALUES))[0]
    implicit = make_series("implicit", slices=1)[0]
    edit(
        implicit,
        lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", ImplicitVRLittleEndian),
        implicit_vr=True,
        little_endian=True,
    )
    latin = make_series("latin", slices=1)[0]
    edit(latin, lambda ds: setattr(ds, "SpecificCharacterSet", "ISO_IR 100"))
    for path in (clean, phi, implicit, latin):
        header = header_of(path)
        lean = _read_plain_header(header)
        assert lean is not None, path
        assert snapshot(lean) == snapshot(plain_read(header)), path


def test_lean_header_reader_leaves_unusual_files_to_dcmread(make_series):
    (undefined,) = make_series("undefined", slices=1)

    def undefined_length_sequence(ds):
        ds.DeidentificationMethodCodeSequence[0].CodeValue = "113100"
        ds["DeidentificationMethodCodeSequence"].is_undefined_length = True

    edit(undefined, undefined_length_sequence)
    big = Path(get_testdata_file("MR_small_bigendian.dcm", download=False))
    (trailing,) = make_series("trailing", slices=1)
    header = header_of(trailing)
    assert _read_plain_header(header_of(undefined)) is None
    assert dcmread(big).file_meta.TransferSyntaxUID.is_little_endian is False
    assert _read_plain_header(header_of(big)) is None
    assert _read_plain_header(header + b"\x00\x00\x00") is None  # bytes that are no element
    assert _read_plain_header(header[:-3]) is None  # the last element cut short
    with pytest.raises(Exception):  # noqa: B017 - whatever dcmread raises, so does the reader
        _read_plain_header(b"\x00" * 200)


def test_every_standard_sample_header_reads_the_same():
    root = Path(get_testdata_file("CT_small.dcm", download=False)).parent
    read = 0
    for path in sorted(root.glob("*.dcm")):
        data = path.read_bytes()
        pos = data.find(_PIXEL_TAG_LE, 132)
        if pos < 0:
            continue
        try:
            lean = _read_plain_header(data[:pos])
        except Exception:
            with pytest.raises(Exception):  # noqa: B017
                plain_read(data[:pos])
            continue
        if lean is not None:
            read += 1
            assert snapshot(lean) == snapshot(plain_read(data[:pos])), path.name
    assert read >= 5


def test_replayed_sequences_give_the_same_findings_as_a_fresh_walk(make_series, tmp_path):
    """Slices repeat sequences byte for byte: the second file's findings come from the first
    file's walk, with its own path, and are those of a walk from scratch."""
    series = make_series("phi", slices=3, phi=["sequence"])

    def codes_only(ds):  # the code sequence is the only de-identification method
        del ds.DeidentificationMethod

    for path in series[1:]:
        edit(path, codes_only)

    def empty_codes(ds):  # ... and holds no item
        ds.DeidentificationMethodCodeSequence = Sequence([])

    edit(series[2], empty_codes)
    rels = [p.relative_to(tmp_path).as_posix() for p in series]
    deid._SEQUENCE_OUTCOMES.clear()
    first = [_check_file(str(tmp_path), rel, frozenset(), "PatientID") for rel in rels]
    assert deid._SEQUENCE_OUTCOMES  # remembered
    replayed = [_check_file(str(tmp_path), rel, frozenset(), "PatientID") for rel in rels]
    deid._SEQUENCE_OUTCOMES.clear()
    plain = [_check_file(str(tmp_path), rel, frozenset(), "PatientID", fast=False) for rel in rels]
    assert first == replayed == plain
    sequence_phi = [f for f in replayed[1].findings if f.check == "deid.person-name"]
    assert sequence_phi and all(f.path == rels[1] for f in sequence_phi)
    assert not [f for f in replayed[1].findings if f.check == "deid.method"]
    assert [f.check for f in replayed[2].findings if f.check == "deid.method"] == ["deid.method"]


def test_replay_depends_on_the_allow_list(make_series, tmp_path):
    series = make_series("private", slices=2)

    def private_in_an_item(ds):
        item = ds.DeidentificationMethodCodeSequence[0]
        item.private_block(0x0011, "ACME_HOSPITAL_1", create=True).add_new(0x01, "LO", "x")

    for path in series:
        edit(path, private_in_an_item)
    allow = {("ACME_HOSPITAL_1", 0x0011, 0x01)}

    def run(allowlist=frozenset(), fresh=False):
        if fresh:
            deid._SEQUENCE_OUTCOMES.clear()
        result = validate_dicom_files(tmp_path, series, workers=1, private_tag_allowlist=allowlist)
        return [f for f in result.findings if f.check == "deid.private-tag"]

    refused, allowed, refused_again = run(fresh=True), run(allow), run()
    assert [f.path for f in refused] == ["private/0001.dcm", "private/0002.dcm"]
    assert allowed == [] and refused_again == refused == run(fresh=True)
    assert refused[0].tag.startswith("(0012,0064) DeidentificationMethodCodeSequence[0] > ")


@pytest.mark.parametrize(
    "raw",
    [
        b"1.2.840.10008.5.1.4.1.1.2\x00",
        b"1.2.3 ",
        b"",
        b" 1.2.3",
        b"1.2.3\\4.5",
        b"1.2.\xe93",
    ],
)
def test_file_meta_uid_read_from_bytes_matches_the_conversion(raw):
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import FileMetaDataset
    from pydicom.tag import BaseTag

    def meta() -> Dataset:
        m = FileMetaDataset()
        m._dict[BaseTag(0x00020003)] = RawDataElement(
            BaseTag(0x00020003), "UI", len(raw), raw, 0, False, True
        )
        return m

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = str(meta().get("MediaStorageSOPInstanceUID", "") or "").strip(" \x00")
        assert _meta_uid(meta(), 0x00020003, "MediaStorageSOPInstanceUID") == converted


def test_a_replayed_sequence_still_fails_where_converting_it_fails(make_series, tmp_path):
    """pydicom converts PixelRepresentation when it converts a top-level sequence: a broken
    one stops the check of that file even when the sequence's outcome is remembered."""
    good, bad = make_series("pixrep", slices=2)
    data = bad.read_bytes()
    element = b"\x28\x00\x03\x01US\x02\x00"
    at = data.index(element)
    bad.write_bytes(
        data[:at]
        + b"\x28\x00\x03\x01US\x03\x00"
        + data[at + 8 : at + 10]
        + b"\x00"
        + data[at + 10 :]
    )
    rel_good, rel_bad = (p.relative_to(tmp_path).as_posix() for p in (good, bad))
    deid._SEQUENCE_OUTCOMES.clear()
    _check_file(str(tmp_path), rel_good, frozenset(), "PatientID")  # remembers the sequences
    replayed = _check_file(str(tmp_path), rel_bad, frozenset(), "PatientID")
    deid._SEQUENCE_OUTCOMES.clear()
    fresh = _check_file(str(tmp_path), rel_bad, frozenset(), "PatientID")
    plain = _check_file(str(tmp_path), rel_bad, frozenset(), "PatientID", fast=False)
    assert replayed == fresh == plain
    assert [f.check for f in plain.findings] == ["dicom.parse"]
    assert "could not be checked" in plain.findings[0].message
