"""What the receivers refuse, and before which byte: tokens, keys, garbage, quotas, lengths.

All tests share one running service; each uses its own transfer or endpoint.
"""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from ingestion.client import UploadError, send_shares
from ingestion.settings import IngestPaths
from ingestion.shares import read_prologue


@pytest.fixture(scope="module")
def enclave(shared_enclave):
    return shared_enclave


@pytest.fixture(scope="module")
def service(shared_enclave):
    return shared_enclave.service


@pytest.fixture
def provider(enclave, tmp_path):
    name = f"prov-{uuid.uuid4().hex[:8]}"
    return enclave.add_provider(name, tmp_path / name)


def _receiver(service, index: int) -> str:
    return service.receiver_urls[index - 1]


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_receiver_refuses_a_body_at_the_wrong_offset(provider, service, sample_dataset, split):
    shares = split(sample_dataset, provider)
    path = shares.share_paths[0]
    url = f"{_receiver(service, 1)}/v1/transfers/{shares.transfer_id}/shares/1"
    assert (
        httpx.post(url, content=read_prologue(path), headers=_auth(provider.token)).status_code
        == 200
    )
    resp = httpx.put(url, params={"offset": 100}, content=b"x" * 10, headers=_auth(provider.token))
    assert resp.status_code == 409 and resp.json()["received"] == 0


def test_upload_without_or_with_unknown_token_is_refused(provider, service, sample_dataset, split):
    shares = split(sample_dataset, provider)
    url = f"{_receiver(service, 1)}/v1/transfers/{shares.transfer_id}/shares/1"
    prologue = read_prologue(shares.share_paths[0])
    assert httpx.post(url, content=prologue).status_code == 401
    assert httpx.post(url, content=prologue, headers=_auth("enc_prov_bogus")).status_code == 401
    with pytest.raises(UploadError, match="401"):
        send_shares(shares.share_paths, [service.coordinator_url], "not-a-token")


def test_share_signed_by_another_providers_key_is_refused(
    enclave, provider, service, sample_dataset, split, tmp_path
):
    other = enclave.add_provider(f"city-{uuid.uuid4().hex[:6]}", tmp_path / "city-keys")
    shares = split(sample_dataset, provider)  # signed by st-mary
    with pytest.raises(UploadError, match="not by provider city-.*registered key"):
        send_shares(shares.share_paths, [service.coordinator_url], other.token)
    paths = IngestPaths(enclave.state_dir)
    assert not any((paths.receiver_store(j) / shares.transfer_id).exists() for j in range(1, 6))


def test_other_provider_cannot_see_or_extend_a_transfer(
    enclave, provider, service, sample_dataset, split, tmp_path
):
    other = enclave.add_provider(f"city-{uuid.uuid4().hex[:6]}", tmp_path / "city-keys")
    shares = split(sample_dataset, provider)
    send_shares(shares.share_paths[:1], [service.coordinator_url], provider.token)
    resp = httpx.get(
        f"{service.coordinator_url}/v1/transfers/{shares.transfer_id}", headers=_auth(other.token)
    )
    assert resp.status_code == 403


def test_garbage_body_is_refused_before_it_is_stored(enclave, provider, service):
    tid = "ab" * 16
    url = f"{_receiver(service, 1)}/v1/transfers/{tid}/shares/1"
    resp = httpx.post(url, content=os.urandom(100_000), headers=_auth(provider.token))
    assert resp.status_code == 422 and "not a share" in resp.json()["detail"]
    resp = httpx.put(
        url, params={"offset": 0}, content=os.urandom(100_000), headers=_auth(provider.token)
    )
    assert resp.status_code == 409  # no data before a valid prologue
    assert not (IngestPaths(enclave.state_dir).receiver_store(1) / tid).exists()


def test_prologue_larger_than_any_share_header_is_refused(provider, service):
    url = f"{_receiver(service, 1)}/v1/transfers/{'cd' * 16}/shares/1"
    resp = httpx.post(url, content=b"\0" * (9 * 1024 * 1024), headers=_auth(provider.token))
    assert resp.status_code == 413


def test_share_over_the_providers_quota_is_refused(
    enclave, service, sample_dataset, split, tmp_path
):
    small = enclave.add_provider(
        f"tiny-{uuid.uuid4().hex[:6]}", tmp_path / "tiny-keys", quota_bytes=10_000
    )
    shares = split(sample_dataset, small)
    with pytest.raises(UploadError, match="413.*bytes in flight"):
        send_shares(shares.share_paths[:1], [service.coordinator_url], small.token)
    assert not (IngestPaths(enclave.state_dir).receiver_store(1) / shares.transfer_id).exists()


def test_bytes_beyond_the_declared_length_are_refused(provider, service, sample_dataset, split):
    shares = split(sample_dataset, provider)
    path = shares.share_paths[0]
    url = f"{_receiver(service, 1)}/v1/transfers/{shares.transfer_id}/shares/1"
    httpx.post(url, content=read_prologue(path), headers=_auth(provider.token))
    resp = httpx.put(
        url,
        params={"offset": 0},
        content=path.read_bytes() + b"\0" * 4096,
        headers=_auth(provider.token),
    )
    assert resp.status_code == 413 and "beyond" in resp.json()["detail"]
    progress = httpx.get(url, headers=_auth(provider.token)).json()
    assert progress["received"] <= path.stat().st_size


def test_body_that_is_not_the_announced_share_is_refused(provider, service, sample_dataset, split):
    shares = split(sample_dataset, provider)
    url = f"{_receiver(service, 1)}/v1/transfers/{shares.transfer_id}/shares/1"
    httpx.post(url, content=read_prologue(shares.share_paths[0]), headers=_auth(provider.token))
    resp = httpx.put(
        url, params={"offset": 0}, content=os.urandom(4096), headers=_auth(provider.token)
    )
    assert resp.status_code == 422


def test_share_sent_to_the_wrong_receiver_is_refused(provider, service, sample_dataset, split):
    shares = split(sample_dataset, provider)
    url = f"{_receiver(service, 2)}/v1/transfers/{shares.transfer_id}/shares/1"
    resp = httpx.post(
        url, content=read_prologue(shares.share_paths[0]), headers=_auth(provider.token)
    )
    assert resp.status_code == 409 and "takes share 2 only" in resp.json()["detail"]


def test_openapi_describes_the_upload_and_status_api(service):
    receiver = httpx.get(f"{_receiver(service, 1)}/openapi.json").json()
    assert "/v1/transfers/{transfer_id}/shares/{index}" in receiver["paths"]
    assert not any(p.startswith("/internal") for p in receiver["paths"])
    coordinator = httpx.get(f"{service.coordinator_url}/openapi.json").json()
    assert "/v1/transfers/{transfer_id}" in coordinator["paths"]


def test_internal_api_needs_the_worker_token(service):
    assert httpx.get(f"{_receiver(service, 1)}/internal/shares").status_code == 403
    ok = httpx.get(
        f"{_receiver(service, 1)}/internal/shares",
        headers={"x-enclave-worker-token": service.worker_token},
    )
    assert ok.status_code == 200
