"""The whole ingestion path on a generated CT dataset, against its reference points.

    python -m benchmarks.ingestion [--size-gb 2] [--k 3 --n 5] [--repeat 3] [--search-files 1000000]

Generates a CT dataset (20 series x 200 slices of 512x512 at 2 GB, fewer series when
smaller), then in one run: split (provider side), send to n receivers (separate processes;
``--spares``: the first k and the spares on demand, as ``enclave share send`` does, or all n),
reconstruct + validate + encrypt + catalog (worker). The whole path ("end_to_end" in the
JSON) is timed from the start of the provider's split to the transfer's catalog entry, all
on this one machine (the provider's split competes with the enclave for its two cores and
one disk); "send_to_catalog" is the part after the split, what a data manager waits for
once the shares exist. The whole path runs ``--repeat`` times over the same dataset (fresh
service, keys and state each time; the clock starts once the service is up and warm, as a
long-running one is when a provider sends) and the median run is reported next to all of
them. Next to each run, in the same process and right before it, the floor of the essential
work on the same files ("floor" in the JSON): read each plaintext file, AES-256-GCM encrypt it
once (OpenSSL through ``cryptography``, as the store does) and ``pydicom.dcmread`` it once
(from the bytes read), one file after another in one process; the whole path's figure of
merit is its median run's rate as a fraction of the floor's best run (the floor is short, so
a neighbour's burst can halve one run of it; its best is the conservative reference). CPU
seconds of the path (this process, the receivers and the validation processes,
each counted from the clock's start) are printed with the machine's busy and stolen CPU
time and the load average, as wall time on a shared machine depends on the neighbours. Then the raw ``pydicom.dcmread``
rate over the same files next to ``validate_dataset``'s rate; then catalog search latency on PostgreSQL with 10,000 datasets
and 1,000,000 files (``benchmarks.catalog_search``). MB is 10^6 bytes. The last line printed
is one JSON object for scripts.

Targets: whole path >= 0.3 x the floor (and >= 100 MB/s on 2 cores); validation >= 0.5 x raw
read; search p95 < 50 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SLICE_BYTES = 512 * 512 * 2 + 1500  # pixels + header, per 512x512 CT slice


def make_dataset(root: Path, size_gb: float, slices: int = 200) -> Path:
    """A valid de-identified CT dataset folder of about ``size_gb`` (``dataset.yaml`` + DICOM)."""
    import yaml

    from enclave.samples import DEID_METHOD, DEID_PROFILE, make_benchmark_series

    series = max(1, round(size_gb * 1e9 / (slices * SLICE_BYTES)))
    if series == 1:
        slices = max(8, round(size_gb * 1e9 / SLICE_BYTES))
    root.mkdir(parents=True)
    make_benchmark_series(root / "dicom", series=series, slices=slices, size=512)
    spec = {
        "name": "bench-ct",
        "title": "Benchmark CT (synthetic)",
        "description": f"{series} synthetic CT series of {slices} slices, 512x512.",
        "license": "CC0-1.0",
        "modality": "CT",
        "body_part": "CHEST",
        "deidentification": {"method": DEID_METHOD, "profile": DEID_PROFILE},
        "subject_id": "PatientID",
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def folder_stats(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def essential_floor(dataset: Path) -> dict:
    """Read, encrypt once and parse once every file of ``dataset``, in one process: the
    work no ingestion path can skip, with nothing else (no sharing, network, validation
    rules, store format or catalog)."""
    import pydicom
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    paths = sorted(p for p in dataset.rglob("*") if p.is_file())
    total = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for path in paths:
        data = path.read_bytes()
        aead.encrypt(os.urandom(12), data, None)
        if path.suffix == ".dcm":
            pydicom.dcmread(io.BytesIO(data))
        total += len(data)
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 3),
        "cpu_s": round(time.process_time() - cpu0, 2),
        "mb_per_s": round(total / 1e6 / seconds, 1),
        "files": len(paths),
    }


def run_whole_path(work: Path, dataset: Path, *, k: int, n: int, spares: str = "on-demand") -> dict:
    from catalog import open_catalog, resolve_database_url
    from enclave.custody import init_custody, unseal
    from ingestion.client import send_shares
    from ingestion.service import IngestService
    from secret_sharing import (
        key_fingerprint,
        load_signing_key,
        load_verify_key,
        split_dataset,
        write_keypair,
    )

    state = work / "state"
    mnemonics = init_custody(state, custodians=3, threshold=2)
    master_key = unseal(state, mnemonics[:2])
    catalog = open_catalog(resolve_database_url(state))
    signing, verify = write_keypair(work / "keys")
    _, token = catalog.add_provider(
        "bench-hospital",
        verify.read_bytes(),
        key_fingerprint(load_verify_key(verify)),
        actor="bench",
        quota_bytes=10**12,
    )
    service = IngestService(state, master_key, port=0, receivers=n, catalog=catalog)
    with service.running():
        # A service runs for months: its start (receivers importing their stack, the worker
        # starting the validation pool's server) is not part of any transfer's path.
        if not service.wait_until_warm():
            raise SystemExit("the ingestion worker did not warm up")
        cpu0 = PathCpu(service)
        t0 = time.perf_counter()
        result = split_dataset(
            dataset, work / "shares", k=k, n=n, signing_key=load_signing_key(signing)
        )
        t_split = time.perf_counter()
        # The end is when the catalog entry exists, watched from here: an on-demand client
        # returns once it sees the transfer verified, which may be after that.
        finished: dict[str, Any] = {}
        watcher = threading.Thread(
            target=_watch_transfer, args=(catalog, result.transfer_id, finished), daemon=True
        )
        watcher.start()
        sent = send_shares(result.share_paths, [service.coordinator_url], token, spares=spares)
        t_sent = time.perf_counter()
        watcher.join()
        transfer, t_done = finished["transfer"], finished["at"]
    cpu = cpu0.since()  # the receivers have exited and been reaped: all of theirs counted
    if transfer.state != "cataloged":
        raise SystemExit(f"transfer ended {transfer.state}: {transfer.reason}")
    report = catalog.get_version("bench-ct", 1).report or {}
    catalog.close()
    timings = report.get("summary", {}).get("ingest_timings", {})
    return {
        "split_s": round(t_split - t0, 2),
        "send_s": round(t_sent - t_split, 2),
        "after_send_s": round(max(0.0, t_done - t_sent), 2),
        "total_s": round(t_done - t0, 2),
        "send_to_catalog_s": round(t_done - t_split, 2),
        "cpu_s": round(cpu["total"], 1),
        "cpu_split_s": {
            name: round(seconds, 1)
            for name, seconds in cpu.items()
            if not name.startswith("machine")
        },
        "machine_busy_s": round(cpu["machine_busy"], 1),
        "machine_steal_s": round(cpu["machine_steal"], 1),
        "worker": timings,
        "share_bytes": sum(p.stat().st_size for p in result.share_paths),
        "bytes_sent": sum(u.sent_bytes for u in sent.uploads),
    }


def _machine_times() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


FINAL_STATES = ("cataloged", "quarantined", "failed")


def _watch_transfer(catalog: Any, transfer_id: str, finished: dict[str, Any]) -> None:
    """Record when the transfer reaches a final state.

    The worker shares ``catalog`` with this process: its calls that end a transfer
    (``catalog_version``, ``set_transfer_state`` to a final state) are wrapped to note the
    moment they return and wake this thread, which then reads the transfer back: no
    polling on the two cores the path runs on, and the end is the moment the entry exists,
    not the next poll after it. The catalog is still read once a second, in case something
    else ends the transfer."""
    from catalog import UnknownTransfer

    ended = threading.Event()
    ended_at: dict[str, float] = {}
    originals = {name: getattr(catalog, name) for name in ("catalog_version", "set_transfer_state")}

    def watched(name: str) -> Any:
        original = originals[name]

        def call(tid: str, *args: Any, **kwargs: Any) -> Any:
            result = original(tid, *args, **kwargs)
            state = "cataloged" if name == "catalog_version" else (args or [kwargs.get("state")])[0]
            if tid == transfer_id and state in FINAL_STATES:
                ended_at.setdefault("at", time.perf_counter())
                ended.set()
            return result

        return call

    for name in originals:
        setattr(catalog, name, watched(name))
    try:
        while True:
            ended.wait(1.0)
            try:
                transfer = catalog.get_transfer(transfer_id)
            except UnknownTransfer:  # no share has arrived yet
                transfer = None
            if transfer is not None and transfer.state in FINAL_STATES:
                finished.update(transfer=transfer, at=ended_at.get("at", time.perf_counter()))
                return
            ended.clear()
    finally:
        for name in originals:
            delattr(catalog, name)  # the instance attributes go; the class's methods remain


def _process_cpu(pid: int, *, children: bool = False) -> float:
    """User + system seconds of a live process (or of its reaped children) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    first = 13 if children else 11  # utime, stime; cutime, cstime
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def _validation_pool_server() -> int | None:
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


