"""The ingestion service: n share receivers, the reconstruction worker and its status API.

``enclave ingest serve`` runs it embedded on one machine: each receiver is its own process
on its own port with its own store directory (``STATE/receivers/<j>``); the coordinator
process holds the unsealed master key in memory, runs the reconstruction worker and answers
status questions. In production the receivers run on separate hosts
(``enclave ingest receiver``) and ``serve --receiver URL ...`` only runs the coordinator.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from catalog.db import DB_URL_ENV
from ingestion import quarantine
from ingestion.receiver import ProviderDep, provider_name
from ingestion.settings import (
    DEFAULT_PORT,
    DEFAULT_RECEIVERS,
    IngestPaths,
    WorkerSettings,
)
from ingestion.shares import TRANSFER_ID
from ingestion.worker import ReceiverLink, ReconstructionWorker, describe_transfer
from secret_sharing.errors import EnclaveError

log = logging.getLogger("enclave.ingest")


class ServiceError(EnclaveError):
    """The ingestion service cannot start or reach its receivers."""


def receiver_ports(port: int, receivers: int) -> list[int]:
    """The ports the share receivers of a service on ``port`` listen on (the next ones; a
    service falls back to free ports when one of them is taken)."""
    return [port + j for j in range(1, receivers + 1)]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


# --- the coordinator's HTTP API ------------------------------------------------------------


def create_coordinator_app(
    *,
    catalog: Any,
    paths: IngestPaths,
    receivers: list[ReceiverLink],
    worker: ReconstructionWorker | None,
) -> FastAPI:
    """Status API; the worker (if given) runs in a thread for the app's lifetime."""
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        thread = None
        if worker is not None:
            await run_in_threadpool(worker.recover)
            thread = threading.Thread(target=worker.run, args=(stop,), name="ingest-worker")
            thread.daemon = True
            thread.start()
        yield
        stop.set()
        if thread is not None:
            await run_in_threadpool(thread.join, 30)

    app = FastAPI(
        title="Enclave ingestion service",
        version="1",
        description="Where secret-shared transfers stand; shares go to the receivers listed "
        "by /v1/info.",
        lifespan=lifespan,
    )
    app.state.catalog = catalog
    app.state.stop = stop

    def owned_record(transfer_id: str, provider: Any) -> Any:
        from catalog.errors import NotFound

        if not TRANSFER_ID.match(transfer_id):
            raise HTTPException(400, f"{transfer_id!r} is not a transfer id")
        try:
            record = catalog.get_transfer(transfer_id)
        except NotFound:
            record = None
        if record is None:
            raise HTTPException(404, f"unknown transfer {transfer_id}")
        if provider_name(record.provider) != provider_name(provider):
            raise HTTPException(403, f"transfer {transfer_id} belongs to another provider")
        return record

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        """The receivers, in share-index order: share j goes to the receiver with index j."""
        return {"role": "coordinator", "receivers": [link.url for link in receivers]}

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "worker": "running" if worker is not None else "absent",
            "last_error": worker.last_error if worker is not None else None,
        }

    @app.get("/v1/transfers/{transfer_id}")
    async def transfer_status(
        transfer_id: str,
        provider: ProviderDep,
        shares: Annotated[
            bool, Query(description="ask every receiver for its share's progress (slower)")
        ] = True,
    ) -> dict[str, Any]:
        """State of a transfer: per-share progress while receiving, then reconstructing,
        validating, quarantined (with reasons) or cataloged (dataset name and version)."""
        record = await run_in_threadpool(owned_record, transfer_id, provider)
        out = await run_in_threadpool(describe_transfer, catalog, transfer_id, record)
        if out.get("state") == "quarantined":
            out["report"] = f"/v1/transfers/{transfer_id}/report"
        if not shares:  # a client waiting for the state polls this; the worker shares a CPU
            return out
        progress_of_shares = []
        for link in receivers:
            try:
                progress = await run_in_threadpool(link.progress, transfer_id)
            except httpx.HTTPError:
                progress = {"state": "unreachable", "receiver": link.url}
            if progress.get("state") != "absent":
                progress_of_shares.append(progress)
        out["shares"] = progress_of_shares
        return out

    @app.get("/v1/transfers/{transfer_id}/report")
    async def report_json(transfer_id: str, provider: ProviderDep) -> dict[str, Any]:
        """The validation report (findings name files and tags, never values)."""
        record = await run_in_threadpool(owned_record, transfer_id, provider)
        report = quarantine.read_report(paths.quarantine, transfer_id)
        if report is not None:
            return report.to_dict()
        if record.report_json:
            return json.loads(record.report_json)
        raise HTTPException(404, f"transfer {transfer_id} has no report yet")

    @app.get("/v1/transfers/{transfer_id}/report.html", response_class=HTMLResponse)
    async def report_html(transfer_id: str, provider: ProviderDep) -> str:
        await run_in_threadpool(owned_record, transfer_id, provider)
        path = quarantine.quarantine_dir(paths.quarantine, transfer_id) / "report.html"
        if not path.is_file():
            raise HTTPException(404, f"transfer {transfer_id} has no quarantine report")
        return path.read_text()

    return app


