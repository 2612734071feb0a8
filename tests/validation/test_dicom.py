"""DICOM conformance on generated series: every planted problem is one finding that names the
file and the attribute; clean series pass and are summarised as volumes."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from ingestion.report import ValidationReport
from ingestion.validators.dicom import (
    REQUIRED_ATTRIBUTES_PATH,
    build_required_attribute_table,
    requirements_for,
    validate_dicom_files,
)
from tests.phi import PHI_VALUES


def validate(root: Path, **kwargs):
    return validate_dicom_files(root, sorted(root.rglob("*.dcm")), workers=1, **kwargs)


def edit(path: Path, change) -> None:
    ds = dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid values are the point of some edits
        change(ds)
        ds.save_as(path)


def found(result, check: str | None = None):
    return [(f.check, f.path, f.tag) for f in result.findings if check in (None, f.check)]


def test_clean_series_passes_and_is_summarised(ct_series, tmp_path):
    result = validate(tmp_path)
    assert result.findings == [] and result.passed
    assert [f["path"] for f in result.files] == [f"series/{i:04d}.dcm" for i in range(1, 9)]
    record = result.files[0]
    assert record["kind"] == "dicom" and record["modality"] == "CT"
    assert record["subject_id"] == "SUBJ-0001" and len(record["sha256"]) == 64
    assert record["size"] == ct_series[0].stat().st_size
    ds = dcmread(ct_series[0])
    assert record["sop_instance_uid"] == ds.SOPInstanceUID
    assert record["series_uid"] == ds.SeriesInstanceUID
    (series,) = result.series
    assert series["series_uid"] == ds.SeriesInstanceUID
    assert series["study_uid"] == ds.StudyInstanceUID
    assert (series["rows"], series["columns"], series["slices"]) == (16, 16, 8)
    assert series["spacing"] == [pytest.approx(21.25), pytest.approx(21.25), pytest.approx(5.0)]
    assert series["orientation"] == [1, 0, 0, 0, 1, 0]
    assert series["body_part"] == "CHEST" and series["directory"] == "series"
    assert series["subject_id"] == "SUBJ-0001" and series["modality"] == "CT"


def test_non_dicom_file_named_dcm(ct_series, tmp_path):
    (tmp_path / "series" / "notes.dcm").write_text("scan notes, not an image\n")
    (tmp_path / "series" / "0000.dcm").write_bytes(b"\x00" * 200)
    result = validate(tmp_path)
    assert found(result) == [
        ("dicom.parse", "series/0000.dcm", None),
        ("dicom.parse", "series/notes.dcm", None),
    ]
    assert "not a DICOM file" in result.findings[0].message
    assert len(result.files) == 10 and result.series[0]["slices"] == 8


def test_file_truncated_inside_pixel_data(ct_series, tmp_path):
    data = ct_series[2].read_bytes()
    ct_series[2].write_bytes(data[:-100])
    result = validate(tmp_path)
    assert found(result) == [
        ("dicom.truncated", "series/0003.dcm", "(7FE0,0010) PixelData"),
        ("dicom.pixel-data", "series/0003.dcm", "(7FE0,0010) PixelData"),
    ]


def test_file_truncated_inside_the_header(ct_series, tmp_path):
    data = ct_series[2].read_bytes()
    cut = dcmread(ct_series[2]).get_item(0x00200032).value_tell + 3  # inside a value
    ct_series[2].write_bytes(data[:cut])
    result = validate(tmp_path)
    checks = {c for c, path, _ in found(result) if path == "series/0003.dcm"}
    assert checks == {
        "dicom.truncated",
        "dicom.required-attribute",
        "dicom.pixel-data",
        "dicom.series-geometry",
    }  # its position is cut short too
    assert all(path == "series/0003.dcm" for _, path, _ in found(result))


def test_file_cut_between_elements_is_still_refused(ct_series, tmp_path):
    """Cut at an element boundary, a file looks complete: the missing attributes give it away."""
    data = ct_series[2].read_bytes()
    ct_series[2].write_bytes(data[: dcmread(ct_series[2]).get_item(0x00200032).value_tell - 8])
    result = validate(tmp_path)
    assert ("dicom.required-attribute", "series/0003.dcm", "(0020,0032) ImagePositionPatient") in (
        found(result)
    )
    assert ("dicom.pixel-data", "series/0003.dcm", "(7FE0,0010) PixelData") in found(result)


@pytest.mark.parametrize(
    ("keyword", "tag", "what"),
    [
        ("ImageType", "(0008,0008) ImageType", "Type 1 attribute is missing"),
        ("RescaleSlope", "(0028,1053) RescaleSlope", "Type 1 attribute is missing"),
        ("PatientSex", "(0010,0040) PatientSex", "Type 2 attribute is missing"),
        ("StudyDate", "(0008,0020) StudyDate", "Type 2 attribute is missing"),
    ],
)
def test_missing_required_attribute(ct_series, tmp_path, keyword, tag, what):
    edit(ct_series[4], lambda ds: delattr(ds, keyword))
    result = validate(tmp_path)
    assert found(result) == [("dicom.required-attribute", "series/0005.dcm", tag)]
    assert what in result.findings[0].message and "ct-image" in result.findings[0].message


def test_empty_type_1_attribute(ct_series, tmp_path):
    edit(ct_series[0], lambda ds: setattr(ds, "FrameOfReferenceUID", ""))
    result = validate(tmp_path)
    assert found(result) == [
        ("dicom.required-attribute", "series/0001.dcm", "(0020,0052) FrameOfReferenceUID")
    ]
    assert "empty" in result.findings[0].message


@pytest.mark.parametrize(
    ("keyword", "value", "vr"),
    [
        ("SliceThickness", "5.000000000000001", "DS"),  # 16 characters at most
        ("ContentDate", "20241345", "DA"),
        ("InstanceNumber", "1.5", "IS"),
        ("BodyPartExamined", "chest!", "CS"),
        ("SeriesInstanceUID", "1.2.03.abc", "UI"),
    ],
)
def test_value_invalid_for_its_vr(ct_series, tmp_path, keyword, value, vr):
    edit(ct_series[1], lambda ds: setattr(ds, keyword, value))
    result = validate(tmp_path)
    values = [f for f in result.findings if f.check == "dicom.value"]
    assert [(f.path, f.tag.split(" ")[1]) for f in values] == [("series/0002.dcm", keyword)]
    assert f"valid {vr}" in values[0].message
    assert value not in json.dumps([f.to_dict() for f in result.findings])


def test_value_in_a_sequence_is_checked(ct_series, tmp_path):
    def bad_code(ds):
        ds.DeidentificationMethodCodeSequence[0].CodeMeaning = "x" * 70  # LO: 64 at most

    edit(ct_series[0], bad_code)
    result = validate(tmp_path)
    assert found(result) == [
        (
            "dicom.value",
            "series/0001.dcm",
            "(0012,0064) DeidentificationMethodCodeSequence[0] > (0008,0104) CodeMeaning",
        )
    ]


def test_pixel_data_shorter_than_the_header_says(ct_series, tmp_path):
    edit(ct_series[3], lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]))
    result = validate(tmp_path)
    assert found(result) == [("dicom.pixel-data", "series/0004.dcm", "(7FE0,0010) PixelData")]
    assert "does not decode" in result.findings[0].message


def test_decoded_pixels_match_pydicom(ct_series):
    from pydicom import dcmread as read

    from ingestion.validators.dicom import _decode_native

    ds = read(ct_series[0])
    ours = _decode_native(read(ct_series[0]))
    assert np.array_equal(ours[0, :, :, 0], ds.pixel_array)


COMPRESSED = [
    "MR_small_RLE.dcm",
    "JPEG2000.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
]


def test_compressed_pixel_data_decodes(tmp_path):
    for name in COMPRESSED:
        shutil.copy(get_testdata_file(name, download=False), tmp_path / name)
    result = validate(tmp_path)
    assert found(result, "dicom.pixel-data") == []
    assert len(result.files) == len(COMPRESSED)


def test_corrupt_compressed_pixel_data_is_found(tmp_path):
    target = tmp_path / "JPEG2000.dcm"
    shutil.copy(get_testdata_file("JPEG2000.dcm", download=False), target)
    ds = dcmread(target)
    data = bytearray(ds.PixelData)
    start = data.find(b"\xff\x4f\xff\x51")  # JPEG 2000 codestream: SOC then SIZ
    data[start + 4 : start + 40] = b"\xff" * 36  # the image size marker is now garbage
    ds.PixelData = bytes(data)
    ds.save_as(target)
    result = validate(tmp_path)
    assert found(result, "dicom.pixel-data") == [
        ("dicom.pixel-data", "JPEG2000.dcm", "(7FE0,0010) PixelData")
    ]


def test_series_with_a_missing_slice(ct_series, tmp_path):
    ct_series[3].unlink()
    result = validate(tmp_path)
    assert found(result) == [
        ("dicom.series-geometry", "series/0005.dcm", "(0020,0032) ImagePositionPatient")
    ]
    assert "1 slice(s) missing between series/0003.dcm and this one" in result.findings[0].message
    assert result.series[0]["spacing"][2] is None


def test_series_with_a_slice_shifted_along_the_normal(ct_series, tmp_path):
    def shift(ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.0]

    edit(ct_series[3], shift)
    result = validate(tmp_path)
    paths = [p for _, p, _ in found(result, "dicom.series-geometry")]
    assert paths == ["series/0004.dcm", "series/0005.dcm"]
    assert all("uneven slice spacing" in f.message for f in result.findings)
    assert result.series[0]["spacing"][2] is None


def test_series_with_a_slice_shifted_within_its_plane(ct_series, tmp_path):
    def shift(ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + 10.0, y, z]

    edit(ct_series[5], shift)
    result = validate(tmp_path)
    assert found(result) == [
        ("dicom.series-geometry", "series/0006.dcm", "(0020,0032) ImagePositionPatient")
    ]
    assert "within its plane" in result.findings[0].message


def test_highdicom_agrees_on_which_series_are_volumes(ct_series):
    from highdicom.spatial import get_volume_positions

    positions = [[float(v) for v in dcmread(p).ImagePositionPatient] for p in ct_series]
    orientation = [1, 0, 0, 0, 1, 0]
    spacing, _ = get_volume_positions(positions, orientation)
    assert spacing == pytest.approx(5.0)
    missing = positions[:3] + positions[4:]
    assert get_volume_positions(missing, orientation)[0] is None
    shifted = [p[:] for p in positions]
    shifted[3][2] += 2.0
    assert get_volume_positions(shifted, orientation)[0] is None


def test_series_with_a_slice_of_another_size(ct_series, tmp_path):
    def shrink(ds):
        ds.Rows = ds.Columns = 8
        ds.PixelData = np.zeros((8, 8), "<i2").tobytes()

    edit(ct_series[2], shrink)
    result = validate(tmp_path)
    assert found(result) == [("dicom.series-geometry", "series/0003.dcm", "(0028,0010) Rows")]
    assert "8x8 differs from the series' 16x16" in result.findings[0].message
    assert result.series[0]["spacing"][2] is None


def test_duplicated_sop_instance_uid(ct_series, tmp_path):
    shutil.copy(ct_series[1], tmp_path / "series" / "0002-again.dcm")
    result = validate(tmp_path)
    assert ("deid.uid-consistency", "series/0002.dcm", "(0008,0018) SOPInstanceUID") in found(
        result
    )
    assert (
        "dicom.series-geometry",
        "series/0002.dcm",
        "(0020,0032) ImagePositionPatient",
    ) in found(result)
    sop = next(f for f in result.findings if f.check == "deid.uid-consistency")
    assert "also used by series/0002-again.dcm" in sop.message


def test_same_study_with_two_subjects(make_series, tmp_path):
    first = make_series("a", subject_id="SUBJ-0001", study_uid="1.2.826.0.1.3680043.8.498.1")
    make_series(
        "b", subject_id="SUBJ-0002", study_uid="1.2.826.0.1.3680043.8.498.1", series_number=2
    )
    result = validate(tmp_path)
    mixed = found(result, "deid.uid-consistency")
    assert mixed and all(p.startswith("b/") and t == "(0010,0020) PatientID" for _, p, t in mixed)
    assert first


PHI_CASES = [
    ("patient-name", "deid.person-name", "(0010,0010) PatientName"),
    ("birth-date", "deid.patient-attribute", "(0010,0030) PatientBirthDate"),
    ("private-tag", "deid.private-tag", "(0011,0010) PrivateCreator"),
    ("overlay", "deid.repeating-group", "(6000,0010) OverlayRows"),
    (
        "sequence",
        "deid.person-name",
        "(0018,A001) ContributingEquipmentSequence[0] > (0008,1070) OperatorsName",
    ),
    ("identity-removed-missing", "deid.identity-removed", "(0012,0062) PatientIdentityRemoved"),
    ("burned-in-yes", "deid.burned-in-annotation", "(0028,0301) BurnedInAnnotation"),
]


@pytest.mark.parametrize(("kind", "check", "tag"), PHI_CASES)
def test_planted_phi_is_found_in_every_file_without_its_value(
    make_series, tmp_path, kind, check, tag, assert_no_phi, capsys
):
    make_series(phi=[kind])
    result = validate(tmp_path)
    assert found(result) == [(check, f"series/{i:04d}.dcm", tag) for i in range(1, 5)]
    report = ValidationReport(dataset="demo", findings=result.findings)
    captured = capsys.readouterr()
    assert_no_phi(
        result.findings,
        result.files,
        result.series,
        report.to_json(),
        report.to_html(),
        captured.out,
        captured.err,
    )


def test_repeated_warnings_are_collapsed_with_a_count(make_series, tmp_path, assert_no_phi):
    make_series(phi=["institution"])
    result = validate(tmp_path)
    (warning,) = result.findings
    assert warning.severity == "warning" and warning.tag == "(0008,0080) InstitutionName"
    assert warning.path == "series/0001.dcm" and "(and 3 more file(s))" in warning.message
    assert result.passed
    assert_no_phi(result.findings)
    assert PHI_VALUES["institution"] not in warning.message


def test_private_tag_allow_list_is_passed_through(make_series, tmp_path):
    make_series(phi=["private-tag"])
    result = validate(tmp_path, private_tag_allowlist={("ACME_HOSPITAL_1", 0x0011, 0x01)})
    assert result.findings == []


def test_process_pool_gives_the_same_result(demo_dataset):
    paths = sorted(demo_dataset.rglob("*.dcm"))
    calls = []
    serial = validate_dicom_files(demo_dataset, paths, workers=1)
    pooled = validate_dicom_files(
        demo_dataset, paths, workers=2, progress=lambda done, total: calls.append((done, total))
    )
    assert pooled.findings == serial.findings == []
    assert pooled.files == serial.files and pooled.series == serial.series
    assert calls[-1] == (24, 24) and all(t == 24 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_paths_relative_to_root_are_accepted(ct_series, tmp_path):
    result = validate_dicom_files(tmp_path, [p.relative_to(tmp_path) for p in ct_series])
    assert [f["path"] for f in result.files][:2] == ["series/0001.dcm", "series/0002.dcm"]


def test_unknown_sop_class_is_a_warning(ct_series, tmp_path):
    def unknown(ds):
        ds.SOPClassUID = "1.2.826.0.1.3680043.8.498.999"
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID

    edit(ct_series[0], unknown)
    result = validate(tmp_path)
    assert found(result) == [("dicom.sop-class", "series/0001.dcm", "(0008,0016) SOPClassUID")]
    assert result.passed


def test_file_meta_must_match_the_dataset(ct_series, tmp_path):
    edit(ct_series[0], lambda ds: setattr(ds.file_meta, "MediaStorageSOPInstanceUID", "1.2.3"))
    result = validate(tmp_path)
    assert found(result) == [
        ("dicom.file-meta", "series/0001.dcm", "(0002,0003) MediaStorageSOPInstanceUID")
    ]


def test_required_attribute_table_matches_installed_highdicom():
    import importlib.metadata

    assert importlib.metadata.version("highdicom") == "0.28.2"  # private tables: pinned
    committed = json.loads(REQUIRED_ATTRIBUTES_PATH.read_text())
    assert committed == build_required_attribute_table()
    ct = requirements_for("1.2.840.10008.5.1.4.1.1.2")
    assert ct.iod == "ct-image" and ct.pixel_data
    assert 0x00200032 in ct.type1 and 0x00100010 in ct.type2
    assert not requirements_for("1.2.840.10008.5.1.4.1.1.481.5").pixel_data  # RT plan


def test_a_file_that_breaks_a_check_is_a_finding_not_a_crash(ct_series, tmp_path, monkeypatch):
    import ingestion.validators.dicom as dicom_module

    real = dicom_module._check_required

    def explode_on_third(*args):
        if args[-1].endswith("0003.dcm"):  # the path
            raise KeyError("malformed element")
        return real(*args)

    monkeypatch.setattr(dicom_module, "_check_required", explode_on_third)
    result = validate(tmp_path)
    assert found(result) == [
        ("dicom.parse", "series/0003.dcm", None),
        # without its geometry, the series has a hole where the slice was
        ("dicom.series-geometry", "series/0004.dcm", "(0020,0032) ImagePositionPatient"),
    ]
    assert "could not be checked" in result.findings[0].message
    assert len(result.files) == 8 and result.files[2]["sha256"]


def test_standard_sample_files_are_checked_without_crashing():
    """pydicom's own test files: odd encodings, SR, RT, multi-frame, big endian, deflate."""
    root = Path(get_testdata_file("CT_small.dcm", download=False)).parent
    paths = sorted(p for p in root.glob("*.dcm"))
    result = validate_dicom_files(root, paths, workers=1)
    assert len(result.files) == len(paths)
    checks = {(f.path, f.check) for f in result.findings}
    assert ("CT_small.dcm", "deid.private-tag") in checks
    assert ("MR_truncated.dcm", "dicom.truncated") in checks
    assert not any(
        c == "dicom.parse" and "malformed" in f.message for f in result.findings for c in [f.check]
    )
    sr = {
        f.tag
        for f in result.findings
        if f.path == "reportsi.dcm" and f.check == "dicom.required-attribute"
    }
    assert "(0070,0022) GraphicData" not in sr  # content-item attributes are not top-level


