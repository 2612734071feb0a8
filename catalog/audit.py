"""The tamper-evident audit log: signed Merkle checkpoints over ``audit_events``, checked.

Every catalog change already appends one ``audit_events`` row in its own transaction
(``Catalog._audit``), and the database refuses UPDATE and DELETE on that table. This module
makes changes by someone who gets past that (the table's owner drops the triggers) evident:

* each entry is a leaf of an RFC 6962 Merkle tree (``catalog.merkle``), in id order; the
  leaf is ``leaf_data``: a canonical JSON array of the entry's id, time, actor, action,
  target and details;
* ``checkpoint`` signs the tree head over every entry so far with the enclave's Ed25519
  audit key and stores it in ``audit_checkpoints``, with the leaf hashes it added and the
  tree's frontier (so the next checkpoint is computed from the new entries only);
* ``verify`` checks every checkpoint's signature and root, then recomputes every entry's
  leaf and names the first one that was changed, removed, inserted or reordered; entries
  after the newest checkpoint are only counted, as nothing has sealed them yet;
* ``prove`` (``prove_many``) gives an entry's inclusion proof against a checkpoint, which
  ``verify_proof`` checks with nothing but the verify key; ``prove_consistency`` shows a later
  checkpoint extends an earlier one; ``export`` writes entries as JSON lines for a SIEM;
* ``restrict_application_role`` sets up a PostgreSQL role that may append to the log but
  never change it, whatever happens to the triggers.

See docs/audit.md for what this does and does not protect against.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Engine, func, insert, select, text
from sqlalchemy.engine import make_url

from catalog import merkle
from catalog.db import READ_ONLY
from catalog.errors import CatalogError, InvalidInput, NotFound
from catalog.models import AuditCheckpoint, AuditEvent, utcnow
from catalog.service import Catalog
from secret_sharing.errors import OutputExistsError
from secret_sharing.keys import (
    SIGNING_KEY_NAME,
    VERIFY_KEY_NAME,
    key_fingerprint,
    load_signing_key,
    load_verify_key,
    write_keypair,
)

LEAF_FORMAT = "enclave-audit-v1"
CHECKPOINT_FORMAT = "enclave-audit-checkpoint-v1"
AUDIT_DIR = "audit"
# Rows fetched per round trip while streaming the log.
_BATCH = 5000
# How far around a mismatch ``verify`` looks for renumbered entries (an insertion or a removal
# hidden by shifting the ids after it).
_RENUMBER_WINDOW = 8

_EVENTS = AuditEvent.__table__
_CHECKPOINTS = AuditCheckpoint.__table__
_ENTRY_SQL = "SELECT id, at, actor, action, target, details FROM audit_events"
# psycopg's own JSON loading costs more than the rest of reading a row: take the text.
_PG_ENTRY_SQL = "SELECT id, at, actor, action, target, details::text FROM audit_events"
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
# JSONEncoder.encode builds its C encoder anew on every call, which costs more than encoding a
# small dict; a prebuilt one writes the same text.
_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_c_encode = (
    _C_ENCODER(None, _ENCODER.default, encode_basestring_ascii, None, ":", ",", True, False, True)
    if _C_ENCODER is not None
    else None
)


def _canonical(value: Any) -> str:
    if _c_encode is None:
        return _ENCODER.encode(value)
    return "".join(_c_encode(value, 0))


_string = encode_basestring_ascii  # one JSON string, as _canonical writes it
_loads = json.loads
_cursor_names = itertools.count()
_SQLITE_AT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}").fullmatch


class AuditError(CatalogError):
    """The audit log or its checkpoints cannot be used as asked (no key, nothing covered)."""


class AuditVerificationError(AuditError):
    """The audit log does not match its signed checkpoints: someone changed history."""

    exit_code = 3


class AuditProofError(AuditError):
    """An inclusion proof does not show its entry in a genuinely signed checkpoint."""


# -- the leaf encoding ---------------------------------------------------------------------


def iso_utc(at: datetime | str) -> str:
    """``at`` as ISO 8601 UTC with microseconds and a ``Z``: ``2026-12-06T10:11:12.000123Z``.

    Naive values (and SQLite's stored text) are UTC already, as the catalog stores them."""
    if isinstance(at, str):
        if _SQLITE_AT(at):  # how SQLAlchemy stores timestamps in SQLite: rewrite, don't parse
            return f"{at[:10]}T{at[11:]}Z"
        at = datetime.fromisoformat(at)
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds") + "Z"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no spaces, non-ASCII as \\u escapes: one text per value."""
    return _canonical(value)


def leaf_data(
    entry_id: int,
    at: datetime | str,
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any] | str | None,
) -> bytes:
    """The bytes an audit entry contributes to the tree: the canonical JSON array
    ``["enclave-audit-v1", id, at, actor, action, target, details]`` in ASCII.

    ``at`` is ``iso_utc``; ``details`` may be given as stored JSON text."""
    if isinstance(details, str):
        details = _loads(details)
    if details is None:
        details = {}
    if type(entry_id) is int and type(actor) is type(action) is type(target) is str:
        # The same bytes as canonical_json of the list, written out for speed.
        return (
            f'["{LEAF_FORMAT}",{entry_id},"{iso_utc(at)}",{_string(actor)},{_string(action)},'
            f"{_string(target)},{_canonical(details)}]"
        ).encode("ascii")
    return _canonical(
        [LEAF_FORMAT, int(entry_id), iso_utc(at), actor, action, target, details]
    ).encode("ascii")