# --- running servers -----------------------------------------------------------------------


class ThreadServer:
    """A uvicorn server in a background thread (tests and the in-process receivers)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        import uvicorn

        self.url = url_for(host, port)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"uvicorn:{port}")

    def start(self, timeout: float = 20) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ServiceError(f"server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self, *, wait: bool = True) -> None:
        self.server.should_exit = True
        if wait:
            self.thread.join(timeout=30)


def _set_pdeathsig() -> None:
    """Receivers die with the service that started them (Linux), even on SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def wait_healthy(url: str, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"receiver for {url} exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise ServiceError(f"{url} did not become healthy within {timeout:.0f} s")


@dataclass
class IngestService:
    """The embedded ingestion service on one machine.

    ``receiver_mode="process"`` (``enclave ingest serve``) runs each receiver as its own OS
    process; ``"thread"`` runs them as separate apps on separate ports inside this process
    (quicker to start; used by tests and the benchmark).
    """

    state_dir: Path
    master_key: Any
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    receivers: int = DEFAULT_RECEIVERS
    database_url: str | None = None
    receiver_urls: list[str] = field(default_factory=list)  # external receivers: run none
    receiver_mode: str = "process"
    worker_settings: WorkerSettings = field(default_factory=WorkerSettings)
    run_worker: bool = True
    catalog: Any = None  # an open Catalog to share; by default one is opened here

    def __post_init__(self) -> None:
        from catalog import open_catalog, resolve_database_url
        from secret_sharing.allocator import tune_allocator

        tune_allocator()  # this process will run the worker: gigabytes through buffers
        self.state_dir = Path(self.state_dir)
        self.paths = IngestPaths(self.state_dir)
        self.database_url = resolve_database_url(self.state_dir, self.database_url)
        if self.catalog is None:
            self.catalog = open_catalog(self.database_url)
        self.worker_token = self.paths.worker_token()
        if self.port == 0:
            self.port = free_port(self.host)
        self._procs: list[subprocess.Popen] = []
        self._threads: list[ThreadServer] = []
        self._coordinator: ThreadServer | None = None
        self.worker: ReconstructionWorker | None = None
        self.coordinator_url = url_for(self.host, self.port)

    # receivers

    def _receiver_ports(self) -> list[int]:
        ports = receiver_ports(self.port, self.receivers)
        if any(not _port_free(self.host, p) for p in ports):
            ports = [free_port(self.host) for _ in range(self.receivers)]
        return ports

    def start_receivers(self) -> list[str]:
        if self.receiver_urls:
            for url in self.receiver_urls:
                wait_healthy(url)
            return self.receiver_urls
        database_url = self.database_url
        assert database_url is not None  # resolved by __post_init__
        urls = []
        for j, port in enumerate(self._receiver_ports(), start=1):
            store_dir = self.paths.receiver_store(j)
            store_dir.mkdir(parents=True, exist_ok=True)
            if self.receiver_mode == "thread":
                from ingestion.receiver import ReceiverConfig, create_receiver_app

                app = create_receiver_app(
                    ReceiverConfig(j, store_dir, database_url, self.worker_token),
                    catalog=self.catalog,
                )
                self._threads.append(ThreadServer(app, self.host, port))
                self._threads[-1].thread.start()
                urls.append(url_for(self.host, port))
                continue
            cmd = [
                sys.executable, "-m", "enclave", "ingest", "receiver",
                "--index", str(j), "--store", str(store_dir),
                "--host", self.host, "--port", str(port),
                "--state-dir", str(self.state_dir),
            ]  # fmt: skip
            # The database URL may carry a password: environment, not the command line.
            env = {**os.environ, DB_URL_ENV: database_url}
            proc = subprocess.Popen(cmd, env=env, preexec_fn=_set_pdeathsig)
            self._procs.append(proc)
            urls.append(url_for(self.host, port))
        # Thread mode starts no processes: nothing to watch while waiting.
        procs: list[subprocess.Popen | None] = [*self._procs] or [None] * len(urls)
        for url, receiver in zip(urls, procs, strict=True):
            wait_healthy(url, proc=receiver)
        self.receiver_urls = urls
        return urls

    def coordinator_app(self) -> FastAPI:
        links = [ReceiverLink(url, self.worker_token) for url in self.receiver_urls]
        if self.run_worker:
            self.worker = ReconstructionWorker(
                paths=self.paths,
                catalog=self.catalog,
                master_key=self.master_key,
                receivers=links,
                settings=self.worker_settings,
            )
        return create_coordinator_app(
            catalog=self.catalog, paths=self.paths, receivers=links, worker=self.worker
        )

    @property
    def receiver_pids(self) -> list[int]:
        """Process ids of the receivers this service started (none in thread mode or with
        external receivers)."""
        return [proc.pid for proc in self._procs]

    def wait_until_warm(self, timeout: float = 120) -> bool:
        """Wait until the worker has warmed up (modules imported, validation pool's server
        started); a long-running service is warm before its first provider sends anything,
        so the benchmark times transfers from here. False on timeout or without a worker."""
        return self.worker is not None and self.worker.warm.wait(timeout)

    def write_service_file(self) -> None:
        self.paths.ingest.mkdir(parents=True, exist_ok=True)
        data = {"url": self.coordinator_url, "receivers": self.receiver_urls, "pid": os.getpid()}
        self.paths.service_file.write_text(json.dumps(data, indent=2) + "\n")

    # whole service

    @contextlib.contextmanager
    def running(self) -> Iterator[IngestService]:
        """Start everything in the background (tests, benchmark); stop it on exit."""
        try:
            self.start_receivers()
            self._coordinator = ThreadServer(self.coordinator_app(), self.host, self.port)
            self._threads.append(self._coordinator.start())
            self.write_service_file()
            yield self
        finally:
            self.stop()

    def serve_forever(self) -> None:
        """Run the coordinator in the foreground until SIGINT/SIGTERM (``enclave ingest serve``)."""
        import uvicorn

        try:
            self.start_receivers()
            self.write_service_file()
            app = self.coordinator_app()
            config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning")
            uvicorn.Server(config).run()
        finally:
            self.stop()

    def stop(self) -> None:
        # The coordinator (its worker polls the receivers) first, then the receivers together.
        if self._threads and self._threads[-1] is self._coordinator:
            self._threads.pop().stop()
        for server in self._threads:
            server.stop(wait=False)
        for server in self._threads:
            server.stop()
        self._threads.clear()
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()
        with contextlib.suppress(FileNotFoundError):
            self.paths.service_file.unlink()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def run_receiver(
    *, index: int, store_dir: Path, host: str, port: int, database_url: str, worker_token: str
) -> None:
    """One receiver in the foreground (``enclave ingest receiver``)."""
    import uvicorn

    from ingestion.receiver import ReceiverConfig, create_receiver_app, warm_up_receiver

    app = create_receiver_app(ReceiverConfig(index, Path(store_dir), database_url, worker_token))
    warm_up_receiver(app)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
