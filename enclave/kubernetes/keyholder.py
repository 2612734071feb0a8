"""The key holder: unsealed by custodians over HTTP, it hands granted versions to user pods.

On a cluster no person types mnemonics into a hub's standard input, and a Kubernetes Secret is
data at rest, so the master key is never in one. The key holder starts sealed; each custodian
posts their own SLIP-39 mnemonic to ``POST /unseal`` (``enclave k8s unseal``); when the
threshold is reached the mnemonics are combined, checked against the state directory's check
value (``enclave.custody``) and dropped, and the key lives only in this process. With
``--then CMD`` the key holder starts CMD (the ingestion service) with the mnemonics on its
standard input, exactly as ``enclave up`` hands them to the hub, so one unseal serves both.

User pods get their datasets through it:

1. the spawner asks ``POST /tickets`` (with the hub's key holder token) for a user, their groups
   and the session kind; the grant decision is ``enclave.workspace.grants.session_versions``,
   the one the local spawner makes (the catalog's ``visible_versions``, filtered by mode);
2. the answer is a single-use ticket that expires after ``ticket_ttl`` seconds, and the list of
   versions; the ticket goes into the pod's loader init container only;
3. the loader (``enclave.kubernetes.loader``) calls ``GET /deliveries/TICKET`` and gets one tar
   stream of every granted version, decrypted here segment by segment from the encrypted store
   (``ingestion.store``), which it unpacks into an in-memory ``emptyDir``. Nothing decrypted is
   written to a disk on either side.

``GET /healthz`` says whether the key holder is sealed (and fails when the child command died).
"""

from __future__ import annotations

import hmac
import json
import secrets
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from catalog.models import AccessMode
from enclave.errors import EnclaveError
from enclave.workspace.grants import GrantSource, session_versions
from enclave.workspace.profiles import NoWorkspace, profile_for

#: The member a delivery starts with: the versions it holds, for the loader's grants file.
DELIVERY_INDEX = ".enclave-delivery.json"
TICKET_TTL_SECONDS = 600


class KeyholderError(EnclaveError):
    """The key holder refuses a request (the message says why)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class KeyUnwrapper(Protocol):
    """The unsealed master key (``enclave.custody.MasterKey``)."""

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, blob: bytes, context: bytes) -> bytes: ...


@dataclass
class Ticket:
    user: str
    pod: str
    versions: list[Any]
    expires: float


@dataclass
class Unsealing:
    """Mnemonics given so far (kept only until the threshold is reached)."""

    given: list[str] = field(default_factory=list)


def tar_member(name: str, size: int, chunks: Iterable[bytes], mode: int = 0o444) -> Iterator[bytes]:
    """One regular file of a tar stream, written as it is read (PAX headers, no mtime)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        yield bytes(chunk)
    if sent != size:
        raise KeyholderError(f"{name}: {sent} bytes read, {size} expected", 500)
    if size % tarfile.BLOCKSIZE:
        yield b"\0" * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)


