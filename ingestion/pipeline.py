"""Checking and encrypting a dataset's files while reconstruction is still unpacking the rest.

Reconstruction (decrypt + unpack), the per-file DICOM checks and the store's encryption used
to run one after the other, leaving one of two cores idle for most of a transfer. Here
``combine_shares`` announces each file as soon as it is unpacked (every byte already passed
its GCM check): the file goes to the store's encryption threads and, when it is a DICOM
candidate, to a process pool that runs the per-file checks of
``validators.dicom.validate_dicom_files``. Before the dataset is renamed into place,
``drain`` waits for both; ``validate_dataset`` then reuses the per-file outcomes and runs
only the checks across files, the tables and radiomics.

Nothing here decides anything: validation still produces the whole report and the worker
still commits or quarantines. A failed pool merely leaves those files for validation to read
again; a failed encryption fails the transfer, as it always did.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from ingestion.manifest import MANIFEST_NAME, DatasetManifest
from ingestion.store import VersionWriter
from ingestion.validate import DERIVED_DIR, PrecheckedDicom, is_dicom_candidate

log = logging.getLogger("enclave.ingest.pipeline")

#: Files per pool task: large enough to keep inter-process traffic small, small enough that
#: the pool starts while the first series is still being unpacked.
CHUNK_FILES = 16
#: Plaintext waiting for the encryption threads, held as views of decrypted segments.
ENCRYPT_BACKLOG_BYTES = 256 * 1024 * 1024
#: AES-GCM and the pack writes release the GIL: two threads keep up with reconstruction.
ENCRYPT_THREADS = 2
DEFAULT_SUBJECT_ATTRIBUTE = DatasetManifest.subject_id  # the manifest's own default


def manifest_subject_attribute(path: Path) -> str:
    """The manifest's ``subject_id`` (which DICOM attribute names the subject), or the
    default when the file cannot be read: validation reports that problem, not this."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return DEFAULT_SUBJECT_ATTRIBUTE
    value = data.get("subject_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else DEFAULT_SUBJECT_ATTRIBUTE


class ByteBudget:
    """At most ``limit`` bytes outstanding; ``acquire`` blocks until enough are released.
    One request larger than the whole budget waits for an empty budget, then takes it all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = threading.Condition()

    def acquire(self, size: int) -> int:
        size = min(size, self.limit)
        with self._changed:
            self._changed.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
        return size

    def release(self, size: int) -> None:
        with self._changed:
            self.used -= size
            self._changed.notify_all()


class StreamingIngest:
    """Hears of each unpacked file (``file_ready``), encrypts it into ``writer`` and
    pre-checks DICOM files in a process pool; ``drain`` before the paths change."""

    def __init__(
        self,
        writer: VersionWriter,
        *,
        workers: int | None = None,
        allowed_options: Iterable[str] | None = (),
    ) -> None:
        """``allowed_options``: PS3.16 codes of the de-identification options the sending
        provider may use (``DeidPolicy``); the pre-checks apply them as validation will."""
        self.writer = writer
        from ingestion.validators.deid_options import DeidPolicy
        from ingestion.validators.dicom import pool_size

        self.policy = DeidPolicy.of((), allowed_options)

        self.workers = workers or pool_size()
        self.subject_attribute = DEFAULT_SUBJECT_ATTRIBUTE
        self._encrypt = ThreadPoolExecutor(ENCRYPT_THREADS, thread_name_prefix="ingest-encrypt")
        self._backlog = ByteBudget(ENCRYPT_BACKLOG_BYTES)
        self._encrypting: list[Future] = []
        self._pool: ProcessPoolExecutor | None = None
        self._checks: list[tuple[str, Future]] = []  # (subject attribute used, future)
        self._pending: list[str] = []
        self._pending_root = ""
        self._outcomes: dict[str, tuple[str, Any]] = {}

    # --- fed by combine_shares --------------------------------------------------------

    def file_ready(self, path: Path, rel: str, data: Sequence[memoryview] | None = None) -> None:
        """Called by ``combine_shares`` for each file, in archive order, on its thread; ``data``
        is the file's bytes still in memory (None for a large file: read back from ``path``)."""
        if PurePosixPath(rel).parts[0] != DERIVED_DIR:  # derived/ is the enclave's to write
            if data is None:
                task = self._encrypt.submit(self.writer.add_file, path, rel, hashed=False)
            else:
                # Bounded: reconstruction waits here while the encryptor is behind, so the
                # plaintext held in memory stays within ENCRYPT_BACKLOG_BYTES.
                held = self._backlog.acquire(sum(len(piece) for piece in data))
                task = self._encrypt.submit(self.writer.add_data, rel, data, hashed=False)
                task.add_done_callback(lambda _: self._backlog.release(held))
            self._encrypting.append(task)
        if rel == MANIFEST_NAME:
            self.subject_attribute = manifest_subject_attribute(path)
        elif is_dicom_candidate(rel):
            root = str(path)[: -len(rel)].rstrip("/")
            if self._pending and root != self._pending_root:
                self._submit_pending()
            self._pending_root = root
            self._pending.append(rel)
            if len(self._pending) >= CHUNK_FILES:
                self._submit_pending()

    def _submit_pending(self) -> None:
        if not self._pending:
            return
        from ingestion.validators.dicom import pool_context, precheck_files, prepare_pool_process

        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=pool_context(), initializer=prepare_pool_process
            )
        rels, self._pending = self._pending, []
        future = self._pool.submit(
            precheck_files, self._pending_root, rels, self.subject_attribute, self.policy
        )
        self._checks.append((self.subject_attribute, future))

    def drain(self) -> None:
        """Wait until every announced file is encrypted and pre-checked: ``combine_shares``
        calls this before renaming the dataset into place. Encryption errors propagate."""
        self._submit_pending()
        for future in self._encrypting:
            future.result()
        for attribute, future in self._checks:
            try:
                pairs = future.result()
            except Exception as exc:  # validation reads these files again itself
                log.warning("pre-checking DICOM files failed (%s); validation will redo them", exc)
                continue
            for rel, outcome in pairs:
                self._outcomes[rel] = (attribute, outcome)

    # --- handed to validation ---------------------------------------------------------

    def prechecked(self) -> PrecheckedDicom:
        """Outcomes computed with the manifest's subject attribute (files unpacked before
        ``dataset.yaml`` used the default and are checked again if it differs)."""
        attribute = self.subject_attribute
        return PrecheckedDicom(
            attribute,
            {rel: outcome for rel, (used, outcome) in self._outcomes.items() if used == attribute},
            policy=self.policy,
        )

    def close(self) -> None:
        """Stop the helpers; pending work is cancelled (the worker aborts the version)."""
        for future in self._encrypting:
            future.cancel()
        self._encrypt.shutdown(wait=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> StreamingIngest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
