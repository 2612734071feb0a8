"""The catalog service: every read and state change of the catalog goes through here.

Each public method is its own transaction, and each state change writes an audit row
naming its actor in that same transaction, so the audit trail cannot miss a change
that happened (nor record one that rolled back).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine, Select, and_, case, exists, func, insert, or_, select
from sqlalchemy import text as sql_text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from catalog import migrate
from catalog.airlock import DIGEST_BYTES as CHUNK_DIGEST_LENGTH
from catalog.airlock import index_version_content
from catalog.auth import (
    PROVIDER_TOKEN_PREFIX,
    ROLES,
    Principal,
    Role,
    hash_token,
    new_token,
)
from catalog.db import READ_ONLY, create_catalog_engine
from catalog.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    UnknownDataset,
    UnknownProvider,
    UnknownTransfer,
    UnknownVersion,
)
from catalog.models import (
    FILE_KINDS,
    TRANSFER_STATES,
    AccessMode,
    ApiToken,
    AuditEvent,
    Dataset,
    DatasetVersion,
    FeatureTable,
    File,
    Grant,
    PrincipalGroup,
    Provider,
    Series,
    Study,
    Transfer,
    ValidationReportRow,
    VersionModality,
    utcnow,
)
from catalog.models import Principal as PrincipalRow
from catalog.views import (
    AuditView,
    DatasetSummary,
    GrantView,
    MountableVersion,
    TransferView,
    ValidationSummary,
    VersionDetail,
    VersionSummary,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TRANSFER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# Groups and user names come from JupyterHub, which allows a few more characters.
SUBJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
MODALITY_RE = re.compile(r"^[A-Z0-9]{1,16}$")
# pg_advisory_xact_lock key every catalog write transaction takes on PostgreSQL ("enclwrit"):
# writers commit one at a time, so audit ids are assigned in commit order.
WRITE_LOCK_KEY = 0x656E636C77726974
_WRITE_LOCK_HELD = "enclave_write_lock_held"
# The engines this thread has a write transaction open on (see Catalog._tx).
_write_transactions = threading.local()
# Manifest fields a curator may override with ``edit``.
EDITABLE_FIELDS = ("title", "description", "license", "tags")


#: A PS3.16 code value (CID 7050 codes are six digits); which codes exist is the caller's
#: vocabulary (``ingestion.validators.deid_options.DeidOption``), a layer above the catalog.
_CODE_VALUE = re.compile(r"[0-9]{6}")


def _deid_option_codes(provider: str, codes: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated option codes; raises InvalidInput naming a malformed one."""
    out = set()
    for code in codes:
        text = str(code).strip()
        if not _CODE_VALUE.fullmatch(text):
            raise InvalidInput(
                f"provider {provider!r}: de-identification option {code!r} is not a PS3.16 "
                "code value such as 113108"
            )
        out.add(text)
    return sorted(out)


def check_name(name: object, what: str = "dataset") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(
            f"bad {what} name {name!r}: use letters, digits, '.', '_' or '-' (at most 128)"
        )
    return name


def _check_subject(value: str, what: str) -> str:
    if not SUBJECT_RE.match(value):
        raise InvalidInput(f"bad {what} name {value!r}")
    return value


def parse_version(version: object) -> int:
    """Accept ``2``, ``"2"`` or ``"v2"``."""
    if isinstance(version, bool):
        raise InvalidInput(f"bad version {version!r}: expected a number such as 2")
    if isinstance(version, int):
        number = version
    else:
        text = str(version).strip().lower().removeprefix("v")
        if not text.isdigit():
            raise InvalidInput(f"bad version {version!r}: expected a number such as 2")
        number = int(text)
    if number < 1:
        raise InvalidInput(f"bad version {version!r}: versions start at 1")
    return number


def parse_expiry(
    value: str | date | datetime | None, *, now: datetime | None = None
) -> datetime | None:
    """A grant's end: a date means through the end of that day (UTC); must be in the future."""
    if value is None or value == "":
        return None
    now = now or utcnow()
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        when = datetime.combine(value + timedelta(days=1), time(0), tzinfo=UTC)
    else:
        text = str(value).strip()
        try:
            if len(text) == 10:
                day = date.fromisoformat(text)
                when = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
            else:
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
        except ValueError:
            raise InvalidInput(
                f"bad expiry date {text!r}: use YYYY-MM-DD or an ISO 8601 date and time"
            ) from None
    if when <= now:
        raise InvalidInput(f"expiry {when.date().isoformat()} is in the past")
    return when


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, dict):
        return [f"{k}={v}" if v not in (None, "") else str(k) for k, v in value.items()]
    return list(value)


def _modalities(value: Any) -> list[str]:
    out = []
    for item in _as_list(value):
        m = str(item).strip().upper()
        if m and MODALITY_RE.match(m):
            out.append(m)
    return out


