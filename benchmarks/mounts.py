"""Decrypting dataset mounts: spawn time against a version's size, and reads through the mount
next to reading the same plaintext from the local disk.

    python -m benchmarks.mounts [--small-gb 1] [--large-gb auto] [--spawns 5]
                                [--random-reads 4000] [--skip-large] [--skip-training]
                                [--implementation auto|python|native]   (root)

In one run:

* two stored versions: ``--small-gb`` (files of 64 MiB, also kept as plaintext on the same
  disk as the floor for reads) and ``--large-gb`` (default: the machine's available memory
  plus 10%, files of 256 MiB, written straight into the store);
* spawn time: a real hub (the shipped configuration, its catalog replaced by a grants file),
  one user granted the small version, one the large and one nothing (the reference), spawned
  and stopped ``--spawns`` times each, alternating; every spawn mounts its version afresh (a
  stopped server's mount is collected). Goal: small and large medians within 0.3 s;
* sequential reads (1 MiB) of every small-version file, and ``--random-reads`` 64 KiB reads
  at random 64 KiB-aligned offsets (by one reader, the goal's figure, and by four at once, as
  a data loader's workers read), through the mount and from the plaintext files, each after
  dropping the page cache (``/proc/sys/vm/drop_caches``), twice, alternating, best of two.
  Goals: sequential >= 0.7x, random >= 0.5x the local disk;
* one epoch of the training benchmark's model over a version twice a server's memory limit
  (``benchmarks.training.epoch_larger_than_memory``), served through a decrypting mount.

``--implementation`` picks the mounts' filesystem process (``enclave.datafs.nativefs``; the
default ``auto`` is the native one when built) for the reads and the spawns alike.

Prints figures and, last, one line of JSON with ``spawn_small_s``, ``spawn_large_s``,
``seq_read_ratio`` and ``random_read_ratio``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GOALS = {"spawn_difference_s": 0.3, "seq_read_ratio": 0.7, "random_read_ratio": 0.5}

# The hub under test: the shipped configuration, with the grants read from a file the
# benchmark writes (user name -> versions) instead of from a catalog.
HUB_CONFIG = """
import json

from enclave.workspace.datasets import VersionRecord
from enclave.workspace.launcher import hub_config_file

c = get_config()
load_subconfig(str(hub_config_file()))


def bench_grants(principal):
    with open({grants_file!r}) as fh:
        granted = json.load(fh).get(principal.name, [])
    return [
        VersionRecord(g["name"], g["version"], g["store_location"], bytes.fromhex(g["wrapped_key"]),
                      g["content_hash"], mode="notebook")
        for g in granted
    ]


c.IsolatedSpawner.grants_source = bench_grants
"""


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("error: no MemAvailable in /proc/meminfo")


def make_small(folder: Path, total: int) -> list[Path]:
    """Plaintext files of 64 MiB of random bytes, on the local disk."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(max(1, total // (64 * MiB))):
        path = folder / "series" / f"volume-{i:03d}.bin"
        path.parent.mkdir(exist_ok=True)
        with open(path, "wb") as fh:
            for _ in range(8):
                fh.write(os.urandom(8 * MiB))
        paths.append(path)
    return paths


