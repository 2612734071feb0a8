"""A share receiver: one of the n independent HTTP endpoints that take a provider's shares.

Each receiver accepts exactly one share index and keeps it in its own store directory, so
a single receiver (or one stolen disk) never holds k shares of a transfer. In production
each runs on its own host (``enclave ingest receiver``); ``enclave ingest serve`` runs n of
them as separate processes on separate ports.

Upload protocol (resumable, idempotent):

* ``GET  /v1/transfers/{id}/shares/{j}`` reports how many bytes are safely on disk.
* ``PUT  /v1/transfers/{id}/shares/{j}?offset=N`` appends the body at byte N; any other
  offset is refused with 409 and the receiver's offset, so a client resumes exactly there.
  Bytes are fsynced before the response; a dropped connection keeps what arrived.
* The first bytes must parse as a share header (magic, transfer id, index, signer): garbage
  is refused before it is stored; the declared share length is checked against the
  provider's quota of bytes in flight, and bytes beyond it are refused.
* The signer's fingerprint must be the token's provider's key; once the last byte is in,
  the share is fully verified (signature, block hashes) and only then marked complete.
  The data blocks are hashed as their bytes are written (the prologue gave the layout), so
  completing a share reads only its small tail back, not gigabytes of blocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ingestion import diskio, shares
from ingestion.settings import DEFAULT_QUOTA_BYTES, PROLOGUE_MAX_BYTES
from secret_sharing.errors import EnclaveError

if TYPE_CHECKING:
    from secret_sharing.verify import BlockDigester

HEADER_LEN = 64  # secret_sharing.format.HEADER_LEN; kept here so the app imports light

log = logging.getLogger("enclave.ingest.receiver")

FINISHED_STATES = ("reconstructing", "validating", "quarantined", "cataloged", "failed")


@dataclass
class ReceiverConfig:
    index: int
    store_dir: Path
    database_url: str
    worker_token: str
    default_quota_bytes: int = DEFAULT_QUOTA_BYTES


def _attr(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if obj is not None and hasattr(obj, name):
            return getattr(obj, name)
    return default


def provider_name(provider: Any) -> str:
    return str(_attr(provider, "name"))


class ShareStore:
    """Receiver j's directory: ``<transfer id>/share-<j>[.part]`` and ``meta.json``."""

    def __init__(self, root: Path, index: int) -> None:
        self.root = Path(root)
        self.index = index
        self.root.mkdir(parents=True, exist_ok=True)

    def dir(self, transfer_id: str) -> Path:
        return self.root / transfer_id

    def part(self, transfer_id: str) -> Path:
        return self.dir(transfer_id) / f"share-{self.index}.part"

    def complete(self, transfer_id: str) -> Path:
        return self.dir(transfer_id) / f"share-{self.index}"

    def meta(self, transfer_id: str) -> dict[str, Any] | None:
        path = self.dir(transfer_id) / "meta.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def save_meta(self, transfer_id: str, meta: dict[str, Any]) -> None:
        d = self.dir(transfer_id)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, d / "meta.json")

    def received(self, transfer_id: str) -> int:
        meta = self.meta(transfer_id)
        if meta and meta.get("state") == "complete":
            return int(meta["length"])
        try:
            return self.part(transfer_id).stat().st_size
        except FileNotFoundError:
            return 0

    def progress(self, transfer_id: str) -> dict[str, Any]:
        meta = self.meta(transfer_id) or {}
        out = {
            "index": self.index,
            "received": self.received(transfer_id),
            "length": meta.get("length"),
            "complete": meta.get("state") == "complete",
            "state": meta.get("state", "absent"),
        }
        if meta.get("reason"):
            out["reason"] = meta["reason"]
        return out

    def all_metas(self) -> list[dict[str, Any]]:
        out = []
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and shares.TRANSFER_ID.match(d.name):
                meta = self.meta(d.name)
                if meta:
                    meta = dict(meta, received=self.received(d.name))
                    if meta.get("state") == "complete":
                        meta["path"] = str(self.complete(d.name).resolve())
                    out.append(meta)
        return out

    def in_flight_bytes(self, provider: str, *, excluding: str) -> int:
        """Declared bytes of this provider's shares held here and not yet processed."""
        return sum(
            int(m.get("length") or 0)
            for m in self.all_metas()
            if m.get("provider") == provider
            and m.get("transfer_id") != excluding
            and m.get("state") in ("receiving", "complete")
        )

    def purge(self, transfer_id: str) -> None:
        shutil.rmtree(self.dir(transfer_id), ignore_errors=True)


