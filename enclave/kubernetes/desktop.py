"""Desktop sessions on Kubernetes: the gateway and the desktop as two containers of one pod.

The pieces are those of a local desktop session (``enclave.desktop``); what differs is who
keeps them apart. On one machine the spawner (root) gives the gateway a display account and
prepares the runtime folder; in a pod, containers do:

* the **gateway** container (``gateway``, uid :data:`DISPLAY_UID`, not the user's) runs
  ``python -m enclave.kubernetes.desktop``: it writes the session's X cookie, starts Xvnc with
  the enforced parameters of ``enclave.desktop.layout`` (clipboard off in both directions; the
  code and its parameters are in the image, root-owned, on a read-only root filesystem) and
  serves the desktop page, noVNC and the filtered RFB websocket on the pod's only port, named
  ``notebook-port`` (the one the hub and the chart's policy reach). It alone has the hub's
  token (the ``JUPYTERHUB_*`` environment). Its RFB socket is in an ``emptyDir`` mounted in it
  alone (:data:`VNC_VOLUME`);
* the **desktop** container (named ``notebook``, as KubeSpawner expects of the main
  container: its end is the server's end) runs ``enclave.desktop.session`` as the user: the
  window manager, the panel, a Jupyter server on the pod's loopback with a token, Chromium on
  it. It mounts the home, the datasets (read-only) and the one folder both share
  (:data:`X11_VOLUME`: the user's copy of the X cookie and the session's runtime files). It has
  no port and no hub token.

Both containers share the pod's network namespace, so the desktop's X clients reach Xvnc's
abstract socket, and the user's programs reach nothing the gateway does not also reach
(the pod's NetworkPolicy is that of every user pod). The containers do not share a process
namespace, so the user cannot signal the gateway or Xvnc.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from enclave.desktop.layout import DesktopPaths, new_cookie, xauthority_entry

#: Where both containers see the session's runtime folder (the layout of enclave.desktop).
RUNTIME = "/run/enclave/desktop"
#: The gateway's own folder (RFB socket, its cookie): mounted in the gateway container only.
VNC_VOLUME = "desktop-vnc"
#: The folder both containers mount: the user's X cookie, the Jupyter URL file.
X11_VOLUME = "desktop-x11"
#: The gateway's /tmp (Xvnc's compiled keymaps).
GATEWAY_TMP_VOLUME = "gateway-tmp"
GATEWAY_CONTAINER = "gateway"
#: The display account of images/user (not the notebook user, not the loader).
DISPLAY_UID = 10002
#: Root-owned desktop policy (panel, window manager), one folder per profile (images/user).
DESKTOP_POLICY_DIR = "/etc/enclave/desktop"
#: The Jupyter server inside the desktop, on the pod's loopback.
LAB_PORT = 8889
#: Chromium's own sandbox needs user namespaces, which the runtime's default seccomp profile
#: refuses to an unprivileged container; the container (non-root, no capabilities, seccomp)
#: is the boundary instead.
CHROMIUM_POD_FLAGS = "--no-sandbox"


def runtime_paths() -> DesktopPaths:
    return DesktopPaths(Path(RUNTIME))


def desktop_volumes() -> dict[str, dict[str, Any]]:
    """The desktop pod's extra volumes (all emptyDir: nothing outlives the pod)."""
    return {
        VNC_VOLUME: {"name": VNC_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        X11_VOLUME: {"name": X11_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        GATEWAY_TMP_VOLUME: {"name": GATEWAY_TMP_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}},
    }


def desktop_mount() -> dict[str, Any]:
    """What the desktop container mounts of the gateway's: the shared folder only."""
    return {"name": X11_VOLUME, "mountPath": str(runtime_paths().user_dir)}


def session_args(profile: Any, lab_args: list[str]) -> list[str]:
    """The desktop container's command (``enclave.desktop.session`` as on one machine)."""
    return [
        "python", "-m", "enclave.desktop.session", "--lab-port", str(LAB_PORT),
        *(["--terminal"] if profile.terminals else []), "--", *lab_args,
    ]  # fmt: skip


def session_env(profile_name: str) -> dict[str, str]:
    return {
        "ENCLAVE_DESKTOP_RUNTIME": RUNTIME,
        "ENCLAVE_DESKTOP_POLICY": f"{DESKTOP_POLICY_DIR}/{profile_name}",
        "ENCLAVE_SESSION_KIND": "desktop",
        "ENCLAVE_CHROMIUM_EXTRA_FLAGS": CHROMIUM_POD_FLAGS,
    }


def gateway_container(
    *,
    image: str,
    pull_policy: str,
    port: int,
    user_gid: int,
    hub_env: dict[str, str],
    security_context: dict[str, Any],
) -> dict[str, Any]:
    """The gateway container: the only port of a desktop pod, the only holder of the token."""
    paths = runtime_paths()
    env = {
        **hub_env,
        "HOME": str(paths.vnc_dir),
        "PYTHONNOUSERSITE": "1",
        "PATH": "/opt/enclave/bin:/usr/local/bin:/usr/bin:/bin",
    }
    return {
        "name": GATEWAY_CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": [
            "python",
            "-m",
            "enclave.kubernetes.desktop",
            "--user-gid",
            str(user_gid),
            "--",
            "--ip",
            "0.0.0.0",
            "--port",
            str(port),
            "--runtime",
            RUNTIME,
        ],  # fmt: skip
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "ports": [{"name": "notebook-port", "containerPort": port, "protocol": "TCP"}],
        "workingDir": str(paths.vnc_dir),
        "resources": {
            "limits": {"cpu": "1", "memory": "1Gi"},
            "requests": {"cpu": "100m", "memory": "128Mi"},
        },
        "volumeMounts": [
            {"name": VNC_VOLUME, "mountPath": str(paths.vnc_dir)},
            {"name": X11_VOLUME, "mountPath": str(paths.user_dir)},
            {"name": GATEWAY_TMP_VOLUME, "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": security_context,
    }


def _write(path: Path, data: bytes, mode: int, gid: int) -> None:
    path.unlink(missing_ok=True)  # a restarted gateway starts over
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, -1, gid)  # a group this process is in (the pod's fsGroup)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def prepare_pod_runtime(paths: DesktopPaths, user_gid: int) -> DesktopPaths:
    """In the gateway container: a new X cookie, the gateway's copy private to it, the
    user's copy readable by the user's group (and nothing else in the shared folder)."""
    cookie = xauthority_entry(new_cookie())
    os.chmod(paths.vnc_dir, 0o700)
    paths.rfb_socket.unlink(missing_ok=True)
    _write(paths.vnc_xauthority, cookie, 0o600, os.getgid())
    _write(paths.user_xauthority, cookie, 0o640, user_gid)
    return paths


def main(argv: list[str] | None = None) -> None:
    """``python -m enclave.kubernetes.desktop --user-gid GID -- GATEWAY-ARGS``."""
    from enclave.desktop import gateway

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user-gid", type=int, required=True)
    parser.add_argument("gateway_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    rest = list(args.gateway_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        prepare_pod_runtime(runtime_paths(), args.user_gid)
    except OSError as exc:
        sys.exit(f"error: the desktop's runtime folder {RUNTIME}: {exc}")
    gateway.main(rest)


if __name__ == "__main__":
    main()
