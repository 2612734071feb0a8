"""The provider's upload client: send share j to receiver j, resuming where it stopped.

Each upload begins with the share's prologue (header + signed tail, see
``ingestion.shares``), which the receiver answers with the bytes it already holds; the data
then goes in chunks, each a ``PUT`` at the offset the receiver expects. A dropped connection
or a killed client costs at most the chunk in flight: running the same command again asks
each receiver where it stands and sends only the rest. Sending a finished transfer again
does nothing.

Only ``httpx`` and ``secret_sharing`` are needed: this runs on the provider's machine.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from secret_sharing.errors import EnclaveError
from secret_sharing.fileio import drop_cached

# Each PUT is fsynced by the receiver before it answers: 64 MiB bodies keep that to one
# flush per 64 MiB (the disk, not the network, limits a receiver) and still cost little to
# resend after a dropped connection, which keeps whatever had arrived anyway.
CHUNK_BYTES = 64 * 1024 * 1024
PIECE_BYTES = 1024 * 1024

# (share index, bytes on the receiver, share length)
Progress = Callable[[int, int, int], None]


class UploadError(EnclaveError):
    """A receiver refused a share, or could not be reached."""


@dataclass
class ShareUpload:
    path: Path
    index: int
    url: str
    length: int
    resumed_from: int = 0
    sent_bytes: int = 0
    outcome: str = "pending"  # sent | already-complete | already-<transfer state> | not-needed


@dataclass
class SendResult:
    transfer_id: str
    uploads: list[ShareUpload] = field(default_factory=list)
    #: The transfer's state when the client stopped (only known when it waited for it).
    state: str | None = None


#: ``on-demand``: the spares go only when the enclave needs them (see ``send_shares``);
#: ``all``: every share is sent at once.
SPARE_POLICIES = ("on-demand", "all")
#: States in which the first k shares have been verified segment by segment (every GCM tag
#: checked): no spare can matter any more.
VERIFIED_STATES = ("validating", "cataloged", "quarantined")
#: How long an on-demand client waits for the enclave to start on its transfer before it
#: sends the spares anyway (a busy enclave works through transfers one at a time).
PICKUP_TIMEOUT_S = 60.0
#: The longest pause between two looks at a transfer being reconstructed.
MAX_POLL_S = 2.0
#: Called while waiting for the enclave: (transfer state,).
Waiting = Callable[[str], None]


@functools.cache
def _tls() -> ssl.SSLContext:
    """One verifying TLS context for every connection (loading CA roots is too slow to repeat)."""
    return ssl.create_default_context()


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = resp.text
    return str(detail)


def discover_receivers(urls: list[str], *, timeout: float = 10) -> dict[int, str]:
    """Share index -> receiver URL. A coordinator URL stands for all its receivers."""
    found: dict[int, str] = {}
    pending = [u.rstrip("/") for u in urls]
    seen = set()
    while pending:
        url = pending.pop(0)
        if url in seen:
            continue
        seen.add(url)
        try:
            resp = httpx.get(f"{url}/v1/info", timeout=timeout, verify=_tls())
            resp.raise_for_status()
            info = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise UploadError(f"cannot reach ingestion endpoint {url}: {exc}") from None
        if info.get("role") == "coordinator":
            pending.extend(u.rstrip("/") for u in info.get("receivers", []))
        elif info.get("role") == "receiver":
            index = int(info["index"])
            if index in found and found[index] != url:
                raise UploadError(f"{found[index]} and {url} both take share {index}")
            found[index] = url
        else:
            raise UploadError(f"{url} is not an Enclave ingestion endpoint")
    return found


class _Uploader:
    def __init__(
        self,
        upload: ShareUpload,
        token: str,
        transfer_id: str,
        *,
        chunk_bytes: int,
        retries: int,
        progress: Progress | None,
        timeout: float,
    ) -> None:
        self.u = upload
        self.token = token
        self.tid = transfer_id
        self.chunk_bytes = chunk_bytes
        self.retries = retries
        self.progress = progress
        self.client = httpx.Client(
            base_url=upload.url,
            headers=_auth(token),
            timeout=httpx.Timeout(timeout, connect=10),
            verify=_tls(),
        )
        self.where = f"/v1/transfers/{transfer_id}/shares/{upload.index}"

    def _fail(self, resp: httpx.Response) -> UploadError:
        return UploadError(
            f"{self.u.path.name}: receiver {self.u.url} refused share {self.u.index} "
            f"(HTTP {resp.status_code}): {_detail(resp)}"
        )

    def begin(self) -> int | None:
        """Send the prologue; the receiver's offset, or None if nothing is left to send."""
        from ingestion.shares import read_prologue

        resp = self.client.post(self.where, content=read_prologue(self.u.path))
        if resp.status_code == 409 and "state" in resp.json():
            self.u.outcome = f"already-{resp.json()['state']}"
            return None
        if resp.status_code != 200:
            raise self._fail(resp)
        body = resp.json()
        if body.get("complete"):
            self.u.outcome = "already-complete"
            self.u.resumed_from = self.u.length
            self._report(self.u.length)
            return None
        return int(body["received"])

    def _report(self, done: int) -> None:
        if self.progress:
            self.progress(self.u.index, done, self.u.length)

    def _body(self, offset: int, size: int) -> Iterator[bytes]:
        with open(self.u.path, "rb") as fh:
            fh.seek(offset)
            left = size
            done = offset
            while left:
                piece = fh.read(min(PIECE_BYTES, left))
                if not piece:
                    raise UploadError(f"{self.u.path} shrank while it was being sent")
                left -= len(piece)
                yield piece
                done += len(piece)
                self.u.sent_bytes += len(piece)
                self._report(done)
            # Sent: the receiver has it now (a resend after a failure reads it again).
            drop_cached(fh.fileno(), offset, size)

    def offset(self) -> int:
        resp = self.client.get(self.where)
        if resp.status_code != 200:
            raise self._fail(resp)
        return int(resp.json()["received"])

    def run(self) -> ShareUpload:
        try:
            received = self.begin()
            if received is None:
                return self.u
            self.u.resumed_from = received
            self._report(received)
            failures = 0
            while received < self.u.length:
                size = min(self.chunk_bytes, self.u.length - received)
                try:
                    resp = self.client.put(
                        self.where,
                        params={"offset": received},
                        content=self._body(received, size),
                        headers={"content-length": str(size)},
                    )
                except httpx.TransportError as exc:
                    failures += 1
                    if failures > self.retries:
                        raise UploadError(
                            f"{self.u.path.name}: upload to {self.u.url} kept failing ({exc}); "
                            "run the same command again to resume"
                        ) from None
                    time.sleep(min(2**failures * 0.2, 5))
                    received = self.offset()
                    continue
                if resp.status_code == 409 and "received" in resp.json():
                    received = int(resp.json()["received"])  # resync with the receiver
                    continue
                if resp.status_code == 409 and "state" in resp.json():
                    self.u.outcome = f"already-{resp.json()['state']}"
                    return self.u
                if resp.status_code != 200:
                    raise self._fail(resp)
                failures = 0
                body = resp.json()
                received = int(body["received"])
                if body.get("complete"):
                    break
            self.u.outcome = "sent"
            return self.u
        finally:
            self.client.close()


