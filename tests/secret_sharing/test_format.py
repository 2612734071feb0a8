import dataclasses
import json

import pytest

from secret_sharing import format as fmt


def make_manifest(**overrides) -> fmt.Manifest:
    manifest = fmt.Manifest(
        transfer_id="ab" * 16,
        created="2026-01-02T03:04:05Z",
        k=3,
        n=5,
        segment_size=fmt.MIB,
        segment_count=3,
        plaintext_length=2 * fmt.MIB + 10240,
        share_length=0,
        nonce_prefix="01020304",
        dataset_name="study-ü",
        dataset_kind="dir",
        signer="cd" * 32,
        key_commitment="ef" * 32,
        shares=tuple(fmt.ShareEntry(j, f"{j:02x}" * 32, f"{j + 16:02x}" * 32) for j in range(1, 6)),
    )
    return dataclasses.replace(manifest, **overrides)


def test_header_round_trip_and_size():
    header = fmt.Header(b"\x01" * 16, 4, 3, 5, fmt.MIB)
    raw = header.encode()
    assert len(raw) == fmt.HEADER_LEN and raw.startswith(b"ENCSHARE\x00\x02\x00\x40")
    assert fmt.Header.decode(raw) == header


@pytest.mark.parametrize(
    "offset,value,message",
    [
        (0, 0x41, "magic"),
        (9, 3, "version 3"),
        (28, 9, "share index 9"),
        (29, 1, "k"),
        (40, 1, "reserved"),
    ],
)
def test_header_corruption_is_named(offset, value, message):
    raw = bytearray(fmt.Header(b"\x01" * 16, 4, 3, 5, fmt.MIB).encode())
    raw[offset] = value
    with pytest.raises(fmt.FormatProblem, match=message):
        fmt.Header.decode(bytes(raw))


def test_manifest_is_canonical_and_round_trips():
    manifest, raw = fmt.solve_share_length(lambda length: make_manifest(share_length=length))
    assert (
        raw
        == json.dumps(
            json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()
    )
    assert b"\\u00fc" in raw  # non-ASCII escaped, the bytes are pure ASCII
    assert fmt.Manifest.decode(raw) == manifest
    assert manifest.layout(len(raw)).share_length == manifest.share_length


def test_non_canonical_manifest_is_refused():
    _, raw = fmt.solve_share_length(lambda length: make_manifest(share_length=length))
    pretty = json.dumps(json.loads(raw), indent=1, sort_keys=True).encode()
    with pytest.raises(fmt.FormatProblem, match="canonical"):
        fmt.Manifest.decode(pretty)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.update(version=3), "version 3"),
        (lambda d: d.update(version=1), "malformed|algorithms"),  # v2 fields under a v1 label
        (lambda d: d.update(k=1), "k <= n"),
        (lambda d: d.update(segment_count=7), "segment count"),
        (lambda d: d["algorithms"].update(cipher="ChaCha20"), "algorithms"),
        (lambda d: d["dataset"].update(name="../etc"), "single file or folder"),
        (lambda d: d.update(extra=1), "unknown fields"),
        (lambda d: d["shares"].pop(), "lists 4 shares"),
        (lambda d: d.update(transfer_id="AB" * 16), "lowercase hex"),
    ],
)
def test_bad_manifest_fields_are_refused(change, message):
    data = make_manifest().to_dict()
    change(data)
    with pytest.raises(fmt.FormatProblem, match=message):
        fmt.Manifest.decode(fmt.canonical_json(data))


def test_layout_arithmetic():
    layout = fmt.Layout(
        k=3, segment_size=fmt.MIB, plaintext_length=2 * fmt.MIB + 5, manifest_length=100
    )
    assert layout.segment_count == 3
    assert layout.full_block_length == -(-(fmt.MIB + 16) // 3)
    assert layout.block_length(2) == 7  # (5 + 16) / 3
    assert layout.block_offset(2) == 64 + 2 * layout.full_block_length
    assert layout.share_length == 64 + 2 * layout.full_block_length + 7 + 96 + 33 + 100 + 64 + 96


def test_parameters():
    fmt.check_parameters(2, 2)
    fmt.check_parameters(255, 255, fmt.MIB)
    for k, n in [(1, 3), (4, 3), (2, 256), (True, 3)]:
        with pytest.raises(fmt.FormatProblem):
            fmt.check_parameters(k, n)
    with pytest.raises(fmt.FormatProblem, match="segment size"):
        fmt.check_parameters(2, 3, fmt.MIB - 1)


def test_aad_and_nonce_layout():
    tid = bytes(range(16))
    aad = fmt.associated_data(tid, 5, True, 3, 5)
    assert aad == b"ENCSHARE\x00\x02" + tid + (5).to_bytes(8, "big") + b"\x01\x03\x05"
    assert fmt.nonce(b"\xaa\xbb\xcc\xdd", 258) == b"\xaa\xbb\xcc\xdd" + (258).to_bytes(8, "big")
