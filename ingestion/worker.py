"""The reconstruction worker: k verified shares in, a cataloged (or quarantined) dataset out.

It polls the receivers for complete shares. When a transfer has k of them it moves the
transfer through ``reconstructing`` (``combine_shares`` into private staging, using spare
shares if one turns out corrupt) and ``validating`` (``validate_dataset``), then either
encrypts the dataset into the store and catalogs it in one catalog transaction, or keeps the
report in quarantine. Staging is wiped after every transfer and whenever the worker starts.

Crash safety: on start, transfers left in ``reconstructing`` or ``validating`` are retried
from the beginning (their shares stay on the receivers until the transfer is finished);
store writes are atomic renames and ``catalog_version`` is idempotent per transfer, so a
retry can neither half-catalog a dataset nor catalog it twice.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ingestion import quarantine, shares, store
from ingestion.content_index import identifier_digests
from ingestion.settings import WORKER_ACTOR, IngestPaths, WorkerSettings
from secret_sharing.errors import EnclaveError

log = logging.getLogger("enclave.ingest.worker")

IN_PROGRESS = ("reconstructing", "validating")
FINAL = ("cataloged", "quarantined", "failed")


def _attr(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if obj is not None and hasattr(obj, name):
            value = getattr(obj, name)
            if value is not None:
                return value
    return default


def _name(obj: Any) -> str | None:
    if obj is None or isinstance(obj, str):
        return obj
    return _attr(obj, "name")


class ReceiverLink:
    """The worker's side of one receiver's internal API."""

    def __init__(self, url: str, worker_token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={"x-enclave-worker-token": worker_token},
            timeout=timeout,
        )

    def close(self) -> None:
        self._client.close()

    def shares(self) -> list[dict[str, Any]]:
        resp = self._client.get("/internal/shares")
        resp.raise_for_status()
        return resp.json()

    def progress(self, transfer_id: str) -> dict[str, Any]:
        resp = self._client.get(f"/internal/transfers/{transfer_id}")
        resp.raise_for_status()
        return resp.json()

    def fetch(self, meta: dict[str, Any], dest_dir: Path, *, local_ok: bool = True) -> Path:
        """The complete share: read in place when this host can see it, else downloaded."""
        local = Path(meta.get("path") or "")
        if local_ok and meta.get("path") and local.is_file():
            return local
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / f"share-{meta['index']}"
        with self._client.stream("GET", f"/internal/transfers/{meta['transfer_id']}/share") as r:
            r.raise_for_status()
            with open(target, "wb") as fh:
                for chunk in r.iter_bytes(1 << 20):
                    fh.write(chunk)
        return target

    def purge(self, transfer_id: str) -> None:
        self._client.delete(f"/internal/transfers/{transfer_id}").raise_for_status()


class _WaitForShares(Exception):
    """Too few good shares so far, but the transfer's other shares have not all arrived."""


def _share_set(found: list[tuple[ReceiverLink, dict[str, Any]]]) -> frozenset[int]:
    return frozenset(int(meta["index"]) for _, meta in found)


def _more_shares_expected(found: list[tuple[ReceiverLink, dict[str, Any]]]) -> bool:
    """Fewer complete shares than the transfer has: a spare may still arrive."""
    n = max(int(meta.get("n") or 0) for _, meta in found) if found else 0
    return len(_share_set(found)) < n


def _warm_up() -> None:
    """Import what reconstruction and validation use and start the validation pool's server
    while no transfer waits; otherwise the first transfer after a start pays for them.

    Then everything alive so far (modules, the catalog's mappers, the receivers' links) is
    moved out of the garbage collector's view, as the zygote does: a transfer allocates
    enough objects to trigger full collections, and each would otherwise walk every one of
    them again, on the thread that is reconstructing."""
    import ingestion.pipeline
    import ingestion.validate  # noqa: F401
    import secret_sharing.combine  # noqa: F401
    from ingestion.validators.dicom import warm_pool

    warm_pool()
    gc.collect()
    gc.freeze()


def fits_in_memory(tmpfs: Path, size: int, fraction: float) -> bool:
    """Whether ``size`` bytes are at most ``fraction`` of both the memory available and the
    free space of the tmpfs at ``tmpfs``."""
    if fraction <= 0 or not _is_tmpfs(tmpfs):
        return False
    try:
        stats = os.statvfs(tmpfs)
        with open("/proc/meminfo") as meminfo:
            available = next(
                int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")
            )
    except (OSError, StopIteration, ValueError):
        return False
    return size <= fraction * min(stats.f_bavail * stats.f_frsize, available)


