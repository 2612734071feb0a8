"""The provider's PACS gateway: a DICOM Storage SCP a hospital PACS or modality pushes to.

Runs on the provider's side (installed with the ``provider`` extra). Each instance received
by C-STORE is written durably into a spool (temporary file, fsync, rename) before Success
is answered, so a crash never loses an acknowledged image. A study is complete when no
instance arrived for ``complete_after`` seconds; then every file is de-identified
(``ingestion.deidentify``) into the dataset folder and its spool copy deleted only once the
output is durable. De-identification is deterministic under the gateway's secret, so a crash
mid-way leaves a state the next start finishes with identical output. The dataset folder gets
a ``dataset.yaml`` declaring the profile and options; ``enclave gateway send`` splits and
sends it the way ``enclave share send`` does.

Bad input is answered with DIMSE statuses, never by dropping the association:
a calling AE title not on the allow-list is rejected at association (A-ASSOCIATE-RJ), a SOP
class not offered is refused presentation, a dataset that does not decode is 0xC210, one
whose SOP class disagrees with its context 0xA900, a full disk 0xA700.

The event log (``state/events.jsonl``) records counts and keyed names only, never a value
read from a header. Spool and output paths are keyed names, never UIDs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ingestion.deidentify import Deidentifier
from ingestion.validators.deid_options import DeidOption, option_codes

log = logging.getLogger("enclave.gateway")

SECRET_NAME = "gateway.key"
EVENTS_NAME = "events.jsonl"
#: DIMSE statuses the handler answers with (PS3.4 Annex B, PS3.7 C.4.2).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
PROCESSING_FAILURE = 0x0110
DEFAULT_RESERVE_BYTES = 512 * 1024 * 1024


class GatewayEvent(StrEnum):
    """What the event log records."""

    STARTED = "started"
    RECEIVED = "received"
    REFUSED = "refused"
    DEIDENTIFIED = "deidentified"
    QUEUED = "queued"
    SENT = "sent"
    SEND_FAILED = "send-failed"
    ALREADY_SENT = "already-sent"


@dataclass
class GatewayConfig:
    """Where the gateway keeps things and what it accepts."""

    ae_title: str
    port: int
    out_dir: Path
    allowed_calling: frozenset[str]
    dataset: str = "pacs-import"
    host: str = "0.0.0.0"
    options: frozenset[DeidOption] = frozenset()
    no_burned_in_modalities: frozenset[str] = frozenset()
    complete_after: float = 30.0
    reserve_bytes: int = DEFAULT_RESERVE_BYTES
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    title: str = "Studies received from the PACS"
    license: str = "provider-agreement"
    #: Queue each completed study for ``ingestion.gateway_send`` (``serve --send-to``).
    queue_sends: bool = False

    @property
    def state_dir(self) -> Path:
        return self.out_dir / ".gateway"

    @property
    def spool(self) -> Path:
        return self.state_dir / "spool"

    @property
    def dataset_dir(self) -> Path:
        return self.out_dir / self.dataset

    @property
    def outbox(self) -> Path:
        """Completed studies waiting to be sent: ``<study key>.json`` lists their files."""
        return self.state_dir / "outbox"

    @property
    def sent_ledger(self) -> Path:
        """One file per study key ever sent, holding its transfer id: never sent twice."""
        return self.state_dir / "sent"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, *, sync: bool = True) -> None:
    """``path`` holds ``data`` or is untouched, across a crash (temp file, fsync, rename).

    With ``sync=False`` the file is complete or absent but not yet flushed: the caller
    flushes a batch at once with ``sync_paths`` before relying on it."""
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync:
        _fsync_dir(path.parent)


def sync_paths(paths: Iterable[Path], root: Path) -> None:
    """Flush files written with ``sync=False`` and every folder from theirs up to ``root``
    (new folders' entries too), each folder once."""
    folders: set[Path] = set()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        folder = path.parent
        while folder not in folders and folder != root.parent and folder != folder.parent:
            folders.add(folder)
            folder = folder.parent
    for folder in sorted(folders):
        _fsync_dir(folder)


def load_secret(state_dir: Path) -> bytes:
    """The gateway's keyed-pseudonym secret, created on first use (0600)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / SECRET_NAME
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
            fh.flush()
            os.fsync(fh.fileno())
    return path.read_bytes()


@dataclass
class EventLog:
    """Append-only JSON lines: counts and keyed names, never header values."""

    path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, event: GatewayEvent, **facts: Any) -> None:
        line = json.dumps({"at": round(time.time(), 3), "event": event.value, **facts})
        with self._lock, open(self.path, "a") as fh:
            fh.write(line + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


class Gateway:
    """The spool, the de-identification of complete studies and the dataset folder."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        config.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.deidentifier = Deidentifier(
            load_secret(config.state_dir),
            config.options,
            frozenset(m.upper() for m in config.no_burned_in_modalities),
        )
        self.events = EventLog(config.state_dir / EVENTS_NAME)
        self.received = 0
        self.deidentified = 0
        self._stop = threading.Event()
        self._process_lock = threading.Lock()
        self.on_progress: Callable[[str], None] | None = None

    # --- receiving ---------------------------------------------------------------------

    def store(self, encoded: bytes, study_uid: str, sop_uid: str) -> int:
        """Spool one instance (PS3.10 file bytes); returns the DIMSE status to answer."""
        spool = self.config.spool
        try:
            if shutil.disk_usage(spool).free - len(encoded) < self.config.reserve_bytes:
                self.events.record(GatewayEvent.REFUSED, reason="disk-full", count=1)
                return OUT_OF_RESOURCES
            study_dir = spool / self.deidentifier.name_of("study", study_uid)
            study_dir.mkdir(exist_ok=True, mode=0o700)
            write_durably(study_dir / (self.deidentifier.name_of("sop", sop_uid) + ".dcm"), encoded)
            os.utime(study_dir)  # the study's last arrival: completeness is measured from it
        except OSError as exc:
            reason = "disk-full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "io"
            self.events.record(GatewayEvent.REFUSED, reason=reason, count=1)
            log.error("spooling an instance failed: %s", exc.strerror or exc)
            return OUT_OF_RESOURCES if reason == "disk-full" else PROCESSING_FAILURE
        self.received += 1
        self.events.record(GatewayEvent.RECEIVED, count=1)
        return SUCCESS

    # --- de-identifying ----------------------------------------------------------------

    def pending_studies(self, *, older_than: float | None = None) -> list[Path]:
        """Spooled studies; with ``older_than``, only those idle that long (complete)."""
        now = time.time()
        out = []
        for study in sorted(self.config.spool.iterdir()):
            if not study.is_dir():
                continue
            if older_than is not None and now - study.stat().st_mtime < older_than:
                continue
            out.append(study)
        return out

    def process_ready(self, *, all_studies: bool = False) -> int:
        """De-identify every complete study (every study with ``all_studies``); returns
        the number of instances written."""
        with self._process_lock:
            written = 0
            ready = self.pending_studies(
                older_than=None if all_studies else self.config.complete_after
            )
            for study in ready:
                written += self._process_study(study)
            return written

    def _process_study(self, study: Path) -> int:
        from pydicom import dcmread

        out_root = self.config.dataset_dir / "dicom"
        written = 0
        modalities: set[str] = set()
        outputs: list[Path] = []
        done: list[Path] = []
        for src in sorted(study.glob("*.dcm")):
            try:
                ds = dcmread(src)
                self.deidentifier.apply(ds)
            except Exception as exc:  # a spooled file that no longer decodes: kept aside
                bad = self.config.state_dir / "unprocessable"
                bad.mkdir(exist_ok=True, mode=0o700)
                os.replace(src, bad / src.name)
                self.events.record(
                    GatewayEvent.REFUSED, reason="unprocessable", error=type(exc).__name__, count=1
                )
                continue
            target = (
                out_root
                / str(ds.PatientID)
                / self.deidentifier.name_of("study-dir", str(ds.StudyInstanceUID))
                / self.deidentifier.name_of("series-dir", str(ds.SeriesInstanceUID))
                / (self.deidentifier.name_of("file", str(ds.SOPInstanceUID)) + ".dcm")
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            from io import BytesIO

            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            write_durably(target, buf.getvalue(), sync=False)  # flushed as one batch below
            outputs.append(target)
            done.append(src)
            modalities.add(str(ds.get("Modality", "") or "OT"))
            written += 1
        sync_paths(
            outputs, self.config.out_dir
        )  # one flush for the study instead of one per instance
        if written:
            self.write_manifest(modalities)
            if self.config.queue_sends:
                self._queue(study.name, outputs)
        for src in done:  # every output (and the outbox entry) is durable: the PHI copy goes
            src.unlink()
        with contextlib.suppress(OSError):
            study.rmdir()
        if written:
            self.deidentified += written
            self.events.record(
                GatewayEvent.DEIDENTIFIED,
                study=study.name,
                count=written,
                options=option_codes(self.config.options),
            )
            if self.on_progress is not None:
                self.on_progress(f"study {study.name[:8]}: {written} instance(s) de-identified")
        return written

    def _queue(self, study_key: str, outputs: list[Path]) -> None:
        """Put a completed study in the outbox, unless its key was sent before."""
        if (self.config.sent_ledger / study_key).exists():
            self.events.record(GatewayEvent.ALREADY_SENT, study=study_key, count=len(outputs))
            return
        self.config.outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = self.config.outbox / f"{study_key}.json"
        files = {p.relative_to(self.config.dataset_dir).as_posix() for p in outputs}
        if entry.exists():  # more instances of a study not sent yet: one entry
            files.update(json.loads(entry.read_text())["files"])
        write_durably(entry, json.dumps({"study": study_key, "files": sorted(files)}).encode())
        self.events.record(GatewayEvent.QUEUED, study=study_key, count=len(files))

    def write_manifest(self, modalities: Iterable[str] = ()) -> Path:
        """``dataset.yaml`` for the dataset folder, declaring profile and options."""
        import yaml

        path = self.config.dataset_dir / "dataset.yaml"
        existing: dict[str, Any] = {}
        if path.exists():
            existing = yaml.safe_load(path.read_text()) or {}
        # The manifest names one modality: the first one received (a curator may edit it).
        modality = str(existing.get("modality") or next(iter(sorted(modalities)), "OT"))
        data = {
            "name": self.config.dataset,
            "title": existing.get("title", self.config.title),
            "description": existing.get(
                "description",
                "Studies pushed by the provider's PACS to the Enclave gateway, de-identified "
                "on the provider's side.",
            ),
            "license": existing.get("license", self.config.license),
            "modality": modality,
            "deidentification": {
                "method": "Enclave gateway (ingestion.deidentify)",
                "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
                "options": option_codes(self.config.options),
            },
            "subject_id": "PatientID",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, yaml.safe_dump(data, sort_keys=False).encode())
        return path

    # --- the service -------------------------------------------------------------------

    def processor(self, interval: float = 1.0) -> threading.Thread:
        """A thread that de-identifies complete studies until ``stop``."""

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.process_ready()
                except OSError as exc:
                    log.error("de-identifying failed (retried): %s", exc.strerror or exc)

        thread = threading.Thread(target=run, name="gateway-deidentify", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def _handlers(gateway: Gateway) -> list[Any]:
    from pynetdicom import evt

    def on_echo(event: Any) -> int:
        return SUCCESS

    def on_store(event: Any) -> int:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sop_class = str(ds.SOPClassUID)
            study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        except Exception:
            gateway.events.record(GatewayEvent.REFUSED, reason="cannot-decode", count=1)
            return CANNOT_UNDERSTAND
        if sop_class != str(event.context.abstract_syntax) or not study_uid or not sop_uid:
            gateway.events.record(GatewayEvent.REFUSED, reason="sop-class-mismatch", count=1)
            return DATASET_DOES_NOT_MATCH
        return gateway.store(event.encoded_dataset(), study_uid, sop_uid)

    return [(evt.EVT_C_ECHO, on_echo), (evt.EVT_C_STORE, on_store)]


def supported_storage_classes() -> list[str]:
    """Storage SOP classes whose IOD the enclave's validator knows (the ones offered)."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    from ingestion.deidentify import _iod_types

    known, _ = _iod_types()
    return sorted(uid for uid in _STORAGE_CLASSES.values() if uid in known)


def make_ae(config: GatewayConfig) -> Any:
    """The pynetdicom AE: storage classes, C-ECHO, called and calling AE titles enforced."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=config.ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = sorted(config.allowed_calling)
    ae.maximum_associations = 8
    for uid in supported_storage_classes():
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


def tls_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """Server TLS with required client certificates, when a certificate is configured."""
    if config.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key) if config.tls_key else None)
    if config.tls_ca is not None:
        ctx.load_verify_locations(str(config.tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def serve(config: GatewayConfig, gateway: Gateway | None = None, *, block: bool = True) -> Any:
    """Start the SCP (and the de-identifying thread); returns the pynetdicom server when
    ``block`` is False. Studies left in the spool by a crash are finished first."""
    gateway = gateway or Gateway(config)
    gateway.events.record(
        GatewayEvent.STARTED, port=config.port, options=option_codes(config.options)
    )
    gateway.process_ready(all_studies=False)
    gateway.processor()
    ae = make_ae(config)
    server = ae.start_server(
        (config.host, config.port),
        block=block,
        evt_handlers=_handlers(gateway),
        ssl_context=tls_context(config),
    )
    return server