def entry_leaf_hash(
    entry_id: int,
    at: datetime | str,
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any] | str | None,
) -> bytes:
    """RFC 6962 leaf hash of one audit entry."""
    return merkle.leaf_hash(leaf_data(entry_id, at, actor, action, target, details))


def _row_leaf(row: Sequence[Any]) -> bytes:
    """The leaf hash of a raw row; AuditError for a row the catalog could not have written
    (details that are not JSON, a time that is not one), which only tampering leaves."""
    try:
        return merkle.leaf_hash(leaf_data(row[0], row[1], row[2], row[3], row[4], row[5]))
    except (ValueError, TypeError) as exc:
        raise AuditVerificationError(
            f"audit entry {row[0]} is malformed ({exc}); run `enclave audit verify`"
        ) from None


def _try_leaf(entry_id: Any, *content: Any) -> bytes | None:
    """``entry_leaf_hash``, or None for a malformed row (which then matches nothing)."""
    try:
        return merkle.leaf_hash(leaf_data(entry_id, *content))
    except (ValueError, TypeError):
        return None


def _when(at: Any) -> str:
    try:
        return iso_utc(at)
    except (ValueError, TypeError):
        return repr(at)


def checkpoint_body(
    tree_size: int,
    root_hash: bytes,
    created_at: datetime,
    key_fingerprint: str,
    last_entry_id: int,
) -> bytes:
    """What a checkpoint's Ed25519 signature covers: canonical JSON of its tree size, root
    hash (hex), creation time (``iso_utc``), key fingerprint and the id of its last entry."""
    return _canonical(
        {
            "format": CHECKPOINT_FORMAT,
            "tree_size": tree_size,
            "root_hash": root_hash.hex(),
            "created_at": iso_utc(created_at),
            "key_fingerprint": key_fingerprint,
            "last_entry_id": last_entry_id,
        }
    ).encode("ascii")


# -- keys --------------------------------------------------------------------------------


def key_paths(state_dir: Path) -> tuple[Path, Path]:
    """``STATE_DIR/audit/signing.key`` and ``STATE_DIR/audit/verify.key``."""
    folder = Path(state_dir).expanduser() / AUDIT_DIR
    return folder / SIGNING_KEY_NAME, folder / VERIFY_KEY_NAME


