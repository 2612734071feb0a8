"""A real JupyterHub with IsolatedSpawner, shared by the whole module (started once).

The hub runs from ``hub_config/jupyterhub_config.py`` exactly as ``enclave up`` runs it, on its
own ports, address range, nftables table, namespace/veth/Unix-user prefixes and state directory,
so it never collides with a running enclave. Everything it creates is removed afterwards:
servers, namespaces, veths, the nftables table, Unix users, mounts and the state directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave.workspace.hub import HubSettings
from enclave.workspace.launcher import hub_config_file
from ingestion.service import free_port

JUPYTERHUB = Path(sys.executable).parent / "jupyterhub"


def private_range() -> str:
    """A /22 of 10.219.0.0/16 of its own for each hub a test starts (runs never share one)."""
    import random

    return f"10.219.{random.randrange(0, 256, 4)}.0/22"


def needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "workspace tests need root (namespaces, nftables, Unix users, mounts)", pytrace=False
        )
    for tool in ("ip", "nft", "nsenter", "setpriv", "useradd", "mount"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is missing: run `make system-deps`")


def catalog_folder(
    catalog: Any, folder: Path, name: str, master_key: Any, store_root: Path, *, description: str
) -> Any:
    """Encrypt ``folder`` into the store and catalog it as ingestion does (published)."""
    from ingestion.store import write_version

    transfer_id = f"tr-{uuid.uuid4().hex[:10]}"
    providers = {p.name for p in catalog.list_providers()}
    if "test-hospital" not in providers:
        catalog.add_provider(
            "test-hospital", b"-----BEGIN PUBLIC KEY-----\ntest\n", "fp-test", actor="test"
        )
    catalog.record_transfer(
        transfer_id, "test-hospital", dataset_name=name, k=2, n=3, share_length=1
    )
    stored = write_version(folder, store_root, master_key, name_hint=transfer_id)
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        kind = "dicom" if path.suffix == ".dcm" else "table" if path.suffix == ".csv" else "other"
        files.append(
            {
                "path": path.relative_to(folder).as_posix(),
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "kind": kind,
            }
        )
    content_hash = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    version = catalog.catalog_version(
        transfer_id,
        manifest={
            "name": name,
            "title": name,
            "description": description,
            "license": "CC-BY-4.0",
            "modality": "CT",
        },
        content_hash=content_hash,
        size_bytes=stored.size_bytes,
        store_location=stored.store_location,
        wrapped_key=stored.wrapped_key,
        files=files,
        report_json=json.dumps({"dataset": name, "passed": True, "counts": {}, "findings": []}),
        actor="test",
    )
    catalog.publish(name, version.version, actor="test")
    return version


@dataclass
class Hub:
    """A running hub and the means to drive it as its admin and as its users."""

    url: str
    api: str
    admin_token: str
    settings: Any
    state_dir: Path
    log: Path
    proc: subprocess.Popen
    tokens: dict[str, str] = field(default_factory=dict)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"Authorization": f"token {self.admin_token}"}, timeout=30
        )

    def as_user(self, name: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"token {self.tokens[name]}"},
            timeout=30,
            follow_redirects=False,
        )

    def add_user(self, name: str, group: str) -> str:
        with self.admin() as api:
            api.post(f"/users/{name}").raise_for_status()
            api.post(f"/groups/{group}/users", json={"users": [name]}).raise_for_status()
            reply = api.post(f"/users/{name}/tokens", json={"note": "workspace tests"})
            reply.raise_for_status()
        self.tokens[name] = reply.json()["token"]
        return self.tokens[name]

    def spawn(self, name: str, timeout: float = 90, *, kind: str | None = None) -> dict:
        """Start ``name``'s server (a ``kind`` of session, else their profile's default)."""
        with self.admin() as api:
            reply = api.post(f"/users/{name}/server", json={"kind": kind} if kind else None)
            assert reply.status_code in (201, 202), reply.text
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                model = api.get(f"/users/{name}").json()
                server = model.get("servers", {}).get("")
                if server and server.get("ready"):
                    return server
                if (
                    model.get("servers") == {}
                    and reply.status_code == 202
                    and time.monotonic() > deadline - timeout + 5
                ):
                    break
                time.sleep(0.2)
        raise AssertionError(f"server of {name} not ready in {timeout}s:\n{self.log_tail()}")

    def stop(self, name: str, timeout: float = 60) -> None:
        with self.admin() as api:
            api.delete(f"/users/{name}/server")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not api.get(f"/users/{name}").json().get("servers"):
                    return
                time.sleep(0.2)
        raise AssertionError(f"server of {name} did not stop:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_hub(state_dir: Path, settings: Any, mnemonics: list[str]) -> Hub:
    settings.save()
    from enclave.workspace.hub import admin_token

    token = admin_token(settings)
    log = state_dir / "hub" / "hub.log"
    env = {
        **os.environ,
        "ENCLAVE_STATE_DIR": str(state_dir),
        "ENCLAVE_UNSEAL_STDIN": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(JUPYTERHUB), "-f", str(hub_config_file())],
            cwd=state_dir / "hub",
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    assert proc.stdin is not None  # stdin=PIPE
    proc.stdin.write(("\n".join(mnemonics) + "\n").encode())
    proc.stdin.close()
    url = settings.public_url.rstrip("/")
    hub = Hub(
        url=url,
        api=f"{url}/hub/api",
        admin_token=token,
        settings=settings,
        state_dir=state_dir,
        log=log,
        proc=proc,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited with {proc.returncode}:\n{hub.log_tail()}")
        try:
            if httpx.get(f"{hub.api}/", timeout=2).status_code == 200:
                return hub
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"hub did not answer in 60 s:\n{hub.log_tail()}")


def stop_hub(hub: Hub) -> None:
    if hub.proc.poll() is None:
        os.killpg(hub.proc.pid, signal.SIGTERM)
        try:
            hub.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(hub.proc.pid, signal.SIGKILL)
            hub.proc.wait()


def cleanup_everything(settings: Any, users: list[str]) -> None:
    from enclave.netns import NamespaceManager
    from enclave.workspace import accounts
    from enclave.workspace.datasets import DatasetMounter

    NamespaceManager(settings.netns_config()).cleanup_all()
    homes = [Path(settings.home_root) / accounts.unix_name(u, settings.unix_prefix) for u in users]
    DatasetMounter(Path(settings.plaintext_root)).release_all(homes)
    for user in users:
        accounts.remove_account(user, settings.unix_prefix)


@pytest.fixture(scope="module")
def enclave_state() -> Iterator[tuple[Path, Any, list[str]]]:
    """A fresh state directory with a master key (2-of-3 custodians) and a hub settings file."""
    needs_root_and_tools()
    from enclave.custody import init_custody
    from enclave.workspace.hub import HubSettings

    state_dir = Path(tempfile.mkdtemp(prefix="enclave-ws-", dir="/tmp"))
    homes = Path(f"{state_dir}-homes")
    mnemonics = init_custody(state_dir, custodians=3, threshold=2)
    tag = uuid.uuid4().hex[:4]
    settings = HubSettings(
        state_dir=str(state_dir),
        public_port=free_port(),
        proxy_api_port=free_port(),
        hub_port=free_port(),
        catalog_port=free_port(),
        airlock_port=free_port(),
        address_range=private_range(),
        netns_table="enclave_wstest",
        namespace_prefix=f"encws{tag}-",
        veth_prefix=f"w{tag}-",  # its own: another enclave's rules never match these
        unix_prefix=f"encw{tag}-",
        home_root=str(homes),
        plaintext_root=str(state_dir / "plaintext"),
        lock_path=str(state_dir / "netns.lock"),
        managed_services=["catalog"],
        log_level="INFO",
    )
    yield state_dir, settings, mnemonics[:2]
    for path in (state_dir, homes, settings.server_files_dir):
        shutil.rmtree(path, ignore_errors=True)


class Kernel:
    """A Python kernel inside a user's server, driven over the Jupyter websocket protocol."""

    def __init__(self, hub: Hub, user: str) -> None:
        self.hub, self.user = hub, user
        with hub.as_user(user) as client:
            reply = client.post(f"/user/{user}/api/kernels", json={"name": "python3"})
            assert reply.status_code == 201, reply.text
        self.kernel_id = reply.json()["id"]

    def run(self, code: str, timeout: float = 60) -> str:
        """Execute ``code``; return its stdout, raising AssertionError on an exception."""
        import asyncio

        return asyncio.run(self._run(code, timeout))

    async def _run(self, code: str, timeout: float) -> str:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        ws_url = self.hub.url.replace("http", "ws", 1)
        request = HTTPRequest(
            f"{ws_url}/user/{self.user}/api/kernels/{self.kernel_id}/channels",
            headers={"Authorization": f"token {self.hub.tokens[self.user]}"},
        )
        conn = await websocket_connect(request)
        msg_id = uuid.uuid4().hex
        conn.write_message(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": self.user,
                        "session": uuid.uuid4().hex,
                        "msg_type": "execute_request",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        out: list[str] = []
        error = None
        done = False
        deadline = time.monotonic() + timeout
        idle = False
        while not (done and idle):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"kernel of {self.user} did not answer in {timeout}s")
            import asyncio

            raw = await asyncio.wait_for(conn.read_message(), left)
            if raw is None:
                raise AssertionError("kernel websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                error = f"{msg['content']['ename']}: {msg['content']['evalue']}"
            elif kind == "execute_reply":
                done = True
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        conn.close()
        if error:
            raise AssertionError(f"code raised in {self.user}'s kernel: {error}\n{''.join(out)}")
        return "".join(out)


def enclave(
    *args: str, stdin: str | None = None, timeout: float = 400
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "enclave", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        check=False,
    )


@contextmanager
def temporary_site(table: str) -> Iterator[HubSettings]:
    """A state directory with this test's own ports, address range, nftables table and
    prefixes, below a private parent (mode 0700, as /root is: ``--state-dir ~/enclave``);
    everything is stopped and removed afterwards."""
    needs_root_and_tools()
    parent = Path(tempfile.mkdtemp(prefix="enclave-up-", dir="/tmp"))  # mode 0700
    state_dir = parent / "enclave"
    state_dir.mkdir(mode=0o700)
    homes = Path(f"{parent}-homes")  # homes must be reachable: /home in a real enclave
    tag = uuid.uuid4().hex[:4]
    settings = HubSettings(
        state_dir=str(state_dir),
        public_port=free_port(),
        proxy_api_port=free_port(),
        hub_port=free_port(),
        catalog_port=free_port(),
        airlock_port=free_port(),
        ingest_port=free_port(),
        address_range=private_range(),
        netns_table=table,
        namespace_prefix=f"encup{tag}-",
        veth_prefix=f"u{tag}-",  # its own: another enclave's rules never match these
        unix_prefix=f"encu{tag}-",
        home_root=str(homes),
        plaintext_root=str(state_dir / "plaintext"),
        lock_path=str(state_dir / "netns.lock"),
        idle_timeout_seconds=3600,
    )
    settings.save()
    try:
        yield settings
    finally:
        enclave("down", "--state-dir", str(state_dir), timeout=120)
        for entry in pwd.getpwall():
            if entry.pw_name.startswith(settings.unix_prefix):
                subprocess.run(["userdel", entry.pw_name], capture_output=True)
        log = settings.hub_dir / "hub.log"
        if log.exists():
            shutil.copyfile(log, Path(tempfile.gettempdir()) / f"{table}-hub.log")
        servers = settings.hub_dir / "server-logs"
        if servers.is_dir():  # what each user's server printed, for a failure's post-mortem
            shutil.copytree(
                servers, Path(tempfile.gettempdir()) / f"{table}-server-logs", dirs_exist_ok=True
            )
        for path in (parent, homes, settings.server_files_dir):
            shutil.rmtree(path, ignore_errors=True)
