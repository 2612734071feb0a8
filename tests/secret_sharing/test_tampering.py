"""Every way a share can be wrong is named, and nothing reaches the output folder."""

import os
import shutil

import pytest

from secret_sharing import (
    NotEnoughSharesError,
    ShareError,
    ShareFormatError,
    ShareIntegrityError,
    ShareSignatureError,
    combine_shares,
    read_share_info,
    verify_share,
)
from secret_sharing import format as fmt

from .conftest import tree_of


def flip_bit(path, offset, bit=0):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ (1 << bit)]))


def part_offsets(path):
    """Offsets of one byte inside each part of a share (from its own valid footer)."""
    info = read_share_info(path)
    layout = info.layout
    return {
        "header magic": 0,
        "header transfer id": 20,
        "header share index": 28,
        "header k": 29,
        "header reserved": 50,
        "data block, first segment": fmt.HEADER_LEN + 10,
        "data block, middle segment": layout.block_offset(1) + 1000,
        "data block, last segment": layout.block_offset(layout.segment_count - 1) + 3,
        "block-hash index": layout.index_offset + 40,
        "key share x": layout.key_share_offset,
        "key share y": layout.key_share_offset + 7,
        "manifest": layout.manifest_offset + 30,
        "manifest digit": layout.manifest_offset
        + info.manifest_bytes.index(b'"share_length":')
        + 16,
        "signature": layout.signature_offset + 5,
        "footer offsets": layout.footer_offset + 7,
        "footer transfer id": layout.footer_offset + 64,
        "footer share index": layout.footer_offset + 82,
        "footer magic": info.file_length - 1,
    }


PARTS = [
    "header magic",
    "header transfer id",
    "header share index",
    "header k",
    "header reserved",
    "data block, first segment",
    "data block, middle segment",
    "data block, last segment",
    "block-hash index",
    "key share x",
    "key share y",
    "manifest",
    "manifest digit",
    "signature",
    "footer offsets",
    "footer transfer id",
    "footer share index",
    "footer magic",
]


@pytest.fixture
def transfer(multi_segment_study, split_transfer):
    return split_transfer(multi_segment_study, 3, 5)


def assert_nothing_written(inbox):
    assert not inbox.exists() or os.listdir(inbox) == []


@pytest.mark.parametrize("part", PARTS)
def test_bit_flip_with_exactly_k_shares_names_the_share(tmp_path, transfer, provider_key, part):
    victim = transfer.shares[1]
    flip_bit(victim, part_offsets(victim)[part])
    inbox = tmp_path / "inbox"
    with pytest.raises(ShareError) as caught:
        combine_shares(transfer.shares[:3], inbox, verify_key=provider_key.public_key())
    assert str(victim) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert_nothing_written(inbox)
    with pytest.raises(ShareError, match=str(victim)):
        verify_share(victim, provider_key.public_key())


@pytest.mark.parametrize("part", PARTS)
def test_bit_flip_with_a_spare_share_still_rebuilds(tmp_path, transfer, provider_key, part):
    victim = transfer.shares[1]
    flip_bit(victim, part_offsets(victim)[part])
    result = combine_shares(
        transfer.shares[:4], tmp_path / "in", verify_key=provider_key.public_key()
    )
    assert tree_of(result.output_path) == tree_of(transfer.source)
    assert list(result.rejected) == [victim]
    assert victim not in result.used_shares and len(result.used_shares) == 3


def test_corrupt_block_mid_stream_switches_to_the_spare(tmp_path, transfer, provider_key):
    victim = transfer.shares[0]
    flip_bit(victim, part_offsets(victim)["data block, last segment"])
    result = combine_shares(transfer.shares, tmp_path / "in", verify_key=provider_key.public_key())
    assert "segment 2 does not match its signed hash" in result.rejected[victim]
    assert tree_of(result.output_path) == tree_of(transfer.source)
    assert result.used_shares == transfer.shares[1:4]


