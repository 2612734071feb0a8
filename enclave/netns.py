"""Network namespaces that let a user server reach the hub and nothing else.

Each user server gets its own network namespace joined to the host by a veth pair
with a /30 from a private range. Nothing inside the namespace can leave it except
TCP to the hub's service address and ports:

* the namespace has no default route: the only route out is a /32 to the service
  address, so every other destination (other hosts, other users, DNS servers)
  fails locally with ENETUNREACH before a packet is sent;
* a host-side nftables table (``inet enclave``, in the root namespace where the
  user has no capabilities) accepts from user veths only TCP to the allowed
  service ports plus replies, rejects everything else, drops all forwarding to or
  from user veths (whatever ``ip_forward`` says) and lets only the hub's uids open
  connections to a user server's port;
* a second table inside the namespace (``inet enclave_ns``, root-owned) repeats
  the policy, so a host-side ``nft flush ruleset`` by another tool does not open
  the namespace.

Spawning a user runs three processes: one ``ip -batch`` in the root namespace
(namespace, veth, host address), then at the same time one ``nsenter`` running
``ip -batch`` and ``nft -f`` inside, and one small ``nft -f`` transaction adding the
user's set elements on the host; the host ruleset itself is loaded once. Builders (names, addresses, rule text) are pure functions; the
stateful part is :class:`NamespaceManager`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from enclave.errors import EnclaveError

NETNS_DIR = Path("/run/netns")
DEFAULT_ADDRESS_RANGE = "10.213.0.0/16"
DEFAULT_SERVICE_PORTS = (8081,)
DEFAULT_SERVER_PORT = 8888
DEFAULT_TABLE = "enclave"
NAMESPACE_TABLE = "enclave_ns"
NAMESPACE_PREFIX = "enclave-"
VETH_PREFIX = "enc-"
GUEST_INTERFACE = "eth0"
# Label of the service address on the host's loopback interface, so that it can be
# found and removed again (labels must start with the device name).
SERVICE_LABEL = "lo:enclave"
# ifalias of a host-side veth: which address slot it holds.
SLOT_ALIAS = "enclave:slot="
SYS_NET = Path("/sys/class/net")
IFNAMSIZ = 15
# /run/netns/<name>: keep names short and boring; the kernel allows far more.
MAX_NAMESPACE_NAME = 64

# Debian package that ships each tool we run, for the error message.
TOOL_PACKAGES = {
    "ip": "iproute2",
    "nft": "nftables",
    "nsenter": "util-linux",
    "setpriv": "util-linux",
    "prlimit": "util-linux",
}


class IsolationError(EnclaveError):
    """Network isolation cannot be set up or torn down; the message says why."""


# --------------------------------------------------------------------------- names


def namespace_name(user: str, prefix: str = NAMESPACE_PREFIX) -> str:
    """Name of a user's network namespace: readable where possible, always unique.

    JupyterHub user names may hold any character; the name keeps ``[a-z0-9._-]`` and
    appends a short hash whenever it had to change anything, so ``a.b`` and ``a_b``
    or ``Alice`` and ``alice`` never share a namespace.
    """
    if not user:
        raise IsolationError("user name is empty: cannot name a network namespace")
    cleaned = re.sub(r"[^a-z0-9._-]", "_", user.lower()).strip(".")
    cleaned = cleaned[: MAX_NAMESPACE_NAME - len(prefix) - 9]
    if cleaned != user or not cleaned:
        cleaned = f"{cleaned}-{_digest(user)[:8]}".lstrip("-")
    return prefix + cleaned


def veth_name(namespace: str, prefix: str = VETH_PREFIX) -> str:
    """Host-side veth name for a namespace; fits IFNAMSIZ (15 characters)."""
    name = prefix + _digest(namespace)[: IFNAMSIZ - len(prefix)]
    return name[:IFNAMSIZ]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class UserAddresses:
    """One /30: the host end of the veth is the gateway, the namespace end the server."""

    slot: int
    network: ipaddress.IPv4Network
    host: ipaddress.IPv4Address
    guest: ipaddress.IPv4Address


def parse_range(address_range: str) -> ipaddress.IPv4Network:
    """The private IPv4 range user /30s come from; refuses anything routable."""
    try:
        network = ipaddress.IPv4Network(address_range, strict=True)
    except ValueError as exc:
        raise IsolationError(
            f"address range {address_range!r} is not an IPv4 network: {exc}"
        ) from exc
    if not network.is_private or network.is_loopback or network.is_link_local:
        raise IsolationError(
            f"address range {address_range} is not a private range (use e.g. 10.213.0.0/16)"
        )
    if network.prefixlen > 28:
        raise IsolationError(f"address range {address_range} is too small: need at least a /28")
    return network


def slot_count(network: ipaddress.IPv4Network) -> int:
    """Number of /30 slots; slot 0 is kept for the service address."""
    return network.num_addresses // 4


def service_address(network: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """Address the hub (and anything else user servers may reach) listens on."""
    return network.network_address + 1


def user_addresses(network: ipaddress.IPv4Network, slot: int) -> UserAddresses:
    if not 1 <= slot < slot_count(network):
        raise IsolationError(f"slot {slot} is outside {network} (1..{slot_count(network) - 1})")
    base = network.network_address + 4 * slot
    return UserAddresses(slot, ipaddress.IPv4Network(f"{base}/30"), base + 1, base + 2)


def slot_of(network: ipaddress.IPv4Network, address: ipaddress.IPv4Address) -> int | None:
    if address not in network:
        return None
    return (int(address) - int(network.network_address)) // 4


def preferred_slot(namespace: str, network: ipaddress.IPv4Network) -> int:
    """Stable first-choice slot, so a user usually gets the same address back."""
    return 1 + int(_digest(namespace)[:8], 16) % (slot_count(network) - 1)


def choose_slot(namespace: str, network: ipaddress.IPv4Network, used: set[int]) -> int:
    """Preferred slot, or the next free one after it (linear probing)."""
    count = slot_count(network)
    start = preferred_slot(namespace, network)
    for step in range(count - 1):
        slot = 1 + (start - 1 + step) % (count - 1)
        if slot not in used:
            return slot
    raise IsolationError(
        f"address range {network} is full ({count - 1} user namespaces): use a larger range"
    )


# --------------------------------------------------------------------- rule text

HOST_RULESET = Template(
    """\
