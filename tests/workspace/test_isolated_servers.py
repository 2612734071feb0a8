"""Isolated user servers on a real hub: egress, no download, read-only datasets, separation.

One hub for the module; a researcher (alice) granted ``lung-ct`` through the
``researchers`` group, a student (sam) with nothing granted. Every check that matters runs
inside the user's own server, in a kernel, exactly where a user's code would run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from .conftest import Kernel, catalog_folder, cleanup_everything, free_port, start_hub, stop_hub

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

RESEARCHER, STUDENT = "alice", "sam"
DATASET = "lung-ct"  # granted for notebooks
DESKTOP_DATASET = "brain-ct"  # granted desktop only: never in a notebook session


@pytest.fixture(scope="module")
def hub(enclave_state, tmp_path_factory):
    state_dir, settings, mnemonics = enclave_state
    from catalog.db import resolve_database_url
    from catalog.service import open_catalog
    from enclave.custody import unseal
    from enclave.samples import make_sample_dataset

    settings.catalog_url = resolve_database_url(state_dir)
    key = unseal(state_dir, mnemonics)
    folder = make_sample_dataset(
        tmp_path_factory.mktemp("sample"), name=DATASET, subjects=1, slices=4, size=32
    )
    with open_catalog(settings.catalog_url) as catalog:
        version = catalog_folder(
            catalog,
            folder,
            DATASET,
            key,
            state_dir / "store",
            description="Low-dose chest CT, one subject, for the tests",
        )
        catalog.grant(DATASET, version.version, group="researchers", mode="notebook", actor="test")
        other = make_sample_dataset(
            tmp_path_factory.mktemp("desktop-only"),
            name=DESKTOP_DATASET,
            subjects=1,
            slices=2,
            size=16,
            seed=7,
        )
        desktop_only = catalog_folder(
            catalog, other, DESKTOP_DATASET, key, state_dir / "store", description="Desktop only"
        )
        catalog.grant(DESKTOP_DATASET, desktop_only.version, group="researchers", actor="test")
    running = start_hub(state_dir, settings, mnemonics)
    try:
        running.add_user(RESEARCHER, "researchers")
        running.add_user(STUDENT, "students")
        running.spawn(RESEARCHER, kind="notebook")  # a researcher's default is a desktop
        running.spawn(STUDENT)
        running.sample = folder
        running.version = version.version
        running.content_hash = version.content_hash
        yield running
    finally:
        stop_hub(running)
        shutil.copyfile(
            running.log, Path(tempfile.gettempdir()) / "enclave-workspace-tests-hub.log"
        )
        cleanup_everything(settings, [RESEARCHER, STUDENT])


@pytest.fixture(scope="module")
def alice(hub):
    return Kernel(hub, RESEARCHER)


@pytest.fixture(scope="module")
def sam(hub):
    return Kernel(hub, STUDENT)


def connect_code(host: str, port: int, timeout: float = 2.0) -> str:
    """Kernel code printing 'open' or the error name of a TCP connect."""
    return (
        "import socket\n"
        "s = socket.socket()\n"
        f"s.settimeout({timeout})\n"
        "try:\n"
        f"    s.connect(({host!r}, {port})); print('open')\n"
        "except OSError as e:\n"
        "    print('blocked', type(e).__name__, e.errno)\n"
    )


class TcpListener:
    """A TCP service on the host (or in a test host namespace) that accepts and says hello."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.sendall(b"hello")
            conn.close()

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------ the hub, and nothing else


def test_server_runs_as_its_own_unprivileged_user(hub, alice):
    from enclave.workspace.accounts import lookup_account

    account = lookup_account(RESEARCHER, hub.settings.unix_prefix)
    out = alice.run(
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])\n"
    )
    ids, caps = out.split("\n")[:2]
    assert ids == f"{account.uid} {account.gid}"
    assert int(caps, 16) == 0


def test_what_a_server_logs_goes_to_its_users_log_not_the_hub_log(hub, alice):
    """A user can make their server log text of their choosing (here, a kernel name in a
    request body, which the proxy's access log does not see): it lands in a root-only
    per-user log, never in the hub's log where it could pass as the hub's."""
    import stat
    import time
    import uuid

    marker = f"forged-hub-line-{uuid.uuid4().hex}"
    with hub.as_user(RESEARCHER) as client:
        reply = client.post(f"/user/{RESEARCHER}/api/kernels", json={"name": marker})
        assert reply.status_code in (400, 404, 500), reply.text
    folder = Path(hub.settings.hub_dir) / "server-logs"
    log = folder / f"{RESEARCHER}.log"
    deadline = time.monotonic() + 10
    while marker not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"{marker} not in {log}"
        time.sleep(0.1)
    assert "server of alice starting" in log.read_text()
    assert marker not in (Path(hub.settings.hub_dir) / "hub.log").read_text()
    for path, mode in ((folder, 0o700), (log, 0o600)):
        info = path.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, mode)


