"""The encrypted dataset store: round trips, and damage that must not decrypt."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

from enclave.custody import MasterKey
from ingestion import store
from ingestion.store import StoredVersion, StoreError


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey(os.urandom(32))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    (root / "dicom" / "series-1").mkdir(parents=True)
    (root / "dataset.yaml").write_text("name: demo\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "dicom" / "series-1" / "a.dcm").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "dicom" / "series-1" / "b.dcm").write_bytes(os.urandom(1024 * 1024))  # exact segment
    (root / "tables").mkdir()
    (root / "tables" / "clinical.csv").write_text("subject,age\ns1,40\n")
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _stored(tmp_path, dataset, master_key) -> StoredVersion:
    return store.write_version(
        dataset, tmp_path / "store", master_key, name_hint="ab" * 16, segment_size=1024 * 1024
    )


def test_materialize_gives_back_identical_files(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    assert version.file_count == 5
    out = store.materialize(version, tmp_path / "out", master_key)
    assert _files(out) == _files(dataset)


def test_store_holds_no_plaintext_names_or_content(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    blob = b"".join(p.read_bytes() for p in Path(version.store_location).rglob("*") if p.is_file())
    assert b"clinical.csv" not in blob and b"series-1" not in blob
    assert b"subject,age" not in blob
    meta = json.loads((Path(version.store_location) / "store.json").read_text())
    assert meta["files"] == 5 and meta["cipher"] == "AES-256-GCM"
    assert not list((tmp_path / "store").glob(".tmp-*"))


def test_streaming_read_matches_file(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    opened = store.open_version(version, master_key)
    assert sorted(opened.files) == sorted(_files(dataset))
    with opened.open("dicom/series-1/a.dcm") as fh:
        head = fh.read(10)
        rest = fh.read()
    assert head + rest == (dataset / "dicom/series-1/a.dcm").read_bytes()


def test_wrong_master_key_is_refused(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    with pytest.raises(Exception, match="master key|wrapped key"):
        store.materialize(version, tmp_path / "out", MasterKey(os.urandom(32)))


def _object_bytes(version, opened, path: str) -> tuple[Path, int, int]:
    """(pack file, offset, length) of one stored file's encrypted object."""
    entry = opened.files[path]
    return (
        Path(version.store_location) / "packs" / f"{entry.pack:06d}.pack",
        entry.offset,
        entry.length,
    )


