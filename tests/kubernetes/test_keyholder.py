"""The key holder and the loader: unsealed by custodians, grants from the catalog, one-use
tickets, and a pod's datasets delivered decrypted into memory, never to a disk."""

from __future__ import annotations

import io
import json

from enclave.kubernetes.loader import unpack
from tests.kubernetes.conftest import TOKEN


def ticket(client, user="ana", groups=("researchers",), token=TOKEN):
    return client.post(
        "/tickets",
        json={"user": user, "groups": list(groups), "kind": "notebook", "pod": "jupyter-ana"},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_custodians_unseal_it_one_mnemonic_each(site):
    keyholder, client, mnemonics = site
    assert client.get("/healthz").json()["sealed"] is True
    first = client.post("/unseal", json={"mnemonic": mnemonics[0]})
    assert first.json() == {"sealed": True, "given": 1, "threshold": 2}
    assert client.post("/unseal", json={"mnemonic": mnemonics[2]}).json()["sealed"] is False
    assert keyholder.sealed is False
    assert client.post("/unseal", json={"mnemonic": mnemonics[1]}).status_code == 409


def test_a_mnemonic_that_is_not_one_is_refused_by_name(site):
    _, client, _ = site
    reply = client.post("/unseal", json={"mnemonic": "academic acid acrobat"})
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("the mnemonic is not valid")


def test_a_notebook_pod_gets_only_versions_granted_for_notebooks_decrypted(site, tmp_path):
    _, client, mnemonics = site
    for m in mnemonics[:2]:
        client.post("/unseal", json={"mnemonic": m})
    issued = ticket(client)
    assert issued.status_code == 201
    assert [(v["name"], v["mode"]) for v in issued.json()["versions"]] == [("open-ct", "notebook")]
    tar = client.get(f"/deliveries/{issued.json()['ticket']}")
    assert tar.status_code == 200
    target = tmp_path / "datasets"
    index = unpack(io.BytesIO(tar.content), target)
    assert [v["name"] for v in index] == ["open-ct"]
    assert (target / "open-ct/1/scans/a.bin").read_bytes() == b"open-ct" * 1000
    info = json.loads((target / "open-ct/1/.enclave-version.json").read_text())
    assert info["content_hash"] == "a" * 64
    assert not (target / "private-ct").exists()


def test_a_ticket_works_once(site):
    _, client, mnemonics = site
    for m in mnemonics[:2]:
        client.post("/unseal", json={"mnemonic": m})
    t = ticket(client).json()["ticket"]
    assert client.get(f"/deliveries/{t}").status_code == 200
    again = client.get(f"/deliveries/{t}")
    assert again.status_code == 404
    assert again.json()["error"] == "the ticket is unknown, used or expired"


def test_tickets_need_the_hub_token_and_an_unsealed_enclave(site):
    _, client, _ = site
    assert ticket(client, token="x" * 40).status_code == 403
    sealed = ticket(client)
    assert sealed.status_code == 503
    assert "sealed" in sealed.json()["error"]
    # Nobody granted anything: a ticket even while sealed (an empty datasets folder).
    assert ticket(client, user="sam", groups=("students",)).status_code == 201
    refused = ticket(client, user="hospital", groups=("providers",))
    assert refused.status_code == 403
