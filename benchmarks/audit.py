"""The tamper-evident audit log: verify speed and the append rate under concurrent writers.

    python -m benchmarks.audit [--entries 1000000] [--pg-entries 200000] [--seconds 5]

Bulk-loads ``--entries`` synthetic audit rows into a SQLite catalog (``--pg-entries`` into a
temporary PostgreSQL), signs one checkpoint over them and times ``catalog.audit.verify``;
the reference is the same rows merely read through the driver in the same run (the floor
verification cannot go below). Then 1 and 8 threads append entries (``Catalog._tx`` +
``Catalog._audit``, one entry a transaction) for ``--seconds`` each, on SQLite and on
PostgreSQL, where the reference is 8 writers without the catalog's write lock (which keeps
audit ids in commit order). Prints figures and, last, one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from catalog import Catalog, default_database_url, open_catalog
from catalog import service as catalog_service
from catalog.audit import _reader, _stream, checkpoint, verify

ACTIONS = ("grant.add", "grant.revoke", "version.publish", "transfer.state", "session.login")


def _row(i: int) -> tuple[Any, ...]:
    details = {
        "subject": f"group:g{i % 37}",
        "expires": None if i % 3 else f"2027-0{1 + i % 9}-01T00:00:00+00:00",
        "mode": "desktop" if i % 5 else "notebook",
    }
    at = f"2026-12-{1 + i // 100_000 % 28:02d} {i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1_000_000:06d}"
    return (
        i,
        at,
        f"admin:user{i % 11}",
        ACTIONS[i % len(ACTIONS)],
        f"dataset:set-{i % 101}@{1 + i % 4}",
        json.dumps(details),
    )


def load_sqlite(path: Path, entries: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO audit_events (id, at, actor, action, target, details) VALUES (?,?,?,?,?,?)",
            (_row(i) for i in range(1, entries + 1)),
        )


def load_postgres(catalog: Catalog, entries: int) -> None:
    raw = catalog.engine.raw_connection()
    try:
        cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(
            "COPY audit_events (id, at, actor, action, target, details) FROM STDIN"
        ) as copy:
            for i in range(1, entries + 1):
                copy.write_row(_row(i))
        cursor.execute("SELECT setval('audit_events_id_seq', %s)", (entries,))
        raw.commit()
    finally:
        raw.close()


def read_floor(catalog: Catalog) -> float:
    """Seconds to read every audit row through the driver and do nothing with it."""
    started = time.perf_counter()
    with _reader(catalog) as conn:
        for _ in _stream(conn):
            pass
    return time.perf_counter() - started


def measure_verify(catalog: Catalog, entries: int) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    started = time.perf_counter()
    made = checkpoint(catalog, key)
    checkpoint_s = time.perf_counter() - started
    assert made is not None and made.tree_size == entries
    floor_s = read_floor(catalog)
    report = verify(catalog, key.public_key())
    assert report.ok and report.entries == entries, report.summary()
    return {
        "entries": entries,
        "checkpoint_s": round(checkpoint_s, 2),
        "verify_s": round(report.seconds, 2),
        "verify_per_s": round(report.rate),
        "read_floor_s": round(floor_s, 2),
        "read_floor_per_s": round(entries / floor_s),
    }


def append_rate(catalog: Catalog, writers: int, seconds: float) -> float:
    """Entries per second appended by ``writers`` threads, one entry a transaction."""
    stop = threading.Event()
    counts = [0] * writers
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            while not stop.is_set():
                with catalog._tx() as s:
                    catalog._audit(s, f"bench:{n}", "bench.append", f"writer:{n}", n=counts[n])
                counts[n] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def measure_appends(
    catalog: Catalog, seconds: float, *, unlocked_reference: bool
) -> dict[str, Any]:
    out = {
        "append_1_writer_per_s": round(append_rate(catalog, 1, seconds)),
        "append_8_writers_per_s": round(append_rate(catalog, 8, seconds)),
    }
    if unlocked_reference:
        locked = catalog_service._take_write_lock
        catalog_service._take_write_lock = lambda session: None
        try:
            out["append_8_writers_no_lock_per_s"] = round(append_rate(catalog, 8, seconds))
        finally:
            catalog_service._take_write_lock = locked
    return out


def measure(
    *, entries: int, pg_entries: int, seconds: float, tmp_dir: str | None = None
) -> dict[str, Any]:
    """Verify and append figures on SQLite and on a temporary PostgreSQL."""
    from tests.postgres_server import TemporaryPostgres

    result: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        url = default_database_url(Path(tmp))
        open_catalog(url).close()
        started = time.perf_counter()
        load_sqlite(Path(tmp) / "catalog.sqlite", entries)
        load_s = time.perf_counter() - started
        with open_catalog(url) as cat:
            result["sqlite"] = {"load_s": round(load_s, 1), **measure_verify(cat, entries)}
        fresh = Path(tmp) / "appends"
        fresh.mkdir()
        with open_catalog(default_database_url(fresh)) as cat:
            result["sqlite"].update(measure_appends(cat, seconds, unlocked_reference=False))

    with TemporaryPostgres(database="audit_bench") as url:
        with open_catalog(url) as cat:
            load_postgres(cat, pg_entries)
            result["postgresql"] = measure_verify(cat, pg_entries)
            result["postgresql"].update(measure_appends(cat, seconds, unlocked_reference=True))
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return result


def report(result: dict[str, Any]) -> None:
    for backend in ("sqlite", "postgresql"):
        r = result[backend]
        print(
            f"{backend}: {r['entries']} entries; checkpoint {r['checkpoint_s']} s; verify "
            f"{r['verify_s']} s = {r['verify_per_s']:,} entries/s (reading the rows alone: "
            f"{r['read_floor_per_s']:,}/s)"
        )
        line = (
            f"{backend}: appends, one entry a transaction: 1 writer {r['append_1_writer_per_s']:,}/s, "
            f"8 writers {r['append_8_writers_per_s']:,}/s"
        )
        if "append_8_writers_no_lock_per_s" in r:
            line += (
                f" (8 writers without the write lock: {r['append_8_writers_no_lock_per_s']:,}/s)"
            )
        print(line)
    print(f"load average {result['loadavg_1m']} on {result['cpus']} CPUs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--pg-entries", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tmp-dir", default=None, help="Where the SQLite file goes.")
    args = parser.parse_args(argv)
    result = measure(
        entries=args.entries, pg_entries=args.pg_entries, seconds=args.seconds, tmp_dir=args.tmp_dir
    )
    report(result)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
