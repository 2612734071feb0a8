"""A pre-imported server "zygote": user servers forked from a process that has already imported
Jupyter Server, JupyterLab and the JupyterHub single-user extension.

A user server spends most of its start importing those (more CPU than namespace, mounts and
limits together; figures in docs/performance.md). The hub starts one zygote, a fresh root-owned
process of the *server* interpreter (never a fork of the hub: it holds no key, token or other
secret), which imports them once and then forks a child per spawn. The child, before it runs any
server code, does what the exec chain ``sh (cgroup) -> nsenter --net -> prlimit -> setpriv``
does (``enclave.isolation.namespace_command``):

1. closes every inherited descriptor but its own channel and 0-2; stdin becomes ``/dev/null``;
2. starts a new session; joins the server's cgroups; enters the network namespace
   (``setns(2)`` on ``/run/netns/NAME``); applies the rlimits of the rlimit backend;
3. takes the user's supplementary groups (``initgroups``, as ``setpriv --init-groups``), drops
   every capability from the bounding set, sets real/effective/saved gid and uid, clears the
   inheritable set and sets ``no_new_privs``; it then checks ``/proc/self/status`` (no
   capabilities in any set, ``NoNewPrivs: 1``, the uids and gids asked for) and refuses to go
   on otherwise;
4. replaces the whole environment with the one the spawner built and changes to the home;
5. runs ``python -m MODULE ARGS`` (or ``python FILE ARGS``) as ``__main__``, like the interpreter.

Secrets: the zygote parent never reads a spawn's request. The hub sends it one end of a fresh
socket pair; the parent forks and only the child reads the request (environment with the user's
API token) from it. So no user's token is ever in the memory later children are forked from.
The parent reports the child's pid (and a pidfd, so signals cannot reach a recycled pid) and
later its exit status on that same channel.

Hub side: :class:`ZygoteClient` (start, ``spawn``) and :class:`ZygoteProcess` (a Popen-like handle
the spawner keeps as ``self.proc``). When the zygote is not running or not ready the spawner
uses the exec chain instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.errors import EnclaveError

CLONE_NEWNET = 0x40000000
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
MAX_MESSAGE = 1 << 20
RESTART_AFTER = 60.0
RLIMITS = {"as": "RLIMIT_AS", "nproc": "RLIMIT_NPROC"}
# What a spawn may run: the server interpreter with one of these forms (anything else -> exec).
READY, FORKED, STARTED, FAILED, EXITED = b"ready", b"forked", b"started", b"failed", b"exited"


class ZygoteError(EnclaveError):
    """The zygote could not start a server (the message names the step that failed)."""


class ZygoteUnavailable(ZygoteError):
    """No zygote to fork from (not started, still importing, or gone): use the exec path."""


@dataclass(frozen=True)
class SpawnRequest:
    """What one child needs: the same facts the exec chain gets on its command line."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int
    gid: int
    netns_path: str
    cgroup_procs: list[str] = field(default_factory=list)
    rlimits: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SpawnRequest:
        return cls(**json.loads(data))


def rlimits_from_prlimit_args(args: Sequence[str]) -> dict[str, int]:
    """``("--as=N", "--nproc=M")`` (``AppliedLimits.prlimit_args``) as ``{"as": N, ...}``."""
    found = {}
    for arg in args:
        name, _, value = arg.removeprefix("--").partition("=")
        if name not in RLIMITS or not value.isdigit():
            raise ZygoteError(f"rlimit argument {arg!r} is not one the zygote applies")
        found[name] = int(value)
    return found


def entry_point(argv: Sequence[str], python: str) -> tuple[str, str, list[str]] | None:
    """``("module"|"path", target, args)`` for argv the zygote can run, else None."""
    if len(argv) < 2 or os.path.realpath(argv[0]) != os.path.realpath(python):
        return None
    if argv[1] == "-m" and len(argv) >= 3 and all(p.isidentifier() for p in argv[2].split(".")):
        return "module", argv[2], list(argv[3:])
    if not argv[1].startswith("-") and argv[1].endswith(".py"):
        return "path", argv[1], list(argv[2:])
    return None


