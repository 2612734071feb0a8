"""``enclave k8s render``: every manifest the enclave needs, written offline as YAML.

The output folder holds

* ``z2jh-values.yaml``: the Zero-to-JupyterHub chart's values (``helm upgrade --install ...
  --version CHART -f z2jh-values.yaml``);
* ``enclave.yaml``: our own objects (``kubectl apply -f``);
* ``pods/PROFILE.yaml`` and ``pods/PROFILE-desktop.yaml``: the notebook and the desktop pod
  each profile produces, built by ``EnclaveKubeSpawner``'s own
  ``get_pod_manifest`` with ``_mock=True`` and a throwaway kubeconfig that is never contacted
  (the ticket in it is a placeholder: the key holder issues the real one at spawn).

The chart applies its values to KubeSpawner in its own ``jupyterhub_config.py``;
:func:`chart_spawner_config` repeats the part of that mapping that shapes a user pod (image,
user and group ids, the home volume), so the rendered pods are the ones the chart would start.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from enclave.kubernetes.manifests import chart_values, enclave_objects
from enclave.kubernetes.settings import KubeSettings

#: Each profile is rendered for a member of this group.
SAMPLE_GROUPS = {"researcher": "researchers", "student": "students"}
#: Each profile is rendered in both session kinds: pods/PROFILE.yaml, pods/PROFILE-desktop.yaml.
SAMPLE_KINDS = {"notebook": "", "desktop": "-desktop"}
DUMMY_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: offline
  cluster: {server: "https://offline.invalid:6443"}
users:
- name: offline
  user: {token: offline}
contexts:
- name: offline
  context: {cluster: offline, user: offline, namespace: enclave}
current-context: offline
"""


@dataclass
class _Group:
    name: str


@dataclass
class SampleUser:
    """The hub user a pod is rendered for (what KubeSpawner reads of a ``User``)."""

    name: str
    groups: list[_Group] = field(default_factory=list)
    id: int = 1
    url: str = "/user/sample/"
    escaped_name: str = ""

    def __post_init__(self) -> None:
        self.escaped_name = self.escaped_name or self.name


def offline_kubeconfig() -> Path:
    """Point the Kubernetes client at a kubeconfig for a server that does not exist.

    KubeSpawner loads a client configuration when it is created (in-cluster, else the
    kubeconfig file); rendering never calls the API, so the file only has to parse. The
    client reads ``$KUBECONFIG`` when it is imported, hence both the variable and its default.
    """
    path = Path(tempfile.gettempdir()) / f"enclave-offline-kubeconfig-{os.getuid()}"
    if not path.is_file() or path.read_text() != DUMMY_KUBECONFIG:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(DUMMY_KUBECONFIG)
    if "KUBERNETES_SERVICE_HOST" not in os.environ:
        os.environ.setdefault("KUBECONFIG", str(path))
        from kubernetes_asyncio.config import kube_config

        if not Path(os.path.expanduser(kube_config.KUBE_CONFIG_DEFAULT_LOCATION)).is_file():
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)
    return path


def chart_spawner_config(c: Any, values: dict[str, Any], namespace: str) -> None:
    """What the chart's ``jupyterhub_config.py`` sets on KubeSpawner from ``singleuser``."""
    single = values["singleuser"]
    image = single["image"]
    c.KubeSpawner.namespace = namespace
    c.KubeSpawner.image = f"{image['name']}:{image['tag']}"
    c.KubeSpawner.uid = single["uid"]
    c.KubeSpawner.fs_gid = single["fsGid"]
    c.KubeSpawner.default_url = single["defaultUrl"]
    c.KubeSpawner.common_labels = {"app": "jupyterhub", "release": "enclave"}
    storage = single["storage"]
    volume = "volume-{user_server}"
    c.KubeSpawner.pvc_name_template = "claim-{user_server}"
    c.KubeSpawner.storage_pvc_ensure = True
    c.KubeSpawner.storage_capacity = storage["capacity"]
    if storage["dynamic"].get("storageClass"):
        c.KubeSpawner.storage_class = storage["dynamic"]["storageClass"]
    c.KubeSpawner.storage_access_modes = ["ReadWriteOnce"]
    c.KubeSpawner.volumes = {
        volume: {"name": volume, "persistentVolumeClaim": {"claimName": "{pvc_name}"}}
    }
    c.KubeSpawner.volume_mounts = {volume: {"mountPath": storage["homeMountPath"], "name": volume}}


