"""``EnclaveKubeSpawner``: KubeSpawner with the enclave's profiles, pod security and datasets.

What one spawn does (in the hub, which holds no master key on a cluster):

1. the profile is chosen from the user's hub groups by ``enclave.workspace.profiles.profile_for``
   (researcher: CPU, memory and one ``nvidia.com/gpu``; student: CPU only); providers get no
   server;
2. the spawner asks the key holder for a single-use ticket for this user, their groups and the
   session kind; the key holder decides what the pod gets with the catalog's
   ``visible_versions`` (``enclave.kubernetes.keyholder``), the same grant logic as the local
   spawner;
3. the pod has an init container, the loader, with that ticket; it fills an in-memory
   ``emptyDir`` with the decrypted versions, which the notebook container mounts read-only at
   ``~/datasets``: no plaintext on any persistent volume;
4. every container runs as a non-root user, without privilege escalation, with all
   capabilities dropped and the runtime's default seccomp profile; no service-account token is
   mounted; the root filesystem is read-only (``/tmp`` is an emptyDir);
5. a desktop session (the kind chosen in the profile options, else the profile's default) gets
   a second container, the gateway (``enclave.kubernetes.desktop``), which alone has the pod's
   port and the hub's token; the main container runs the desktop session;
6. a pod that cannot become ready fails the spawn at once, with the reason (:func:`pod_failure`:
   phase ``Failed``, an image that cannot be pulled, the loader exiting with an error), instead
   of KubeSpawner's wait until ``start_timeout``; the failed pod is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any, Protocol

import httpx
from kubespawner import KubeSpawner
from traitlets import Any as AnyTrait
from traitlets import Dict, Float, Int, Unicode, default

from catalog.models import AccessMode
from enclave.errors import EnclaveError
from enclave.kubernetes import desktop
from enclave.kubernetes.loader import TARGET_ENV, TICKET_ENV, URL_ENV
from enclave.kubernetes.manifests import container_security
from enclave.kubernetes.profiles import KIND_OPTION, memory_quantity, quantity_bytes
from enclave.workspace import policy, profiles

DATASETS_VOLUME = "datasets"
TMP_VOLUME = "tmp"
LOADER_TARGET = "/datasets"
#: Where images/user installs the Jupyter policy (root-owned, read-only root filesystem).
POLICY_DIR = "/etc/enclave/jupyter"
#: The pod annotation that says the session's kind.
SESSION_ANNOTATION = "enclave.example.org/session"
#: Environment only the server's face to the hub has (the desktop's gateway).
HUB_ENV_PREFIXES = ("JUPYTERHUB_", "JPY_")


#: Container waiting reasons no wait cures: the spawn fails at once rather than at its timeout.
FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)
#: Warning events (the kubelet's) that mean a container will not start, e.g. a failed pull.
FATAL_EVENT_REASONS = frozenset({"Failed", "InspectFailed", "ErrImageNeverPull"})


class DeliveryError(EnclaveError):
    """The key holder would not issue a ticket for this spawn."""


class PodFailed(EnclaveError):
    """A user's pod cannot become ready (the message names the pod, the container and why)."""


def _container_failure(pod: str, status: dict[str, Any], init: bool) -> str | None:
    what = f"{'init container' if init else 'container'} {status.get('name')!r} of pod {pod}"
    if status.get("name") == DATASETS_VOLUME and init:
        what = f"the datasets loader ({what})"
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in FATAL_WAITING_REASONS:
        detail = waiting.get("message") or f"image {status.get('image')}"
        return f"{what} cannot start: {waiting['reason']}: {detail}"
    ended = state.get("terminated") or {}
    # A notebook that ended before it was ready, or a loader that failed: its ticket was
    # single-use, so a restart of the loader cannot succeed either.
    if ended and (not init or ended.get("exitCode") != 0):
        why = (ended.get("message") or ended.get("reason") or "no message").strip()
        return f"{what} exited with code {ended.get('exitCode')}: {why}"
    return None


def pod_failure(pod: dict[str, Any] | None, events: Iterable[dict[str, Any]] = ()) -> str | None:
    """Why ``pod`` (the API's JSON) will not become ready, or None while it still may.

    ``events`` are the pod's events since this spawn began (``KubeSpawner.events``)."""
    if not pod:
        return None
    meta = pod.get("metadata") or {}
    name = f"{meta.get('namespace')}/{meta.get('name')}"
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        why = status.get("message") or status.get("reason") or "no reason given"
        return f"pod {name} failed: {why}"
    for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
        for container in status.get(key) or []:
            found = _container_failure(name, container, init)
            if found:
                return found
    for event in events:
        if event.get("type") == "Warning" and event.get("reason") in FATAL_EVENT_REASONS:
            return f"pod {name}: {event.get('reason')}: {event.get('message')}"
    return None