def test_truncated_share(tmp_path, transfer, provider_key):
    victim = transfer.shares[2]
    with open(victim, "r+b") as handle:
        handle.truncate(victim.stat().st_size - 100)
    with pytest.raises(ShareFormatError, match=f"{victim}: .*(truncated|footer)"):
        read_share_info(victim)
    with pytest.raises(NotEnoughSharesError, match=str(victim)):
        combine_shares(transfer.shares[:3], tmp_path / "in", verify_key=provider_key.public_key())
    assert_nothing_written(tmp_path / "in")
    # truncated inside the data region, footer re-appended: layout no longer matches
    data = victim.read_bytes()
    victim.write_bytes(data[:1000] + data[-fmt.FOOTER_LEN :])
    with pytest.raises(ShareFormatError, match=str(victim)):
        verify_share(victim, provider_key.public_key())


def test_empty_and_foreign_files(tmp_path, transfer, provider_key):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_bytes(b"not a share at all, just some text that is long enough" * 4)
    for path in (empty, text):
        with pytest.raises(ShareFormatError, match=str(path)):
            read_share_info(path)
    with pytest.raises(ShareFormatError, match="no such share file"):
        read_share_info(tmp_path / "missing")


def test_share_from_another_transfer(
    tmp_path, transfer, split_transfer, provider_key, radiology_study
):
    other = split_transfer(radiology_study, 3, 5)
    foreign = other.shares[3]
    with pytest.raises(NotEnoughSharesError) as caught:
        combine_shares(
            [*transfer.shares[:2], foreign], tmp_path / "in", verify_key=provider_key.public_key()
        )
    message = str(caught.value)
    assert (
        f"{foreign}: belongs to transfer {other.transfer_id}, not {transfer.transfer_id}" in message
    )
    assert_nothing_written(tmp_path / "in")
    result = combine_shares(
        [foreign, *transfer.shares[:3]], tmp_path / "in2", verify_key=provider_key.public_key()
    )
    assert foreign in result.rejected and tree_of(result.output_path) == tree_of(transfer.source)


def test_duplicated_share(tmp_path, transfer, provider_key):
    copy = tmp_path / "copy-of-share-1"
    shutil.copy(transfer.shares[0], copy)
    for duplicate in (transfer.shares[0], copy):
        with pytest.raises(NotEnoughSharesError) as caught:
            combine_shares(
                [transfer.shares[0], transfer.shares[1], duplicate],
                tmp_path / "in",
                verify_key=provider_key.public_key(),
            )
        assert f"{duplicate}: duplicates share index 1" in str(caught.value)
        assert_nothing_written(tmp_path / "in")


def test_wrong_signer(
    tmp_path, transfer, split_transfer, provider_key, other_provider_key, radiology_study
):
    with pytest.raises(ShareSignatureError, match="not signed by the given verify key"):
        verify_share(transfer.shares[0], other_provider_key.public_key())
    with pytest.raises(NotEnoughSharesError, match="not signed by the given verify key"):
        combine_shares(transfer.shares, tmp_path / "in", verify_key=other_provider_key.public_key())
    assert_nothing_written(tmp_path / "in")
    # an impostor's share with a valid structure among the real ones
    impostor = split_transfer(radiology_study, 3, 5, key=other_provider_key).shares[2]
    with pytest.raises(NotEnoughSharesError, match=f"{impostor}: not signed"):
        combine_shares(
            [*transfer.shares[:2], impostor], tmp_path / "in", verify_key=provider_key.public_key()
        )


def test_too_few_shares(tmp_path, transfer, provider_key):
    with pytest.raises(NotEnoughSharesError, match="needs 3 good shares of 5, have 2"):
        combine_shares(transfer.shares[:2], tmp_path / "in", verify_key=provider_key.public_key())
    with pytest.raises(NotEnoughSharesError, match="no share files given"):
        combine_shares([], tmp_path / "in", verify_key=provider_key.public_key())
    assert_nothing_written(tmp_path / "in")