def test_the_hub_answers_from_inside(alice):
    out = alice.run(
        "import os, json, urllib.request\n"
        "r = urllib.request.urlopen(os.environ['JUPYTERHUB_API_URL'] + '/', timeout=5)\n"
        "print(r.status, json.load(r)['version'])\n"
    )
    status, version = out.split()
    assert status == "200" and version.startswith("6.")


@pytest.fixture
def test_host():
    """Another machine on the network: a namespace with its own veth and a TCP service."""
    name = f"enctesthost-{os.getpid() % 10000}"
    host_if, addr_host, addr_peer = f"encth{os.getpid() % 10000}", "10.218.7.1", "10.218.7.2"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name],
            check=True,
        )
        subprocess.run(["ip", "addr", "add", f"{addr_host}/30", "dev", host_if], check=True)
        subprocess.run(["ip", "link", "set", host_if, "up"], check=True)
        for cmd in (
            ["ip", "addr", "add", f"{addr_peer}/30", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
            ["ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(["ip", "-n", name, *cmd[1:]], check=True)
        port = free_port()
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                name,
                "python3",
                "-c",
                "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                f"s.bind(('0.0.0.0',{port}));s.listen()\n"
                "while True:\n c,_=s.accept();c.sendall(b'hello');c.close()\n",
            ]
        )
        try:
            for _ in range(50):  # the service is up and reachable from the host itself
                try:
                    with socket.create_connection((addr_peer, port), timeout=0.5) as c:
                        assert c.recv(5) == b"hello"
                    break
                except OSError:
                    import time

                    time.sleep(0.1)
            else:
                raise AssertionError("the test host's service never came up")
            yield addr_peer, port
        finally:
            server.kill()
            server.wait()
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_another_host_on_the_network_is_unreachable(alice, test_host):
    address, port = test_host
    out = alice.run(connect_code(address, port))
    assert out.startswith("blocked"), out


def test_host_services_and_loopback_are_unreachable(hub, alice):
    listener = TcpListener("0.0.0.0")
    try:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=2) as c:
            assert c.recv(5) == b"hello"  # the service is there for the host
        service_address = str(hub.settings.netns_config().service_address)
        for host in (service_address, "127.0.0.1"):
            out = alice.run(connect_code(host, listener.port))
            assert out.startswith("blocked"), (host, out)
        # The host end of the user's own veth (its gateway) is no way out either.
        gateway = alice.run("import subprocess\nprint(open('/proc/net/route').read())")
        assert "00000000" not in [
            line.split()[1] for line in gateway.splitlines()[1:] if line.split()
        ]
    finally:
        listener.close()


def test_dns_does_not_resolve_and_no_resolver_answers(alice):
    out = alice.run(
        "import socket\n"
        "try:\n"
        "    socket.getaddrinfo('example.org', 443); print('resolved')\n"
        "except OSError as e:\n"
        "    print('no-dns', type(e).__name__)\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n"
        "try:\n"
        "    s.sendto(b'\\x00' * 12, ('1.1.1.1', 53)); s.recv(512); print('answered')\n"
        "except OSError as e:\n"
        "    print('silent', type(e).__name__)\n"
    )
    assert "resolved" not in out and "answered" not in out, out


