"""Training throughput on enclave-stored data next to the same model fed from memory.

    python -m benchmarks.training [--patch 96] [--iterations 200] [--subjects 8]
    python -m benchmarks.training --larger-than-memory --memory-limit-mib 1024

Builds a sample CT dataset with segmentations, stores it the way the enclave does (encrypted
into the dataset store, then materialized as a version folder, as the hub mounts it for a user
server), and trains a 3D U-Net (MONAI, 4.8 M parameters, batch 2, AMP on GPU) through
``enclave.data.monai_dataset`` and a MONAI ``DataLoader``, next to the same model trained on
8 batches drawn once from that pipeline and replayed from device memory: the data-loading
ceiling. Both rates are iterations per second in the same process, timed in alternating
chunks; the ratio is the figure of merit (target >= 0.9), from each side's fastest chunk (on a
shared CPU other jobs only slow chunks down), with the ratio over all chunks next to it. With a
GPU it also samples GPU utilisation while the enclave-fed model trains. Without one it runs a reduced size
(48^3 patches, 12 iterations) and prints the same ratio. The last line is one JSON object.

``--larger-than-memory`` instead generates a synthetic CT version about twice the size of a
memory limit, stores it encrypted, serves it through the decrypting mount
(``enclave.workspace.datasets.DatasetMounter``; a materialized folder where FUSE is not there)
and runs one epoch of the same model over all of it in a child process confined to a memory
cgroup of that limit (:func:`epoch_larger_than_memory`, which other benchmarks call with a
dataset folder of their own). ``monai_dataset`` picks its cache inside the child from the
cgroup limit it sees. It prints the epoch time, the data-path ratio (epoch iterations per second
against the same model replaying batches from memory), the child's peak RSS and the cgroup's
peak, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def stage(workdir: Path, *, subjects: int, size: int, slices: int) -> tuple[Path, dict]:
    """A sample dataset, encrypted into a store and materialized as ``datasets/NAME/1``."""
    from enclave.data.staging import stage_dataset
    from enclave.samples import make_sample_dataset

    t0 = time.perf_counter()
    source = make_sample_dataset(
        workdir / "provider",
        name="bench-ct",
        subjects=subjects,
        size=size,
        slices=slices,
        with_table=False,
    )
    t1 = time.perf_counter()
    staged = stage_dataset(
        source, workdir / "datasets", store_root=workdir / "store", validate=False
    )
    t2 = time.perf_counter()
    size_mb = sum(p.stat().st_size for p in staged.path.rglob("*") if p.is_file()) / 1e6
    return workdir / "datasets", {
        "generate_s": round(t1 - t0, 2),
        "store_and_materialize_s": round(t2 - t1, 2),
        "dataset_mb": round(size_mb, 1),
    }


def make_model(device, out_channels: int):
    import torch
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=out_channels,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="batch",
    ).to(device)


class Trainer:
    """One optimisation step of DiceCE + AdamW, with AMP on CUDA."""

    def __init__(self, device, amp: bool, classes: int) -> None:
        import torch
        from monai.losses import DiceCELoss

        self.device, self.amp = device, amp
        self.model = make_model(device, classes)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp)

    def step(self, image, label) -> float:
        import torch

        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            loss = self.loss(self.model(image), label)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach()

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()


class GpuSampler:
    """Samples GPU utilisation (%) in a thread, through NVML when torch has it, else nvidia-smi."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _read(self) -> float | None:
        import torch

        try:
            return float(torch.cuda.utilization())
        except Exception:
            pass
        if shutil.which("nvidia-smi") is None:
            return None
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                "-i",
                "0",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            return float(out.stdout.split()[0])
        except (IndexError, ValueError):
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Sample while the block runs (used around each timed chunk)."""
        self._stop.clear()
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    @property
    def mean(self) -> float | None:
        return round(statistics.mean(self.samples), 1) if self.samples else None


def timed_pair(
    a: Trainer,
    a_batches,
    b: Trainer,
    b_batches,
    *,
    warmup: int,
    iterations: int,
    rounds: int,
    during_b=None,
) -> dict[str, dict[str, float]]:
    """Iterations per second of two trainers, timed in alternating chunks.

    Alternating spreads drift over both. ``best_it_s`` comes from each trainer's fastest
    chunk: on a shared CPU other jobs only ever slow a chunk down (measured here: the same
    step took 0.45-6 s of wall and of process CPU time), so the fastest chunk is the closest
    to the cost of the work itself. ``it_s`` is the plain total. ``during_b`` wraps b's chunks
    (GPU sampling).
    """
    a_it, b_it = iter(a_batches), iter(b_batches)
    for trainer, it in ((a, a_it), (b, b_it)):
        for _ in range(warmup):
            trainer.step(*next(it))
        trainer.sync()
    chunk = max(1, iterations // rounds)
    chunks: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(rounds):
        for key, trainer, it in (("a", a, a_it), ("b", b, b_it)):
            wrap = during_b if key == "b" and during_b is not None else contextlib.nullcontext()
            with wrap:
                start = time.perf_counter()
                for _ in range(chunk):
                    trainer.step(*next(it))
                trainer.sync()
                chunks[key].append((time.perf_counter() - start) / chunk)
    return {k: {"it_s": len(v) / sum(v), "best_it_s": 1 / min(v)} for k, v in chunks.items()}


def loader_ms(loader, batches: int = 10) -> float:
    """Milliseconds per batch for the data pipeline alone (no training)."""
    source = enclave_batches(loader, "cpu")
    next(source)
    start = time.perf_counter()
    for _ in range(batches):
        next(source)
    return (time.perf_counter() - start) / batches * 1000


def enclave_batches(loader, device):
    def plain(t):
        t = t.to(device, non_blocking=True)
        return t.as_tensor() if hasattr(t, "as_tensor") else t

    while True:
        for batch in loader:
            yield plain(batch["image"]), plain(batch["label"])


def memory_batches(loader, device, count: int = 8):
    """``count`` batches drawn from the same pipeline once, kept on the device and replayed.

    Same shapes and values as the enclave-fed run (conv speed on a CPU depends on values,
    e.g. denormals), without any loading cost.
    """
    source = enclave_batches(loader, device)
    pairs = [next(source) for _ in range(count)]
    while True:
        yield from pairs


# ------------------------------------------------------------ larger than memory


def _open_version_folder(dataset_dir: Path) -> Any:
    """An ``EnclaveDataset`` over any version folder (a mount point, not only NAME/VERSION)."""
    from enclave.data.dataset import EnclaveDataset
    from enclave.data.mounts import VERSION_INFO_FILE, GrantedVersion
    from ingestion.manifest import load_manifest

    info_file = dataset_dir / VERSION_INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    name = info.get("name") or load_manifest(dataset_dir).name
    return EnclaveDataset(GrantedVersion(name, int(info.get("version", 1)), dataset_dir, info))


def _epoch_child(dataset_dir: Path, result_path: Path, patch: int, batch: int, replay: int) -> None:
    """Inside the memory cgroup: one epoch over every series, then the in-memory ceiling."""
    import resource

    t_start = time.perf_counter()
    import torch

    import enclave.data as ed
    from enclave.data.cache import memory_limit
    from enclave.data.volumes import _quiet_monai

    _quiet_monai()
    from monai.data import DataLoader

    seen_limit = memory_limit()
    dataset = _open_version_folder(dataset_dir)
    classes = max(dataset.labels) + 1
    train = ed.monai_dataset(
        dataset, split="all", train=True, patch_size=(patch,) * 3, num_samples=batch
    )
    loader = DataLoader(train, batch_size=1, shuffle=True, num_workers=0)
    trainer = Trainer(torch.device("cpu"), False, classes)
    import_s = time.perf_counter() - t_start

    kept: list[tuple[Any, Any]] = []
    data_s = step_s = 0.0
    steps = 0
    epoch_start = time.perf_counter()
    mark = epoch_start
    for item in loader:
        image, label = item["image"], item["label"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else image
        label = label.as_tensor() if hasattr(label, "as_tensor") else label
        got = time.perf_counter()
        data_s += got - mark
        trainer.step(image, label)
        mark = time.perf_counter()
        step_s += mark - got
        steps += 1
        if len(kept) < replay:
            kept.append((image.clone(), label.clone()))
    epoch_s = time.perf_counter() - epoch_start

    # The ceiling: the same model (now warm) on batches replayed from memory.
    start = time.perf_counter()
    for k in range(max(replay, 2 * len(kept))):
        trainer.step(*kept[k % len(kept)])
    memory_step_s = (time.perf_counter() - start) / max(replay, 2 * len(kept))
    cache_dir = getattr(train, "cache_dir", None)
    cache_bytes = sum(p.stat().st_size for p in Path(cache_dir).glob("*.pt")) if cache_dir else None
    result = {
        "limit_seen_bytes": seen_limit.bytes,
        "limit_seen_source": seen_limit.source,
        "cache_mode": train.cache_choice.mode,
        "cache_reason": train.cache_choice.reason,
        "cache_estimate_bytes": train.cache_choice.estimated_bytes,
        "cache_disk_bytes": cache_bytes,
        "series": len(train),
        "steps": steps,
        "setup_s": round(import_s, 2),
        "epoch_s": round(epoch_s, 2),
        "epoch_data_s": round(data_s, 2),
        "epoch_step_s": round(step_s, 2),
        "epoch_it_s": round(steps / epoch_s, 3),
        "memory_it_s": round(1 / memory_step_s, 3),
        "data_path_ratio": round((steps / epoch_s) * memory_step_s, 3),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "cpu_threads": torch.get_num_threads(),
    }
    result_path.write_text(json.dumps(result))


def _cgroup_peak(applied: Any) -> int | None:
    for folder in applied.cgroup_dirs:
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            with contextlib.suppress(OSError, ValueError):
                return int((folder / name).read_text().split()[0])
    return None


def epoch_larger_than_memory(
    dataset_dir: Path,
    memory_limit_bytes: int,
    *,
    patch: int = 48,
    batch: int = 2,
    replay: int = 8,
    timeout_s: float = 3600,
) -> dict:
    """One epoch of the benchmark's U-Net over the version at ``dataset_dir``, in a child
    process confined to a memory cgroup of ``memory_limit_bytes`` (root; cgroup v2 or v1).

    The child opens the folder with ``enclave.data`` and lets ``monai_dataset(cache="auto")``
    choose its cache from the limit it sees; its cache goes to a private temporary home,
    removed afterwards. Returns the child's figures (``epoch_s``, ``data_path_ratio``,
    ``peak_rss_bytes``, ``cache_mode``...) with ``cgroup_peak_bytes`` and ``limit_backend``.
    """
    from enclave.isolation import ResourceLimits, apply_limits, limit_backend

    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "dataset.yaml").is_file():
        raise FileNotFoundError(f"{dataset_dir} is not a dataset version folder (no dataset.yaml)")
    backend = limit_backend()
    if backend == "rlimit":
        raise PermissionError(
            "epoch_larger_than_memory needs a writable memory cgroup (run as root): an address "
            "space rlimit is not a memory limit for torch"
        )
    home = Path(tempfile.mkdtemp(prefix="enclave-epoch-home-"))
    name = f"bench-epoch-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    applied = apply_limits(name, ResourceLimits(memory_max=int(memory_limit_bytes)))
    result_path = home / "result.json"
    join = "; ".join(f"echo $$ > {shlex.quote(str(f))} || exit 125" for f in applied.procs_files)
    command = [
        "/bin/sh",
        "-c",
        f'{join}; exec "$@"',
        "enclave-epoch",
        sys.executable,
        "-m",
        "benchmarks.training",
        "--epoch-child",
        str(dataset_dir),
        "--result",
        str(result_path),
        "--patch",
        str(patch),
        "--batch",
        str(batch),
        "--replay",
        str(replay),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("XDG_CACHE_HOME", None)
    try:
        started = time.perf_counter()
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        wall_s = time.perf_counter() - started
        peak = _cgroup_peak(applied)
        for line in proc.stdout.splitlines():
            if line.startswith("enclave.data:"):
                print("  child: " + line, flush=True)
        if proc.returncode != 0 or not result_path.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
            raise RuntimeError(
                f"the epoch over {dataset_dir} under a {memory_limit_bytes // MiB} MiB limit "
                f"exited with {proc.returncode}{killed}:\n{tail}"
            )
        result = json.loads(result_path.read_text())
    finally:
        for _ in range(50):  # a cgroup is busy for a moment after its last process exits
            applied.remove()
            if not any(d.exists() for d in applied.cgroup_dirs):
                break
            time.sleep(0.1)
        shutil.rmtree(home, ignore_errors=True)
    result.update(
        memory_limit_bytes=int(memory_limit_bytes),
        limit_backend=backend,
        cgroup_peak_bytes=peak,
        child_wall_s=round(wall_s, 2),
    )
    return result


def _series_bytes(size: int, slices: int) -> int:
    """Bytes of one sample series on disk (16-bit pixels plus ~1.6 KB of header a slice)."""
    return slices * (size * size * 2 + 1600)


def larger_than_memory(
    memory_limit_mib: int, *, factor: float, size: int, slices: int, patch: int, keep: bool
) -> dict:
    """Generate and store a version of ``factor`` x the limit, serve it, run the epoch."""
    from enclave.custody import MasterKey
    from enclave.data.mounts import compute_content_hash
    from enclave.samples import make_sample_dataset
    from enclave.workspace.datasets import VersionRecord
    from ingestion.store import materialize, write_version

    limit = memory_limit_mib * MiB
    subjects = max(2, -(-int(factor * limit) // _series_bytes(size, slices)))
    workdir = Path(tempfile.mkdtemp(prefix="enclave-bench-ltm-"))
    mounter = None
    try:
        t0 = time.perf_counter()
        source = make_sample_dataset(
            workdir / "provider",
            name="bench-ct-large",
            subjects=subjects,
            size=size,
            slices=slices,
            with_table=False,
        )
        t1 = time.perf_counter()
        dataset_bytes = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
        digest = compute_content_hash(source)
        key = MasterKey(os.urandom(32))
        stored = write_version(source, workdir / "store", key, name_hint="bench-ct-large")
        t2 = time.perf_counter()
        shutil.rmtree(source)  # only the encrypted store is left
        version = VersionRecord(
            "bench-ct-large", 1, str(stored.store_location), stored.wrapped_key, digest
        )
        served_by = "datafs (decrypting FUSE mount)"
        try:
            from enclave.workspace.datasets import DatasetMounter

            if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
                raise PermissionError("the decrypting mount needs root and /dev/fuse")
            mounter = DatasetMounter(workdir / "plaintext", key)
            dataset_dir = mounter.plaintext_for(version)
        except Exception as exc:  # no FUSE here: decrypt onto disk as the hub used to
            print(f"decrypting mount not available ({exc}); materializing instead", flush=True)
            mounter = None
            served_by = "materialized folder (decrypted onto disk)"
            dataset_dir = materialize(stored, workdir / "materialized", key)
            from enclave.data.mounts import write_version_info

            write_version_info(dataset_dir, version)
        t3 = time.perf_counter()
        print(
            f"version: {subjects} series of {size}x{size}x{slices}, "
            f"{dataset_bytes / MiB:.0f} MiB ({dataset_bytes / limit:.2f}x the "
            f"{memory_limit_mib} MiB limit); generated in {t1 - t0:.0f} s, stored in "
            f"{t2 - t1:.0f} s, served by {served_by} in {t3 - t2:.2f} s",
            flush=True,
        )
        epoch = epoch_larger_than_memory(dataset_dir, limit, patch=patch)
    finally:
        if mounter is not None:
            with contextlib.suppress(Exception):
                mounter.release_all()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "benchmark": "training-larger-than-memory",
        "device": "cpu",
        "memory_limit_mib": memory_limit_mib,
        "dataset_mib": round(dataset_bytes / MiB, 1),
        "dataset_to_limit": round(dataset_bytes / limit, 2),
        "volume": [size, size, slices],
        "patch": patch,
        "served_by": served_by,
        "generate_s": round(t1 - t0, 1),
        "store_s": round(t2 - t1, 1),
        "serve_s": round(t3 - t2, 2),
        **epoch,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def print_larger_than_memory(result: dict) -> None:
    print(
        f"one epoch over {result.get('series')} series ({result.get('dataset_mib', '?')} MiB) "
        f"under a {result['memory_limit_bytes'] // MiB} MiB {result['limit_backend']} limit: "
        f"{result['epoch_s']} s ({result['epoch_it_s']} it/s, data {result['epoch_data_s']} s, "
        f"training {result['epoch_step_s']} s), cache {result['cache_mode']}; replayed from "
        f"memory {result['memory_it_s']} it/s, data-path ratio {result['data_path_ratio']}; "
        f"peak RSS {result['peak_rss_bytes'] / MiB:.0f} MiB, cgroup peak "
        + (
            f"{result['cgroup_peak_bytes'] / MiB:.0f} MiB"
            if result.get("cgroup_peak_bytes")
            else "n/a"
        ),
        flush=True,
    )
    print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, help="cubic patch side (96 on GPU, 48 on CPU)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, help="timed steps (200 GPU, 12 CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (20 GPU, 2 CPU)")
    parser.add_argument("--subjects", type=int, help="series in the dataset (8 GPU, 3 CPU)")
    parser.add_argument("--size", type=int, help="rows/columns per slice (256 GPU, 96 CPU)")
    parser.add_argument("--slices", type=int, help="slices per series (128 GPU, 48 CPU)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (8 GPU, 0 CPU)")
    parser.add_argument("--rounds", type=int, help="alternations (4 GPU, 6 CPU)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--larger-than-memory",
        action="store_true",
        help="one epoch over a version larger than a memory cgroup limit (root)",
    )
    parser.add_argument("--memory-limit-mib", type=int, default=1024)
    parser.add_argument(
        "--data-factor", type=float, default=2.0, help="version size / memory limit (2)"
    )
    parser.add_argument("--epoch-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--replay", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epoch_child is not None:
        _epoch_child(args.epoch_child, args.result, args.patch or 48, args.batch, args.replay)
        return {}
    if args.larger_than_memory:
        result = larger_than_memory(
            args.memory_limit_mib,
            factor=args.data_factor,
            size=args.size or 256,
            slices=args.slices or 128,
            patch=args.patch or 48,
            keep=args.keep,
        )
        print_larger_than_memory(result)
        return result

    import torch

    import enclave.data as ed
    from enclave.data.volumes import _quiet_monai

    _quiet_monai()
    from monai.data import DataLoader

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    patch = args.patch or (96 if gpu else 48)
    iterations = args.iterations or (200 if gpu else 12)
    warmup = args.warmup if args.warmup is not None else (20 if gpu else 2)
    subjects = args.subjects or (8 if gpu else 3)
    size = args.size or (256 if gpu else 96)
    slices = args.slices or (128 if gpu else 48)
    workers = (
        args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if gpu else 0)
    )
    if gpu:
        torch.backends.cudnn.benchmark = True

    workdir = Path(tempfile.mkdtemp(prefix="enclave-bench-training-"))
    try:
        root, staging = stage(workdir, subjects=subjects, size=size, slices=slices)
        os.environ["ENCLAVE_DATASETS_DIR"] = str(root)
        dataset = ed.open_dataset("bench-ct")
        classes = max(dataset.labels) + 1
        t0 = time.perf_counter()
        train = ed.monai_dataset(
            dataset, split="all", train=True, patch_size=(patch,) * 3, num_samples=args.batch
        )
        cache_s = time.perf_counter() - t0
        loader = DataLoader(
            train,
            batch_size=1,
            shuffle=True,
            num_workers=workers,
            pin_memory=gpu,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
        )

        ceiling = Trainer(device, gpu, classes)
        trainer = Trainer(device, gpu, classes)
        sampler = GpuSampler() if gpu else None
        timing = timed_pair(
            ceiling,
            memory_batches(loader, device),
            trainer,
            enclave_batches(loader, device),
            warmup=warmup,
            iterations=iterations,
            rounds=args.rounds or (4 if gpu else 6),
            during_b=sampler.sampling() if sampler else None,
        )
        memory_rate, enclave_rate = timing["a"]["best_it_s"], timing["b"]["best_it_s"]
        pipeline_ms = loader_ms(loader)
        result = {
            "benchmark": "training",
            "device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "amp": gpu,
            "patch": patch,
            "batch": args.batch,
            "iterations": iterations,
            "workers": workers,
            "subjects": subjects,
            "volume": [size, size, slices],
            **staging,
            "cache_fill_s": round(cache_s, 2),
            "enclave_it_s": round(enclave_rate, 3),
            "memory_it_s": round(memory_rate, 3),
            "ratio": round(enclave_rate / memory_rate, 3),
            "target_ratio": 0.9,
            "enclave_it_s_overall": round(timing["b"]["it_s"], 3),
            "memory_it_s_overall": round(timing["a"]["it_s"], 3),
            "ratio_overall": round(timing["b"]["it_s"] / timing["a"]["it_s"], 3),
            "loader_ms_per_batch": round(pipeline_ms, 1),
            "gpu_util_pct": sampler.mean if sampler else None,
            "cpu_threads": torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"staged {result['dataset_mb']} MB (encrypt + materialize "
        f"{result['store_and_materialize_s']} s), cache filled in {result['cache_fill_s']} s"
    )
    print(
        f"U-Net 3D, {patch}^3 patches, batch {args.batch}, {result['device']}"
        f"{' AMP' if gpu else ''}: enclave data {enclave_rate:.3f} it/s, "
        f"in-memory tensors {memory_rate:.3f} it/s, ratio {result['ratio']:.3f} "
        f"(target >= 0.9)"
        + (f", GPU utilisation {sampler.mean}%" if sampler else "")
        + f"; overall (all chunks) ratio {result['ratio_overall']}"
        + f"; data pipeline alone {result['loader_ms_per_batch']} ms/batch"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
