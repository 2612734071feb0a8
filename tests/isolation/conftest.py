"""Fixtures for network isolation tests: real namespaces, veths and nftables, as root.

Everything here uses its own prefixes, table and address range (``enclavetest-``,
``enct-``, ``inet enclave_test``, 10.214.0.0/16) so the tests never touch an enclave
that runs on the same machine with the defaults. Traffic only goes to 127.0.0.0/8
and to addresses of namespaces these fixtures create.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from enclave.isolation import popen_in_namespace
from enclave.netns import IsolatedNetwork, NamespaceManager, NetnsConfig

TEST_USER = "enclave-test-user"
HUB_PORT = 18081
OTHER_PORT = 18082
OUTSIDE_NS = "enctest-outside"
OUTSIDE_VETH = "enctout0"
OUTSIDE_HOST_ADDR = "10.215.0.1"
OUTSIDE_ADDR = "10.215.0.2"
OUTSIDE_PORT = 19000
# A documentation address (TEST-NET-1): "public-looking", never routed anywhere.
PUBLIC_LOOKING = "192.0.2.53"
SYSTEM_PYTHON = "/usr/bin/python3"
PROBE = Path(__file__).with_name("probe.py")

CAN_ISOLATE = os.geteuid() == 0 and all(
    shutil.which(t) for t in ("ip", "nft", "nsenter", "setpriv", "prlimit")
)


@pytest.fixture(scope="session")
def as_root() -> None:
    if not CAN_ISOLATE:
        # Egress isolation is tested for real or not at all: a silent skip would hide a
        # machine where it cannot be enforced. `make test` runs as root with these installed.
        pytest.fail(
            "isolation tests need root with iproute2, nftables and util-linux "
            "(run `make system-deps` as root)",
            pytrace=False,
        )


def isolation_test_config() -> NetnsConfig:
    return NetnsConfig(
        address_range="10.214.0.0/16",
        service_ports=(HUB_PORT,),
        server_port=8888,
        hub_uids=(0,),
        table="enclave_test",
        namespace_prefix="enclavetest-",
        veth_prefix="enct-",
    )


@dataclass
class Listener:
    """A TCP server that answers with a fixed line and remembers who connected."""

    sock: socket.socket
    reply: bytes
    peers: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            with conn:
                with contextlib.suppress(OSError):
                    conn.sendall(self.reply)


@contextlib.contextmanager
def listening(address: str, port: int, reply: bytes) -> Iterator[Listener]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(16)
    listener = Listener(sock, reply)
    thread = threading.Thread(target=listener.serve, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(timeout=2)


def host_connect(address: str, port: int, timeout: float = 0.5) -> bytes:
    with socket.create_connection((address, port), timeout=timeout) as conn:
        return conn.recv(64)


@pytest.fixture(scope="session")
def enclave_test_user(as_root: None) -> tuple[int, int]:
    """uid/gid of an unprivileged system user to run user servers as."""
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
        )
        entry = pwd.getpwnam(TEST_USER)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture(scope="session")
def namespace_manager(as_root: None) -> Iterator[NamespaceManager]:
    manager = NamespaceManager(isolation_test_config())
    manager.cleanup_all()
    manager.ensure_host()
    yield manager
    manager.cleanup_all()
    # Nothing with our prefixes may outlive the tests.
    assert manager.namespaces() == []
    assert manager.veths() == []
    assert not manager.table_exists()


@pytest.fixture(scope="session")
def hub(namespace_manager: NamespaceManager) -> Iterator[Listener]:
    """Stands in for the hub API on the service address and allowed port."""
    with listening(str(namespace_manager.config.service_address), HUB_PORT, b"hub\n") as lst:
        yield lst


@pytest.fixture(scope="session")
def host_services(
    namespace_manager: NamespaceManager, hub: Listener
) -> Iterator[dict[str, Listener]]:
    """Host services a user server must NOT reach: same address other port, any
    address (0.0.0.0), host loopback."""
    service = str(namespace_manager.config.service_address)
    with (
        listening(service, OTHER_PORT, b"other\n") as other,
        listening("0.0.0.0", 0, b"wildcard\n") as wildcard,
        listening("127.0.0.1", 0, b"loopback\n") as loopback,
    ):
        yield {"other": other, "wildcard": wildcard, "loopback": loopback}


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@pytest.fixture(scope="session")
def outside_host(as_root: None) -> Iterator[OutsideHost]:
    """A separate 'host on the network': its own namespace, veth to the host, a TCP
    listener, and a default route back so it *would* answer if packets reached it."""
    _sh("ip", "netns", "del", OUTSIDE_NS, check=False)
    _sh("ip", "link", "del", OUTSIDE_VETH, check=False)
    _sh("ip", "netns", "add", OUTSIDE_NS)
    _sh(
        "ip",
        "link",
        "add",
        OUTSIDE_VETH,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        OUTSIDE_NS,
    )
    _sh("ip", "addr", "add", f"{OUTSIDE_HOST_ADDR}/30", "dev", OUTSIDE_VETH)
    _sh("ip", "link", "set", OUTSIDE_VETH, "up")
    _sh("ip", "-n", OUTSIDE_NS, "addr", "add", f"{OUTSIDE_ADDR}/30", "dev", "eth0")
    _sh("ip", "-n", OUTSIDE_NS, "link", "set", "lo", "up")
    _sh("ip", "-n", OUTSIDE_NS, "link", "set", "eth0", "up")
    _sh("ip", "-n", OUTSIDE_NS, "route", "add", "default", "via", OUTSIDE_HOST_ADDR)
    log = Path(tempfile.mkdtemp(prefix="enclave-outside-")) / "peers.log"
    server = subprocess.Popen(
        [
            "nsenter",
            f"--net=/run/netns/{OUTSIDE_NS}",
            SYSTEM_PYTHON,
            str(PROBE),
            "serve",
            OUTSIDE_ADDR,
            str(OUTSIDE_PORT),
            str(log),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    try:
        yield OutsideHost(log)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(log.parent, ignore_errors=True)
        _sh("ip", "link", "del", OUTSIDE_VETH, check=False)
        _sh("ip", "netns", "del", OUTSIDE_NS, check=False)


@dataclass
class OutsideHost:
    """The outside listener runs in its own namespace and process; it logs peers."""

    log: Path
    address: str = OUTSIDE_ADDR
    port: int = OUTSIDE_PORT

    @property
    def peers(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def user_network(namespace_manager: NamespaceManager, hub: Listener) -> Iterator[IsolatedNetwork]:
    """A fresh isolated namespace for one researcher, torn down after the test."""
    net = namespace_manager.create("researcher-ada")
    yield net
    namespace_manager.teardown(net)


@pytest.fixture
def run_probe(enclave_test_user: tuple[int, int]):
    """Run probe.py inside a namespace as the unprivileged test user; parsed JSON out."""
    uid, gid = enclave_test_user

    def run(net: IsolatedNetwork, *args: str, timeout: float = 20) -> dict:
        proc = popen_in_namespace(
            net,
            [SYSTEM_PYTHON, str(PROBE), *args],
            uid=uid,
            gid=gid,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"probe failed: {err}"
        return json.loads(out)

    return run


def set_ip_forward(value: str) -> str:
    path = Path("/proc/sys/net/ipv4/ip_forward")
    old = path.read_text().strip()
    path.write_text(value)
    return old
