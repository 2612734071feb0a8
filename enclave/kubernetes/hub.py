"""What the chart's ``hub.extraConfig`` runs: the enclave's hub on a cluster.

The rendered values hold two lines of ``extraConfig``::

    from enclave.kubernetes.hub import configure_kubernetes
    configure_kubernetes(c, get_config("custom.enclave"))

and this module wires the *same* pieces the embedded hub uses (``enclave.workspace.hub``): the
authenticator (``EnclaveAuthenticator``: local accounts, TOTP, audited logins), the custom
scopes and roles (``custom_scopes``, ``load_roles``), the role groups (``PEOPLE_GROUPS``) and
the profiles (``enclave.workspace.profiles``), with ``EnclaveKubeSpawner`` in place of the
local ``IsolatedSpawner``. The chart itself defines the services (catalog and airlock, their
tokens kept in its ``hub`` Secret), the proxy, the idle culler and the network policies.
"""

from __future__ import annotations

import os
from typing import Any

from enclave.errors import EnclaveError
from enclave.kubernetes.profiles import all_entries
from enclave.kubernetes.settings import KubeSettings

#: The hub's environment (from Secrets, see manifests.hub_extra_env).
KEYHOLDER_TOKEN_ENV = "ENCLAVE_KEYHOLDER_TOKEN"
DB_URL_ENV = "ENCLAVE_DB_URL"
#: Where ``enclave airlock`` in a user pod finds the airlock: the proxy's public Service, by
#: the cluster IP and port the kubelet expands from service links (z2jh's ``proxy-public``).
AIRLOCK_URL_IN_PODS = (
    "http://$(PROXY_PUBLIC_SERVICE_HOST):$(PROXY_PUBLIC_SERVICE_PORT)/services/airlock/"
)
#: The z2jh culler's service is its own; the embedded hub's ``idle-culler`` role is not used.
EMBEDDED_ONLY_ROLES = frozenset({"idle-culler"})


def roles() -> list[dict[str, Any]]:
    """The embedded hub's roles, less those of services the chart runs its own way."""
    from enclave.workspace.hub import load_roles

    return [r for r in load_roles(None) if r["name"] not in EMBEDDED_ONLY_ROLES]


def configure_kubernetes(c: Any, raw_settings: dict[str, Any] | None) -> None:
    """Fill the hub's config (``c``) from the settings the chart carries in ``custom.enclave``."""
    from enclave.workspace.hub import custom_scopes
    from enclave.workspace.profiles import PEOPLE_GROUPS

    if not raw_settings:
        raise EnclaveError("custom.enclave is empty in the chart values: render them again")
    settings = KubeSettings.from_mapping(raw_settings, "custom.enclave")

    c.JupyterHub.authenticator_class = "enclave.workspace.auth.EnclaveAuthenticator"
    c.Authenticator.allow_all = True  # only accounts an admin authorized can log in
    c.NativeAuthenticator.allow_2fa = True
    c.NativeAuthenticator.enable_signup = False
    c.NativeAuthenticator.minimum_password_length = 10
    c.NativeAuthenticator.check_common_password = True
    c.NativeAuthenticator.allowed_failed_logins = 5
    c.NativeAuthenticator.seconds_before_next_try = 300
    c.EnclaveAuthenticator.audit_url = os.environ.get(DB_URL_ENV, "")

    c.JupyterHub.custom_scopes = custom_scopes()
    c.JupyterHub.load_groups = {name: {"users": []} for name in PEOPLE_GROUPS.values()}
    # The chart's own roles (its culler's) stay; ours are added.
    existing = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    ours = roles()
    names = {r["name"] for r in ours}
    c.JupyterHub.load_roles = [r for r in existing if r["name"] not in names] + ours

    # User pods have no DNS (every egress rule off): they reach the hub by its Service's
    # cluster IP, which Kubernetes gives the hub pod in its environment.
    hub_host, hub_port = os.environ.get("HUB_SERVICE_HOST"), os.environ.get("HUB_SERVICE_PORT")
    if hub_host and hub_port:
        c.JupyterHub.hub_connect_url = f"http://{hub_host}:{hub_port}"

    configure_spawner(c, settings, keyholder_token=os.environ.get(KEYHOLDER_TOKEN_ENV, ""))


def configure_spawner(c: Any, settings: KubeSettings, *, keyholder_token: str) -> None:
    """The spawner's part (also what ``enclave k8s render`` builds pods with)."""
    from enclave.workspace.hub import session_token_scopes

    c.JupyterHub.spawner_class = "enclave.kubernetes.spawner.EnclaveKubeSpawner"
    c.EnclaveKubeSpawner.profile_entries = all_entries(settings)
    c.EnclaveKubeSpawner.keyholder_url = settings.keyholder_url
    # The loader has no DNS either: the key holder's cluster IP, from the pod's service links.
    c.EnclaveKubeSpawner.loader_keyholder_url = (
        f"http://$(ENCLAVE_INGESTION_SERVICE_HOST):{settings.number('ingestion.keyholder_port')}"
    )
    c.EnclaveKubeSpawner.keyholder_token = keyholder_token
    c.EnclaveKubeSpawner.datasets_size = settings.text("users.datasets_memory")
    c.EnclaveKubeSpawner.uid = settings.number("users.uid")
    c.EnclaveKubeSpawner.gid = settings.number("users.gid")
    c.EnclaveKubeSpawner.fs_gid = settings.number("users.gid")
    c.EnclaveKubeSpawner.home_dir = "/home/enclave"
    c.EnclaveKubeSpawner.default_url = "/lab"
    c.EnclaveKubeSpawner.cmd = ["python", "-m", "enclave.workspace.singleuser"]
    c.EnclaveKubeSpawner.image_pull_policy = settings.text("images.pull_policy")
    c.EnclaveKubeSpawner.events_enabled = True
    # A session's own token: activity, its own server, and the airlock (as on one machine).
    c.EnclaveKubeSpawner.server_token_scopes = session_token_scopes()
    # No DNS in user pods: the proxy's public Service by the cluster IP its service links give;
    # the proxy routes /services/airlock/ to the airlock (the pods have no route to it).
    c.EnclaveKubeSpawner.airlock_url = AIRLOCK_URL_IN_PODS
