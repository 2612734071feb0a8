"""Run a user's server inside its namespace, as the user, within resource limits.

The command line is a chain of small exec-ing tools, so the process the spawner
holds is the user's process itself (signals reach it directly):

    sh (joins the cgroups) -> nsenter --net -> [prlimit] -> setpriv -> argv

``setpriv`` drops to the user's uid/gid with ``no_new_privs`` and an empty
capability bounding set, so setuid binaries (sudo, ping) gain nothing and the user
has no CAP_NET_ADMIN in the namespace: routes and nftables rules stay as root left
them.

Limits use cgroups v2 where ``/sys/fs/cgroup`` is a writable cgroup2 hierarchy,
cgroups v1 (memory, cpu, pids controllers) where those are writable, and rlimits
otherwise. :func:`limit_backend` says which one is in force; rlimits cannot cap CPU
bandwidth and count processes per uid, not per server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict, Unpack

from enclave.netns import NETNS_DIR, IsolatedNetwork, IsolationError, require_tools

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_GROUP = "enclave"
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "cpu", "pids")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class ResourceLimits:
    """Per-server caps; ``None`` leaves that resource alone.

    ``cpu_max`` is in cores (0.5 = half a core), ``memory_max`` in bytes (no swap),
    ``pids_max`` the number of processes and threads.
    """

    memory_max: int | None = None
    cpu_max: float | None = None
    pids_max: int | None = None

    def __post_init__(self) -> None:
        if self.memory_max is not None and self.memory_max < 4 * 1024 * 1024:
            raise IsolationError(f"memory limit {self.memory_max} bytes is below 4 MiB")
        if self.cpu_max is not None and not 0.01 <= self.cpu_max <= 1024:
            raise IsolationError(f"cpu limit {self.cpu_max} cores is out of range 0.01-1024")
        if self.pids_max is not None and self.pids_max < 1:
            raise IsolationError(f"process limit {self.pids_max} must be at least 1")


# ---------------------------------------------------------------- backend choice


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def limit_backend(root: Path = CGROUP_ROOT) -> str:
    """``"cgroup2"``, ``"cgroup1"`` or ``"rlimit"``: the strongest mechanism usable here."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and _writable_dir(root):
        available = set(controllers.read_text().split())
        if {"memory", "pids", "cpu"} <= available:
            return "cgroup2"
    if all(
        _writable_dir(root / c) and (root / c / "cgroup.procs").exists() for c in V1_CONTROLLERS
    ):
        return "cgroup1"
    return "rlimit"