def load_or_create_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The enclave's audit signing key, created (0600, with its verify.key) on first use.

    Refuses a key file that others may read or that belongs to another user."""
    signing_path, _ = key_paths(state_dir)
    if not signing_path.exists():
        if not Path(state_dir).expanduser().is_dir():
            raise AuditError(f"state directory {state_dir} does not exist")
        signing_path.parent.mkdir(mode=0o755, exist_ok=True)
        try:
            write_keypair(signing_path.parent)
        except OutputExistsError:
            pass  # made by a concurrent first use, or a verify.key alone: check below
    info = signing_path.lstat() if signing_path.exists() else None
    if info is None:
        raise AuditError(
            f"audit signing key {signing_path} is missing but {signing_path.parent} has a "
            "verify.key: move the stray verify.key away or restore the signing key"
        )
    if not stat.S_ISREG(info.st_mode):
        raise AuditError(f"audit signing key {signing_path} is not a regular file")
    if info.st_mode & 0o077:
        raise AuditError(
            f"audit signing key {signing_path} is readable by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): chmod 600 it"
        )
    if info.st_uid != os.geteuid():
        raise AuditError(
            f"audit signing key {signing_path} belongs to uid {info.st_uid}, not to this "
            f"user (uid {os.geteuid()}): checkpoints are made by the key's owner"
        )
    return load_signing_key(signing_path)


def load_audit_verify_key(state_dir: Path) -> Ed25519PublicKey:
    """The verify key next to the signing key (``STATE_DIR/audit/verify.key``)."""
    return load_verify_key(key_paths(state_dir)[1])


# -- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointView:
    """A signed tree head, as stored (without its leaf hashes)."""

    id: int
    tree_size: int
    last_entry_id: int
    root_hash: bytes
    created_at: datetime
    key_fingerprint: str
    signature: bytes

    def body(self) -> bytes:
        return checkpoint_body(
            self.tree_size,
            self.root_hash,
            self.created_at,
            self.key_fingerprint,
            self.last_entry_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tree_size": self.tree_size,
            "last_entry_id": self.last_entry_id,
            "root_hash": self.root_hash.hex(),
            "created_at": iso_utc(self.created_at),
            "key_fingerprint": self.key_fingerprint,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointView:
        """The checkpoint ``to_dict`` wrote; raises AuditProofError for anything else."""
        try:
            return cls(
                id=int(data["id"]),
                tree_size=int(data["tree_size"]),
                last_entry_id=int(data["last_entry_id"]),
                root_hash=bytes.fromhex(data["root_hash"]),
                created_at=datetime.fromisoformat(str(data["created_at"]).replace("Z", "+00:00")),
                key_fingerprint=str(data["key_fingerprint"]),
                signature=bytes.fromhex(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditProofError(f"malformed checkpoint in proof: {exc}") from None


def _checkpoint_columns() -> list[Any]:
    c = _CHECKPOINTS.c
    return [
        c.id,
        c.tree_size,
        c.last_entry_id,
        c.root_hash,
        c.created_at,
        c.key_fingerprint,
        c.signature,
    ]


def _view(row: Sequence[Any]) -> CheckpointView:
    return CheckpointView(
        int(row[0]), int(row[1]), int(row[2]), bytes(row[3]), row[4], row[5], bytes(row[6])
    )


def list_checkpoints(source: Catalog | Engine) -> list[CheckpointView]:
    """Every checkpoint, oldest first."""
    with _reader(source) as conn:
        rows = conn.execute(
            select(*_checkpoint_columns()).order_by(_CHECKPOINTS.c.tree_size, _CHECKPOINTS.c.id)
        )
        return [_view(r) for r in rows]


def _signature_ok(view: CheckpointView, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(view.signature, view.body())
    except InvalidSignature:
        return False
    return True


def checkpoint(
    catalog: Catalog, signing_key: Ed25519PrivateKey, *, now: datetime | None = None
) -> CheckpointView | None:
    """Sign a checkpoint over every audit entry so far; None when none is new.

    Runs as a catalog write transaction, so no entry commits while the tree is extended.
    Refuses to extend a newest checkpoint that its own key does not verify."""
    fingerprint = key_fingerprint(signing_key.public_key())
    with catalog._tx() as session:
        conn = session.connection()
        last = conn.execute(
            select(*_checkpoint_columns(), _CHECKPOINTS.c.frontier)
            .order_by(_CHECKPOINTS.c.tree_size.desc())
            .limit(1)
        ).first()
        frontier = merkle.Frontier()
        after = 0
        if last is not None:
            previous = _view(last)
            if previous.key_fingerprint == fingerprint and not _signature_ok(
                previous, signing_key.public_key()
            ):
                raise AuditVerificationError(
                    f"audit checkpoint {previous.id} has a bad signature; not extending it "
                    "(run `enclave audit verify`)"
                )
            try:
                frontier = merkle.Frontier.from_bytes(bytes(last[-1]))
            except merkle.MerkleError as exc:
                raise AuditVerificationError(
                    f"audit checkpoint {previous.id} has a damaged frontier: {exc}"
                ) from None
            if frontier.size != previous.tree_size or frontier.root() != previous.root_hash:
                raise AuditVerificationError(
                    f"audit checkpoint {previous.id}'s frontier does not match its root; "
                    "not extending it (run `enclave audit verify`)"
                )
            after = previous.last_entry_id
        leaves: list[bytes] = []
        last_id = after
        for row in _stream(conn, after):
            leaves.append(_row_leaf(row))
            last_id = row[0]
        if not leaves:
            return None
        packed = b"".join(leaves)
        frontier.extend_packed(packed)
        created_at = now or utcnow()
        root_hash = frontier.root()
        body = checkpoint_body(frontier.size, root_hash, created_at, fingerprint, last_id)
        signature = signing_key.sign(body)
        new_id = conn.execute(
            insert(AuditCheckpoint)
            .values(
                tree_size=frontier.size,
                last_entry_id=last_id,
                root_hash=root_hash,
                created_at=created_at,
                key_fingerprint=fingerprint,
                signature=signature,
                leaf_hashes=packed,
                frontier=frontier.to_bytes(),
            )
            .returning(AuditCheckpoint.id)
        ).scalar_one()
        return CheckpointView(
            new_id, frontier.size, last_id, root_hash, created_at, fingerprint, signature
        )


# -- reading the log fast ------------------------------------------------------------------


class _reader:
    """A read-only connection with one snapshot of the database (REPEATABLE READ on
    PostgreSQL, a deferred read transaction on SQLite)."""

    def __init__(self, source: Catalog | Engine) -> None:
        self.engine = source.engine if isinstance(source, Catalog) else source
        self.conn: Connection | None = None

    def __enter__(self) -> Connection:
        options: dict[str, Any] = {READ_ONLY: True}
        if self.engine.dialect.name == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        self.conn = self.engine.connect().execution_options(**options)
        self.conn.begin()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        assert self.conn is not None
        self.conn.rollback()
        self.conn.close()


def _stream(conn: Connection, after_id: int = 0) -> Iterator[Sequence[Any]]:
    """Raw (id, at, actor, action, target, details) tuples with id > ``after_id``, in id
    order, straight from the driver in batches (a server-side cursor on PostgreSQL): no
    per-row ORM objects or type processing. ``at`` and ``details`` are as the driver gives
    them (SQLite: text; PostgreSQL: naive datetime and JSON text), which ``leaf_data`` takes."""
    conn.exec_driver_sql("SELECT 1")  # make sure the transaction (and its snapshot) has begun
    raw = conn.connection.driver_connection
    assert raw is not None
    if conn.dialect.name == "postgresql":
        cursor = raw.cursor(name=f"enclave_audit_{next(_cursor_names)}")
        cursor.execute(f"{_PG_ENTRY_SQL} WHERE id > %s ORDER BY id", (after_id,))
    else:
        cursor = raw.cursor()
        cursor.execute(f"{_ENTRY_SQL} WHERE id > ? ORDER BY id", (after_id,))
    try:
        while batch := cursor.fetchmany(_BATCH):
            yield from batch
    finally:
        cursor.close()


def _count_before(conn: Connection, entry_id: int) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(_EVENTS).where(_EVENTS.c.id < entry_id)
        ).scalar_one()
    )


def _checkpoint_rows(conn: Connection) -> list[Any]:
    return list(
        conn.execute(
            select(
                *_checkpoint_columns(), _CHECKPOINTS.c.leaf_hashes, _CHECKPOINTS.c.frontier
            ).order_by(_CHECKPOINTS.c.tree_size, _CHECKPOINTS.c.id)
        )
    )


# -- verification --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing verification found wrong, the first of its kind."""

    kind: str  # changed, removed, inserted, reordered, checkpoint
    message: str
    entry_id: int | None = None
    action: str | None = None
    at: str | None = None
    leaf_index: int | None = None
    checkpoint_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class VerifyReport:
    """What ``verify`` checked and the first problems it found (none: the log is intact)."""

    entries: int = 0  # read (on failure: up to the first problem)
    checkpointed: int = 0  # entries under the checkpoints that verify
    not_checkpointed: int = 0
    checkpoints: int = 0
    verified_checkpoints: int = 0
    newest_checkpoint: CheckpointView | None = None
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rate(self) -> float:
        """Entries checked per second."""
        return self.entries / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: the verdict and the counts."""
        newest = (
            f", newest #{self.newest_checkpoint.id} at {iso_utc(self.newest_checkpoint.created_at)}"
            if self.newest_checkpoint
            else ""
        )
        if self.ok:
            return (
                f"audit log intact: {self.entries} entries, {self.checkpointed} under "
                f"{self.checkpoints} signed checkpoint(s){newest}, "
                f"{self.not_checkpointed} not yet checkpointed"
            )
        return (
            f"audit log TAMPERED: {self.verified_checkpoints} of {self.checkpoints} "
            f"checkpoint(s) verify{newest}, covering {self.checkpointed} entries; "
            f"{self.entries} entries read"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpointed": self.checkpointed,
            "not_checkpointed": self.not_checkpointed,
            "checkpoints": self.checkpoints,
            "verified_checkpoints": self.verified_checkpoints,
            "newest_checkpoint": self.newest_checkpoint.to_dict()
            if self.newest_checkpoint
            else None,
            "problems": [p.to_dict() for p in self.problems],
            "seconds": round(self.seconds, 3),
        }


def _keys(
    verify_key: Ed25519PublicKey | Iterable[Ed25519PublicKey],
) -> dict[str, Ed25519PublicKey]:
    keys = [verify_key] if isinstance(verify_key, Ed25519PublicKey) else list(verify_key)
    return {key_fingerprint(k): k for k in keys}


def _check_checkpoints(
    rows: list[Any], keys: Mapping[str, Ed25519PublicKey]
) -> tuple[list[tuple[CheckpointView, bytes]], Problem | None]:
    """The checkpoints that verify, oldest first, until the first that does not."""
    good: list[tuple[CheckpointView, bytes]] = []
    frontier = merkle.Frontier()
    last_entry_id = 0
    for row in rows:
        view, leaves, stored_frontier = _view(row), bytes(row[7]), bytes(row[8])
        name = f"audit checkpoint {view.id}"

        def bad(what: str, view: CheckpointView = view, size: int = frontier.size) -> Problem:
            return Problem("checkpoint", what, checkpoint_id=view.id, leaf_index=size)

        key = keys.get(view.key_fingerprint)
        if key is None:
            return good, bad(
                f"{name} is signed by key {view.key_fingerprint[:16]}..., not by the verify "
                f"key ({', '.join(f[:16] + '...' for f in keys)})"
            )
        if not _signature_ok(view, key):
            return good, bad(f"{name} has a bad signature (its signed fields were changed)")
        added = view.tree_size - frontier.size
        if added <= 0 or len(leaves) != added * merkle.HASH_SIZE:
            return good, bad(
                f"{name} claims {view.tree_size} entries after {frontier.size} but holds "
                f"{len(leaves) // merkle.HASH_SIZE} new leaf hashes"
            )
        if view.last_entry_id <= last_entry_id:
            return good, bad(
                f"{name} ends at entry {view.last_entry_id}, not after entry {last_entry_id}"
            )
        extended = frontier.copy()
        extended.extend_packed(leaves)
        if extended.root() != view.root_hash:
            return good, bad(
                f"{name}'s signed root {view.root_hash.hex()[:16]}... does not match its "
                f"leaf hashes ({extended.root().hex()[:16]}...)"
            )
        if stored_frontier != extended.to_bytes():
            return good, bad(f"{name}'s stored frontier does not match its leaf hashes")
        frontier = extended
        last_entry_id = view.last_entry_id
        good.append((view, leaves))
    return good, None


def verify(
    source: Catalog | Engine, verify_key: Ed25519PublicKey | Iterable[Ed25519PublicKey]
) -> VerifyReport:
    """Check the audit log against its signed checkpoints; see the module docstring.

    ``verify_key`` may be several keys (after a key change). Streams the entries once; only
    when one does not match does it read more to say what happened to it."""
    started = time.perf_counter()
    keys = _keys(verify_key)
    report = VerifyReport()
    with _reader(source) as conn:
        rows = _checkpoint_rows(conn)
        report.checkpoints = len(rows)
        good, checkpoint_problem = _check_checkpoints(rows, keys)
        report.verified_checkpoints = len(good)
        if good:
            report.newest_checkpoint = good[-1][0]
        recorded = b"".join(leaves for _, leaves in good)
        size = len(recorded) // merkle.HASH_SIZE
        covered_to = good[-1][0].last_entry_id if good else 0
        report.checkpointed = size

        position = 0
        previous_id = 0
        first_bad: int | None = None
        entries = 0
        hs = merkle.HASH_SIZE
        leaf_hash = merkle.leaf_hash
        for row in _stream(conn):
            entries += 1
            entry_id = row[0]
            if entry_id <= covered_to:
                offset = position * hs
                try:
                    leaf: bytes | None = leaf_hash(leaf_data(*row))
                except (ValueError, TypeError):
                    leaf = None  # malformed: only tampering stores such a row
                if position >= size or leaf != recorded[offset : offset + hs]:
                    first_bad = position
                    break
                position += 1
                previous_id = entry_id
            elif position < size:
                first_bad = position
                break
            else:
                report.not_checkpointed += 1
        if first_bad is None and position < size:
            first_bad = position
        report.entries = entries
        if first_bad is not None:
            report.problems.append(
                _diagnose(conn, first_bad, previous_id, recorded, covered_to, good)
            )
        if checkpoint_problem is not None:
            report.problems.append(checkpoint_problem)
    report.seconds = time.perf_counter() - started
    return report


def _covering(good: list[tuple[CheckpointView, bytes]], leaf_index: int) -> int:
    for view, _ in good:
        if leaf_index < view.tree_size:
            return view.id
    return good[-1][0].id if good else 0


def _diagnose(
    conn: Connection,
    p: int,
    previous_id: int,
    recorded: bytes,
    covered_to: int,
    good: list[tuple[CheckpointView, bytes]],
) -> Problem:
    """Say what happened at leaf ``p``, the first whose row does not match the checkpoints."""
    hs = merkle.HASH_SIZE
    size = len(recorded) // hs
    cp = _covering(good, p)
    after = f"after checkpoint {cp}"
    # The rows from leaf p on, up to a little past the checkpointed range.
    rows: list[Any] = []
    leaves: list[bytes | None] = []
    for row in _stream(conn, previous_id):
        if row[0] > covered_to + _RENUMBER_WINDOW and rows:
            break
        rows.append(tuple(row))
        leaves.append(_try_leaf(*row))

    def removed(note: str = "") -> Problem:
        if not rows:
            where = f"after entry {previous_id}"
        elif previous_id:
            where = f"between entries {previous_id} and {rows[0][0]}"
        else:
            where = f"before entry {rows[0][0]}"
        return Problem(
            "removed",
            f"an audit entry was removed {after}: leaf {p} ({where}) has no row{note}",
            leaf_index=p,
            checkpoint_id=cp,
        )

    if not rows or rows[0][0] > covered_to:
        return removed()
    entry_id, action, at = rows[0][0], rows[0][3], _when(rows[0][1])
    named = f"audit entry {entry_id} ({action}, {at})"

    def entry(kind: str, message: str) -> Problem:
        return Problem(kind, message, entry_id, action, at, p, cp)

    if p >= size:  # inside the checkpointed id range but beyond the checkpointed tree
        return entry(
            "inserted",
            f"{named} was inserted {after}, which ends at entry {covered_to} but does not hold it",
        )
    expected = recorded[p * hs : (p + 1) * hs]
    recorded_at = {recorded[k * hs : (k + 1) * hs]: k for k in range(p, size)}
    later_rows = set(leaves)
    q = recorded_at.get(leaves[0]) if leaves[0] is not None else None
    if q is not None:  # this row was recorded further on: what was recorded here is gone
        if expected in later_rows:
            return entry(
                "reordered",
                f"{named} was moved {after}: it is at leaf {p}, checkpoint "
                f"{_covering(good, q)} recorded it at leaf {q}",
            )
        return removed()
    if expected in later_rows:  # what was recorded here comes later: this row is extra
        return entry("inserted", f"{named} was inserted {after} (at leaf {p})")
    swapped = _swapped_with(conn, rows[0], p, recorded, covered_to)
    if swapped is not None and swapped[2]:
        return entry(
            "reordered",
            f"{named} holds what checkpoint {_covering(good, swapped[1])} recorded for "
            f"entry {swapped[0]} and the other way round: entries were reordered {after}",
        )
    renumbered = _renumbered(rows, expected, recorded_at, p)
    if renumbered is not None:
        kind, old = renumbered
        if kind == "changed":
            return entry(
                "changed",
                f"{named} was renumbered {after} (checkpoint {cp} recorded it as entry {old})",
            )
        if kind == "inserted":
            return entry(
                "inserted", f"{named} was inserted {after}, and the entries after it renumbered"
            )
        return removed(", and the entries after it were renumbered")
    if swapped is not None:
        return entry(
            "reordered",
            f"{named} holds what checkpoint {_covering(good, swapped[1])} recorded for "
            f"entry {swapped[0]}: entries were reordered {after}",
        )
    return entry("changed", f"{named} was changed {after}")


def _renumbered(
    rows: list[Any], expected: bytes, recorded_at: dict[bytes, int], p: int
) -> tuple[str, int] | None:
    """Whether ids were shifted near leaf ``p`` to hide an insertion or a removal:
    ("changed", old id) when the row at p is the recorded entry under a new id,
    ("inserted", j) when the recorded entry is row p + j renumbered, ("removed", k) when
    row p is the entry recorded at leaf k > p renumbered."""
    window = _RENUMBER_WINDOW
    for j, row in enumerate(rows[: window + 1]):
        entry_id = row[0]
        for old in range(max(1, entry_id - window), entry_id + window + 1):
            if old == entry_id:
                continue
            leaf = _try_leaf(old, *row[1:])
            if leaf == expected:
                return ("changed", old) if j == 0 else ("inserted", j)
            if j == 0 and leaf is not None:
                k = recorded_at.get(leaf)
                if k is not None and p < k <= p + window:
                    return ("removed", k)
    return None


def _swapped_with(
    conn: Connection, row: Sequence[Any], p: int, recorded: bytes, covered_to: int
) -> tuple[int, int, bool] | None:
    """The first later checkpointed entry whose recorded leaf is ``row``'s content under that
    entry's id, as (its id, its leaf, whether its own content is what leaf ``p`` recorded
    under ``row``'s id, i.e. the two exchanged contents)."""
    hs = merkle.HASH_SIZE
    size = len(recorded) // hs
    expected = recorded[p * hs : (p + 1) * hs]
    position = p
    for other in _stream(conn, row[0]):
        position += 1
        if other[0] > covered_to or position >= size:
            break
        if _try_leaf(other[0], *row[1:]) == recorded[position * hs : (position + 1) * hs]:
            both = _try_leaf(row[0], *other[1:]) == expected
            return other[0], position, both
    return None


