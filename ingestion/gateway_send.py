"""Sending the gateway's completed studies to the enclave, each exactly once.

``enclave gateway serve --send-to URL`` queues every study it finishes de-identifying in
``OUT/.gateway/outbox/<study key>.json`` (written before the spool copy goes; see
``ingestion.gateway``). The sender takes each entry through three durable steps:

1. stage: ``outbox/<key>/stage/<dataset>/`` holds hard links to the study's de-identified
   files and a copy of ``dataset.yaml``;
2. split: ``outbox/<key>/shares/share-1..n`` (``secret_sharing.split_dataset`` writes them
   under temporary names; an incomplete set is split again);
3. send: ``ingestion.client.send_shares`` uploads them, resuming anything partial; then
   ``sent/<key>`` records the transfer id and the entry goes.

A crash anywhere leaves a state the next start completes: before the shares exist it splits
again; once they exist it sends the same shares (same transfer id: the enclave's receivers
answer "already complete", so nothing is stored twice); the ledger ``sent/<key>`` keyed by the
study's keyed name means a study is never sent twice, even if the PACS pushes it again.
Failures are retried with exponential backoff. The event log gets counts, keyed names and
transfer ids, never a header value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingestion.gateway import Gateway, GatewayEvent, write_durably

log = logging.getLogger("enclave.gateway")

MANIFEST_NAME = "dataset.yaml"


@dataclass(frozen=True)
class SendTarget:
    """Where and how completed studies go."""

    urls: tuple[str, ...]
    token: str
    signing_key: Path
    k: int = 2
    n: int = 3
    #: Backoff after a failed send: ``base * 2**failures`` seconds, at most ``cap``.
    backoff_base: float = 2.0
    backoff_cap: float = 300.0


@dataclass(frozen=True)
class Sent:
    study: str
    transfer_id: str
    files: int


class Sender:
    """Sends the outbox of one gateway; ``send_pending`` is safe to call at any time."""

    def __init__(
        self,
        gateway: Gateway,
        target: SendTarget,
        *,
        send: Callable[..., object] | None = None,
    ) -> None:
        if not gateway.config.queue_sends:
            raise ValueError("the gateway does not queue studies (set queue_sends)")
        self.gateway = gateway
        self.config = gateway.config
        self.target = target
        self._send = send
        self.sent = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.on_progress: Callable[[str], None] | None = None

    # --- one study ---------------------------------------------------------------------

    def pending(self) -> list[str]:
        """Study keys waiting in the outbox, oldest name first."""
        if not self.config.outbox.exists():
            return []
        return sorted(p.stem for p in self.config.outbox.glob("*.json"))

    def send_pending(self) -> list[Sent]:
        """Send every queued study; raises the first failure (the rest wait for a retry)."""
        with self._lock:
            return [self._send_study(key) for key in self.pending()]

    def _send_study(self, key: str) -> Sent:
        entry = self.config.outbox / f"{key}.json"
        work = self.config.outbox / key
        ledger = self.config.sent_ledger / key
        files: list[str] = json.loads(entry.read_text())["files"]
        if ledger.exists():  # sent, then a crash before the entry went
            self._finish(entry, work)
            return Sent(key, ledger.read_text().strip(), len(files))
        shares = self._shares(key, files, work)
        from ingestion.client import send_shares

        send = self._send or send_shares
        result = send(shares, list(self.target.urls), self.target.token)
        transfer_id = str(getattr(result, "transfer_id", ""))
        self.config.sent_ledger.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_durably(ledger, transfer_id.encode())
        self.gateway.events.record(
            GatewayEvent.SENT, study=key, count=len(files), transfer=transfer_id
        )
        self._finish(entry, work)
        self.sent += 1
        if self.on_progress is not None:
            self.on_progress(f"study {key[:8]}: {len(files)} file(s) sent as {transfer_id}")
        return Sent(key, transfer_id, len(files))

    def _shares(self, key: str, files: list[str], work: Path) -> list[Path]:
        """The study's complete share set, staged and split if not already there."""
        from secret_sharing import load_signing_key, split_dataset
        from secret_sharing.split import share_file_name

        shares_dir = work / "shares"
        expected = [shares_dir / share_file_name(i) for i in range(1, self.target.n + 1)]
        if all(p.exists() for p in expected):
            return expected
        stage = work / "stage" / self.config.dataset
        shutil.rmtree(work, ignore_errors=True)  # a split or stage cut short: start over
        stage.mkdir(parents=True, mode=0o700)
        root = self.config.dataset_dir
        shutil.copyfile(root / MANIFEST_NAME, stage / MANIFEST_NAME)
        for rel in files:
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(root / rel, target)
            except OSError:
                shutil.copyfile(root / rel, target)
        result = split_dataset(
            stage,
            shares_dir,
            k=self.target.k,
            n=self.target.n,
            signing_key=load_signing_key(self.target.signing_key),
        )
        shutil.rmtree(work / "stage", ignore_errors=True)
        return list(result.share_paths)

    def _finish(self, entry: Path, work: Path) -> None:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()

    # --- the service -------------------------------------------------------------------

    def backoff(self) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row."""
        if self.failures == 0:
            return 0.0
        return min(self.target.backoff_cap, self.target.backoff_base * 2 ** (self.failures - 1))

    def run_once(self) -> int:
        """One attempt at the whole outbox; returns studies sent, records a failure."""
        try:
            done = self.send_pending()
        except Exception as exc:  # retried: the outbox keeps the study
            self.failures += 1
            self.gateway.events.record(
                GatewayEvent.SEND_FAILED, error=type(exc).__name__, failures=self.failures
            )
            log.warning("sending failed (%s); retrying in %.0f s", exc, self.backoff())
            return 0
        self.failures = 0
        return len(done)

    def thread(self, interval: float = 1.0) -> threading.Thread:
        """Sends queued studies until ``stop``, backing off after failures."""

        def run() -> None:
            while not self._stop.wait(max(interval, self.backoff())):
                if self.pending():
                    self.run_once()

        thread = threading.Thread(target=run, name="gateway-send", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
