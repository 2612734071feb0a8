"""The provider's PACS gateway: a DICOM Storage SCP a hospital PACS or modality pushes to.

Runs on the provider's side (installed with the ``provider`` extra). Each instance received
by C-STORE is appended, as the bytes the peer sent with their file meta and never decoded
beyond the study and instance UIDs, to its association's record file for the study
(``ingestion.gateway_spool``) and flushed (fdatasync) before Success is answered, so a crash
never loses an acknowledged image. The associations run on pynetdicom reactors that wait on
their socket instead of polling (``ingestion.gateway_reactor``). A study is complete when no
instance arrived for ``complete_after`` seconds; then every instance is de-identified
(``ingestion.deidentify``; large studies by a pool of worker processes, off the receiving
threads) into the dataset folder and its spool records deleted only once the output is
durable. De-identification is deterministic under the gateway's secret, so a crash
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
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ingestion.deidentify import Deidentifier
from ingestion.diskio import fsync_dir
from ingestion.gateway_spool import SUFFIX, Record, RecordFile, read_records
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
#: Studies with at least this many instances are de-identified by the worker processes.
POOL_MIN_INSTANCES = 16
#: Largest PDU the gateway accepts: large PDUs mean fewer reactor turns an image.
MAX_PDU_BYTES = 1 << 20


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
    #: Worker processes de-identifying large studies; None: one a CPU (at most 4); 0: none,
    #: every study is de-identified in the gateway's own de-identifying thread.
    deidentify_workers: int | None = None

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
        fsync_dir(path.parent)


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
        fsync_dir(folder)


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
        self._secret = load_secret(config.state_dir)
        self.deidentifier = Deidentifier(
            self._secret,
            config.options,
            frozenset(m.upper() for m in config.no_burned_in_modalities),
        )
        self.events = EventLog(config.state_dir / EVENTS_NAME)
        self.received = 0
        self.deidentified = 0
        self._stop = threading.Event()
        self._process_lock = threading.Lock()
        #: Open record files by (study key, receiving thread): one per association and study.
        self._writers: dict[tuple[str, int], RecordFile] = {}
        self._writers_lock = threading.Lock()
        self._pool: Executor | None = None
        self._pool_lock = threading.Lock()
        self.on_progress: Callable[[str], None] | None = None

    # --- receiving ---------------------------------------------------------------------

    def store(self, encoded: bytes | Sequence[bytes], study_uid: str, sop_uid: str) -> int:
        """Spool one instance (PS3.10 file bytes, or their parts in order); returns the DIMSE
        status to answer. Success means the record is flushed to disk."""
        parts = [encoded] if isinstance(encoded, bytes | bytearray) else list(encoded)
        size = sum(len(p) for p in parts)
        spool = self.config.spool
        try:
            if shutil.disk_usage(spool).free - size < self.config.reserve_bytes:
                self.events.record(GatewayEvent.REFUSED, reason="disk-full", count=1)
                return OUT_OF_RESOURCES
            study = self.deidentifier.name_of("study", study_uid)
            while True:
                writer = self._writer(study)
                with writer.lock:
                    if writer.sealed:  # the study is being de-identified: a new file
                        continue
                    writer.append(parts)
                    break
        except OSError as exc:
            reason = "disk-full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "io"
            self.events.record(GatewayEvent.REFUSED, reason=reason, count=1)
            log.error("spooling an instance failed: %s", exc.strerror or exc)
            return OUT_OF_RESOURCES if reason == "disk-full" else PROCESSING_FAILURE
        self.received += 1
        self.events.record(GatewayEvent.RECEIVED, count=1)
        return SUCCESS

    def _writer(self, study: str) -> RecordFile:
        key = (study, threading.get_ident())
        with self._writers_lock:
            writer = self._writers.get(key)
            if writer is None or writer.sealed:
                folder = self.config.spool / study
                folder.mkdir(exist_ok=True, mode=0o700)
                name = f"{time.time_ns():x}-{secrets.token_hex(4)}{SUFFIX}"
                writer = self._writers[key] = RecordFile(folder / name)
            return writer

    def _seal(self, study: str) -> None:
        """Close every record file of ``study``: later instances go to new files."""
        with self._writers_lock:
            keys = [k for k in self._writers if k[0] == study]
            writers = [self._writers.pop(k) for k in keys]
        for writer in writers:
            with writer.lock:
                writer.close()

    # --- de-identifying ----------------------------------------------------------------

    def pending_studies(self, *, older_than: float | None = None) -> list[Path]:
        """Spooled studies; with ``older_than``, only those idle that long (complete)."""
        now = time.time()
        out = []
        for study in sorted(self.config.spool.iterdir()):
            if not study.is_dir():
                continue
            if older_than is not None:
                last = max([study.stat().st_mtime, *(p.stat().st_mtime for p in study.iterdir())])
                if now - last < older_than:
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

    def _records(self, study: Path) -> tuple[list[Path], list[Record]]:
        """The study's spool files and their intact records (legacy ``*.dcm`` files, one
        instance each, from a gateway before record files, count as one record)."""
        files = sorted(study.glob("*" + SUFFIX)) + sorted(study.glob("*.dcm"))
        records: list[Record] = []
        for path in files:
            if path.suffix == SUFFIX:
                records.extend(read_records(path))
            else:
                records.append(Record(path, 0, path.stat().st_size, 0))
        return files, records

    def _process_study(self, study: Path) -> int:
        self._seal(study.name)
        files, records = self._records(study)
        out_root = self.config.dataset_dir / "dicom"
        pool = self._workers() if len(records) >= POOL_MIN_INSTANCES else None
        if pool is not None:
            results = list(pool.map(_deidentify_record, records, [out_root] * len(records)))
        else:
            results = [_deidentify_record(r, out_root, self.deidentifier) for r in records]
        outputs: list[Path] = []
        modalities: set[str] = set()
        for record, (target, modality, error) in zip(records, results, strict=True):
            if target is None:  # a spooled instance that does not decode: kept aside
                bad = self.config.state_dir / "unprocessable"
                bad.mkdir(exist_ok=True, mode=0o700)
                write_durably(bad / f"{record.path.stem}-{record.index}.dcm", record.read())
                self.events.record(
                    GatewayEvent.REFUSED, reason="unprocessable", error=error, count=1
                )
                continue
            if target not in outputs:  # the same instance sent twice: one output file
                outputs.append(target)
            modalities.add(modality)
        written = len(outputs)
        sync_paths(outputs, self.config.out_dir)  # one flush for the study, not one an image
        if written:
            self.write_manifest(modalities)
            if self.config.queue_sends:
                self._queue(study.name, outputs)
        for src in files:  # every output (and the outbox entry) is durable: the PHI copy goes
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

    def _workers(self) -> Executor | None:
        """The de-identifying worker processes, started on first use (None: configured off)."""
        count = self.config.deidentify_workers
        if count is None:
            count = min(4, os.cpu_count() or 1)
        if count < 1:
            return None
        with self._pool_lock:
            if self._pool is None:
                import multiprocessing

                self._pool = ProcessPoolExecutor(
                    max_workers=count,
                    # forkserver: workers never inherit the receiving threads' locks.
                    mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_init_worker,
                    initargs=(
                        self._secret,
                        self.config.options,
                        self.deidentifier.no_burned_in_modalities,
                    ),
                )
            return self._pool

    def start_workers(self, *, wait: bool = False) -> None:
        """Start the worker processes now (in the background unless ``wait``), not on the
        first study."""
        pool = self._workers()
        if pool is not None:
            started = [pool.submit(_warm) for _ in range(min(4, os.cpu_count() or 1))]
            if wait:
                for future in started:
                    future.result()

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
        with self._writers_lock:
            writers = list(self._writers.values())
            self._writers.clear()
        for writer in writers:
            with writer.lock:
                writer.close()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


#: The de-identifier of a worker process (set by ``_init_worker``).
_WORKER_DEIDENTIFIER: Deidentifier | None = None


def _init_worker(
    secret: bytes, options: frozenset[DeidOption], no_burned_in: frozenset[str]
) -> None:
    global _WORKER_DEIDENTIFIER
    _WORKER_DEIDENTIFIER = Deidentifier(secret, options, no_burned_in)
    import pydicom  # noqa: F401 - imported once, before the first study


def _warm() -> None:
    """Nothing: makes the pool start its processes."""


def _deidentify_record(
    record: Record, out_root: Path, deidentifier: Deidentifier | None = None
) -> tuple[Path | None, str, str]:
    """De-identify one spooled instance into ``out_root`` (written, not yet flushed);
    returns (output path, modality, "") or (None, "", error type) when it does not decode."""
    from io import BytesIO

    from pydicom import dcmread

    deidentifier = deidentifier or _WORKER_DEIDENTIFIER
    if deidentifier is None:
        raise RuntimeError("the de-identifying worker was not initialised")
    try:
        ds = dcmread(BytesIO(record.read()))
        deidentifier.apply(ds)
        target = (
            out_root
            / str(ds.PatientID)
            / deidentifier.name_of("study-dir", str(ds.StudyInstanceUID))
            / deidentifier.name_of("series-dir", str(ds.SeriesInstanceUID))
            / (deidentifier.name_of("file", str(ds.SOPInstanceUID)) + ".dcm")
        )
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
    except Exception as exc:
        return None, "", type(exc).__name__
    target.parent.mkdir(parents=True, exist_ok=True)
    write_durably(target, buf.getvalue(), sync=False)  # flushed with the study's batch
    return target, str(ds.get("Modality", "") or "OT"), ""


#: Transfer syntaxes offered: those whose pixel data the enclave's validator decodes with
#: pydicom and its plugins (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls).
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K RPCL Lossless
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
_DEFLATED = "1.2.840.10008.1.2.1.99"
_STUDY_INSTANCE_UID = 0x0020000D


def _identify(event: Any) -> tuple[str, str, str]:
    """SOP class, study and instance UIDs of a C-STORE's dataset, reading only the elements
    up to StudyInstanceUID (the pixel data is never decoded on the receiving path)."""
    from pydicom.filereader import read_dataset

    syntax = event.context.transfer_syntax
    if syntax == _DEFLATED:  # compressed as a whole: pynetdicom inflates and decodes it
        ds = event.dataset
    else:
        stream = event.request.DataSet
        stream.seek(0)
        ds = read_dataset(
            stream,
            is_implicit_VR=syntax.is_implicit_VR,
            is_little_endian=syntax.is_little_endian,
            stop_when=lambda tag, vr, length: tag > _STUDY_INSTANCE_UID,
        )
        stream.seek(0)
    return str(ds.SOPClassUID), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


def _ui(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\0" if len(data) % 2 else data


def file_meta_bytes(sop_class: str, sop_uid: str, syntax: str) -> bytes:
    """Preamble, prefix and file meta group (PS3.10 7.1, explicit VR little endian) for a
    received instance: what ``event.encoded_dataset()`` prepends, without building and
    encoding a pydicom dataset for every image."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    name = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    name += b" " if len(name) % 2 else b""
    body = struct.pack("<HH2sHI", 2, 0x0001, b"OB", 0, 2) + b"\0\1"
    for element, vr, value in (
        (0x0002, b"UI", _ui(sop_class)),
        (0x0003, b"UI", _ui(sop_uid)),
        (0x0010, b"UI", _ui(syntax)),
        (0x0012, b"UI", _ui(PYNETDICOM_IMPLEMENTATION_UID)),
        (0x0013, b"SH", name),
    ):
        body += struct.pack("<HH2sH", 2, element, vr, len(value)) + value
    group_length = struct.pack("<HH2sHI", 2, 0x0000, b"UL", 4, len(body))
    return b"\0" * 128 + b"DICM" + group_length + body


