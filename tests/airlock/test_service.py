"""The airlock service over HTTP: a researcher's request with files that must not leave, two
reviewers, the release and its signed manifest; who may do what, and bad requests."""

from __future__ import annotations

import os
import struct
import time
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from enclave.airlock.files import OutputsReader
from enclave.airlock.release import ReleaseError, verify_release
from enclave.airlock.scopes import OVERSEE, REVIEW, SUBMIT, TRANSPARENCY
from enclave.airlock.setup import SiteSigner
from enclave.airlock.web import COOKIE, create_app
from enclave.airlock.workflow import Airlock, Requester
from enclave.workspace.hub_login import HubUser, csrf_token

PREFIX = "/services/airlock"
TOKENS = {
    "t-alice": HubUser("alice", frozenset({"researchers"}), frozenset({SUBMIT})),
    "t-bob": HubUser("bob", frozenset({"reviewers"}), frozenset({REVIEW})),
    "t-carol": HubUser("carol", frozenset({"reviewers"}), frozenset({REVIEW, SUBMIT})),
    "t-admin": HubUser("admin", frozenset({"admins"}), frozenset({OVERSEE})),
    "t-plain": HubUser("eve", frozenset(), frozenset({"access:servers!user=eve"})),
    "t-hospital": HubUser(
        "dm", frozenset({"providers", "provider-lung-ct-hospital"}), frozenset({TRANSPARENCY})
    ),
}


class Users:
    def resolve(self, token: str):
        return TOKENS.get(token)


class LocalAirlock(Airlock):
    """The real airlock, with each user's ~/outputs under a test folder (no Unix accounts)."""

    homes: Path

    def outputs_reader(self, requester: Requester) -> OutputsReader:
        return OutputsReader(self.homes / requester.name / "outputs", os.geteuid())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def signer() -> SiteSigner:
    return SiteSigner(Ed25519PrivateKey.generate())