# -- inclusion proofs ----------------------------------------------------------------------


def _entry_dict(row: Sequence[Any]) -> dict[str, Any]:
    details = row[5]
    if isinstance(details, str):
        details = json.loads(details)
    return {
        "id": int(row[0]),
        "at": iso_utc(row[1]),
        "actor": row[2],
        "action": row[3],
        "target": row[4],
        "details": details or {},
    }


def prove(
    source: Catalog | Engine, entry_id: int, *, checkpoint_id: int | None = None
) -> dict[str, Any]:
    """An inclusion proof of audit entry ``entry_id`` against a checkpoint (the newest by
    default), as JSON-ready data: ``{entry, leaf_index, leaf_hash, tree_size, proof,
    checkpoint}``. ``verify_proof`` checks it with only the verify key."""
    return prove_many(source, [entry_id], checkpoint_id=checkpoint_id)[0]


def prove_many(
    source: Catalog | Engine, entry_ids: Sequence[int], *, checkpoint_id: int | None = None
) -> list[dict[str, Any]]:
    """``prove`` for several entries against one checkpoint, in the order given: the tree
    is built once (and kept for the next call until a newer checkpoint is asked for)."""
    with _reader(source) as conn:
        views = [
            _view(r)
            for r in conn.execute(
                select(*_checkpoint_columns()).order_by(_CHECKPOINTS.c.tree_size, _CHECKPOINTS.c.id)
            )
        ]
        if checkpoint_id is not None:
            chosen = [i for i, v in enumerate(views) if v.id == checkpoint_id]
            if not chosen:
                raise NotFound(f"no audit checkpoint {checkpoint_id}")
            upto = chosen[0]
        elif views:
            upto = len(views) - 1
        else:
            raise AuditError(
                f"audit entry {entry_ids[0] if entry_ids else '?'} is not covered by a "
                "checkpoint: there is none yet (run `enclave audit checkpoint`)"
            )
        view = views[upto]
        sql = _PG_ENTRY_SQL if conn.dialect.name == "postgresql" else _ENTRY_SQL
        rows = []
        for entry_id in entry_ids:
            row = conn.execute(text(f"{sql} WHERE id = :id"), {"id": entry_id}).first()
            if row is None:
                raise NotFound(f"no audit entry {entry_id}")
            if view.last_entry_id < entry_id:
                raise AuditError(
                    f"audit entry {entry_id} is not covered by checkpoint {view.id}, which ends "
                    f"at entry {view.last_entry_id} (run `enclave audit checkpoint`)"
                )
            rows.append(row)
        tree = _tree(conn, views[: upto + 1])
        if len(rows) > 3:  # one pass over the ids beats a COUNT per entry
            ids = list(
                conn.execute(
                    select(_EVENTS.c.id)
                    .where(_EVENTS.c.id <= view.last_entry_id)
                    .order_by(_EVENTS.c.id)
                ).scalars()
            )
            indexes = [bisect.bisect_left(ids, row[0]) for row in rows]
        else:
            indexes = [_count_before(conn, row[0]) for row in rows]
    proofs = []
    for row, index in zip(rows, indexes, strict=True):
        leaf = _row_leaf(row)
        if index >= view.tree_size or tree.leaf(index) != leaf:
            raise AuditVerificationError(
                f"audit entry {row[0]} ({row[3]}, {iso_utc(row[1])}) does not match what "
                f"checkpoint {view.id} recorded at leaf {index} (run `enclave audit verify`)"
            )
        proofs.append(
            {
                "entry": _entry_dict(row),
                "leaf_index": index,
                "leaf_hash": leaf.hex(),
                "tree_size": view.tree_size,
                "proof": [h.hex() for h in tree.inclusion_proof(index, view.tree_size)],
                "checkpoint": view.to_dict(),
            }
        )
    return proofs


