"""The enclave's own Kubernetes objects, and the Zero-to-JupyterHub chart's values.

Everything is built as plain dicts from :class:`KubeSettings`, so one place says what the
cluster runs: the namespace (Pod Security ``restricted`` enforced), the catalog and ingestion
Deployments with their Services, the airlock's Deployment, Service and volume, the ingestion
state volume (the encrypted store, never
plaintext), the Alembic upgrade Job and the NetworkPolicies of our pods. Secrets are only
referenced: the operator creates them (docs/kubernetes.md), so no rendered file holds one.
"""

from __future__ import annotations

from typing import Any

from enclave.kubernetes.settings import KubeSettings, KubeSettingsError

Obj = dict[str, Any]

PART_OF = "enclave"
#: The user id the services image runs as (images/services).
SERVICE_UID = 10001
#: Secrets the operator creates (docs/kubernetes.md); z2jh's own is named ``hub``.
KEYHOLDER_TOKEN_SECRET = "enclave-keyholder-token"
HUB_SECRET = "hub"
STATE_DIR = "/var/lib/enclave"
#: z2jh's pod labels (chart 4.x), which our NetworkPolicies select on.
HUB_POD = {"app": "jupyterhub", "component": "hub"}
PROXY_POD = {"app": "jupyterhub", "component": "proxy"}
USER_POD = {"app": "jupyterhub", "component": "singleuser-server"}
EGRESS_RULES = (
    "cloudMetadataServer",
    "dnsPortsCloudMetadataServer",
    "dnsPortsKubeSystemNamespace",
    "dnsPortsPrivateIPs",
    "nonPrivateIPs",
    "privateIPs",
)
EXTRA_CONFIG = (
    "from enclave.kubernetes.hub import configure_kubernetes\n"
    'configure_kubernetes(c, get_config("custom.enclave"))\n'
)


def labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": f"enclave-{component}",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
    }


def _meta(name: str, settings: KubeSettings, component: str) -> Obj:
    return {"name": name, "namespace": settings.namespace, "labels": labels(component)}


