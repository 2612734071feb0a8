"""What the spawner, the gateway and the session agree on: paths, display, VNC parameters.

The spawner (root) prepares a runtime folder per session under ``/run/enclave/desktops``::

    <root>/<unix user>/            root, 0755
        vnc/                       display account, 0700: the VNC server's cookie and socket
            Xauthority
            rfb.sock               created by Xvnc, mode 0600
        user/                      the user, 0700: the same cookie for the user's X clients
            Xauthority

Only the display account can open the RFB socket, so only the gateway talks RFB; the user's
programs reach the X display (an abstract socket, private to the network namespace) with the
cookie. The X server's parameters are the enclave's, on the command line of a process the user
cannot signal or replace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Where desktop runtime folders live (a tmpfs; nothing here outlives a session).
RUNTIME_ROOT = Path("/run/enclave/desktops")
#: Every session uses the same display number: X's abstract sockets belong to the network
#: namespace, so displays in different namespaces never meet (and Xvnc keeps no lock file).
DISPLAY_NUMBER = 1
#: A size to start with; the browser asks for its own window's size once it connects.
INITIAL_GEOMETRY = "1280x800"
#: Parameters that keep every byte but pixels inside: no clipboard in either direction (the
#: CLIPBOARD and the PRIMARY selection), no TCP, no listening socket in the shared /tmp, and a
#: socket for RFB that only the display account can open. Given last, so nothing before them
#: (a site's extra parameters included) can turn them around.
ENFORCED_VNC_PARAMETERS = (
    "-SendCutText=0",
    "-AcceptCutText=0",
    "-SendPrimary=0",
    "-SetPrimary=0",
    "-MaxCutText=0",
    "-rfbport=-1",
    "-nolisten",
    "tcp",
    "-nolisten",
    "unix",
    "-nolock",
    "-SecurityTypes=None",
    "-rfbunixmode=0600",
)
#: The X authority entry family for "any host": the display is only reachable from inside the
#: namespace anyway.
FAMILY_WILD = 0xFFFF


@dataclass(frozen=True)
class DesktopPaths:
    """The runtime folder of one user's desktop session."""

    root: Path

    @classmethod
    def for_user(cls, unix_name: str, runtime_root: Path = RUNTIME_ROOT) -> DesktopPaths:
        return cls(Path(runtime_root) / unix_name)

    @property
    def vnc_dir(self) -> Path:
        return self.root / "vnc"

    @property
    def user_dir(self) -> Path:
        return self.root / "user"

    @property
    def vnc_xauthority(self) -> Path:
        return self.vnc_dir / "Xauthority"

    @property
    def user_xauthority(self) -> Path:
        return self.user_dir / "Xauthority"

    @property
    def rfb_socket(self) -> Path:
        return self.vnc_dir / "rfb.sock"


def display_name(number: int = DISPLAY_NUMBER) -> str:
    return f":{number}"


def xauthority_entry(cookie: bytes, number: int = DISPLAY_NUMBER) -> bytes:
    """One ``MIT-MAGIC-COOKIE-1`` entry in the Xauthority file format (as ``xauth`` writes)."""

    def counted(value: bytes) -> bytes:
        return struct.pack(">H", len(value)) + value

    return (
        struct.pack(">H", FAMILY_WILD)
        + counted(b"")
        + counted(str(number).encode())
        + counted(b"MIT-MAGIC-COOKIE-1")
        + counted(cookie)
    )


def new_cookie() -> bytes:
    return secrets.token_bytes(16)


def write_private_file(path: Path, data: bytes, uid: int, gid: int) -> None:
    """Create ``path`` (it must not exist: no link is followed) with mode 0600 for ``uid``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def xvnc_command(
    xvnc: str,
    paths: DesktopPaths,
    *,
    geometry: str,
    extra: Sequence[str] = (),
    display: int = DISPLAY_NUMBER,
) -> list[str]:
    """The VNC server's command line: the site's ``extra`` parameters, then the enforced ones."""
    return [
        xvnc,
        display_name(display),
        "-auth",
        str(paths.vnc_xauthority),
        "-rfbunixpath",
        str(paths.rfb_socket),
        "-geometry",
        geometry,
        "-depth",
        "24",
        "-AcceptSetDesktopSize=1",
        "-AlwaysShared=1",
        "-desktop",
        "Enclave",
        *extra,
        *ENFORCED_VNC_PARAMETERS,
    ]


def prepare_runtime(
    paths: DesktopPaths,
    *,
    user: tuple[int, int],
    display: tuple[int, int],
    number: int = DISPLAY_NUMBER,
) -> DesktopPaths:
    """Make a fresh runtime folder for a session (as root): the two subfolders, each owned by
    its account, and the same new X cookie in each. Anything a previous session left is gone."""
    remove_runtime(paths)
    root = paths.root
    root.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(root.parent, 0o755)
    root.mkdir(mode=0o755)
    cookie = new_cookie()
    for folder, auth, (uid, gid) in (
        (paths.vnc_dir, paths.vnc_xauthority, display),
        (paths.user_dir, paths.user_xauthority, user),
    ):
        folder.mkdir(mode=0o700)
        write_private_file(auth, xauthority_entry(cookie, number), uid, gid)
        os.chown(folder, uid, gid)
    return paths


def remove_runtime(paths: DesktopPaths) -> None:
    shutil.rmtree(paths.root, ignore_errors=True)