def _is_tmpfs(path: Path) -> bool:
    try:
        with open("/proc/self/mounts") as mounts:
            return any(
                fields[1] == str(path) and fields[2] == "tmpfs"
                for fields in (line.split() for line in mounts)
                if len(fields) > 2
            )
    except OSError:
        return False


def describe_transfer(catalog: Any, transfer_id: str, record: Any = None) -> dict[str, Any]:
    """Where a transfer stands, as the status API and ``enclave share status`` show it."""
    if record is None:
        from catalog.errors import NotFound

        try:
            record = catalog.get_transfer(transfer_id)
        except NotFound:
            record = None
    if record is None:
        return {"transfer_id": transfer_id, "state": "unknown"}
    out: dict[str, Any] = {
        "transfer_id": transfer_id,
        "state": _attr(record, "state"),
        "dataset": _attr(record, "dataset_name"),
        "provider": _name(_attr(record, "provider_name", "provider")),
        "k": _attr(record, "k"),
        "n": _attr(record, "n"),
    }
    reason = _attr(record, "reason")
    if reason:
        out["reason"] = reason
    version = _attr(record, "version", "dataset_version")
    if version is not None and not isinstance(version, (str, int)):
        out["version"] = {
            "dataset": _name(_attr(version, "dataset")) or out["dataset"],
            "version": _attr(version, "version", "number"),
            "status": _attr(version, "status"),
        }
    elif version is not None:
        out["version"] = {"dataset": out["dataset"], "version": version}
    return out