def send_shares(
    share_paths: list[Path],
    urls: list[str],
    token: str,
    *,
    progress: Progress | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    retries: int = 5,
    timeout: float = 120,
    parallel: bool = True,
    spares: str = "on-demand",
    pickup_timeout: float = PICKUP_TIMEOUT_S,
    poll_interval: float = 0.5,
    waiting: Waiting | None = None,
) -> SendResult:
    """Send each share to the receiver that takes its index; resume anything partial.

    ``urls`` are receiver URLs (in any order) or the service's URL, which lists them.
    Shares 1..k go first. With ``spares="on-demand"`` (the default) the spares then follow
    only if they are needed: a primary failed to upload, the enclave found a primary
    corrupt (the transfer went back to ``receiving`` with a reason), or the enclave has not
    started on the transfer within ``pickup_timeout`` seconds. The client waits until the
    enclave has checked every segment of the first k (``VERIFIED_STATES``); a provider's
    link then carries the dataset's size once instead of n/k times. ``spares="all"`` sends
    every share at once and returns when they are uploaded.
    """
    if spares not in SPARE_POLICIES:
        raise UploadError(f"unknown spare policy {spares!r} (one of: {', '.join(SPARE_POLICIES)})")
    from secret_sharing import read_share_info

    if not share_paths:
        raise UploadError("no share files given")
    infos = [read_share_info(Path(p)) for p in share_paths]
    tids = {info.transfer_id for info in infos}
    if len(tids) != 1:
        raise UploadError(f"the share files belong to {len(tids)} different transfers; send one")
    indices = [info.index for info in infos]
    if len(set(indices)) != len(indices):
        raise UploadError("two of the share files carry the same share index")
    receivers = discover_receivers(urls)
    uploads = []
    for path, info in zip(share_paths, infos, strict=True):
        if info.index not in receivers:
            raise UploadError(
                f"{path}: no receiver takes share {info.index} (known: {sorted(receivers)})"
            )
        uploads.append(ShareUpload(Path(path), info.index, receivers[info.index], info.file_length))
    result = SendResult(tids.pop(), uploads)

    def one(upload: ShareUpload) -> ShareUpload:
        return _Uploader(
            upload,
            token,
            result.transfer_id,
            chunk_bytes=chunk_bytes,
            retries=retries,
            progress=progress,
            timeout=timeout,
        ).run()

    # The first k shares (by index) go first: any k rebuild the dataset. The spares follow at
    # once ("all"), or only if the enclave turns out to need them ("on-demand"); a primary
    # that fails to upload sends them at once either way, and they are then the ones that
    # count.
    k = infos[0].k
    primaries = [u for u in uploads if u.index <= k]
    spare_uploads = [u for u in uploads if u.index > k]
    errors: list[Exception] = []

    def send_wave(wave: list[ShareUpload]) -> None:
        if parallel and len(wave) > 1:
            with ThreadPoolExecutor(max_workers=len(wave)) as pool:
                futures = [pool.submit(one, u) for u in wave]
                for fut in futures:
                    try:
                        fut.result()
                    except Exception as exc:  # report every share's problem, not the first
                        errors.append(exc)
        else:
            for u in wave:
                try:
                    one(u)
                except Exception as exc:
                    errors.append(exc)

    send_wave(primaries)
    if spare_uploads:
        if spares == "all" or errors or len(primaries) < k:
            send_wave(spare_uploads)  # a primary is missing: the spares stand in for it now
        else:
            needed, result.state = _await_verification(
                result.transfer_id, urls, token, pickup_timeout, poll_interval, waiting
            )
            if needed:
                send_wave(spare_uploads)
            else:
                for u in spare_uploads:
                    u.outcome = "not-needed"
    if errors:
        if len(errors) == 1 or not all(isinstance(e, UploadError) for e in errors):
            raise errors[0]
        raise UploadError("; ".join(str(e) for e in errors))
    return result


