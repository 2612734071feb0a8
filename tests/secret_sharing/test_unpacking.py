"""The reconstructed tar stream is unpacked from segment views, by tarfile's data-filter rules."""

from __future__ import annotations

import io
import tarfile

import pytest

import secret_sharing.unpacking as unpacking
from secret_sharing.errors import ShareIntegrityError
from secret_sharing.packing import pack_segments
from secret_sharing.unpacking import SegmentCursor, unpack_segments
from tests.secret_sharing.conftest import pseudo_random_bytes, tree_of


def _segments(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _unpack(stream: bytes, staging, name: str, kind: str = "dir", segment: int = 1000):
    announced: dict[str, bytes | None] = {}

    def on_file(path, rel, data):
        assert path.is_file()
        announced[rel] = None if data is None else b"".join(data)

    cursor = SegmentCursor(iter(_segments(stream, segment)))
    unpack_segments(cursor, staging, name, kind, "transfer t", on_file)
    assert cursor.rest_is_zero()
    assert cursor.consumed == len(stream)
    return announced


def _tar(*members: tuple[str, str, bytes], pax: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if pax:
                info.pax_headers = dict(pax)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("segment", [7, 512, 4096, 1 << 20])
def test_the_packers_stream_unpacks_to_the_same_tree_at_any_segment_size(
    tmp_path, radiology_study, segment
):
    stream = b"".join(pack_segments(radiology_study, 64 * 1024))
    announced = _unpack(stream, tmp_path / "staging", radiology_study.name, segment=segment)
    assert tree_of(tmp_path / "staging" / radiology_study.name) == tree_of(radiology_study)
    # Every file is announced once, with its bytes still in memory.
    on_disk = {
        p.relative_to(radiology_study).as_posix(): p.read_bytes()
        for p in radiology_study.rglob("*")
        if p.is_file()
    }
    assert announced == on_disk


def test_a_file_over_the_in_memory_limit_is_announced_by_path_only(tmp_path, monkeypatch):
    monkeypatch.setattr(unpacking, "IN_MEMORY_LIMIT", 1000)
    big, small = pseudo_random_bytes(5000, 3), b"small"
    stream = _tar(
        ("scan", "dir", b""), ("scan/big.raw", "file", big), ("scan/a.txt", "file", small)
    )
    announced = _unpack(stream, tmp_path / "staging", "scan")
    assert announced == {"big.raw": None, "a.txt": small}
    assert (tmp_path / "staging" / "scan" / "big.raw").read_bytes() == big


def test_long_and_non_ascii_names_come_from_pax_headers(tmp_path):
    name = "scan/" + "séries-" * 30 + "/IM-0001.dcm"
    stream = _tar(("scan", "dir", b""), (name, "file", b"x" * 10))
    assert _unpack(stream, tmp_path / "staging", "scan") == {name[5:]: b"x" * 10}


def test_permissions_are_limited_like_the_data_filter(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, mode in (("scan", 0o777), ("scan/setuid", 0o4777), ("scan/private", 0o000)):
            info = tarfile.TarInfo(name)
            info.mode = mode
            if name == "scan":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = 1
                archive.addfile(info, io.BytesIO(b"x"))
    _unpack(buffer.getvalue(), tmp_path / "staging", "scan")
    root = tmp_path / "staging" / "scan"
    assert (root / "setuid").stat().st_mode & 0o7777 == 0o755
    assert (root / "private").stat().st_mode & 0o7777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    "stream,message",
    [
        (
            lambda: _tar(("scan", "dir", b""), ("scan/a", "file", b"1"), ("scan/a", "file", b"2")),
            "'scan/a': it appears twice",
        ),
        (lambda: _tar(("scan", "dir", b""), ("scan/./a", "file", b"1")), "outside the dataset"),
        (lambda: _tar(("scan", "dir", b""), ("/etc/passwd", "file", b"1")), "outside the dataset"),
        (
            lambda: _tar(
                ("scan", "dir", b""), ("scan/a", "file", b"1"), pax={"GNU.sparse.major": "1"}
            ),
            "unsupported pax key 'GNU.sparse.major'",
        ),
        (lambda: b"\x01" + _tar(("scan", "dir", b""))[1:], "invalid: bad checksum"),
        (lambda: _tar(("scan", "dir", b""), ("scan/a", "file", b"1" * 600))[:1800], "ends early"),
        (lambda: b"\0" * 1024, "the archive is empty"),
    ],
)
def test_what_the_packer_never_writes_is_refused_by_name(tmp_path, stream, message):
    with pytest.raises(ShareIntegrityError, match=message):
        _unpack(stream(), tmp_path / "staging", "scan")


def test_a_gnu_long_name_member_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("scan")
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
        info = tarfile.TarInfo("scan/" + "x" * 200)
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ShareIntegrityError, match="not a file or folder"):
        _unpack(buffer.getvalue(), tmp_path / "staging", "scan")