def container_security(uid: int = SERVICE_UID, gid: int | None = None) -> Obj:
    """The Pod Security Standards' *restricted* profile, and a read-only root filesystem
    (services' containers and, through ``EnclaveKubeSpawner``, user pods' too)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid if gid is None else gid,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security(uid: int = SERVICE_UID) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _secret_env(name: str, secret: str, key: str) -> Obj:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _db_env(settings: KubeSettings) -> Obj:
    return _secret_env(
        "ENCLAVE_DB_URL",
        settings.text("catalog.database_secret"),
        settings.text("catalog.database_secret_key"),
    )


def _probe(path: str, port: int) -> Obj:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 10, "timeoutSeconds": 5}


def _container(
    settings: KubeSettings,
    name: str,
    command: list[str],
    env: list[Obj],
    ports: list[Obj],
    resources: Obj,
    mounts: list[Obj],
) -> Obj:
    return {
        "name": name,
        "image": settings.image("services"),
        "imagePullPolicy": settings.text("images.pull_policy"),
        "command": command,
        "env": env,
        "ports": ports,
        "resources": resources,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
        "securityContext": container_security(),
    }


def _pod_spec(containers: list[Obj], volumes: list[Obj], **extra: Any) -> Obj:
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security(),
        "containers": containers,
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, *volumes],
        **extra,
    }


def namespace(settings: KubeSettings) -> Obj:
    level = "restricted"
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": settings.namespace,
            "labels": {
                "app.kubernetes.io/part-of": PART_OF,
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/audit": level,
                "pod-security.kubernetes.io/warn": level,
            },
        },
    }


def catalog_objects(settings: KubeSettings) -> list[Obj]:
    port = settings.number("catalog.port")
    name = "enclave-catalog"
    env = [_db_env(settings), *_hub_service_env(settings, "catalog", port)]
    container = _container(
        settings,
        "catalog",
        [
            "python",
            "-m",
            "enclave.workspace.catalog_service",
            "--state-dir",
            "/tmp/enclave",
            "--database-url",
            "$(ENCLAVE_DB_URL)",
        ],
        env,
        [{"name": "http", "containerPort": port}],
        {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        [],
    )
    container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 10}
    container["livenessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 20}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, settings, "catalog"),
        "spec": {
            "replicas": settings.number("catalog.replicas"),
            "selector": {"matchLabels": labels("catalog")},
            "template": {
                "metadata": {"labels": labels("catalog")},
                "spec": _pod_spec([container], []),
            },
        },
    }
    service = _service(settings, name, "catalog", [("http", port)])
    return [deployment, service]


def _service(
    settings: KubeSettings, name: str, component: str, ports: list[tuple[str, int]]
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, settings, component),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(component),
            "ports": [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"} for n, p in ports],
        },
    }


def ingestion_ports(settings: KubeSettings) -> list[tuple[str, int]]:
    from ingestion.service import receiver_ports

    base = settings.number("ingestion.port")
    keyholder = settings.number("ingestion.keyholder_port")
    receivers = receiver_ports(base, settings.number("ingestion.receivers"))
    if keyholder in (base, *receivers):
        raise KubeSettingsError(
            f"ingestion.keyholder_port {keyholder} is one of the ingestion service's ports "
            f"({base} and its receivers' {receivers[0]}-{receivers[-1]}): choose another"
        )
    return [
        ("keyholder", keyholder),
        ("coordinator", base),
        *((f"receiver-{j}", p) for j, p in enumerate(receivers, start=1)),
    ]


def ingestion_objects(settings: KubeSettings) -> list[Obj]:
    """The key holder, which runs the ingestion service once custodians have unsealed it."""
    name = "enclave-ingestion"
    keyholder = settings.number("ingestion.keyholder_port")
    ports = ingestion_ports(settings)
    command = [
        "python", "-m", "enclave.kubernetes.keyholder",
        "--state-dir", STATE_DIR, "--port", str(keyholder),
        "--then",
        "python", "-m", "enclave", "ingest", "serve", "--state-dir", STATE_DIR,
        "--db-url", "$(ENCLAVE_DB_URL)", "--host", "0.0.0.0",
        "--port", str(settings.number("ingestion.port")),
        "--receivers", str(settings.number("ingestion.receivers")),
    ]  # fmt: skip
    container = _container(
        settings,
        "ingestion",
        command,
        [
            _db_env(settings),
            _secret_env("ENCLAVE_KEYHOLDER_TOKEN", KEYHOLDER_TOKEN_SECRET, "token"),
        ],
        [{"name": n[:15], "containerPort": p} for n, p in ports],
        {
            "requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
        [{"name": "state", "mountPath": STATE_DIR}],
    )
    container["livenessProbe"] = _probe("/healthz", keyholder)
    container["readinessProbe"] = _probe("/healthz", keyholder)
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta("enclave-state", settings, "ingestion"),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": settings.text("ingestion.store_size")}},
            **(
                {"storageClassName": settings.text("ingestion.storage_class")}
                if settings.text("ingestion.storage_class")
                else {}
            ),
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, settings, "ingestion"),
        "spec": {
            # One writer of the store and one unsealed key: never two at once.
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels("ingestion")},
            "template": {
                "metadata": {"labels": labels("ingestion")},
                "spec": _pod_spec(
                    [container],
                    [{"name": "state", "persistentVolumeClaim": {"claimName": "enclave-state"}}],
                ),
            },
        },
    }
    return [claim, deployment, _service(settings, name, "ingestion", ports)]


AIRLOCK_DIR = "/var/lib/enclave-airlock"
#: z2jh's public proxy port (its pods' ``http`` port), which user pods reach the airlock by.
PROXY_HTTP_PORT = 8000


def _hub_service_env(settings: KubeSettings, name: str, port: int) -> list[Obj]:
    """What a hub service's process reads (as the hub gives it to services it runs itself)."""
    hub_api = f"http://hub.{settings.namespace}.svc.cluster.local:8081/hub/api"
    return [
        _secret_env("JUPYTERHUB_API_TOKEN", HUB_SECRET, f"hub.services.{name}.apiToken"),
        {"name": "JUPYTERHUB_API_URL", "value": hub_api},
        {"name": "JUPYTERHUB_CLIENT_ID", "value": f"service-{name}"},
        {"name": "JUPYTERHUB_SERVICE_NAME", "value": name},
        {"name": "JUPYTERHUB_SERVICE_PREFIX", "value": f"/services/{name}/"},
        {"name": "JUPYTERHUB_SERVICE_URL", "value": f"http://0.0.0.0:{port}"},
        {"name": "JUPYTERHUB_BASE_URL", "value": "/"},
        {"name": "JUPYTERHUB_OAUTH_CALLBACK_URL", "value": f"/services/{name}/oauth_callback"},
        {"name": "JUPYTERHUB_PUBLIC_HUB_URL", "value": f"https://{settings.text('hub.host')}/"},
    ]


