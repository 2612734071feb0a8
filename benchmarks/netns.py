"""How long network isolation adds to a user-server spawn (run as root).

    .venv/bin/python benchmarks/netns.py [--runs 20] [--parallel 30]
        [--server tiny|jupyter] [--spawn-runs N]

Prints: create+teardown of one isolated namespace (median of N); N in parallel;
and a plain local spawn of a small TCP server vs the same server spawned isolated
(namespace + limits + uid drop), measured until the server accepts a connection.
Uses its own table, prefixes and range, so a running enclave is not disturbed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from enclave.isolation import ResourceLimits, limit_backend, popen_in_namespace
from enclave.netns import NamespaceManager, NetnsConfig

SERVER = "import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 8888)); s.listen(); s.accept()"
CONFIG = NetnsConfig(
    address_range="10.217.0.0/16",
    table="enclave_bench",
    namespace_prefix="enclavebench-",
    veth_prefix="encb-",
)


def wait_connect(address: str, port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.002)


def server_argv(kind: str, address: str) -> list[str]:
    if kind == "jupyter":
        return [
            sys.executable,
            "-m",
            "jupyter_server",
            f"--ServerApp.ip={address}",
            "--ServerApp.port=8888",
            "--ServerApp.port_retries=0",
            "--no-browser",
            "--ServerApp.token=bench",
            "--ServerApp.root_dir=/tmp",
        ]
    return ["/usr/bin/python3", "-c", SERVER, address]


def server_env() -> dict[str, str]:
    home = tempfile.mkdtemp(prefix="enclave-bench-")
    os.chown(home, 65534, 65534)
    return {"PATH": "/usr/bin:/bin", "HOME": home, "JUPYTER_RUNTIME_DIR": f"{home}/rt"}


def plain_spawn(kind: str) -> float:
    env = server_env()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *server_argv(kind, "127.0.0.1"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_connect("127.0.0.1", 8888, 60)
    elapsed = time.perf_counter() - started
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(env["HOME"], ignore_errors=True)
    return elapsed


def isolated_spawn(manager: NamespaceManager, kind: str) -> tuple[float, float]:
    env = server_env()
    started = time.perf_counter()
    net = manager.create("bench-spawn")
    proc = popen_in_namespace(
        net,
        server_argv(kind, net.guest_address),
        uid=65534,
        gid=65534,
        cwd="/",
        env=env,
        limits=ResourceLimits(memory_max=1 << 30, cpu_max=1.0, pids_max=256),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_connect(net.guest_address, net.server_port, 60)
    elapsed = time.perf_counter() - started
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(env["HOME"], ignore_errors=True)
    t = time.perf_counter()
    assert proc.limits is not None  # given ResourceLimits, popen_in_namespace applies them
    proc.limits.remove()
    manager.teardown(net)
    return elapsed, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=30)
    parser.add_argument(
        "--server",
        choices=["tiny", "jupyter"],
        default="tiny",
        help="what to spawn: a 1-line TCP server, or jupyter_server",
    )
    parser.add_argument("--spawn-runs", type=int, default=0)
    args = parser.parse_args()
    manager = NamespaceManager(CONFIG)
    manager.cleanup_all()
    manager.ensure_host()
    # Keep one user alive so the table is not dropped and re-made between runs.
    anchor = manager.create("bench-anchor")
    try:
        creates, teardowns = [], []
        for i in range(args.runs):
            t = time.perf_counter()
            net = manager.create(f"bench-{i}")
            creates.append(time.perf_counter() - t)
            t = time.perf_counter()
            manager.teardown(net)
            teardowns.append(time.perf_counter() - t)
        print(
            f"one namespace, median of {args.runs}: create {statistics.median(creates) * 1e3:.1f} ms,"
            f" teardown {statistics.median(teardowns) * 1e3:.1f} ms, "
            f"sum {statistics.median([a + b for a, b in zip(creates, teardowns, strict=True)]) * 1e3:.1f} ms"
        )

        users = [f"bench-par-{i}" for i in range(args.parallel)]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            t = time.perf_counter()
            nets = list(pool.map(manager.create, users))
            created = time.perf_counter() - t
            t = time.perf_counter()
            list(pool.map(manager.teardown, nets))
            removed = time.perf_counter() - t
        print(f"{args.parallel} in parallel: create {created:.2f} s, teardown {removed:.2f} s")

        runs = args.spawn_runs or args.runs
        plain, isolated = [], []
        for _ in range(runs):  # interleaved, so load changes hit both alike
            plain.append(plain_spawn(args.server))
            isolated.append(isolated_spawn(manager, args.server))
        p, iso = statistics.median(plain), statistics.median(x for x, _ in isolated)
        print(
            f"{args.server} server spawn until it accepts, median of {runs}"
            f" (limits: {limit_backend()}):"
            f" plain {p * 1e3:.1f} ms, isolated {iso * 1e3:.1f} ms ({iso / p:.2f}x);"
            f" isolated stop+cleanup {statistics.median(y for _, y in isolated) * 1e3:.1f} ms"
        )
    finally:
        manager.teardown(anchor)
        manager.cleanup_all()


if __name__ == "__main__":
    main()
