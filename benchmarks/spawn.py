"""Spawn latency of isolated user servers, next to JupyterHub's plain LocalProcessSpawner.

    python -m benchmarks.spawn [--spawns 20] [--concurrent 30]      (as root)

Runs two real hubs one after the other from ``hub_config/jupyterhub_config.py``, on their own
ports, address range and prefixes: first with ``LocalProcessSpawner`` (same server command, no
namespace, no limits, no mounts), then with ``IsolatedSpawner``. For each, one user's server is
spawned and stopped ``--spawns`` times; the time is from the spawn request (REST, as the hub's
"Start" button) to the hub reporting the server ready. Then ``--concurrent`` users ask for
their servers at once (isolated) and the time until the last is ready is reported.
Targets: isolation overhead < 1.5x, isolated median < 3 s, 30 users ready within 60 s.
For the isolated single spawns it also prints where the time went (median per phase), from the
phase times ``IsolatedSpawner`` keeps in the server's state, read after each timed spawn:
hub before ``start()``, preparation (account, datasets, namespace), launch (limits and fork or
exec), the server's own start until it answers, and from there to the hub reporting it ready.
Prints figures and, last, one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from ingestion.service import free_port

TARGETS = {"overhead_ratio": 1.5, "isolated_median_s": 3.0, "concurrent_all_ready_s": 60.0}


# The baseline hub: the enclave's own configuration, then JupyterHub's plain
# LocalProcessSpawner running the same server command, with no isolation at all. It lives
# here, not in the shipped configuration, which offers no way to turn isolation off.
BASELINE_CONFIG = """
from enclave.workspace.hub import hub_jupyter_environment
from enclave.workspace.launcher import hub_config_file

c = get_config()
load_subconfig(str(hub_config_file()))
c.JupyterHub.spawner_class = "jupyterhub.spawner.LocalProcessSpawner"
c.LocalProcessSpawner.cmd = c.IsolatedSpawner.cmd
c.LocalProcessSpawner.environment = hub_jupyter_environment()
"""


def make_settings(state_dir: Path, tag: str):
    from enclave.workspace.hub import HubSettings

    return HubSettings(
        state_dir=str(state_dir),
        public_port=free_port(),
        proxy_api_port=free_port(),
        hub_port=free_port(),
        catalog_port=free_port(),
        airlock_port=free_port(),
        address_range="10.219.64.0/20",
        netns_table="enclave_bench",
        namespace_prefix=f"encb{tag}-",
        veth_prefix="encb-",
        unix_prefix=f"encb{tag}-",
        home_root=str(state_dir) + "-homes",
        plaintext_root=str(state_dir / "plaintext"),
        lock_path=str(state_dir / "netns.lock"),
        managed_services=[],
        log_level="WARN",
        start_timeout_seconds=180,
    )


class Bench:
    def __init__(
        self,
        settings,
        mnemonics: list[str],
        *,
        baseline: bool = False,
        config_text: str | None = None,
    ) -> None:
        """``baseline``: the plain LocalProcessSpawner hub; ``config_text``: a hub
        configuration of the caller's (another benchmark's) instead of the shipped one."""
        from enclave.workspace.hub import admin_token
        from enclave.workspace.launcher import start_hub

        self.settings = settings
        settings.save()
        config = None
        if baseline or config_text:
            config = settings.hub_dir / "bench_jupyterhub_config.py"
            config.write_text(BASELINE_CONFIG if baseline else str(config_text))
        start_hub(settings, mnemonics, config_file=config)
        self.api = httpx.Client(
            base_url=f"{settings.public_url}hub/api",
            timeout=120,
            headers={"Authorization": f"token {admin_token(settings)}"},
        )

    def add_user(self, name: str) -> None:
        self.api.post(f"/users/{name}")

    def ready(self, name: str) -> bool:
        server = self.api.get(f"/users/{name}").json()["servers"].get("")
        return bool(server and server.get("ready"))

    def spawn_time(self, name: str) -> float:
        self.last_request_wall = time.time()
        started = time.perf_counter()
        reply = self.api.post(f"/users/{name}/server")
        if reply.status_code not in (201, 202):
            raise SystemExit(f"spawn of {name} refused: {reply.status_code} {reply.text[:200]}")
        while not self.ready(name):
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        self.last_ready_wall = self.last_request_wall + elapsed
        return elapsed

    def phases(self, name: str) -> dict[str, float | str] | None:
        """Where the last spawn's time went (after the timed interval: it is not measured)."""
        server = self.api.get(f"/users/{name}").json()["servers"].get("") or {}
        marks = (server.get("state") or {}).get("spawn_timings")
        if not marks:
            return None
        points = [
            self.last_request_wall,
            marks["start"],
            marks["prepared"],
            marks["launched"],
            marks["answered"],
            self.last_ready_wall,
        ]
        names = ["hub_before_start", "prepare", "launch", "server_start", "hub_to_ready"]
        found: dict[str, float | str] = {
            n: round(b - a, 3) for n, a, b in zip(names, points, points[1:], strict=False)
        }
        found["path"] = marks.get("path", "?")
        return found

    def stop(self, names: list[str]) -> None:
        for name in names:
            self.api.delete(f"/users/{name}/server")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            users = {u["name"]: u for u in self.api.get("/users").json()}
            if not any(users.get(n, {}).get("servers") for n in names):
                return
            time.sleep(0.2)
        raise SystemExit(f"servers of {names} did not stop")

    def concurrent(self, names: list[str]) -> float:
        """Everyone clicks Start at once (the hub's POST waits up to 10 s, so in parallel)."""
        from concurrent.futures import ThreadPoolExecutor

        def request(name: str) -> None:
            with httpx.Client(
                base_url=str(self.api.base_url), headers=self.api.headers, timeout=120
            ) as client:
                reply = client.post(f"/users/{name}/server")
            if reply.status_code not in (201, 202):
                raise SystemExit(f"spawn of {name} refused: {reply.status_code} {reply.text[:200]}")

        started = time.perf_counter()
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(request, names))
        waiting = set(names)
        while waiting:
            users = {u["name"]: u for u in self.api.get("/users").json()}
            waiting = {
                n for n in waiting if not users[n].get("servers", {}).get("", {}).get("ready")
            }
            if time.perf_counter() - started > 300:
                raise SystemExit(f"{len(waiting)} servers not ready after 300 s")
            time.sleep(0.2)
        return time.perf_counter() - started

    def close(self) -> None:
        from enclave.workspace.launcher import clean_leftovers, stop_hub

        self.api.close()
        stop_hub(self.settings)
        clean_leftovers(self.settings)