def _await_verification(
    transfer_id: str,
    urls: list[str],
    token: str,
    pickup_timeout: float,
    poll_interval: float,
    waiting: Waiting | None,
) -> tuple[bool, str | None]:
    """Watch the transfer after its first k shares are in: (spares needed, last state).

    Needed when the enclave sends the transfer back to ``receiving`` with a reason (a
    corrupt share), has not started on it within ``pickup_timeout``, or cannot be asked
    (the service is down while its receivers are not); not needed once it
    reaches a verified state or ``failed`` (an internal error that spares cannot fix; the
    status names it).
    """
    deadline = time.monotonic() + pickup_timeout
    started = False
    interval, last = poll_interval, None
    while True:
        try:
            info = transfer_status(transfer_id, urls, token, shares=False)
        except UploadError:
            return True, None  # the state cannot be seen: the spares are the safe choice
        state = str(info.get("state"))
        if waiting is not None:
            waiting(state)
        if state in VERIFIED_STATES or state == "failed":
            return False, state
        if state == "receiving" and (info.get("reason") or started):
            return True, state  # the enclave asked for more shares
        if state == "reconstructing":
            started = True
        elif time.monotonic() > deadline:
            return True, state  # the enclave is busy elsewhere: send them rather than wait
        # A long reconstruction is watched less often (up to every MAX_POLL_S): the service
        # that answers shares the machine with the worker doing it.
        interval = poll_interval if state != last else min(interval * 1.5, MAX_POLL_S)
        last = state
        time.sleep(interval if state == "reconstructing" else poll_interval)


def transfer_status(
    transfer_id: str, urls: list[str], token: str, *, timeout: float = 10, shares: bool = True
) -> dict:
    """Where a transfer stands, merged from every URL given (service or receivers);
    ``shares=False`` skips each share's progress (the service then asks no receiver)."""
    merged: dict[str, Any] = {}
    by_index: dict[int, dict] = {}
    for url in [u.rstrip("/") for u in urls]:
        try:
            resp = httpx.get(
                f"{url}/v1/transfers/{transfer_id}",
                params=None if shares else {"shares": "false"},
                headers=_auth(token),
                timeout=timeout,
                verify=_tls(),
            )
        except httpx.HTTPError as exc:
            raise UploadError(f"cannot reach ingestion endpoint {url}: {exc}") from None
        if resp.status_code == 404:
            continue
        if resp.status_code != 200:
            raise UploadError(
                f"{url} refused the status request (HTTP {resp.status_code}): {_detail(resp)}"
            )
        body = resp.json()
        for share in body.pop("shares", []):
            if "index" in share:
                by_index[int(share["index"])] = share
        merged.update({k: v for k, v in body.items() if v is not None})
    if not merged:
        raise UploadError(f"no endpoint knows transfer {transfer_id}")
    merged["shares"] = [by_index[i] for i in sorted(by_index)]
    return merged