def _report_counts(report_json: str | None) -> tuple[bool, int, int, int, str]:
    """Parse an ``ingestion.report.ValidationReport`` JSON into (passed, errors, warnings, infos)."""
    if not report_json:
        return True, 0, 0, 0, json.dumps({"findings": [], "passed": True})
    try:
        data = json.loads(report_json)
    except ValueError:
        raise InvalidInput("validation report is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("validation report must be a JSON object")
    findings = data.get("findings") or []
    counts = dict(data.get("counts") or {})
    for key in ("error", "warning", "info"):
        if key not in counts:
            counts[key] = sum(
                1 for f in findings if isinstance(f, dict) and f.get("severity") == key
            )
    errors = int(counts.get("error", 0))
    passed = bool(data.get("passed", errors == 0))
    return passed, errors, int(counts.get("warning", 0)), int(counts.get("info", 0)), report_json


def _live_grant_to(principal: Principal, now: datetime) -> tuple[ColumnElement[bool], ...]:
    """Conditions on ``Grant``: not revoked, not expired at ``now``, and given to the
    principal by name or to one of its groups."""
    subject = Grant.user_name == principal.name
    if principal.groups:
        subject = or_(subject, Grant.group_name.in_(sorted(principal.groups)))
    return (
        Grant.revoked_at.is_(None),
        or_(Grant.expires_at.is_(None), Grant.expires_at > now),
        subject,
    )


class Catalog:
    """The dataset catalog on one database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, url: str | None = None) -> None:
        self.engine = engine
        self.url = url or engine.url.render_as_string(hide_password=True)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        """A write transaction. On PostgreSQL it first takes the catalog's write lock, so
        writers commit one at a time and audit ids follow commit order (SQLite's
        ``BEGIN IMMEDIATE`` already does that); taken first, it cannot deadlock with the row
        locks the transaction takes later."""
        held: set[int] = _write_transactions.__dict__.setdefault("engines", set())
        if id(self.engine) in held:
            raise RuntimeError(
                "a catalog write transaction inside another on the same thread would wait "
                "forever for the write lock the outer one holds: do the work in one transaction"
            )
        held.add(id(self.engine))
        try:
            with self._sessions.begin() as session:
                _take_write_lock(session)
                yield session
        finally:
            held.discard(id(self.engine))

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A read-only transaction: on SQLite it does not take the write lock, so pages and
        API calls keep answering while ingestion writes a large version."""
        with self._sessions.begin() as session:
            session.connection(execution_options={READ_ONLY: True})
            yield session

    @staticmethod
    def _audit(session: Session, actor: str, action: str, target: str, /, **details: Any) -> None:
        """Append one entry to the audit log (``catalog/audit.py``) in ``session``'s
        transaction, which should come from ``_tx``: a session that does not hold the write
        lock yet takes it here, late, so that ids still follow commit order."""
        if not actor or not isinstance(actor, str):
            raise InvalidInput("every catalog change needs an actor (who is making it)")
        _take_write_lock(session)
        session.add(AuditEvent(actor=actor, action=action, target=target, details=details))

    def _locked(self, stmt: Any) -> Any:
        # Row locks matter on PostgreSQL; SQLite transactions already hold the write lock.
        if self.dialect != "postgresql":
            return stmt
        # Lock only the selected table's row, not the eagerly joined ones.
        return stmt.with_for_update(of=stmt.column_descriptions[0]["entity"])

    # -- providers --------------------------------------------------------------------------

    def add_provider(
        self,
        name: str,
        verify_key_pem: bytes,
        fingerprint: str,
        *,
        actor: str,
        quota_bytes: int | None = None,
        deid_options: Iterable[str] = (),
    ) -> tuple[Provider, str]:
        """Register a provider and return it with its upload token (shown only now).

        ``deid_options``: PS3.16 codes of the de-identification options it may declare."""
        check_name(name, "provider")
        options = _deid_option_codes(name, deid_options)
        if not verify_key_pem or not isinstance(verify_key_pem, bytes):
            raise InvalidInput(f"provider {name!r}: verify key must be PEM bytes")
        if not fingerprint:
            raise InvalidInput(f"provider {name!r}: key fingerprint is empty")
        token = new_token(PROVIDER_TOKEN_PREFIX)
        try:
            with self._tx() as s:
                if s.scalar(select(Provider.id).where(Provider.name == name)) is not None:
                    raise Conflict(f"provider {name!r} already exists")
                provider = Provider(
                    name=name,
                    verify_key_pem=verify_key_pem,
                    fingerprint=fingerprint,
                    token_hash=hash_token(token),
                    deid_options=options,
                )
                if quota_bytes is not None:
                    provider.quota_bytes = int(quota_bytes)
                s.add(provider)
                s.flush()
                self._audit(
                    s,
                    actor,
                    "provider.add",
                    f"provider:{name}",
                    fingerprint=fingerprint,
                    deid_options=options,
                )
        except IntegrityError:
            raise Conflict(f"provider {name!r} already exists") from None
        return provider, token

    def authenticate_provider(self, token: str) -> Provider | None:
        if not token:
            return None
        with self._read() as s:
            return s.scalar(
                select(Provider).where(
                    Provider.token_hash == hash_token(token), Provider.active.is_(True)
                )
            )

    def get_provider(self, name: str) -> Provider:
        """The provider called ``name``; raises UnknownProvider."""
        with self._read() as s:
            provider = s.scalar(select(Provider).where(Provider.name == name))
            if provider is None:
                raise UnknownProvider(name)
            return provider

    def list_providers(self) -> list[Provider]:
        with self._read() as s:
            return list(s.scalars(select(Provider).order_by(Provider.name)))

    def set_provider_quota(self, name: str, quota_bytes: int, *, actor: str) -> Provider:
        if quota_bytes < 0:
            raise InvalidInput(f"provider {name!r}: quota must not be negative")
        with self._tx() as s:
            provider = s.scalar(select(Provider).where(Provider.name == name))
            if provider is None:
                raise UnknownProvider(name)
            old = provider.quota_bytes
            provider.quota_bytes = int(quota_bytes)
            self._audit(s, actor, "provider.quota", f"provider:{name}", old=old, new=quota_bytes)
            return provider

    def set_provider_deid_options(
        self, name: str, deid_options: Iterable[str], *, actor: str
    ) -> Provider:
        """Replace the de-identification options (PS3.16 codes) ``name`` may declare;
        audited with the old and new lists. Transfers already validated keep their verdict."""
        options = _deid_option_codes(name, deid_options)
        with self._tx() as s:
            provider = s.scalar(select(Provider).where(Provider.name == name))
            if provider is None:
                raise UnknownProvider(name)
            old = list(provider.deid_options or [])
            provider.deid_options = options
            self._audit(s, actor, "provider.deid-options", f"provider:{name}", old=old, new=options)
            return provider

    def rotate_provider_token(self, name: str, *, actor: str) -> str:
        """Replace a provider's upload token (for a lost or leaked one)."""
        token = new_token(PROVIDER_TOKEN_PREFIX)
        with self._tx() as s:
            provider = s.scalar(select(Provider).where(Provider.name == name))
            if provider is None:
                raise UnknownProvider(name)
            provider.token_hash = hash_token(token)
            self._audit(s, actor, "provider.token", f"provider:{name}")
        return token

    @staticmethod
    def _provider_row(s: Session, provider: Provider | str) -> Provider:
        name = provider if isinstance(provider, str) else provider.name
        row = s.scalar(select(Provider).where(Provider.name == name))
        if row is None:
            raise UnknownProvider(name)
        return row

    # -- transfers --------------------------------------------------------------------------

    def record_transfer(
        self,
        transfer_id: str,
        provider: Provider | str,
        *,
        dataset_name: str,
        k: int,
        n: int,
        share_length: int,
        state: str = "receiving",
    ) -> Transfer:
        """Note a transfer the first time one of its shares arrives (idempotent)."""
        if not isinstance(transfer_id, str) or not TRANSFER_ID_RE.match(transfer_id):
            raise InvalidInput(f"bad transfer id {transfer_id!r}")
        check_name(dataset_name)
        self._check_state(state)
        if state == "cataloged":
            raise InvalidInput("a transfer becomes cataloged only through catalog_version")
        if not (1 <= k <= n <= 255):
            raise InvalidInput(f"transfer {transfer_id!r}: need 1 <= k <= n <= 255, got {k}-of-{n}")
        if share_length < 0:
            raise InvalidInput(f"transfer {transfer_id!r}: negative share length")
        for _attempt in range(2):
            try:
                with self._tx() as s:
                    row = self._provider_row(s, provider)
                    existing = s.scalar(select(Transfer).where(Transfer.transfer_id == transfer_id))
                    if existing is not None:
                        self._check_same_transfer(existing, row, dataset_name, k, n, share_length)
                        return existing
                    transfer = Transfer(
                        transfer_id=transfer_id,
                        provider_id=row.id,
                        provider=row,
                        dataset_name=dataset_name,
                        k=k,
                        n=n,
                        share_length=share_length,
                        state=state,
                    )
                    s.add(transfer)
                    s.flush()
                    self._audit(
                        s,
                        f"provider:{row.name}",
                        "transfer.record",
                        f"transfer:{transfer_id}",
                        dataset=dataset_name,
                        k=k,
                        n=n,
                        share_length=share_length,
                        state=state,
                    )
                    return transfer
            except IntegrityError:
                continue  # another process recorded it first: the next pass finds it
        raise Conflict(f"transfer {transfer_id!r} could not be recorded")

    @staticmethod
    def _check_same_transfer(
        t: Transfer, provider: Provider, dataset_name: str, k: int, n: int, share_length: int
    ) -> None:
        if t.provider_id != provider.id:
            raise Conflict(f"transfer {t.transfer_id!r} belongs to another provider")
        theirs = (t.dataset_name, t.k, t.n, t.share_length)
        if theirs != (dataset_name, k, n, share_length):
            raise Conflict(
                f"transfer {t.transfer_id!r} was recorded as {t.dataset_name} {t.k}-of-{t.n} "
                f"with {t.share_length}-byte shares; this share says {dataset_name} "
                f"{k}-of-{n} with {share_length}-byte shares"
            )

    @staticmethod
    def _check_state(state: str) -> None:
        if state not in TRANSFER_STATES:
            raise InvalidInput(
                f"unknown transfer state {state!r} (one of: {', '.join(TRANSFER_STATES)})"
            )

    def set_transfer_state(
        self,
        transfer_id: str,
        state: str,
        *,
        reason: str | None = None,
        report_json: str | None = None,
        actor: str,
    ) -> Transfer:
        self._check_state(state)
        with self._tx() as s:
            t = s.scalar(self._locked(select(Transfer).where(Transfer.transfer_id == transfer_id)))
            if t is None:
                raise UnknownTransfer(transfer_id)
            if t.state == "cataloged" and state != "cataloged":
                raise Conflict(f"transfer {transfer_id!r} is already cataloged")
            if state == "cataloged" and t.state != "cataloged":
                raise Conflict(
                    f"transfer {transfer_id!r}: use catalog_version to catalog a transfer"
                )
            if t.state == state and reason is None and report_json is None:
                return t
            old = t.state
            t.state = state
            if reason is not None:
                t.reason = reason
            if report_json is not None:
                t.report_json = report_json
            self._audit(
                s,
                actor,
                "transfer.state",
                f"transfer:{transfer_id}",
                old=old,
                new=state,
                reason=reason,
            )
            return t

    def get_transfer(self, transfer_id: str) -> Transfer:
        with self._read() as s:
            t = s.scalar(select(Transfer).where(Transfer.transfer_id == transfer_id))
            if t is None:
                raise UnknownTransfer(transfer_id)
            return t

    def transfers_for_provider(self, provider: Provider | str) -> list[Transfer]:
        with self._read() as s:
            row = self._provider_row(s, provider)
            return list(
                s.scalars(
                    select(Transfer)
                    .where(Transfer.provider_id == row.id)
                    .order_by(Transfer.created_at, Transfer.id)
                ).unique()
            )

    def transfers_in_state(self, state: str) -> list[Transfer]:
        self._check_state(state)
        with self._read() as s:
            return list(
                s.scalars(
                    select(Transfer)
                    .where(Transfer.state == state)
                    .order_by(Transfer.created_at, Transfer.id)
                ).unique()
            )

    def list_transfers(
        self, provider: str | None = None, state: str | None = None
    ) -> list[TransferView]:
        """Transfers as views (for the API and CLI), optionally one provider's or one state's."""
        if state is not None:
            self._check_state(state)
        with self._read() as s:
            stmt = select(Transfer).order_by(Transfer.created_at, Transfer.id)
            if provider is not None:
                stmt = stmt.join(Provider, Transfer.provider_id == Provider.id).where(
                    Provider.name == provider
                )
            if state is not None:
                stmt = stmt.where(Transfer.state == state)
            return [
                TransferView.from_row(t, t.version.version if t.version else None)
                for t in s.scalars(stmt).unique()
            ]

    # -- cataloging ---------------------------------------------------------------------------

    def catalog_version(
        self,
        transfer_id: str,
        *,
        manifest: dict[str, Any],
        content_hash: str,
        size_bytes: int,
        store_location: str,
        wrapped_key: bytes,
        files: Sequence[dict[str, Any]],
        series: Sequence[dict[str, Any]] = (),
        report_json: str | None = None,
        feature_tables: Sequence[dict[str, Any]] = (),
        chunks: Mapping[str, Sequence[bytes]] | None = None,
        identifiers: Sequence[bytes] = (),
        actor: str,
    ) -> DatasetVersion:
        """Turn a validated transfer into a new pending-review version, all or nothing.

        ``chunks`` (file path -> digests of its aligned chunks) and ``identifiers`` (digests of
        its subject identifiers) go into the airlock's content index with the version
        (``ingestion/content_index.py``).

        Calling it again for a cataloged transfer returns the version it made, and
        content identical to an existing version of the dataset is recorded as a
        duplicate of that version rather than a new one.
        """
        if not isinstance(manifest, dict):
            raise InvalidInput(f"transfer {transfer_id!r}: manifest must be a mapping")
        name = check_name(manifest.get("name"))
        if not content_hash or not isinstance(content_hash, str):
            raise InvalidInput(f"dataset {name!r}: content hash is empty")
        if not isinstance(wrapped_key, bytes) or not wrapped_key:
            raise InvalidInput(f"dataset {name!r}: wrapped key must be non-empty bytes")
        if not store_location:
            raise InvalidInput(f"dataset {name!r}: store location is empty")
        if size_bytes < 0:
            raise InvalidInput(f"dataset {name!r}: negative size")
        file_rows = self._check_files(name, files)
        series_rows = self._check_series(name, series)
        features = self._check_features(name, feature_tables)
        report = _report_counts(report_json)
        digests = _check_digests(name, chunks or {}, identifiers)
        for attempt in range(3):
            try:
                with self._tx() as s:
                    return self._catalog_version(
                        s,
                        transfer_id,
                        manifest=manifest,
                        content_hash=content_hash,
                        size_bytes=size_bytes,
                        store_location=store_location,
                        wrapped_key=wrapped_key,
                        files=file_rows,
                        series=series_rows,
                        report=report,
                        features=features,
                        digests=digests,
                        actor=actor,
                    )
            except IntegrityError:
                # A concurrent catalog_version for the same dataset took the version
                # number or created the dataset first: retry on the new state.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _check_files(name: str, files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[str] = set()
        rows = []
        for f in files:
            path = f.get("path")
            if not path or not isinstance(path, str):
                raise InvalidInput(f"dataset {name!r}: a file entry has no path")
            if path in seen:
                raise InvalidInput(f"dataset {name!r}: file {path} is listed twice")
            seen.add(path)
            kind = f.get("kind", "other")
            if kind not in FILE_KINDS:
                raise InvalidInput(
                    f"dataset {name!r}: file {path} has kind {kind!r} (one of {', '.join(FILE_KINDS)})"
                )
            size = f.get("size", f.get("size_bytes"))
            if size is None or int(size) < 0:
                raise InvalidInput(f"dataset {name!r}: file {path} has no size")
            sha = f.get("sha256") or ""
            if not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise InvalidInput(f"dataset {name!r}: file {path} has no valid sha256")
            modality = f.get("modality")
            rows.append(
                {
                    "path": path,
                    "size_bytes": int(size),
                    "sha256": sha,
                    "kind": kind,
                    "modality": str(modality).upper() if modality else None,
                    "study_uid": f.get("study_uid") or None,
                    "series_uid": f.get("series_uid") or None,
                    "sop_instance_uid": f.get("sop_instance_uid") or None,
                }
            )
        return rows

    @staticmethod
    def _check_series(name: str, series: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[str] = set()
        rows = []
        for item in series:
            uid = item.get("series_uid")
            if not uid:
                raise InvalidInput(f"dataset {name!r}: a series entry has no series_uid")
            if uid in seen:
                raise InvalidInput(f"dataset {name!r}: series {uid} is listed twice")
            seen.add(uid)
            spacing = list(item.get("spacing") or [])
            if spacing and len(spacing) not in (2, 3):
                raise InvalidInput(f"dataset {name!r}: series {uid} spacing must be [x, y, z]")
            spacing += [None] * (3 - len(spacing))
            orientation = item.get("orientation")
            rows.append(
                {
                    "series_uid": uid,
                    "study_uid": item.get("study_uid") or None,
                    "modality": str(item.get("modality") or "").upper(),
                    "body_part": str(item.get("body_part") or ""),
                    "rows": item.get("rows"),
                    "columns": item.get("columns"),
                    "slices": item.get("slices"),
                    "spacing_x": None if spacing[0] is None else float(spacing[0]),
                    "spacing_y": None if spacing[1] is None else float(spacing[1]),
                    "spacing_z": None if spacing[2] is None else float(spacing[2]),
                    "orientation": list(orientation) if orientation is not None else None,
                }
            )
        return rows

    @staticmethod
    def _check_features(name: str, tables: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        seen: set[str] = set()
        for t in tables:
            tname, path = t.get("name"), t.get("path")
            if not tname or not path:
                raise InvalidInput(f"dataset {name!r}: a feature table needs a name and a path")
            if tname in seen:
                raise InvalidInput(f"dataset {name!r}: feature table {tname} is listed twice")
            seen.add(tname)
            columns = t.get("columns")
            names = [str(c) for c in columns] if isinstance(columns, list | tuple | dict) else []
            if names or isinstance(columns, list | tuple | dict):
                count: int | None = len(names)
            else:
                count = int(columns) if isinstance(columns, int) else None
            rows.append(
                {
                    "name": tname,
                    "path": path,
                    "row_count": t.get("rows"),
                    "column_count": count,
                    "column_names": names,
                }
            )
        return rows

    def _catalog_version(
        self,
        s: Session,
        transfer_id: str,
        *,
        manifest: dict[str, Any],
        content_hash: str,
        size_bytes: int,
        store_location: str,
        wrapped_key: bytes,
        files: list[dict[str, Any]],
        series: list[dict[str, Any]],
        report: tuple[bool, int, int, int, str],
        features: list[dict[str, Any]],
        digests: tuple[dict[str, list[bytes]], list[bytes]],
        actor: str,
    ) -> DatasetVersion:
        name = manifest["name"]
        t = s.scalar(self._locked(select(Transfer).where(Transfer.transfer_id == transfer_id)))
        if t is None:
            raise UnknownTransfer(transfer_id)
        if t.state == "cataloged" and t.version_id is not None:
            return self._load_version(s, t.version_id)
        if t.state in ("quarantined", "failed"):
            raise Conflict(f"transfer {transfer_id!r} is {t.state}; it cannot be cataloged")
        if t.dataset_name != name:
            raise Conflict(
                f"transfer {transfer_id!r} was announced for dataset {t.dataset_name!r} "
                f"but its manifest names {name!r}"
            )
        dataset = s.scalar(self._locked(select(Dataset).where(Dataset.name == name)))
        if dataset is None:
            dataset = Dataset(name=name, provider_id=t.provider_id, edited_fields=[])
            s.add(dataset)
            s.flush()
        elif dataset.provider_id not in (None, t.provider_id):
            owner = dataset.provider.name if dataset.provider else "another provider"
            raise Conflict(f"dataset {name!r} belongs to provider {owner!r}")

        duplicate = s.scalar(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset.id,
                DatasetVersion.content_hash == content_hash,
            )
        )
        if duplicate is not None:
            t.state = "cataloged"
            t.version_id = duplicate.id
            t.reason = f"same content as {name} version {duplicate.version}; not duplicated"
            self._audit(
                s,
                actor,
                "version.duplicate",
                f"dataset:{name}@{duplicate.version}",
                transfer=transfer_id,
                content_hash=content_hash,
            )
            return self._load_version(s, duplicate.id)

        number = (
            s.scalar(
                select(func.max(DatasetVersion.version)).where(
                    DatasetVersion.dataset_id == dataset.id
                )
            )
            or 0
        ) + 1
        version = DatasetVersion(
            dataset=dataset,
            version=number,
            status="pending-review",
            content_hash=content_hash,
            size_bytes=int(size_bytes),
            store_location=store_location,
            wrapped_key=wrapped_key,
            manifest=json.loads(json.dumps(manifest, default=str)),
            file_count=len(files),
            created_by=actor,
        )
        s.add(version)
        s.flush()

        # Studies and series: counts and sizes come from the file list.
        per_series: dict[str, list[int]] = {}
        per_study: dict[str, dict[str, Any]] = {}
        for f in files:
            if f["series_uid"]:
                acc = per_series.setdefault(f["series_uid"], [0, 0])
                acc[0] += 1
                acc[1] += f["size_bytes"]
            if f["study_uid"]:
                st = per_study.setdefault(
                    f["study_uid"], {"files": 0, "bytes": 0, "mods": set(), "series": set()}
                )
                st["files"] += 1
                st["bytes"] += f["size_bytes"]
                if f["modality"]:
                    st["mods"].add(f["modality"])
                if f["series_uid"]:
                    st["series"].add(f["series_uid"])
        for item in series:
            if item["study_uid"]:
                st = per_study.setdefault(
                    item["study_uid"], {"files": 0, "bytes": 0, "mods": set(), "series": set()}
                )
                st["series"].add(item["series_uid"])
                if item["modality"]:
                    st["mods"].add(item["modality"])
        studies = {
            uid: Study(
                version_id=version.id,
                study_uid=uid,
                modalities=" ".join(sorted(st["mods"])),
                series_count=len(st["series"]),
                file_count=st["files"],
                size_bytes=st["bytes"],
            )
            for uid, st in per_study.items()
        }
        s.add_all(studies.values())
        s.flush()
        series_rows = {}
        for item in series:
            count, nbytes = per_series.get(item["series_uid"], [0, 0])
            study = studies.get(item["study_uid"]) if item["study_uid"] else None
            series_rows[item["series_uid"]] = Series(
                version_id=version.id,
                study_id=study.id if study else None,
                file_count=count,
                size_bytes=nbytes,
                **{k: v for k, v in item.items() if k != "study_uid"},
            )
        s.add_all(series_rows.values())
        s.flush()
        if files:
            s.execute(
                insert(File),
                [
                    {
                        **f,
                        "version_id": version.id,
                        "series_id": series_rows[f["series_uid"]].id
                        if f["series_uid"] in series_rows
                        else None,
                    }
                    for f in files
                ],
            )
        modalities = set(_modalities(manifest.get("modality")))
        modalities.update(item["modality"] for item in series if item["modality"])
        modalities.update(f["modality"] for f in files if f["modality"])
        modalities = {m for m in modalities if MODALITY_RE.match(m)}
        s.add_all(VersionModality(version_id=version.id, modality=m) for m in sorted(modalities))
        version.series_count = len(series_rows)
        version.study_count = len(studies)
        passed, errors, warnings, infos, raw = report
        s.add(
            ValidationReportRow(
                version_id=version.id,
                passed=passed,
                error_count=errors,
                warning_count=warnings,
                info_count=infos,
                report_json=raw,
            )
        )
        s.add_all(FeatureTable(version_id=version.id, **f) for f in features)
        s.flush()
        index_version_content(s, version.id, chunks=digests[0], identifiers=digests[1])

        self._apply_manifest(dataset, manifest)
        t.state = "cataloged"
        t.version_id = version.id
        t.reason = None
        s.flush()
        self._refresh_search_text(s, dataset)
        self._audit(
            s,
            actor,
            "version.catalog",
            f"dataset:{name}@{number}",
            transfer=transfer_id,
            content_hash=content_hash,
            files=len(files),
            size_bytes=int(size_bytes),
        )
        return self._load_version(s, version.id)

    @staticmethod
    def _load_version(s: Session, version_id: int) -> DatasetVersion:
        s.flush()
        v = s.get(DatasetVersion, version_id, populate_existing=True)
        assert v is not None
        # Touch what callers read after the session closes.
        _ = (v.dataset.name, v.modalities, v.report)
        return v

    @staticmethod
    def _apply_manifest(dataset: Dataset, manifest: dict[str, Any]) -> None:
        """Copy descriptive fields from the newest manifest, except those a curator edited."""
        edited = set(dataset.edited_fields or [])
        values = {
            "title": str(manifest.get("title") or dataset.title or dataset.name)[:512],
            "description": str(manifest.get("description") or ""),
            "license": str(manifest.get("license") or "")[:256],
            "modality": " ".join(_modalities(manifest.get("modality")))[:128],
            "body_part": str(manifest.get("body_part") or "")[:128],
            "tags": [str(t) for t in _as_list(manifest.get("tags"))],
            "labels": json.loads(json.dumps(_as_list(manifest.get("labels")), default=str)),
        }
        for key, value in values.items():
            if key not in edited:
                setattr(dataset, key, value)

    def _refresh_search_text(self, s: Session, dataset: Dataset) -> None:
        modalities = s.scalars(
            select(VersionModality.modality)
            .join(DatasetVersion, VersionModality.version_id == DatasetVersion.id)
            .where(DatasetVersion.dataset_id == dataset.id)
            .distinct()
        ).all()
        labels = " ".join(str(label) for label in dataset.labels or [])
        parts = [
            dataset.name,
            dataset.title,
            dataset.description,
            " ".join(dataset.tags or []),
            labels,
            dataset.body_part,
            dataset.modality,
            " ".join(modalities),
        ]
        dataset.search_text = " ".join(p for p in parts if p).lower()

    # -- reading ----------------------------------------------------------------------------

    @staticmethod
    def _visible_clause(principal: Principal, now: datetime) -> ColumnElement[bool]:
        """SQL for 'this version is published and granted, unexpired, to this principal'."""
        granted = exists().where(
            Grant.version_id == DatasetVersion.id, *_live_grant_to(principal, now)
        )
        return and_(DatasetVersion.status == "published", granted)

    @staticmethod
    def _access_modes(
        s: Session, version_ids: list[int], principal: Principal, now: datetime
    ) -> dict[int, AccessMode]:
        """The principal's effective access mode per version: the most open live grant's."""
        modes: dict[int, AccessMode] = {}
        if not version_ids:
            return modes
        for version_id, mode in s.execute(
            select(Grant.version_id, Grant.mode).where(
                Grant.version_id.in_(version_ids), *_live_grant_to(principal, now)
            )
        ):
            if modes.get(version_id) is not AccessMode.NOTEBOOK:
                modes[version_id] = AccessMode(mode)
        return modes

    def _version_summaries(
        self, s: Session, dataset_ids: list[int], principal: Principal | None, now: datetime
    ) -> dict[int, list[VersionSummary]]:
        """Summaries of the versions of ``dataset_ids`` the principal may see, by dataset id.

        Plain column queries, not ORM objects: listing and search build many summaries and
        need neither the manifest, the key nor the report text.
        """
        out: dict[int, list[VersionSummary]] = {i: [] for i in dataset_ids}
        if not dataset_ids:
            return out
        v, r = DatasetVersion, ValidationReportRow
        stmt = (
            select(
                v.id,
                v.dataset_id,
                Dataset.name,
                v.version,
                v.status,
                v.content_hash,
                v.size_bytes,
                v.file_count,
                v.series_count,
                v.study_count,
                v.created_at,
                v.published_at,
                v.retired_at,
                r.passed,
                r.error_count,
                r.warning_count,
                r.info_count,
            )
            .join(Dataset, Dataset.id == v.dataset_id)
            .outerjoin(r, r.version_id == v.id)
            .where(v.dataset_id.in_(dataset_ids))
            .order_by(v.dataset_id, v.version)
        )
        access: dict[int, AccessMode] = {}
        if principal is not None and not principal.is_admin:
            stmt = stmt.where(self._visible_clause(principal, now))
        rows = s.execute(stmt).all()
        if principal is not None and not principal.is_admin:
            access = self._access_modes(s, [row.id for row in rows], principal, now)
        modalities: dict[int, list[str]] = {}
        if rows:
            for vid, modality in s.execute(
                select(VersionModality.version_id, VersionModality.modality)
                .where(VersionModality.version_id.in_([row.id for row in rows]))
                .order_by(VersionModality.modality)
            ):
                modalities.setdefault(vid, []).append(modality)
        for row in rows:
            validation = None
            if row.passed is not None:
                validation = ValidationSummary(
                    row.passed, row.error_count, row.warning_count, row.info_count
                )
            out[row.dataset_id].append(
                VersionSummary(
                    dataset=row.name,
                    version=row.version,
                    status=row.status,
                    content_hash=row.content_hash,
                    size_bytes=row.size_bytes,
                    file_count=row.file_count,
                    series_count=row.series_count,
                    study_count=row.study_count,
                    modalities=modalities.get(row.id, []),
                    validation=validation,
                    created_at=row.created_at,
                    published_at=row.published_at,
                    retired_at=row.retired_at,
                    access=access.get(row.id),
                )
            )
        return out

    @staticmethod
    def _dataset_ids_with(
        principal: Principal | None, now: datetime, modality: str | None = None
    ) -> Select[int]:
        """Ids of datasets with a version the principal sees (and of ``modality``), as a
        subquery the database can hash-join, starting from the few live grants."""
        stmt = select(DatasetVersion.dataset_id)
        if principal is not None and not principal.is_admin:
            stmt = stmt.join(Grant, Grant.version_id == DatasetVersion.id).where(
                DatasetVersion.status == "published", *_live_grant_to(principal, now)
            )
        if modality:
            stmt = stmt.join(
                VersionModality, VersionModality.version_id == DatasetVersion.id
            ).where(VersionModality.modality == modality)
        return stmt

    @staticmethod
    def _sees_nothing(principal: Principal | None) -> bool:
        return principal is not None and not principal.is_admin and not principal.sees_by_grant

    def _summaries(
        self, s: Session, dataset_ids: Sequence[int], principal: Principal | None, now: datetime
    ) -> list[DatasetSummary]:
        """Dataset summaries in the order of ``dataset_ids``, with the versions the caller sees."""
        ids = list(dataset_ids)
        if not ids:
            return []
        d = Dataset
        rows = {
            row.id: row
            for row in s.execute(
                select(
                    d.id,
                    d.name,
                    d.title,
                    d.description,
                    d.license,
                    d.modality,
                    d.body_part,
                    d.tags,
                    d.labels,
                    d.created_at,
                    d.updated_at,
                    Provider.name.label("provider"),
                )
                .outerjoin(Provider, Provider.id == d.provider_id)
                .where(d.id.in_(ids))
            )
        }
        versions = self._version_summaries(s, ids, principal, now)
        out = []
        for dataset_id in ids:
            row = rows.get(dataset_id)
            if row is None:
                continue
            seen = versions[dataset_id]
            if principal is not None and not principal.is_admin and not seen:
                continue
            out.append(
                DatasetSummary(
                    name=row.name,
                    title=row.title,
                    description=row.description,
                    license=row.license,
                    modality=row.modality,
                    body_part=row.body_part,
                    tags=list(row.tags or []),
                    labels=list(row.labels or []),
                    provider=row.provider,
                    versions=seen,
                    created_at=row.created_at,
                    updated_at=row.updated_at,
                )
            )
        return out

    def list_datasets(
        self, principal: Principal | None = None, *, now: datetime | None = None
    ) -> list[DatasetSummary]:
        """All datasets (admin, or no principal), or those with versions granted to ``principal``."""
        if self._sees_nothing(principal):
            return []
        now = now or utcnow()
        with self._read() as s:
            stmt = select(Dataset.id).order_by(Dataset.name)
            if principal is not None and not principal.is_admin:
                stmt = stmt.where(Dataset.id.in_(self._dataset_ids_with(principal, now)))
            return self._summaries(s, list(s.scalars(stmt)), principal, now)

    def get_dataset(
        self, name: str, principal: Principal | None = None, *, now: datetime | None = None
    ) -> DatasetSummary:
        now = now or utcnow()
        with self._read() as s:
            d = s.scalar(select(Dataset).where(Dataset.name == name))
            if d is None or self._sees_nothing(principal):
                raise UnknownDataset(name)
            found = self._summaries(s, [d.id], principal, now)
            if not found:
                raise UnknownDataset(name)
            return found[0]

    def store_locations(self) -> set[str]:
        """Where every cataloged version's encrypted data lies: what the store must keep."""
        with self._read() as s:
            return set(s.scalars(select(DatasetVersion.store_location)))

    def _version_row(self, s: Session, name: str, version: object) -> DatasetVersion:
        number = parse_version(version)
        d_id = s.scalar(select(Dataset.id).where(Dataset.name == name))
        if d_id is None:
            raise UnknownDataset(name)
        v = s.scalar(
            self._locked(
                select(DatasetVersion).where(
                    DatasetVersion.dataset_id == d_id, DatasetVersion.version == number
                )
            )
        )
        if v is None:
            raise UnknownVersion(name, number)
        return v

    def get_version(
        self,
        name: str,
        version: object,
        principal: Principal | None = None,
        *,
        now: datetime | None = None,
    ) -> VersionDetail:
        now = now or utcnow()
        number = parse_version(version)
        with self._read() as s:
            if self._sees_nothing(principal):
                raise UnknownDataset(name)
            if principal is not None and not principal.is_admin:
                visible = s.scalar(
                    select(DatasetVersion.id)
                    .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
                    .where(
                        Dataset.name == name,
                        DatasetVersion.version == number,
                        self._visible_clause(principal, now),
                    )
                )
                if visible is None:
                    # Say the same for a hidden dataset as for a missing one.
                    d_id = s.scalar(select(Dataset.id).where(Dataset.name == name))
                    shown = d_id is not None and s.scalar(
                        select(DatasetVersion.id)
                        .where(
                            DatasetVersion.dataset_id == d_id, self._visible_clause(principal, now)
                        )
                        .limit(1)
                    )
                    if not shown:
                        raise UnknownDataset(name)
                    raise UnknownVersion(name, number)
            v = self._version_row(s, name, number)
            return self._detail(s, v)

    def _detail(self, s: Session, v: DatasetVersion) -> VersionDetail:
        from catalog.views import FeatureTableView, SeriesView

        study_uids = dict(
            s.execute(select(Study.id, Study.study_uid).where(Study.version_id == v.id)).all()
        )
        series = [
            SeriesView(
                series_uid=r.series_uid,
                study_uid=study_uids.get(r.study_id) if r.study_id is not None else None,
                modality=r.modality,
                body_part=r.body_part,
                rows=r.rows,
                columns=r.columns,
                slices=r.slices,
                spacing=[r.spacing_x, r.spacing_y, r.spacing_z],
                orientation=r.orientation,
                file_count=r.file_count,
                size_bytes=r.size_bytes,
            )
            for r in s.scalars(select(Series).where(Series.version_id == v.id).order_by(Series.id))
        ]
        features = [
            FeatureTableView(
                f.name, f.path, f.row_count, f.column_count, list(f.column_names or [])
            )
            for f in s.scalars(
                select(FeatureTable)
                .where(FeatureTable.version_id == v.id)
                .order_by(FeatureTable.name)
            )
        ]
        grants = [
            GrantView.from_row(g)
            for g in s.scalars(
                select(Grant)
                .where(Grant.version_id == v.id, Grant.revoked_at.is_(None))
                .order_by(Grant.id)
            ).unique()
        ]
        transfers = list(
            s.scalars(
                select(Transfer.transfer_id)
                .where(Transfer.version_id == v.id)
                .order_by(Transfer.id)
            )
        )
        report = json.loads(v.report.report_json) if v.report else None
        return VersionDetail(
            summary=VersionSummary.from_row(v, v.dataset.name),
            transfer_ids=transfers,
            store_location=v.store_location,
            manifest=dict(v.manifest or {}),
            series=series,
            feature_tables=features,
            grants=grants,
            report=report,
            created_by=v.created_by,
            published_by=v.published_by,
            retired_by=v.retired_by,
        )

    def search(
        self,
        text: str,
        modality: str | None = None,
        principal: Principal | None = None,
        limit: int = 50,
        *,
        now: datetime | None = None,
    ) -> list[DatasetSummary]:
        """Datasets whose name, title, description, tags, labels or body part contain every word.

        Substring match per word (trigram-indexed on PostgreSQL, LIKE on SQLite); best
        matches first: exact name, then name prefix, then title hits.
        """
        if self._sees_nothing(principal):
            return []
        now = now or utcnow()
        words = [w for w in str(text or "").lower().split() if w][:8]
        mod = None
        if modality:
            mod = modality.strip().upper()
            if not MODALITY_RE.match(mod):
                raise InvalidInput(f"bad modality {modality!r} (DICOM codes such as CT, MR, SEG)")
        limit = max(1, min(int(limit), 500))
        with self._read() as s:
            # Rank and cut to ``limit`` over narrow rows, then load only those datasets (one query).
            stmt = select(Dataset.id)
            for word in words:
                # A trigram index cannot narrow a word shorter than three letters: PostgreSQL
                # would read the whole index for it. Such words are checked on the rows the
                # other words (or a sequential scan of the narrow column) leave.
                column = Dataset.search_text if len(word) >= 3 else Dataset.search_text.concat("")
                stmt = stmt.where(column.like(f"%{_like_escape(word)}%", escape="\\"))
            restricted = principal is not None and not principal.is_admin
            if restricted or mod:
                stmt = stmt.where(Dataset.id.in_(self._dataset_ids_with(principal, now, mod)))
            phrase = " ".join(words)
            rank = []
            if phrase:
                # search_text starts with the lower-cased name and a space: exact name first,
                # then names starting with the phrase, then titles containing it.
                escaped = _like_escape(phrase)
                rank = [
                    case((Dataset.search_text.like(f"{escaped} %", escape="\\"), 0), else_=1),
                    case((Dataset.search_text.like(f"{escaped}%", escape="\\"), 0), else_=1),
                    case((func.lower(Dataset.title).like(f"%{escaped}%", escape="\\"), 0), else_=1),
                ]
            stmt = stmt.order_by(*rank, Dataset.name).limit(limit)
            return self._summaries(s, list(s.scalars(stmt)), principal, now)

    def visible_versions(
        self, principal: Principal, *, now: datetime | None = None
    ) -> list[MountableVersion]:
        """What ``principal`` may mount now: published versions granted to them or their groups."""
        now = now or utcnow()
        if not isinstance(principal, Principal):
            raise InvalidInput("visible_versions needs a Principal")
        with self._read() as s:
            rows = s.execute(
                select(Dataset.name, DatasetVersion, Grant.expires_at, Grant.mode)
                .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
                .join(Grant, Grant.version_id == DatasetVersion.id)
                .where(DatasetVersion.status == "published", *_live_grant_to(principal, now))
                .order_by(Dataset.name, DatasetVersion.version)
            ).unique()
            best: dict[tuple[str, int], MountableVersion] = {}
            for name, v, expires, mode in rows:
                key = (name, v.version)
                mode = AccessMode(mode)
                prior = best.get(key)
                if prior is not None:
                    # Several grants (user and group) may cover one version: the longest
                    # lasting, and the most open mode among them.
                    if prior.expires_at is None or (expires and prior.expires_at >= expires):
                        expires = prior.expires_at
                    if prior.mode is AccessMode.NOTEBOOK:
                        mode = AccessMode.NOTEBOOK
                best[key] = MountableVersion(
                    name=name,
                    version=v.version,
                    content_hash=v.content_hash,
                    store_location=v.store_location,
                    wrapped_key=v.wrapped_key,
                    expires_at=expires,
                    mode=mode,
                )
            return list(best.values())

    grants_for = visible_versions

    def grants(
        self, name: str, version: object, *, include_revoked: bool = False
    ) -> list[GrantView]:
        with self._read() as s:
            v = self._version_row(s, name, version)
            stmt = select(Grant).where(Grant.version_id == v.id).order_by(Grant.id)
            if not include_revoked:
                stmt = stmt.where(Grant.revoked_at.is_(None))
            return [GrantView.from_row(g) for g in s.scalars(stmt).unique()]

    def record_event(
        self, actor: str, action: str, target: str, details: dict[str, Any] | None = None
    ) -> None:
        """Append an event the catalog did not cause itself (a login, a spawn, a dataset
        mount, a download) to the same tamper-evident audit log, in a transaction of its own."""
        if not isinstance(action, str) or not action or len(action) > 64:
            raise InvalidInput(f"audit action {action!r} must be 1 to 64 characters")
        if not isinstance(target, str) or len(target) > 512:
            raise InvalidInput("audit target must be text of at most 512 characters")
        with self._tx() as s:
            self._audit(s, actor, action, target, **(details or {}))

    def audit_events(self, limit: int = 100) -> list[AuditView]:
        """The newest audit events first."""
        with self._read() as s:
            stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, int(limit)))
            return [AuditView.from_row(e) for e in s.scalars(stmt)]

    # -- curation -----------------------------------------------------------------------------

    def publish(self, name: str, version: object, *, actor: str) -> VersionSummary:
        with self._tx() as s:
            v = self._version_row(s, name, version)
            if v.status != "pending-review":
                raise Conflict(
                    f"dataset {name!r} version {v.version} is {v.status}, not pending-review"
                )
            if v.report is not None and not v.report.passed:
                raise Conflict(
                    f"dataset {name!r} version {v.version} failed validation; it cannot be published"
                )
            v.status = "published"
            v.published_at = utcnow()
            v.published_by = actor
            self._audit(s, actor, "version.publish", f"dataset:{name}@{v.version}")
            s.flush()
            return VersionSummary.from_row(v, name)

    def retire(
        self, name: str, version: object, *, actor: str, reason: str | None = None
    ) -> VersionSummary:
        """Withdraw a version for good; its grants stop giving access."""
        with self._tx() as s:
            v = self._version_row(s, name, version)
            if v.status == "retired":
                raise Conflict(f"dataset {name!r} version {v.version} is already retired")
            old = v.status
            v.status = "retired"
            v.retired_at = utcnow()
            v.retired_by = actor
            self._audit(
                s, actor, "version.retire", f"dataset:{name}@{v.version}", old=old, reason=reason
            )
            s.flush()
            return VersionSummary.from_row(v, name)

    def edit(
        self,
        name: str,
        *,
        title: str | None = None,
        description: str | None = None,
        license: str | None = None,
        tags: Iterable[str] | None = None,
        actor: str,
    ) -> DatasetSummary:
        """Curate a dataset's description; edited fields survive later versions' manifests."""
        changes: dict[str, Any] = {}
        if title is not None:
            if not title.strip():
                raise InvalidInput(f"dataset {name!r}: title must not be empty")
            changes["title"] = title.strip()[:512]
        if description is not None:
            changes["description"] = description.strip()
        if license is not None:
            changes["license"] = license.strip()[:256]
        if tags is not None:
            clean = []
            for tag in tags:
                tag = str(tag).strip()
                if not tag or len(tag) > 64:
                    raise InvalidInput(f"dataset {name!r}: bad tag {tag!r}")
                if tag not in clean:
                    clean.append(tag)
            changes["tags"] = clean
        if not changes:
            raise InvalidInput(
                f"dataset {name!r}: nothing to change (give a title, description or tag)"
            )
        with self._tx() as s:
            d = s.scalar(self._locked(select(Dataset).where(Dataset.name == name)))
            if d is None:
                raise UnknownDataset(name)
            old = {k: getattr(d, k) for k in changes}
            for key, value in changes.items():
                setattr(d, key, value)
            d.edited_fields = sorted(set(d.edited_fields or []) | set(changes))
            self._refresh_search_text(s, d)
            self._audit(s, actor, "dataset.edit", f"dataset:{name}", old=old, new=changes)
            s.flush()
            return self._summaries(s, [d.id], None, utcnow())[0]

    def grant(
        self,
        name: str,
        version: object,
        *,
        group: str | None = None,
        user: str | None = None,
        expires: str | date | datetime | None = None,
        mode: AccessMode | str = AccessMode.DESKTOP,
        actor: str,
        now: datetime | None = None,
    ) -> GrantView:
        """Give a group or a user access to one published version (renewing an existing
        grant, whose expiry and mode the new values replace).

        ``mode`` is how the version may be used (``AccessMode``): ``desktop``, pixels only,
        unless an admin marks it ``notebook``."""
        if (group is None) == (user is None):
            raise InvalidInput("grant to exactly one of a group or a user")
        try:
            mode = AccessMode(mode)
        except ValueError:
            raise InvalidInput(
                f"unknown access mode {mode!r} (one of: {', '.join(m.value for m in AccessMode)})"
            ) from None
        if group is not None:
            _check_subject(group, "group")
        if user is not None:
            _check_subject(user, "user")
        expires_at = parse_expiry(expires, now=now)
        with self._tx() as s:
            v = self._version_row(s, name, version)
            if v.status != "published":
                raise Conflict(
                    f"dataset {name!r} version {v.version} is {v.status}; only published versions can be granted"
                )
            subject = Grant.group_name == group if group is not None else Grant.user_name == user
            g = s.scalar(
                select(Grant).where(Grant.version_id == v.id, Grant.revoked_at.is_(None), subject)
            )
            who = f"group:{group}" if group is not None else f"user:{user}"
            if g is not None:
                old, old_mode = g.expires_at, g.mode
                g.expires_at = expires_at
                g.mode = mode.value
                self._audit(
                    s,
                    actor,
                    "grant.renew",
                    f"dataset:{name}@{v.version}",
                    subject=who,
                    old_expires=old.isoformat() if old else None,
                    expires=expires_at.isoformat() if expires_at else None,
                    old_mode=old_mode,
                    mode=mode.value,
                )
            else:
                g = Grant(
                    version_id=v.id,
                    version=v,
                    group_name=group,
                    user_name=user,
                    mode=mode.value,
                    expires_at=expires_at,
                    granted_by=actor,
                )
                s.add(g)
                self._audit(
                    s,
                    actor,
                    "grant.add",
                    f"dataset:{name}@{v.version}",
                    subject=who,
                    expires=expires_at.isoformat() if expires_at else None,
                    mode=mode.value,
                )
            s.flush()
            return GrantView.from_row(g)

    def revoke(
        self,
        name: str,
        version: object,
        *,
        group: str | None = None,
        user: str | None = None,
        actor: str,
    ) -> GrantView:
        if (group is None) == (user is None):
            raise InvalidInput("revoke from exactly one of a group or a user")
        with self._tx() as s:
            v = self._version_row(s, name, version)
            subject = Grant.group_name == group if group is not None else Grant.user_name == user
            g = s.scalar(
                select(Grant).where(Grant.version_id == v.id, Grant.revoked_at.is_(None), subject)
            )
            who = f"group {group}" if group is not None else f"user {user}"
            if g is None:
                raise NotFound(f"dataset {name!r} version {v.version} is not granted to {who}")
            g.revoked_at = utcnow()
            g.revoked_by = actor
            self._audit(
                s,
                actor,
                "grant.revoke",
                f"dataset:{name}@{v.version}",
                subject=who.replace(" ", ":"),
            )
            s.flush()
            return GrantView.from_row(g)

    # -- principals and API tokens -------------------------------------------------------------

    def create_token(self, name: str, role: Role, groups: Iterable[str] = (), *, actor: str) -> str:
        """Create the principal if needed (adding ``groups``) and return a new token, once."""
        _check_subject(name, "principal")
        if role not in ROLES:
            raise InvalidInput(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
        groups = [_check_subject(g, "group") for g in groups]
        token = new_token()
        with self._tx() as s:
            p = s.scalar(select(PrincipalRow).where(PrincipalRow.name == name))
            if p is None:
                p = PrincipalRow(name=name, role=role)
                s.add(p)
                s.flush()
                self._audit(s, actor, "principal.create", f"principal:{name}", role=role)
            elif p.role != role:
                raise Conflict(f"principal {name!r} exists with role {p.role}, not {role}")
            have = {g.group_name for g in p.groups}
            added = [g for g in dict.fromkeys(groups) if g not in have]
            for g in added:
                p.groups.append(PrincipalGroup(group_name=g))
            if added:
                self._audit(s, actor, "principal.groups", f"principal:{name}", added=added)
            s.add(ApiToken(principal_id=p.id, token_hash=hash_token(token)))
            self._audit(s, actor, "token.create", f"principal:{name}")
        return token

    def resolve_principal(self, token: str) -> Principal | None:
        """The principal a bearer token belongs to (API token or provider upload token)."""
        if not token:
            return None
        digest = hash_token(token)
        with self._read() as s:
            row = s.scalar(
                select(ApiToken).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
            )
            if row is not None:
                p = row.principal
                return Principal.of(p.name, p.role, (g.group_name for g in p.groups))  # type: ignore[arg-type]
            provider = s.scalar(
                select(Provider).where(Provider.token_hash == digest, Provider.active.is_(True))
            )
            if provider is not None:
                return Principal.of(provider.name, "provider")
        return None

    def get_principal(self, name: str) -> Principal:
        with self._read() as s:
            p = s.scalar(select(PrincipalRow).where(PrincipalRow.name == name))
            if p is None:
                raise NotFound(f"unknown principal {name!r}")
            return Principal.of(p.name, p.role, (g.group_name for g in p.groups))  # type: ignore[arg-type]


def _check_digests(
    name: str, chunks: Mapping[str, Sequence[bytes]], identifiers: Sequence[bytes]
) -> tuple[dict[str, list[bytes]], list[bytes]]:
    """The content index's digests, each 16 bytes (anything else is a caller's bug)."""
    out: dict[str, list[bytes]] = {}
    for path, digests in chunks.items():
        found = [bytes(d) for d in digests]
        if any(len(d) != CHUNK_DIGEST_LENGTH for d in found):
            raise InvalidInput(f"dataset {name!r}: a chunk digest of {path} is not 16 bytes")
        out[str(path)] = found
    ids = [bytes(d) for d in identifiers]
    if any(len(d) != CHUNK_DIGEST_LENGTH for d in ids):
        raise InvalidInput(f"dataset {name!r}: an identifier digest is not 16 bytes")
    return out, ids


def _take_write_lock(session: Session) -> None:
    """Hold the catalog's write lock until ``session``'s transaction ends (PostgreSQL only)."""
    transaction = session.get_transaction()
    if transaction is not None and session.info.get(_WRITE_LOCK_HELD) is transaction:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sql_text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
    session.info[_WRITE_LOCK_HELD] = session.get_transaction()


def _like_escape(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def open_catalog(url: str) -> Catalog:
    """Connect to the catalog at ``url``, upgrading its schema to the newest migration."""
    engine = create_catalog_engine(url)
    try:
        migrate.upgrade(engine)
    except Exception:
        engine.dispose()
        raise
    return Catalog(engine, url)