def airlock_objects(settings: KubeSettings) -> list[Obj]:
    """The airlock (``enclave.kubernetes.airlock``): a Deployment the hub knows as the service
    ``airlock`` (``hub.services`` in the chart's values), its Service, and its own volume.

    The volume (``enclave-airlock``) holds only the airlock's folder: staged copies of request
    files (``airlock/requests/ID/ROUND``), built releases (``airlock/releases/ID``) and the
    site signing key (``audit/``, made on first use, mode 0600). It is mounted by this pod
    alone (ReadWriteOnce, one replica), as uid 10001, with no other pod given it; people see
    its files only through the service's pages and API, by their scopes."""
    from enclave.airlock.scopes import SERVICE_NAME

    port = settings.number("airlock.port")
    name = "enclave-airlock"
    container = _container(
        settings,
        "airlock",
        [
            "python",
            "-m",
            "enclave.kubernetes.airlock",
            "--state-dir",
            AIRLOCK_DIR,
            "--database-url",
            "$(ENCLAVE_DB_URL)",
            "--port",
            str(port),
            "--site",
            f"https://{settings.text('hub.host')}/",
        ],  # fmt: skip
        [_db_env(settings), *_hub_service_env(settings, SERVICE_NAME, port)],
        [{"name": "http", "containerPort": port}],
        {
            "requests": {"cpu": "200m", "memory": "512Mi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        },
        [{"name": "airlock", "mountPath": AIRLOCK_DIR}],
    )
    container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 10}
    container["livenessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 20}
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta("enclave-airlock", settings, "airlock"),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": settings.text("airlock.store_size")}},
            **(
                {"storageClassName": settings.text("airlock.storage_class")}
                if settings.text("airlock.storage_class")
                else {}
            ),
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, settings, "airlock"),
        "spec": {
            # One writer of the ledger's files and one signing key.
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels("airlock")},
            "template": {
                "metadata": {"labels": labels("airlock")},
                "spec": _pod_spec(
                    [container],
                    [
                        {
                            "name": "airlock",
                            "persistentVolumeClaim": {"claimName": "enclave-airlock"},
                        }
                    ],
                ),
            },
        },
    }
    return [claim, deployment, _service(settings, name, "airlock", [("http", port)])]


def airlock_hub_service(settings: KubeSettings) -> Obj:
    """The airlock as a ``hub.services`` entry: the embedded hub's, with the in-cluster URL
    (``enclave.workspace.hub.airlock_service`` gives the fields both share)."""
    from enclave.workspace.hub import airlock_service_fields

    return {"url": settings.airlock_url, **airlock_service_fields()}


def migration_job(settings: KubeSettings) -> Obj:
    container = _container(
        settings,
        "migrate",
        ["python", "-m", "enclave", "k8s", "migrate", "--database-url", "$(ENCLAVE_DB_URL)"],
        [_db_env(settings)],
        [],
        {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        },
        [],
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(
            f"enclave-migrate-{settings.text('images.tag').replace('.', '-')}", settings, "migrate"
        ),
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels("migrate")},
                "spec": _pod_spec([container], [], restartPolicy="Never"),
            },
        },
    }


def _peer(pod_labels: dict[str, str]) -> Obj:
    return {"podSelector": {"matchLabels": dict(pod_labels)}}


def _dns() -> Obj:
    return {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    }


