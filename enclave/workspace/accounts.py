"""Unix accounts behind hub users: each user server runs as its own unprivileged uid.

A hub name maps to a Unix name deterministically (``enclave-alice``); names Unix would refuse,
or that are too long, get a short hash so that two hub users never share a uid.

A desktop session also has a *display account* per user (``enclavex-alice``): a system
account with no home and no shell that runs the session's VNC server and its gateway, so that
the user's own programs can neither signal nor replace them. Its prefix differs from the
user prefix at the character before the hub name, so no hub name maps onto one.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from enclave.errors import EnclaveError

UNIX_PREFIX = "enclave-"
MAX_UNIX_NAME = 32
_UNIX_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]*$")
# useradd/userdel lock /etc/passwd; concurrent spawns queue here instead of failing.
_PASSWD_LOCK = threading.Lock()


class AccountError(EnclaveError):
    """A Unix account for a workspace user cannot be created or found."""


@dataclass(frozen=True)
class UnixAccount:
    hub_name: str
    name: str
    uid: int
    gid: int
    home: Path


def unix_name(hub_name: str, prefix: str = UNIX_PREFIX) -> str:
    """``enclave-<name>`` where Unix allows it; otherwise a cleaned name plus a hash."""
    if not hub_name:
        raise AccountError("empty hub user name")
    candidate = prefix + hub_name
    if _UNIX_NAME_RE.match(candidate) and len(candidate) <= MAX_UNIX_NAME:
        return candidate
    digest = hashlib.sha256(hub_name.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^a-z0-9_-]", "_", hub_name.lower())
    room = MAX_UNIX_NAME - len(prefix) - len(digest) - 1
    return f"{prefix}{cleaned[:room]}-{digest}"


def _account(hub_name: str, entry: pwd.struct_passwd) -> UnixAccount:
    return UnixAccount(hub_name, entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def lookup_account(hub_name: str, prefix: str = UNIX_PREFIX) -> UnixAccount | None:
    try:
        return _account(hub_name, pwd.getpwnam(unix_name(hub_name, prefix)))
    except KeyError:
        return None


def _run_locked(argv: list[str], what: str) -> None:
    for attempt in range(20):
        with _PASSWD_LOCK:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return
        # Exit 10 (userdel) / 1 with "cannot lock": another tool holds /etc/passwd.
        if "lock" in proc.stderr.lower() and attempt < 19:
            time.sleep(0.05 * (attempt + 1))
            continue
        raise AccountError(f"{what} failed: {proc.stderr.strip() or proc.returncode}")


def ensure_account(hub_name: str, home_root: Path, prefix: str = UNIX_PREFIX) -> UnixAccount:
    """The user's Unix account and home (``home_root/<unix name>``, mode 0700), created if new."""
    if shutil.which("useradd") is None:
        raise AccountError(
            "useradd is missing (Debian package passwd): cannot create workspace users"
        )
    name = unix_name(hub_name, prefix)
    home_root = Path(home_root)
    home = home_root / name
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        home_root.mkdir(parents=True, exist_ok=True)
        os.chmod(home_root, 0o711)
        _run_locked(
            [
                "useradd",
                "--home-dir",
                str(home),
                "--no-create-home",
                "--shell",
                "/bin/bash",
                "--user-group",
                "--comment",
                f"enclave workspace {hub_name}"[:60],
                name,
            ],
            f"creating Unix user {name} for {hub_name!r}",
        )
        entry = pwd.getpwnam(name)
    account = _account(hub_name, entry)
    if not account.home.exists():
        account.home.mkdir(parents=True)
    os.chown(account.home, account.uid, account.gid)
    os.chmod(account.home, 0o700)
    return account


def remove_account(hub_name: str, prefix: str = UNIX_PREFIX, *, remove_home: bool = False) -> None:
    """Delete the Unix account (the home is kept unless asked: it holds the user's work)."""
    account = lookup_account(hub_name, prefix)
    if account is None:
        return
    _run_locked(["userdel", account.name], f"removing Unix user {account.name}")
    remove_display_account(hub_name, prefix)
    if remove_home:
        shutil.rmtree(account.home, ignore_errors=True)


def display_prefix(prefix: str = UNIX_PREFIX) -> str:
    """``enclave-`` -> ``enclavex-``: display account names can never be user names."""
    return prefix.rstrip("-") + "x-"


def ensure_display_account(hub_name: str, prefix: str = UNIX_PREFIX) -> UnixAccount:
    """The system account that runs ``hub_name``'s VNC server and gateway, created if new."""
    name = unix_name(hub_name, display_prefix(prefix))
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _run_locked(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                "--comment",
                f"enclave desktop display {hub_name}"[:60],
                name,
            ],
            f"creating the display account {name} for {hub_name!r}",
        )
        entry = pwd.getpwnam(name)
    return _account(hub_name, entry)


def remove_display_account(hub_name: str, prefix: str = UNIX_PREFIX) -> None:
    try:
        entry = pwd.getpwnam(unix_name(hub_name, display_prefix(prefix)))
    except KeyError:
        return
    _run_locked(["userdel", entry.pw_name], f"removing the display account {entry.pw_name}")