def test_zero_copy_parse_agrees_with_a_plain_parse(make_series, tmp_path):
    """The fast path (header parse + pixel data viewed in place) must see what pydicom sees."""
    from ingestion.validators.dicom import _check_file

    make_series("clean")
    make_series("phi", phi=["patient-name", "overlay", "private-tag", "sequence"])
    broken = make_series("broken", slices=2)
    broken[0].write_bytes(broken[0].read_bytes()[:-10])
    edit(broken[1], lambda ds: setattr(ds, "PixelData", ds.PixelData + b"\x00\x00"))
    (decoy,) = make_series("decoy", slices=1)  # the pixel data tag's bytes inside a value

    def hide_tag_bytes(ds):
        ds.private_block(0x0013, "DECOY", create=True).add_new(0x01, "OB", b"\xe0\x7f\x10\x00" * 2)

    edit(decoy, hide_tag_bytes)
    from ingestion.validators.dicom import _map_file, _parse_fast

    assert _parse_fast(_map_file(str(decoy))[1]) is None  # falls back to a full parse
    assert _parse_fast(_map_file(str(broken[0]))[1]) is None  # pixel data cut short
    samples = Path(get_testdata_file("CT_small.dcm", download=False)).parent
    for root in (tmp_path, samples):
        for path in sorted(root.rglob("*.dcm")):
            rel = path.relative_to(root).as_posix()
            fast = _check_file(str(root), rel, frozenset(), "PatientID", fast=True)
            plain = _check_file(str(root), rel, frozenset(), "PatientID", fast=False)
            assert fast == plain, rel


