"""Provider transparency: a provider sees who was granted and mounted its dataset and which
released files derive from it, each line with an inclusion proof it can check offline."""

from __future__ import annotations

import json
import os
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from catalog.audit import AuditProofError, load_audit_verify_key, verify_proof
from enclave.airlock.setup import SiteSigner
from enclave.airlock.transparency import Transparency
from tests.airlock.test_service import LocalAirlock


def test_the_report_names_grants_mounts_and_derived_releases_each_with_a_valid_proof(
    indexed, tmp_path
):
    from enclave.airlock.workflow import Requester
    from secret_sharing.fileio import sha256_file

    catalog = indexed.catalog
    catalog.publish("lung-ct", 1, actor="admin")
    catalog.grant("lung-ct", 1, user="alice", actor="admin")
    catalog.record_event(
        "alice", "dataset.mount", "dataset:lung-ct@1", {"user": "alice", "session": "desktop"}
    )

    state = tmp_path / "state"
    state.mkdir()
    airlock = LocalAirlock(catalog, state, SiteSigner(Ed25519PrivateKey.generate()))
    airlock.homes = tmp_path / "homes"
    out = airlock.homes / "alice" / "outputs"
    (out / ".lineage").mkdir(parents=True)
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    model = out / "unet.safetensors"
    model.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    record = {
        "format": "enclave-lineage/1",
        "run_id": "run-1",
        "datasets": [
            {"name": "lung-ct", "version": 1, "content_hash": indexed.version.content_hash}
        ],
        "outputs": [{"path": "unet.safetensors", "sha256": sha256_file(model)}],
    }
    (out / ".lineage" / "run-1.json").write_text(json.dumps(record))
    alice = Requester("alice")
    view = airlock.create(alice, ["unet.safetensors"], "the trained model")
    airlock.submit(view.id, alice)
    checked = airlock.check(view.id, alice)
    assert checked.files[0].lineage["datasets"][0]["catalog"] == "confirmed"
    from catalog.airlock import Viewer

    airlock.vote(view.id, Viewer("bob", reviewer=True), "approve")
    assert (
        airlock.vote(view.id, Viewer("carol", reviewer=True), "approve").state.value == "released"
    )

    report = Transparency(catalog, airlock, state).report("lung-ct-hospital")
    [version] = report["versions"]
    assert [g["subject"] for g in version["grants"]] == ["user:alice"]
    assert [(m["user"], m["session"]) for m in version["mounts"]] == [("alice", "desktop")]
    assert [(r["file"], r["request_id"]) for r in version["releases"]] == [
        ("unet.safetensors", view.id)
    ]
    key = load_audit_verify_key(state)
    lines = version["grants"] + version["mounts"] + version["releases"]
    for line in lines:
        checkpoint = verify_proof(line["proof"], key)
        assert checkpoint.tree_size == line["proof"]["tree_size"]
    forged = json.loads(json.dumps(version["grants"][0]["proof"]))
    forged["entry"]["details"]["subject"] = "user:someone-else"
    with pytest.raises(AuditProofError, match="was changed"):
        verify_proof(forged, key)


def test_a_provider_that_does_not_exist_is_named(indexed, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    airlock = LocalAirlock(indexed.catalog, state, SiteSigner(Ed25519PrivateKey.generate()))
    from catalog.errors import UnknownProvider

    with pytest.raises(UnknownProvider, match="unknown provider 'nobody'"):
        Transparency(indexed.catalog, airlock, state).report("nobody")
    assert os.path.isdir(state)