def test_one_user_cannot_reach_another_users_server(hub, sam):
    with hub.admin() as api:
        alice_url = api.get(f"/users/{RESEARCHER}").json()["servers"][""]["url"]
    from enclave.netns import namespace_name

    net = hub.settings.netns_config()
    guest = None
    out = subprocess.run(
        [
            "ip",
            "-n",
            namespace_name(RESEARCHER, net.namespace_prefix),
            "-o",
            "-4",
            "addr",
            "show",
            "eth0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    guest = out.stdout.split()[3].split("/")[0]
    result = sam.run(connect_code(guest, net.server_port))
    assert result.startswith("blocked"), result
    # Through the proxy, with sam's own token, alice's server refuses him.
    with hub.as_user(STUDENT) as client:
        reply = client.get(f"{alice_url}api/contents")
    assert reply.status_code in (302, 403, 404), reply.status_code


# --------------------------------------------------------------------------- authentication


def test_unauthenticated_requests_are_refused(hub):
    for path in (
        f"/user/{RESEARCHER}/api/contents",
        f"/user/{RESEARCHER}/files/datasets",
        "/hub/api/users",
        f"/user/{RESEARCHER}/api/kernels",
    ):
        reply = httpx.get(hub.url + path, timeout=10, follow_redirects=False)
        assert reply.status_code in (302, 401, 403), (path, reply.status_code)
        if reply.status_code == 302:
            assert (
                "/hub/login" in reply.headers["location"] or "oauth2" in reply.headers["location"]
            )


# --------------------------------------------------------------------------- datasets


def dataset_dir(version: int) -> str:
    return f"datasets/{DATASET}/{version}"


def test_granted_dataset_is_mounted_read_only_with_the_real_content(hub, alice):
    path = dataset_dir(hub.version)
    expected = sorted(
        p.relative_to(hub.sample).as_posix() for p in hub.sample.rglob("*") if p.is_file()
    )
    out = alice.run(
        "import os, json, hashlib\n"
        f"root = os.path.expanduser('~/{path}')\n"
        "files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)\n"
        "csv = hashlib.sha256(open(os.path.join(root, 'tables/clinical.csv'), 'rb').read()).hexdigest()\n"
        "ro = bool(os.statvfs(root).f_flag & os.ST_RDONLY)\n"
        "info = json.load(open(os.path.join(root, '.enclave-version.json')))\n"
        "errors = []\n"
        "for attempt in ('new.txt', 'tables/clinical.csv'):\n"
        "    try:\n"
        "        open(os.path.join(root, attempt), 'a').write('x'); errors.append('written')\n"
        "    except OSError as e:\n"
        "        errors.append(e.errno)\n"
        "try:\n"
        "    os.rename(os.path.join(root, 'tables'), os.path.join(root, 't2')); errors.append('renamed')\n"
        "except OSError as e:\n"
        "    errors.append(e.errno)\n"
        "print(json.dumps({'files': files, 'csv': csv, 'ro': ro, 'errors': errors, 'info': info}))\n"
    )
    report = json.loads(out)
    # The provider's files, plus the hub's version record (the catalog's hash, for lineage).
    assert report["files"] == sorted([*expected, ".enclave-version.json"])
    assert report["info"]["content_hash"] == hub.content_hash
    assert "expires_at" not in report["info"]  # shared by all grantees: no one user's expiry
    assert (
        report["csv"]
        == __import__("hashlib")
        .sha256((hub.sample / "tables/clinical.csv").read_bytes())
        .hexdigest()
    )
    assert report["ro"] is True
    assert "written" not in report["errors"] and "renamed" not in report["errors"]
    assert set(report["errors"]) <= {30, 13, 1}  # EROFS, EACCES, EPERM


def test_outputs_folder_is_writable(alice):
    out = alice.run(
        "import os\np = os.path.expanduser('~/outputs/model.txt')\nopen(p, 'w').write('ok')\n"
        "print(open(p).read())\n"
    )
    assert out.strip() == "ok"


def test_first_spawn_copies_the_example_notebooks_into_the_home(alice):
    out = alice.run(
        "import os, json\n"
        "root = os.path.expanduser('~/examples')\n"
        "st = os.stat(root)\n"
        "print(json.dumps({'files': sorted(os.listdir(root)), 'mine': st.st_uid == os.getuid()}))\n"
    )
    report = json.loads(out)
    assert "segmentation-unet.ipynb" in report["files"]
    assert "outcome-classification.ipynb" in report["files"]
    assert report["mine"] is True  # the user's own copy to edit


def test_student_sees_no_researcher_dataset(hub, sam):
    out = sam.run(
        "import os\n"
        "print([n for n in os.listdir(os.path.expanduser('~/datasets')) if n[0] != '.'])\n"
        "for p in [os.environ['HOME'].replace('" + STUDENT + "', '" + RESEARCHER + "'),\n"
        f"          {hub.settings.plaintext_root!r}, {str(hub.state_dir)!r}]:\n"
        "    try:\n"
        "        os.listdir(p); print('listed', p)\n"
        "    except OSError as e:\n"
        "        print('denied', e.errno)\n"
    )
    lines = out.strip().splitlines()
    assert lines[0] == "[]"
    assert all(line.startswith("denied") for line in lines[1:]), out
    with hub.as_user(STUDENT) as client:
        listing = client.get(f"/user/{STUDENT}/api/contents/datasets")
    assert listing.status_code == 200 and listing.json()["content"] == []


# --------------------------------------------------------------------------- no download


def test_files_and_nbconvert_downloads_of_a_dataset_file_are_refused(hub):
    path = f"{dataset_dir(hub.version)}/tables/clinical.csv"
    with hub.as_user(RESEARCHER) as client:
        # The file is there and the token is good: its folder lists.
        listing = client.get(f"/user/{RESEARCHER}/api/contents/{dataset_dir(hub.version)}/tables")
        assert listing.status_code == 200
        assert "clinical.csv" in {item["name"] for item in listing.json()["content"]}
        refused = client.get(f"/user/{RESEARCHER}/files/{path}")
        assert refused.status_code == 403
        assert "Downloads are disabled in this enclave" in refused.text  # says why
        assert "subject_id" not in refused.text  # and shows none of the file
        assert client.get(f"/user/{RESEARCHER}/files/{path}?download=1").status_code == 403
        assert client.get(f"/user/{RESEARCHER}/view/{path}").status_code == 403
        nb = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        put = client.put(
            f"/user/{RESEARCHER}/api/contents/outputs/analysis.ipynb",
            json={"type": "notebook", "content": nb},
        )
        assert put.status_code in (200, 201), put.text
        for url in (
            f"/user/{RESEARCHER}/nbconvert/html/outputs/analysis.ipynb?download=true",
            f"/user/{RESEARCHER}/nbconvert/script/{path}?download=true",
            f"/user/{RESEARCHER}/api/nbconvert",
        ):
            assert client.get(url).status_code == 403, url
        post = client.post(f"/user/{RESEARCHER}/nbconvert/html", json={"content": nb})
        assert post.status_code == 403


def test_a_notebook_session_mounts_only_versions_granted_for_notebooks(hub, alice):
    listed = json.loads(
        alice.run(
            "import json, os; print(json.dumps(os.listdir(os.path.expanduser('~/datasets'))))"
        )
    )
    assert DATASET in listed and DESKTOP_DATASET not in listed
    out = alice.run("import enclave.data as ed; print(repr(ed.list_datasets()))")
    assert f"{DATASET} v{hub.version}" in out and "notebook" in out
    assert DESKTOP_DATASET not in out


def test_the_contents_api_never_returns_a_dataset_files_content(hub, alice):
    base = f"/user/{RESEARCHER}/api/contents"
    path = f"{dataset_dir(hub.version)}/tables/clinical.csv"
    alice.run(
        "import os\n"
        "home = os.path.expanduser('~')\n"
        "for name, target in (('link-file', 'datasets/" + DATASET + "/1/tables/clinical.csv'),\n"
        "                     ('link-dir', 'datasets/" + DATASET + "')):\n"
        "    p = os.path.join(home, 'outputs', name)\n"
        "    if not os.path.lexists(p): os.symlink(os.path.join(home, target), p)\n"
        "open(os.path.join(home, 'outputs', 'own.txt'), 'w').write('mine')\n"
    )
    with hub.as_user(RESEARCHER) as client:
        for url in (
            f"{base}/{path}",
            f"{base}/{path}?content=1&format=base64&type=file",
            f"{base}/{path.replace('/', '%2F')}",
            f"{base}/outputs/../{path}",
            f"{base}/outputs/link-file",
            f"{base}/outputs/link-dir/1/tables/clinical.csv",
            f"{base}/{path}/checkpoints",
        ):
            reply = client.get(url)
            assert reply.status_code in (403, 404), (url, reply.status_code)
            assert "subject_id" not in reply.text, url
        refused = client.get(f"{base}/{path}")
        assert refused.status_code == 403
        assert "not sent to the browser in a notebook session" in refused.text
        # A copy into the home, to read that instead, is refused too.
        copy = client.post(f"{base}/outputs", json={"copy_from": path})
        assert copy.status_code == 403, copy.text
        # Metadata stays: the file browser lists and shows sizes.
        meta = client.get(f"{base}/{path}?content=0")
        assert meta.status_code == 200 and meta.json()["content"] is None
        # The user's own files read as before.
        own = client.get(f"{base}/outputs/own.txt")
        assert own.status_code == 200 and own.json()["content"] == "mine"


def lab_page_config(hub, user: str) -> dict:
    with hub.as_user(user) as client:
        page = client.get(f"/user/{user}/lab")
    assert page.status_code == 200, page.status_code
    match = re.search(
        r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page.text, re.S
    )
    assert match is not None, "no jupyter-config-data in the JupyterLab page"
    return json.loads(match.group(1))


def test_jupyterlab_download_commands_are_disabled_by_root_owned_settings(hub):
    from enclave.workspace.policy import DISABLED_PLUGINS

    config = lab_page_config(hub, RESEARCHER)
    for plugin in DISABLED_PLUGINS:
        assert plugin in config["disabledExtensions"], plugin
    policy = hub.settings.server_files_dir / "jupyter-policy" / "labconfig" / "page_config.json"
    st = policy.stat()
    assert st.st_uid == 0 and not st.st_mode & 0o022


def test_a_users_own_jupyter_config_cannot_switch_the_authorizer_off(hub, alice):
    alice.run(
        "import os\nd = os.path.expanduser('~/.jupyter'); os.makedirs(d, exist_ok=True)\n"
        "open(os.path.join(d, 'jupyter_server_config.py'), 'w').write(\n"
        "    'c.ServerApp.authorizer_class = \"jupyter_server.auth.authorizer.AllowAllAuthorizer\"\\n')\n"
        "os.makedirs(os.path.join(d, 'labconfig'), exist_ok=True)\n"
        "open(os.path.join(d, 'labconfig', 'page_config.json'), 'w').write(\n"
        '    \'{"disabledExtensions": {"@jupyterlab/docmanager-extension:download": false}}\')\n'
    )
    hub.stop(RESEARCHER)
    hub.spawn(RESEARCHER)
    path = f"{dataset_dir(hub.version)}/tables/clinical.csv"
    with hub.as_user(RESEARCHER) as client:
        assert client.get(f"/user/{RESEARCHER}/files/{path}").status_code == 403
    disabled = lab_page_config(hub, RESEARCHER)["disabledExtensions"]
    assert "@jupyterlab/docmanager-extension:download" in disabled


# --------------------------------------------------------------------------- profiles


def test_student_sandbox_limits_are_enforced(hub, sam):
    from enclave.isolation import limit_backend

    out = sam.run(
        "import os, resource\nprint(repr(os.environ.get('CUDA_VISIBLE_DEVICES')), os.getpid())\n"
    )
    cuda, pid = out.split()
    assert cuda == "''", out  # CPU only: CUDA sees no GPU
    backend = limit_backend()
    cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    if backend == "cgroup1":
        line = next(x for x in cgroups.splitlines() if ":memory:" in x)
        limit = Path("/sys/fs/cgroup/memory" + line.split(":", 2)[2]) / "memory.limit_in_bytes"
        assert int(limit.read_text()) == 2 * 1024**3
    elif backend == "cgroup2":
        rel = cgroups.strip().split("::", 1)[1]
        assert (
            int((Path("/sys/fs/cgroup") / rel.lstrip("/") / "memory.max").read_text())
            == 2 * 1024**3
        )
    else:
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert str(2 * 1024**3) in limits
    with hub.as_user(STUDENT) as client:
        terminal = client.post(f"/user/{STUDENT}/api/terminals")
    assert terminal.status_code in (403, 404), terminal.status_code


# --------------------------------------------------------------------------- catalog page


def test_catalog_service_lists_only_the_callers_datasets(hub):
    with hub.as_user(RESEARCHER) as client:
        page = client.get(
            "/services/catalog/", headers={"Authorization": f"Bearer {hub.tokens[RESEARCHER]}"}
        )
    assert page.status_code == 200, page.text[:300]
    assert DATASET in page.text and "Low-dose chest CT" in page.text
    with hub.as_user(STUDENT) as client:
        page = client.get(
            "/services/catalog/", headers={"Authorization": f"Bearer {hub.tokens[STUDENT]}"}
        )
    assert page.status_code == 200 and DATASET not in page.text
    anonymous = httpx.get(f"{hub.url}/services/catalog/", timeout=10, follow_redirects=False)
    assert anonymous.status_code == 302 and "oauth2/authorize" in anonymous.headers["location"]