async def provider_from_token(request: Request) -> Any:
    """The provider whose upload token is in ``Authorization: Bearer``; 401 otherwise."""
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing provider token (Authorization: Bearer <token>)")
    catalog = request.app.state.catalog
    provider = await run_in_threadpool(catalog.authenticate_provider, token.strip())
    if provider is None:
        raise HTTPException(401, "provider token not recognised")
    return provider


ProviderDep = Annotated[Any, Depends(provider_from_token)]


def _fsync(fh: Any) -> None:
    fh.flush()
    diskio.fdatasync(fh.fileno())


#: Bytes of a body after which the receiver queues them for the disk (without waiting), so
#: the fsync before the answer finds little left to write.
WRITEBACK_BYTES = 8 * 1024 * 1024


def _start_writeback(fh: Any, offset: int, nbytes: int, drop_before: int) -> int:
    """Queue the new bytes for the disk and drop what lies before ``drop_before`` (written
    out a window earlier) from the page cache; returns the new drop mark."""
    fh.flush()
    diskio.start_writeback(fh.fileno(), offset, nbytes)
    dropped = drop_before
    if offset > dropped:
        diskio.drop_behind(fh.fileno(), dropped, offset - dropped)
        dropped = offset
    return dropped


#: Bytes read at a time when a digester catches up with a part file already on disk.
CATCH_UP_BYTES = 1024 * 1024


def digester_from_disk(prologue: Path, part: Path, probe: Path) -> BlockDigester:
    """A ``BlockDigester`` for the share being received, fed what ``part`` already holds.

    Used for the first body of an upload and whenever the receiver's in-memory digester is
    missing or behind (a restart, a failed write): a resumed share is hashed from disk once,
    then kept up to date as bytes arrive.
    """
    from secret_sharing import BlockDigester, read_share_info

    shares.write_probe(prologue.read_bytes(), probe)
    try:
        digester = BlockDigester.for_share(read_share_info(probe))
    finally:
        probe.unlink(missing_ok=True)
    try:
        with open(part, "rb") as fh:
            while chunk := fh.read(CATCH_UP_BYTES):
                digester.feed(digester.position, chunk)
    except FileNotFoundError:
        pass
    return digester


def warm_up_receiver(app: FastAPI) -> None:
    """Pay before the first upload for what it would otherwise pay for on its way: import
    the modules the handlers import on first use, let the catalog's ORM configure its
    mappers, and run the lookups every upload makes once (a token and a transfer that do
    not exist: read-only, nothing is recorded). A receiver runs for months; without this
    the first transfer after each start pays for it in every receiver. Never fails: a
    receiver that could not warm up does the same work on first use."""
    from catalog.errors import NotFound
    from secret_sharing.combine import read_share_info
    from secret_sharing.verify import BlockDigester

    del read_share_info, BlockDigester  # imported for their modules' sake
    try:
        from sqlalchemy.orm import configure_mappers

        configure_mappers()
        catalog = app.state.catalog
        catalog.authenticate_provider("warm-up: no such token")
        try:
            catalog.get_transfer("0" * 32)
        except NotFound:  # as expected; its query is compiled now
            pass
    except Exception:
        log.debug("receiver warm-up incomplete", exc_info=True)