class Delivery(Protocol):
    """Issues a pod's dataset ticket: the key holder (``KeyholderClient``)."""

    async def issue(self, user: str, groups: list[str], kind: str, pod: str) -> dict[str, Any]: ...


class KeyholderClient:
    """``POST /tickets`` at the key holder, with the hub's key holder token."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    async def issue(self, user: str, groups: list[str], kind: str, pod: str) -> dict[str, Any]:
        body = {"user": user, "groups": groups, "kind": kind, "pod": pod}
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                reply = await client.post(
                    f"{self.url}/tickets",
                    json=body,
                    headers={"Authorization": f"Bearer {self.token}"},
                )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"the key holder at {self.url} does not answer ({exc})") from None
        if reply.status_code != 201:
            try:
                why = reply.json().get("error", reply.text)
            except ValueError:
                why = reply.text[:200]
            raise DeliveryError(f"the key holder refused {user}'s datasets: {why}")
        issued: dict[str, Any] = reply.json()
        return issued


class OfflineDelivery:
    """For ``enclave k8s render``: no key holder is asked; the ticket is issued at spawn."""

    TICKET = "issued-by-the-key-holder-at-spawn"

    async def issue(self, user: str, groups: list[str], kind: str, pod: str) -> dict[str, Any]:
        return {"ticket": self.TICKET, "versions": []}


def profile_list_for(spawner: EnclaveKubeSpawner) -> list[dict[str, Any]]:
    """``KubeSpawner.profile_list`` as a callable: the one profile the user's groups give."""
    try:
        chosen = profiles.profile_for(spawner.group_names)
    except profiles.NoWorkspace as exc:
        raise DeliveryError(str(exc)) from None
    entry = spawner.profile_entries.get(chosen.name)
    if entry is None:
        raise DeliveryError(f"profile {chosen.name!r} is not configured (profile_entries)")
    return [entry]


