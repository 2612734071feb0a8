"""Fixtures for the ingestion service: an unsealed enclave, a registered provider, a running
service on free 127.0.0.1 ports, and sample datasets split into shares."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, Unpack

import pytest

from enclave.custody import MasterKey, init_custody, unseal

if TYPE_CHECKING:
    from catalog import Catalog
    from catalog.models import Transfer
    from ingestion.service import IngestService
    from ingestion.settings import IngestPaths, WorkerSettings
    from secret_sharing.split import SplitResult


@dataclass
class Provider:
    name: str
    token: str
    signing_key_path: Path
    verify_key_path: Path


@dataclass
class Enclave:
    """A state directory with its master key unsealed and a catalog opened."""

    state_dir: Path
    mnemonics: list[str]
    master_key: MasterKey
    catalog: Catalog
    service: IngestService | None = None

    def add_provider(
        self, name: str, keys_dir: Path, *, quota_bytes: int | None = None
    ) -> Provider:
        from secret_sharing import key_fingerprint, load_verify_key, write_keypair

        signing, verify = write_keypair(keys_dir)
        fingerprint = key_fingerprint(load_verify_key(verify))
        _, token = self.catalog.add_provider(
            name, verify.read_bytes(), fingerprint, actor="test", quota_bytes=quota_bytes
        )
        return Provider(name, token, signing, verify)

    def wait_for_state(
        self, transfer_id: str, states: tuple[str, ...], timeout: float = 60
    ) -> Transfer:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.catalog.get_transfer(transfer_id)
            except Exception:
                last = None
            if last is not None and last.state in states:
                return last
            time.sleep(0.1)
        raise AssertionError(
            f"transfer {transfer_id} did not reach {states} within {timeout}s "
            f"(now {getattr(last, 'state', None)}: {getattr(last, 'reason', None)})"
        )


def _open_enclave(state_dir: Path) -> Enclave:
    from catalog import open_catalog, resolve_database_url

    mnemonics = init_custody(state_dir, custodians=3, threshold=2)
    catalog = open_catalog(resolve_database_url(state_dir))
    return Enclave(state_dir, mnemonics, unseal(state_dir, mnemonics[:2]), catalog)


class ServiceOptions(TypedDict, total=False):
    """The ``IngestService`` options the tests choose."""

    receiver_mode: str
    catalog: Catalog
    run_worker: bool
    worker_settings: WorkerSettings


@contextlib.contextmanager
def _running_service(enclave: Enclave, **kw: Unpack[ServiceOptions]) -> Iterator[IngestService]:
    from ingestion.service import IngestService

    kw.setdefault("receiver_mode", "thread")
    kw.setdefault("catalog", enclave.catalog)
    with IngestService(enclave.state_dir, enclave.master_key, port=0, **kw).running() as svc:
        yield svc


@pytest.fixture
def enclave(tmp_path: Path) -> Iterator[Enclave]:
    opened = _open_enclave(tmp_path / "state")
    yield opened
    opened.catalog.close()


@pytest.fixture
def provider(enclave: Enclave, tmp_path: Path) -> Provider:
    return enclave.add_provider("st-mary", tmp_path / "st-mary-keys")


@pytest.fixture
def make_service(enclave: Enclave) -> Iterator[Callable[..., IngestService]]:
    """Start the ingestion service in this process (receivers as separate apps on their own
    ports); ``run_worker=False`` leaves reconstruction to the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(_running_service(enclave, **kw))


@pytest.fixture(scope="module")
def shared_enclave(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enclave]:
    """One enclave and running service for a module of tests that only upload and get
    refused (each test uses its own transfer, so they do not interfere)."""
    opened = _open_enclave(tmp_path_factory.mktemp("shared") / "state")
    with _running_service(opened) as svc:
        opened.service = svc
        yield opened
    opened.catalog.close()


@pytest.fixture
def service(make_service: Callable[..., IngestService]) -> IngestService:
    return make_service()


@pytest.fixture
def sample_dataset(tmp_path: Path) -> Path:
    from enclave.samples import make_sample_dataset

    return make_sample_dataset(tmp_path / "datasets", subjects=2, slices=6, size=32)


@pytest.fixture
def split(tmp_path: Path) -> Callable[..., SplitResult]:
    """Split a dataset folder into k-of-n shares signed by a provider."""
    from secret_sharing import load_signing_key, split_dataset

    counter = iter(range(1000))

    def do(dataset: Path, provider: Provider, *, k: int = 3, n: int = 5) -> SplitResult:
        out = tmp_path / f"shares-{next(counter)}"
        return split_dataset(
            dataset, out, k=k, n=n, signing_key=load_signing_key(provider.signing_key_path)
        )

    return do


def source_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def no_plaintext_left(paths: IngestPaths) -> bool:
    """No transfer's plaintext in either staging folder (on disk, or on tmpfs)."""
    return all(not root.exists() or not any(root.iterdir()) for root in paths.staging_roots())