def test_process_pool_in_a_threaded_caller_uses_forkserver(demo_dataset):
    """A service validates in a worker thread: forking then is unsafe, so a forkserver runs."""
    import threading

    from ingestion.validators.dicom import _pool_context

    paths = sorted(demo_dataset.rglob("*.dcm"))
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        assert _pool_context().get_start_method() == "forkserver"
        pooled = validate_dicom_files(demo_dataset, paths, workers=2)
    finally:
        stop.set()
        other.join()
    serial = validate_dicom_files(demo_dataset, paths, workers=1)
    assert pooled.files == serial.files and pooled.findings == serial.findings == []


def test_empty_and_unreadable_files(ct_series, tmp_path):
    (tmp_path / "series" / "empty.dcm").write_bytes(b"")
    (tmp_path / "series" / "folder.dcm").mkdir()
    result = validate_dicom_files(
        tmp_path,
        [tmp_path / "series" / "empty.dcm", tmp_path / "series" / "folder.dcm", ct_series[0]],
    )
    assert found(result) == [
        ("dicom.parse", "series/empty.dcm", None),
        ("dicom.read", "series/folder.dcm", None),
    ]
    by_path = {f["path"]: f for f in result.files}
    assert by_path["series/empty.dcm"]["size"] == 0
    assert by_path["series/folder.dcm"]["sha256"] is None


def test_files_read_into_the_reused_buffer_check_as_when_mapped(make_series, monkeypatch, tmp_path):
    """A file read into the buffer the thread reuses (after a larger one, whose bytes are
    still in it) gives the outcome a mapping of the file gives, hash and size included."""
    import ingestion.validators.dicom as dicom

    make_series("clean")
    broken = make_series("broken", slices=2)
    broken[0].write_bytes(broken[0].read_bytes()[:-10])
    (tmp_path / "empty.dcm").write_bytes(b"")
    rels = sorted(
        (p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.dcm")),
        key=lambda rel: -(tmp_path / rel).stat().st_size,  # largest first
    )
    rels += list(reversed(rels))  # and smallest first, the buffer already grown
    buffered = [dicom._check_file(str(tmp_path), rel, frozenset(), "PatientID") for rel in rels]
    monkeypatch.setattr(dicom, "READ_BUFFER_LIMIT", 0)
    mapped = [dicom._check_file(str(tmp_path), rel, frozenset(), "PatientID") for rel in rels]
    assert buffered == mapped
    assert any(o.findings for o in buffered) and any(not o.findings for o in buffered)
