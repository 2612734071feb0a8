"""The upload path against the real airlock service over HTTP (uvicorn on a local port): where
the airlock reads no homes, `enclave airlock submit` uploads the files and their lineage into the
same staging area and workflow; caps hold while bytes arrive, names cannot escape, a cut-off or
mismatched upload leaves nothing, and only the requester uploads."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from enclave.airlock.checks import Limits
from enclave.airlock.setup import SiteSigner
from enclave.airlock.uploads import FileSource
from enclave.airlock.web import create_app
from enclave.airlock.workflow import Airlock
from enclave.cli.airlock import airlock as airlock_cli
from tests.airlock.test_service import PREFIX, Users, auth

FILE_CAP = 256 * 1024
REQUEST_CAP = 400 * 1024


@pytest.fixture
def lock(indexed, tmp_path) -> Airlock:
    return Airlock(
        indexed.catalog,
        tmp_path / "state",
        SiteSigner(Ed25519PrivateKey.generate()),
        site="https://enclave.test/",
        limits=Limits(max_file_bytes=FILE_CAP, max_request_bytes=REQUEST_CAP),
        file_source=FileSource.UPLOAD,
    )


@pytest.fixture
def url(lock) -> Iterator[str]:
    """The airlock service on a local port, as a pod reaches it through the proxy."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(lock, Users(), prefix=PREFIX), log_level="warning")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the airlock service did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}{PREFIX}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def outputs(tmp_path, indexed) -> Path:
    """alice's ~/outputs in her pod: a figure, a copy of a dataset file, a model with lineage."""
    out = tmp_path / "pod" / "outputs"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"roc curve" * 10)
    (out / "figures" / "scan.png").write_bytes(indexed.dicom[0].read_bytes())
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    model = struct.pack("<Q", len(header)) + header + bytes(4)
    (out / "unet.safetensors").write_bytes(model)
    (out / ".lineage").mkdir()
    record = {
        "format": "enclave-lineage/1",
        "run_id": "run-1",
        "user": "alice",
        "datasets": [{"name": "lung-ct", "version": 1, "content_hash": "x" * 64}],
        "outputs": [{"path": "unet.safetensors", "sha256": hashlib.sha256(model).hexdigest()}],
    }
    (out / ".lineage" / "run-1.json").write_text(json.dumps(record))
    (out / ".lineage" / "other.json").write_text(json.dumps({**record, "outputs": []}))
    return out


def draft(url: str, paths: list[str], token: str = "t-alice") -> int:
    body = {"paths": paths, "justification": "for the paper", "submit": False}
    r = httpx.post(url + "api/requests", json=body, headers=auth(token))
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def put(url: str, rid: int, name: str, data: bytes, token: str = "t-alice", sha256: str = ""):
    headers = {**auth(token), "X-Content-SHA256": sha256 or hashlib.sha256(data).hexdigest()}
    return httpx.put(
        f"{url}api/requests/{rid}/files", params={"name": name}, content=data, headers=headers
    )


def received(lock: Airlock, rid: int) -> dict:
    """What the request holds, and nothing half-received beside it."""
    area = lock.upload_area(rid)
    partial = list(area.partial.iterdir()) if area.partial.is_dir() else []
    assert partial == []
    return area.index()