def create_receiver_app(config: ReceiverConfig, *, catalog: Any = None) -> FastAPI:
    """The receiver's HTTP API; ``catalog`` defaults to ``open_catalog(config.database_url)``."""
    if catalog is None:
        from catalog import open_catalog

        catalog = open_catalog(config.database_url)
    store = ShareStore(config.store_dir, config.index)
    locks: dict[str, asyncio.Lock] = {}
    key_cache: dict[str, Any] = {}
    # Per transfer being received: its data blocks hashed so far (secret_sharing.BlockDigester).
    digesters: dict[str, BlockDigester] = {}

    app = FastAPI(
        title=f"Enclave share receiver {config.index}",
        version="1",
        description=f"Takes share {config.index} of secret-shared dataset transfers "
        "(resumable uploads).",
    )
    app.state.config = config
    app.state.store = store
    app.state.catalog = catalog

    def require_worker(request: Request) -> None:
        if request.headers.get("x-enclave-worker-token") != config.worker_token:
            raise HTTPException(403, "worker token required")

    def check_ids(transfer_id: str, index: int) -> None:
        if not shares.TRANSFER_ID.match(transfer_id):
            raise HTTPException(400, f"{transfer_id!r} is not a transfer id")
        if index != config.index:
            raise HTTPException(
                409,
                f"this receiver takes share {config.index} only; send share {index} to "
                f"receiver {index}",
            )

    async def transfer_record(transfer_id: str) -> Any:
        from catalog.errors import NotFound

        try:
            return await run_in_threadpool(catalog.get_transfer, transfer_id)
        except NotFound:
            return None

    def owner_of(record: Any) -> str | None:
        prov = _attr(record, "provider_name", "provider")
        if prov is None:
            return None
        return prov if isinstance(prov, str) else provider_name(prov)

    async def verify_key_for(provider: Any) -> Any:
        name = provider_name(provider)
        if name not in key_cache:
            pem = _attr(provider, "verify_key_pem", "verify_key")
            key_cache[name] = await run_in_threadpool(shares.verify_key_from_pem, pem)
        return key_cache[name]

    def check_owner(meta: dict | None, record: Any, provider: Any, transfer_id: str) -> None:
        name = provider_name(provider)
        owners = {meta.get("provider") if meta else None, owner_of(record)} - {None}
        if owners and owners != {name}:
            raise HTTPException(403, f"transfer {transfer_id} belongs to another provider")

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        """Which share index this receiver takes (clients pair shares with receivers by it)."""
        return {"role": "receiver", "index": config.index}

    @app.get("/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/transfers/{transfer_id}/shares/{index}")
    async def share_progress(transfer_id: str, index: int, provider: ProviderDep) -> dict[str, Any]:
        """Bytes of this share safely on disk here, and the transfer's state."""
        check_ids(transfer_id, index)
        record = await transfer_record(transfer_id)
        check_owner(store.meta(transfer_id), record, provider, transfer_id)
        out = store.progress(transfer_id)
        out["transfer_id"] = transfer_id
        out["transfer_state"] = _attr(record, "state")
        return out

    @app.get("/v1/transfers/{transfer_id}")
    async def transfer_status(transfer_id: str, provider: ProviderDep) -> dict[str, Any]:
        """The transfer's state in the catalog and this receiver's share of it."""
        if not shares.TRANSFER_ID.match(transfer_id):
            raise HTTPException(400, f"{transfer_id!r} is not a transfer id")
        record = await transfer_record(transfer_id)
        meta = store.meta(transfer_id)
        if record is None and meta is None:
            raise HTTPException(404, f"unknown transfer {transfer_id}")
        check_owner(meta, record, provider, transfer_id)
        from ingestion.worker import describe_transfer

        out = await run_in_threadpool(describe_transfer, catalog, transfer_id, record)
        out["shares"] = [store.progress(transfer_id)] if meta else []
        return out

    @app.post("/v1/transfers/{transfer_id}/shares/{index}")
    async def begin(
        transfer_id: str,
        index: int,
        request: Request,
        provider: ProviderDep,
    ) -> JSONResponse:
        """Begin (or resume) an upload with the share's prologue: header + signed tail.

        The receiver checks magic, transfer id, index, signer and declared length against the
        provider's quota before it accepts a single data byte.
        """
        check_ids(transfer_id, index)
        head = b""
        async for chunk in request.stream():
            head += chunk
            if len(head) > PROLOGUE_MAX_BYTES:
                raise HTTPException(413, f"a share prologue is at most {PROLOGUE_MAX_BYTES} bytes")
        lock = locks.setdefault(transfer_id, asyncio.Lock())
        async with lock:
            record = await transfer_record(transfer_id)
            meta = store.meta(transfer_id)
            check_owner(meta, record, provider, transfer_id)
            state = _attr(record, "state")
            if meta and meta.get("state") == "complete":
                return JSONResponse(dict(store.progress(transfer_id), already=True))
            if state in FINISHED_STATES:
                return JSONResponse(
                    {"detail": f"transfer {transfer_id} is already {state}", "state": state},
                    status_code=409,
                )
            if meta and meta.get("state") == "receiving":
                if (store.dir(transfer_id) / "prologue").read_bytes() != head:
                    raise HTTPException(
                        409, f"share {index} of {transfer_id} is being received with other content"
                    )
                return JSONResponse(store.progress(transfer_id))
            store.purge(transfer_id)  # nothing, or a share rejected earlier: start afresh
            digesters.pop(transfer_id, None)
            await _start_share(transfer_id, index, head, provider)
            return JSONResponse(store.progress(transfer_id))

    @app.put("/v1/transfers/{transfer_id}/shares/{index}")
    async def upload(
        transfer_id: str,
        index: int,
        request: Request,
        provider: ProviderDep,
        offset: Annotated[int, Query(ge=0, description="byte offset of this body in the share")],
    ) -> JSONResponse:
        """Append the body at ``offset``; completes and verifies the share at its last byte."""
        check_ids(transfer_id, index)
        lock = locks.setdefault(transfer_id, asyncio.Lock())
        if lock.locked():
            raise HTTPException(409, f"share {index} of {transfer_id} is already being uploaded")
        async with lock:
            return await _upload(transfer_id, index, request, offset, provider)

    async def _upload(
        transfer_id: str, index: int, request: Request, offset: int, provider: Any
    ) -> JSONResponse:
        meta = store.meta(transfer_id)
        check_owner(meta, None, provider, transfer_id)
        if meta is None:
            state = _attr(await transfer_record(transfer_id), "state")
            if state in FINISHED_STATES:
                return JSONResponse(
                    {"detail": f"transfer {transfer_id} is already {state}", "state": state},
                    status_code=409,
                )
        if meta is None or meta.get("state") == "rejected":
            raise HTTPException(
                409, f"begin share {index} of {transfer_id} with its prologue (POST) first"
            )
        if meta.get("state") == "complete":
            return JSONResponse(dict(store.progress(transfer_id), already=True))
        received = store.received(transfer_id)
        if offset != received:
            return JSONResponse(
                {"detail": f"expected offset {received}, got {offset}", "received": received},
                status_code=409,
            )
        length = int(meta["length"])
        prologue = store.dir(transfer_id) / "prologue"
        header = prologue.read_bytes()[:HEADER_LEN]
        part = store.part(transfer_id)
        digester = digesters.get(transfer_id)
        if digester is None or digester.position != received:
            digesters.pop(transfer_id, None)
            digester = await run_in_threadpool(
                digester_from_disk, prologue, part, store.dir(transfer_id) / "probe"
            )
            if digester.position != received:  # the part file changed meanwhile; try again
                raise HTTPException(409, f"share {index} of {transfer_id} changed while resuming")
            digesters[transfer_id] = digester
        written = flushed = dropped = received
        disconnected = too_long = mismatch = False
        with open(part, "ab") as fh:
            try:
                async for chunk in request.stream():
                    if written - flushed >= WRITEBACK_BYTES:
                        dropped = await run_in_threadpool(
                            _start_writeback, fh, flushed, written - flushed, dropped
                        )
                        flushed = written
                    if written < HEADER_LEN and chunk:
                        # The first bytes must be the header announced in the prologue.
                        overlap = chunk[: HEADER_LEN - written]
                        if overlap != header[written : written + len(overlap)]:
                            mismatch = True
                            break
                    if written + len(chunk) > length:
                        fh.write(chunk[: length - written])
                        written = length
                        too_long = True
                        break
                    fh.write(chunk)
                    # Hashed inline on the loop thread (uvicorn's chunks are small enough not to
                    # need a thread hop): the work verify_share did at the end.
                    digester.feed(written, chunk)
                    written += len(chunk)
            except ClientDisconnect:
                disconnected = True
            except BaseException:
                digesters.pop(transfer_id, None)
                raise
            finally:
                await run_in_threadpool(_fsync, fh)
        if mismatch or too_long:
            digesters.pop(transfer_id, None)  # the next body starts from what is on disk
        if mismatch:
            raise HTTPException(
                422, f"the body is not share {index} of {transfer_id} (header differs)"
            )
        if too_long:
            raise HTTPException(
                413,
                f"share {index} of {transfer_id} is declared as {length} bytes; refused "
                "bytes beyond that",
            )
        if disconnected:
            return JSONResponse({"detail": "client went away", "received": written}, 400)
        if written == length:
            return await _complete(transfer_id, index, provider, meta, digester)
        return JSONResponse(store.progress(transfer_id))

    async def _start_share(transfer_id: str, index: int, head: bytes, provider: Any) -> None:
        """Parse the prologue and decide whether to take the share at all."""
        from secret_sharing.errors import ShareError

        name = provider_name(provider)
        d = store.dir(transfer_id)
        d.mkdir(parents=True, exist_ok=True)
        probe = d / "probe"
        try:
            await run_in_threadpool(shares.write_probe, head, probe)
            info = await run_in_threadpool(shares.read_facts, probe)
        except ShareError as exc:
            store.purge(transfer_id)
            raise HTTPException(422, f"not a share: {exc}") from None
        finally:
            probe.unlink(missing_ok=True)
        problem = None
        if info.transfer_id != transfer_id:
            problem = (422, f"the body is share of transfer {info.transfer_id}, not {transfer_id}")
        elif info.index != index:
            problem = (422, f"the body is share {info.index}, not share {index}")
        elif info.fingerprint != str(_attr(provider, "fingerprint")):
            problem = (
                403,
                f"share {index} of {transfer_id} is signed by key {info.fingerprint[:16]}, "
                f"not by provider {name}'s registered key",
            )
        else:
            quota = _attr(provider, "quota_bytes") or config.default_quota_bytes
            in_flight = store.in_flight_bytes(name, excluding=transfer_id)
            if in_flight + info.length > quota:
                problem = (
                    413,
                    f"share {index} of {transfer_id} declares {info.length} bytes; provider "
                    f"{name} has {in_flight} of {quota} bytes in flight here",
                )
        if problem:
            store.purge(transfer_id)
            raise HTTPException(*problem)
        try:
            await run_in_threadpool(
                lambda: catalog.record_transfer(
                    transfer_id,
                    provider,
                    dataset_name=info.dataset,
                    k=info.k,
                    n=info.n,
                    share_length=info.length,
                    state="receiving",
                )
            )
        except EnclaveError as exc:
            store.purge(transfer_id)
            raise HTTPException(409, str(exc)) from None
        (d / "prologue").write_bytes(head)
        store.save_meta(
            transfer_id,
            {
                "transfer_id": transfer_id,
                "index": index,
                "provider": name,
                "length": info.length,
                "k": info.k,
                "n": info.n,
                "dataset": info.dataset,
                "fingerprint": info.fingerprint,
                "state": "receiving",
            },
        )
        log.info("receiving share %d of %s from %s", index, transfer_id, name)

    async def _complete(
        transfer_id: str,
        index: int,
        provider: Any,
        meta: dict[str, Any],
        digester: BlockDigester,
    ) -> JSONResponse:
        """Verify the whole share against its signed manifest, then mark it complete.

        The data blocks are checked through the digests taken as they were written, not
        read back. Bytes changed on disk after that are caught later: a segment whose
        blocks changed fails its GCM tag in the worker, which then hashes the blocks to name
        this share and rebuilds the segment from a spare.
        """
        from secret_sharing import verify_share_digests
        from secret_sharing.errors import ShareError

        digesters.pop(transfer_id, None)
        part = store.part(transfer_id)
        try:
            key = await verify_key_for(provider)
            await run_in_threadpool(verify_share_digests, part, key, digester)
        except ShareError as exc:
            part.unlink(missing_ok=True)
            store.save_meta(transfer_id, dict(meta, state="rejected", reason=str(exc)))
            log.warning("share %d of %s rejected: %s", index, transfer_id, exc)
            raise HTTPException(422, f"share {index} of {transfer_id} rejected: {exc}") from None
        os.replace(part, store.complete(transfer_id))
        store.save_meta(transfer_id, dict(meta, state="complete"))
        log.info("share %d of %s complete and verified", index, transfer_id)
        return JSONResponse(store.progress(transfer_id))

    # Internal API for the reconstruction worker (worker token, never a provider token).

    @app.get("/internal/shares", dependencies=[Depends(require_worker)], include_in_schema=False)
    async def internal_shares() -> list[dict[str, Any]]:
        return store.all_metas()

    @app.get(
        "/internal/transfers/{transfer_id}",
        dependencies=[Depends(require_worker)],
        include_in_schema=False,
    )
    async def internal_progress(transfer_id: str) -> dict[str, Any]:
        check_ids(transfer_id, config.index)
        return store.progress(transfer_id)

    @app.get(
        "/internal/transfers/{transfer_id}/share",
        dependencies=[Depends(require_worker)],
        include_in_schema=False,
    )
    async def internal_download(transfer_id: str) -> FileResponse:
        check_ids(transfer_id, config.index)
        path = store.complete(transfer_id)
        if not path.is_file():
            raise HTTPException(404, f"share {config.index} of {transfer_id} is not complete here")
        return FileResponse(path, media_type="application/octet-stream")

    @app.delete(
        "/internal/transfers/{transfer_id}",
        dependencies=[Depends(require_worker)],
        include_in_schema=False,
    )
    async def internal_purge(transfer_id: str) -> dict[str, Any]:
        check_ids(transfer_id, config.index)
        # Wait for an upload in flight to end, so it cannot write into a purged transfer.
        async with locks.setdefault(transfer_id, asyncio.Lock()):
            store.purge(transfer_id)
            digesters.pop(transfer_id, None)
        locks.pop(transfer_id, None)
        return {"purged": transfer_id}

    return app
