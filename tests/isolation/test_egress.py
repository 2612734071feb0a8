"""A user server reaches the hub and nothing else: real namespaces, real nftables.

Every probe runs inside the user's namespace as the unprivileged test user. Where a
connection must fail, a control shows the target really is listening, so the test
would fail if isolation did not hold.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from contextlib import contextmanager

import pytest

from enclave.isolation import popen_in_namespace
from enclave.netns import NamespaceManager

from .conftest import (
    HUB_PORT,
    OTHER_PORT,
    PUBLIC_LOOKING,
    SYSTEM_PYTHON,
    host_connect,
    set_ip_forward,
)

BLOCKED = {"EHOSTUNREACH", "ENETUNREACH", "ECONNREFUSED", "EPERM", "EACCES", "timeout"}


def probe_connect(run_probe, net, *targets):
    return run_probe(net, "connect", json.dumps([list(t) for t in targets]))


def assert_blocked_fast(result):
    assert not result["ok"], f"{result['host']}:{result['port']} answered from inside: {result}"
    assert result["error"] in BLOCKED
    assert result["error"] != "timeout", f"{result} should be refused at once, not time out"
    assert result["seconds"] < 0.3


def ns(net, *argv):
    return subprocess.run(
        ["ip", "-n", net.namespace, *argv], capture_output=True, text=True, check=True
    )


@contextmanager
def ip_forwarding_on():
    old = set_ip_forward("1")
    try:
        yield
    finally:
        set_ip_forward(old)


@contextmanager
def inner_table_removed(net):
    """Simulate a compromised namespace: its own nft table is gone."""
    subprocess.run(
        ["nsenter", f"--net={net.netns_path}", "nft", "delete", "table", "inet", "enclave_ns"],
        check=True,
    )
    yield


@contextmanager
def host_table_removed(manager: NamespaceManager):
    """Simulate another tool flushing the host's ruleset; put ours back afterwards."""
    subprocess.run(["nft", "delete", "table", "inet", manager.config.table], check=True)
    try:
        yield
    finally:
        manager.ensure_host()


def test_hub_port_answers_and_sees_the_guest_address(user_network, hub, run_probe):
    [result] = probe_connect(
        run_probe, user_network, ("tcp", str(user_network.service_address), HUB_PORT)
    )
    assert result["ok"] and result["data"] == "hub\n"
    assert user_network.guest_address in hub.peers


def test_other_host_ports_and_addresses_are_refused(user_network, host_services, run_probe):
    service, gateway = str(user_network.service_address), user_network.host_address
    wildcard, loopback = host_services["wildcard"].port, host_services["loopback"].port
    # Controls: from the host these all answer.
    assert host_connect(service, OTHER_PORT) == b"other\n"
    assert host_connect(gateway, wildcard) == b"wildcard\n"
    assert host_connect("127.0.0.1", loopback) == b"loopback\n"
    results = probe_connect(
        run_probe,
        user_network,
        ("tcp", service, OTHER_PORT),
        ("tcp", service, wildcard),
        ("tcp", gateway, wildcard),
        ("tcp", gateway, HUB_PORT),
        ("tcp", service, loopback),
        ("tcp", gateway, loopback),
    )
    for result in results:
        assert_blocked_fast(result)


def test_host_loopback_services_are_out_of_reach(user_network, host_services, run_probe):
    loopback = host_services["loopback"]
    before = list(loopback.peers)
    results = probe_connect(
        run_probe,
        user_network,
        ("tcp", "127.0.0.1", loopback.port),
        ("tcp", "127.0.0.2", loopback.port),
    )
    for result in results:
        # 127.0.0.0/8 inside the namespace is the namespace's own loopback.
        assert result["error"] == "ECONNREFUSED"
    assert loopback.peers == before


def test_only_layer_the_host_table_still_refuses(user_network, host_services, run_probe):
    """With the in-namespace table gone, the host table alone keeps the rules."""
    service, wildcard = str(user_network.service_address), host_services["wildcard"].port
    with inner_table_removed(user_network):
        ok, *blocked = probe_connect(
            run_probe,
            user_network,
            ("tcp", service, HUB_PORT),
            ("tcp", service, OTHER_PORT),
            ("tcp", user_network.host_address, wildcard),
            ("udp", service, 53),
        )
    assert ok["ok"]
    for result in blocked:
        assert not result["ok"] and result["error"] != "timeout", result
        assert result["seconds"] < 0.3


