"""Desktop sessions on a real hub: only the desktop faces outward, only pixels leave.

One hub for the module. A researcher's default session is a desktop; a student starts one on
request. Everything the browser could use to take data (the contents, kernels and sessions
APIs, JupyterLab, files, nbconvert, terminals) answers 403; the desktop's pixels arrive over
the RFB websocket through the hub's proxy, read here by a small RFB client as noVNC would;
the clipboard is tried in both directions with that client and ``xclip`` inside the desktop.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import catalog_folder, cleanup_everything, start_hub, stop_hub
from .rfbclient import EXTENDED_DESKTOP_SIZE, RAW, RfbClient

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

RESEARCHER, STUDENT = "rita", "stan"
DESKTOP_DATASET, NOTEBOOK_DATASET = "chest-ct", "teaching-ct"
#: What a desktop session's server answers 403 to: every way a browser could take bytes.
REFUSED_PATHS = (
    "api/contents",
    "api/contents/datasets",
    "api/kernels",
    "api/sessions",
    "api/terminals",
    "lab",
    "lab/tree/datasets",
    "tree",
    "files/datasets",
    "view/datasets",
    "nbconvert/html/x.ipynb",
    "terminals/websocket/1",
    "api",
    "api/status",
    "static/lab/index.html",
)


@pytest.fixture(scope="module")
def hub(enclave_state, tmp_path_factory):
    state_dir, settings, mnemonics = enclave_state
    from catalog.db import resolve_database_url
    from catalog.service import open_catalog
    from enclave.custody import unseal
    from enclave.samples import make_sample_dataset

    settings.catalog_url = resolve_database_url(state_dir)
    key = unseal(state_dir, mnemonics)
    with open_catalog(settings.catalog_url) as catalog:
        versions = {}
        for name, seed in ((DESKTOP_DATASET, 1), (NOTEBOOK_DATASET, 2)):
            folder = make_sample_dataset(
                tmp_path_factory.mktemp(name), name=name, subjects=1, slices=4, size=32, seed=seed
            )
            versions[name] = catalog_folder(
                catalog, folder, name, key, state_dir / "store", description=name
            )
        catalog.grant(DESKTOP_DATASET, 1, group="researchers", actor="test")  # desktop mode
        catalog.grant(NOTEBOOK_DATASET, 1, group="researchers", mode="notebook", actor="test")
        catalog.grant(NOTEBOOK_DATASET, 1, group="students", mode="notebook", actor="test")
    running = start_hub(state_dir, settings, mnemonics)
    try:
        running.add_user(RESEARCHER, "researchers")
        running.add_user(STUDENT, "students")
        running.spawn(RESEARCHER)  # no kind given: a researcher's default, a desktop
        yield running
    finally:
        stop_hub(running)
        shutil.copyfile(running.log, Path(tempfile.gettempdir()) / "enclave-desktop-tests-hub.log")
        cleanup_everything(settings, [RESEARCHER, STUDENT])


def inside(hub, user: str, *argv: str, stdin: str | None = None, background: bool = False):
    """Run ``argv`` in ``user``'s namespace as the user, on their desktop's display."""
    from enclave.desktop.layout import DesktopPaths
    from enclave.netns import namespace_name
    from enclave.workspace.accounts import lookup_account

    account = lookup_account(user, hub.settings.unix_prefix)
    assert account is not None
    runtime = DesktopPaths.for_user(account.name)
    namespace = namespace_name(user, hub.settings.namespace_prefix)
    command = [
        "nsenter",
        f"--net=/run/netns/{namespace}",
        "setpriv",
        f"--reuid={account.uid}",
        f"--regid={account.gid}",
        "--clear-groups",
        "env",
        "DISPLAY=:1",
        f"XAUTHORITY={runtime.user_xauthority}",
        f"HOME={account.home}",
        *argv,
    ]
    if background:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, text=True)
        assert proc.stdin is not None
        proc.stdin.write(stdin or "")
        proc.stdin.close()
        return proc
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)


def rfb_for(hub, user: str) -> RfbClient:
    """An RFB client through the hub's proxy, with the user's hub token."""
    url = hub.url.replace("http", "ws", 1) + f"/user/{user}/websockify"
    return RfbClient(url, {"Authorization": f"token {hub.tokens[user]}"})


def processes(match: str = "") -> list[tuple[int, str]]:
    """(pid, owner) of processes whose command line contains ``match`` (every one for "").

    Servers forked by the zygote keep the zygote's command line, so a session's Python
    processes are told apart by their owner, not their arguments."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            uid = os.stat(entry.path).st_uid
        except OSError:
            continue
        if match in cmdline and cmdline:
            try:
                found.append((int(entry.name), pwd.getpwuid(uid).pw_name))
            except KeyError:
                continue
    return found


