"""``enclave ingest serve`` as real processes: killed mid-transfer, restarted, finished once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ingestion.client import send_shares
from ingestion.settings import IngestPaths
from tests.ingestion.conftest import no_plaintext_left

pytestmark = pytest.mark.slow


class ServeProcess:
    """``enclave ingest serve`` in its own process group (its receivers are children)."""

    def __init__(
        self, state_dir: Path, mnemonics: list[str], *, receivers: int, env: dict | None = None
    ):
        self.paths = IngestPaths(state_dir)
        with contextlib.suppress(FileNotFoundError):
            self.paths.service_file.unlink()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "enclave",
                "ingest",
                "serve",
                "--state-dir",
                str(state_dir),
                "--port",
                "0",
                "--receivers",
                str(receivers),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdin is not None  # stdin=PIPE
        self.proc.stdin.write("\n".join(mnemonics) + "\n")
        self.proc.stdin.close()
        self.url = self._wait_started()

    def _wait_started(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None  # stderr=PIPE
                raise AssertionError(f"serve exited: {self.proc.stderr.read()}")
            if self.paths.service_file.is_file():
                url = json.loads(self.paths.service_file.read_text())["url"]
                try:
                    if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                        return url
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise AssertionError("enclave ingest serve did not start")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _multiprocessing_semaphores() -> set[Path]:
    return set(Path("/dev/shm").glob("sem.mp-*"))


@pytest.fixture
def serve(enclave):
    started = []
    before = _multiprocessing_semaphores()

    def start(**env: str) -> ServeProcess:
        process = ServeProcess(enclave.state_dir, enclave.mnemonics[:2], receivers=3, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    # A killed service's validation pool cannot unlink its named semaphores (its resource
    # tracker died with it); remove the ones that appeared while these services ran.
    for leaked in _multiprocessing_semaphores() - before:
        leaked.unlink(missing_ok=True)


def test_killed_during_reconstruction_completes_after_restart_with_one_version(
    enclave, provider, serve, split, tmp_path
):
    from enclave.samples import make_sample_dataset

    # DICOM only: keeps table and radiomics imports out of the two fresh service processes.
    dataset = make_sample_dataset(
        tmp_path / "src", subjects=1, slices=6, size=32, with_segmentation=False, with_table=False
    )
    first = serve(ENCLAVE_INGEST_STAGE_DELAY="3")
    shares = split(dataset, provider, k=2, n=3)
    # Every share at once: an on-demand client would wait through the reconstruction that
    # this test interrupts.
    send_shares(shares.share_paths, [first.url], provider.token, spares="all")
    enclave.wait_for_state(shares.transfer_id, ("reconstructing",), timeout=60)
    paths = IngestPaths(enclave.state_dir)
    deadline = time.monotonic() + 3
    while not any(
        any((root / shares.transfer_id).rglob("*.dcm")) for root in paths.staging_roots()
    ):
        assert time.monotonic() < deadline, "no reconstructed plaintext in staging"
        time.sleep(0.05)
    first.kill()

    assert enclave.catalog.get_transfer(shares.transfer_id).state == "reconstructing"
    second = serve()
    transfer = enclave.wait_for_state(
        shares.transfer_id, ("cataloged", "failed", "quarantined"), timeout=90
    )
    assert transfer.state == "cataloged", transfer.reason
    assert len(enclave.catalog.get_dataset("demo-ct").versions) == 1
    assert [p.name for p in paths.store.iterdir()] == [Path(transfer.version.store_location).name]
    assert no_plaintext_left(paths)
    second.stop()


def test_serve_refuses_to_start_sealed_and_says_how_to_unseal(enclave):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "enclave",
            "ingest",
            "serve",
            "--state-dir",
            str(enclave.state_dir),
            "--port",
            "0",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "sealed" in proc.stderr and "mnemonic" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_without_a_master_key_points_at_keys_init(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "enclave",
            "ingest",
            "serve",
            "--state-dir",
            str(tmp_path / "empty"),
            "--port",
            "0",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "enclave keys init" in proc.stderr
