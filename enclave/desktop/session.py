"""The user's side of a desktop session: a desktop on the display, JupyterLab inside it.

``python -m enclave.desktop.session --policy DIR --runtime DIR --lab-port PORT [--terminal]``
runs as the user inside their network namespace, once the gateway's VNC server is up. It
starts, and watches until it is told to stop:

* a session message bus, the Xfce window manager (no compositor: every redrawn pixel costs
  bandwidth) and a panel whose launchers come from the enclave's root-owned desktop policy
  (JupyterLab, and a terminal for profiles that have one);
* a Jupyter server on the namespace's loopback address, with a token: only programs inside
  this namespace can reach it, and its downloads land on the desktop, not in the browser;
* Chromium, showing JupyterLab from that server in an app window (started again from the
  panel's launcher when closed).

The hub's token is not in this process's environment: the spawner gives it to the gateway
only, so nothing the user runs can act as the server towards the hub.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from enclave.desktop.layout import DISPLAY_NUMBER, DesktopPaths, display_name

log = logging.getLogger("enclave.desktop.session")

LAB_URL_FILE = "lab-url"
#: Further Chromium flags from the session's environment (set by the pod, not the user).
EXTRA_FLAGS_ENV = "ENCLAVE_CHROMIUM_EXTRA_FLAGS"
X_WAIT_SECONDS = 30.0
LAB_WAIT_SECONDS = 60.0
#: Chromium inside the desktop: nothing fetched in the background (there is no network
#: outside the namespace), no first-run pages, an app window without an address bar.
CHROMIUM_FLAGS = (
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--password-store=basic",
    "--disable-gpu",
    "--start-maximized",
)


class SessionError(Exception):
    """The desktop session cannot start."""


def wait_for_display(number: int = DISPLAY_NUMBER, timeout: float = X_WAIT_SECONDS) -> None:
    """Until the X server accepts connections on its abstract socket (this namespace's)."""
    address = f"\0/tmp/.X11-unix/X{number}"
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(address)
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise SessionError(f"display :{number} did not come up within {timeout:.0f} s")
        time.sleep(0.05)


def wait_for_http(
    url: str, timeout: float = LAB_WAIT_SECONDS, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise SessionError(f"the Jupyter server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SessionError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.1)


def lab_url_file(paths: DesktopPaths) -> Path:
    return paths.user_dir / LAB_URL_FILE


def open_lab(paths: DesktopPaths) -> subprocess.Popen:
    """Chromium on JupyterLab (the URL, with its token, is in a file only the user reads)."""
    url = lab_url_file(paths).read_text().strip()
    profile = Path.home() / ".config" / "enclave-chromium"
    profile.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            "chromium",
            *CHROMIUM_FLAGS,
            # A Kubernetes pod adds --no-sandbox (enclave.kubernetes.desktop says why).
            *os.environ.get(EXTRA_FLAGS_ENV, "").split(),
            f"--user-data-dir={profile}",
            f"--app={url}",
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.paths = DesktopPaths(Path(args.runtime))
        self.children: list[subprocess.Popen] = []

    @property
    def display(self) -> int:
        return int(self.args.display)

    def environment(self) -> dict[str, str]:
        policy = Path(self.args.policy)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JUPYTERHUB_", "JPY_")) and k != "DBUS_SESSION_BUS_ADDRESS"
        }
        env.update(
            DISPLAY=display_name(self.display),
            XAUTHORITY=str(self.paths.user_xauthority),
            XDG_RUNTIME_DIR=str(self.paths.user_dir),
            XDG_CONFIG_DIRS=f"{policy / 'xdg'}:/etc/xdg",
            XDG_DATA_DIRS=f"{policy / 'share'}:/usr/local/share:/usr/share",
            XDG_CURRENT_DESKTOP="XFCE",
            NO_AT_BRIDGE="1",
        )
        return env

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.children.append(proc)
        return proc

    def run(self) -> int:
        wait_for_display(self.display)
        env = self.environment()
        os.environ.update(env)
        bus = subprocess.run(
            ["dbus-daemon", "--session", "--fork", "--print-address=1", "--print-pid=1"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout.split()
        env["DBUS_SESSION_BUS_ADDRESS"] = bus[0]
        self.bus_pid = int(bus[1])
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = bus[0]
        lab = self.start_lab(env)
        self.start(["xfwm4", "--compositor=off"], env)
        self.start(["xfce4-panel", "--disable-wm-check"], env)
        self.start(["xfdesktop", "--disable-wm-check"], env)
        wait_for_http(f"http://127.0.0.1:{self.args.lab_port}/api", proc=lab)
        # Closed, it opens again from the panel's JupyterLab launcher.
        self.children.append(open_lab(self.paths))
        log.info("desktop session ready")
        while True:
            if lab.poll() is not None:
                log.error("the Jupyter server exited with status %s", lab.returncode)
                return 1
            time.sleep(1)

    def start_lab(self, env: dict[str, str]) -> subprocess.Popen:
        token = secrets.token_urlsafe(32)
        port = self.args.lab_port
        url = f"http://127.0.0.1:{port}/lab?token={token}"
        path = lab_url_file(self.paths)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(url + "\n")
        argv = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--port-retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={Path.home()}",
            "--ServerApp.allow_remote_access=False",
            *self.args.lab_args,  # the profile's (terminals, culling) and the lab policy
        ]
        return self.start(argv, env)

    def stop(self) -> None:
        for proc in reversed(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        if getattr(self, "bus_pid", None):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.bus_pid, signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--policy",
        default=os.environ.get("ENCLAVE_DESKTOP_POLICY"),
        help="the root-owned desktop policy folder (default: $ENCLAVE_DESKTOP_POLICY)",
    )
    parser.add_argument(
        "--runtime",
        default=os.environ.get("ENCLAVE_DESKTOP_RUNTIME"),
        help="the session's runtime folder (default: $ENCLAVE_DESKTOP_RUNTIME)",
    )
    parser.add_argument("--lab-port", type=int, default=8889)
    parser.add_argument("--display", type=int, default=DISPLAY_NUMBER, help=argparse.SUPPRESS)
    parser.add_argument("--terminal", action="store_true", help="offer a terminal")
    parser.add_argument("--open-lab", action="store_true", help="only open JupyterLab again")
    parser.add_argument("lab_args", nargs="*", help="further options for the Jupyter server")
    args = parser.parse_args(argv)
    if not args.runtime or (not args.policy and not args.open_lab):
        parser.error("give --runtime and --policy (or set ENCLAVE_DESKTOP_RUNTIME/_POLICY)")
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s desktop-session] %(message)s"
    )
    if args.open_lab:
        open_lab(DesktopPaths(Path(args.runtime)))
        return
    session = Session(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sys.exit(session.run())
    except SessionError as exc:
        sys.exit(f"error: {exc}")
    finally:
        session.stop()


if __name__ == "__main__":
    main()
