"""Create, reuse after a crash, tear down and clean up isolated namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from enclave.isolation import popen_in_namespace
from enclave.netns import IsolationError, NamespaceManager, namespace_name

from .conftest import HUB_PORT, isolation_test_config


def links(prefix: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [
        line.split(":")[1].strip().split("@")[0]
        for line in out.splitlines()
        if line.split(":")[1].strip().startswith(prefix)
    ]


def set_elements(manager: NamespaceManager, name: str) -> list:
    proc = subprocess.run(
        ["nft", "-j", "list", "set", "inet", manager.config.table, name],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return []
    for item in json.loads(proc.stdout)["nftables"]:
        if "set" in item:
            return item["set"].get("elem", [])
    return []


def lo_addresses() -> str:
    return subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=True
    ).stdout


def reaches_hub(net, run_probe) -> bool:
    [result] = run_probe(net, "connect", json.dumps([["tcp", str(net.service_address), HUB_PORT]]))
    return result["ok"]


def test_teardown_removes_namespace_veth_and_elements(namespace_manager, hub, run_probe):
    net = namespace_manager.create("student-carol")
    assert os.path.exists(net.netns_path) and net.host_interface in links("enct-")
    assert len(set_elements(namespace_manager, "user_servers")) == 1
    assert reaches_hub(net, run_probe)
    namespace_manager.teardown(net)
    assert not os.path.exists(net.netns_path)
    assert net.host_interface not in links("enct-")
    assert set_elements(namespace_manager, "user_servers") == []
    namespace_manager.teardown("student-carol")  # again: not an error


def test_last_teardown_drops_the_table_but_keeps_the_hub_address(namespace_manager, hub):
    net = namespace_manager.create("student-carol")
    assert namespace_manager.table_exists()
    namespace_manager.teardown(net)
    assert not namespace_manager.table_exists()
    assert str(namespace_manager.config.service_address) in lo_addresses()
    again = namespace_manager.create("student-carol")  # table comes back
    assert namespace_manager.table_exists()
    namespace_manager.teardown(again)


def test_a_crashed_spawners_namespace_is_replaced(
    namespace_manager, hub, enclave_test_user, run_probe
):
    uid, gid = enclave_test_user
    old = namespace_manager.create("researcher-dan")
    straggler = popen_in_namespace(
        old, ["sleep", "60"], uid=uid, gid=gid, env={"PATH": "/usr/bin:/bin"}, cwd="/"
    )
    # Crash only once the straggler really runs inside (nsenter and setpriv have exec'd into
    # sleep); before that it is not in the namespace yet and would join the replacement.
    deadline = time.monotonic() + 10
    while not os.readlink(f"/proc/{straggler.pid}/exe").endswith("/sleep"):
        assert time.monotonic() < deadline, "the straggler never started"
        time.sleep(0.01)
    # The hub restarts: a new manager, no memory of the old namespace.
    restarted = NamespaceManager(namespace_manager.config)
    assert restarted.lookup("researcher-dan") == replace(old, created_seconds=0.0)
    new = restarted.create("researcher-dan")
    try:
        assert straggler.wait(timeout=5) == -9  # killed with its namespace
        assert reaches_hub(new, run_probe)
        assert len(set_elements(namespace_manager, "user_sources")) == 1
    finally:
        restarted.teardown(new)


def test_a_half_made_namespace_is_replaced(namespace_manager, hub, run_probe):
    name = namespace_name("researcher-eve", namespace_manager.config.namespace_prefix)
    subprocess.run(["ip", "netns", "add", name], check=True)  # no veth, no rules
    net = namespace_manager.create("researcher-eve")
    try:
        assert reaches_hub(net, run_probe)
    finally:
        namespace_manager.teardown(net)


def test_a_table_flushed_by_someone_else_is_reloaded_on_the_next_spawn(
    namespace_manager, hub, run_probe
):
    first = namespace_manager.create("researcher-fay")
    subprocess.run(["nft", "delete", "table", "inet", namespace_manager.config.table], check=True)
    second = namespace_manager.create("researcher-gus")
    try:
        assert namespace_manager.table_exists()
        assert reaches_hub(second, run_probe)
        # Re-registered when the table came back (else its source check would drop it).
        assert reaches_hub(first, run_probe)
        assert len(set_elements(namespace_manager, "user_sources")) == 2
    finally:
        namespace_manager.teardown(first)
        namespace_manager.teardown(second)


def test_thirty_users_spawn_in_parallel(namespace_manager, hub, run_probe):
    users = [f"student-{i:02d}" for i in range(30)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=30) as pool:
        nets = list(pool.map(namespace_manager.create, users))
    created = time.perf_counter() - started
    try:
        assert len({n.addresses.slot for n in nets}) == 30
        assert len({n.host_interface for n in nets}) == 30
        assert len(set_elements(namespace_manager, "user_servers")) == 30
        assert all(reaches_hub(n, run_probe) for n in nets[::10])
    finally:
        with ThreadPoolExecutor(max_workers=30) as pool:
            list(pool.map(namespace_manager.teardown, nets))
    assert created < 20, f"30 namespaces took {created:.1f} s"
    assert not [n for n in namespace_manager.namespaces() if n.startswith("enclavetest-student-")]


@pytest.fixture
def small_manager(as_root):
    """A separate table, prefixes and a /28 (three user slots) for cleanup tests."""
    config = replace(
        isolation_test_config(),
        address_range="10.216.0.0/28",
        table="enclave_cleanup",
        namespace_prefix="enclaveclean-",
        veth_prefix="encc-",
    )
    manager = NamespaceManager(config)
    yield manager
    manager.cleanup_all()


def test_a_full_range_is_a_clear_error(small_manager):
    for name in ("a", "b", "c"):
        small_manager.create(name)
    with pytest.raises(IsolationError, match="10.216.0.0/28 is full"):
        small_manager.create("d")
    assert len(small_manager.namespaces()) == 3


def test_cleanup_all_leaves_nothing_behind(small_manager):
    for name in ("a", "b"):
        small_manager.create(name)
    subprocess.run(
        ["ip", "link", "add", "encc-stray", "type", "veth", "peer", "name", "encc-stray-p"],
        check=True,
    )
    removed = small_manager.cleanup_all()
    assert "encc-stray" in removed and "table inet enclave_cleanup" in removed
    assert small_manager.namespaces() == []
    assert not [n for n in os.listdir("/run/netns") if n.startswith("enclaveclean-")]
    assert links("encc-") == []
    assert not small_manager.table_exists()
    assert "10.216.0.1/32" not in lo_addresses()