def _own_v1_path(controller: str) -> str:
    """This process's cgroup in a v1 hierarchy, so user groups nest inside ours."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path.lstrip("/")
    return ""


@dataclass
class AppliedLimits:
    """Limits as put in place for one server; remove them when it stops."""

    backend: str
    limits: ResourceLimits
    cgroup_dirs: tuple[Path, ...] = ()
    prlimit_args: tuple[str, ...] = ()

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return tuple(d / "cgroup.procs" for d in self.cgroup_dirs)

    @property
    def unenforced(self) -> tuple[str, ...]:
        """Limits that were asked for but this backend cannot enforce."""
        if self.backend == "rlimit" and self.limits.cpu_max is not None:
            return ("cpu_max",)
        return ()

    def describe(self) -> str:
        parts = [f"backend {self.backend}"]
        lim = self.limits
        if lim.memory_max is not None:
            parts.append(
                f"memory {lim.memory_max // (1024 * 1024)} MiB"
                + (" (address space)" if self.backend == "rlimit" else "")
            )
        if lim.cpu_max is not None:
            parts.append(
                f"cpu {lim.cpu_max} cores"
                + (" (NOT enforced)" if "cpu_max" in self.unenforced else "")
            )
        if lim.pids_max is not None:
            parts.append(
                f"pids {lim.pids_max}" + (" (per uid)" if self.backend == "rlimit" else "")
            )
        return ", ".join(parts)

    def pids(self) -> list[int]:
        found: list[int] = []
        for f in self.procs_files:
            with contextlib.suppress(OSError):
                found.extend(int(p) for p in f.read_text().split())
        return sorted(set(found))

    def remove(self) -> None:
        """Kill what is left in the cgroups and delete them (idempotent)."""
        for _ in range(100):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        for d in self.cgroup_dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            with contextlib.suppress(OSError):
                d.parent.rmdir()  # the shared "enclave" group, once it is empty


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise IsolationError(f"cannot set {path} to {value!r}: {exc.strerror}") from exc


def apply_limits(
    name: str, limits: ResourceLimits, *, backend: str | None = None, root: Path = CGROUP_ROOT
) -> AppliedLimits:
    """Create the cgroup(s) for one server (nothing is in them yet)."""
    backend = backend or limit_backend(root)
    if "/" in name or name in ("", ".", ".."):
        raise IsolationError(f"cgroup name {name!r} is not a plain name")
    if backend == "cgroup2":
        parent = root / CGROUP_GROUP
        parent.mkdir(exist_ok=True)
        # Controllers must be enabled on every level above the leaf.
        for level in (root, parent):
            with contextlib.suppress(OSError):
                (level / "cgroup.subtree_control").write_text("+memory +cpu +pids")
        leaf = parent / name
        leaf.mkdir(exist_ok=True)
        if limits.memory_max is not None:
            _write(leaf / "memory.max", str(limits.memory_max))
            if (leaf / "memory.swap.max").exists():
                _write(leaf / "memory.swap.max", "0")
        if limits.cpu_max is not None:
            _write(leaf / "cpu.max", f"{int(limits.cpu_max * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        if limits.pids_max is not None:
            _write(leaf / "pids.max", str(limits.pids_max))
        return AppliedLimits(backend, limits, cgroup_dirs=(leaf,))
    if backend == "cgroup1":
        dirs = []
        for controller in V1_CONTROLLERS:
            leaf = root / controller / _own_v1_path(controller) / CGROUP_GROUP / name
            leaf.mkdir(parents=True, exist_ok=True)
            dirs.append(leaf)
            if controller == "memory" and limits.memory_max is not None:
                _write(leaf / "memory.limit_in_bytes", str(limits.memory_max))
                if (leaf / "memory.memsw.limit_in_bytes").exists():
                    _write(leaf / "memory.memsw.limit_in_bytes", str(limits.memory_max))
            if controller == "cpu" and limits.cpu_max is not None:
                _write(leaf / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(leaf / "cpu.cfs_quota_us", str(int(limits.cpu_max * CPU_PERIOD_US)))
            if controller == "pids" and limits.pids_max is not None:
                _write(leaf / "pids.max", str(limits.pids_max))
        return AppliedLimits(backend, limits, cgroup_dirs=tuple(dirs))
    if backend == "rlimit":
        args = []
        if limits.memory_max is not None:
            args.append(f"--as={limits.memory_max}")
        if limits.pids_max is not None:
            args.append(f"--nproc={limits.pids_max}")
        return AppliedLimits(backend, limits, prlimit_args=tuple(args))
    raise IsolationError(f"unknown limit backend {backend!r} (cgroup2, cgroup1 or rlimit)")


# ------------------------------------------------------------------- commands


def _netns_path(ns: IsolatedNetwork | str) -> str:
    if isinstance(ns, IsolatedNetwork):
        return ns.netns_path
    path = ns if "/" in ns else str(NETNS_DIR / ns)
    if not os.path.exists(path):
        raise IsolationError(f"network namespace {ns} does not exist")
    return path


def namespace_command(
    netns_path: str,
    argv: Sequence[str],
    *,
    uid: int,
    gid: int,
    applied: AppliedLimits | None = None,
    tools: Mapping[str, str] | None = None,
) -> list[str]:
    """The exec chain that runs ``argv`` in the namespace as ``uid``/``gid``."""
    if uid == 0 or gid == 0:
        raise IsolationError("refusing to run a user server as root (uid or gid 0)")
    if not argv:
        raise IsolationError("empty command for the user server")
    tools = dict(tools or {})
    try:
        pwd.getpwuid(uid)
        groups = ["--init-groups"]
    except KeyError:
        groups = ["--clear-groups"]
    chain: list[str] = []
    if applied is not None and applied.procs_files:
        join = "; ".join(
            f"echo $$ > {shlex.quote(str(f))} || exit 125" for f in applied.procs_files
        )
        chain += ["/bin/sh", "-c", f'{join}; exec "$@"', "enclave-limits"]
    chain += [tools.get("nsenter", "nsenter"), f"--net={netns_path}", "--"]
    if applied is not None and applied.prlimit_args:
        chain += [tools.get("prlimit", "prlimit"), *applied.prlimit_args, "--"]
    chain += [
        tools.get("setpriv", "setpriv"),
        f"--reuid={uid}",
        f"--regid={gid}",
        *groups,
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        *argv,
    ]
    return chain


class IsolatedProcess(subprocess.Popen):
    """A Popen that also carries the limits it runs under."""

    limits: AppliedLimits | None = None


class PopenOptions(TypedDict, total=False):
    """The :class:`subprocess.Popen` options :func:`popen_in_namespace` passes through
    (the command, environment and working directory are its own parameters)."""

    stdin: int | IO[Any] | None
    stdout: int | IO[Any] | None
    stderr: int | IO[Any] | None
    text: bool
    start_new_session: bool


def popen_in_namespace(
    ns: IsolatedNetwork | str,
    argv: Sequence[str],
    *,
    uid: int,
    gid: int,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    limits: ResourceLimits | AppliedLimits | None = None,
    limits_name: str | None = None,
    **popen_kwargs: Unpack[PopenOptions],
) -> IsolatedProcess:
    """Start ``argv`` inside the namespace as ``uid``/``gid``, within ``limits``.

    ``limits`` may be a :class:`ResourceLimits` (a cgroup named after the namespace,
    or ``limits_name``, is created) or limits already applied. The returned process
    is the user's process itself; call ``proc.limits.remove()`` once it has exited.
    ``env`` is the whole environment: nothing of the hub's own environment (tokens,
    secrets) is inherited; without it the user gets only a default ``PATH``.
    """
    tools = require_tools("nsenter", "setpriv", "prlimit")
    path = _netns_path(ns)
    applied: AppliedLimits | None
    if isinstance(limits, ResourceLimits):
        applied = apply_limits(limits_name or Path(path).name, limits)
    else:
        applied = limits
    command = namespace_command(path, argv, uid=uid, gid=gid, applied=applied, tools=tools)
    try:
        proc = IsolatedProcess(
            command,
            env=dict(env) if env is not None else {"PATH": DEFAULT_PATH},
            cwd=cwd,
            **popen_kwargs,
        )
    except BaseException:
        if isinstance(limits, ResourceLimits) and applied is not None:
            applied.remove()
        raise
    proc.limits = applied
    return proc
