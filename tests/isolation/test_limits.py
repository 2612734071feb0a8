"""Resource limits on a user server: memory, processes, CPU."""

from __future__ import annotations

import json
import subprocess

import pytest

from enclave.isolation import ResourceLimits, apply_limits, limit_backend, popen_in_namespace

from .conftest import PROBE, SYSTEM_PYTHON

MiB = 1024 * 1024
BACKENDS = [b for b in ("cgroup2", "cgroup1") if b == limit_backend()] + ["rlimit"]


def run_limited(net, user, limits, *args, timeout=30):
    uid, gid = user
    proc = popen_in_namespace(
        net,
        [SYSTEM_PYTHON, str(PROBE), *args],
        uid=uid,
        gid=gid,
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        limits=limits,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=timeout)
    if proc.limits is not None:
        proc.limits.remove()
        assert proc.limits.pids() == []
        assert not any(d.exists() for d in proc.limits.cgroup_dirs)
    return proc.returncode, out, err


def test_the_backend_in_force_is_reported():
    backend = limit_backend()
    assert backend in ("cgroup2", "cgroup1", "rlimit")
    print(f"resource limits on this machine: {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_allocating_past_the_memory_cap_fails(user_network, enclave_test_user, backend):
    rc, out, _ = run_limited(user_network, enclave_test_user, None, "alloc", str(256 * MiB))
    assert rc == 0 and json.loads(out)["allocated"] == 256 * MiB  # control: no cap, it works
    applied = apply_limits(
        f"{user_network.namespace}-mem", ResourceLimits(memory_max=96 * MiB), backend=backend
    )
    rc, out, err = run_limited(user_network, enclave_test_user, applied, "alloc", str(256 * MiB))
    assert rc != 0 and "allocated" not in out
    if backend.startswith("cgroup"):
        assert rc == -9  # the OOM killer
    else:
        assert "MemoryError" in err


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_process_cap_stops_a_fork_storm(user_network, enclave_test_user, backend):
    applied = apply_limits(
        f"{user_network.namespace}-pids", ResourceLimits(pids_max=12), backend=backend
    )
    rc, out, _ = run_limited(user_network, enclave_test_user, applied, "spawn", "40")
    result = json.loads(out)
    assert rc == 0 and result["started"] < 12 and result["error"] == "EAGAIN"


@pytest.mark.skipif(not limit_backend().startswith("cgroup"), reason="rlimits cannot cap CPU")
def test_the_cpu_cap_throttles_a_busy_loop(user_network, enclave_test_user):
    limits = ResourceLimits(cpu_max=0.2)
    rc, out, _ = run_limited(user_network, enclave_test_user, limits, "burn", "1.0")
    result = json.loads(out)
    assert rc == 0 and result["cpu"] / result["wall"] < 0.45, result