# Enclave host-side egress policy for user-server network namespaces.
# Generated by enclave.netns.host_ruleset(); loaded as one atomic transaction.
# Re-loading is idempotent: chains are flushed and refilled, per-user set
# elements survive. Per-user elements are added/removed with small
# 'add element' / 'delete element' transactions when a server spawns/stops.

add table inet $table { comment "enclave user-server isolation (managed, do not edit)"; }

# veth name . address the namespace was given (anti-spoofing)
add set inet $table user_sources { type ifname . ipv4_addr; }
# veth name . service address . port a user server may open connections to
add set inet $table user_services { type ifname . ipv4_addr . inet_service; }
# user server address . port the hub/proxy may connect to
add set inet $table user_servers { type ipv4_addr . inet_service; }
# uids of host processes (hub, proxy) allowed to connect to user servers
add set inet $table hub_uids { type uid; }
flush set inet $table hub_uids
$hub_uid_elements

add chain inet $table input { type filter hook input priority filter; policy accept; }
add chain inet $table forward { type filter hook forward priority filter; policy accept; }
add chain inet $table output { type filter hook output priority filter; policy accept; }
flush chain inet $table input
flush chain inet $table forward
flush chain inet $table output

# From a user namespace to the host: only replies and TCP to the allowed
# service address:ports of that very veth. Any interface named $veth_glob is
# treated as a user veth, registered or not (fail closed). IPv6 is never allowed.
add rule inet $table input iifname != "$veth_glob" accept
add rule inet $table input meta nfproto != ipv4 drop
add rule inet $table input iifname . ip saddr != @user_sources drop
add rule inet $table input ct state invalid drop
add rule inet $table input ct state established,related accept
add rule inet $table input ct state new iifname . ip daddr . tcp dport @user_services accept
add rule inet $table input reject with icmpx type admin-prohibited

