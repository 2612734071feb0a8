"""Server profiles chosen by JupyterHub group: what a researcher or a student gets.

A profile is enforced, not only declared: the spawner turns it into cgroup (or rlimit) limits
for the server's process tree, a ``CUDA_VISIBLE_DEVICES`` value, the terminal switch and the
server's own idle shutdown, all on the command line or in the environment the hub controls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from catalog.models import AccessMode
from enclave.airlock.scopes import REVIEWERS_GROUP
from enclave.errors import EnclaveError

if TYPE_CHECKING:
    from catalog.auth import Role

MiB = 1024 * 1024
GiB = 1024 * MiB

# JupyterHub groups that carry a role, most privileged first.
ROLE_GROUPS: dict[str, Role] = {
    "admins": "admin",
    "providers": "provider",
    "researchers": "researcher",
    "students": "student",
}
ROLE_TO_GROUP = {role: group for group, role in ROLE_GROUPS.items()}
#: What `enclave users add --role` offers: the catalog roles, and reviewers (of the airlock),
#: who have no catalog role of their own.
PEOPLE_GROUPS: dict[str, str] = {str(role): group for role, group in ROLE_TO_GROUP.items()}
PEOPLE_GROUPS["reviewer"] = REVIEWERS_GROUP


class NoWorkspace(EnclaveError):
    """This person's role has no notebook server (data providers only send data)."""


@dataclass(frozen=True)
class Profile:
    """Limits and switches for one kind of user server."""

    name: str
    display: str
    memory_max: int
    cpu_max: float
    pids_max: int
    gpu: bool
    terminals: bool
    # The server shuts itself down after this long without activity (0 = leave it to the
    # hub's idle culler); idle kernels are culled after ``kernel_idle_seconds``.
    idle_shutdown_seconds: int
    kernel_idle_seconds: int
    # The session a spawn gets unless the person picks the other kind on the spawn form.
    default_session: AccessMode = AccessMode.NOTEBOOK

    def server_args(self, *, idle_shutdown: bool = True) -> list[str]:
        """Jupyter Server options that carry the profile (command line beats user config).

        ``idle_shutdown=False`` for the Jupyter server inside a desktop: a person working in
        the desktop's terminal is not idle, and the hub's idle culler judges the desktop."""
        args = [
            f"--ServerApp.terminals_enabled={self.terminals}",
            f"--MappingKernelManager.cull_idle_timeout={self.kernel_idle_seconds}",
            "--MappingKernelManager.cull_interval=60",
        ]
        if self.idle_shutdown_seconds and idle_shutdown:
            args.append(f"--ServerApp.shutdown_no_activity_timeout={self.idle_shutdown_seconds}")
        return args


RESEARCHER = Profile(
    name="researcher",
    display="Researcher: more memory, the GPU when the machine has one",
    memory_max=8 * GiB,
    cpu_max=2.0,
    pids_max=1024,
    gpu=True,
    terminals=True,
    idle_shutdown_seconds=0,
    kernel_idle_seconds=4 * 3600,
    default_session=AccessMode.DESKTOP,
)

STUDENT = Profile(
    name="student",
    display="Student sandbox: CPU only, capped memory and CPU, culled sooner when idle",
    memory_max=2 * GiB,
    cpu_max=1.0,
    pids_max=256,
    gpu=False,
    terminals=False,
    idle_shutdown_seconds=30 * 60,
    kernel_idle_seconds=20 * 60,
    default_session=AccessMode.NOTEBOOK,
)

PROFILES = {p.name: p for p in (RESEARCHER, STUDENT)}


def role_of(groups: Iterable[str]) -> Role | None:
    """The most privileged role among a user's hub groups, or None."""
    names = set(groups)
    for group, role in ROLE_GROUPS.items():
        if group in names:
            return role
    return None


def profile_for(groups: Iterable[str], profiles: dict[str, Profile] | None = None) -> Profile:
    """Researchers and admins get the researcher profile, students the sandbox.

    Anyone else (no role group) gets the sandbox: the safe default. Providers are refused.
    """
    profiles = profiles or PROFILES
    role = role_of(groups)
    if role == "provider":
        raise NoWorkspace(
            "data providers have no notebook server: they send datasets with `enclave share send`"
        )
    if role in ("admin", "researcher"):
        return profiles["researcher"]
    return profiles["student"]


def scaled(
    profile: Profile, *, memory_max: int | None = None, cpu_max: float | None = None
) -> Profile:
    """A copy with other limits (a site's own sizes, from the hub config)."""
    return replace(
        profile,
        memory_max=memory_max if memory_max is not None else profile.memory_max,
        cpu_max=cpu_max if cpu_max is not None else profile.cpu_max,
    )


def visible_gpus() -> list[str]:
    """GPU indices on this machine (``nvidia-smi -L``), or an empty list."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def gpu_environment(profile: Profile, gpus: list[str] | None = None) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` for the profile: the machine's GPUs, or none at all.

    An empty value hides every GPU from CUDA (torch, MONAI), so the student sandbox is CPU only.
    """
    gpus = visible_gpus() if gpus is None else gpus
    if profile.gpu and gpus:
        return {"CUDA_VISIBLE_DEVICES": ",".join(gpus), "NVIDIA_VISIBLE_DEVICES": ",".join(gpus)}
    return {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "none"}


def cpu_count() -> int:
    return os.cpu_count() or 1
