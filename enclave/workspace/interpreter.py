"""The Python interpreter user servers run with, which an unprivileged user must be able to run.

Normally that is the hub's own virtualenv interpreter. When that interpreter lives where users
cannot go (a pyenv build under ``/root``, mode 0700, as on the development machines), the hub
builds a small bridge virtualenv from the system interpreter of the same minor version
(``/usr/bin/python3.11``) whose ``.pth`` adds the hub's site-packages, so servers and their
kernels import exactly the packages the hub has. Nothing is installed or downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from enclave.errors import EnclaveError

BRIDGE_PTH = "enclave-hub-packages.pth"


class InterpreterError(EnclaveError):
    """No Python interpreter that workspace users may execute."""


def usable_by_others(path: str | os.PathLike[str]) -> bool:
    """Whether a user with no special rights can execute ``path`` (every directory searchable)."""
    real = Path(os.path.realpath(path))
    for parent in reversed(real.parents):
        if not os.stat(parent).st_mode & 0o001:
            return False
    return bool(os.stat(real).st_mode & 0o001)


def private_ancestor(path: str | os.PathLike[str]) -> Path | None:
    """The first directory on the way to ``path`` that users with no special rights cannot
    enter (no search bit for others, as ``/root``'s mode 0700), or None if every existing one
    lets them through. Components that do not exist yet are created later, mode 0755."""
    real = Path(os.path.realpath(path))
    for folder in (*reversed(real.parents), real):
        try:
            mode = os.stat(folder).st_mode
        except FileNotFoundError:
            return None
        if not mode & 0o001:
            return folder
    return None


def readable_by_others(folder: str | os.PathLike[str]) -> Path | None:
    """The first directory on the way to ``folder`` (itself included) that others cannot
    enter or, for ``folder`` itself, list; None if a user can import from it."""
    blocked = private_ancestor(folder)
    if blocked is not None:
        return blocked
    real = Path(os.path.realpath(folder))
    return None if os.stat(real).st_mode & 0o005 == 0o005 else real


def server_python(bridge_dir: Path) -> str:
    """An interpreter path for user servers: the hub's own, or a bridge venv next to it."""
    if usable_by_others(sys.executable):
        return sys.executable
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = shutil.which(f"python{version}", path="/usr/bin:/usr/local/bin:/bin")
    if base is None or not usable_by_others(base):
        raise InterpreterError(
            f"{sys.executable} is not executable by workspace users (a parent directory is "
            f"private) and no system python{version} was found to bridge to it: install the "
            f"Debian package python{version} or create the virtualenv from a system Python"
        )
    bridge = Path(bridge_dir)
    python = bridge / "bin" / "python"
    site_packages = sysconfig.get_paths()["purelib"]
    pth = bridge / "lib" / f"python{version}" / "site-packages" / BRIDGE_PTH
    wanted = f"import site; site.addsitedir({site_packages!r})\n"
    if not (python.exists() and pth.is_file() and pth.read_text() == wanted):
        shutil.rmtree(bridge, ignore_errors=True)
        proc = subprocess.run(
            [base, "-m", "venv", "--without-pip", str(bridge)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise InterpreterError(
                f"creating the server interpreter at {bridge} failed: {proc.stderr.strip()}"
            )
        pth.parent.mkdir(parents=True, exist_ok=True)
        pth.write_text(wanted)
    # `enclave airlock submit` and `enclave lineage` typed in a session's terminal.
    command = bridge / "bin" / "enclave"
    script = f"#!{python}\nfrom enclave.cli import main\n\nmain()\n"
    if not command.is_file() or command.read_text() != script:
        command.write_text(script)
        command.chmod(0o755)
    for dirpath, _dirnames, filenames in os.walk(bridge):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)
    return str(python)
