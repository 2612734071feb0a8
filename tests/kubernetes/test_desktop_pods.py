"""Desktop sessions on Kubernetes: the rendered desktop pods, and a desktop spawn against the
API mock with the real key holder (its ticket carries desktop-mode versions; a notebook spawn
of the same person gets none of them)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from catalog.models import AccessMode
from enclave.desktop.layout import ENFORCED_VNC_PARAMETERS, DesktopPaths
from enclave.kubernetes import desktop
from enclave.kubernetes.loader import TICKET_ENV
from enclave.kubernetes.manifests import USER_POD
from enclave.kubernetes.profiles import all_entries
from enclave.kubernetes.settings import KubeSettings
from enclave.workspace.profiles import PROFILES
from tests.kubernetes.test_spawner_flow import (
    NAMESPACE,
    Cluster,
    env_of,
    hub_user,
    run_in_cluster,
    run_loader,
    unseal,
)

HUB_ENV = ("JUPYTERHUB_", "JPY_")


def containers(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


def exposed_ports(pod: dict) -> list[tuple[str, dict]]:
    return [(c["name"], p) for c in pod["spec"]["containers"] for p in c.get("ports") or []]


def test_each_profile_offers_desktop_and_notebook_with_its_own_default(settings):
    for name, entry in all_entries(settings).items():
        choices = entry["profile_options"]["kind"]["choices"]
        assert set(choices) == {k.value for k in AccessMode}
        (default,) = [k for k, c in choices.items() if c["default"]]
        assert default == PROFILES[name].default_session.value


def test_rendered_desktop_pods_pass_strict_validation(pods, settings):
    for name in ("researcher-desktop", "student-desktop"):
        for version in settings.get("kubernetes_versions"):
            kubernetes_validate.validate(pods[name], version, strict=True)


def test_a_desktop_pod_exposes_only_the_gateway_port_and_only_the_gateway_has_the_hub_token(
    pods,
):
    for name in ("researcher-desktop", "student-desktop"):
        pod = pods[name]
        assert pod["metadata"]["annotations"]["enclave.example.org/session"] == "desktop"
        assert exposed_ports(pod) == [
            ("gateway", {"name": "notebook-port", "containerPort": 8888, "protocol": "TCP"})
        ]
        found = containers(pod)
        assert set(found) == {"notebook", "gateway"}
        session, gateway = found["notebook"], found["gateway"]
        assert session["args"][:3] == ["python", "-m", "enclave.desktop.session"]
        assert gateway["command"][:3] == ["python", "-m", "enclave.kubernetes.desktop"]
        assert not [e for e in session["env"] if e["name"].startswith(HUB_ENV)]
        assert "JUPYTERHUB_API_TOKEN" in env_of(gateway)
        # Different accounts; the gateway mounts neither the home nor the datasets.
        assert gateway["securityContext"]["runAsUser"] == desktop.DISPLAY_UID
        assert session["securityContext"]["runAsUser"] == 10000
        gateway_mounts = {m["name"] for m in gateway["volumeMounts"]}
        assert gateway_mounts == {desktop.VNC_VOLUME, desktop.X11_VOLUME, "gateway-tmp"}
        session_mounts = {m["name"]: m for m in session["volumeMounts"]}
        assert desktop.VNC_VOLUME not in session_mounts  # the RFB socket is the gateway's
        assert session_mounts["datasets"]["readOnly"] is True
        shared = set(gateway_mounts) & set(session_mounts)
        assert shared == {desktop.X11_VOLUME}
        # Same pod security as a notebook pod; no process namespace shared; no restarts.
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert not spec.get("shareProcessNamespace")
        assert spec["restartPolicy"] == "Never"
        for c in [*spec["initContainers"], *spec["containers"]]:
            ctx = c["securityContext"]
            assert ctx["runAsNonRoot"] and not ctx["allowPrivilegeEscalation"], c["name"]
            assert ctx["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
            assert ctx["readOnlyRootFilesystem"] is True, c["name"]


def test_a_notebook_pod_has_no_gateway_and_its_server_faces_the_hub(pods):
    for name in ("researcher", "student"):
        assert set(containers(pods[name])) == {"notebook"}
        assert exposed_ports(pods[name]) == [
            ("notebook", {"name": "notebook-port", "containerPort": 8888})
        ]


def test_desktop_and_notebook_pods_carry_the_same_labels_so_the_same_egress_policy(
    pods, values, objects
):
    for profile in ("researcher", "student"):
        notebook = pods[profile]["metadata"]["labels"]
        desk = pods[f"{profile}-desktop"]["metadata"]["labels"]
        differing = {k for k in set(notebook) | set(desk) if notebook.get(k) != desk.get(k)}
        assert differing <= {"hub.jupyter.org/username"}  # the sample user's name only
        for key, value in USER_POD.items():
            assert desk[key] == value  # what the chart's singleuser policy selects
    # None of our own policies tells the two apart either (they select our services only).
    for policy in [o for o in objects if o["kind"] == "NetworkPolicy"]:
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        assert "hub.jupyter.org/username" not in selector
        assert not {"component", "app"} & set(selector), policy["metadata"]["name"]
    assert values["singleuser"]["networkPolicy"]["ingress"] == []


def test_the_gateway_writes_a_private_cookie_and_a_group_readable_copy_for_the_user(
    tmp_path: Path,
):
    paths = DesktopPaths(tmp_path)
    paths.vnc_dir.mkdir()
    paths.user_dir.mkdir()
    paths.rfb_socket.write_bytes(b"stale")
    desktop.prepare_pod_runtime(paths, __import__("os").getgid())
    assert paths.vnc_xauthority.read_bytes() == paths.user_xauthority.read_bytes()
    assert b"MIT-MAGIC-COOKIE-1" in paths.user_xauthority.read_bytes()
    assert stat.S_IMODE(paths.vnc_xauthority.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.user_xauthority.stat().st_mode) == 0o640
    assert stat.S_IMODE(paths.vnc_dir.stat().st_mode) == 0o700
    assert not paths.rfb_socket.exists()
    first = paths.user_xauthority.read_bytes()
    desktop.prepare_pod_runtime(paths, __import__("os").getgid())  # a restart: a new cookie
    assert paths.user_xauthority.read_bytes() != first


def test_the_gateway_starts_xvnc_with_the_clipboard_off_whatever_comes_before():
    from enclave.desktop.layout import xvnc_command

    command = xvnc_command(
        "Xvnc", desktop.runtime_paths(), geometry="800x600", extra=["-SendCutText=1"]
    )
    assert command[-len(ENFORCED_VNC_PARAMETERS) :] == list(ENFORCED_VNC_PARAMETERS)
    assert {"-SendCutText=0", "-AcceptCutText=0", "-SendPrimary=0", "-SetPrimary=0"} <= set(
        ENFORCED_VNC_PARAMETERS
    )


# ---- the spawner flow, against the API mock, with the real key holder


def spawn_and_load(
    settings: KubeSettings,
    site: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> dict[str, Any]:
    keyholder = unseal(site)
    seen: dict[str, Any] = {}

    async def flow(cluster: Cluster) -> None:
        spawner = cluster.spawner(hub_user("ana", "researchers"), kind=kind)
        starting = spawner.start()
        pod = await cluster.pod_of(spawner)
        seen["pod"] = json.loads(json.dumps(pod))
        seen["datasets"] = await run_loader(pod, tmp_path / kind)
        cluster.mock.set_running(NAMESPACE, spawner.pod_name)
        seen["url"] = await starting
        seen["poll"] = await spawner.poll()
        await spawner.stop(now=True)

    run_in_cluster(settings, tmp_path, monkeypatch, flow, keyholder)
    return seen


def test_a_desktop_spawn_gets_desktop_versions_and_a_notebook_spawn_of_the_same_person_none(
    settings: KubeSettings, site: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = spawn_and_load(settings, site, tmp_path, monkeypatch, "desktop")
    pod = desk["pod"]
    assert pod["metadata"]["annotations"]["enclave.example.org/session"] == "desktop"
    assert pod["metadata"]["annotations"]["enclave.example.org/datasets"] == (
        "open-ct@1, private-ct@1"
    )
    assert exposed_ports(pod) == [
        ("gateway", {"name": "notebook-port", "containerPort": 8888, "protocol": "TCP"})
    ]
    found = containers(pod)
    ticket = env_of(pod["spec"]["initContainers"][0])[TICKET_ENV]
    assert ticket not in json.dumps(found)
    assert not [e for e in found["notebook"]["env"] if e["name"].startswith(HUB_ENV)]
    # The ticket carried the desktop-only version, decrypted into the in-memory volume.
    assert sorted(v["name"] for v in desk["datasets"]) == ["open-ct", "private-ct"]
    assert (tmp_path / "desktop/private-ct/1/scans/a.bin").read_bytes() == b"private-ct" * 1000
    assert desk["url"].endswith(":8888") and desk["poll"] is None

    # The same person, a notebook session: no desktop-mode version, no gateway.
    note = spawn_and_load(settings, site, tmp_path, monkeypatch, "notebook")
    assert [v["name"] for v in note["datasets"]] == ["open-ct"]
    assert not (tmp_path / "notebook/private-ct").exists()
    assert set(containers(note["pod"])) == {"notebook"}
    assert note["pod"]["metadata"]["annotations"]["enclave.example.org/session"] == "notebook"


def test_a_researcher_who_names_no_kind_gets_a_desktop_and_a_student_a_notebook(
    settings: KubeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.kubernetes.test_spawner_flow import StaticDelivery

    delivery = StaticDelivery()

    async def flow(cluster: Cluster) -> None:
        for user, group in (("ana", "researchers"), ("sam", "students")):
            spawner = cluster.spawner(hub_user(user, group), delivery, kind="")
            await spawner.get_pod_manifest()
        bad = cluster.spawner(hub_user("eve", "researchers"), delivery, kind="kiosk")
        with pytest.raises(Exception, match="unknown session kind 'kiosk'"):
            await bad.get_pod_manifest()

    run_in_cluster(settings, tmp_path, monkeypatch, flow)
    assert [(u, k) for u, _, k, _ in delivery.asked] == [("ana", "desktop"), ("sam", "notebook")]


def test_a_desktop_whose_gateway_ended_is_reported_stopped_and_deleted(
    settings: KubeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.kubernetes.test_spawner_flow import StaticDelivery, until

    seen: dict[str, Any] = {}

    async def flow(cluster: Cluster) -> None:
        spawner = cluster.spawner(hub_user("ana", "researchers"), StaticDelivery(), "desktop")
        starting = spawner.start()
        await cluster.pod_of(spawner)
        cluster.mock.set_running(NAMESPACE, spawner.pod_name)
        await starting
        pod = cluster.mock.pod(NAMESPACE, spawner.pod_name)
        for status in pod["status"]["containerStatuses"]:
            if status["name"] == "gateway":
                status["state"] = {"terminated": {"exitCode": 3, "reason": "Error"}}
        cluster.mock._record("pods", "MODIFIED", pod)  # what the kubelet reports
        key = f"{NAMESPACE}/{spawner.pod_name}"

        def gateway_ended() -> bool:
            found = spawner.pod_reflector.pods[key]["status"]["containerStatuses"]
            return any("terminated" in c["state"] for c in found if c["name"] == "gateway")

        await until(gateway_ended)
        seen["poll"] = await spawner.poll()
        seen["after"] = cluster.mock.get("pods", NAMESPACE, spawner.pod_name)

    run_in_cluster(settings, tmp_path, monkeypatch, flow)
    assert seen["poll"] == 3
    assert seen["after"] is None