class EnclaveKubeSpawner(KubeSpawner):
    """A KubeSpawner whose pods are restricted and get their granted datasets in memory."""

    profile_entries = Dict(
        help="Profile name -> profile_list entry (enclave.kubernetes.profiles.all_entries)."
    ).tag(config=True)
    keyholder_url = Unicode("", help="The key holder's in-cluster URL.").tag(config=True)
    loader_keyholder_url = Unicode(
        "",
        help="""The key holder's URL as the loader reaches it (user pods have no DNS: a
        $(SERVICE_HOST) reference Kubernetes expands). Empty: keyholder_url.""",
    ).tag(config=True)
    keyholder_token = Unicode(
        "", help="The hub's key holder token (from a Secret, through the environment)."
    ).tag(config=True)
    delivery = AnyTrait(
        None,
        allow_none=True,
        help="Who issues dataset tickets (Delivery); defaults to the key holder at keyholder_url.",
    ).tag(config=True)
    datasets_size = Unicode("16Gi", help="Size limit of the in-memory datasets volume.").tag(
        config=True
    )
    loader_uid = Int(10001, help="The loader's user id (not the notebook user's).").tag(config=True)
    airlock_url = Unicode(
        "", help="The airlock as sessions reach it (ENCLAVE_AIRLOCK_URL); empty: none."
    ).tag(config=True)
    display_uid = Int(
        desktop.DISPLAY_UID, help="The desktop gateway's user id (not the notebook user's)."
    ).tag(config=True)
    home_dir = Unicode("/home/enclave", help="The user's home inside the pod.").tag(config=True)
    failure_check_interval = Float(
        0.5, help="Seconds between start()'s checks whether the new pod failed (pod_failure)."
    ).tag(config=True)

    @default("profile_list")
    def _default_profile_list(self) -> Any:
        return profile_list_for

    @default("automount_service_account_token")
    def _default_automount(self) -> bool:
        return False

    @default("allow_privilege_escalation")
    def _default_allow_privilege_escalation(self) -> bool:
        return False

    @default("container_security_context")
    def _default_container_security_context(self) -> dict[str, Any]:
        return container_security(int(self.uid), int(self.gid))

    @default("pod_security_context")
    def _default_pod_security_context(self) -> dict[str, Any]:
        return {
            "runAsNonRoot": True,
            "fsGroup": int(self.fs_gid) if self.fs_gid is not None else int(self.gid),
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    @property
    def group_names(self) -> list[str]:
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    @property
    def session_kind(self) -> AccessMode:
        """This spawn's kind (``user_options["kind"]``, the profile option), else the
        profile's default: researchers a desktop, students a notebook (as on one machine)."""
        options = self.user_options or {}
        chosen = options.get(KIND_OPTION) or next(
            (v for k, v in options.items() if k.endswith(f"--{KIND_OPTION}")), None
        )
        if not chosen:
            try:
                return profiles.profile_for(self.group_names).default_session
            except profiles.NoWorkspace:
                return AccessMode.NOTEBOOK
        try:
            return AccessMode(chosen)
        except ValueError:
            raise DeliveryError(
                f"unknown session kind {chosen!r}: choose desktop or notebook"
            ) from None

    @property
    def is_desktop(self) -> bool:
        return self.session_kind is AccessMode.DESKTOP

    def _delivery(self) -> Delivery:
        if self.delivery is not None:
            found: Delivery = self.delivery
            return found
        if not self.keyholder_url:
            raise DeliveryError("keyholder_url is not set: the hub cannot give pods datasets")
        return KeyholderClient(self.keyholder_url, self.keyholder_token)

    # ---- start, failing fast

    _pod_created = False

    async def _make_create_pod_request(self, pod: Any, request_timeout: float) -> bool:
        created = bool(await super()._make_create_pod_request(pod, request_timeout))
        self._pod_created = self._pod_created or created
        return created

    def pod_failure(self) -> str | None:
        """Why this spawn's pod will not become ready (None: not created yet, or still may)."""
        reflector = self.pod_reflector
        if not self._pod_created or reflector is None:
            return None
        return pod_failure(reflector.pods.get(f"{self.namespace}/{self.pod_name}"), self.events)

    async def _start(self) -> Any:
        """KubeSpawner's start, which fails with :class:`PodFailed` as soon as the pod does."""
        self._pod_created = False
        starting = asyncio.ensure_future(super()._start())
        try:
            while True:
                await asyncio.wait({starting}, timeout=self.failure_check_interval)
                if starting.done():
                    return starting.result()
                why = self.pod_failure()
                if why:
                    break
        except asyncio.CancelledError:
            starting.cancel()
            raise
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting  # whatever it was doing, the failure found is the news
        self.log.error("Spawn of %s failed: %s", self.pod_name, why)
        await self.stop(now=True)
        raise PodFailed(why)

    def datasets_path(self) -> str:
        return f"{self.home_dir}/{DATASETS_VOLUME}"

    async def get_pod_manifest(self) -> Any:
        """The pod, with the loader's ticket issued now for exactly this spawn and this kind;
        a desktop pod gets the gateway container (``enclave.kubernetes.desktop``)."""
        kind = self.session_kind
        issued = await self._delivery().issue(
            self.user.name, self.group_names, kind.value, self.pod_name
        )
        self.granted = list(issued.get("versions", []))
        is_desktop = kind is AccessMode.DESKTOP
        desktop_volumes = desktop.desktop_volumes()
        volumes = {
            k: v
            for k, v in dict(getattr(self, "volumes", None) or {}).items()
            if k not in desktop_volumes
        }
        mounts = {
            k: v
            for k, v in dict(getattr(self, "volume_mounts", None) or {}).items()
            if k not in desktop_volumes
        }
        self.volumes = {
            **volumes,
            DATASETS_VOLUME: {
                "name": DATASETS_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": self.datasets_size},
            },
            TMP_VOLUME: {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}},
            **(desktop_volumes if is_desktop else {}),
        }
        self.volume_mounts = {
            **mounts,
            DATASETS_VOLUME: {
                "name": DATASETS_VOLUME,
                "mountPath": self.datasets_path(),
                "readOnly": True,
            },
            TMP_VOLUME: {"name": TMP_VOLUME, "mountPath": "/tmp"},
            **({desktop.X11_VOLUME: desktop.desktop_mount()} if is_desktop else {}),
        }
        self.init_containers = {
            **dict(getattr(self, "init_containers", None) or {}),
            "datasets": self._loader(str(issued["ticket"])),
        }
        others = [
            c
            for c in list(getattr(self, "extra_containers", None) or [])
            if (c.get("name") if isinstance(c, dict) else getattr(c, "name", None))
            != desktop.GATEWAY_CONTAINER
        ]
        self.extra_containers = [*others, self._gateway()] if is_desktop else others
        self.extra_annotations = {
            **dict(getattr(self, "extra_annotations", None) or {}),
            SESSION_ANNOTATION: kind.value,
            "enclave.example.org/datasets": ", ".join(
                f"{v['name']}@{v['version']}" for v in self.granted
            )
            or "none",
        }
        pod = await super().get_pod_manifest()
        if is_desktop:
            main = pod.spec.containers[0]
            main.args = self.desktop_args()
            main.ports = None  # the gateway's is the pod's only port
            # A gateway that ends is not restarted: the hub sees the server stopped (poll).
            pod.spec.restart_policy = "Never"
        return pod

    def _get_pod_port(self, pod: dict[str, Any]) -> int:
        """KubeSpawner's, for pods in which not every container has ports (a desktop's
        session container has none, and the API leaves the key out)."""
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                if port.get("name") == "notebook-port":
                    return int(port["containerPort"])
        raise KeyError(f"no port 'notebook-port' in pod {pod['metadata']['name']}")

    def _gateway(self) -> dict[str, Any]:
        hub_env = {k: str(v) for k, v in self._full_env().items() if k.startswith(HUB_ENV_PREFIXES)}
        return desktop.gateway_container(
            image=self.image,
            pull_policy=self.image_pull_policy or "IfNotPresent",
            port=int(self.port),
            user_gid=int(self.gid),
            hub_env=hub_env,
            security_context=container_security(self.display_uid, self.display_uid),
        )

    async def poll(self) -> Any:
        """KubeSpawner's, and in a desktop pod a gateway that ended ends the server too."""
        status = await super().poll()
        if status is not None or self.pod_reflector is None:
            return status
        pod = self.pod_reflector.pods.get(f"{self.namespace}/{self.pod_name}") or {}
        for c in (pod.get("status") or {}).get("containerStatuses") or []:
            ended = (c.get("state") or {}).get("terminated")
            if c.get("name") == desktop.GATEWAY_CONTAINER and ended:
                self.log.warning("The desktop gateway of %s ended; stopping", self.pod_name)
                await self.stop(now=True)
                return int(ended.get("exitCode") or 1)
        return None

    granted: list[dict[str, Any]] = []

    def _loader(self, ticket: str) -> dict[str, Any]:
        return {
            "name": "datasets",
            "image": self.image,
            "imagePullPolicy": self.image_pull_policy or "IfNotPresent",
            "command": ["python", "-m", "enclave.kubernetes.loader"],
            # Service links give it the key holder's address without DNS.
            "env": [
                {"name": URL_ENV, "value": self.loader_keyholder_url or self.keyholder_url},
                {"name": TICKET_ENV, "value": ticket},
                {"name": TARGET_ENV, "value": LOADER_TARGET},
            ],
            "volumeMounts": [{"name": DATASETS_VOLUME, "mountPath": LOADER_TARGET}],
            # Its "error: ..." line becomes the status message a failed spawn reports.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            # The tmpfs pages it writes are charged to it until it exits (then to the pod).
            "resources": {
                "limits": {
                    "cpu": "1",
                    "memory": memory_quantity(quantity_bytes(self.datasets_size) + 512 * 2**20),
                },
                "requests": {"cpu": "100m", "memory": "128Mi"},
            },
            "securityContext": container_security(self.loader_uid, int(self.gid)),
        }

    def get_args(self) -> list[str]:
        """The profile's switches and the no-download policy, last so nothing overrides them
        (the same options ``IsolatedSpawner.get_args`` gives a local server). A desktop pod's
        main container runs :meth:`desktop_args` instead."""
        profile = profiles.profile_for(self.group_names)
        args = list(super().get_args())
        args += profile.server_args()
        args += policy.user_state_args(self.home_dir)
        return args + policy.server_policy_args()

    def desktop_args(self) -> list[str]:
        """The desktop container's command: the session, with the options the local spawner
        gives the Jupyter server inside a desktop."""
        profile = profiles.profile_for(self.group_names)
        return desktop.session_args(
            profile,
            [
                *profile.server_args(idle_shutdown=False),
                *policy.user_state_args(self.home_dir),
                *policy.desktop_server_policy_args(),
            ],
        )

    def _full_env(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_env()
        env["HOME"] = self.home_dir
        # The root-owned policy the user image installs (enclave.workspace.policy).
        env["JUPYTER_CONFIG_DIR"] = POLICY_DIR
        env["ENCLAVE_DATASETS"] = self.datasets_path()
        env["ENCLAVE_OUTPUTS"] = f"{self.home_dir}/outputs"
        env["PYTHONNOUSERSITE"] = "1"
        if self.airlock_url:
            env["ENCLAVE_AIRLOCK_URL"] = self.airlock_url
        return env

    def get_env(self) -> dict[str, Any]:
        """The main container's environment; in a desktop pod without the hub's token and
        the rest of ``JUPYTERHUB_*`` (the gateway has them, nothing the user runs does)."""
        env = self._full_env()
        if self.is_desktop:
            env = {k: v for k, v in env.items() if not k.startswith(HUB_ENV_PREFIXES)}
            env.update(desktop.session_env(profiles.profile_for(self.group_names).name))
        return env