def wait_checked(url: str, rid: int) -> dict:
    deadline = time.monotonic() + 60
    while True:
        r = httpx.get(f"{url}api/requests/{rid}", headers=auth("t-alice")).json()
        if r["state"] != "submitted" or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def test_submit_from_a_session_uploads_files_and_lineage_into_the_same_checks(
    url, lock, outputs, monkeypatch
):
    monkeypatch.setenv("ENCLAVE_OUTPUTS", str(outputs))
    monkeypatch.chdir(outputs.parent)
    result = CliRunner().invoke(
        airlock_cli,
        ["submit", "figures", "unet.safetensors", "-j", "figures and model", "--json"]
        + ["--url", url, "--token", "t-alice"],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    r = json.loads(result.output)
    assert r["state"] == "in-review"
    assert r["paths"] == ["figures", "unet.safetensors"]
    files = {f["name"]: f for f in r["files"]}
    assert set(files) == {"figures/roc.png", "figures/scan.png", "unet.safetensors"}
    assert files["figures/roc.png"]["verdict"] == "pass"
    # The same checks as on one machine: the copy of a dataset file is refused.
    reasons = " | ".join(c["reason"] for c in files["figures/scan.png"]["checks"])
    assert files["figures/scan.png"]["verdict"] == "refuse"
    assert "copy of dataset file lung-ct v1" in reasons
    # The model's lineage came with it (only the record naming it was sent).
    model = files["unet.safetensors"]
    assert model["lineage"]["run_id"] == "run-1"
    assert "no lineage record" not in " | ".join(c["reason"] for c in model["checks"])
    assert [p.name for p in lock.upload_area(r["id"]).lineage.iterdir()] == ["run-1.json"]
    # Staged in the same root-only round folder the one-machine path copies into.
    staged = lock.staged_dir(r["id"], 1)
    assert (staged / "figures" / "roc.png").read_bytes() == (
        outputs / "figures" / "roc.png"
    ).read_bytes()
    assert staged.stat().st_mode & 0o777 == 0o700
    # Changing the file in the pod afterwards changes nothing the reviewers see.
    (outputs / "figures" / "roc.png").write_bytes(b"changed")
    assert (staged / "figures" / "roc.png").read_bytes() != b"changed"


def test_a_file_over_the_per_file_cap_is_refused_while_it_is_received(url, lock):
    rid = draft(url, ["big.csv"])
    # A declared length over the cap is refused before a byte is read.
    refused = put(url, rid, "big.csv", b"x" * (FILE_CAP + 1))
    assert refused.status_code == 413
    assert "big.csv is 262145 bytes, over the per-file cap of 262144 bytes" in refused.text

    # Without a length, the service stops keeping bytes at the first block over the cap (the
    # message is the one from the receiving loop; what the client still sends is discarded).
    def stream() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * (1 << 20)

    headers = {**auth("t-alice"), "X-Content-SHA256": "0" * 64}
    try:
        r = httpx.put(
            f"{url}api/requests/{rid}/files",
            params={"name": "big.csv"},
            content=stream(),
            headers=headers,
        )
        assert r.status_code == 413, r.text
        assert "big.csv is over the per-file cap of 262144 bytes" in r.text
    except httpx.TransportError:
        pass  # the service answered and closed while the client was still sending
    assert received(lock, rid) == {}


def test_too_many_bytes_in_one_request_are_refused_and_what_came_before_stays(url, lock):
    rid = draft(url, ["a.csv", "b.csv"])
    assert put(url, rid, "a.csv", b"1," * (100 * 1024)).status_code == 201
    refused = put(url, rid, "b.csv", b"2," * (120 * 1024))
    assert refused.status_code == 413
    assert "over the per-request cap of 409600 bytes" in refused.text
    assert set(received(lock, rid)) == {"a.csv"}
    # Sending a.csv again replaces it, it is not counted twice.
    assert put(url, rid, "a.csv", b"1," * (100 * 1024)).status_code == 201


@pytest.mark.parametrize(
    "name",
    [
        "../escape.csv",
        "figures/../../escape.csv",
        "/etc/passwd",
        "~/x.csv",
        "a\\b.csv",
        "a\nb",
        ".lineage/run.json",
        "",
        "./",
    ],
)
def test_a_name_that_could_escape_the_request_is_refused(url, lock, name):
    rid = draft(url, ["figures"])
    r = put(url, rid, name, b"data")
    assert r.status_code == 400, r.text
    assert received(lock, rid) == {}


def test_names_are_normalised(url, lock):
    rid = draft(url, ["figures"])
    r = put(url, rid, "./figures//roc.png", b"\x89PNG\r\n\x1a\nroc")
    assert r.status_code == 201 and r.json()["name"] == "figures/roc.png"
    assert set(received(lock, rid)) == {"figures/roc.png"}
    clash = put(url, rid, "figures/roc.png/x", b"x")
    assert clash.status_code == 400 and "one holds the other" in clash.text


def test_a_truncated_upload_leaves_nothing_and_sending_it_again_completes(url, lock):
    rid = draft(url, ["table.csv"])
    data = b"site,patients\nOslo,42\n" * 2000
    host, port = url.split("/")[2].split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            (
                f"PUT {PREFIX}/api/requests/{rid}/files?name=table.csv HTTP/1.1\r\n"
                f"Host: {host}\r\nAuthorization: Bearer t-alice\r\n"
                f"X-Content-SHA256: {hashlib.sha256(data).hexdigest()}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            ).encode()
            + data[: len(data) // 2]
        )
        time.sleep(0.3)  # the service is receiving; then the connection drops
    deadline = time.monotonic() + 10
    while True:
        area = lock.upload_area(rid)
        if not (area.partial.is_dir() and any(area.partial.iterdir())):
            break
        assert time.monotonic() < deadline, "a cut-off upload was left behind"
        time.sleep(0.05)
    assert received(lock, rid) == {}
    # Submitting now names what is missing.
    r = httpx.post(f"{url}api/requests/{rid}/submit", headers=auth("t-alice"))
    assert r.status_code == 200
    r = wait_checked(url, rid)
    assert r["state"] == "returned"
    # The retry completes and the request goes through.
    assert put(url, rid, "table.csv", data).status_code == 201
    assert httpx.post(f"{url}api/requests/{rid}/submit", headers=auth("t-alice")).is_success
    assert wait_checked(url, rid)["state"] == "in-review"


def test_a_submission_with_a_file_never_uploaded_comes_back_naming_it(url, lock):
    rid = draft(url, ["counts.csv"])
    httpx.post(f"{url}api/requests/{rid}/submit", headers=auth("t-alice"))
    assert wait_checked(url, rid)["state"] == "returned"
    events = lock.catalog.audit_events(limit=5)
    assert "~/outputs/counts.csv was not uploaded" in events[0].details["reason"]


def test_a_hash_that_differs_from_the_bytes_received_is_refused(url, lock):
    rid = draft(url, ["table.csv"])
    r = put(url, rid, "table.csv", b"a,b\n1,2\n", sha256=hashlib.sha256(b"other").hexdigest())
    assert r.status_code == 400
    assert "table.csv: the bytes received have SHA-256" in r.text
    missing = httpx.put(
        f"{url}api/requests/{rid}/files",
        params={"name": "table.csv"},
        content=b"a",
        headers=auth("t-alice"),
    )
    assert missing.status_code == 400 and "X-Content-SHA256" in missing.text
    assert received(lock, rid) == {}


def test_only_the_requester_uploads_and_only_before_submission(url, lock):
    rid = draft(url, ["table.csv"])
    # carol may submit her own requests, not upload into alice's.
    other = put(url, rid, "table.csv", b"a,b\n", token="t-carol")
    assert other.status_code == 404 and "only its requester uploads" in other.text
    # bob may not upload at all; nobody without a token either.
    assert put(url, rid, "table.csv", b"a,b\n", token="t-bob").status_code == 403
    assert put(url, rid, "table.csv", b"a,b\n", token="nope").status_code == 401
    assert received(lock, rid) == {}
    assert put(url, rid, "table.csv", b"a,b\n").status_code == 201
    httpx.post(f"{url}api/requests/{rid}/submit", headers=auth("t-alice"))
    wait_checked(url, rid)
    late = put(url, rid, "table.csv", b"changed\n")
    assert late.status_code == 409 and "draft or a returned request only" in late.text


def test_a_lineage_upload_must_be_a_lineage_record(url, lock):
    rid = draft(url, ["table.csv"])
    target = f"{url}api/requests/{rid}/lineage"
    bad = httpx.put(target, params={"name": "run.json"}, content=b"{}", headers=auth("t-alice"))
    assert bad.status_code == 400 and "not a lineage record" in bad.text
    escape = httpx.put(
        target, params={"name": "../run.json"}, content=b"{}", headers=auth("t-alice")
    )
    assert escape.status_code == 400


def test_the_service_says_which_path_it_takes_and_one_machine_takes_no_uploads(
    url, indexed, tmp_path
):
    intake = httpx.get(url + "api/intake", headers=auth("t-alice")).json()
    assert intake == {
        "files": "upload",
        "max_file_bytes": FILE_CAP,
        "max_request_bytes": REQUEST_CAP,
        "max_files": 1000,
    }
    home = Airlock(
        indexed.catalog, tmp_path / "home-state", SiteSigner(Ed25519PrivateKey.generate())
    )
    client = TestClient(create_app(home, Users(), prefix=PREFIX))
    assert client.get(f"{PREFIX}/api/intake", headers=auth("t-alice")).json()["files"] == "home"
    body = {"paths": ["x.csv"], "justification": "j", "submit": False}
    rid = client.post(f"{PREFIX}/api/requests", json=body, headers=auth("t-alice")).json()["id"]
    r = client.put(
        f"{PREFIX}/api/requests/{rid}/files",
        params={"name": "x.csv"},
        content=b"a",
        headers={**auth("t-alice"), "X-Content-SHA256": hashlib.sha256(b"a").hexdigest()},
    )
    assert r.status_code == 409 and "takes no uploads" in r.text