# ------------------------------------------------------------------ child (runs as root, then user)

_libc = None


def _libc_call(name: str, *args: Any) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    result = getattr(_libc, name)(*args)
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return result


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _clear_capabilities() -> None:
    """Empty effective, permitted and inheritable sets (after setuid only inheritable is left)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _libc_call("capset", ctypes.byref(header), data)


def _drop_bounding_set() -> None:
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        _libc_call(
            "prctl",
            PR_CAPBSET_DROP,
            ctypes.c_ulong(cap),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )


def _status_fields() -> dict[str, str]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def check_dropped(uid: int, gid: int) -> None:
    """Refuse to run user code unless the process is exactly as unprivileged as setpriv leaves it."""
    status = _status_fields()
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if key in status and int(status[key], 16) != 0:
            raise ZygoteError(f"capability set {key} is {status[key]}, not empty")
    if status.get("NoNewPrivs") != "1":
        raise ZygoteError("no_new_privs is not set")
    if status["Uid"].split() != [str(uid)] * 4 or status["Gid"].split() != [str(gid)] * 4:
        raise ZygoteError(f"uids {status['Uid']} / gids {status['Gid']} are not {uid} / {gid}")


def _close_fds(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def become_user(request: SpawnRequest) -> None:
    """Steps 2-4 of the module docstring, in the forked child (root until the setres* calls)."""
    import pwd
    import resource

    if request.uid == 0 or request.gid == 0:
        raise ZygoteError("refusing to run a user server as root (uid or gid 0)")
    os.setsid()
    for procs in request.cgroup_procs:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    netns = os.open(request.netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc_call("setns", netns, CLONE_NEWNET)
    finally:
        os.close(netns)
    for name, value in request.rlimits.items():
        resource.setrlimit(getattr(resource, RLIMITS[name]), (value, value))
    try:
        os.initgroups(pwd.getpwuid(request.uid).pw_name, request.gid)
    except KeyError:
        os.setgroups([])
    _drop_bounding_set()
    os.setresgid(request.gid, request.gid, request.gid)
    os.setresuid(request.uid, request.uid, request.uid)
    _clear_capabilities()
    _libc_call(
        "prctl",
        PR_SET_NO_NEW_PRIVS,
        ctypes.c_ulong(1),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    check_dropped(request.uid, request.gid)
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)


def _run_entry(kind: str, target: str, args: list[str]) -> int:
    import runpy
    import warnings

    sys.argv = [target if kind == "path" else sys.executable, *args]
    try:
        if kind == "module":
            with warnings.catch_warnings():
                # The zygote imported the server module already; running it again as __main__
                # is what `python -m` would do, so runpy's "found in sys.modules" note is noise.
                warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    return 0


def _child(channel: socket.socket, keep_fds: set[int]) -> None:
    """The forked child: read the request, become the user, run the server. Never returns."""
    code, started = 125, False
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _close_fds(keep_fds | {channel.fileno()})
        devnull = os.open(os.devnull, os.O_RDONLY)
        if devnull != 0:
            os.dup2(devnull, 0)
            os.close(devnull)
        message, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE, 1)
        for fd in fds:  # the server's log: its stdout and stderr
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        request = SpawnRequest.from_json(message)
        entry = entry_point(request.argv, sys.executable)
        if entry is None:
            raise ZygoteError(
                f"cannot run {request.argv[:3]} (not this interpreter with -m or a file)"
            )
        become_user(request)
        channel.send(STARTED)
        channel.close()
        started = True
        code = _run_entry(*entry)
    except BaseException as exc:  # never fall through into the zygote's loop
        if started:  # the server's own failure, as the interpreter would report it
            import traceback

            traceback.print_exc()
            code = 1
        else:
            with contextlib.suppress(OSError):
                channel.send(FAILED + b" " + f"{type(exc).__name__}: {exc}".encode()[:4000])
    finally:
        import atexit

        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# --------------------------------------------------------------------------- the zygote process


def serve(control_fd: int) -> None:
    """Main loop of the zygote process: fork on request, reap and report exits."""
    from enclave.workspace.singleuser import prepare_imports

    control = socket.socket(fileno=control_fd)
    prepare_imports()
    import gc

    gc.collect()
    gc.freeze()  # imported objects stay put: fewer copied pages in each child
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hub's Ctrl-C is the hub's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children: dict[int, socket.socket] = {}
    control.send(READY + b" " + str(os.getpid()).encode())
    watched: list[socket.socket | int] = [control, wake_r]
    while True:
        readable, _, _ = select.select(watched, [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            _reap(children)
        if control in readable:
            try:
                _, fds, _, _ = socket.recv_fds(control, 16, 1)
            except OSError:
                fds = []
                return
            if not fds:
                return  # the hub has gone: running servers carry on, the hub's cleanup stops them
            channel = socket.socket(fileno=fds[0])
            sys.stdout.flush()  # nothing buffered may be written twice
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(channel, {1, 2})
            pidfd = os.pidfd_open(pid)
            try:
                socket.send_fds(channel, [FORKED + b" " + str(pid).encode()], [pidfd])
            except OSError:
                pass
            finally:
                os.close(pidfd)
            children[pid] = channel
            _reap(children)


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        channel = children.pop(pid, None)
        if channel is not None:
            with contextlib.suppress(OSError):
                channel.send(EXITED + b" " + str(os.waitstatus_to_exitcode(status)).encode())
            channel.close()


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        raise SystemExit("usage: python -P -m enclave.workspace.zygote CONTROL_FD")
    serve(int(sys.argv[1]))


# ------------------------------------------------------------------------------------- hub side


class ZygoteProcess:
    """The hub's handle on a forked server: enough of ``Popen`` for the spawner.

    Signals go through a pidfd (never to a recycled pid); the exit status comes from the zygote,
    which reaps its children.
    """

    limits: Any = None

    def __init__(self, pid: int, pidfd: int, channel: socket.socket) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.channel = channel
        self.returncode: int | None = None
        self.args: list[str] = []

    def _read_status(self) -> None:
        while self.returncode is None:
            try:
                message = self.channel.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:  # zygote gone: whoever reaps it, the pidfd says whether it exited
                if self._pidfd_exited():
                    self.returncode = -1
                return
            if message.startswith(EXITED):
                self.returncode = int(message.split()[1])

    def _pidfd_exited(self) -> bool:
        if self.pidfd < 0:
            return True
        readable, _, _ = select.select([self.pidfd], [], [], 0)
        return bool(readable)

    def poll(self) -> int | None:
        self._read_status()
        if self.returncode is None and self._pidfd_exited():
            # Exited; the zygote's report follows at once.
            deadline = time.monotonic() + 0.2
            while self.returncode is None and time.monotonic() < deadline:
                time.sleep(0.01)
                self._read_status()
            if self.returncode is None:
                self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self.pidfd, sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.channel.close()

    def __enter__(self) -> ZygoteProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def zygote_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The zygote's own environment: what imports may read, nothing of the hub's secrets."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k in ("PATH", "LANG", "LC_ALL")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    from enclave.workspace.hub import hub_jupyter_environment

    env.update(hub_jupyter_environment())
    env["PYTHONNOUSERSITE"] = "1"
    env["HOME"] = "/nonexistent"
    return env


class ZygoteClient:
    """The hub's end: starts the zygote and asks it for servers (thread-safe)."""

    def __init__(self, python: str, *, ready_timeout: float = 120.0) -> None:
        self.python = python
        self.ready_timeout = ready_timeout
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self.process: subprocess.Popen | None = None
        self.ready = False
        self._started_at = 0.0

    def start(self) -> None:
        """Start the zygote in the background (returns at once; ``ready`` turns True later).

        A zygote that has exited is started again, at most once a minute (one that cannot
        import would otherwise cost every spawn an import next to the exec path's).
        """
        with self._lock:
            if self.process is not None and (
                self.process.poll() is None or time.monotonic() - self._started_at < RESTART_AFTER
            ):
                return
            hub_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self.process = subprocess.Popen(
                    [self.python, "-P", "-m", "enclave.workspace.zygote", str(zygote_end.fileno())],
                    pass_fds=[zygote_end.fileno()],
                    env=zygote_environment(),
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            finally:
                zygote_end.close()
            self._control = hub_end
            self.ready = False
            self._started_at = time.monotonic()

    @property
    def age(self) -> float:
        """Seconds since the zygote was started."""
        return time.monotonic() - self._started_at

    def _check_ready(self) -> bool:
        if self.ready:
            return True
        if self._control is None or self.process is None or self.process.poll() is not None:
            return False
        readable, _, _ = select.select([self._control], [], [], 0)
        if readable:
            message = self._control.recv(4096)
            self.ready = message.startswith(READY)
        return self.ready

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._check_ready():
                    return True
                if self.process is None or self.process.poll() is not None:
                    return False
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def spawn(
        self, request: SpawnRequest, *, timeout: float = 30.0, output_fd: int | None = None
    ) -> ZygoteProcess:
        """Fork a server for ``request``; raises ZygoteUnavailable to ask for the exec path.

        ``output_fd`` becomes the server's stdout and stderr (else it keeps the zygote's)."""
        if entry_point(request.argv, self.python) is None:
            raise ZygoteUnavailable(f"the zygote does not run {request.argv[:3]}")
        hub_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._lock:
                if not self._check_ready():
                    raise ZygoteUnavailable("the zygote is not ready")
                assert self._control is not None  # _check_ready() is False without it
                try:
                    socket.send_fds(self._control, [b"spawn"], [child_end.fileno()])
                except OSError as exc:
                    self.ready = False
                    raise ZygoteUnavailable(f"the zygote is gone ({exc})") from None
            child_end.close()
            socket.send_fds(hub_end, [request.to_json()], [] if output_fd is None else [output_fd])
            hub_end.settimeout(timeout)
            pid, pidfd, answer = 0, -1, b""
            try:
                # The parent's "forked PID" (with a pidfd) and the child's "started"/"failed"
                # come in either order.
                while not (pidfd >= 0 and answer):
                    message, fds, _, _ = socket.recv_fds(hub_end, 8192, 1)
                    if not message:
                        break
                    if message.startswith(FORKED) and fds:
                        pid, pidfd = int(message.split()[1]), fds[0]
                    elif message.startswith((STARTED, FAILED)):
                        answer = message
            except (TimeoutError, OSError) as exc:
                answer = answer or FAILED + f" no answer ({exc})".encode()
            if pidfd < 0:
                raise ZygoteUnavailable(f"the zygote did not fork ({answer[:200]!r})")
            proc = ZygoteProcess(pid, pidfd, hub_end)
            proc.args = list(request.argv)
            hub_end.settimeout(None)
            if not answer.startswith(STARTED):
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                proc.close()
                detail = answer[len(FAILED) :].decode(errors="replace").strip() or "no answer"
                raise ZygoteError(f"setting up the server process failed: {detail}")
            return proc
        except BaseException:
            with contextlib.suppress(OSError):
                child_end.close()
            if "proc" not in locals():
                hub_end.close()
            raise

    def stop(self) -> None:
        with self._lock:
            if self._control is not None:
                self._control.close()
                self._control = None
            if self.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(5)
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
            self.ready = False


if __name__ == "__main__":
    main()
