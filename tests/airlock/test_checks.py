"""The automated checks: each file that must not leave is held or refused, with a reason a
researcher can act on; ordinary results pass."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from catalog.airlock import CheckVerdict, ContentIndex
from enclave.airlock.checks import Limits, check_file
from enclave.airlock.sniff import Kind, sniff_file
from ingestion.content_index import CHUNK_BYTES


@dataclass
class NoData:
    """A ``DataIndex`` that knows nothing."""

    hashes: Mapping[str, list[str]] = field(default_factory=dict)

    def files_with_sha256(self, sha256: str) -> list[str]:
        return list(self.hashes.get(sha256, []))

    def chunks_found(self, digests: list[bytes]) -> dict[bytes, str]:
        return {}

    def identifiers_found(self, digests: list[bytes]) -> dict[bytes, str]:
        return {}


class NoLineage:
    def __init__(self, records: dict | None = None) -> None:
        self.records = records or {}

    def record_for(self, sha256: str):
        return self.records.get(sha256)


def run(path: Path, index, *, name: str | None = None, lineage=None, note: str = ""):
    return check_file(
        path,
        name or path.name,
        index=index,
        lineage=lineage or NoLineage(),
        limits=Limits(max_file_bytes=10 * 1024 * 1024),
        note=note,
    )


def verdicts(report) -> dict[str, CheckVerdict]:
    return {c.name: c.verdict for c in report.checks}


def reason(report, check: str) -> str:
    return next(c.reason for c in report.checks if c.name == check)


@pytest.fixture
def index(indexed):
    return ContentIndex(indexed.catalog)


def test_a_copied_dicom_file_is_refused_as_an_image_and_as_a_copy_of_the_dataset(
    indexed, index, tmp_path
):
    copy = tmp_path / "scan.dcm"
    copy.write_bytes(indexed.dicom[0].read_bytes())
    report = run(copy, index)
    assert report.verdict is CheckVerdict.REFUSE
    assert verdicts(report)["imaging"] is CheckVerdict.REFUSE
    assert "medical image (dicom" in reason(report, "imaging")
    assert "copy of dataset file lung-ct v1: dicom/SUBJ-0001/" in reason(report, "copy")


def test_the_same_dicom_file_renamed_png_is_still_refused_by_its_content(indexed, index, tmp_path):
    renamed = tmp_path / "figure.png"
    renamed.write_bytes(indexed.dicom[0].read_bytes())
    report = run(renamed, index)
    assert report.kind == "dicom"
    assert verdicts(report)["imaging"] is CheckVerdict.REFUSE
    assert "the name says .png but the content is dicom" in reason(report, "type")


def test_dicom_without_its_preamble_and_gzipped_nifti_are_recognised(indexed, tmp_path):
    bare = tmp_path / "bare.bin"
    bare.write_bytes(indexed.dicom[0].read_bytes()[132:])
    assert sniff_file(bare) is Kind.DICOM
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    header[344:348] = b"n+1\x00"
    nifti = tmp_path / "mask.nii.gz"
    nifti.write_bytes(gzip.compress(bytes(header) + bytes(64)))
    assert sniff_file(nifti) is Kind.NIFTI
    report = run(nifti, NoData(), name="mask.txt")
    assert verdicts(report)["imaging"] is CheckVerdict.REFUSE


def test_a_file_carrying_an_aligned_block_of_a_dataset_file_is_refused(indexed, index, tmp_path):
    source = indexed.dicom[1].read_bytes()
    block = source[CHUNK_BYTES : 2 * CHUNK_BYTES]
    assert len(block) == CHUNK_BYTES
    smuggled = tmp_path / "plot.png"
    head = b"\x89PNG\r\n\x1a\n" + bytes(CHUNK_BYTES - 8)
    smuggled.write_bytes(head + block + b"IEND")
    report = run(smuggled, index)
    assert verdicts(report)["copy"] is CheckVerdict.REFUSE
    assert f"offset {CHUNK_BYTES}" in reason(report, "copy")
    assert "lung-ct v1: dicom/SUBJ-0001/" in reason(report, "copy")


def test_a_csv_with_a_cell_count_of_3_is_held_naming_the_cell(tmp_path):
    table = tmp_path / "counts.csv"
    table.write_text("site,sex,patients\nOslo,F,42\nOslo,M,38\nBergen,F,3\nBergen,M,25\n")
    report = run(table, NoData())
    assert report.verdict is CheckVerdict.HOLD
    assert verdicts(report)["table"] is CheckVerdict.HOLD
    assert "cell Bergen, F / patients is 3 (below 10)" in reason(report, "table")


def test_a_zero_count_is_held_too_as_acro_treats_zeros_as_disclosive(tmp_path):
    table = tmp_path / "zeros.csv"
    table.write_text("group,cases\nA,12\nB,0\n")
    assert "cell B / cases is zero" in reason(run(table, NoData()), "table")


def test_tables_with_large_counts_or_training_curves_pass(tmp_path):
    counts = tmp_path / "counts.csv"
    counts.write_text("site,patients\nOslo,42\nBergen,25\n")
    curve = tmp_path / "loss.csv"
    curve.write_text("epoch,loss,dice\n1,0.9,0.2\n2,0.7,0.4\n3,0.5,0.6\n")
    for path in (counts, curve):
        report = run(path, NoData())
        assert report.verdict is CheckVerdict.PASS, report.checks


def test_a_text_file_holding_a_subject_id_is_held_naming_it(indexed, index, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("The outlier was subj-0001 (see slice 12).\n")
    report = run(notes, index)
    assert verdicts(report)["identifiers"] is CheckVerdict.HOLD
    assert "'subj-0001' is a subject identifier of lung-ct v1" in reason(report, "identifiers")
    clean = tmp_path / "clean.txt"
    clean.write_text("Dice 0.81 on 20 held-out subjects in 2024.\n")
    assert run(clean, index).verdict is CheckVerdict.PASS


def _safetensors(path: Path) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    return path


def test_a_model_without_lineage_is_held(tmp_path):
    model = _safetensors(tmp_path / "unet.safetensors")
    report = run(model, NoData())
    assert verdicts(report)["type"] is CheckVerdict.PASS
    assert verdicts(report)["lineage"] is CheckVerdict.HOLD
    assert "no lineage record for this model" in reason(report, "lineage")


def test_a_model_with_lineage_passes_and_names_its_run(tmp_path):
    from secret_sharing.fileio import sha256_file

    model = _safetensors(tmp_path / "unet.safetensors")
    record = {"run_id": "run-7", "datasets": [{"name": "lung-ct", "version": 1}]}
    report = run(model, NoData(), lineage=NoLineage({sha256_file(model): record}))
    assert report.verdict is CheckVerdict.PASS
    assert reason(report, "lineage") == "run run-7 on lung-ct v1"


def _torch_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return path


def test_a_pickled_model_needs_lineage_and_a_note_and_is_then_only_held(tmp_path):
    from secret_sharing.fileio import sha256_file

    model = _torch_zip(tmp_path / "unet.pt")
    bare = run(model, NoData())
    assert bare.verdict is CheckVerdict.REFUSE
    assert "runs code when loaded" in reason(bare, "type")
    lineage = NoLineage({sha256_file(model): {"run_id": "r1", "datasets": []}})
    assert "needs a note" in reason(run(model, NoData(), lineage=lineage), "type")
    noted = run(model, NoData(), lineage=lineage, note="weights for the hospital's viewer")
    assert noted.verdict is CheckVerdict.HOLD


def test_content_that_disagrees_with_its_name_or_is_off_the_list_is_refused(tmp_path):
    archive = tmp_path / "results.csv"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.txt", "x")
    archive.write_bytes(buffer.getvalue())
    report = run(archive, NoData())
    assert "the name says .csv but the content is zip" in reason(report, "type")
    vector = tmp_path / "plot.svg"
    vector.write_text("<svg xmlns='http://www.w3.org/2000/svg'></svg>")
    assert ".svg files are blocked (ACRO's list)" in reason(run(vector, NoData()), "type")
    executable = tmp_path / "tool"
    executable.write_bytes(b"\x7fELF" + bytes(100))
    assert "not on the allow-list" in reason(run(executable, NoData()), "type")


def test_a_file_over_the_cap_is_refused(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("x" * 2048)
    report = check_file(
        big, "big.txt", index=NoData(), lineage=NoLineage(), limits=Limits(max_file_bytes=1024)
    )
    assert "over the per-file cap of 1024 bytes" in reason(report, "size")