def test_objects_are_packed_not_one_file_each(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    opened = store.open_version(version, master_key)
    assert opened.meta["format"] == "enclave-store/2"
    assert [p.name for p in (Path(version.store_location) / "packs").iterdir()] == ["000001.pack"]
    spans = sorted((f.offset, f.offset + f.length) for f in opened.files.values())
    assert all(end == start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


def test_flipped_byte_fails_authentication(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    opened = store.open_version(version, master_key)
    pack, offset, length = _object_bytes(version, opened, "dicom/series-1/b.dcm")
    data = bytearray(pack.read_bytes())
    data[offset + length // 2] ^= 1
    pack.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="failed authentication"):
        store.materialize(version, tmp_path / "out", master_key)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and "partial" in p.name]


def test_an_object_moved_into_anothers_place_does_not_decrypt(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    opened = store.open_version(version, master_key)
    pack, a_offset, _ = _object_bytes(version, opened, "dicom/series-1/a.dcm")
    _, b_offset, b_length = _object_bytes(version, opened, "dicom/series-1/b.dcm")
    data = bytearray(pack.read_bytes())
    data[b_offset : b_offset + b_length] = data[a_offset : a_offset + b_length]
    pack.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="b.dcm .* failed authentication"):
        opened.read_bytes("dicom/series-1/b.dcm")


def test_truncated_pack_is_detected(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    opened = store.open_version(version, master_key)
    pack, offset, length = _object_bytes(version, opened, "tables/clinical.csv")
    assert offset + length == pack.stat().st_size  # the last object of the pack
    with open(pack, "r+b") as fh:
        fh.truncate(offset + length - 3)
    with pytest.raises(StoreError, match="truncated"):
        opened.read_bytes("tables/clinical.csv")


def test_a_segment_cut_out_of_the_pack_is_detected(tmp_path, dataset, master_key):
    """Drop a.dcm's last segment: its remaining segments still authenticate, and what now
    follows them is b.dcm's object."""
    version = _stored(tmp_path, dataset, master_key)
    opened = store.open_version(version, master_key)
    pack, offset, length = _object_bytes(version, opened, "dicom/series-1/a.dcm")
    seg = 5 + 1024 * 1024 + 16
    data = pack.read_bytes()
    pack.write_bytes(data[: offset + 8 + 3 * seg] + data[offset + length :])
    with pytest.raises(StoreError, match="a.dcm"):
        opened.read_bytes("dicom/series-1/a.dcm")


def test_a_version_in_the_one_file_per_object_format_still_reads(tmp_path, dataset, master_key):
    """enclave-store/1 (objects/000001.enc, no pack fields in the index) stays readable."""
    writer = store.VersionWriter(
        tmp_path / "store", master_key, name_hint="legacy", segment_size=1024 * 1024
    )
    root = writer.tmp
    (root / "objects").mkdir()
    entries = []
    for number, (rel, data) in enumerate(sorted(_files(dataset).items()), start=1):
        with open(root / "objects" / f"{number:06d}.enc", "wb") as dst:
            size, sha = store._encrypt_stream(
                writer._aead, writer.store_id, number, rel, io.BytesIO(data), dst, 1024 * 1024
            )
        entries.append({"path": rel, "object": number, "size": size, "sha256": sha})
    with open(root / "index.enc", "wb") as dst:
        store._encrypt_stream(
            writer._aead,
            writer.store_id,
            0,
            "",
            io.BytesIO(json.dumps(entries).encode()),
            dst,
            1024 * 1024,
        )
    (root / "store.json").write_text(
        json.dumps({"format": "enclave-store/1", "store_id": writer.store_id})
    )
    shutil.rmtree(root / "packs")
    root.rename(writer.final)
    version = StoredVersion(
        str(writer.final),
        master_key.wrap(writer._data_key, store.key_context(writer.store_id)),
        writer.store_id,
        0,
        0,
    )
    assert _files(store.materialize(version, tmp_path / "out", master_key)) == _files(dataset)


def test_version_copied_under_another_id_does_not_open(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    copy = tmp_path / "store" / "copy"
    shutil.copytree(version.store_location, copy)
    meta = json.loads((copy / "store.json").read_text())
    meta["store_id"] = "cd" * 16 + "-00000000"
    (copy / "store.json").write_text(json.dumps(meta))
    forged = StoredVersion(str(copy), version.wrapped_key, meta["store_id"], 0, 0)
    with pytest.raises(Exception, match="wrapped key|master key"):
        store.materialize(forged, tmp_path / "out", master_key)


def test_materialize_refuses_non_empty_destination(tmp_path, dataset, master_key):
    version = _stored(tmp_path, dataset, master_key)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        store.materialize(version, tmp_path / "out", master_key)


def test_digests_from_validation_stand_in_for_the_stores_own(tmp_path, dataset, master_key):
    """The worker encrypts unhashed and commits validation's digests: reads still check them."""
    from secret_sharing.fileio import sha256_file

    writer = store.VersionWriter(tmp_path / "store", master_key, name_hint="hashes")
    writer.add_tree(dataset, hashed=False)
    digests = {rel: sha256_file(dataset / rel) for rel in _files(dataset)}
    version = writer.commit(hashes=digests)
    out = store.materialize(version, tmp_path / "out", master_key)
    assert _files(out) == _files(dataset)

    # A digest that is not the encrypted bytes' (content changed after validation) is caught.
    writer = store.VersionWriter(tmp_path / "store", master_key, name_hint="wrong")
    writer.add_tree(dataset, hashed=False)
    version = writer.commit(hashes=dict(digests, **{"tables/clinical.csv": "0" * 64}))
    with pytest.raises(StoreError):
        store.materialize(version, tmp_path / "out-2", master_key)


def test_unhashed_file_without_a_digest_is_not_committed(tmp_path, dataset, master_key):
    writer = store.VersionWriter(tmp_path / "store", master_key, name_hint="missing")
    writer.add_tree(dataset, hashed=False)
    with pytest.raises(StoreError, match="no SHA-256 for dataset.yaml"):
        writer.commit(hashes={})
    assert not list((tmp_path / "store").iterdir())


def test_files_given_as_views_in_memory_store_the_same_bytes(tmp_path, dataset, master_key):
    """Reconstruction hands files over as views of its segments, split anywhere."""
    files = _files(dataset)
    writer = store.VersionWriter(
        tmp_path / "store", master_key, name_hint="views", segment_size=1024 * 1024
    )
    for number, (rel, data) in enumerate(sorted(files.items())):
        cut = [0, *sorted({len(data) // 3, len(data) // 3 + number, len(data) - 1}), len(data)]
        pieces = [memoryview(data)[a:b] for a, b in zip(cut, cut[1:], strict=False) if b >= a]
        stored = writer.add_data(rel, pieces)
        assert stored.size == len(data)
    with pytest.raises(StoreError, match="added to the stored version twice"):
        writer.add_data("dataset.yaml", [b"again"])
    version = writer.commit()
    assert _files(store.materialize(version, tmp_path / "out", master_key)) == files
    # Same objects as files read from disk: segment records of at most 1 MiB.
    reference = _stored(tmp_path / "ref", dataset, master_key)
    lengths = {f.path: f.length for f in store.open_version(version, master_key).files.values()}
    ref = {f.path: f.length for f in store.open_version(reference, master_key).files.values()}
    assert lengths == ref


def test_writers_in_several_threads_share_packs_that_roll_over(tmp_path, master_key, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(store, "PACK_BYTES", 64 * 1024)
    files = {f"dicom/{i:03d}.dcm": os.urandom(1000 + 997 * i) for i in range(60)}
    writer = store.VersionWriter(tmp_path / "store", master_key, name_hint="threads")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda item: writer.add_data(item[0], [item[1]]), files.items()))
    version = writer.commit()
    packs = list((Path(version.store_location) / "packs").iterdir())
    assert len(packs) > 5 and all(p.stat().st_size <= 64 * 1024 + 60_000 for p in packs)
    assert _files(store.materialize(version, tmp_path / "out", master_key)) == files


# ---- random access (the decrypting mounts read ranges, not whole files)


def _random_access_version(tmp_path, master_key, segment_size=64 * 1024):
    src = tmp_path / "ra"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(5 * segment_size + 1234))
    (src / "exact.bin").write_bytes(os.urandom(2 * segment_size))
    (src / "empty").write_bytes(b"")
    version = store.write_version(
        src, tmp_path / "ra-store", master_key, name_hint="ra", segment_size=segment_size
    )
    return src, version


@pytest.mark.parametrize("segment_size", [64 * 1024, 4 * 1024 * 1024])
def test_any_range_of_a_stored_file_reads_back_exactly(tmp_path, master_key, segment_size):
    import random

    src, version = _random_access_version(tmp_path, master_key, segment_size)
    opened = store.open_version(version, master_key)
    assert opened.segment_size == segment_size
    rng = random.Random(7)
    for name in ("big.bin", "exact.bin", "empty"):
        plain = (src / name).read_bytes()
        with opened.ranges(name) as reader:
            cases = [(0, len(plain) + 10), (len(plain), 5), (max(0, len(plain) - 1), 4)]
            cases += [(rng.randrange(len(plain) + 1), rng.randrange(1, 200_000)) for _ in range(40)]
            for offset, size in cases:
                assert reader.read(offset, size) == plain[offset : offset + size], (offset, size)


def test_a_range_over_a_tampered_segment_fails_naming_the_segment(tmp_path, master_key):
    src, version = _random_access_version(tmp_path, master_key)
    opened = store.open_version(version, master_key)
    entry = opened.files["big.bin"]
    pack = Path(version.store_location) / "packs" / f"{entry.pack:06d}.pack"
    record = 5 + 64 * 1024 + 16
    at = entry.offset + len(store.MAGIC) + 2 * record + 100  # inside segment 2
    with open(pack, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 1]))
    with opened.ranges("big.bin") as reader:
        assert reader.read(0, 1000) == (src / "big.bin").read_bytes()[:1000]  # segment 0 is fine
        with pytest.raises(StoreError, match="big.bin .* segment 2 failed authentication"):
            reader.read(2 * 64 * 1024 + 10, 10)


def test_a_range_reader_refuses_an_object_of_the_wrong_length(tmp_path, master_key):
    _, version = _random_access_version(tmp_path, master_key)
    opened = store.open_version(version, master_key)
    entry = opened.files["big.bin"]
    opened.files["big.bin"] = store.StoredFile(**{**entry.__dict__, "size": entry.size + 1})
    with pytest.raises(StoreError, match="object is .* bytes, .* expected"):
        opened.ranges("big.bin")
    with pytest.raises(StoreError, match="not in stored version"):
        opened.ranges("no/such/file")