class ReconstructionWorker:
    """Turns complete transfers into cataloged versions or quarantine reports, one at a time."""

    def __init__(
        self,
        *,
        paths: IngestPaths,
        catalog: Any,
        master_key: store.KeyWrapper,
        receivers: list[ReceiverLink],
        settings: WorkerSettings | None = None,
        local_shares: bool = True,
    ) -> None:
        self.paths = paths
        self.catalog = catalog
        self.master_key = master_key
        self.receivers = receivers
        self.settings = settings or WorkerSettings()
        self.local_shares = local_shares
        self._requeued: set[str] = set()
        self._ignored: set[str] = set()  # failed on an internal error; shares kept for an admin
        # Transfers whose complete shares did not give k good ones while more were still
        # due: retried once the set of complete shares changes.
        self._waiting: dict[str, frozenset[int]] = {}
        self.last_error: str | None = None
        #: Set once the worker has imported its modules and started the validation pool
        #: (or failed to): ``IngestService.wait_until_warm`` waits for it.
        self.warm = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Wipe scratch left by a crash and re-queue transfers it interrupted."""
        for root in self.paths.staging_roots():
            shutil.rmtree(root, ignore_errors=True)
        self.paths.staging.mkdir(parents=True, mode=0o700)
        store.clean_temporary(self.paths.store)
        for orphan in store.remove_unreferenced(self.paths.store, self.catalog.store_locations()):
            log.warning("removed %s: stored but never cataloged (interrupted)", orphan.name)
        requeued = []
        for state in IN_PROGRESS:
            for record in self.catalog.transfers_in_state(state):
                tid = _attr(record, "transfer_id", "id")
                requeued.append(tid)
                log.warning("transfer %s was interrupted while %s; retrying it", tid, state)
        self._requeued.update(requeued)
        return requeued

    def run(self, stop: threading.Event) -> None:
        """Poll and process until ``stop`` is set; never dies on one bad transfer."""
        try:
            _warm_up()
        except Exception:  # the first transfer imports and starts them instead
            log.warning("could not prepare reconstruction and validation early", exc_info=True)
        finally:
            self.warm.set()
        while not stop.is_set():
            try:
                self.run_once()
                self.last_error = None
            except Exception as exc:  # keep serving; the next poll retries
                if str(exc) != self.last_error:
                    log.exception("worker poll failed")
                self.last_error = str(exc)
            stop.wait(self.settings.poll_interval_s)

    # --- one poll ------------------------------------------------------------------------

    def ready(self) -> dict[str, list[tuple[ReceiverLink, dict[str, Any]]]]:
        """Transfers with at least k complete shares, with where each share lies."""
        complete: dict[str, list[tuple[ReceiverLink, dict[str, Any]]]] = {}
        for link in self.receivers:
            try:
                metas = link.shares()
            except httpx.HTTPError as exc:
                log.warning("receiver %s unreachable: %s", link.url, exc)
                continue
            for meta in metas:
                if meta.get("state") == "complete":
                    complete.setdefault(meta["transfer_id"], []).append((link, meta))
        for tid in list(self._waiting):
            if tid in complete and _share_set(complete[tid]) != self._waiting[tid]:
                del self._waiting[tid]  # another share arrived: try again
        return {
            tid: found
            for tid, found in complete.items()
            if tid not in self._ignored
            and tid not in self._waiting
            and (len(found) >= int(found[0][1]["k"]) or tid in self._requeued)
        }

    def run_once(self) -> list[str]:
        done = []
        for tid, found in self.ready().items():
            self.process(tid, found)
            done.append(tid)
        return done

    # --- one transfer --------------------------------------------------------------------

    def _state(self, tid: str, state: str, **kw: Any) -> None:
        self.catalog.set_transfer_state(tid, state, actor=WORKER_ACTOR, **kw)

    def _pause(self) -> None:
        if self.settings.stage_delay_s:
            time.sleep(self.settings.stage_delay_s)

    def process(self, tid: str, found: list[tuple[ReceiverLink, dict[str, Any]]]) -> str:
        """Reconstruct, validate, store + catalog or quarantine; returns the final state."""
        record = self.catalog.get_transfer(tid)
        state = _attr(record, "state")
        if state in FINAL:
            # Shares that outlived their transfer (a late upload, a crash before the purge).
            # A transfer that failed on an internal error keeps its shares for an admin.
            internal = state == "failed" and str(_attr(record, "reason", default="")).startswith(
                "internal error"
            )
            if internal:
                self._ignored.add(tid)
            self._finish(tid, purge=self.settings.purge_shares and not internal)
            return state
        if state not in ("receiving", *IN_PROGRESS):
            log.warning("transfer %s is %s; not processing it", tid, state)
            return state
        staging = self._staging_for(tid, found)
        try:
            final = self._process(tid, record, found, staging)
        except _WaitForShares as wait:
            log.warning("transfer %s: %s; waiting for the other shares", tid, wait)
            self._state(tid, "receiving", reason=f"{wait}; waiting for the other shares")
            shutil.rmtree(staging, ignore_errors=True)
            return "receiving"
        except EnclaveError as exc:
            log.warning("transfer %s failed: %s", tid, exc)
            self._state(tid, "failed", reason=str(exc))
            final = "failed"
        except Exception as exc:
            log.exception("transfer %s failed unexpectedly", tid)
            self._state(tid, "failed", reason=f"internal error: {type(exc).__name__}: {exc}")
            self._ignored.add(tid)
            self._finish(tid, purge=False)
            return "failed"
        self._finish(tid, purge=self.settings.purge_shares)
        return final

    def _staging_for(self, tid: str, found: list[tuple[ReceiverLink, dict[str, Any]]]) -> Path:
        """On tmpfs when the plaintext (about k x a share) fits comfortably in memory."""
        k = max(int(meta.get("k") or 1) for _, meta in found) if found else 1
        estimate = k * max((int(meta.get("length") or 0) for _, meta in found), default=0)
        root = self.paths.memory_staging
        if fits_in_memory(root.parent, estimate, self.settings.memory_staging_fraction):
            root.mkdir(mode=0o700, exist_ok=True)
            return root / tid
        return self.paths.staging / tid

    def _finish(self, tid: str, *, purge: bool) -> None:
        for root in self.paths.staging_roots():
            shutil.rmtree(root / tid, ignore_errors=True)
        with contextlib.suppress(OSError):  # leave no empty folder behind on the tmpfs
            self.paths.memory_staging.rmdir()
        self._requeued.discard(tid)
        if not purge:
            return
        for link in self.receivers:
            try:
                link.purge(tid)
            except httpx.HTTPError as exc:
                log.warning("could not purge %s from %s: %s", tid, link.url, exc)

    def _process(
        self,
        tid: str,
        record: Any,
        found: list[tuple[ReceiverLink, dict[str, Any]]],
        staging: Path,
    ) -> str:
        from ingestion.pipeline import StreamingIngest
        from ingestion.validate import validate_dataset
        from secret_sharing import combine_shares
        from secret_sharing.errors import NotEnoughSharesError

        owner = _name(_attr(record, "provider_name", "provider"))
        provider = self.catalog.get_provider(owner)
        verify_key = shares.verify_key_from_pem(_attr(provider, "verify_key_pem", "verify_key"))
        # The de-identification options the catalog lets this provider declare (PS3.16 codes).
        allowed_options = list(_attr(provider, "deid_options", default=()) or ())
        if _attr(record, "state") != "reconstructing":
            self._state(tid, "reconstructing")

        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, mode=0o700)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        share_paths = []
        for link, meta in sorted(found, key=lambda f: f[1]["index"]):
            try:
                share_paths.append(link.fetch(meta, staging / "shares", local_ok=self.local_shares))
            except (httpx.HTTPError, OSError) as exc:
                log.warning("share %s of %s unavailable: %s", meta["index"], tid, exc)
        # Files are encrypted into the store and DICOM files checked as they are unpacked;
        # nothing becomes visible before validation passes and the version is committed.
        writer = store.VersionWriter(self.paths.store, self.master_key, name_hint=tid)
        try:
            with StreamingIngest(writer, allowed_options=allowed_options) as streaming:
                try:
                    result = combine_shares(
                        share_paths,
                        staging / "data",
                        verify_key=verify_key,
                        on_file=streaming.file_ready,
                        before_publish=streaming.drain,
                    )
                except NotEnoughSharesError as exc:
                    if _more_shares_expected(found):
                        self._waiting[tid] = _share_set(found)
                        raise _WaitForShares(str(exc)) from None
                    raise
                prechecked = streaming.prechecked()
            timings["reconstruct_s"] = round(time.perf_counter() - started, 3)
            timings["files_prechecked"] = len(prechecked.outcomes)
            rejected = {Path(p).name: why for p, why in (result.rejected or {}).items()}
            for name, why in rejected.items():
                log.warning("transfer %s: %s rejected, used a spare share: %s", tid, name, why)

            self._pause()  # fault-injection tests kill the service here, plaintext in staging
            self._state(tid, "validating")
            started = time.perf_counter()
            root = Path(result.output_path)
            outcome = validate_dataset(
                root,
                transfer_id=tid,
                prechecked=prechecked,
                allowed_options=allowed_options,
            )
            timings["validate_s"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
        except BaseException:
            writer.abort()
            raise
        report = outcome.report
        report.summary["ingest_timings"] = timings
        report.transfer_id = report.transfer_id or tid
        report.summary.setdefault(
            "shares",
            {"used": sorted(Path(p).name for p in result.used_shares), "rejected": rejected},
        )
        if not report.passed:
            writer.abort()
            quarantine.write_report(self.paths.quarantine, tid, report)
            shutil.rmtree(staging, ignore_errors=True)  # refused data is not kept
            self._state(
                tid,
                "quarantined",
                reason=quarantine.summarise(report),
                report_json=report.to_json(),
            )
            log.info("transfer %s quarantined: %s", tid, quarantine.summarise(report))
            return "quarantined"

        try:
            writer.add_tree(root)  # derived tables
            # Plaintext lives no longer than needed: deleted before the commit's flush, it is
            # usually never written to the disk at all.
            shutil.rmtree(staging, ignore_errors=True)
            stored = writer.commit(
                hashes={f["path"]: f["sha256"] for f in outcome.files if f.get("sha256")}
            )
        except BaseException:
            writer.abort()
            raise
        # The provider's files were encrypted during reconstruction; this is the derived
        # tables and making the version durable.
        timings["store_after_validation_s"] = round(time.perf_counter() - started, 3)
        try:
            version = self.catalog.catalog_version(
                tid,
                manifest=_as_dict(outcome.manifest),
                content_hash=outcome.content_hash,
                size_bytes=stored.size_bytes,
                store_location=stored.store_location,
                wrapped_key=stored.wrapped_key,
                files=_catalog_files(outcome.files),
                series=list(outcome.series),
                report_json=report.to_json(),
                feature_tables=list(outcome.feature_tables),
                chunks=stored.chunk_digests,
                identifiers=identifier_digests(outcome.subject_ids),
                actor=WORKER_ACTOR,
            )
        except BaseException:
            store.delete_version(stored.store_location)
            raise
        if str(_attr(version, "store_location")) != stored.store_location:
            # An earlier attempt already cataloged this transfer; keep that one.
            store.delete_version(stored.store_location)
        log.info("transfer %s cataloged (%d files)", tid, stored.file_count)
        return "cataloged"


def _catalog_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation tells manifest and derived files apart; the catalog files them as other."""
    from catalog.models import FILE_KINDS

    return [f if f.get("kind") in FILE_KINDS else dict(f, kind="other") for f in files]


def _as_dict(manifest: Any) -> dict[str, Any]:
    if isinstance(manifest, dict):
        return manifest
    for method in ("to_dict", "as_dict", "model_dump"):
        if hasattr(manifest, method):
            return getattr(manifest, method)()
    import dataclasses

    if dataclasses.is_dataclass(manifest) and not isinstance(manifest, type):
        return dataclasses.asdict(manifest)
    raise TypeError(f"cannot turn {type(manifest).__name__} into a manifest dict")


def start_worker_thread(
    worker: ReconstructionWorker,
    stop: threading.Event,
    *,
    on_exit: Callable[[], None] | None = None,
) -> threading.Thread:
    def target() -> None:
        try:
            worker.run(stop)
        finally:
            if on_exit:
                on_exit()

    thread = threading.Thread(target=target, name="ingest-worker", daemon=True)
    thread.start()
    return thread