def _postgres() -> Obj:
    """PostgreSQL: pods of a CloudNativePG cluster in any namespace (docs/kubernetes.md)."""
    return {
        "to": [
            {
                "namespaceSelector": {},
                "podSelector": {
                    "matchExpressions": [{"key": "cnpg.io/cluster", "operator": "Exists"}]
                },
            }
        ],
        "ports": [{"port": 5432, "protocol": "TCP"}],
    }


def network_policies(settings: KubeSettings) -> list[Obj]:
    def policy(component: str, ingress: list[Obj], egress: list[Obj]) -> Obj:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(f"enclave-{component}", settings, component),
            "spec": {
                "podSelector": {"matchLabels": labels(component)},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": ingress,
                "egress": egress,
            },
        }

    catalog_port = settings.number("catalog.port")
    keyholder = settings.number("ingestion.keyholder_port")
    upload_ports = [
        {"port": p, "protocol": "TCP"} for n, p in ingestion_ports(settings) if n != "keyholder"
    ]
    providers: list[Obj] = [
        {"ipBlock": {"cidr": cidr}} for cidr in settings.get("ingestion.provider_cidrs") or []
    ]
    hub_api = {"to": [_peer(HUB_POD)], "ports": [{"port": 8081, "protocol": "TCP"}]}
    return [
        # Everything in the namespace that no other policy lets in or out: nothing.
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta("enclave-default-deny", settings, "policy"),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        policy(
            "catalog",
            [
                {
                    "from": [_peer(HUB_POD), _peer(PROXY_POD)],
                    "ports": [{"port": catalog_port, "protocol": "TCP"}],
                }
            ],
            [_postgres(), _dns(), hub_api],
        ),
        policy(
            "ingestion",
            [
                # The hub asks for tickets; user pods' loaders redeem them.
                {
                    "from": [_peer(HUB_POD), _peer(USER_POD)],
                    "ports": [{"port": keyholder, "protocol": "TCP"}],
                },
                # Providers upload shares (through the ingress controller, or from CIDRs).
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                            }
                        },
                        *providers,
                    ],
                    "ports": upload_ports,
                },
            ],
            [_postgres(), _dns()],
        ),
        policy("migrate", [], [_postgres(), _dns()]),
        # The airlock: reached through the proxy (and by the hub's health check), never from a
        # user pod directly; it asks the hub about tokens and writes the ledger.
        policy(
            "airlock",
            [
                {
                    "from": [_peer(HUB_POD), _peer(PROXY_POD)],
                    "ports": [{"port": settings.number("airlock.port"), "protocol": "TCP"}],
                }
            ],
            [_postgres(), _dns(), hub_api],
        ),
    ]


def enclave_objects(settings: KubeSettings) -> list[Obj]:
    return [
        namespace(settings),
        *catalog_objects(settings),
        *ingestion_objects(settings),
        *airlock_objects(settings),
        migration_job(settings),
        *network_policies(settings),
    ]


