"""``IsolatedSpawner``: each user server as its own Unix user, in its own network namespace.

What one spawn does, in order (all of it as root, in the hub, outside the user's reach):

1. choose the profile from the user's hub groups (researcher, student sandbox; providers have
   no server);
2. make sure the user's Unix account and home exist (``enclave-<name>``, home mode 0700);
3. rebuild ``~/datasets`` from the catalog's current grants: each version served by its
   decrypting mount (``enclave.datafs``, started on first use), bind-mounted read-only
   (revoked and expired grants are gone);
4. create the user's network namespace (``enclave.netns``): a veth pair, no default route, and
   nftables rules on the host and inside that let it reach the hub API and nothing else;
5. start ``python -m enclave.workspace.singleuser`` inside it as the user, with no capabilities,
   in a cgroup (or rlimits) sized by the profile, the no-download authorizer on the command line
   and ``JUPYTER_CONFIG_DIR`` pointing at root-owned policy: forked from the pre-imported
   zygote (``enclave.workspace.zygote``) when it is ready, else through the exec chain of
   ``enclave.isolation``; both leave the process in the same state;
6. return once the server answers HTTP, so the hub sees it ready at once.

Each spawn is a session of one kind (``catalog.models.AccessMode``), chosen on the spawn form
or by ``user_options["kind"]``, by default from the profile (researchers: desktop; students:
notebook). A *notebook* session is the above, with only versions granted in ``notebook`` mode
mounted. A *desktop* session mounts every granted version and, at step 5, starts two processes
in the same cgroup and namespace: the gateway (``enclave.desktop.gateway``, the only thing the
hub reaches: the desktop page and its pixels) as the user's display account, which the user
cannot signal, and the desktop itself (``enclave.desktop.session``: window manager, a Jupyter
server on the namespace's loopback, Chromium) as the user, without the hub's token.

Stopping undoes 5 to 3 (the account and home stay: they hold the user's work).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Instance, Int, Unicode, Union, default

from catalog.models import AccessMode
from enclave.desktop.layout import DesktopPaths, prepare_runtime, remove_runtime
from enclave.workspace import access_log, accounts, grants, policy, profiles
from enclave.workspace.datasets import DatasetMounter, MountedDataset
from enclave.workspace.profiles import Profile

_SHARED: dict[tuple[str, Any], Any] = {}
_SHARED_LOCK = threading.Lock()
# The unsealed master key, handed over by the hub config; never part of traitlets config.
_MASTER_KEY: list[Any] = [None]


def set_master_key(key: Any) -> None:
    """Give the spawner the unsealed master key (kept in the hub's memory only)."""
    _MASTER_KEY[0] = key


def _shared(kind: str, key: Any, factory: Callable[[], Any]) -> Any:
    with _SHARED_LOCK:
        if (kind, key) not in _SHARED:
            _SHARED[(kind, key)] = factory()
        return _SHARED[(kind, key)]


def start_zygote(python: str) -> Any:
    """The zygote for servers run by ``python``, started (in the background) on first call.

    The hub config calls this at start-up so the zygote has finished importing by the first
    spawn; a zygote that has died is started again.
    """
    from enclave.workspace.zygote import ZygoteClient

    client: ZygoteClient = _shared("zygote", python, lambda: ZygoteClient(python))
    client.start()
    return client


def prewarm_zygote(config: Any) -> None:
    """From the hub config: start the zygote now, so it is ready by the first spawn."""
    spawner = config.IsolatedSpawner
    if config.JupyterHub.get("spawner_class") != "enclave.spawner.IsolatedSpawner":
        return
    if spawner.get("use_zygote", True) and spawner.get("cmd"):
        start_zygote(spawner.cmd[0])


def _catalog_grants(catalog_url: str) -> Callable[[Any], list[Any]]:
    def grants(principal: Any) -> list[Any]:
        from catalog.service import Catalog, open_catalog

        catalog: Catalog = _shared("catalog", catalog_url, lambda: open_catalog(catalog_url))
        return catalog.visible_versions(principal)

    return grants


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a session: what to run, as whom, with what environment, where."""

    argv: list[str]
    uid: int
    gid: int
    env: dict[str, str]
    cwd: str


def check_session_options(spawner: IsolatedSpawner, options: dict) -> None:
    """JupyterHub's ``apply_user_options`` hook: a spawn's options (from the form, the query or
    the REST API's body) may name a session kind and nothing else; anything wrong is a 400."""
    unknown = sorted(set(options) - {"kind"})
    if unknown:
        raise ValueError(f"unknown spawn option(s) {', '.join(unknown)}; only 'kind' is taken")
    kind = options.get("kind")
    if kind not in (None, "", *(k.value for k in AccessMode)):
        raise ValueError(f"unknown session kind {kind!r}: choose desktop or notebook")


def session_form(spawner: IsolatedSpawner) -> str:
    """The spawn page's choice of session, the profile's default selected."""
    default = spawner.default_session()
    choices = (
        (
            AccessMode.DESKTOP,
            "Desktop",
            "A Linux desktop in your browser, with JupyterLab and your datasets inside it. "
            "Only its image reaches your browser: every dataset granted to you is here.",
        ),
        (
            AccessMode.NOTEBOOK,
            "Notebook",
            "JupyterLab directly in your browser. Only datasets an admin marked for notebooks "
            "are mounted, because a browser that shows a notebook can keep what it shows.",
        ),
    )
    rows = "".join(
        f'<div class="radio"><label><input type="radio" name="kind" value="{kind.value}"'
        f"{' checked' if kind is default else ''}> <strong>{title}</strong>: {text}</label></div>"
        for kind, title, text in choices
    )
    return f"<fieldset><legend>Session</legend>{rows}</fieldset>"


class IsolatedSpawner(LocalProcessSpawner):
    """A ``LocalProcessSpawner`` whose servers are isolated, limited and given their datasets."""

    netns_config = AnyTrait(
        None,
        allow_none=True,
        help="enclave.netns.NetnsConfig shared with the hub (service address and ports).",
    ).tag(config=True)
    home_root = Unicode("/home", help="Where workspace homes live.").tag(config=True)
    unix_prefix = Unicode(accounts.UNIX_PREFIX, help="Prefix of workspace Unix user names.").tag(
        config=True
    )
    plaintext_root = Unicode(
        "/run/enclave/plaintext",
        help="Where the versions' decrypting mounts live (root only, mode 0700).",
    ).tag(config=True)
    policy_dir = Unicode(
        help="Root-owned Jupyter config directory every server runs with (JUPYTER_CONFIG_DIR)."
    ).tag(config=True)
    catalog_url = Unicode("", help="Catalog database URL; empty: no datasets are mounted.").tag(
        config=True
    )
    airlock_url = Unicode(
        "", help="The airlock service as sessions reach it (ENCLAVE_AIRLOCK_URL); empty: none."
    ).tag(config=True)
    grants_source = AnyTrait(
        None,
        allow_none=True,
        help="Callable(Principal) -> mountable versions; defaults to the catalog at catalog_url.",
    ).tag(config=True)
    profiles = Dict(help="Profile name -> enclave.workspace.profiles.Profile.").tag(config=True)
    proc = Union(
        [Instance(subprocess.Popen), Instance("enclave.workspace.zygote.ZygoteProcess")],
        allow_none=True,
        help="The server process: exec'd (Popen) or forked by the zygote.",
    )
    server_log_dir = Unicode(
        "",
        help="""Root-only folder where each user's server writes its output, as USER.log (appended).

        Keeps what a user's code prints out of the hub's own log, where it could pose as hub
        lines, and gives an admin one place to see why a server failed. Empty: servers write to
        the hub's output, as JupyterHub's LocalProcessSpawner does.""",
    ).tag(config=True)
    use_zygote = Bool(
        True,
        help="""Fork servers from a pre-imported zygote (enclave.workspace.zygote) when it is ready.

        Saves each spawn the CPU of the server's imports. Off, or while the zygote is not
        ready, servers start through the exec chain (nsenter, setpriv) as before.""",
    ).tag(config=True)
    zygote_wait = Float(
        10.0, help="Seconds a spawn waits for a zygote that is still importing before using exec."
    ).tag(config=True)
    desktop_policy_dir = Unicode(
        "/etc/enclave/desktop",
        help="Root-owned desktop policy (panel, window manager), one folder per profile.",
    ).tag(config=True)
    desktop_runtime_root = Unicode(
        "/run/enclave/desktops", help="Where each desktop session's runtime folder lives."
    ).tag(config=True)
    desktop_lab_port = Int(
        8889, help="Port of the Jupyter server inside a desktop (namespace loopback only)."
    ).tag(config=True)
    ready_poll_interval = Float(
        0.05,
        help="""Seconds between start()'s checks that the new server answers HTTP.

        start() returns once the server answers, so the hub's own wait (exponential backoff with
        random waits of up to 0.2, 0.4, ... 5 s) succeeds at its first try instead of noticing a
        ready server up to seconds late. 0 returns at once, as LocalProcessSpawner does.""",
    ).tag(config=True)

    @default("profiles")
    def _default_profiles(self) -> dict:
        return dict(profiles.PROFILES)

    @default("policy_dir")
    def _default_policy_dir(self) -> str:
        return "/etc/enclave/jupyter"

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return [sys.executable, "-m", "enclave.workspace.singleuser"]

    # ---- shared services

    @property
    def namespaces(self) -> Any:
        from enclave.netns import NamespaceManager, NetnsConfig

        config = self.netns_config or NetnsConfig()
        return _shared("netns", config, lambda: NamespaceManager(config))

    @property
    def zygote(self) -> Any:
        """The hub's zygote for this server command (started on first use), or None."""
        if not self.use_zygote or not self.cmd:
            return None
        return start_zygote(self.cmd[0])

    @property
    def mounter(self) -> DatasetMounter:
        mounter = _shared(
            "mounter", self.plaintext_root, lambda: DatasetMounter(Path(self.plaintext_root))
        )
        mounter.master_key = _MASTER_KEY[0]
        mounter.catalog_url = self.catalog_url  # where read faults are audited
        return mounter

    def _grants(self, principal: Any) -> list[Any]:
        source = self.grants_source
        if source is None:
            if not self.catalog_url:
                return []
            source = _catalog_grants(self.catalog_url)
        return list(source(principal))

    # ---- who

    @property
    def group_names(self) -> list[str]:
        return sorted(g.name for g in getattr(self.user, "groups", []) or [])

    def principal(self) -> Any:
        return grants.principal_for(self.user.name, self.group_names)

    def session_grants(self, kind: AccessMode) -> list[Any]:
        """The versions a session of ``kind`` gets (``enclave.workspace.grants``: the decision
        the key holder makes for a Kubernetes pod too)."""
        return grants.session_grants(self._grants(self.principal()), kind)

    # ---- the session's kind

    @default("options_form")
    def _default_options_form(self) -> Callable[[Any], str]:
        return session_form

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, str]:
        kind = (formdata.get("kind") or [""])[0]
        if kind and kind not in {k.value for k in AccessMode}:
            raise ValueError(f"unknown session kind {kind!r}: choose desktop or notebook")
        return {"kind": kind} if kind else {}

    def options_from_query(self, query_data: dict[str, list[str]]) -> dict[str, str]:
        """``/hub/spawn?opt-kind=desktop`` (JupyterHub strips the ``opt-``)."""
        return self.options_from_form(query_data)

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Callable[[Any, dict], None]:
        return check_session_options

    def default_session(self) -> AccessMode:
        try:
            return profiles.profile_for(self.group_names, self.profiles).default_session
        except profiles.NoWorkspace:
            return AccessMode.NOTEBOOK

    @property
    def session_kind(self) -> AccessMode:
        """This spawn's kind: what the person chose, else their profile's default."""
        chosen = (self.user_options or {}).get("kind")
        if not chosen:
            return self.default_session()
        try:
            return AccessMode(chosen)
        except ValueError:
            raise ValueError(
                f"unknown session kind {chosen!r}: choose desktop or notebook"
            ) from None

    @property
    def account(self) -> accounts.UnixAccount:
        found = accounts.lookup_account(self.user.name, self.unix_prefix)
        if found is None:
            raise accounts.AccountError(f"no Unix account for hub user {self.user.name!r}")
        return found

    # ---- environment

    def user_env(self, env: dict) -> dict:
        account = self.account
        env["USER"] = env["LOGNAME"] = account.name
        env["HOME"] = str(account.home)
        env["SHELL"] = "/bin/bash"
        # Root-owned Jupyter config; ~/.jupyter and the user's site-packages are never read.
        env["JUPYTER_CONFIG_DIR"] = self.policy_dir
        # The hub's own Jupyter install (server extensions enabled, JupyterLab assets), read-only.
        from enclave.workspace.hub import hub_jupyter_environment

        env.update(hub_jupyter_environment())
        env["PYTHONNOUSERSITE"] = "1"
        env["JUPYTER_RUNTIME_DIR"] = str(account.home / ".local/share/jupyter/runtime")
        env["ENCLAVE_DATASETS"] = str(account.home / "datasets")
        env["ENCLAVE_OUTPUTS"] = str(account.home / "outputs")
        env["ENCLAVE_PROFILE"] = self._profile.name if self._profile else ""
        if self.airlock_url:
            env["ENCLAVE_AIRLOCK_URL"] = self.airlock_url
        if self.cmd:  # the server interpreter's folder first: `enclave ...` in a terminal
            env["PATH"] = os.pathsep.join(
                p for p in (os.path.dirname(self.cmd[0]), env.get("PATH", "")) if p
            )
        return env

    def get_args(self) -> list[str]:
        args = list(super().get_args())
        if self._profile is not None:
            args += self._profile.server_args()
        args += policy.user_state_args(self.account.home)
        # Last, so nothing before can override them.
        return args + policy.server_policy_args()

    # ---- lifecycle

    # Profile imported by name: in this class body ``profiles`` is the trait, not the module.
    _profile: Profile | None = None
    _timings: dict[str, Any] = {}
    _network: Any = None
    _limits: Any = None
    _display: accounts.UnixAccount | None = None
    _desktop: DesktopPaths | None = None
    _companions: list[Any] = []
    mounted: list[MountedDataset] = []

    def _prepare(self) -> tuple[accounts.UnixAccount, Any, list[MountedDataset]]:
        """Blocking part of start(): account, datasets, namespace (runs in a thread).

        A notebook session mounts only versions granted in notebook mode: what JupyterLab in
        the browser can show. A desktop session mounts all of them, and gets its display
        account and runtime folder."""
        kind = self.session_kind
        account = accounts.ensure_account(self.user.name, Path(self.home_root), self.unix_prefix)
        self._install_examples(account)
        mounted = self.mounter.mount_for(account, self.session_grants(kind))
        for m in mounted:
            access_log.record(
                self.catalog_url,
                self.user.name,
                "dataset.mount",
                f"dataset:{m.name}@{m.version}",
                user=self.user.name,
                session=kind.value,
            )
        if kind is AccessMode.DESKTOP:
            self._display = accounts.ensure_display_account(self.user.name, self.unix_prefix)
            self._desktop = prepare_runtime(
                DesktopPaths.for_user(account.name, Path(self.desktop_runtime_root)),
                user=(account.uid, account.gid),
                display=(self._display.uid, self._display.gid),
            )
        network = self.namespaces.create(self.user.name)
        return account, network, mounted

    def _install_examples(self, account: accounts.UnixAccount) -> None:
        """First spawn: copy the example notebooks to ~/examples (never over the user's own)."""
        from enclave.data.examples import ExamplesError, install_examples

        try:
            copied = install_examples(account.home, uid=account.uid, gid=account.gid)
        except ExamplesError as exc:  # a missing example is no reason to refuse a server
            self.log.warning("Examples not copied for %s: %s", self.user.name, exc)
            return
        if copied:
            self.log.info(
                "Copied %d example notebook(s) to %s", len(copied), account.home / "examples"
            )

    async def start(self) -> tuple[str, int]:
        from enclave.isolation import ResourceLimits

        marks = {"start": time.time()}
        self._timings = {}
        self._profile = profiles.profile_for(self.group_names, self.profiles)
        account, network, self.mounted = await asyncio.to_thread(self._prepare)
        marks["prepared"] = time.time()
        self._network = network
        self.ip = network.guest_address
        self.port = network.server_port
        profile = self._profile
        env = self.get_env()
        env.update(profiles.gpu_environment(profile))
        kind = self.session_kind
        if kind is AccessMode.DESKTOP:
            processes = self._desktop_processes(account, env)
        else:
            processes = [
                ProcessSpec([*self.cmd, *self.get_args()], account.uid, account.gid, env,
                            str(account.home))
            ]  # fmt: skip
        limits = ResourceLimits(
            memory_max=profile.memory_max, cpu_max=profile.cpu_max, pids_max=profile.pids_max
        )
        self.log.info(
            "Spawning %s (%s session) as %s (uid %d) in %s, profile %s, datasets %s",
            self.user.name,
            kind.value,
            account.name,
            account.uid,
            network.namespace,
            profile.name,
            ", ".join(f"{m.name}@{m.version} ({m.mode})" for m in self.mounted) or "none",
        )
        try:
            proc, *companions = await asyncio.to_thread(self._launch, network, processes, limits)
        except BaseException:
            await asyncio.to_thread(self._cleanup)
            raise
        self._companions = companions
        # Limits first: from here on, a failure makes the hub call stop(), whose cleanup kills
        # everything in the server's cgroups even if nothing below was recorded.
        self._limits = proc.limits
        self.pid = proc.pid
        self.proc = proc
        marks["launched"] = time.time()
        path = "exec" if isinstance(proc, subprocess.Popen) else "zygote"
        if proc.limits is not None:
            self.log.info("Limits for %s: %s", self.user.name, proc.limits.describe())
        await self._wait_until_answering(
            proc, f"http://{self.ip}:{self.port}{self.server.base_url}api"
        )
        marks["answered"] = time.time()
        self._timings = {**marks, "path": path}
        await asyncio.to_thread(
            access_log.record,
            self.catalog_url,
            self.user.name,
            "server.start",
            f"user:{self.user.name}",
            session=kind.value,
            datasets=[f"{m.name}@{m.version}" for m in self.mounted],
        )
        self.log.info(
            "Server of %s answers after %.2f s: prepare %.2f s, launch %.2f s (%s), "
            "server start %.2f s",
            self.user.name,
            marks["answered"] - marks["start"],
            marks["prepared"] - marks["start"],
            marks["launched"] - marks["prepared"],
            path,
            marks["answered"] - marks["launched"],
        )
        return (self.ip, self.port)

    def _launch(self, network: Any, processes: list[ProcessSpec], limits: Any) -> list[Any]:
        """Start the session's processes in one cgroup: forked from the zygote when it is
        ready, else exec'd. The first is the server the hub talks to."""
        from enclave.isolation import apply_limits, popen_in_namespace
        from enclave.workspace.zygote import (
            SpawnRequest,
            ZygoteUnavailable,
            rlimits_from_prlimit_args,
        )

        applied = apply_limits(network.namespace, limits)
        output = self._open_server_log()
        started: list[Any] = []
        try:
            zygote = self.zygote
            if zygote is not None and not zygote.wait_ready(
                max(0.0, self.zygote_wait - zygote.age)
            ):
                self.log.info("Starting %s's server without the zygote: not ready", self.user.name)
                zygote = None
            for spec in processes:
                if zygote is not None:
                    request = SpawnRequest(
                        argv=list(spec.argv),
                        env=dict(spec.env),
                        cwd=spec.cwd,
                        uid=spec.uid,
                        gid=spec.gid,
                        netns_path=network.netns_path,
                        cgroup_procs=[str(f) for f in applied.procs_files],
                        rlimits=rlimits_from_prlimit_args(applied.prlimit_args),
                    )
                    try:
                        proc = zygote.spawn(request, output_fd=output)
                    except ZygoteUnavailable as exc:
                        if started:
                            raise
                        self.log.info(
                            "Starting %s's server without the zygote: %s", self.user.name, exc
                        )
                        for pid in applied.pids():  # nothing may linger from a half-made fork
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                        zygote = None
                    else:
                        proc.limits = applied
                        started.append(proc)
                        continue
                started.append(
                    popen_in_namespace(
                        network,
                        spec.argv,
                        uid=spec.uid,
                        gid=spec.gid,
                        env=spec.env,
                        cwd=spec.cwd,
                        limits=applied,
                        start_new_session=True,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=output,
                    )
                )
            return started
        except BaseException:
            applied.remove()  # kills whatever was started in the cgroup
            for proc in started:
                with contextlib.suppress(ProcessLookupError, OSError):
                    proc.kill()
            raise
        finally:
            if output is not None:
                os.close(output)  # the processes hold their own copies

    def _desktop_processes(
        self, account: accounts.UnixAccount, env: dict[str, str]
    ) -> list[ProcessSpec]:
        """The gateway (display account, with the hub's token) and the desktop (the user,
        without it), both started by the same interpreter as notebook servers."""
        display, paths, profile = self._display, self._desktop, self._profile
        assert display is not None and paths is not None and profile is not None  # _prepare
        python = self.cmd[0]
        gateway_env = {
            **{k: v for k, v in env.items() if k.startswith("JUPYTERHUB_")},
            "PATH": env.get("PATH", "/usr/bin:/bin"),
            "LANG": env.get("LANG", "C.UTF-8"),
            "HOME": str(paths.vnc_dir),
            "USER": display.name,
            "LOGNAME": display.name,
            "PYTHONNOUSERSITE": "1",
        }
        gateway = ProcessSpec(
            [python, "-m", "enclave.desktop.gateway", "--ip", self.ip, "--port", str(self.port),
             "--runtime", str(paths.root)],
            display.uid, display.gid, gateway_env, str(paths.vnc_dir),
        )  # fmt: skip
        session_env = {k: v for k, v in env.items() if not k.startswith(("JUPYTERHUB_", "JPY_"))}
        session_env["ENCLAVE_DESKTOP_RUNTIME"] = str(paths.root)
        session_env["ENCLAVE_DESKTOP_POLICY"] = str(Path(self.desktop_policy_dir) / profile.name)
        session_env["ENCLAVE_SESSION_KIND"] = AccessMode.DESKTOP.value
        lab_args = [
            *profile.server_args(idle_shutdown=False),
            *policy.user_state_args(account.home),
            *policy.desktop_server_policy_args(),
        ]
        session = ProcessSpec(
            [python, "-m", "enclave.desktop.session", "--lab-port", str(self.desktop_lab_port),
             *(["--terminal"] if profile.terminals else []), "--", *lab_args],
            account.uid, account.gid, session_env, str(account.home),
        )  # fmt: skip
        return [gateway, session]

    def _open_server_log(self) -> int | None:
        """The write end of the user's server log (append only), or None for the hub's output."""
        if not self.server_log_dir:
            return None
        folder = Path(self.server_log_dir)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        safe = re.sub(r"[^A-Za-z0-9._@-]", "_", self.user.name).lstrip(".") or "user"
        path = folder / f"{safe}.log"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.write(fd, f"--- {stamp} server of {self.user.name} starting ---\n".encode())
        return fd

    async def _signal(self, sig: int) -> bool:
        """Signal the server; a zygote-forked one through its pidfd (never a recycled pid)."""
        from enclave.workspace.zygote import ZygoteProcess

        if isinstance(self.proc, ZygoteProcess):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                return False
            return True
        return await super()._signal(sig)

    async def _wait_until_answering(self, proc: subprocess.Popen, url: str) -> None:
        """Poll ``url`` (the one the hub waits on) until the server answers, or it exits.

        Bounded well inside ``start_timeout``; past that the hub's own wait (``http_timeout``)
        takes over, as for any spawner. A server that exits first is reported at once instead
        of after ``http_timeout``.
        """
        if self.ready_poll_interval <= 0:
            return
        import aiohttp

        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + max(0.0, min(self.http_timeout, self.start_timeout - 5))
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while loop.time() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the server of {self.user.name} exited with status {proc.returncode} "
                        "before it answered (see the hub log for its output)"
                    )
                try:
                    async with session.get(url, allow_redirects=False) as reply:
                        if reply.status < 500:
                            self.log.debug(
                                "Server of %s answered %s after %.2f s",
                                self.user.name,
                                reply.status,
                                loop.time() - started,
                            )
                            return
                except (TimeoutError, aiohttp.ClientError, OSError):
                    pass
                await asyncio.sleep(self.ready_poll_interval)

    def _cleanup(self) -> None:
        """Remove what start() set up around the process (idempotent)."""
        if self._limits is not None:
            self._limits.remove()
            self._limits = None
        for companion in self._companions:  # without cgroups: the desktop, by its own group
            with contextlib.suppress(ProcessLookupError, OSError):
                os.killpg(companion.pid, signal.SIGKILL)
        self._companions = []
        if self._desktop is not None:
            remove_runtime(self._desktop)
            self._desktop = None
        self.namespaces.teardown(self._network or self.user.name)
        self._network = None
        # NamespaceManager.teardown removes the host table and the service address with the
        # last namespace; the hub still listens there, so put them back at once.
        self.namespaces.ensure_host()
        account = accounts.lookup_account(self.user.name, self.unix_prefix)
        if account is not None:
            self.mounter.unmount_user(account.home)
        self.mounter.collect_garbage()
        self.mounted = []

    async def poll(self) -> int | None:
        """None while the session runs: its server and, in a desktop, the desktop too (a
        desktop whose programs ended is a stopped server, for the hub to start again)."""
        status = await super().poll()
        if status is not None:
            return status
        for companion in self._companions:
            code = companion.poll()
            if code is not None:
                self.log.warning(
                    "The desktop of %s ended with status %s; stopping its server",
                    self.user.name,
                    code,
                )
                return code if code else 1
        return None

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        await asyncio.to_thread(self._cleanup)
        await asyncio.to_thread(
            access_log.record,
            self.catalog_url,
            self.user.name,
            "server.stop",
            f"user:{self.user.name}",
        )

    def get_state(self) -> dict:
        state = super().get_state()
        if self._timings:
            # Wall-clock phase marks of the last start (benchmarks/spawn.py reports them).
            state["spawn_timings"] = dict(self._timings)
        if self._limits is not None:
            state["cgroups"] = [str(d) for d in self._limits.cgroup_dirs]
            state["limit_backend"] = self._limits.backend
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        if state.get("cgroups"):
            from enclave.isolation import AppliedLimits, ResourceLimits

            self._limits = AppliedLimits(
                state.get("limit_backend", "cgroup2"),
                ResourceLimits(),
                cgroup_dirs=tuple(Path(d) for d in state["cgroups"]),
            )

    def clear_state(self) -> None:
        super().clear_state()
        self._timings = {}
