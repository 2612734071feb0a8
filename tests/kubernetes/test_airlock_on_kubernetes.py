"""The airlock on Kubernetes: a Deployment the hub knows as the service ``airlock`` with the
embedded hub's settings and scopes, its own volume and key, reached by user pods only through
the proxy; it reads no home and takes a request's files as uploads from the pod."""

from __future__ import annotations

import hashlib
import stat
import time
from pathlib import Path

import pytest
from traitlets.config import Config

from catalog.airlock import CheckVerdict, ExportState, Viewer
from enclave.airlock import scopes as airlock
from enclave.airlock.workflow import AirlockError, Requester
from enclave.kubernetes.hub import AIRLOCK_URL_IN_PODS
from enclave.kubernetes.manifests import EXTRA_CONFIG, HUB_POD, PROXY_POD, USER_POD, labels


def by_kind_and_name(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_the_chart_s_airlock_service_has_the_embedded_hub_s_settings_and_scopes(
    values, tmp_path: Path
):
    from enclave.workspace.hub import HubSettings, custom_scopes, services

    embedded = next(
        s for s in services(HubSettings(state_dir=str(tmp_path))) if s["name"] == "airlock"
    )
    ours = values["hub"]["services"]["airlock"]
    assert ours["url"] == "http://enclave-airlock.enclave.svc.cluster.local:8092"
    shared = {
        k: v for k, v in embedded.items() if k not in ("name", "url", "command", "environment")
    }
    assert {k: v for k, v in ours.items() if k != "url"} == shared
    assert ours["oauth_client_allowed_scopes"] == list(airlock.AIRLOCK_SCOPES)
    # The hub's extraConfig defines the same custom scopes and roles as the embedded hub.
    c = Config()
    custom = values["custom"]["enclave"]
    exec(EXTRA_CONFIG, {"c": c, "get_config": lambda key: custom})
    assert c.JupyterHub.custom_scopes == custom_scopes()
    assert set(airlock.AIRLOCK_SCOPES) <= set(c.JupyterHub.custom_scopes)
    roles = {r["name"]: set(r["scopes"]) for r in c.JupyterHub.load_roles}
    assert {airlock.SUBMIT, airlock.ACCESS} <= roles["enclave-researcher"]
    assert {airlock.REVIEW, airlock.ACCESS} <= roles["enclave-reviewer"]
    assert airlock.OVERSEE in roles["enclave-admin"]


def test_a_session_s_token_may_submit_to_the_airlock_as_on_one_machine(values, tmp_path):
    from enclave.workspace.hub import session_token_scopes

    c = Config()
    custom = values["custom"]["enclave"]
    exec(EXTRA_CONFIG, {"c": c, "get_config": lambda key: custom})
    assert c.EnclaveKubeSpawner.server_token_scopes == session_token_scopes()
    assert {airlock.SUBMIT, airlock.ACCESS} <= set(session_token_scopes())
    assert c.EnclaveKubeSpawner.airlock_url == AIRLOCK_URL_IN_PODS


def test_user_pods_find_the_airlock_through_the_proxy_s_public_service(pods):
    for name, pod in pods.items():
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["ENCLAVE_AIRLOCK_URL"] == (
            "http://$(PROXY_PUBLIC_SERVICE_HOST):$(PROXY_PUBLIC_SERVICE_PORT)/services/airlock/"
        ), name


def test_no_network_policy_lets_a_user_pod_reach_the_airlock_directly(values, objects):
    airlock_pod = labels("airlock")
    for rule in values["singleuser"]["networkPolicy"]["egress"]:
        for peer in rule["to"]:
            assert peer["podSelector"]["matchLabels"] != airlock_pod
    policy = by_kind_and_name(objects)[("NetworkPolicy", "enclave-airlock")]
    assert policy["spec"]["podSelector"] == {"matchLabels": airlock_pod}
    (ingress,) = policy["spec"]["ingress"]
    peers = [p["podSelector"]["matchLabels"] for p in ingress["from"]]
    assert peers == [HUB_POD, PROXY_POD]
    assert USER_POD not in peers
    assert ingress["ports"] == [{"port": 8092, "protocol": "TCP"}]
    # The proxy may forward to it; the hub may check it.
    proxy_egress = values["proxy"]["chp"]["networkPolicy"]["egress"]
    assert any(r["to"] == [{"podSelector": {"matchLabels": airlock_pod}}] for r in proxy_egress)
    hub_egress = values["hub"]["networkPolicy"]["egress"][0]
    assert {"podSelector": {"matchLabels": airlock_pod}} in hub_egress["to"]


def test_the_airlock_runs_restricted_with_its_own_volume_and_the_chart_s_token(objects):
    found = by_kind_and_name(objects)
    deployment = found[("Deployment", "enclave-airlock")]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "enclave.kubernetes.airlock"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["airlock"]["persistentVolumeClaim"] == {"claimName": "enclave-airlock"}
    claim = found[("PersistentVolumeClaim", "enclave-airlock")]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hub",
        "key": "hub.services.airlock.apiToken",
    }
    assert env["JUPYTERHUB_SERVICE_PREFIX"]["value"] == "/services/airlock/"
    # No other pod mounts the airlock's volume.
    for (kind, name), obj in found.items():
        if kind in ("Deployment", "Job") and name != "enclave-airlock":
            claims = [
                v.get("persistentVolumeClaim", {}).get("claimName")
                for v in obj["spec"]["template"]["spec"]["volumes"]
            ]
            assert "enclave-airlock" not in claims, name