def owned_by(name: str) -> list[int]:
    return [pid for pid, owner in processes() if owner == name]


# ----------------------------------------------------------------- only the desktop faces outward


def test_a_researchers_default_session_is_a_desktop_that_serves_only_its_page(hub):
    with hub.as_user(RESEARCHER) as client:
        page = client.get(f"/user/{RESEARCHER}/")
        assert page.status_code == 200
        assert "static/desktop/desktop.js" in page.text
        for path in ("static/desktop/desktop.js", "static/novnc/core/rfb.js"):
            assert client.get(f"/user/{RESEARCHER}/{path}").status_code == 200, path
        for path in REFUSED_PATHS:
            for method in ("GET", "POST", "PUT", "DELETE"):
                reply = client.request(method, f"/user/{RESEARCHER}/{path}")
                assert reply.status_code == 403, (method, path, reply.status_code)
                assert "only the desktop is served here" in reply.text, (method, path)


def test_a_spawn_asking_for_an_unknown_kind_of_session_is_refused(hub):
    with hub.admin() as api:
        for body in ({"kind": "browser"}, {"kind": "desktop", "image": "anything"}):
            reply = api.post(f"/users/{STUDENT}/server", json=body)
            assert reply.status_code == 400, (body, reply.status_code, reply.text)
        assert api.get(f"/users/{STUDENT}").json()["servers"] == {}


def test_nobody_else_gets_the_desktop_or_its_files(hub):
    import httpx

    base = f"{hub.url}/user/{RESEARCHER}"
    assert httpx.get(f"{base}/static/novnc/core/rfb.js").status_code == 403
    assert httpx.get(f"{base}/api/contents").status_code == 403
    page = httpx.get(f"{base}/", follow_redirects=False)
    assert (
        page.status_code in (302, 303) and "/hub/api/oauth2/authorize" in page.headers["location"]
    )
    with hub.as_user(STUDENT) as other:
        assert other.get(f"/user/{RESEARCHER}/").status_code in (403, 302)
        assert other.get(f"/user/{RESEARCHER}/static/novnc/core/rfb.js").status_code == 403


def test_the_vnc_server_and_gateway_run_as_the_display_account_not_the_user(hub):
    from enclave.workspace.accounts import display_prefix, unix_name

    user = unix_name(RESEARCHER, hub.settings.unix_prefix)
    display = unix_name(RESEARCHER, display_prefix(hub.settings.unix_prefix))
    vnc = [owner for pid, owner in processes(f"/run/enclave/desktops/{user}/vnc/Xauthority")]
    assert vnc == [display]
    # The display account runs exactly two processes: the VNC server and the gateway, which
    # holds the hub's token for this server.
    display_processes = owned_by(display)
    assert len(display_processes) == 2
    environs = {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in display_processes}
    assert sum(b"JUPYTERHUB_API_TOKEN=" in e for e in environs.values()) == 1
    # Nothing the user runs holds it: their programs cannot act as the server towards the hub.
    mine = owned_by(user)
    assert len(mine) >= 5  # the desktop: session, bus, window manager, panel, Jupyter, Chromium
    for pid in mine:
        try:
            assert b"JUPYTERHUB_API_TOKEN" not in Path(f"/proc/{pid}/environ").read_bytes()
        except FileNotFoundError:
            continue
    # The user cannot signal the VNC server nor open its RFB socket.
    vnc_pid = next(pid for pid, owner in processes("Xvnc :1") if owner == display)
    done = inside(hub, RESEARCHER, "kill", "-TERM", str(vnc_pid))
    assert done.returncode != 0 and "not permitted" in done.stderr.lower()
    probe = inside(
        hub,
        RESEARCHER,
        "python3",
        "-c",
        "import socket,sys; s=socket.socket(socket.AF_UNIX);"
        f"s.connect('/run/enclave/desktops/{user}/vnc/rfb.sock')",
    )
    assert probe.returncode != 0 and "Permission denied" in probe.stderr