def test_swapped_share_files_keep_their_own_index(tmp_path, transfer, provider_key):
    """Renaming share files does not matter: the index lives inside the share."""
    renamed = []
    for number, path in enumerate(transfer.shares[:3]):
        target = tmp_path / f"upload-{9 - number}"
        shutil.copy(path, target)
        renamed.append(target)
    result = combine_shares(renamed, tmp_path / "in", verify_key=provider_key.public_key())
    assert tree_of(result.output_path) == tree_of(transfer.source)


def test_failure_keeps_an_existing_output_folder_clean(tmp_path, transfer, provider_key):
    inbox = tmp_path / "inbox"
    (inbox / "other-dataset").mkdir(parents=True)
    victim = transfer.shares[2]
    flip_bit(victim, part_offsets(victim)["data block, last segment"])
    with pytest.raises(NotEnoughSharesError, match=str(victim)):
        combine_shares(transfer.shares[:3], inbox, verify_key=provider_key.public_key())
    assert os.listdir(inbox) == ["other-dataset"]


def test_error_types(tmp_path, transfer, provider_key):
    victim = transfer.shares[0]
    flip_bit(victim, part_offsets(victim)["block-hash index"])
    with pytest.raises(ShareIntegrityError, match="block-hash index does not match"):
        verify_share(victim, provider_key.public_key())


def _split_with_stream(tmp_path, provider_key, monkeypatch, make_stream):
    """A correctly signed transfer whose plaintext is a crafted tar stream."""
    import secret_sharing.split as split_module
    from secret_sharing import split_dataset

    source = tmp_path / "scan.bin"
    source.write_bytes(b"x" * 100)
    monkeypatch.setattr(split_module, "pack_segments", lambda src, size: iter([make_stream()]))
    result = split_dataset(source, tmp_path / "crafted", k=2, n=2, signing_key=provider_key)
    monkeypatch.undo()
    return result.share_paths


def _tar_bytes(*members):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return bytearray(buffer.getvalue())


@pytest.mark.parametrize(
    "stream,message",
    [
        (lambda: _tar_bytes(("scan.bin", "file", b"ok")) + b"\x01trailing", "data follows the end"),
        (lambda: _tar_bytes(("other.bin", "file", b"x")), "outside the dataset"),
        (lambda: _tar_bytes(("scan.bin/inner", "file", b"x")), "does not start with the dataset"),
        (
            lambda: _tar_bytes(("scan.bin", "file", b"x"), ("../evil", "file", b"x")),
            "outside the dataset",
        ),
        (lambda: _tar_bytes(("scan.bin", "link", b"")), "not a file or folder"),
        (lambda: _tar_bytes(("scan.bin", "file", b"abc"))[:700], "ends early|invalid"),
    ],
)
def test_signed_but_malformed_archives_are_refused(
    tmp_path, provider_key, monkeypatch, stream, message
):
    shares = _split_with_stream(tmp_path, provider_key, monkeypatch, stream)
    inbox = tmp_path / "inbox"
    with pytest.raises(ShareIntegrityError, match=message):
        combine_shares(shares, inbox, verify_key=provider_key.public_key())
    assert_nothing_written(inbox)


def test_re_signed_manifest_that_differs_is_refused(tmp_path, transfer, provider_key):
    """Even a share signed by the right key must carry the same manifest as its siblings."""
    victim = transfer.shares[2]
    info = read_share_info(victim)
    altered = info.manifest_bytes.replace(info.manifest.created.encode(), b"1999-01-01T00:00:00Z")
    assert len(altered) == len(info.manifest_bytes) and altered != info.manifest_bytes
    data = bytearray(victim.read_bytes())
    offset = info.layout.manifest_offset
    data[offset : offset + len(altered)] = altered
    data[info.layout.signature_offset : info.layout.signature_offset + 64] = provider_key.sign(
        altered
    )
    victim.write_bytes(bytes(data))
    verify_share(victim, provider_key.public_key())  # on its own it is a valid share
    with pytest.raises(NotEnoughSharesError, match=f"{victim}: its signed manifest differs"):
        combine_shares(transfer.shares[:3], tmp_path / "in", verify_key=provider_key.public_key())
    assert_nothing_written(tmp_path / "in")