def _json_member(name: str, payload: Any) -> Iterator[bytes]:
    data = (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()
    return tar_member(name, len(data), [data])


def version_entry(v: Any) -> dict[str, Any]:
    expires = getattr(v, "expires_at", None)
    return {
        "name": v.name,
        "version": int(v.version),
        "mode": str(getattr(v, "mode", AccessMode.DESKTOP)),
        "expires_at": expires.isoformat() if expires is not None else None,
    }


class Keyholder:
    """Unseal state, tickets and deliveries; the web app (:func:`create_app`) is a thin shell."""

    def __init__(
        self,
        state_dir: Path,
        grants: GrantSource,
        *,
        hub_token: str,
        ticket_ttl: float = TICKET_TTL_SECONDS,
        then: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(hub_token) < 32:
            raise KeyholderError("the key holder token must be at least 32 characters")
        self.state_dir = Path(state_dir)
        self.grants = grants
        self._hub_token = hub_token
        self.ticket_ttl = ticket_ttl
        self.then = then
        self.clock = clock
        self.child: subprocess.Popen[bytes] | None = None
        self._key: KeyUnwrapper | None = None
        self._unsealing = Unsealing()
        self._tickets: dict[str, Ticket] = {}
        self._lock = threading.Lock()

    # ---- unsealing

    def threshold(self) -> int:
        from enclave.custody import CustodyRecord

        return CustodyRecord.load(self.state_dir).threshold

    @property
    def sealed(self) -> bool:
        return self._key is None

    def status(self) -> dict[str, Any]:
        child = None
        if self.child is not None:
            code = self.child.poll()
            child = "running" if code is None else f"exited {code}"
        with self._lock:
            given = len(self._unsealing.given)
        return {
            "sealed": self.sealed,
            "given": given,
            "threshold": self.threshold(),
            "child": child,
        }

    def add_mnemonic(self, mnemonic: str) -> dict[str, Any]:
        """Take one custodian's mnemonic; unseal when the threshold is reached."""
        import shamir_mnemonic
        from shamir_mnemonic import MnemonicError

        from enclave.custody import CustodyError, CustodyRecord, unseal

        record = CustodyRecord.load(self.state_dir)
        words = " ".join(str(mnemonic).lower().split())
        if not self.sealed:
            raise KeyholderError("the key holder is already unsealed", 409)
        try:
            share = shamir_mnemonic.Share.from_mnemonic(words)
        except MnemonicError as exc:
            raise KeyholderError(f"the mnemonic is not valid: {exc}") from None
        if share.identifier != record.identifier:
            raise KeyholderError("the mnemonic belongs to another key set, not this enclave's")
        with self._lock:
            if words not in self._unsealing.given:
                self._unsealing.given.append(words)
            given = list(self._unsealing.given)
            if len(given) < record.threshold:
                return {"sealed": True, "given": len(given), "threshold": record.threshold}
            self._unsealing = Unsealing()
        try:
            key = unseal(self.state_dir, given)
        except CustodyError as exc:
            raise KeyholderError(f"{exc}; start again with every custodian") from None
        self._key = key
        if self.then:
            self._start_child(given)
        return {"sealed": False, "given": len(given), "threshold": record.threshold}

    def _start_child(self, mnemonics: list[str]) -> None:
        proc = subprocess.Popen(self.then or [], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(("\n".join(mnemonics) + "\n").encode())
        proc.stdin.close()
        self.child = proc

    def stop_child(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(10)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()

    # ---- tickets and deliveries

    def check_hub(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, self._hub_token):
            raise KeyholderError("a ticket needs the hub's key holder token", 403)

    def issue(self, user: str, groups: list[str], kind: str, pod: str) -> dict[str, Any]:
        """A single-use ticket for the versions ``user`` may have in a ``kind`` session."""
        try:
            session = AccessMode(kind)
        except ValueError:
            raise KeyholderError(f"unknown session kind {kind!r}") from None
        try:
            profile_for(groups)
        except NoWorkspace as exc:
            raise KeyholderError(str(exc), 403) from None
        versions = session_versions(self.grants, user, groups, session)
        if versions and self.sealed:
            raise KeyholderError(
                f"{user} is granted {len(versions)} dataset version(s) but the enclave is "
                "sealed: custodians unseal it with `enclave k8s unseal`",
                503,
            )
        ticket = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._tickets = {t: v for t, v in self._tickets.items() if v.expires > now}
            self._tickets[ticket] = Ticket(user, pod, versions, now + self.ticket_ttl)
        return {
            "ticket": ticket,
            "expires_in": self.ticket_ttl,
            "versions": [version_entry(v) for v in versions],
        }

    def redeem(self, ticket: str) -> Ticket:
        """Take a ticket (it works once, and only before it expires)."""
        with self._lock:
            found = self._tickets.pop(ticket, None)
        if found is None or found.expires <= self.clock():
            raise KeyholderError("the ticket is unknown, used or expired", 404)
        return found

    def delivery(self, ticket: Ticket) -> Iterator[bytes]:
        """The tar stream of a ticket's versions: an index, then NAME/VERSION/... decrypted."""
        from enclave.data.mounts import VERSION_INFO_FILE, version_info
        from ingestion.store import open_version

        if ticket.versions and self._key is None:
            raise KeyholderError("the enclave was sealed again before the delivery", 503)
        opened = [(v, open_version(v, self._key)) for v in ticket.versions] if self._key else []
        yield from _json_member(
            DELIVERY_INDEX, {"versions": [version_entry(v) for v in ticket.versions]}
        )
        for v, stored in opened:
            base = f"{v.name}/{int(v.version)}"
            shared = dict(version_info(v))
            shared.pop("expires_at", None)  # a user's expiry goes in the grants file
            yield from _json_member(f"{base}/{VERSION_INFO_FILE}", shared)
            for path, entry in sorted(stored.files.items()):
                yield from tar_member(f"{base}/{path}", entry.size, stored.iter_bytes(path))
        yield b"\0" * (2 * tarfile.BLOCKSIZE)


def create_app(keyholder: Keyholder) -> Any:
    """The key holder's HTTP API (Starlette)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def failure(exc: KeyholderError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def healthz(request: Request) -> Response:
        status = keyholder.status()
        ok = status["child"] in (None, "running")
        return JSONResponse(status, status_code=200 if ok else 503)

    async def unseal(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return failure(KeyholderError('the body must be JSON: {"mnemonic": "..."}'))
        if not isinstance(body, dict) or not isinstance(body.get("mnemonic"), str):
            return failure(KeyholderError('the body must be JSON: {"mnemonic": "..."}'))
        try:
            return JSONResponse(keyholder.add_mnemonic(body["mnemonic"]))
        except KeyholderError as exc:
            return failure(exc)

    async def tickets(request: Request) -> Response:
        try:
            keyholder.check_hub(request.headers.get("authorization"))
            body = await request.json()
            if not isinstance(body, dict):
                raise KeyholderError("the body must be a JSON object")
            user, groups = body.get("user"), body.get("groups", [])
            if not isinstance(user, str) or not user:
                raise KeyholderError("user: a hub user name is needed")
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                raise KeyholderError("groups: a list of group names is needed")
            issued = keyholder.issue(
                user, groups, str(body.get("kind", "notebook")), str(body.get("pod", ""))
            )
        except KeyholderError as exc:
            return failure(exc)
        except ValueError:
            return failure(KeyholderError("the body must be JSON"))
        return JSONResponse(issued, status_code=201)

    async def deliveries(request: Request) -> Response:
        try:
            ticket = keyholder.redeem(request.path_params["ticket"])
            stream = keyholder.delivery(ticket)
            first = next(stream)  # opens every version: a wrong key fails here, as a 4xx/5xx
        except KeyholderError as exc:
            return failure(exc)
        except EnclaveError as exc:
            return failure(KeyholderError(str(exc), 500))

        def rest() -> Iterator[bytes]:
            yield first
            yield from stream

        return StreamingResponse(rest(), media_type="application/x-tar")

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/unseal", unseal, methods=["POST"]),
            Route("/tickets", tickets, methods=["POST"]),
            Route("/deliveries/{ticket}", deliveries),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m enclave.kubernetes.keyholder --state-dir DIR [--then CMD...]``."""
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--database-url", default=os.environ.get("ENCLAVE_DB_URL"))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8472)
    parser.add_argument("--token-file", type=Path, help="the hub's key holder token (a Secret)")
    parser.add_argument("--then", nargs=argparse.REMAINDER, default=None)
    args = parser.parse_args(argv)
    try:
        import uvicorn

        from catalog.db import resolve_database_url
        from catalog.service import open_catalog

        token = (
            args.token_file.read_text().strip()
            if args.token_file
            else os.environ.get("ENCLAVE_KEYHOLDER_TOKEN", "")
        )
        catalog = open_catalog(resolve_database_url(args.state_dir, args.database_url))
        keyholder = Keyholder(args.state_dir, catalog, hub_token=token, then=args.then or None)
        keyholder.threshold()  # no custody record: say so now, not at the first custodian
    except (EnclaveError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    try:
        uvicorn.run(create_app(keyholder), host=args.host, port=args.port, log_level="warning")
    finally:
        keyholder.stop_child()


if __name__ == "__main__":
    main()