# Never route to or from a user namespace, even if net.ipv4.ip_forward=1.
add rule inet $table forward iifname "$veth_glob" drop
add rule inet $table forward oifname "$veth_glob" drop

# From the host into a user namespace: replies, and new connections to the
# server port only from the hub/proxy uids.
add rule inet $table output oifname != "$veth_glob" accept
add rule inet $table output meta nfproto != ipv4 drop
add rule inet $table output ct state invalid drop
add rule inet $table output ct state established,related accept
add rule inet $table output ct state new ip daddr . tcp dport @user_servers meta skuid @hub_uids accept
add rule inet $table output reject with icmpx type admin-prohibited
"""
)

NAMESPACE_RULESET = Template(
    """\
# Enclave policy inside one user-server namespace (root-owned; the user has no
# CAP_NET_ADMIN here). Second line of defence behind the host table and the
# missing default route: survives a flush of the host's ruleset.
table inet $table {
    chain output {
        type filter hook output priority filter; policy drop;
        oif "lo" accept
        ct state established,related accept
        ct state new ip daddr $service_address tcp dport { $service_ports } accept
        reject with icmpx type admin-prohibited
    }
    chain input {
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        ct state new iifname "$guest_interface" ip daddr $guest_address tcp dport $server_port accept
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
    }
}
"""
)


def host_ruleset(
    *, table: str = DEFAULT_TABLE, veth_prefix: str = VETH_PREFIX, hub_uids: Sequence[int] = (0,)
) -> str:
    """The host table as one idempotent ``nft -f`` transaction."""
    if not hub_uids:
        raise IsolationError("no hub uids given: nothing could connect to user servers")
    uids = ", ".join(str(int(uid)) for uid in sorted(set(hub_uids)))
    return HOST_RULESET.substitute(
        table=table,
        veth_glob=f"{veth_prefix}*",
        hub_uid_elements=f"add element inet {table} hub_uids {{ {uids} }}",
    )


def namespace_ruleset(
    *,
    service_address: ipaddress.IPv4Address,
    service_ports: Sequence[int],
    guest_address: ipaddress.IPv4Address,
    server_port: int,
    table: str = NAMESPACE_TABLE,
) -> str:
    """The table loaded inside a user's namespace."""
    return NAMESPACE_RULESET.substitute(
        table=table,
        service_address=service_address,
        service_ports=", ".join(str(int(p)) for p in service_ports),
        guest_interface=GUEST_INTERFACE,
        guest_address=guest_address,
        server_port=int(server_port),
    )


def user_elements(
    verb: str,
    *,
    table: str,
    host_interface: str,
    guest_address: ipaddress.IPv4Address,
    service_address: ipaddress.IPv4Address,
    service_ports: Sequence[int],
    server_port: int,
) -> str:
    """``add``/``delete element`` lines for one user: the whole per-spawn host change."""
    if verb not in ("add", "delete"):
        raise ValueError(verb)
    services = ", ".join(
        f'"{host_interface}" . {service_address} . {int(port)}' for port in service_ports
    )
    return (
        f'{verb} element inet {table} user_sources {{ "{host_interface}" . {guest_address} }}\n'
        f"{verb} element inet {table} user_services {{ {services} }}\n"
        f"{verb} element inet {table} user_servers {{ {guest_address} . {int(server_port)} }}\n"
    )


def host_link_batch(*, namespace: str, host_interface: str, addresses: UserAddresses) -> str:
    """``ip -batch`` lines run in the root namespace: the namespace, the veth pair, the host end.

    ``addrgenmode none`` stops the kernel from giving either end an IPv6 link-local
    address, so there is no IPv6 path to host services bound to ``::``. The alias
    records the slot, so the inventory is read from ``/sys/class/net`` without
    running ``ip``.
    """
    return (
        f"netns add {namespace}\n"
        f"link add {host_interface} type veth peer name {GUEST_INTERFACE} netns {namespace}\n"
        f"link set dev {host_interface} alias {SLOT_ALIAS}{addresses.slot}\n"
        f"link set dev {host_interface} addrgenmode none\n"
        f"addr add {addresses.host}/30 dev {host_interface}\n"
        f"link set dev {host_interface} up\n"
    )


