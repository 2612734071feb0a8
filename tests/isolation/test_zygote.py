"""The pre-imported zygote: a forked server must be in exactly the state the exec chain leaves.

Each test forks ``describe_process.py`` from a real zygote (the server interpreter, Jupyter
imported) into a real namespace as the unprivileged test user, and compares what the process
sees with the same script started through ``popen_in_namespace`` (nsenter, prlimit, setpriv).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave.isolation import ResourceLimits, apply_limits, limit_backend, popen_in_namespace
from enclave.workspace.interpreter import server_python
from enclave.workspace.zygote import (
    SpawnRequest,
    ZygoteClient,
    ZygoteError,
    ZygoteUnavailable,
    entry_point,
    rlimits_from_prlimit_args,
)

from .conftest import HUB_PORT

DESCRIBE = Path(__file__).with_name("describe_process.py")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server_files(as_root) -> Iterator[Path]:
    """Root-owned, world-readable: the bridge interpreter and an output folder for the user."""
    root = Path(tempfile.mkdtemp(prefix="enclave-zygote-test-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def python(server_files) -> str:
    return server_python(server_files / "server-python")


@pytest.fixture(scope="module")
def zygote(python) -> Iterator[ZygoteClient]:
    client = ZygoteClient(python)
    client.start()
    assert client.wait_ready(120), "the zygote did not finish its imports"
    yield client
    client.stop()


@pytest.fixture
def outbox(server_files, enclave_test_user) -> Path:
    box = server_files / f"out-{secrets.token_hex(4)}"
    box.mkdir()
    os.chown(box, *enclave_test_user)
    return box


def environment(token: str = "") -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/",
        "JUPYTERHUB_API_TOKEN": token or secrets.token_hex(16),
    }


def describe_via_exec(python, net, user, out: Path, env, applied=None) -> dict:
    proc = popen_in_namespace(
        net,
        [python, str(DESCRIBE), str(out), *hub_args(net)],
        uid=user[0],
        gid=user[1],
        env=env,
        cwd="/",
        limits=applied,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    assert proc.wait(60) == 0
    return json.loads(out.read_text())


def describe_via_zygote(zygote, python, net, user, out: Path, env, applied=None) -> dict:
    request = SpawnRequest(
        argv=[python, str(DESCRIBE), str(out), *hub_args(net)],
        env=env,
        cwd="/",
        uid=user[0],
        gid=user[1],
        netns_path=net.netns_path,
        cgroup_procs=[str(f) for f in applied.procs_files] if applied else [],
        rlimits=rlimits_from_prlimit_args(applied.prlimit_args) if applied else {},
    )
    proc = zygote.spawn(request)
    assert proc.wait(60) == 0
    proc.close()
    return json.loads(out.read_text())


def hub_args(net) -> list[str]:
    return [str(net.service_address), str(HUB_PORT)]


def test_only_the_server_interpreter_with_a_module_or_file_is_forked(python):
    assert entry_point([python, "-m", "enclave.workspace.singleuser", "--x"], python) == (
        "module",
        "enclave.workspace.singleuser",
        ["--x"],
    )
    assert entry_point([python, "/srv/probe.py", "a"], python) == ("path", "/srv/probe.py", ["a"])
    assert entry_point(["/usr/bin/perl", "-m", "x"], python) is None
    assert entry_point([python, "-c", "print(1)"], python) is None
    assert entry_point([python, "-m", "os; import x"], python) is None


def test_a_forked_process_is_in_the_state_the_exec_chain_leaves(
    zygote, python, user_network, enclave_test_user, outbox, hub
):
    env = environment()
    via_exec = describe_via_exec(python, user_network, enclave_test_user, outbox / "exec.json", env)
    via_zygote = describe_via_zygote(
        zygote, python, user_network, enclave_test_user, outbox / "zygote.json", env
    )
    for key in (
        "status",
        "netns",
        "cgroups",
        "session_leader",
        "cwd",
        "env",
        "fds",
        "stdin",
        "rlimit_as",
        "rlimit_nproc",
        "umask",
        "hub",
    ):
        assert via_zygote[key] == via_exec[key], key
    # ... and that state is the isolated one.
    status = via_zygote["status"]
    assert status["Uid"].split() == [str(enclave_test_user[0])] * 4
    assert status["Gid"].split() == [str(enclave_test_user[1])] * 4
    assert all(int(status[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
    assert status["NoNewPrivs"] == "1"
    assert via_zygote["netns"] == os.stat(user_network.netns_path).st_ino
    assert via_zygote["netns"] != os.stat("/proc/self/ns/net").st_ino
    assert via_zygote["env"] == env  # nothing of the zygote's or the hub's environment
    assert via_zygote["fds"] == [0, 1, 2, 3]  # 3: the listing of /proc/self/fd itself
    assert via_zygote["stdin"] == "/dev/null"
    assert via_zygote["hub"] == "hub\n"


def test_limits_are_the_same_on_both_paths(
    zygote, python, user_network, enclave_test_user, outbox, hub
):
    backends = [b for b in ("cgroup2", "cgroup1") if b == limit_backend()] + ["rlimit"]
    for backend in backends:
        limits = ResourceLimits(memory_max=512 * MiB, pids_max=64)
        results = []
        for path, describe in (("exec", describe_via_exec), ("zygote", None)):
            applied = apply_limits(f"{user_network.namespace}-{path}", limits, backend=backend)
            try:
                out = outbox / f"{backend}-{path}.json"
                if describe is not None:
                    results.append(
                        describe(
                            python, user_network, enclave_test_user, out, environment(), applied
                        )
                    )
                else:
                    results.append(
                        describe_via_zygote(
                            zygote,
                            python,
                            user_network,
                            enclave_test_user,
                            out,
                            environment(),
                            applied,
                        )
                    )
                if backend.startswith("cgroup"):
                    assert any(
                        f"enclave/{user_network.namespace}-{path}" in line
                        for line in results[-1]["cgroups"]
                    ), results[-1]["cgroups"]
            finally:
                applied.remove()
        via_exec, via_zygote = results
        assert via_zygote["rlimit_as"] == via_exec["rlimit_as"]
        assert via_zygote["rlimit_nproc"] == via_exec["rlimit_nproc"]
        if backend == "rlimit":
            assert via_zygote["rlimit_as"] == [512 * MiB, 512 * MiB]


def test_the_zygote_never_holds_a_users_token(
    zygote, python, user_network, enclave_test_user, outbox, hub
):
    """The parent forks before the request is read: later children cannot find it in memory."""
    token = secrets.token_hex(24)
    describe_via_zygote(
        zygote, python, user_network, enclave_test_user, outbox / "t.json", environment(token)
    )
    pid = zygote.process.pid
    needle = token.encode()
    found = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    found = True
                    break
            except (OSError, ValueError, OverflowError):
                continue
    assert not found


def test_signals_reach_the_forked_process_and_its_status_comes_back(
    zygote, python, user_network, enclave_test_user, server_files
):
    script = server_files / "sleeper.py"
    script.write_text("import time\ntime.sleep(60)\n")
    os.chmod(script, 0o644)
    request = SpawnRequest(
        argv=[python, str(script)],
        env=environment(),
        cwd="/",
        uid=enclave_test_user[0],
        gid=enclave_test_user[1],
        netns_path=user_network.netns_path,
    )
    proc = zygote.spawn(request)
    try:
        assert proc.poll() is None
        os.kill(proc.pid, 0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM
        with pytest.raises(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # gone: never a recycled pid
    finally:
        proc.kill()
        proc.close()


def test_a_failed_setup_is_reported_and_runs_nothing(zygote, python, enclave_test_user, outbox):
    request = SpawnRequest(
        argv=[python, str(DESCRIBE), str(outbox / "never.json")],
        env=environment(),
        cwd="/",
        uid=enclave_test_user[0],
        gid=enclave_test_user[1],
        netns_path="/run/netns/enclave-no-such-ns",
    )
    with pytest.raises(ZygoteError, match="No such file"):
        zygote.spawn(request)
    root = SpawnRequest(
        argv=[python, str(DESCRIBE), str(outbox / "root.json")],
        env=environment(),
        cwd="/",
        uid=0,
        gid=0,
        netns_path="/proc/self/ns/net",
    )
    with pytest.raises(ZygoteError, match="root"):
        zygote.spawn(root)
    time.sleep(0.2)
    assert not (outbox / "never.json").exists() and not (outbox / "root.json").exists()


def test_without_a_running_zygote_spawn_asks_for_the_exec_path(
    python, user_network, enclave_test_user
):
    client = ZygoteClient(python)
    request = SpawnRequest(
        argv=[python, str(DESCRIBE), "/nonexistent"],
        env=environment(),
        cwd="/",
        uid=enclave_test_user[0],
        gid=enclave_test_user[1],
        netns_path=user_network.netns_path,
    )
    with pytest.raises(ZygoteUnavailable):
        client.spawn(request)  # never started
    client.start()
    try:
        assert client.wait_ready(120)
        client.process.kill()
        client.process.wait()
        with pytest.raises(ZygoteUnavailable):
            client.spawn(request)
    finally:
        client.stop()
    other = SpawnRequest(
        argv=["/usr/bin/python3", "-c", "pass"],
        env={},
        cwd="/",
        uid=1,
        gid=1,
        netns_path=user_network.netns_path,
    )
    with pytest.raises(ZygoteUnavailable):
        client.spawn(other)