def test_jupyterlab_inside_answers_only_on_the_namespaces_loopback(hub):
    from enclave.desktop.layout import DesktopPaths
    from enclave.netns import NamespaceManager
    from enclave.workspace.accounts import unix_name

    lab_url = DesktopPaths.for_user(unix_name(RESEARCHER, hub.settings.unix_prefix)).user_dir
    probe = (  # the desktop's Jupyter server may still be starting: ask for up to 60 s
        "import time, urllib.request\n"
        f"url = open({str(lab_url / 'lab-url')!r}).read().strip()\n"
        "for _ in range(600):\n"
        "    try:\n"
        "        print(urllib.request.urlopen(url.replace('/lab?', '/api/status?')).status)\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
    )
    lab = inside(hub, RESEARCHER, "python3", "-c", probe)
    assert lab.stdout.strip() == "200", lab.stderr
    # From the host, nothing answers on the lab's port at the namespace's address.
    network = NamespaceManager(hub.settings.netns_config()).lookup(RESEARCHER)
    assert network is not None
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((network.guest_address, 8889)) != 0


def test_a_desktop_session_mounts_every_granted_version(hub):
    found = inside(
        hub,
        RESEARCHER,
        "sh",
        "-c",
        'ls "$HOME/datasets" && cat "$HOME/datasets/.enclave-grants.json"',
    )
    names = found.stdout.split("{", 1)[0].split()
    assert names == sorted([DESKTOP_DATASET, NOTEBOOK_DATASET])
    grants = json.loads("{" + found.stdout.split("{", 1)[1])["grants"]
    assert {(g["name"], g["mode"]) for g in grants} == {
        (DESKTOP_DATASET, "desktop"),
        (NOTEBOOK_DATASET, "notebook"),
    }


# ----------------------------------------------------------------------------- pixels, only


def test_the_desktop_arrives_as_pixels_and_follows_the_window_size(hub):
    async def check() -> None:
        rfb = rfb_for(hub, RESEARCHER)
        await rfb.connect(encodings=(RAW, EXTENDED_DESKTOP_SIZE))
        frame = await rfb.full_frame()
        assert frame.shape[:2] == (rfb.height, rfb.width) and frame.std() > 0  # not a blank
        # What noVNC sends when the browser window changes size: SetDesktopSize.
        await rfb.set_desktop_size(1024, 700)
        deadline = time.monotonic() + 10
        while (rfb.width, rfb.height) != (1024, 700) and time.monotonic() < deadline:
            await rfb.request_frame(True)
            await rfb.read_until_update(2)
        assert (rfb.width, rfb.height) == (1024, 700)
        await rfb.close()

    asyncio.run(check())


def test_a_dropped_connection_can_connect_again(hub):
    async def twice() -> None:
        for _ in range(2):
            rfb = rfb_for(hub, RESEARCHER)
            await rfb.connect()
            assert (await rfb.full_frame()).std() > 0
            await rfb.close()

    asyncio.run(twice())


def test_the_clipboard_is_off_in_both_directions(hub):
    async def check() -> tuple[list[bytes], str, str]:
        rfb = rfb_for(hub, RESEARCHER)
        await rfb.connect()
        await rfb.full_frame()
        owners = [
            inside(hub, RESEARCHER, "xclip", "-selection", sel, "-i", "-loops", "0",
                   stdin=f"{sel.upper()}-FROM-THE-DESKTOP", background=True)
            for sel in ("clipboard", "primary")
        ]  # fmt: skip
        await rfb.request_frame(True)
        await rfb.listen(3)
        await rfb.client_cut_text(b"PASTED-FROM-THE-BROWSER")
        await rfb.listen(1)
        clipboard = inside(hub, RESEARCHER, "xclip", "-selection", "clipboard", "-o").stdout
        primary = inside(hub, RESEARCHER, "xclip", "-selection", "primary", "-o").stdout
        for owner in owners:
            owner.kill()
        await rfb.close()
        return rfb.server_cut_texts, clipboard, primary

    sent, clipboard, primary = asyncio.run(check())
    assert sent == []  # the desktop's clipboard never reached the client
    assert clipboard == "CLIPBOARD-FROM-THE-DESKTOP"  # the browser's paste never arrived
    assert primary == "PRIMARY-FROM-THE-DESKTOP"
    assert "dropped 1 clipboard message(s) from the browser" in (
        Path(hub.settings.hub_dir / "server-logs" / f"{RESEARCHER}.log").read_text()
    )