_tree_cache: tuple[tuple[str, int, bytes], merkle.MerkleTree] | None = None
_tree_lock = threading.Lock()


def _tree(conn: Connection, views: list[CheckpointView]) -> merkle.MerkleTree:
    """The tree of the newest of ``views``, from the leaf hashes of all of them; the last one
    built is kept, as checkpoints never change (and one that did fails its root here)."""
    global _tree_cache
    view = views[-1]
    key = (conn.engine.url.render_as_string(hide_password=True), view.id, view.root_hash)
    with _tree_lock:
        if _tree_cache is not None and _tree_cache[0] == key:
            return _tree_cache[1]
    packed = b"".join(
        bytes(blob)
        for blob in conn.execute(
            select(_CHECKPOINTS.c.leaf_hashes)
            .where(_CHECKPOINTS.c.id.in_([v.id for v in views]))
            .order_by(_CHECKPOINTS.c.tree_size, _CHECKPOINTS.c.id)
        ).scalars()
    )
    tree = merkle.MerkleTree(packed)
    if tree.size != view.tree_size or tree.root() != view.root_hash:
        raise AuditVerificationError(
            f"audit checkpoints up to {view.id} hold {tree.size} leaf hashes whose root is not "
            f"checkpoint {view.id}'s (run `enclave audit verify`)"
        )
    with _tree_lock:
        _tree_cache = (key, tree)
    return tree