def test_no_default_route_and_no_ipv6_inside(user_network, run_probe):
    routes = run_probe(user_network, "routes")
    assert not any(r.startswith("default") for r in routes)
    assert routes[0].startswith(f"{user_network.service_address} via {user_network.host_address}")
    assert len(routes) == 2, routes
    addrs = ns(user_network, "-6", "-o", "addr").stdout
    assert "fe80" not in addrs and "scope global" not in addrs
    host_side = subprocess.run(
        ["ip", "-6", "-o", "addr", "show", "dev", user_network.host_interface],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert host_side.strip() == ""


def test_dns_fails_fast_everywhere(user_network, run_probe):
    # Guard: never let a probe leave the machine. With no default route the
    # "public-looking" target fails locally before any packet is sent.
    assert not any(r.startswith("default") for r in run_probe(user_network, "routes"))
    service, gateway = str(user_network.service_address), user_network.host_address
    results = probe_connect(
        run_probe,
        user_network,
        ("udp", service, 53),
        ("tcp", service, 53),
        ("udp", gateway, 53),
        ("tcp", gateway, 53),
        ("udp", PUBLIC_LOOKING, 53),
        ("tcp", PUBLIC_LOOKING, 53),
    )
    for result in results:
        assert_blocked_fast(result)
    assert [r["error"] for r in results[-2:]] == ["ENETUNREACH", "ENETUNREACH"]
    resolved = run_probe(user_network, "resolve", "example.org")
    assert not resolved["ok"] and resolved["seconds"] < 2


def test_outside_host_is_unreachable_even_with_a_route_and_forwarding(
    namespace_manager, user_network, outside_host, run_probe
):
    target = ("tcp", outside_host.address, outside_host.port)
    seen_before = outside_host.peers.count(user_network.guest_address)
    assert host_connect(outside_host.address, outside_host.port) == b"server\n"  # it is up
    [result] = probe_connect(run_probe, user_network, target)
    assert result["error"] == "ENETUNREACH"

    # A breach that gave someone root inside: a route out, forwarding on.
    ns(user_network, "route", "add", f"{outside_host.address}/32", "via", user_network.host_address)
    with ip_forwarding_on():
        [both_layers] = probe_connect(run_probe, user_network, target)
        with inner_table_removed(user_network):
            [host_layer_only] = probe_connect(run_probe, user_network, target)
            # Control: without the host table too, this setup really forwards.
            with host_table_removed(namespace_manager):
                [no_layer] = probe_connect(run_probe, user_network, target)
    assert not both_layers["ok"] and not host_layer_only["ok"]
    assert no_layer["ok"] and no_layer["data"] == "server\n", "control: setup must forward"
    # Only the control got through.
    assert outside_host.peers.count(user_network.guest_address) == seen_before + 1


def test_inner_table_alone_refuses_when_the_host_table_is_flushed(
    namespace_manager, user_network, outside_host, host_services, run_probe
):
    ns(user_network, "route", "add", f"{outside_host.address}/32", "via", user_network.host_address)
    service = str(user_network.service_address)
    seen_before = outside_host.peers.count(user_network.guest_address)
    with ip_forwarding_on(), host_table_removed(namespace_manager):
        hub, *blocked = probe_connect(
            run_probe,
            user_network,
            ("tcp", service, HUB_PORT),
            ("tcp", service, OTHER_PORT),
            ("tcp", outside_host.address, outside_host.port),
            ("udp", service, 53),
        )
    assert hub["ok"]
    for result in blocked:
        assert_blocked_fast(result)
    assert outside_host.peers.count(user_network.guest_address) == seen_before


def test_users_cannot_reach_each_other_but_the_hub_reaches_both(
    namespace_manager, hub, enclave_test_user, run_probe
):
    uid, gid = enclave_test_user
    ada = namespace_manager.create("researcher-ada")
    bob = namespace_manager.create("student-bob")
    server = None
    try:
        server = popen_in_namespace(
            bob,
            [SYSTEM_PYTHON, "-m", "http.server", "--bind", bob.guest_address, str(bob.server_port)],
            uid=uid,
            gid=gid,
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:  # the hub (root on the host) reaches bob's server
            try:
                socket.create_connection((bob.guest_address, bob.server_port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "bob's server did not come up"
                time.sleep(0.05)
        target = ("tcp", bob.guest_address, bob.server_port)
        [direct] = probe_connect(run_probe, ada, target)
        assert direct["error"] == "ENETUNREACH"
        ns(ada, "route", "add", f"{bob.guest_address}/32", "via", ada.host_address)
        with ip_forwarding_on():
            [routed] = probe_connect(run_probe, ada, target)
            with inner_table_removed(ada):
                [host_only] = probe_connect(run_probe, ada, target)
        assert not routed["ok"] and not host_only["ok"]
        # A host process that is not the hub (uid nobody) cannot connect either.
        other = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                SYSTEM_PYTHON,
                "-c",
                f"import socket; socket.create_connection(('{bob.guest_address}', "
                f"{bob.server_port}), timeout=0.5)",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert other.returncode != 0 and "No route to host" in other.stderr  # rejected
    finally:
        if server is not None:
            server.kill()
            server.wait()
        namespace_manager.teardown(bob)
        namespace_manager.teardown(ada)


def test_the_user_cannot_change_routes_or_rules(user_network, enclave_test_user, run_probe):
    uid, gid = enclave_test_user
    attempts = {
        "route": ["ip", "route", "add", "default", "via", user_network.host_address],
        "addr": ["ip", "addr", "add", "10.214.255.254/32", "dev", "eth0"],
        "nft-add": ["nft", "add", "table", "inet", "mine"],
        "nft-flush": ["nft", "flush", "ruleset"],
        "unshare-user": [
            "unshare",
            "--user",
            "--map-root-user",
            "ip",
            "route",
            "add",
            "default",
            "via",
            user_network.host_address,
        ],
    }
    for what, argv in attempts.items():
        proc = popen_in_namespace(
            user_network,
            argv,
            uid=uid,
            gid=gid,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = proc.communicate(timeout=10)
        assert proc.returncode != 0, f"{what} succeeded as the user"
        assert "permitted" in err.lower() or "denied" in err.lower(), (what, err)
    routes = ns(user_network, "route").stdout
    assert "default" not in routes
    status = run_probe(user_network, "status")
    assert status["NoNewPrivs"] == "1"
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["Uid"].split()[0] == str(uid)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_namespace_cannot_reach_its_own_gateway_on_random_ports(user_network, run_probe, proto):
    [result] = probe_connect(run_probe, user_network, (proto, user_network.host_address, 22))
    assert_blocked_fast(result)


def test_the_hubs_environment_does_not_leak_into_the_server(
    user_network, enclave_test_user, monkeypatch
):
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "hub-secret")
    uid, gid = enclave_test_user
    proc = popen_in_namespace(
        user_network, ["env"], uid=uid, gid=gid, cwd="/", stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "hub-secret" not in out and out.startswith("PATH=")
