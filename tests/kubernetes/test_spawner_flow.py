"""EnclaveKubeSpawner against a local Kubernetes API mock server: spawn, run, poll, stop, fail.

Each test runs one event loop holding the API mock (``k8s_api_mock``), the spawner the hub
would run (configured as ``hub.extraConfig`` and the chart configure it, with a kubeconfig
pointing at the mock) and, where datasets matter, the real key holder served by uvicorn on
127.0.0.1 with a real custody key set, encrypted store and catalog (the ``site`` fixture). The
test plays the kubelet: it runs the pod's loader command with the pod's own environment, marks
the pod running, or makes it fail. Nothing leaves localhost.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from kubernetes_asyncio.config import kube_config
from kubespawner.clients import load_config

from enclave.kubernetes.keyholder import Keyholder, create_app
from enclave.kubernetes.loader import TARGET_ENV, TICKET_ENV, URL_ENV, LoaderError, load
from enclave.kubernetes.render import spawner_config
from enclave.kubernetes.settings import KubeSettings
from enclave.kubernetes.spawner import DeliveryError, EnclaveKubeSpawner, PodFailed
from tests.kubernetes.conftest import TOKEN
from tests.kubernetes.k8s_api_mock import KubeAPIMock

NAMESPACE = "enclave"
#: What the pod's service links give the loader: the key holder's cluster IP (here, loopback).
SERVICE_LINKS = {"ENCLAVE_INGESTION_SERVICE_HOST": "127.0.0.1"}


@dataclass
class Group:
    name: str


@dataclass
class HubUser:
    """What KubeSpawner reads of a hub ``User``."""

    name: str
    groups: list[Group] = field(default_factory=list)
    id: int = 1
    url: str = ""
    escaped_name: str = ""

    def __post_init__(self) -> None:
        self.url = self.url or f"/user/{self.name}/"
        self.escaped_name = self.escaped_name or self.name


def hub_user(name: str, group: str) -> HubUser:
    return HubUser(name, [Group(group)])


class StaticDelivery:
    """A key holder stand-in for tests that are about the pod, not its datasets."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, list[str], str, str]] = []

    async def issue(self, user: str, groups: list[str], kind: str, pod: str) -> dict[str, Any]:
        self.asked.append((user, groups, kind, pod))
        return {"ticket": f"ticket-for-{pod}", "versions": []}


@dataclass
class Cluster:
    """One test's loop: the API mock, and the spawners made against it."""

    mock: KubeAPIMock
    settings: KubeSettings
    keyholder_url: str = ""

    def spawner(
        self, user: HubUser, delivery: Any = None, kind: str = "notebook"
    ) -> EnclaveKubeSpawner:
        c = spawner_config(self.settings)
        c.EnclaveKubeSpawner.keyholder_token = TOKEN
        if self.keyholder_url:
            c.EnclaveKubeSpawner.keyholder_url = self.keyholder_url
            port = self.keyholder_url.rsplit(":", 1)[1]
            c.EnclaveKubeSpawner.loader_keyholder_url = (
                f"http://$(ENCLAVE_INGESTION_SERVICE_HOST):{port}"
            )
        c.EnclaveKubeSpawner.start_timeout = 15
        c.EnclaveKubeSpawner.k8s_api_request_timeout = 5
        c.EnclaveKubeSpawner.k8s_api_request_retry_timeout = 10
        c.EnclaveKubeSpawner.failure_check_interval = 0.05
        spawner = EnclaveKubeSpawner(config=c, user=user, _mock=True)
        if delivery is not None:
            spawner.delivery = delivery
        spawner.user_options = {"kind": kind} if kind else {}
        return spawner

    async def pod_of(self, spawner: EnclaveKubeSpawner) -> dict[str, Any]:
        return await self.mock.wait_for("pods", NAMESPACE, spawner.pod_name)


@asynccontextmanager
async def keyholder_server(keyholder: Keyholder) -> AsyncIterator[str]:
    """The key holder's real HTTP API on 127.0.0.1, in this loop."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(keyholder), host="127.0.0.1", port=0, log_level="warning")
    )
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


def run_in_cluster(
    settings: KubeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: Callable[[Cluster], Awaitable[None]],
    keyholder: Keyholder | None = None,
) -> KubeAPIMock:
    """Run ``body`` in a fresh loop with the mock as the cluster the kubeconfig names."""

    async def main() -> KubeAPIMock:
        mock = KubeAPIMock()
        await mock.start()
        config = mock.kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(config))
        monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        load_config.cache_clear()  # KubeSpawner loads the client configuration once
        try:
            if keyholder is None:
                await body(Cluster(mock, settings))
            else:
                async with keyholder_server(keyholder) as url:
                    await body(Cluster(mock, settings, url))
        finally:
            await EnclaveKubeSpawner._stop_all_reflectors()
            await mock.close()
            load_config.cache_clear()
        return mock

    return asyncio.run(main())


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait for ``check`` to hold (the spawner's watch sees what the mock did a moment later)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"{check} still false"
        await asyncio.sleep(0.02)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def expand(value: str, env: dict[str, str]) -> str:
    """``$(NAME)`` references, expanded as the kubelet does."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