class PathCpu:
    """CPU seconds spent on the path from now on, by part: this process (split, send,
    worker), the n receiver processes, and the validation pool's processes (children of the
    multiprocessing forkserver, reaped by it, so read from its /proc entry). Contention-
    independent, unlike wall time on a shared machine."""

    def __init__(self, service) -> None:  # an IngestService
        self._receivers = service.receiver_pids
        self._receivers_before = sum(_process_cpu(pid) for pid in self._receivers)
        self._pool = _validation_pool_server()
        self._pool_before = _process_cpu(self._pool, children=True) if self._pool else 0.0
        self._own_before = self._own()
        self._reaped_before = self._reaped()
        self._machine_before = _machine_times()

    def _own(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def _reaped(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def since(self) -> dict[str, float]:
        """Call after the service stopped (receivers exited and reaped)."""
        parts = {
            "this_process": self._own() - self._own_before,
            # Reaped children are the receivers (counted whole, so minus their start-up).
            "receivers": self._reaped() - self._reaped_before - self._receivers_before,
            "validation_pool": (
                _process_cpu(self._pool, children=True) - self._pool_before if self._pool else 0.0
            ),
        }
        parts["total"] = sum(parts.values())
        # Not part of the path: how much the machine was busy (anything, kernel threads
        # included) or lost to the hypervisor ("steal") meanwhile, to tell a slow run from a
        # slow neighbour.
        busy, steal = (
            after - before
            for after, before in zip(_machine_times(), self._machine_before, strict=True)
        )
        parts["machine_busy"] = busy
        parts["machine_steal"] = steal
        return parts


def raw_and_validation_rate(dataset: Path) -> dict:
    import pydicom

    from ingestion.validate import validate_dataset

    dicoms = sorted(dataset.rglob("*.dcm"))
    t0 = time.perf_counter()
    for path in dicoms:
        pydicom.dcmread(path)
    raw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outcome = validate_dataset(dataset)
    val_s = time.perf_counter() - t0
    if not outcome.report.passed:
        raise SystemExit(f"benchmark dataset failed validation: {outcome.report.errors[:3]}")
    files = len(outcome.files)
    return {
        "dicom_files": len(dicoms),
        "raw_dcmread_files_per_s": round(len(dicoms) / raw_s, 1),
        "validation_files_per_s": round(files / val_s, 1),
        "validation_vs_raw": round((files / val_s) / (len(dicoms) / raw_s), 2),
    }


def search_latency(datasets: int, files: int) -> dict:
    from benchmarks.catalog_search import measure_search_latency
    from tests.postgres_server import TemporaryPostgres

    with TemporaryPostgres(database="ingest_bench") as url:
        result = measure_search_latency(url, datasets, files)
    return {k: result[k] for k in ("p50_ms", "p95_ms", "max_ms", "queries")} | {
        "datasets": datasets,
        "files": files,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--search-datasets", type=int, default=10_000)
    parser.add_argument("--search-files", type=int, default=1_000_000)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="whole-path runs over the same dataset; the median is reported",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument(
        "--spares",
        choices=("on-demand", "all"),
        default="on-demand",
        help="the client's spare policy: on-demand (the default of `enclave "
        "share send`) or all (`--all-shares`: every share uploaded)",
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        dataset = make_dataset(work / "source" / "bench-ct", args.size_gb)
        files, size = folder_stats(dataset)
        # A provider's dataset is at rest before it is split: without this, the kernel writes
        # the 2 GB just generated back to disk during the timed path, on the same two cores.
        os.sync()
        print(
            f"generated {files} files, {size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s "
            f"({os.cpu_count()} CPUs)"
        )
        runs = []
        floors = []
        for attempt in range(1, args.repeat + 1):
            floor = essential_floor(dataset)
            floors.append(floor)
            print(
                f"run {attempt}/{args.repeat}: floor (read, AES-GCM encrypt, dcmread each file "
                f"once, one process) {floor['seconds']} s = {floor['mb_per_s']} MB/s "
                f"(CPU {floor['cpu_s']} s); load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            path = run_whole_path(work, dataset, k=args.k, n=args.n, spares=args.spares)
            load = os.getloadavg()
            path["load_average"] = [round(x, 2) for x in load]
            runs.append(path)
            mbps = size / 1e6 / path["total_s"]
            print(
                f"run {attempt}/{args.repeat}: whole path {args.k}-of-{args.n}, spares "
                f"{args.spares} ({path['bytes_sent'] / 1e6:.0f} MB uploaded), provider's "
                f"split start -> cataloged {path['total_s']} s = {mbps:.1f} MB/s (split "
                f"{path['split_s']} s, then send, reconstruct, validate, store and catalog "
                f"{path['send_to_catalog_s']} s; the sending client returned after "
                f"{path['send_s']} s; worker {path['worker']}); send "
                f"start -> cataloged {size / 1e6 / path['send_to_catalog_s']:.1f} MB/s; "
                f"CPU {path['cpu_s']} s ({', '.join(f'{k} {v}' for k, v in path['cpu_split_s'].items() if k != 'total')}); machine busy {path['machine_busy_s']} s, "
                f"steal {path['machine_steal_s']} s; load average {load[0]:.2f} {load[1]:.2f} "
                f"{load[2]:.2f} on {os.cpu_count()} CPUs"
            )
            shutil.rmtree(work / "shares", ignore_errors=True)
            shutil.rmtree(work / "state", ignore_errors=True)
            shutil.rmtree(work / "keys", ignore_errors=True)
            os.sync()  # the next run does not pay for this one's deletions
        # The median run by whole-path time: on a shared machine single runs vary by a third.
        path = sorted(runs, key=lambda run: run["total_s"])[len(runs) // 2]
        run_rates = [size / 1e6 / run["total_s"] for run in runs]
        mbps = size / 1e6 / path["total_s"]
        send_mbps = size / 1e6 / path["send_to_catalog_s"]
        print(
            f"whole path (median of {len(runs)}), provider's split start -> cataloged: "
            f"{path['total_s']} s = {mbps:.1f} MB/s, {files / path['total_s']:.1f} files/s "
            f"[{'meets' if mbps >= 100 else 'MISSES'} 100 MB/s]; send start -> cataloged "
            f"{send_mbps:.1f} MB/s; all runs "
            f"{', '.join(f'{rate:.1f}' for rate in run_rates)} MB/s"
        )
        floor_mbps = max(floor["mb_per_s"] for floor in floors)
        ratio = mbps / floor_mbps
        floor_cpu = min(floor["cpu_s"] for floor in floors)
        cpu_ratio = floor_cpu / path["cpu_s"]
        print(
            f"floor of the essential work (best of {len(floors)}): {floor_mbps:.1f} MB/s; all "
            f"runs {', '.join(str(floor['mb_per_s']) for floor in floors)} MB/s; whole path = "
            f"{ratio:.2f} x the floor [{'meets' if ratio >= 0.3 else 'MISSES'} 0.3 x]; per "
            f"CPU-second (what neighbours do not change): floor CPU {floor_cpu:.2f} s, path "
            f"CPU {path['cpu_s']} s = {cpu_ratio:.2f} x",
            flush=True,
        )
        rates = raw_and_validation_rate(dataset)
        print(
            f"raw pydicom.dcmread {rates['raw_dcmread_files_per_s']} files/s, validation "
            f"{rates['validation_files_per_s']} files/s = {rates['validation_vs_raw']} x raw "
            f"[{'meets' if rates['validation_vs_raw'] >= 0.5 else 'MISSES'} 0.5 x]"
        )
        search = None
        if not args.skip_search:
            search = search_latency(args.search_datasets, args.search_files)
            print(
                f"catalog search ({search['datasets']} datasets, {search['files']} files, "
                f"PostgreSQL): p50 {search['p50_ms']} ms, p95 {search['p95_ms']} ms "
                f"[{'meets' if search['p95_ms'] < 50 else 'MISSES'} 50 ms]"
            )
        print(
            json.dumps(
                {
                    "size_mb": round(size / 1e6, 1),
                    "files": files,
                    "k": args.k,
                    "n": args.n,
                    "spares": args.spares,
                    # end_to_end_*: the provider's split start -> the catalog entry (the whole path)
                    "end_to_end_mb_per_s": round(mbps, 1),
                    "send_to_catalog_mb_per_s": round(send_mbps, 1),
                    "end_to_end_files_per_s": round(files / path["total_s"], 1),
                    "end_to_end_mb_per_s_runs": [round(rate, 1) for rate in run_rates],
                    "floor_mb_per_s": round(floor_mbps, 1),
                    "floor_mb_per_s_runs": [floor["mb_per_s"] for floor in floors],
                    "floor_cpu_s_runs": [floor["cpu_s"] for floor in floors],
                    "end_to_end_vs_floor": round(ratio, 3),
                    "floor_cpu_s": round(floor_cpu, 2),
                    "path_cpu_vs_floor_cpu": round(cpu_ratio, 3),
                    **{f"path_{k}": v for k, v in path.items()},
                    **rates,
                    "search": search,
                },
                sort_keys=True,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
