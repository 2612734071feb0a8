"""The provider's PACS gateway: images per second received and de-identified, next to dcmtk.

    python -m benchmarks.gateway [--series 2] [--slices 150] [--size 512] [--repeat 2]

Generates a CT study (``--series`` x ``--slices`` slices of ``--size``² from
``enclave.samples``), then, ``--repeat`` times and interleaved so both see the same machine:

- floor: dcmtk's ``storescu`` sends every file over loopback to dcmtk's own ``storescp``
  (which writes each to disk): the rate of a C++ Storage SCP on this machine (both tools
  with ``TCP_NODELAY=1``: Debian's build otherwise waits on delayed ACKs, ~45 ms an image);
- gateway: the same ``storescu`` command to ``ingestion.gateway`` (each instance appended to
  its record file and flushed with fdatasync before Success is answered); then every spooled
  study is de-identified into the dataset folder (``process_ready``, by the gateway's worker
  processes). "received" (acknowledged durably) is the storescu wall time alone; "received
  and de-identified" adds the de-identification, run after the receiving, not beside it.

- debian_default: the floor again without ``TCP_NODELAY`` (dcmtk as Debian ships it), for
  reference.

The figure of merit is the gateway's received-and-de-identified rate over the floor's (median
runs); goal >= 0.5x. CPU count and load average are printed, as the machine is shared. The
last line printed is one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingestion.service import free_port

GOAL_RATIO = 0.5
#: Debian's dcmtk 3.6.7 leaves Nagle's algorithm on unless TCP_NODELAY=1 is in the
#: environment; storescp then stalls ~45 ms an image on delayed ACKs. Both tools run with it
#: off, so the floor is dcmtk at its best and the gateway faces the same sender.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"error: nothing listens on port {port} after {timeout:.0f} s")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"error: {name} is missing: apt-get install dcmtk")
    return path


def storescu(port: int, called: str, source: Path, env: dict[str, str] = DCMTK_ENV) -> float:
    """Seconds ``storescu`` takes to send every file under ``source``."""
    args = [tool("storescu"), "-aet", "BENCH", "-aec", called, "+sd", "+r", "-nh"]
    start = time.perf_counter()
    result = subprocess.run(
        [*args, "127.0.0.1", str(port), str(source)],
        capture_output=True,
        text=True,
        env=env,
    )
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: storescu to {called} failed: {result.stderr.strip()[-500:]}")
    return took


def run_floor(
    source: Path, files: int, work: Path, env: dict[str, str] = DCMTK_ENV
) -> dict[str, Any]:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [tool("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_port(port)
        took = storescu(port, "STORESCP", source, env)
    finally:
        proc.terminate()
        proc.wait()
    stored = sum(1 for _ in out.iterdir())
    if stored != files:
        raise SystemExit(f"error: storescp stored {stored} of {files} files")
    shutil.rmtree(out)
    return {"seconds": round(took, 3), "images_per_s": round(files / took, 1)}


def run_gateway(source: Path, files: int, work: Path) -> dict[str, Any]:
    from ingestion.gateway import Gateway, GatewayConfig, serve
    from ingestion.validators.deid_options import DeidOption

    config = GatewayConfig(
        ae_title="ENCLAVEGW",
        port=free_port(),
        out_dir=work / "gateway",
        allowed_calling=frozenset({"BENCH"}),
        host="127.0.0.1",
        options=frozenset({DeidOption.RETAIN_PATIENT_CHARACTERISTICS}),
        no_burned_in_modalities=frozenset({"CT"}),
        complete_after=3600,
        reserve_bytes=0,
    )
    gateway = Gateway(config)
    server = serve(config, gateway, block=False)
    try:
        wait_port(config.port)
        gateway.start_workers(wait=True)  # a gateway runs for hours: not its start-up cost
        cpu0 = time.process_time()
        received_s = storescu(config.port, config.ae_title, source)
        cpu1 = time.process_time()
        start = time.perf_counter()
        written = gateway.process_ready(all_studies=True)
        deid_s = time.perf_counter() - start
        cpu2 = time.process_time()
    finally:
        server.shutdown()
        gateway.stop()
    if gateway.received != files or written != files:
        raise SystemExit(
            f"error: the gateway received {gateway.received} and de-identified {written} "
            f"of {files} files"
        )
    shutil.rmtree(config.out_dir)
    total = received_s + deid_s
    return {
        "received_s": round(received_s, 3),
        "deidentify_s": round(deid_s, 3),
        "seconds": round(total, 3),
        "received_images_per_s": round(files / received_s, 1),
        "deidentified_images_per_s": round(files / deid_s, 1),
        "images_per_s": round(files / total, 1),
        # CPU time of this process per image: what receiving costs, load aside (the
        # de-identification's CPU is mostly in the worker processes, not counted here).
        "receive_cpu_ms_per_image": round((cpu1 - cpu0) * 1000 / files, 2),
        "deidentify_main_cpu_ms_per_image": round((cpu2 - cpu1) * 1000 / files, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from enclave.samples import make_benchmark_series

    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        source = work / "study"
        files = args.series * args.slices
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress:
            task = progress.add_task("generating CT slices", total=files)
            make_benchmark_series(
                source,
                series=args.series,
                slices=args.slices,
                size=args.size,
                progress=lambda n: progress.advance(task, n),
            )
        mb = sum(p.stat().st_size for p in source.rglob("*.dcm")) / 1e6
        print(f"{files} CT slices of {args.size}x{args.size}, {mb:.0f} MB", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {"floor": [], "gateway": [], "debian_default": []}
        plain = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        kinds: list[tuple[str, Callable[[Path, int, Path], dict[str, Any]]]] = [
            ("floor", run_floor),
            ("gateway", run_gateway),
            ("debian_default", functools.partial(run_floor, env=plain)),
        ]
        for i in range(args.repeat):
            for name, run in kinds:
                with console.status(f"run {i + 1}/{args.repeat}: {name}"):
                    figures = run(source, files, work)
                runs[name].append(figures)
                extra = (
                    f" (received {figures['received_images_per_s']}/s, "
                    f"{figures['receive_cpu_ms_per_image']} ms CPU each; de-identified "
                    f"{figures['deidentified_images_per_s']}/s by worker processes)"
                    if name == "gateway"
                    else ""
                )
                print(
                    f"run {i + 1} {name:14} {figures['images_per_s']:7.1f} images/s "
                    f"in {figures['seconds']:.2f} s{extra}; load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = round(statistics.median(r["images_per_s"] for r in runs["floor"]), 1)
    default = round(statistics.median(r["images_per_s"] for r in runs["debian_default"]), 1)
    gateway = round(statistics.median(r["images_per_s"] for r in runs["gateway"]), 1)
    received = round(statistics.median(r["received_images_per_s"] for r in runs["gateway"]), 1)
    deidentified = round(
        statistics.median(r["deidentified_images_per_s"] for r in runs["gateway"]), 1
    )
    ratio = gateway / floor
    result = {
        "files": files,
        "megabytes": round(mb, 1),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "floor_images_per_s": floor,
        "gateway_images_per_s": gateway,
        "gateway_received_images_per_s": received,
        "gateway_received_ratio": round(received / floor, 2),
        "gateway_deidentified_images_per_s": deidentified,
        "debian_default_floor_images_per_s": default,
        "ratio": round(ratio, 2),
        "goal_ratio": GOAL_RATIO,
        "met": ratio >= GOAL_RATIO,
        "runs": runs,
    }
    print(
        f"gateway {gateway:.1f} images/s received and de-identified vs storescp floor "
        f"{floor:.1f} images/s: {ratio:.2f}x (goal >= {GOAL_RATIO}x); storescp as Debian "
        f"ships it (Nagle on) {default:.1f} images/s; received and acknowledged durably "
        f"{received:.1f} images/s ({received / floor:.2f}x), de-identification alone "
        f"{deidentified:.1f} images/s; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
