"""The airlock: automated checks on a 1 GB request, and the audit log they write to.

    python -m benchmarks.airlock [--gb 1.0] [--index-chunks 1000000] [--entries 1000000]

Checks: a request of mixed files (model weights, CSV tables, a text log, PNG figures; ``--gb``
in all) is checked file by file exactly as a submission is (``check_file``, with the SHA-256
staging took while copying), against a content index holding ``--index-chunks`` chunk digests
and 10,000 subject identifiers. The reference is reading the same files once, in the same run,
from the same (warm) page cache: the goal is checks within 3x of it.

Audit: the figures of ``benchmarks.audit`` (verify over ``--entries`` entries on SQLite, and on
PostgreSQL over ``--pg-entries``; appends per second with 1 and 8 writers), run in-process.

Prints figures and, last, one line of JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from catalog import default_database_url, open_catalog
from catalog.airlock import ContentIndex
from enclave.airlock.checks import Limits, check_file

MB = 1024 * 1024


class NoLineage:
    def record_for(self, sha256: str) -> dict[str, Any] | None:
        return None


def _csv_block(rng: random.Random, rows: int) -> bytes:
    lines = ["epoch,fold,site,loss,dice,auc"]
    for i in range(rows):
        lines.append(
            f"{i % 200},{i % 5},site-{i % 7},{rng.random():.6f},{rng.random():.6f},{rng.random():.6f}"
        )
    return ("\n".join(lines) + "\n").encode()


def _log_block(rng: random.Random, lines: int) -> bytes:
    words = ["loaded", "batch", "step", "loss", "validation", "saved", "checkpoint", "lr"]
    out = []
    for i in range(lines):
        out.append(
            f"2026-12-06T07:{i % 60:02d}:{i % 60:02d} INFO {rng.choice(words)} "
            f"step={i} loss={rng.random():.5f} run=r{i % 13}"
        )
    return ("\n".join(out) + "\n").encode()


def make_request(folder: Path, total_bytes: int, seed: int = 0) -> list[Path]:
    """Weights 60 %, tables 20 %, a log 10 %, figures 10 % of ``total_bytes``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    def write(name: str, size: int, block: bytes, head: bytes = b"") -> None:
        path = folder / name
        with open(path, "wb") as fh:
            fh.write(head)
            left = size - len(head)
            while left > 0:
                piece = block[:left]
                fh.write(piece)
                left -= len(piece)
        paths.append(path)

    weights = int(total_bytes * 0.6) // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [weights // 4], "data_offsets": [0, 0]}})
    for i in range(4):
        head = struct.pack("<Q", len(header)) + header.encode()
        write(f"model-{i}.safetensors", weights, os.urandom(8 * MB), head)
    tables = int(total_bytes * 0.2) // 2
    for i in range(2):
        write(f"metrics-{i}.csv", tables, _csv_block(rng, 100_000))
    write("train.log", int(total_bytes * 0.1), _log_block(rng, 60_000))
    figures = int(total_bytes * 0.1) // MB
    for i in range(figures):
        write(f"fig-{i:03d}.png", MB, os.urandom(MB), b"\x89PNG\r\n\x1a\n")
    return paths


def fill_index(catalog: Any, chunks: int, identifiers: int) -> None:
    """One version with ``identifiers`` subject ids and a file holding ``chunks`` chunk
    digests (random: what matters is the index's size)."""
    from ingestion.content_index import identifier_digests

    pem = b"-----BEGIN PUBLIC KEY-----\nbench\n"
    provider, _ = catalog.add_provider("bench-hospital", pem, "SHA256:bench", actor="bench")
    catalog.record_transfer("t-bench", provider, dataset_name="bench-set", k=2, n=3, share_length=1)
    digests = [os.urandom(16) for _ in range(chunks)]
    catalog.catalog_version(
        "t-bench",
        manifest={"name": "bench-set"},
        content_hash="b" * 64,
        size_bytes=chunks * 65536,
        store_location="store/bench",
        wrapped_key=b"wrapped",
        files=[{"path": "a.bin", "size": chunks * 65536, "sha256": "c" * 64, "kind": "other"}],
        chunks={"a.bin": digests},
        identifiers=identifier_digests(f"SUBJ-{i:06d}" for i in range(identifiers)),
        actor="bench",
    )


def read_floor(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.read(MB):
                pass
    return time.perf_counter() - started


def measure_checks(gb: float, index_chunks: int, tmp: Path) -> dict[str, Any]:
    total = int(gb * 1024 * MB)
    paths = make_request(tmp / "request", total)
    hashes = {}
    started = time.perf_counter()
    for path in paths:  # what staging computes while it copies
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(MB):
                digest.update(block)
        hashes[path] = digest.hexdigest()
    sha256_s = time.perf_counter() - started
    catalog = open_catalog(default_database_url(tmp))
    fill_index(catalog, index_chunks, 10_000)
    index = ContentIndex(catalog)
    limits = Limits(max_file_bytes=total, max_request_bytes=2 * total)
    floor = min(read_floor(paths) for _ in range(3))
    started = time.perf_counter()
    verdicts: dict[str, int] = {}
    by_kind: dict[str, list[float]] = {}
    for path in paths:
        one = time.perf_counter()
        report = check_file(
            path, path.name, index=index, lineage=NoLineage(), limits=limits, sha256=hashes[path]
        )
        verdicts[report.verdict.value] = verdicts.get(report.verdict.value, 0) + 1
        spent = by_kind.setdefault(path.suffix, [0.0, 0.0])
        spent[0] += time.perf_counter() - one
        spent[1] += path.stat().st_size
    checks = time.perf_counter() - started
    catalog.close()
    size = sum(p.stat().st_size for p in paths)
    return {
        "request_bytes": size,
        "files": len(paths),
        "index_chunks": index_chunks,
        "verdicts": verdicts,
        "read_floor_s": round(floor, 3),
        "sha256_s": round(sha256_s, 3),
        "mb_per_s_by_type": {k: round(v[1] / MB / v[0], 1) for k, v in sorted(by_kind.items())},
        "checks_s": round(checks, 3),
        "checks_mb_per_s": round(size / MB / checks, 1),
        "checks_vs_floor": round(checks / floor, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--index-chunks", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--pg-entries", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--skip-audit", action="store_true")
    args = parser.parse_args(argv)

    result: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="airlock-bench-") as tmp:
        checks = measure_checks(args.gb, args.index_chunks, Path(tmp))
    result["checks"] = checks
    print(
        f"checks: {checks['files']} files, {checks['request_bytes'] / MB:.0f} MB, index of "
        f"{checks['index_chunks']:,} chunks: {checks['checks_s']} s ({checks['checks_mb_per_s']} "
        f"MB/s); reading them once (warm page cache): {checks['read_floor_s']} s; "
        f"{checks['checks_vs_floor']}x the floor (goal 3x); SHA-256 of the same bytes: "
        f"{checks['sha256_s']} s; verdicts {checks['verdicts']}"
    )
    print(f"checks MB/s by file type: {checks['mb_per_s_by_type']}")
    if not args.skip_audit:
        from benchmarks import audit

        result["audit"] = audit.measure(
            entries=args.entries, pg_entries=args.pg_entries, seconds=args.seconds
        )
        audit.report(result["audit"])
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