def _handlers(gateway: Gateway) -> list[Any]:
    from pynetdicom import evt

    def on_echo(event: Any) -> int:
        return SUCCESS

    def on_store(event: Any) -> int:
        try:
            sop_class, study_uid, sop_uid = _identify(event)
        except Exception:
            gateway.events.record(GatewayEvent.REFUSED, reason="cannot-decode", count=1)
            return CANNOT_UNDERSTAND
        if sop_class != str(event.context.abstract_syntax) or not study_uid or not sop_uid:
            gateway.events.record(GatewayEvent.REFUSED, reason="sop-class-mismatch", count=1)
            return DATASET_DOES_NOT_MATCH
        # The bytes the peer sent, behind their file meta: never re-encoded here.
        meta = file_meta_bytes(sop_class, sop_uid, str(event.context.transfer_syntax))
        return gateway.store([meta, event.request.DataSet.getbuffer()], study_uid, sop_uid)

    return [(evt.EVT_C_ECHO, on_echo), (evt.EVT_C_STORE, on_store)]


def supported_storage_classes() -> list[str]:
    """Storage SOP classes whose IOD the enclave's validator knows (the ones offered)."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    from ingestion.deidentify import _iod_types

    known, _ = _iod_types()
    return sorted(uid for uid in _STORAGE_CLASSES.values() if uid in known)


def make_ae(config: GatewayConfig) -> Any:
    """The pynetdicom AE: storage classes, C-ECHO, called and calling AE titles enforced."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=config.ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = sorted(config.allowed_calling)
    ae.maximum_associations = 8
    ae.maximum_pdu_size = MAX_PDU_BYTES
    for uid in supported_storage_classes():
        ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
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
    gateway.start_workers()
    from ingestion.gateway_reactor import start_server

    ae = make_ae(config)
    server = start_server(
        ae,
        (config.host, config.port),
        evt_handlers=_handlers(gateway),
        ssl_context=tls_context(config),
    )
    if block:
        try:
            while not gateway._stop.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
        return None
    return server