async def run_loader(pod: dict[str, Any], target: Path) -> list[dict[str, object]]:
    """The kubelet's part: run the pod's loader with the pod's own environment."""
    loader = next(c for c in pod["spec"]["initContainers"] if c["name"] == "datasets")
    assert loader["command"] == ["python", "-m", "enclave.kubernetes.loader"]
    env = {k: expand(v, SERVICE_LINKS) for k, v in env_of(loader).items()}
    assert env[TARGET_ENV] == "/datasets"
    return await asyncio.to_thread(load, env[URL_ENV], env[TICKET_ENV], target)


def unseal(site: Any) -> Keyholder:
    keyholder, client, mnemonics = site
    for m in mnemonics[:2]:
        client.post("/unseal", json={"mnemonic": m})
    assert keyholder.sealed is False
    return keyholder


# ---- the whole flow


def test_a_researcher_gets_a_restricted_pod_with_notebook_grants_only_that_runs_and_stops(
    settings: KubeSettings, site: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyholder = unseal(site)
    seen: dict[str, Any] = {}

    async def flow(cluster: Cluster) -> None:
        spawner = cluster.spawner(hub_user("ana", "researchers"))
        starting = spawner.start()
        pod = await cluster.pod_of(spawner)
        pod_name = spawner.pod_name
        seen["pod"] = json.loads(json.dumps(pod))
        await until(lambda: spawner.pod_reflector.pods.get(f"{NAMESPACE}/{pod_name}"))
        assert await spawner.poll() is None  # Pending, as the watch reports: still starting
        seen["datasets"] = await run_loader(pod, tmp_path / "datasets")
        cluster.mock.set_running(NAMESPACE, spawner.pod_name)
        seen["url"] = await asyncio.wait_for(starting, 10)
        seen["progress"] = [e["message"] async for e in spawner.progress()]
        seen["poll_running"] = await spawner.poll()
        await spawner.stop()
        seen["after_stop"] = cluster.mock.get("pods", NAMESPACE, spawner.pod_name)
        seen["poll_stopped"] = await spawner.poll()

    mock = run_in_cluster(settings, tmp_path, monkeypatch, flow, keyholder)

    pod = seen["pod"]
    assert pod["metadata"]["name"] == "jupyter-ana"
    assert pod["metadata"]["labels"]["component"] == "singleuser-server"
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*spec["initContainers"], *spec["containers"]]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
    notebook = spec["containers"][0]
    assert notebook["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert notebook["resources"]["limits"]["cpu"]
    # The ticket the key holder issued for this spawn is in the loader, and only there.
    loader = spec["initContainers"][0]
    ticket = env_of(loader)[TICKET_ENV]
    assert len(ticket) > 30 and ticket != "issued-by-the-key-holder-at-spawn"
    assert ticket not in json.dumps(notebook)
    assert pod["metadata"]["annotations"]["enclave.example.org/datasets"] == "open-ct@1"
    # The loader got the notebook grant, decrypted, and not the desktop-only one.
    assert [v["name"] for v in seen["datasets"]] == ["open-ct"]
    assert (tmp_path / "datasets/open-ct/1/scans/a.bin").read_bytes() == b"open-ct" * 1000
    assert not (tmp_path / "datasets/private-ct").exists()
    # Running: the hub is told the pod's IP; progress showed the cluster's events.
    assert re.fullmatch(r"http://10\.244\.0\.\d+:8888", seen["url"])
    assert any("Successfully assigned enclave/jupyter-ana" in m for m in seen["progress"])
    assert seen["poll_running"] is None
    assert seen["after_stop"] is None and seen["poll_stopped"] == 1
    calls = [(r.method, r.path) for r in mock.requests]
    assert ("POST", "/api/v1/namespaces/enclave/persistentvolumeclaims") in calls
    assert ("POST", "/api/v1/namespaces/enclave/pods") in calls
    assert ("DELETE", "/api/v1/namespaces/enclave/pods/jupyter-ana") in calls
    watches = {r.path for r in mock.requests if r.query.get("watch", "").lower() == "true"}
    assert watches == {"/api/v1/namespaces/enclave/pods", "/api/v1/namespaces/enclave/events"}


def test_a_pod_s_ticket_serves_one_loader_run_only(
    settings: KubeSettings, site: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyholder = unseal(site)
    seen: dict[str, Any] = {}

    async def flow(cluster: Cluster) -> None:
        spawner = cluster.spawner(hub_user("ana", "researchers"))
        starting = spawner.start()
        pod = await cluster.pod_of(spawner)
        await run_loader(pod, tmp_path / "first")
        try:
            await run_loader(pod, tmp_path / "again")  # a restarted loader, same ticket
        except LoaderError as exc:
            seen["again"] = str(exc)
        cluster.mock.set_running(NAMESPACE, spawner.pod_name)
        await starting
        await spawner.stop(now=True)

    run_in_cluster(settings, tmp_path, monkeypatch, flow, keyholder)
    assert seen["again"] == (
        "the key holder refused the delivery: the ticket is unknown, used or expired"
    )


def test_a_student_who_is_granted_nothing_gets_a_ticket_for_no_version(
    settings: KubeSettings, site: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyholder = unseal(site)
    seen: dict[str, Any] = {}

    async def flow(cluster: Cluster) -> None:
        spawner = cluster.spawner(hub_user("sam", "students"))
        starting = spawner.start()
        pod = await cluster.pod_of(spawner)
        seen["pod"] = pod
        seen["datasets"] = await run_loader(pod, tmp_path / "datasets")
        cluster.mock.set_running(NAMESPACE, spawner.pod_name)
        await starting
        await spawner.stop(now=True)

    run_in_cluster(settings, tmp_path, monkeypatch, flow, keyholder)
    assert seen["pod"]["metadata"]["annotations"]["enclave.example.org/datasets"] == "none"
    assert seen["datasets"] == []
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == [".enclave-grants.json"]
    assert "nvidia.com/gpu" not in seen["pod"]["spec"]["containers"][0]["resources"]["limits"]


def test_a_provider_gets_no_pod_and_the_api_sees_no_create(
    settings: KubeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery = StaticDelivery()
    seen: dict[str, Any] = {}

    async def flow(cluster: Cluster) -> None:
        spawner = cluster.spawner(hub_user("hospital", "providers"), delivery)
        with pytest.raises(DeliveryError) as refused:
            await spawner.start()
        seen["error"] = str(refused.value)

    mock = run_in_cluster(settings, tmp_path, monkeypatch, flow)
    assert "provider" in seen["error"]
    assert delivery.asked == []
    assert not [r for r in mock.requests if r.method == "POST"]


# ---- failures surface at once, by name, and the failed pod is deleted


def failing_spawn(
    settings: KubeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail: Callable[[KubeAPIMock, str], object],
) -> tuple[str, KubeAPIMock]:
    seen: dict[str, str] = {}

    async def flow(cluster: Cluster) -> None:
        spawner = cluster.spawner(hub_user("ana", "researchers"), StaticDelivery())
        starting = spawner.start()
        await cluster.pod_of(spawner)
        fail(cluster.mock, spawner.pod_name)
        with pytest.raises(PodFailed) as failed:
            await asyncio.wait_for(starting, 5)  # far less than start_timeout
        seen["error"] = str(failed.value)
        assert cluster.mock.get("pods", NAMESPACE, spawner.pod_name) is None
        assert await spawner.poll() == 1

    mock = run_in_cluster(settings, tmp_path, monkeypatch, flow)
    return seen["error"], mock


def test_a_pod_that_fails_fails_the_spawn_with_its_reason(
    settings: KubeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error, _ = failing_spawn(
        settings,
        tmp_path,
        monkeypatch,
        lambda mock, pod: mock.set_failed(
            NAMESPACE, pod, "OutOfmemory", "Pod Node didn't have enough resource: memory"
        ),
    )
    assert error == ("pod enclave/jupyter-ana failed: Pod Node didn't have enough resource: memory")


def test_an_image_that_cannot_be_pulled_fails_the_spawn_naming_the_image(
    settings: KubeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_pull(mock: KubeAPIMock, pod: str) -> None:
        image = mock.pod(NAMESPACE, pod)["spec"]["containers"][0]["image"]
        mock.add_event(
            NAMESPACE,
            pod,
            "Failed",
            f'Failed to pull image "{image}": not found',
            type="Warning",
        )

    error, _ = failing_spawn(settings, tmp_path, monkeypatch, cannot_pull)
    assert error.startswith("pod enclave/jupyter-ana: Failed: Failed to pull image ")
    assert "enclave-user-gpu:0.1.0" in error


def test_an_image_pull_back_off_fails_the_spawn_naming_the_container(
    settings: KubeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error, _ = failing_spawn(
        settings,
        tmp_path,
        monkeypatch,
        lambda mock, pod: mock.set_waiting(
            NAMESPACE, pod, "notebook", "ImagePullBackOff", 'Back-off pulling image "x"'
        ),
    )
    assert error == (
        "container 'notebook' of pod enclave/jupyter-ana cannot start: "
        'ImagePullBackOff: Back-off pulling image "x"'
    )


def test_a_loader_that_fails_fails_the_spawn_with_the_loader_s_message(
    settings: KubeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error, _ = failing_spawn(
        settings,
        tmp_path,
        monkeypatch,
        lambda mock, pod: mock.set_init_exited(
            NAMESPACE, pod, "datasets", 1, "error: the key holder refused the delivery"
        ),
    )
    assert error == (
        "the datasets loader (init container 'datasets' of pod enclave/jupyter-ana) exited "
        "with code 1: error: the key holder refused the delivery"
    )