def namespace_link_batch(
    *, addresses: UserAddresses, service_address: ipaddress.IPv4Address
) -> str:
    """``ip -n NS -batch`` lines: loopback, the guest address, one /32 route, no default."""
    return (
        f"link set dev {GUEST_INTERFACE} addrgenmode none\n"
        f"addr add {addresses.guest}/30 dev {GUEST_INTERFACE}\n"
        "link set dev lo up\n"
        f"link set dev {GUEST_INTERFACE} up\n"
        f"route add {service_address}/32 via {addresses.host} dev {GUEST_INTERFACE}\n"
    )


# ------------------------------------------------------------------------ config


@dataclass(frozen=True)
class NetnsConfig:
    """What the hub configures; everything else is derived.

    ``service_ports`` are the TCP ports on the service address (first address of the
    range, kept on the host's loopback) where the hub API and anything else user
    servers need listen. ``hub_uids`` may open connections to user servers.
    """

    address_range: str = DEFAULT_ADDRESS_RANGE
    service_ports: tuple[int, ...] = DEFAULT_SERVICE_PORTS
    server_port: int = DEFAULT_SERVER_PORT
    hub_uids: tuple[int, ...] = (0,)
    table: str = DEFAULT_TABLE
    namespace_prefix: str = NAMESPACE_PREFIX
    veth_prefix: str = VETH_PREFIX
    lock_path: str = "/run/enclave-netns.lock"

    def __post_init__(self) -> None:
        parse_range(self.address_range)
        for port in (*self.service_ports, self.server_port):
            if not 1 <= int(port) <= 65535:
                raise IsolationError(f"port {port} is not a TCP port")
        if not self.service_ports:
            raise IsolationError("no service ports: user servers could not reach the hub")
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", self.table):
            raise IsolationError(f"nftables table name {self.table!r} is not a simple name")
        if not re.fullmatch(r"[a-z][a-z0-9]{1,5}-", self.veth_prefix):
            raise IsolationError(f"veth prefix {self.veth_prefix!r} must look like 'enc-'")
        if not re.fullmatch(r"[a-z][a-z0-9]*-", self.namespace_prefix):
            raise IsolationError(f"namespace prefix {self.namespace_prefix!r} must end in '-'")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return parse_range(self.address_range)

    @property
    def service_address(self) -> ipaddress.IPv4Address:
        return service_address(self.network)


@dataclass(frozen=True)
class IsolatedNetwork:
    """One user's namespace as the spawner sees it."""

    user: str
    namespace: str
    host_interface: str
    addresses: UserAddresses
    service_address: ipaddress.IPv4Address
    service_ports: tuple[int, ...]
    server_port: int
    created_seconds: float = field(default=0.0, compare=False)

    @property
    def netns_path(self) -> str:
        return str(NETNS_DIR / self.namespace)

    @property
    def guest_address(self) -> str:
        """Where the user server listens (bind here, not on 0.0.0.0)."""
        return str(self.addresses.guest)

    @property
    def host_address(self) -> str:
        return str(self.addresses.host)

    @property
    def server_url(self) -> str:
        """URL the proxy routes to."""
        return f"http://{self.addresses.guest}:{self.server_port}"

    def service_url(self, port: int) -> str:
        """URL of a host service as seen from inside, e.g. the hub API base."""
        return f"http://{self.service_address}:{port}"


# --------------------------------------------------------------------- commands


def require_tools(*names: str) -> dict[str, str]:
    """Absolute paths of the tools, or one error naming what to install."""
    if os.geteuid() != 0:
        raise IsolationError(
            "network isolation needs root (creating namespaces, veths and nftables rules); "
            "run the hub as root"
        )
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        path = shutil.which(name) or next(
            (
                p
                for p in (f"/usr/sbin/{name}", f"/sbin/{name}", f"/usr/bin/{name}")
                if os.access(p, os.X_OK)
            ),
            None,
        )
        if path is None:
            missing.append(f"{name} (Debian package {TOOL_PACKAGES.get(name, name)})")
        else:
            found[name] = path
    if missing:
        raise IsolationError("missing tools for network isolation: " + ", ".join(missing))
    return found


