"""A receiver checks a share's data blocks as they arrive, across bodies and restarts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ingestion.receiver import ReceiverConfig, create_receiver_app
from ingestion.shares import read_prologue
from secret_sharing import load_signing_key, read_share_info, split_dataset
from secret_sharing.format import MIB


@pytest.fixture
def ct_share(tmp_path, provider) -> Path:
    """Share 1 of a 2.3 MiB scan split 3-of-5 into 1 MiB segments (three blocks per share)."""
    scan = tmp_path / "ct-volume.raw"
    scan.write_bytes(random.Random(11).randbytes(2 * MIB + 300_000))
    result = split_dataset(
        scan,
        tmp_path / "outbox",
        k=3,
        n=5,
        signing_key=load_signing_key(provider.signing_key_path),
        segment_size=MIB,
    )
    return result.share_paths[0]


@pytest.fixture
def start_receiver(enclave, tmp_path):
    """Start receiver 1 on its store; calling it again is a restart (nothing kept in memory)."""
    config = ReceiverConfig(1, tmp_path / "receiver-1", "unused://", "worker-secret")
    clients = []

    def start() -> TestClient:
        client = TestClient(create_receiver_app(config, catalog=enclave.catalog))
        clients.append(client.__enter__())
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def _share_url(share: Path) -> str:
    return f"/v1/transfers/{read_share_info(share).transfer_id}/shares/1"


def _begin(client: TestClient, share: Path, token: str) -> None:
    resp = client.post(_share_url(share), content=read_prologue(share), headers=_auth(token))
    assert resp.status_code == 200, resp.text


def _put(client: TestClient, share: Path, token: str, offset: int, body: bytes):
    return client.put(
        _share_url(share), params={"offset": offset}, content=body, headers=_auth(token)
    )


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _damaged(data: bytes, share: Path, segment: int) -> bytes:
    layout = read_share_info(share).layout
    out = bytearray(data)
    out[layout.block_offset(segment) + 123] ^= 0x40
    return bytes(out)


def test_share_in_many_bodies_is_verified_without_reading_its_blocks_back(
    start_receiver, ct_share, provider, monkeypatch
):
    def no_reread(*args, **kwargs):
        raise AssertionError("the receiver read the data blocks back")

    # verify_share hashes blocks read back only when the digests do not cover the share.
    monkeypatch.setattr("secret_sharing.format.block_hash", no_reread)
    client = start_receiver()
    _begin(client, ct_share, provider.token)
    data = ct_share.read_bytes()
    offset, chance = 0, random.Random(5)
    while offset < len(data):
        body = data[offset : offset + chance.randrange(1, 300_000)]
        resp = _put(client, ct_share, provider.token, offset, body)
        assert resp.status_code == 200, resp.text
        offset += len(body)
    assert resp.json()["complete"]
    stored = client.app.state.store.complete(read_share_info(ct_share).transfer_id)
    assert stored.read_bytes() == data


def test_share_resumed_after_a_receiver_restart_is_verified(start_receiver, ct_share, provider):
    data = ct_share.read_bytes()
    cut = read_share_info(ct_share).layout.block_offset(1) + 5000  # inside segment 1
    before = start_receiver()
    _begin(before, ct_share, provider.token)
    assert _put(before, ct_share, provider.token, 0, data[:cut]).status_code == 200
    after = start_receiver()  # the digester of the first process is gone
    resp = _put(after, ct_share, provider.token, cut, data[cut:])
    assert resp.status_code == 200, resp.text
    assert resp.json()["complete"]


@pytest.mark.parametrize("segment", [0, 2])
def test_block_damaged_in_transit_after_a_restart_is_rejected_naming_its_segment(
    start_receiver, ct_share, provider, segment
):
    data = _damaged(ct_share.read_bytes(), ct_share, segment)
    cut = read_share_info(ct_share).layout.block_offset(1) + 5000
    before = start_receiver()
    _begin(before, ct_share, provider.token)
    assert _put(before, ct_share, provider.token, 0, data[:cut]).status_code == 200
    after = start_receiver()
    resp = _put(after, ct_share, provider.token, cut, data[cut:])
    assert resp.status_code == 422
    assert (
        f"data block of segment {segment} does not match its signed hash" in resp.json()["detail"]
    )
    progress = after.get(_share_url(ct_share), headers=_auth(provider.token)).json()
    assert progress["state"] == "rejected" and f"segment {segment}" in progress["reason"]
    # Sent again, intact, the same share is taken from the first byte.
    _begin(after, ct_share, provider.token)
    assert _put(after, ct_share, provider.token, 0, ct_share.read_bytes()).json()["complete"]


def test_share_completed_after_a_too_long_body_is_still_verified(
    start_receiver, ct_share, provider
):
    client = start_receiver()
    _begin(client, ct_share, provider.token)
    data = _damaged(ct_share.read_bytes(), ct_share, 1)
    resp = _put(client, ct_share, provider.token, 0, data + b"\0" * 4096)
    assert resp.status_code == 413
    received = client.get(_share_url(ct_share), headers=_auth(provider.token)).json()["received"]
    resp = _put(client, ct_share, provider.token, received, data[received:])
    assert resp.status_code == 422
    assert "data block of segment 1 does not match its signed hash" in resp.json()["detail"]