def test_the_clipboard_probe_sees_a_clipboard_when_a_vnc_server_sends_one(tmp_path):
    """The control for the test above: a bare Xvnc with its default clipboard settings, the
    same RFB client and xclip: here the client does receive the desktop's clipboard."""
    from enclave.desktop.layout import DesktopPaths, new_cookie, xauthority_entry

    paths = DesktopPaths(tmp_path)
    paths.vnc_dir.mkdir()
    paths.vnc_xauthority.write_bytes(xauthority_entry(new_cookie(), 37))
    socket_path = tmp_path / "rfb.sock"
    vnc = subprocess.Popen(
        ["Xvnc", ":37", "-auth", str(paths.vnc_xauthority), "-rfbunixpath", str(socket_path),
         "-rfbport=-1", "-SecurityTypes=None", "-nolisten", "tcp", "-geometry", "320x200"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        received = asyncio.run(_bare_vnc_clipboard(socket_path, paths.vnc_xauthority))
        assert received == [b"CONTROL-CLIPBOARD"]
    finally:
        vnc.terminate()
        vnc.wait(10)


async def _bare_vnc_clipboard(socket_path: Path, xauthority: Path) -> list[bytes]:
    from .rfbclient import UnixRfbClient

    rfb = UnixRfbClient(str(socket_path), {})
    await rfb.connect()
    await rfb.full_frame()
    env = {**os.environ, "DISPLAY": ":37", "XAUTHORITY": str(xauthority)}
    owner = subprocess.Popen(
        ["xclip", "-selection", "clipboard", "-i", "-loops", "0"], stdin=subprocess.PIPE, env=env
    )
    assert owner.stdin is not None
    owner.stdin.write(b"CONTROL-CLIPBOARD")
    owner.stdin.close()
    await rfb.listen(3)
    owner.kill()
    await rfb.close()
    return rfb.server_cut_texts


# ------------------------------------------------------------------------- the sandbox applies


def test_a_students_desktop_runs_within_the_student_limits(hub):
    from enclave.workspace.accounts import display_prefix, unix_name
    from enclave.workspace.profiles import STUDENT as STUDENT_PROFILE

    hub.spawn(STUDENT, kind="desktop")
    try:
        display = unix_name(STUDENT, display_prefix(hub.settings.unix_prefix))
        user = unix_name(STUDENT, hub.settings.unix_prefix)
        desktop = owned_by(display) + owned_by(user)
        groups = {Path(f"/proc/{pid}/cgroup").read_text() for pid in desktop}
        assert len(groups) == 1  # one cgroup for the whole desktop
        cgroup = groups.pop().strip().split("::", 1)[1]
        memory = Path(f"/sys/fs/cgroup{cgroup}/memory.max")
        if memory.exists():  # cgroup v2 delegated here; rlimits otherwise (see isolation)
            assert int(memory.read_text()) == STUDENT_PROFILE.memory_max
        # A student's desktop has no terminal launcher and only notebook-mode versions.
        listed = inside(hub, STUDENT, "sh", "-c", 'ls "$HOME/datasets"').stdout.split()
        assert listed == [NOTEBOOK_DATASET]
    finally:
        hub.stop(STUDENT)


def test_stopping_a_desktop_leaves_no_process_and_no_runtime_folder(hub):
    from enclave.desktop.layout import DesktopPaths
    from enclave.workspace.accounts import unix_name

    hub.spawn(STUDENT, kind="desktop")
    user = unix_name(STUDENT, hub.settings.unix_prefix)
    assert DesktopPaths.for_user(user).root.exists()
    hub.stop(STUDENT)
    assert not DesktopPaths.for_user(user).root.exists()
    assert not [p for p, owner in processes() if owner.endswith(STUDENT)]