def spawner_config(settings: KubeSettings) -> Any:
    """The hub's spawner config, as the chart and ``hub.extraConfig`` together make it."""
    from traitlets.config import Config

    from enclave.kubernetes.hub import configure_spawner

    c = Config()
    chart_spawner_config(c, chart_values(settings), settings.namespace)
    configure_spawner(c, settings, keyholder_token="")
    return c


async def build_pod(
    settings: KubeSettings,
    user: SampleUser,
    *,
    delivery: Any = None,
    config: Any = None,
    kind: str = "",
) -> dict[str, Any]:
    """The pod ``user`` gets, as a plain dict (KubeSpawner ``_mock=True``, no API server)."""
    from kubernetes_asyncio.client import ApiClient

    from enclave.kubernetes.spawner import EnclaveKubeSpawner, OfflineDelivery

    offline_kubeconfig()
    spawner = EnclaveKubeSpawner(
        config=config if config is not None else spawner_config(settings),
        user=user,
        _mock=True,
    )
    spawner.delivery = delivery if delivery is not None else OfflineDelivery()
    spawner.user_options = {"kind": kind} if kind else {}
    await spawner.load_user_options()
    try:
        pod = await spawner.get_pod_manifest()
    finally:
        await spawner.api.api_client.close()  # created with the spawner, never used here
    async with ApiClient() as client:
        serialised: dict[str, Any] = client.sanitize_for_serialization(pod)
    serialised.setdefault("apiVersion", "v1")
    serialised.setdefault("kind", "Pod")
    serialised["metadata"].setdefault("namespace", settings.namespace)
    return serialised


def profile_pods(settings: KubeSettings) -> dict[str, dict[str, Any]]:
    async def build_all() -> dict[str, dict[str, Any]]:
        return {
            f"{profile}{suffix}": await build_pod(
                settings,
                SampleUser(f"sample-{profile}{suffix}", [_Group(group)]),
                kind=kind,
            )
            for profile, group in SAMPLE_GROUPS.items()
            for kind, suffix in SAMPLE_KINDS.items()
        }

    return asyncio.run(build_all())


def _dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def render(settings: KubeSettings, out: Path) -> list[Path]:
    """Write every manifest under ``out``; return the files written."""
    out = Path(out)
    (out / "pods").mkdir(parents=True, exist_ok=True)
    header = (
        f"# Rendered by `enclave k8s render` from {settings.source}.\n"
        f"# Zero-to-JupyterHub chart {settings.text('chart.name')} "
        f"{settings.text('chart.version')} ({settings.text('chart.repository')}).\n"
    )
    written: list[Path] = []
    values = out / "z2jh-values.yaml"
    values.write_text(header + yaml.safe_dump(chart_values(settings), sort_keys=False))
    written.append(values)
    ours = out / "enclave.yaml"
    ours.write_text(header + _dump(enclave_objects(settings)))
    written.append(ours)
    for profile, pod in profile_pods(settings).items():
        path = out / "pods" / f"{profile}.yaml"
        path.write_text(header + _dump([pod]))
        written.append(path)
    return written


def manifest_files(out: Path) -> list[Path]:
    """The rendered Kubernetes objects (the chart's values are not objects)."""
    return [Path(out) / "enclave.yaml", *sorted((Path(out) / "pods").glob("*.yaml"))]
