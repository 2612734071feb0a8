"""KubeSpawner ``profile_list`` entries built from the workspace profiles.

The sizes, the GPU switch and the choice of profile by group are
``enclave.workspace.profiles`` (the same ``Profile`` objects and ``profile_for`` the local
spawner uses); this module only says how each becomes a pod: CPU and memory limits, one
``nvidia.com/gpu``, the node selector and tolerations of GPU nodes, an in-memory ``/dev/shm``.
"""

from __future__ import annotations

from typing import Any

from catalog.models import AccessMode
from enclave.kubernetes.settings import KubeSettings
from enclave.workspace.profiles import PROFILES, Profile

GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"


def memory_quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity (whole MiB, so limits read like the settings)."""
    return f"{max(1, size // (1024 * 1024))}Mi"


def spawner_memory(size: int) -> str:
    """Bytes as JupyterHub's ``ByteSpecification`` (``M`` is MiB there); KubeSpawner turns
    it into a byte count in the pod."""
    return f"{max(1, size // (1024 * 1024))}M"


def quantity_bytes(quantity: str) -> int:
    """``16Gi``, ``512Mi``, ``1G`` -> bytes (the suffixes a memory setting uses)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6}
    units |= {"G": 10**9, "T": 10**12}
    for suffix in sorted(units, key=len, reverse=True):
        if quantity.endswith(suffix) and quantity[: -len(suffix)].isdigit():
            return int(quantity[: -len(suffix)]) * units[suffix]
    if quantity.isdigit():
        return int(quantity)
    raise ValueError(f"memory quantity {quantity!r} is not a whole number with Ki/Mi/Gi/Ti")


def pod_overrides(profile: Profile, settings: KubeSettings) -> dict[str, Any]:
    """The KubeSpawner traits one profile sets on its pod."""
    site = f"profiles.{profile.name}"
    gpus = settings.number(f"{site}.gpus") if profile.gpu else 0
    # The in-memory datasets volume counts against the container's memory limit.
    datasets = quantity_bytes(settings.text("users.datasets_memory"))
    shm = settings.text(f"{site}.shm_size")
    overrides: dict[str, Any] = {
        "cpu_limit": profile.cpu_max,
        "cpu_guarantee": min(profile.cpu_max, 0.5),
        "mem_limit": spawner_memory(profile.memory_max + datasets + quantity_bytes(shm)),
        "mem_guarantee": spawner_memory(profile.memory_max // 2),
        "node_selector": dict(settings.get(f"{site}.node_selector")),
        "tolerations": list(settings.get(f"{site}.tolerations")) if gpus else [],
        "extra_resource_limits": {GPU_RESOURCE: str(gpus)} if gpus else {},
        "extra_resource_guarantees": {GPU_RESOURCE: str(gpus)} if gpus else {},
        "image": settings.image("user-gpu" if gpus else "user"),
        "volumes": {
            SHM_VOLUME: {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm}}
        },
        "volume_mounts": {SHM_VOLUME: {"name": SHM_VOLUME, "mountPath": "/dev/shm"}},
        "environment": {
            "ENCLAVE_PROFILE": profile.name,
            # No GPU profile: CUDA sees none even on a GPU node.
            **({} if gpus else {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "none"}),
        },
    }
    return overrides


#: What the spawn page says of each session kind (the same choice as on one machine).
KIND_CHOICES = {
    AccessMode.DESKTOP: (
        "Desktop: a Linux desktop in your browser, with JupyterLab and every dataset granted "
        "to you inside it (only its pixels reach your browser)"
    ),
    AccessMode.NOTEBOOK: (
        "Notebook: JupyterLab in your browser, with only the datasets an admin marked for notebooks"
    ),
}
#: The profile option that carries the session kind (``user_options["kind"]``).
KIND_OPTION = "kind"


def profile_entry(profile: Profile, settings: KubeSettings) -> dict[str, Any]:
    """One ``profile_list`` entry: the profile, its pod, and the session kinds it offers.

    Both kinds of ``catalog.models.AccessMode`` are offered, the profile's
    ``default_session`` selected (researchers: desktop; students: notebook). The choice
    overrides nothing here: ``EnclaveKubeSpawner`` reads it (``session_kind``), asks the key
    holder for that kind's versions and, for a desktop, builds the gateway container."""
    return {
        "display_name": profile.display,
        "slug": profile.name,
        "default": True,
        "kubespawner_override": pod_overrides(profile, settings),
        "profile_options": {
            KIND_OPTION: {
                "display_name": "Session",
                "choices": {
                    kind.value: {
                        "display_name": text,
                        "default": kind is profile.default_session,
                        "kubespawner_override": {},
                    }
                    for kind, text in KIND_CHOICES.items()
                },
            }
        },
    }


def all_entries(settings: KubeSettings) -> dict[str, dict[str, Any]]:
    return {name: profile_entry(p, settings) for name, p in PROFILES.items()}