@pytest.fixture
def airlock(indexed, tmp_path, signer) -> LocalAirlock:
    lock = LocalAirlock(indexed.catalog, tmp_path / "state", signer, site="https://enclave.test/")
    lock.homes = tmp_path / "homes"
    out = lock.homes / "alice" / "outputs"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"roc curve" * 10)
    (out / "figures" / "scan.png").write_bytes(indexed.dicom[0].read_bytes())
    (out / "counts.csv").write_text("site,patients\nOslo,42\nBergen,3\n")
    (out / "notes.txt").write_text(f"outlier: {indexed.subject}\n")
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    (out / "unet.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    return lock


@pytest.fixture
def client(airlock, indexed) -> TestClient:

    app = create_app(airlock, Users(), prefix=PREFIX)
    return TestClient(app)


def checked(client: TestClient, rid: int, token: str = "t-alice") -> dict:
    deadline = time.monotonic() + 30
    while True:
        r = client.get(f"{PREFIX}/api/requests/{rid}", headers=auth(token)).json()
        if r["state"] != "submitted" or time.monotonic() > deadline:
            return r
        time.sleep(0.05)


def submit(client: TestClient, paths: list[str], justification: str = "figures for the paper"):
    body = {"paths": paths, "justification": justification}
    response = client.post(f"{PREFIX}/api/requests", json=body, headers=auth("t-alice"))
    assert response.status_code == 201, response.text
    return checked(client, response.json()["id"])


def by_name(request: dict) -> dict[str, dict]:
    return {f["name"]: f for f in request["files"]}


def reasons(entry: dict) -> str:
    return " | ".join(f"{c['name']}: {c['reason']}" for c in entry["checks"])


def test_each_file_that_must_not_leave_is_held_or_refused_with_its_reason(client):
    r = submit(client, ["figures", "counts.csv", "notes.txt", "unet.safetensors"])
    assert r["state"] == "in-review"
    files = by_name(r)
    assert files["figures/roc.png"]["verdict"] == "pass"
    assert files["figures/scan.png"]["verdict"] == "refuse"
    assert "the name says .png but the content is dicom" in reasons(files["figures/scan.png"])
    assert "copy of dataset file lung-ct v1" in reasons(files["figures/scan.png"])
    assert files["counts.csv"]["verdict"] == "hold"
    assert "cell Bergen / patients is 3 (below 10)" in reasons(files["counts.csv"])
    assert files["notes.txt"]["verdict"] == "hold"
    assert "'subj-0001' is a subject identifier of lung-ct v1" in reasons(files["notes.txt"])
    assert files["unet.safetensors"]["verdict"] == "hold"
    assert "no lineage record for this model" in reasons(files["unet.safetensors"])


def test_two_reviewers_release_and_the_requester_downloads_a_signed_verifiable_zip(
    client, airlock, signer
):
    r = submit(client, ["figures", "counts.csv"])
    rid = r["id"]
    # The requester cannot vote; a reviewer cannot vote on their own request.
    refused = client.post(
        f"{PREFIX}/api/requests/{rid}/vote", json={"decision": "approve"}, headers=auth("t-alice")
    )
    assert refused.status_code == 403
    one = client.post(
        f"{PREFIX}/api/requests/{rid}/vote",
        json={"decision": "approve", "comment": "counts are fine at this level"},
        headers=auth("t-bob"),
    )
    assert one.status_code == 200, one.text
    assert one.json()["state"] == "in-review"  # one approval does not release
    assert (
        client.get(f"{PREFIX}/api/requests/{rid}/download", headers=auth("t-alice")).status_code
        == 409
    )
    unseen = client.get(f"{PREFIX}/api/requests/{rid}", headers=auth("t-carol")).json()
    assert unseen["votes"] == [] and unseen["votes_cast"] == 1
    two = client.post(
        f"{PREFIX}/api/requests/{rid}/vote",
        json={"decision": "approve", "comment": "ok", "exclude": ["counts.csv"]},
        headers=auth("t-carol"),
    )
    released = two.json()
    assert released["state"] == "released", released
    assert {f["name"]: f["released"] for f in released["files"]} == {
        "figures/roc.png": True,
        "figures/scan.png": False,
        "counts.csv": False,
    }
    # Only the requester downloads.
    assert (
        client.get(f"{PREFIX}/api/requests/{rid}/download", headers=auth("t-carol")).status_code
        == 404
    )
    assert (
        client.get(f"{PREFIX}/api/requests/{rid}/download", headers=auth("t-bob")).status_code
        == 403
    )
    download = client.get(f"{PREFIX}/api/requests/{rid}/download", headers=auth("t-alice"))
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    path = airlock.root / "downloaded.zip"
    path.write_bytes(download.content)
    manifest = verify_release(path, signer.public_key_bytes())
    assert manifest["request_id"] == rid and manifest["requester"] == "alice"
    assert [(f["name"], f["sha256"]) for f in manifest["files"]] == [
        ("figures/roc.png", by_name(released)["figures/roc.png"]["sha256"])
    ]
    assert [v["reviewer"] for v in manifest["votes"]] == ["bob", "carol"]
    with zipfile.ZipFile(path) as zf:
        assert zf.read("files/figures/roc.png").startswith(b"\x89PNG")
    after = client.get(f"{PREFIX}/api/requests/{rid}", headers=auth("t-alice")).json()
    assert after["downloads"] == 1


def test_a_tampered_release_does_not_verify(client, airlock, signer, tmp_path):
    rid = submit(client, ["figures/roc.png"])["id"]
    for reviewer in ("t-bob", "t-carol"):
        client.post(
            f"{PREFIX}/api/requests/{rid}/vote",
            json={"decision": "approve"},
            headers=auth(reviewer),
        )
    original = airlock.release_dir(rid) / "release.zip"
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(
                item, b"\x89PNG\r\n\x1a\nedited" if item.filename.startswith("files/") else data
            )
    with pytest.raises(ReleaseError, match="roc.png does not match its manifest hash"):
        verify_release(forged, signer.public_key_bytes())
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(ReleaseError, match="signature does not verify"):
        verify_release(original, other)


def test_a_returned_request_is_resubmitted_and_checked_again(client, airlock):
    rid = submit(client, ["counts.csv"])["id"]
    client.post(
        f"{PREFIX}/api/requests/{rid}/vote",
        json={"decision": "return", "comment": "merge Bergen into West"},
        headers=auth("t-bob"),
    )
    back = client.post(
        f"{PREFIX}/api/requests/{rid}/vote",
        json={"decision": "approve", "comment": "fine"},
        headers=auth("t-carol"),
    ).json()
    assert back["state"] == "returned"
    (airlock.homes / "alice" / "outputs" / "counts.csv").write_text(
        "region,patients\nEast,42\nWest,13\n"
    )
    again = client.post(
        f"{PREFIX}/api/requests/{rid}/submit",
        json={"justification": "merged regions"},
        headers=auth("t-alice"),
    )
    assert again.status_code == 200, again.text
    r = checked(client, rid)
    assert r["round"] == 2 and r["state"] == "in-review"
    assert by_name(r)["counts.csv"]["verdict"] == "pass"
    assert "merge Bergen into West" in [v["comment"] for v in r["history"]]


def test_a_request_for_a_symlink_or_a_missing_file_comes_back_with_the_reason(client, airlock):
    os.symlink("/etc/passwd", airlock.homes / "alice" / "outputs" / "passwd.txt")
    r = submit(client, ["passwd.txt"])
    assert r["state"] == "returned" and r["files"] == []
    events = airlock.catalog.audit_events(limit=5)
    assert "passwd.txt is a symbolic link" in events[0].details["reason"]


def test_who_may_do_what(client):
    assert client.get(f"{PREFIX}/api/requests").status_code == 401
    assert client.get(f"{PREFIX}/api/requests", headers=auth("wrong")).status_code == 401
    assert client.get(f"{PREFIX}/api/requests", headers=auth("t-plain")).status_code == 403
    body = {"paths": ["counts.csv"], "justification": "x"}
    assert (
        client.post(f"{PREFIX}/api/requests", json=body, headers=auth("t-bob")).status_code == 403
    )
    rid = submit(client, ["counts.csv"])["id"]
    assert client.get(f"{PREFIX}/api/requests/{rid}", headers=auth("t-carol")).status_code == 200
    assert client.get(f"{PREFIX}/api/requests/{rid}", headers=auth("t-admin")).status_code == 200
    vote = {"decision": "approve", "comment": "x"}
    assert (
        client.post(
            f"{PREFIX}/api/requests/{rid}/vote", json=vote, headers=auth("t-admin")
        ).status_code
        == 403
    )
    assert (
        client.post(f"{PREFIX}/api/requests/{rid}/withdraw", headers=auth("t-carol")).status_code
        == 404
    )
    mine = client.get(f"{PREFIX}/api/requests", headers=auth("t-carol"), params={"mine": "true"})
    assert mine.json()["requests"] == []


def test_bad_requests_are_refused_with_what_is_wrong(client):
    def post(body, **kw):
        return client.post(
            f"{PREFIX}/api/requests",
            headers=auth("t-alice"),
            **kw,
            **({"json": body} if body is not None else {}),
        )

    assert post(None, content=b"{nope").json()["error"] == "the request body is not JSON"
    assert post(["x"]).json()["error"] == "the request body must be a JSON object"
    assert (
        "paths must be a list"
        in post({"paths": "counts.csv", "justification": "x"}).json()["error"]
    )
    assert "justification is empty" in post({"paths": ["x"], "justification": ""}).json()["error"]
    big = client.post(
        f"{PREFIX}/api/requests", headers=auth("t-alice"), content=b" " * (1024 * 1024 + 1)
    )
    assert big.status_code == 413
    assert client.get(f"{PREFIX}/api/requests/abc", headers=auth("t-alice")).status_code == 422
    assert (
        client.get(f"{PREFIX}/api/requests/999", headers=auth("t-alice")).json()["error"]
        == "no export request 999"
    )
    assert (
        client.get(
            f"{PREFIX}/api/requests", headers=auth("t-alice"), params={"state": "bogus"}
        ).status_code
        == 400
    )


def test_pages_need_the_csrf_token_bound_to_the_login_cookie(client):
    client.cookies.set(COOKIE, "t-alice")
    page = client.get(f"{PREFIX}/")
    assert page.status_code == 200 and "counts.csv" in page.text
    form = {"paths": ["counts.csv"], "justification": "for the paper"}
    assert client.post(f"{PREFIX}/new", data=form, follow_redirects=False).status_code == 403
    ok = client.post(
        f"{PREFIX}/new", data={**form, "_csrf": csrf_token("t-alice")}, follow_redirects=False
    )
    assert ok.status_code == 303 and "/requests/" in ok.headers["location"]
    assert "Content-Security-Policy" in page.headers


def test_reviewers_preview_what_no_check_refused_and_nothing_else(client):
    r = submit(client, ["figures", "counts.csv"])
    rid = r["id"]
    png = client.get(f"{PREFIX}/requests/{rid}/preview/figures/roc.png", headers=auth("t-bob"))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert "sandbox" in png.headers["content-security-policy"]
    csv = client.get(f"{PREFIX}/requests/{rid}/preview/counts.csv", headers=auth("t-bob"))
    assert csv.text.startswith("site,patients")
    dicom = client.get(f"{PREFIX}/requests/{rid}/preview/figures/scan.png", headers=auth("t-bob"))
    assert dicom.status_code == 403 and "refused" in dicom.text
    assert (
        client.get(
            f"{PREFIX}/requests/{rid}/preview/counts.csv", headers=auth("t-alice")
        ).status_code
        == 403
    )


def test_after_a_crash_recover_finishes_interrupted_checks_and_releases(airlock):
    from catalog.airlock import Viewer

    alice = Requester("alice")
    # Crashed after "submitted", before the checks: a half-copied folder is left behind.
    first = airlock.create(alice, ["figures/roc.png"], "figure")
    airlock.submit(first.id, alice)
    stale = airlock.staged_dir(first.id, 1)
    stale.mkdir(parents=True)
    (stale / "half-copied").write_bytes(b"x")
    # Crashed after the second approval, before the release was built.
    second = airlock.create(alice, ["counts.csv"], "table")
    airlock.submit(second.id, alice)
    airlock.check(second.id, alice)
    airlock.ledger.vote(second.id, Viewer("bob", reviewer=True), "approve", "ok")
    approved = airlock.ledger.vote(second.id, Viewer("carol", reviewer=True), "approve", "ok")
    assert approved.state.value == "approved"

    assert sorted(airlock.recover()) == [first.id, second.id]
    checked = airlock.ledger.get(first.id, Viewer("alice"))
    assert checked.state.value == "in-review"
    assert [f.name for f in checked.files] == ["figures/roc.png"]
    assert not (stale / "half-copied").exists()
    assert airlock.ledger.get(second.id, Viewer("alice")).state.value == "released"
    assert (airlock.release_dir(second.id) / "release.zip").is_file()
    assert airlock.recover() == []  # nothing left to finish