def verify_proof(
    proof: Mapping[str, Any], verify_key: Ed25519PublicKey | Iterable[Ed25519PublicKey]
) -> CheckpointView:
    """Check a ``prove`` result offline: the entry hashes to the leaf, the leaf is in the
    checkpoint's tree, and the checkpoint is signed by ``verify_key``. Returns the checkpoint;
    raises AuditProofError naming what does not hold."""
    try:
        entry = proof["entry"]
        index = int(proof["leaf_index"])
        size = int(proof["tree_size"])
        path = [bytes.fromhex(h) for h in proof["proof"]]
        leaf = entry_leaf_hash(
            int(entry["id"]),
            str(entry["at"]).removesuffix("Z"),
            entry["actor"],
            entry["action"],
            entry["target"],
            entry["details"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditProofError(f"malformed audit proof: {exc!r}") from None
    view = CheckpointView.from_dict(proof.get("checkpoint") or {})
    name = f"audit entry {entry['id']}"
    if view.tree_size != size:
        raise AuditProofError(
            f"{name}: the proof is for a tree of {size}, checkpoint {view.id} has {view.tree_size}"
        )
    key = _keys(verify_key).get(view.key_fingerprint)
    if key is None:
        raise AuditProofError(
            f"{name}: checkpoint {view.id} is signed by key {view.key_fingerprint[:16]}..., "
            "not by the verify key"
        )
    if not _signature_ok(view, key):
        raise AuditProofError(f"{name}: checkpoint {view.id} has a bad signature")
    if not merkle.verify_inclusion(leaf, index, size, path, view.root_hash):
        raise AuditProofError(
            f"{name} ({entry['action']}, {entry['at']}) is not at leaf {index} of checkpoint "
            f"{view.id}: the entry or the proof was changed"
        )
    return view


def prove_consistency(
    source: Catalog | Engine, old_checkpoint_id: int, new_checkpoint_id: int | None = None
) -> dict[str, Any]:
    """A consistency proof that checkpoint ``new_checkpoint_id`` (the newest by default)
    extends checkpoint ``old_checkpoint_id``: whoever kept the old signed tree head learns
    that no entry it covered was changed since. ``verify_consistency_proof`` checks it."""
    with _reader(source) as conn:
        rows = _checkpoint_rows(conn)
    by_id = {int(r[0]): i for i, r in enumerate(rows)}
    if old_checkpoint_id not in by_id:
        raise NotFound(f"no audit checkpoint {old_checkpoint_id}")
    if new_checkpoint_id is not None and new_checkpoint_id not in by_id:
        raise NotFound(f"no audit checkpoint {new_checkpoint_id}")
    old_at = by_id[old_checkpoint_id]
    new_at = by_id[new_checkpoint_id] if new_checkpoint_id is not None else len(rows) - 1
    if new_at < old_at:
        raise InvalidInput(
            f"audit checkpoint {rows[new_at][0]} is older than checkpoint {old_checkpoint_id}"
        )
    old, new = _view(rows[old_at]), _view(rows[new_at])
    tree = merkle.MerkleTree(b"".join(bytes(r[7]) for r in rows[: new_at + 1]))
    if tree.size != new.tree_size or tree.root() != new.root_hash:
        raise AuditVerificationError(
            f"audit checkpoints up to {new.id} hold {tree.size} leaf hashes whose root is not "
            f"checkpoint {new.id}'s (run `enclave audit verify`)"
        )
    return {
        "old": old.to_dict(),
        "new": new.to_dict(),
        "proof": [h.hex() for h in tree.consistency_proof(old.tree_size)],
    }


def verify_consistency_proof(
    proof: Mapping[str, Any], verify_key: Ed25519PublicKey | Iterable[Ed25519PublicKey]
) -> tuple[CheckpointView, CheckpointView]:
    """Check a ``prove_consistency`` result offline: both checkpoints are signed by
    ``verify_key`` and the newer tree extends the older. Returns (old, new); raises
    AuditProofError naming what does not hold."""
    old = CheckpointView.from_dict(proof.get("old") or {})
    new = CheckpointView.from_dict(proof.get("new") or {})
    keys = _keys(verify_key)
    for view in (old, new):
        key = keys.get(view.key_fingerprint)
        if key is None or not _signature_ok(view, key):
            raise AuditProofError(f"audit checkpoint {view.id} is not signed by the verify key")
    try:
        path = [bytes.fromhex(h) for h in proof["proof"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditProofError(f"malformed consistency proof: {exc!r}") from None
    if not merkle.verify_consistency(
        old.tree_size, new.tree_size, old.root_hash, new.root_hash, path
    ):
        raise AuditProofError(
            f"audit checkpoint {new.id} ({new.tree_size} entries) does not extend checkpoint "
            f"{old.id} ({old.tree_size} entries): history was rewritten between them"
        )
    return old, new


# -- export --------------------------------------------------------------------------------


def export(source: Catalog | Engine, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Audit entries for a SIEM, oldest first, from the first one at or after ``since``:
    each with its ``leaf_index``, ``leaf_hash`` and the ``checkpoint`` that covers it (None
    until one does)."""
    with _reader(source) as conn:
        covers = [(v.last_entry_id, v.id) for v in map(_view, _checkpoint_rows(conn))]
        first = 0
        if since is not None:
            if since.tzinfo is None:
                raise InvalidInput("export --since needs a time zone (or a date, taken as UTC)")
            found = conn.execute(
                select(func.min(_EVENTS.c.id)).where(_EVENTS.c.at >= since)
            ).scalar_one()
            if found is None:
                return
            first = int(found)
        index = _count_before(conn, first) if first else 0
        cover = 0
        for row in _stream(conn, first - 1 if first else 0):
            while cover < len(covers) and covers[cover][0] < row[0]:
                cover += 1
            leaf = _row_leaf(row)
            entry = _entry_dict(row)
            entry["leaf_index"] = index
            entry["leaf_hash"] = leaf.hex()
            entry["checkpoint"] = covers[cover][1] if cover < len(covers) else None
            yield entry
            index += 1


# -- PostgreSQL privileges -----------------------------------------------------------------

AUDIT_TABLES = ("audit_events", "audit_checkpoints")


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def restrict_application_role(owner_engine: Engine, role: str) -> None:
    """Let PostgreSQL role ``role`` run the catalog without being able to rewrite the audit log.

    Run as the tables' owner (who ran the migrations) after every upgrade: grants ``role``
    SELECT, INSERT, UPDATE and DELETE on every catalog table but the audit tables, on which
    it gets SELECT and INSERT only (no UPDATE, DELETE, TRUNCATE, TRIGGER or REFERENCES), and
    USAGE on the sequences. The role must already exist and must not own the tables or be a
    superuser: an owner can drop the append-only triggers, a superuser ignores privileges."""
    if owner_engine.dialect.name != "postgresql":
        raise InvalidInput("database roles exist only on PostgreSQL; SQLite has no roles")
    with owner_engine.begin() as conn:
        found = conn.execute(
            text("SELECT rolsuper FROM pg_roles WHERE rolname = :role"), {"role": role}
        ).first()
        if found is None:
            raise InvalidInput(f"PostgreSQL role {role!r} does not exist (CREATE ROLE it first)")
        if found[0]:
            raise InvalidInput(
                f"PostgreSQL role {role!r} is a superuser: it would ignore every privilege"
            )
        tables = (
            conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "ORDER BY tablename"
                )
            )
            .scalars()
            .all()
        )
        owned = (
            conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tableowner = :role ORDER BY tablename"
                ),
                {"role": role},
            )
            .scalars()
            .all()
        )
        if owned:
            raise InvalidInput(
                f"PostgreSQL role {role!r} owns {', '.join(owned)}: the application role must "
                "not own the tables (an owner can drop the audit triggers); run migrations "
                "as another role"
            )
        quoted = _quote(conn, role)
        schema = _quote(conn, conn.execute(text("SELECT current_schema()")).scalar_one())
        conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {quoted}"))
        for table in tables:
            name = f"{schema}.{_quote(conn, table)}"
            conn.execute(text(f"REVOKE ALL ON {name} FROM {quoted}"))
            if table == "alembic_version":  # migrations run as the owner, not the application
                conn.execute(text(f"GRANT SELECT ON {name} TO {quoted}"))
            elif table in AUDIT_TABLES:
                conn.execute(text(f"GRANT SELECT, INSERT ON {name} TO {quoted}"))
            else:
                conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO {quoted}"))
        conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {quoted}"))


def role_url(url: str, role: str, password: str | None = None) -> str:
    """``url`` with its user replaced by ``role`` (for connecting as the application role)."""
    return make_url(url).set(username=role, password=password).render_as_string(hide_password=False)
