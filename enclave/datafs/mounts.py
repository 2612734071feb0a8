"""The hub's side of the decrypting mounts: one ``python -m enclave.datafs`` process per
stored version in use, mounted at ``ROOT/<name>`` (``ROOT`` is root's, mode 0700), started on
the first spawn that needs the version and unmounted when no home binds it any more.

Starting one costs the same for any size of version: the process decrypts the version's file
index, not its files. A process that died (killed, crashed) leaves a mount that answers
``ENOTCONN``; the next spawn that needs the version unmounts it and starts another.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.errors import EnclaveError

#: The FUSE mounts' source name in /proc/self/mountinfo.
FSNAME = "enclave-datafs"
#: Seconds a new mount may take to answer before the spawn fails.
START_TIMEOUT = 30.0
#: The kernel's read-ahead for a mount, in KiB: FUSE's default (128) makes every request of a
#: sequential read small, and each request costs the filesystem process a round trip.
READ_AHEAD_KB = 1024


class DatafsError(EnclaveError):
    """A decrypting mount could not be started or stopped."""


@dataclass(frozen=True)
class DatafsMount:
    name: str
    mount_point: str
    device: str


def datafs_mounts(root: Path, mountinfo: list[Any]) -> dict[str, DatafsMount]:
    """The decrypting mounts directly under ``root``, by folder name."""
    prefix = str(Path(root).resolve()) + "/"
    found = {}
    for m in mountinfo:
        if m.source == FSNAME and m.mount_point.startswith(prefix) and m.root == "/":
            name = m.mount_point[len(prefix) :]
            if "/" not in name:
                found[name] = DatafsMount(name, m.mount_point, m.device)
    return found


def answers(mount_point: str) -> bool:
    """Whether the process behind a mount is alive (a dead one gives ``ENOTCONN``). ``statfs``
    always reaches the process; a ``stat`` may be answered from the kernel's cache."""
    try:
        os.statvfs(mount_point)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            return False
        raise
    return True


class DatafsProcesses:
    """Starts and stops the per-version processes; remembers the ones it started."""

    def __init__(self, root: Path, *, spare: bool = True) -> None:
        """``spare``: keep one process started ahead, its imports done, waiting for a
        version (a spawn then pays for the version's index and the mount only)."""
        self.root = Path(root)
        self.logs = self.root / ".logs"
        self.keep_spare = spare
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._spare: tuple[subprocess.Popen[bytes], Path] | None = None
        self._lock = threading.Lock()

    def _new_process(self) -> tuple[subprocess.Popen[bytes], Path]:
        self.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = self.logs / f"datafs-{time.time_ns()}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "enclave.datafs"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # a Ctrl-C to the hub leaves running servers' data
                close_fds=True,
            )
        return proc, log_path

    def _take_process(self) -> tuple[subprocess.Popen[bytes], Path]:
        """The spare when it is alive, else a new process."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None or spare[0].poll() is not None:
            return self._new_process()
        return spare

    def _replace_spare(self) -> None:
        with self._lock:
            if self.keep_spare and self._spare is None:
                self._spare = self._new_process()

    def close_spare(self) -> None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            proc = spare[0]
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(OSError):
                spare[1].unlink()

    def start(
        self,
        name: str,
        *,
        store_location: str,
        data_key: bytes,
        label: str,
        extra_files: dict[str, str],
        catalog_url: str = "",
    ) -> Path:
        """Mount the version at ``root/name`` and return the mount point once it answers."""
        point = self.root / name
        point.mkdir(mode=0o755, exist_ok=True)
        config = {
            "store": str(store_location),
            "data_key": data_key.hex(),
            "mountpoint": str(point),
            "label": label,
            "extra_files": extra_files,
            "catalog_url": catalog_url or None,
            "mtime_ns": _mtime_ns(store_location),
        }
        proc, log_path = self._take_process()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(config).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                break
            if proc.poll() is not None:
                break
        proc.stdout.close()
        if line.strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            with contextlib.suppress(OSError):
                point.rmdir()
            raise DatafsError(
                f"the decrypting mount of {label} did not start: {_last_line(log_path)} "
                f"(log: {log_path})"
            )
        self._procs[name] = proc
        _set_read_ahead(point)
        self._replace_spare()  # after the mount: its start does not slow this one down
        return point

    def stop(self, mount: DatafsMount) -> None:
        """Unmount (the process then exits by itself) and remove the mount point."""
        proc = subprocess.run(
            ["umount", "--lazy", mount.mount_point], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise DatafsError(
                f"unmounting {mount.mount_point} failed: {proc.stderr.strip() or proc.returncode}"
            )
        started = self._procs.pop(mount.name, None)
        if started is not None:
            try:
                started.wait(10)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait()
        with contextlib.suppress(OSError):
            Path(mount.mount_point).rmdir()

    def reap(self) -> None:
        """Collect the processes that exited (a killed one, an unmounted one)."""
        for name, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[name]


def read_ahead_knob(point: Path) -> Path:
    """The kernel's read-ahead setting (KiB) of the filesystem mounted at ``point``."""
    device = os.stat(point).st_dev
    return Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")


def _set_read_ahead(point: Path) -> None:
    """Raise the mount's read-ahead (best effort: without it reads are only slower)."""
    with contextlib.suppress(OSError):
        read_ahead_knob(point).write_text(str(READ_AHEAD_KB))


def _mtime_ns(store_location: str) -> int:
    try:
        return os.stat(Path(store_location) / "store.json").st_mtime_ns
    except OSError:
        return 0


def _last_line(log_path: Path) -> str:
    try:
        lines = [
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if line.strip() and "max threads" not in line
        ]
    except OSError:
        return "no log"
    return lines[-1] if lines else "it exited without saying why"