def _run(argv: Sequence[str], stdin: str | None = None, what: str = "") -> str:
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise IsolationError(
            f"{what or Path(argv[0]).name} failed: {' | '.join(detail[-3:]) or proc.returncode}"
        )
    return proc.stdout


def _run_together(jobs: Sequence[tuple[Sequence[str], str | None, str]]) -> list[str]:
    """Run independent commands at once; one error message (or "") per job.

    Inputs are small (far below a pipe buffer), so they are written up front.
    """
    procs = []
    for argv, stdin, _ in jobs:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin or "")
            proc.stdin.close()
        procs.append(proc)
    errors = []
    for proc, (argv, _, what) in zip(procs, jobs, strict=True):
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        proc.wait(timeout=30)
        if proc.returncode:
            detail = " | ".join(err.strip().splitlines()[-3:]) or f"exit {proc.returncode}"
            errors.append(f"{what or Path(argv[0]).name} failed: {detail}")
        else:
            errors.append("")
    return errors


def namespace_pids(netns_path: str) -> list[int]:
    """Processes whose network namespace is the one bound at ``netns_path``."""
    try:
        target = os.stat(netns_path)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            pids.append(int(entry.name))
    return pids


# ---------------------------------------------------------------------- manager


class NamespaceManager:
    """Creates and removes isolated user namespaces and the host table they rely on.

    Safe to use from many threads and from several processes at once: creation and
    removal hold an exclusive ``flock`` so address slots are never handed out twice.
    """

    def __init__(self, config: NetnsConfig | None = None) -> None:
        self.config = config or NetnsConfig()
        self.tools = require_tools("ip", "nft", "nsenter")
        self._table_ready = False

    # ---- host setup

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.config.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _nft(self, text: str, what: str) -> None:
        _run([self.tools["nft"], "-f", "-"], stdin=text, what=what)

    def ensure_host(self) -> None:
        """Load the host table and put the service address on loopback (idempotent).

        Call once before the hub binds to ``config.service_address``.
        """
        cfg = self.config
        # Re-register users that exist already: if the table was flushed by someone
        # else, their hub connections come back instead of staying blocked.
        present = "".join(self._elements("add", net) for net in self._present())
        self._nft(
            host_ruleset(table=cfg.table, veth_prefix=cfg.veth_prefix, hub_uids=cfg.hub_uids)
            + present,
            f"loading nftables table inet {cfg.table}",
        )
        _run(
            [
                self.tools["ip"],
                "addr",
                "replace",
                f"{cfg.service_address}/32",
                "dev",
                "lo",
                "label",
                SERVICE_LABEL,
            ],
            what=f"adding service address {cfg.service_address} to lo",
        )
        self._table_ready = True

    def table_exists(self) -> bool:
        proc = subprocess.run(
            [self.tools["nft"], "list", "table", "inet", self.config.table],
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    # ---- inventory

    def namespaces(self) -> list[str]:
        """Names of our namespaces present on this machine."""
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(self.config.namespace_prefix))

    def veths(self) -> list[str]:
        """Host-side interfaces with our veth prefix (registered or stray)."""
        try:
            names = os.listdir(SYS_NET)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(self.config.veth_prefix))

    def _slot_of_veth(self, host_interface: str) -> int | None:
        try:
            alias = (SYS_NET / host_interface / "ifalias").read_text().strip()
        except OSError:
            return None
        if not alias.startswith(SLOT_ALIAS) or not alias[len(SLOT_ALIAS) :].isdigit():
            return None
        slot = int(alias[len(SLOT_ALIAS) :])
        return slot if 1 <= slot < slot_count(self.config.network) else None

    def _used_slots(self) -> set[int]:
        slots = (self._slot_of_veth(name) for name in self.veths())
        return {slot for slot in slots if slot is not None}

    def _present(self) -> list[IsolatedNetwork]:
        """Wired-up namespaces of this configuration (user names are not recorded)."""
        found = []
        for namespace in self.namespaces():
            host_interface = veth_name(namespace, self.config.veth_prefix)
            slot = self._slot_of_veth(host_interface)
            if slot is not None:
                found.append(self._describe("", namespace, host_interface, slot))
        return found

    def lookup(self, user: str) -> IsolatedNetwork | None:
        """The user's namespace if it exists and is wired up (e.g. after a hub restart)."""
        namespace = namespace_name(user, self.config.namespace_prefix)
        if not (NETNS_DIR / namespace).exists():
            return None
        host_interface = veth_name(namespace, self.config.veth_prefix)
        slot = self._slot_of_veth(host_interface)
        if slot is None:
            return None
        return self._describe(user, namespace, host_interface, slot)

    def _describe(
        self, user: str, namespace: str, host_interface: str, slot: int, seconds: float = 0.0
    ) -> IsolatedNetwork:
        cfg = self.config
        return IsolatedNetwork(
            user=user,
            namespace=namespace,
            host_interface=host_interface,
            addresses=user_addresses(cfg.network, slot),
            service_address=cfg.service_address,
            service_ports=tuple(cfg.service_ports),
            server_port=cfg.server_port,
            created_seconds=seconds,
        )

    def _elements(self, verb: str, net: IsolatedNetwork) -> str:
        return user_elements(
            verb,
            table=self.config.table,
            host_interface=net.host_interface,
            guest_address=net.addresses.guest,
            service_address=net.service_address,
            service_ports=net.service_ports,
            server_port=net.server_port,
        )

    # ---- create / teardown

    def create(self, user: str) -> IsolatedNetwork:
        """A fresh isolated namespace for ``user``; a stale one from a crash is replaced."""
        cfg = self.config
        started = time.perf_counter()
        namespace = namespace_name(user, cfg.namespace_prefix)
        host_interface = veth_name(namespace, cfg.veth_prefix)
        with self._locked():
            if (NETNS_DIR / namespace).exists() or (SYS_NET / host_interface).exists():
                self._teardown_locked(namespace, host_interface)
            slot = choose_slot(namespace, cfg.network, self._used_slots())
            net = self._describe(user, namespace, host_interface, slot)
            try:
                self._wire(net)
            except BaseException:
                self._teardown_locked(namespace, host_interface, net)
                raise
        return self._describe(user, namespace, host_interface, slot, time.perf_counter() - started)

    def _wire(self, net: IsolatedNetwork) -> None:
        """Three processes: host links, then namespace side and host set elements at once."""
        cfg, ip = self.config, self.tools["ip"]
        if not self._table_ready:
            self.ensure_host()
        _run(
            [ip, "-batch", "-"],
            what=f"creating namespace {net.namespace} and its veth",
            stdin=host_link_batch(
                namespace=net.namespace, host_interface=net.host_interface, addresses=net.addresses
            ),
        )
        inside = namespace_link_batch(addresses=net.addresses, service_address=net.service_address)
        rules = namespace_ruleset(
            service_address=net.service_address,
            service_ports=net.service_ports,
            guest_address=net.addresses.guest,
            server_port=net.server_port,
        )
        elements = self._elements("add", net)
        register = f"registering {net.namespace} in table inet {cfg.table}"
        results = _run_together(
            [
                (
                    [
                        self.tools["nsenter"],
                        f"--net={net.netns_path}",
                        "/bin/sh",
                        "-c",
                        'printf "%s" "$1" | "$3" -batch - && printf "%s" "$2" | "$4" -f -',
                        "enclave-netns",
                        inside,
                        rules,
                        ip,
                        self.tools["nft"],
                    ],
                    None,
                    f"configuring inside {net.namespace} (ip, nft)",
                ),
                ([self.tools["nft"], "-f", "-"], elements, register),
            ]
        )
        inside_error, register_error = results
        if inside_error:
            raise IsolationError(inside_error)
        if register_error:
            # The table vanished under us (another process tore it down, or an admin
            # flushed the ruleset): load it again and retry once.
            self.ensure_host()
            self._nft(elements, register)

    def teardown(self, user_or_network: str | IsolatedNetwork) -> None:
        """Remove a user's namespace, veth and set elements; kill what still runs inside.

        Idempotent: tearing down something already gone is not an error. Removes the
        host table when this was the last user; the service address stays on loopback
        because the hub is still bound to it (:meth:`cleanup_all` removes it).
        """
        if isinstance(user_or_network, IsolatedNetwork):
            namespace = user_or_network.namespace
            host_interface = user_or_network.host_interface
            known: IsolatedNetwork | None = user_or_network
        else:
            namespace = namespace_name(user_or_network, self.config.namespace_prefix)
            host_interface = veth_name(namespace, self.config.veth_prefix)
            known = None
        with self._locked():
            self._teardown_locked(namespace, host_interface, known)
            if not self.namespaces():
                self._remove_table_locked()

    def _teardown_locked(
        self, namespace: str, host_interface: str, known: IsolatedNetwork | None = None
    ) -> None:
        if known is None:
            slot = self._slot_of_veth(host_interface)
            if slot is not None:
                known = self._describe("", namespace, host_interface, slot)
        path = str(NETNS_DIR / namespace)
        for _ in range(100):
            pids = namespace_pids(path)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        batch = []
        if (SYS_NET / host_interface).exists():
            batch.append(f"link del {host_interface}")
        if os.path.exists(path):
            batch.append(f"netns del {namespace}")
        jobs = []
        if batch:
            jobs.append(
                (
                    [self.tools["ip"], "-batch", "-"],
                    "\n".join(batch) + "\n",
                    f"deleting {namespace} and {host_interface}",
                )
            )
        if known is not None:
            jobs.append(([self.tools["nft"], "-f", "-"], self._elements("delete", known), ""))
        results = _run_together(jobs)
        if batch and results[0]:
            raise IsolationError(results[0])
        if known is not None and results[-1]:
            # Some elements were already gone (or the table is): one line at a time.
            for line in self._elements("delete", known).splitlines():
                subprocess.run([self.tools["nft"], line], capture_output=True, check=False)

    def _remove_table_locked(self) -> None:
        subprocess.run(
            [self.tools["nft"], "delete", "table", "inet", self.config.table],
            capture_output=True,
            check=False,
        )
        self._table_ready = False

    def _remove_host_locked(self) -> None:
        self._remove_table_locked()
        subprocess.run(
            [self.tools["ip"], "addr", "del", f"{self.config.service_address}/32", "dev", "lo"],
            capture_output=True,
            check=False,
        )

    def remove_host(self) -> None:
        """Drop the host table and the service address (hub shutdown, no users left)."""
        with self._locked():
            self._remove_host_locked()

    def cleanup_all(self) -> list[str]:
        """Remove every namespace, veth, set element and table with our prefixes.

        For ``enclave down`` and tests; returns what was removed.
        """
        removed: list[str] = []
        with self._locked():
            for namespace in self.namespaces():
                self._teardown_locked(namespace, veth_name(namespace, self.config.veth_prefix))
                removed.append(namespace)
            for link in self.veths():
                subprocess.run(
                    [self.tools["ip"], "link", "del", link], capture_output=True, check=False
                )
                removed.append(link)
            if self.table_exists():
                removed.append(f"table inet {self.config.table}")
            self._remove_host_locked()
        return removed


# --------------------------------------------------------------- policy files


def example_namespace_ruleset() -> str:
    """The in-namespace table for the first user slot with default settings."""
    cfg = NetnsConfig()
    return namespace_ruleset(
        service_address=cfg.service_address,
        service_ports=cfg.service_ports,
        guest_address=user_addresses(cfg.network, 1).guest,
        server_port=cfg.server_port,
    )


def write_policy_files(directory: Path) -> list[Path]:
    """Write the documented copies in ``policies/nftables`` from the code that loads them."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("enclave-host.nft", host_ruleset()),
        ("enclave-namespace.nft", example_namespace_ruleset()),
    ):
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":  # python -m enclave.netns write-policies [DIR]
    import sys

    if len(sys.argv) < 2 or sys.argv[1] != "write-policies":
        raise SystemExit("usage: python -m enclave.netns write-policies [DIR]")
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("policies/nftables")
    for written_path in write_policy_files(target):
        print(written_path)