def test_the_airlock_makes_its_signing_key_in_its_volume_and_accepts_uploaded_files(
    tmp_path: Path,
):
    from fastapi.testclient import TestClient

    from enclave.airlock.uploads import FileSource
    from enclave.airlock.web import create_app
    from enclave.kubernetes.airlock import open_cluster_airlock
    from enclave.workspace.hub_login import HubUser

    state = tmp_path / "airlock-volume"
    state.mkdir()
    airlock_, _ = open_cluster_airlock(
        state, f"sqlite:///{tmp_path / 'catalog.sqlite'}", "https://enclave.example.org/"
    )
    try:
        keys = [p for p in state.rglob("*") if p.is_file() and "key" in p.name]
        private = [p for p in keys if p.name != "verify.key"]
        assert private, keys
        for key in private:
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert airlock_.site == "https://enclave.example.org/"
        # It reads no home (each is a volume of its own pod): files come as uploads.
        assert airlock_.file_source is FileSource.UPLOAD
        with pytest.raises(AirlockError, match="does not read ana's ~/outputs"):
            airlock_.outputs_reader(Requester("ana"))
        ana = HubUser("ana", frozenset({"researchers"}), frozenset({airlock.SUBMIT}))

        class Users:
            def resolve(self, token: str) -> HubUser | None:
                return ana if token == "t-ana" else None

        prefix = "/services/airlock"
        client = TestClient(create_app(airlock_, Users(), prefix=prefix))
        headers = {"Authorization": "Bearer t-ana"}
        body = {"paths": ["results.txt"], "justification": "the paper's numbers", "submit": False}
        rid = client.post(f"{prefix}/api/requests", json=body, headers=headers).json()["id"]
        data = b"accuracy 0.91 on the held-out fold\n"
        uploaded = client.put(
            f"{prefix}/api/requests/{rid}/files",
            params={"name": "results.txt"},
            content=data,
            headers={**headers, "X-Content-SHA256": hashlib.sha256(data).hexdigest()},
        )
        assert uploaded.status_code == 201, uploaded.text
        assert client.post(f"{prefix}/api/requests/{rid}/submit", headers=headers).is_success
        deadline = time.monotonic() + 60
        while (r := airlock_.ledger.get(rid, Viewer("ana"))).state is ExportState.SUBMITTED:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r.state is ExportState.IN_REVIEW
        assert [(f.name, f.verdict) for f in r.files] == [("results.txt", CheckVerdict.PASS)]
        assert (
            state / "airlock" / "requests" / str(rid) / "1" / "results.txt"
        ).read_bytes() == data
    finally:
        airlock_.catalog.close()