def _hardened(uid: int) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def chart_values(settings: KubeSettings) -> Obj:
    """Values for the Zero-to-JupyterHub chart (``chart.version``)."""
    ns = settings.namespace
    registry, tag = settings.text("images.registry").rstrip("/"), settings.text("images.tag")
    keyholder = settings.number("ingestion.keyholder_port")
    host = settings.text("hub.host")
    return {
        "hub": {
            "image": {"name": f"{registry}/enclave-hub", "tag": tag},
            "db": {"type": "sqlite-pvc"},
            "containerSecurityContext": _hardened(1000),
            "podSecurityContext": {"fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "extraEnv": {
                "ENCLAVE_KEYHOLDER_TOKEN": {
                    "valueFrom": {"secretKeyRef": {"name": KEYHOLDER_TOKEN_SECRET, "key": "token"}}
                },
                "ENCLAVE_DB_URL": {
                    "valueFrom": {
                        "secretKeyRef": {
                            "name": settings.text("catalog.database_secret"),
                            "key": settings.text("catalog.database_secret_key"),
                        }
                    }
                },
            },
            "extraConfig": {"enclave.py": EXTRA_CONFIG},
            # The chart keeps each service's token in its `hub` Secret.
            "services": {
                "catalog": {
                    "url": settings.catalog_url,
                    "oauth_no_confirm": True,
                    "display": True,
                    "info": {
                        "description": "Datasets granted to you, with their validation summaries"
                    },
                },
                "airlock": airlock_hub_service(settings),
                "enclave-admin": {},
            },
            "networkPolicy": {
                "enabled": True,
                # The hub reaches the catalog, the key holder, PostgreSQL (audit) and the
                # Kubernetes API (to start pods); nothing else.
                "egressAllowRules": {
                    rule: rule == "dnsPortsKubeSystemNamespace" for rule in EGRESS_RULES
                },
                "egress": [
                    {
                        "to": [
                            _peer(labels("catalog")),
                            _peer(labels("ingestion")),
                            _peer(labels("airlock")),
                        ],
                        "ports": [
                            {"port": settings.number("catalog.port"), "protocol": "TCP"},
                            {"port": keyholder, "protocol": "TCP"},
                            {"port": settings.number("airlock.port"), "protocol": "TCP"},
                        ],
                    },
                    _postgres(),
                    {
                        "ports": [
                            {"port": 443, "protocol": "TCP"},
                            {"port": 6443, "protocol": "TCP"},
                        ]
                    },
                ],
            },
        },
        "proxy": {
            "service": {"type": "ClusterIP"},
            "https": {"enabled": False},  # TLS ends at the ingress (ingress.tls)
            "chp": {
                "containerSecurityContext": _hardened(65534),
                "networkPolicy": {
                    "enabled": True,
                    "egressAllowRules": {rule: False for rule in EGRESS_RULES},
                    "egress": [
                        {
                            "to": [_peer(labels("catalog"))],
                            "ports": [{"port": settings.number("catalog.port"), "protocol": "TCP"}],
                        },
                        {
                            "to": [_peer(labels("airlock"))],
                            "ports": [{"port": settings.number("airlock.port"), "protocol": "TCP"}],
                        },
                    ],
                },
            },
        },
        "ingress": {
            "enabled": True,
            "ingressClassName": settings.text("hub.ingress_class"),
            "hosts": [host],
            "tls": [{"hosts": [host], "secretName": settings.text("hub.tls_secret")}],
        },
        "singleuser": {
            "image": {"name": f"{registry}/enclave-user", "tag": tag},
            "uid": settings.number("users.uid"),
            "fsGid": settings.number("users.gid"),
            "defaultUrl": "/lab",
            "cmd": None,
            "storage": {
                "type": "dynamic",
                "capacity": settings.text("users.home_size"),
                "homeMountPath": "/home/enclave",
                "dynamic": {
                    "storageClass": settings.text("users.storage_class") or None,
                },
            },
            # Blocking the metadata server with iptables needs a privileged init container;
            # the network policy below already denies it (cloudMetadataServer: false).
            "cloudMetadata": {"blockWithIptables": False},
            "networkPolicy": {
                "enabled": True,
                # No DNS, no private or public addresses, no cloud metadata: user pods reach
                # the hub (the chart's own rule), the key holder's port, and the proxy's
                # public port, through which `enclave airlock submit` reaches the airlock
                # (/services/airlock/, with the session's token); never the airlock itself.
                "egressAllowRules": {rule: False for rule in EGRESS_RULES},
                "egress": [
                    {
                        "to": [_peer(labels("ingestion"))],
                        "ports": [{"port": keyholder, "protocol": "TCP"}],
                    },
                    {
                        "to": [_peer(PROXY_POD)],
                        "ports": [{"port": PROXY_HTTP_PORT, "protocol": "TCP"}],
                    },
                ],
                "ingress": [],
            },
            "profileList": [],  # the enclave's spawner chooses by group (enclave.kubernetes)
        },
        "scheduling": {
            "userScheduler": {"enabled": False},
            "userPlaceholder": {"enabled": False},
        },
        "prePuller": {"hook": {"enabled": False}, "continuous": {"enabled": False}},
        "cull": {
            "enabled": True,
            "timeout": settings.number("hub.idle_timeout_seconds"),
            "every": 300,
        },
        "debug": {"enabled": False},
        "custom": {"enclave": settings.raw | {"namespace": ns}},
    }
