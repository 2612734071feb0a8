"""Pure builders: names, addresses and rule text. No root needed."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave import netns
from enclave.isolation import AppliedLimits, ResourceLimits, namespace_command
from enclave.netns import (
    IFNAMSIZ,
    IsolationError,
    NetnsConfig,
    choose_slot,
    host_ruleset,
    namespace_name,
    namespace_ruleset,
    parse_range,
    user_addresses,
    user_elements,
    veth_name,
)

POLICIES = Path(__file__).resolve().parents[2] / "policies" / "nftables"


@given(st.text(min_size=1, max_size=200))
def test_any_user_name_gives_a_safe_namespace_and_veth_name(user):
    ns = namespace_name(user)
    assert ns.startswith("enclave-")
    assert "/" not in ns and len(ns) <= netns.MAX_NAMESPACE_NAME
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in ns)
    veth = veth_name(ns)
    assert veth.startswith("enc-") and len(veth) <= IFNAMSIZ


def test_plain_user_names_stay_readable():
    assert namespace_name("alice") == "enclave-alice"
    assert namespace_name("dr.smith-2") == "enclave-dr.smith-2"


@pytest.mark.parametrize(
    "a, b",
    [("a.b", "a_b"), ("Alice", "alice"), ("x@y.org", "x_y.org"), ("ä", "_"), ("../etc", ".._etc")],
)
def test_names_that_clean_up_alike_still_get_different_namespaces(a, b):
    assert namespace_name(a) != namespace_name(b)
    assert veth_name(namespace_name(a)) != veth_name(namespace_name(b))


def test_empty_user_name_is_refused():
    with pytest.raises(IsolationError, match="empty"):
        namespace_name("")


def test_user_slot_is_a_30_with_host_gateway_and_guest():
    net = parse_range("10.213.0.0/16")
    addrs = user_addresses(net, 1)
    assert str(addrs.network) == "10.213.0.4/30"
    assert str(addrs.host) == "10.213.0.5" and str(addrs.guest) == "10.213.0.6"
    assert netns.service_address(net) == ipaddress.IPv4Address("10.213.0.1")
    with pytest.raises(IsolationError):
        user_addresses(net, 0)  # slot 0 holds the service address
    with pytest.raises(IsolationError):
        user_addresses(net, 16384)


def test_slots_probe_past_used_ones_and_report_a_full_range():
    net = parse_range("10.213.0.0/28")  # 4 slots, 3 usable
    first = choose_slot("enclave-a", net, set())
    second = choose_slot("enclave-a", net, {first})
    assert second != first and 1 <= second <= 3
    with pytest.raises(IsolationError, match="full"):
        choose_slot("enclave-a", net, {1, 2, 3})


@pytest.mark.parametrize(
    "bad",
    [
        "8.8.8.0/24",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "10.0.0.0/30",
        "10.213.0.1/16",
        "not-a-net",
        "fd00::/64",
    ],
)
def test_ranges_that_are_public_tiny_or_malformed_are_refused(bad):
    with pytest.raises(IsolationError):
        parse_range(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"service_ports": ()},
        {"service_ports": (70000,)},
        {"server_port": 0},
        {"table": "bad table"},
        {"veth_prefix": "toolongprefix-"},
        {"namespace_prefix": "x"},
    ],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(IsolationError):
        NetnsConfig(**kwargs)


def test_host_ruleset_fails_closed_on_every_user_veth():
    text = host_ruleset(hub_uids=(0, 995))
    assert 'iifname != "enc-*" accept' in text
    assert 'forward iifname "enc-*" drop' in text and 'forward oifname "enc-*" drop' in text
    assert "meta skuid @hub_uids" in text and "hub_uids { 0, 995 }" in text
    assert "reject with icmpx type admin-prohibited" in text
    with pytest.raises(IsolationError):
        host_ruleset(hub_uids=())


def test_per_user_change_is_three_element_lines():
    text = user_elements(
        "add",
        table="enclave",
        host_interface="enc-0123456789",
        guest_address=ipaddress.IPv4Address("10.213.0.6"),
        service_address=ipaddress.IPv4Address("10.213.0.1"),
        service_ports=(8081, 8000),
        server_port=8888,
    )
    assert text.splitlines() == [
        'add element inet enclave user_sources { "enc-0123456789" . 10.213.0.6 }',
        'add element inet enclave user_services { "enc-0123456789" . 10.213.0.1 . 8081, '
        '"enc-0123456789" . 10.213.0.1 . 8000 }',
        "add element inet enclave user_servers { 10.213.0.6 . 8888 }",
    ]


def test_policy_files_are_what_the_code_loads():
    """policies/nftables is the documented copy; it must not drift from the code.
    Regenerate with: .venv/bin/python -m enclave.netns write-policies"""
    assert (POLICIES / "enclave-host.nft").read_text() == host_ruleset()
    example = netns.example_namespace_ruleset()
    assert (POLICIES / "enclave-namespace.nft").read_text() == example


def test_namespace_ruleset_allows_only_the_service_ports_and_server_port():
    text = namespace_ruleset(
        service_address=ipaddress.IPv4Address("10.213.0.1"),
        service_ports=(8081,),
        guest_address=ipaddress.IPv4Address("10.213.0.6"),
        server_port=8888,
    )
    assert "policy drop" in text
    assert "ip daddr 10.213.0.1 tcp dport { 8081 } accept" in text
    assert "ip daddr 10.213.0.6 tcp dport 8888 accept" in text


def test_command_chain_drops_privileges_and_joins_cgroups_first():
    applied = AppliedLimits(
        "cgroup2",
        ResourceLimits(memory_max=1 << 30),
        cgroup_dirs=(Path("/sys/fs/cgroup/enclave/enclave-a"),),
    )
    argv = namespace_command(
        "/run/netns/enclave-a", ["jupyterhub-singleuser"], uid=1000, gid=1000, applied=applied
    )
    assert (
        argv[:2] == ["/bin/sh", "-c"] and "/sys/fs/cgroup/enclave/enclave-a/cgroup.procs" in argv[2]
    )
    assert "--net=/run/netns/enclave-a" in argv
    setpriv = argv.index("setpriv")
    assert {"--reuid=1000", "--regid=1000", "--no-new-privs", "--bounding-set=-all"} <= set(
        argv[setpriv:]
    )
    assert argv[-1] == "jupyterhub-singleuser"
    rl = AppliedLimits(
        "rlimit",
        ResourceLimits(memory_max=1 << 30, pids_max=64, cpu_max=1.0),
        prlimit_args=("--as=1073741824", "--nproc=64"),
    )
    argv = namespace_command("/run/netns/enclave-a", ["x"], uid=1000, gid=1000, applied=rl)
    assert argv[argv.index("prlimit") + 1 : argv.index("prlimit") + 3] == [
        "--as=1073741824",
        "--nproc=64",
    ]
    assert rl.unenforced == ("cpu_max",) and "NOT enforced" in rl.describe()


def test_user_servers_never_run_as_root():
    with pytest.raises(IsolationError, match="root"):
        namespace_command("/run/netns/x", ["sh"], uid=0, gid=1000)
    with pytest.raises(IsolationError, match="root"):
        namespace_command("/run/netns/x", ["sh"], uid=1000, gid=0)


@pytest.mark.parametrize("kwargs", [{"memory_max": 1024}, {"cpu_max": 0.0}, {"pids_max": 0}])
def test_nonsense_limits_are_refused(kwargs):
    with pytest.raises(IsolationError):
        ResourceLimits(**kwargs)


def test_missing_tools_name_the_debian_package(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    monkeypatch.setattr(netns.os, "access", lambda path, mode: False)
    with pytest.raises(IsolationError, match=r"nft \(Debian package nftables\)"):
        netns.require_tools("ip", "nft")


def test_not_root_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    with pytest.raises(IsolationError, match="needs root"):
        netns.NamespaceManager()


def fake_cgroup2_root(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_cgroup2_is_chosen_and_written_in_kernel_format(tmp_path):
    """The cgroup v2 file formats (this machine is v1, so the kernel side is not exercised)."""
    from enclave.isolation import apply_limits, limit_backend

    root = fake_cgroup2_root(tmp_path)
    assert limit_backend(root) == "cgroup2"
    applied = apply_limits(
        "enclave-ada", ResourceLimits(memory_max=2 << 30, cpu_max=1.5, pids_max=512), root=root
    )
    leaf = root / "enclave" / "enclave-ada"
    assert applied.cgroup_dirs == (leaf,) and applied.procs_files == (leaf / "cgroup.procs",)
    assert (leaf / "memory.max").read_text() == str(2 << 30)
    assert (leaf / "cpu.max").read_text() == "150000 100000"
    assert (leaf / "pids.max").read_text() == "512"
    assert "+memory" in (root / "enclave" / "cgroup.subtree_control").read_text()


def test_without_writable_cgroups_rlimits_are_used(tmp_path):
    from enclave.isolation import apply_limits, limit_backend

    assert limit_backend(tmp_path) == "rlimit"
    applied = apply_limits(
        "enclave-ada", ResourceLimits(memory_max=1 << 30, cpu_max=1.0), root=tmp_path
    )
    assert applied.backend == "rlimit" and applied.prlimit_args == ("--as=1073741824",)
    assert applied.unenforced == ("cpu_max",)


def test_cgroup_names_cannot_escape_the_enclave_group(tmp_path):
    from enclave.isolation import apply_limits

    root = fake_cgroup2_root(tmp_path)
    for bad in ("../x", "", ".."):
        with pytest.raises(IsolationError, match="plain name"):
            apply_limits(bad, ResourceLimits(pids_max=5), root=root)
