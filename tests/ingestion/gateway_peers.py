"""Real DICOM peers for the gateway's tests: a gateway on a free loopback port, dcmtk's
command-line tools, and Debian's Orthanc with the gateway registered as a modality.

A missing tool fails the test with the Debian package to install; it is never skipped."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ingestion.gateway import Gateway, GatewayConfig, serve
from ingestion.validators.deid_options import DeidOption

#: The Debian package that provides each tool the tests run.
PACKAGES = {"storescu": "dcmtk", "echoscu": "dcmtk", "storescp": "dcmtk", "Orthanc": "orthanc"}


def needs(tool: str) -> str:
    """The tool's path; fails (never skips) naming the Debian package when it is missing."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{tool} is missing: apt-get install {PACKAGES[tool]}", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(out_dir: Path, *, allowed: frozenset[str], **kw: object) -> GatewayConfig:
    """The tests' gateway: loopback, two options, CT and MR attested free of burned-in text."""
    defaults: dict[str, object] = {
        "options": frozenset(
            {DeidOption.RETAIN_PATIENT_CHARACTERISTICS, DeidOption.RETAIN_SAFE_PRIVATE}
        ),
        "no_burned_in_modalities": frozenset({"CT", "MR"}),
        "complete_after": 3600.0,  # tests finish studies explicitly unless they say otherwise
        "reserve_bytes": 0,
    }
    defaults.update(kw)
    return GatewayConfig(
        ae_title="ENCLAVEGW",
        port=free_port(),
        out_dir=out_dir,
        allowed_calling=allowed,
        host="127.0.0.1",
        **defaults,  # type: ignore[arg-type]
    )


@contextlib.contextmanager
def running_gateway(config: GatewayConfig) -> Iterator[Gateway]:
    gateway = Gateway(config)
    server = serve(config, gateway, block=False)
    try:
        yield gateway
    finally:
        server.shutdown()
        gateway.stop()


def all_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def phi_found(values: list[str], *roots: Path) -> list[str]:
    """``value in path`` for every PHI value found in any file under ``roots`` (as bytes, in
    ASCII, UTF-8 and UTF-16) or in a file's name."""
    found = []
    for path in all_files(*roots):
        data = path.read_bytes()
        for value in values:
            forms = {value.encode(), value.encode("utf-16-le"), value.upper().encode()}
            if any(form in data for form in forms) or value in str(path):
                found.append(f"{value!r} in {path}")
    return found


@dataclass
class Orthanc:
    """A running Orthanc: its REST URL and its own AE title."""

    url: str
    aet: str
    log: Path

    def upload(self, path: Path) -> str:
        resp = httpx.post(f"{self.url}/instances", content=path.read_bytes(), timeout=30)
        resp.raise_for_status()
        return str(resp.json()["ParentStudy"])

    def push(self, modality: str, resource: str, *, local_aet: str | None = None) -> httpx.Response:
        body: dict[str, object] = {"Resources": [resource], "Synchronous": True}
        if local_aet is not None:
            body["LocalAet"] = local_aet
        return httpx.post(f"{self.url}/modalities/{modality}/store", json=body, timeout=60)


@contextlib.contextmanager
def running_orthanc(
    root: Path, modalities: dict[str, tuple[str, int]], *, aet: str = "ORTHANC"
) -> Iterator[Orthanc]:
    """Debian's Orthanc on free loopback ports with its own storage under ``root``, no
    remote access, no plugins, and ``modalities`` (name -> (AE title, port) on 127.0.0.1)."""
    binary = needs("Orthanc")
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "enclave-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "SaveJobs": False,
        "DicomModalities": {
            name: [title, "127.0.0.1", port] for name, (title, port) in modalities.items()
        },
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = root / "orthanc.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/system", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not start: {log.read_text()[-2000:]}", pytrace=False)
            time.sleep(0.1)
        yield Orthanc(url, aet, log)
    finally:
        proc.kill()  # a throwaway instance: its storage goes with the temp dir
        proc.wait()