def store_large(store_root: Path, master_key: Any, total: int) -> Any:
    """A version of ``total`` bytes written straight into the store, 256 MiB a file (each
    file's first bytes differ, so no two are the same)."""
    from ingestion.store import VersionWriter

    block = bytearray(os.urandom(256 * MiB))
    writer = VersionWriter(store_root, master_key, name_hint="large")
    try:
        for i in range(-(-total // (256 * MiB))):
            block[:8] = i.to_bytes(8, "big")
            writer.add_data(f"series/volume-{i:04d}.bin", [block])
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def sequential_read(paths: list[Path]) -> float:
    """MB/s reading every file once in 1 MiB reads, from a cold page cache."""
    drop_caches()
    buf = bytearray(MiB)
    total = 0
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total / 1e6 / (time.perf_counter() - started)


def random_read(paths: list[Path], plan: list[tuple[int, int]], readers: int = 1) -> float:
    """MB/s of 64 KiB reads at the planned (file, offset) pairs, from a cold page cache, by
    ``readers`` threads at once (a data loader's workers)."""
    from concurrent.futures import ThreadPoolExecutor

    drop_caches()
    fds = [os.open(p, os.O_RDONLY) for p in paths]

    def read(part: list[tuple[int, int]]) -> int:
        return sum(len(os.pread(fds[index], 64 * 1024, offset)) for index, offset in part)

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(readers) as pool:
            total = sum(pool.map(read, [plan[i::readers] for i in range(readers)]))
        return total / 1e6 / (time.perf_counter() - started)
    finally:
        for fd in fds:
            os.close(fd)


def measure_reads(
    plain: list[Path], mounted: list[Path], reads: int, seed: int = 0
) -> dict[str, Any]:
    size = plain[0].stat().st_size
    rng = random.Random(seed)
    plan = [
        (rng.randrange(len(plain)), rng.randrange(size // (64 * 1024)) * 64 * 1024)
        for _ in range(reads)
    ]
    seq: dict[str, list[float]] = {"disk": [], "mount": []}
    rand: dict[str, list[float]] = {"disk": [], "mount": []}
    rand4: dict[str, list[float]] = {"disk": [], "mount": []}
    for _ in range(2):
        seq["disk"].append(sequential_read(plain))
        seq["mount"].append(sequential_read(mounted))
        rand["disk"].append(random_read(plain, plan))
        rand["mount"].append(random_read(mounted, plan))
        rand4["disk"].append(random_read(plain, plan, readers=4))
        rand4["mount"].append(random_read(mounted, plan, readers=4))
    best = {
        k: {w: max(v) for w, v in d.items()}
        for k, d in (("seq", seq), ("rand", rand), ("rand4", rand4))
    }
    return {
        "seq_disk_mb_s": round(best["seq"]["disk"], 1),
        "seq_mount_mb_s": round(best["seq"]["mount"], 1),
        "seq_read_ratio": round(best["seq"]["mount"] / best["seq"]["disk"], 3),
        "random_disk_mb_s": round(best["rand"]["disk"], 1),
        "random_mount_mb_s": round(best["rand"]["mount"], 1),
        "random_read_ratio": round(best["rand"]["mount"] / best["rand"]["disk"], 3),
        "random4_disk_mb_s": round(best["rand4"]["disk"], 1),
        "random4_mount_mb_s": round(best["rand4"]["mount"], 1),
        "random4_read_ratio": round(best["rand4"]["mount"] / best["rand4"]["disk"], 3),
        "runs": {"seq": seq, "random": rand, "random_4_readers": rand4},
    }


ZERO_BYTES = 1024**3


def serve_zeros(mountpoint: str) -> None:
    """A FUSE filesystem of one 1 GiB file of zeros, through the same Python FUSE path as the
    decrypting mounts (``DirectFUSE``) but with no store read and no decryption: the ceiling
    of the transport itself (``--serve-zeros``, run in a child by ``fuse_ceiling``)."""
    import errno
    import stat

    import mfusepy

    from enclave.datafs.fs import DirectFUSE

    class Zeros(mfusepy.Operations):
        use_ns = True

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            if path == "/zeros":
                return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": ZERO_BYTES}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: Any) -> list[str]:
            return [".", "..", "zeros"]

        def open(self, path: str, fi: Any) -> int:
            fi.fh, fi.keep_cache = 1, 1
            return 0

        def read_into(self, fh: int, offset: int, out: memoryview) -> int:
            return max(0, min(len(out), ZERO_BYTES - offset))  # libfuse's buffer is zeroed

        def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
            return bytes(max(0, min(size, ZERO_BYTES - offset)))  # (mfusepy registers reads
            # only for an operations object that has read; DirectFUSE calls read_into)

    DirectFUSE(Zeros(), mountpoint, foreground=True, raw_fi=True, ro=True)


def fuse_ceiling(folder: Path) -> float:
    """MB/s reading the zero filesystem once, cold, with the mounts' read-ahead."""
    import sys

    from enclave.datafs.mounts import READ_AHEAD_KB, read_ahead_knob

    point = folder / "zeros-mount"
    point.mkdir(exist_ok=True)  # measured twice in one run
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.mounts", "--serve-zeros", str(point)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(point):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("error: the zero filesystem did not mount")
            time.sleep(0.05)
        read_ahead_knob(point).write_text(str(READ_AHEAD_KB))
        return sequential_read([point / "zeros"])
    finally:
        subprocess.run(["umount", str(point)], check=False)
        proc.wait(10)


def version_record(name: str, stored: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": 1,
        "store_location": stored.store_location,
        "wrapped_key": bytes(stored.wrapped_key).hex(),
        "content_hash": "0" * 64,
    }


def measure_spawns(
    state_dir: Path, mnemonics: list[str], grants: dict[str, list[dict[str, Any]]], spawns: int
) -> dict[str, Any]:
    from benchmarks.spawn import Bench, make_settings

    grants_file = state_dir / "bench-grants.json"
    grants_file.write_text(json.dumps(grants))
    settings = make_settings(state_dir, uuid.uuid4().hex[:4])
    bench = Bench(settings, mnemonics, config_text=HUB_CONFIG.format(grants_file=str(grants_file)))
    times: dict[str, list[float]] = {user: [] for user in grants}
    prepare: dict[str, list[float]] = {user: [] for user in grants}
    try:
        for user in grants:
            bench.add_user(user)
        for _ in range(spawns):
            for user in grants:
                times[user].append(bench.spawn_time(user))
                phases = bench.phases(user) or {}
                if isinstance(phases.get("prepare"), float):
                    prepare[user].append(float(phases["prepare"]))
                bench.stop([user])
    finally:
        bench.close()
    return {
        user: {
            "median_s": round(statistics.median(values), 3),
            "min_s": round(min(values), 3),
            "max_s": round(max(values), 3),
            "prepare_median_s": round(statistics.median(prepare[user]), 3)
            if prepare[user]
            else None,
        }
        for user, values in times.items()
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from enclave.custody import init_custody, unseal
    from enclave.workspace.datasets import DatasetMounter, VersionRecord
    from ingestion.store import write_version

    if os.geteuid() != 0:
        raise SystemExit("error: the mounts benchmark needs root (mounts, a hub, drop_caches)")
    work = Path(tempfile.mkdtemp(prefix="enclave-bench-mounts-", dir="/var/tmp"))
    os.chmod(work, 0o755)  # the hub's homes are below it; the state folder stays private
    state_dir = work / "state"
    state_dir.mkdir()
    result: dict[str, Any] = {"cpus": os.cpu_count(), "available_memory": available_memory()}
    try:
        mnemonics = init_custody(state_dir, custodians=2, threshold=2)
        key = unseal(state_dir, mnemonics)
        started = time.perf_counter()
        plain = make_small(work / "plain", int(args.small_gb * 1024**3))
        small = write_version(work / "plain", work / "store", key, name_hint="small")
        result["small_bytes"] = small.size_bytes
        print(
            f"small version: {small.size_bytes / 1e9:.2f} GB in {len(plain)} files "
            f"(made and stored in {time.perf_counter() - started:.0f} s)"
        )
        # "none" is granted nothing: the same spawn without any dataset (the reference).
        grants = {"none": [], "small": [version_record("bench-small", small)]}
        if not args.skip_large:
            large_bytes = (
                int(args.large_gb * 1024**3) if args.large_gb else int(available_memory() * 1.1)
            )
            started = time.perf_counter()
            large = store_large(work / "store", key, large_bytes)
            result["large_bytes"] = large.size_bytes
            print(
                f"large version: {large.size_bytes / 1e9:.1f} GB (available memory "
                f"{result['available_memory'] / 1e9:.1f} GB), stored in "
                f"{time.perf_counter() - started:.0f} s"
            )
            grants["large"] = [version_record("bench-large", large)]

        mounter = DatasetMounter(work / "plaintext", key)
        try:
            point = mounter.plaintext_for(
                VersionRecord("bench-small", 1, small.store_location, small.wrapped_key, "0" * 64)
            )
            mounted = [point / p.relative_to(work / "plain") for p in plain]
            reads = measure_reads(plain, mounted, args.random_reads)
        finally:
            mounter.release_all()
        reads["fuse_ceiling_mb_s"] = round(max(fuse_ceiling(work) for _ in range(2)), 1)
        result.update({k: v for k, v in reads.items() if k != "runs"})
        result["read_runs"] = reads["runs"]
        print(
            f"sequential 1 MiB reads, cold cache: mount {reads['seq_mount_mb_s']} MB/s, local "
            f"disk {reads['seq_disk_mb_s']} MB/s: {reads['seq_read_ratio']}x "
            f"(goal >= {GOALS['seq_read_ratio']}x); the FUSE transport alone (a file of "
            f"zeros, nothing read or decrypted): {reads['fuse_ceiling_mb_s']} MB/s"
        )
        print(
            f"random 64 KiB reads ({args.random_reads}), cold cache: mount "
            f"{reads['random_mount_mb_s']} MB/s, local disk {reads['random_disk_mb_s']} MB/s: "
            f"{reads['random_read_ratio']}x (goal >= {GOALS['random_read_ratio']}x); with 4 "
            f"readers at once: mount {reads['random4_mount_mb_s']} MB/s, local disk "
            f"{reads['random4_disk_mb_s']} MB/s: {reads['random4_read_ratio']}x"
        )

        spawns = measure_spawns(state_dir, mnemonics, grants, args.spawns)
        result["spawn_small_s"] = spawns["small"]["median_s"]
        result["spawn_none_s"] = spawns["none"]["median_s"]
        result["spawns"] = spawns
        line = (
            f"spawn (median of {args.spawns}): no dataset {result['spawn_none_s']} s, "
            f"small {result['spawn_small_s']} s"
        )
        if "large" in spawns:
            result["spawn_large_s"] = spawns["large"]["median_s"]
            result["spawn_difference_s"] = round(
                abs(result["spawn_large_s"] - result["spawn_small_s"]), 3
            )
            line += (
                f", larger than memory {result['spawn_large_s']} s: difference "
                f"{result['spawn_difference_s']} s (goal <= {GOALS['spawn_difference_s']} s)"
            )
        print(line + f"; per user {spawns}")

        if not args.skip_training:
            result["training"] = measure_training(args.memory_limit_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["goals"] = GOALS
    return result


def measure_training(memory_limit_mib: int) -> dict[str, Any]:
    """One epoch over a CT version twice a server's memory limit, served by a decrypting
    mount, in a child confined to that limit (``benchmarks.training``'s own run)."""
    from benchmarks import training

    figures: dict[str, Any] = training.larger_than_memory(
        memory_limit_mib, factor=2.0, size=256, slices=128, patch=48, keep=False
    )
    print(
        f"training, one epoch over {figures.get('dataset_mib')} MiB under a "
        f"{memory_limit_mib} MiB limit, served by {figures.get('served_by')}: "
        f"{figures.get('epoch_s')} s, cache {figures.get('cache_mode')}, data-path ratio "
        f"{figures.get('data_path_ratio')} (replayed from memory {figures.get('memory_it_s')} "
        f"it/s, epoch {figures.get('epoch_it_s')} it/s)"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-gb", type=float, default=1.0)
    parser.add_argument(
        "--large-gb", type=float, default=0.0, help="default: available memory plus 10%%"
    )
    parser.add_argument("--spawns", type=int, default=5)
    parser.add_argument("--random-reads", type=int, default=4000)
    parser.add_argument("--memory-limit-mib", type=int, default=1024)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--implementation", choices=["auto", "python", "native"], default="auto")
    parser.add_argument("--serve-zeros", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_zeros:
        serve_zeros(args.serve_zeros)
        return
    from enclave.datafs.nativefs import IMPLEMENTATION_ENV, implementation

    os.environ[IMPLEMENTATION_ENV] = args.implementation  # the hub's mounts inherit it
    print(f"decrypting mounts served by the {implementation()} filesystem")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    result = run(args)
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    result["implementation"] = implementation()
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