def median_phases(phases: list[dict | None]) -> dict[str, float | str]:
    known = [p for p in phases if p]
    if not known:
        return {}
    found: dict[str, float | str] = {
        k: round(statistics.median(p[k] for p in known), 3) for k in known[0] if k != "path"
    }
    paths = sorted({str(p["path"]) for p in known})
    found["paths"] = "+".join(f"{path} x{sum(p['path'] == path for p in known)}" for path in paths)
    return found


def run(spawns: int, concurrent: int) -> dict:
    from enclave.custody import init_custody
    from enclave.workspace import accounts

    if os.geteuid() != 0:
        raise SystemExit("error: the spawn benchmark needs root (namespaces, users, nftables)")
    state_dir = Path(tempfile.mkdtemp(prefix="enclave-bench-", dir="/tmp"))
    homes = Path(f"{state_dir}-homes")
    tag = uuid.uuid4().hex[:4]
    mnemonics = init_custody(state_dir, custodians=2, threshold=2)
    result: dict = {"spawns": spawns, "concurrent_users": concurrent, "cpus": os.cpu_count()}
    try:
        # Baseline: the same server command under LocalProcessSpawner (needs a Unix user named
        # like the hub user).
        plain = make_settings(state_dir, tag)
        account = accounts.ensure_account("plain", Path(plain.home_root), plain.unix_prefix)
        bench = Bench(plain, mnemonics, baseline=True)
        try:
            bench.add_user(account.name)
            times = []
            for _ in range(spawns):
                times.append(bench.spawn_time(account.name))
                bench.stop([account.name])
            result["plain_median_s"] = round(statistics.median(times), 3)
            print(
                f"LocalProcessSpawner: median {result['plain_median_s']:.2f} s over {spawns} "
                f"spawns (min {min(times):.2f}, max {max(times):.2f})"
            )
        finally:
            bench.close()

        isolated = make_settings(state_dir, tag)
        bench = Bench(isolated, mnemonics)
        try:
            bench.add_user("solo")
            times = []
            phases = []
            for _ in range(spawns):
                times.append(bench.spawn_time("solo"))
                phases.append(bench.phases("solo"))
                bench.stop(["solo"])
            result["isolated_median_s"] = round(statistics.median(times), 3)
            result["isolated_phases_median_s"] = median_phases(phases)
            result["overhead_ratio"] = round(
                result["isolated_median_s"] / result["plain_median_s"], 3
            )
            print(
                f"IsolatedSpawner:     median {result['isolated_median_s']:.2f} s over {spawns} "
                f"spawns (min {min(times):.2f}, max {max(times):.2f}); overhead "
                f"{result['overhead_ratio']:.2f}x (target < {TARGETS['overhead_ratio']}x)"
            )
            if result["isolated_phases_median_s"]:
                print(
                    "  median per phase: "
                    + ", ".join(
                        f"{k} {v:.2f} s" if isinstance(v, float) else f"{k} {v}"
                        for k, v in result["isolated_phases_median_s"].items()
                    )
                )
            names = [f"user{i:02d}" for i in range(concurrent)]
            for name in names:
                bench.add_user(name)
                accounts.ensure_account(name, Path(isolated.home_root), isolated.unix_prefix)
            result["concurrent_all_ready_s"] = round(bench.concurrent(names), 2)
            print(
                f"{concurrent} users at once: all ready in {result['concurrent_all_ready_s']:.1f} s "
                f"(target < {TARGETS['concurrent_all_ready_s']:.0f} s)"
            )
            bench.stop(names)
        finally:
            bench.close()
    finally:
        log = state_dir / "hub" / "hub.log"
        if log.exists():
            shutil.copyfile(log, Path(tempfile.gettempdir()) / "enclave-bench-spawn-hub.log")
        for entry in pwd.getpwall():
            if entry.pw_name.startswith(f"encb{tag}-"):
                subprocess.run(["userdel", entry.pw_name], capture_output=True)
        for path in (state_dir, homes, Path(f"{state_dir}-server")):
            shutil.rmtree(path, ignore_errors=True)
    result["targets"] = TARGETS
    result["met"] = {k: result.get(k, float("inf")) < v for k, v in TARGETS.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spawns", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=30)
    args = parser.parse_args()
    result = run(args.spawns, args.concurrent)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
