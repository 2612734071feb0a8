"""Plain, detached views of catalog rows for the CLI, the API and other services.

They are built inside a session and carry no database connection, so callers may
keep them after the transaction ends and turn them into JSON with ``to_dict``.
Wrapped keys and store locations appear only where a mount needs them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from catalog import models
from catalog.models import AccessMode


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, datetime):
            out[key] = _iso(value)
        elif isinstance(value, bytes):
            continue
        elif isinstance(value, dict):
            out[key] = _jsonable(value)
        elif isinstance(value, list):
            out[key] = [_jsonable(v) if isinstance(v, dict) else v for v in value]
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class ValidationSummary:
    passed: bool
    errors: int
    warnings: int
    infos: int

    @classmethod
    def from_row(cls, row: models.ValidationReportRow | None) -> ValidationSummary | None:
        if row is None:
            return None
        return cls(row.passed, row.error_count, row.warning_count, row.info_count)

    def describe(self) -> str:
        verdict = "passed" if self.passed else "failed"
        return f"{verdict}, {self.errors} error(s), {self.warnings} warning(s)"


@dataclass(frozen=True)
class VersionSummary:
    dataset: str
    version: int
    status: str
    content_hash: str
    size_bytes: int
    file_count: int
    series_count: int
    study_count: int
    modalities: list[str]
    validation: ValidationSummary | None
    created_at: datetime | None
    published_at: datetime | None
    retired_at: datetime | None
    # The caller's access mode (researchers and students); None in an admin's view.
    access: AccessMode | None = None

    @classmethod
    def from_row(cls, v: models.DatasetVersion, dataset_name: str) -> VersionSummary:
        return cls(
            dataset=dataset_name,
            version=v.version,
            status=v.status,
            content_hash=v.content_hash,
            size_bytes=v.size_bytes,
            file_count=v.file_count,
            series_count=v.series_count,
            study_count=v.study_count,
            modalities=v.modality_list,
            validation=ValidationSummary.from_row(v.report),
            created_at=v.created_at,
            published_at=v.published_at,
            retired_at=v.retired_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    title: str
    description: str
    license: str
    modality: str
    body_part: str
    tags: list[str]
    labels: list[Any]
    provider: str | None
    versions: list[VersionSummary]
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_row(
        cls, d: models.Dataset, versions: list[models.DatasetVersion] | None = None
    ) -> DatasetSummary:
        rows = d.versions if versions is None else versions
        return cls(
            name=d.name,
            title=d.title,
            description=d.description,
            license=d.license,
            modality=d.modality,
            body_part=d.body_part,
            tags=list(d.tags or []),
            labels=list(d.labels or []),
            provider=d.provider.name if d.provider else None,
            versions=[VersionSummary.from_row(v, d.name) for v in rows],
            created_at=d.created_at,
            updated_at=d.updated_at,
        )

    @property
    def latest(self) -> VersionSummary | None:
        return self.versions[-1] if self.versions else None

    @property
    def modalities(self) -> list[str]:
        seen: dict[str, None] = {}
        for v in self.versions:
            seen.update(dict.fromkeys(v.modalities))
        return list(seen)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class GrantView:
    dataset: str
    version: int
    group: str | None
    user: str | None
    mode: AccessMode
    expires_at: datetime | None
    granted_by: str
    created_at: datetime | None
    revoked_at: datetime | None

    @property
    def subject(self) -> str:
        return f"group {self.group}" if self.group else f"user {self.user}"

    @classmethod
    def from_row(cls, g: models.Grant) -> GrantView:
        return cls(
            dataset=g.version.dataset.name,
            version=g.version.version,
            group=g.group_name,
            user=g.user_name,
            mode=AccessMode(g.mode),
            expires_at=g.expires_at,
            granted_by=g.granted_by,
            created_at=g.created_at,
            revoked_at=g.revoked_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class SeriesView:
    series_uid: str
    study_uid: str | None
    modality: str
    body_part: str
    rows: int | None
    columns: int | None
    slices: int | None
    spacing: list[float | None]
    orientation: list[Any] | None
    file_count: int
    size_bytes: int


@dataclass(frozen=True)
class FeatureTableView:
    name: str
    path: str
    rows: int | None
    columns: int | None
    column_names: list[str]


@dataclass(frozen=True)
class VersionDetail:
    """Everything a curator reviews before publishing a version."""

    summary: VersionSummary
    transfer_ids: list[str]
    store_location: str
    manifest: dict[str, Any]
    series: list[SeriesView]
    feature_tables: list[FeatureTableView]
    grants: list[GrantView]
    report: dict[str, Any] | None
    created_by: str
    published_by: str | None
    retired_by: str | None

    def to_dict(self, *, include_private: bool = True) -> dict[str, Any]:
        data = _jsonable(asdict(self))
        data["summary"] = self.summary.to_dict()
        if not include_private:
            for key in ("store_location", "transfer_ids", "grants", "created_by"):
                data.pop(key, None)
        return data


@dataclass(frozen=True)
class MountableVersion:
    """What a researcher's server needs to mount one granted version read-only."""

    name: str
    version: int
    content_hash: str
    store_location: str
    wrapped_key: bytes = field(repr=False)
    expires_at: datetime | None = None
    # The most open mode among the live grants that cover it for this principal.
    mode: AccessMode = AccessMode.DESKTOP

    def to_dict(self, *, include_key: bool = False) -> dict[str, Any]:
        data = _jsonable(asdict(self))
        if include_key:
            data["wrapped_key"] = self.wrapped_key.hex()
        return data


@dataclass(frozen=True)
class TransferView:
    transfer_id: str
    provider: str
    dataset_name: str
    k: int
    n: int
    share_length: int
    state: str
    reason: str | None
    dataset_version: int | None
    created_at: datetime | None
    updated_at: datetime | None
    report: dict[str, Any] | None

    @classmethod
    def from_row(cls, t: models.Transfer, version: int | None = None) -> TransferView:
        report = None
        if t.report_json:
            try:
                report = json.loads(t.report_json)
            except ValueError:
                report = {"unparsed": True}
        return cls(
            transfer_id=t.transfer_id,
            provider=t.provider.name,
            dataset_name=t.dataset_name,
            k=t.k,
            n=t.n,
            share_length=t.share_length,
            state=t.state,
            reason=t.reason,
            dataset_version=version,
            created_at=t.created_at,
            updated_at=t.updated_at,
            report=report,
        )

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class AuditView:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]

    @classmethod
    def from_row(cls, e: models.AuditEvent) -> AuditView:
        return cls(e.id, e.at, e.actor, e.action, e.target, dict(e.details or {}))

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))
