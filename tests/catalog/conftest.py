"""Catalog fixtures: every catalog test runs on SQLite and on a real, temporary PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog, default_database_url, open_catalog
from tests.postgres_server import PostgresUnavailable, TemporaryPostgres

PEM = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAtest\n-----END PUBLIC KEY-----\n"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TemporaryPostgres]:
    """One PostgreSQL server for the whole session; missing PostgreSQL fails, never skips."""
    server = TemporaryPostgres()
    try:
        server.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"the catalog tests need PostgreSQL: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def migrated_template(postgres_server: TemporaryPostgres) -> str:
    """A database at head that per-test databases are copied from (much faster than migrating)."""
    name = "catalog_template"
    url = postgres_server.create_database(name)
    open_catalog(url).close()
    return name


@pytest.fixture
def fresh_postgres_database(postgres_server: TemporaryPostgres) -> Iterator[str]:
    """An empty PostgreSQL database (no schema), for migration tests."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A catalog database URL at head: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = default_database_url(tmp_path)
        open_catalog(url).close()
        yield url
        return
    server: TemporaryPostgres = request.getfixturevalue("postgres_server")
    template: str = request.getfixturevalue("migrated_template")
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name, template=template)
    yield url
    server.drop_database(name)


@pytest.fixture
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path, catalog_url: str) -> str:
    """An empty database of the same dialect as ``catalog_url``."""
    if catalog_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'empty.sqlite'}"
    return request.getfixturevalue("fresh_postgres_database")


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = open_catalog(catalog_url)
    yield cat
    cat.close()


@pytest.fixture
def hospital(catalog: Catalog) -> tuple[Any, str]:
    """A registered provider and its upload token."""
    return catalog.add_provider("st-mary", PEM, "SHA256:stmary", actor="admin:test")


def dicom_files(series_uid: str, study_uid: str, count: int, modality: str = "CT") -> list[dict]:
    return [
        {
            "path": f"{series_uid}/{i:04d}.dcm",
            "size": 1000 + i,
            "sha256": hashlib.sha256(f"{series_uid}/{i}".encode()).hexdigest(),
            "kind": "dicom",
            "study_uid": study_uid,
            "series_uid": series_uid,
            "sop_instance_uid": f"{series_uid}.{i}",
            "modality": modality,
        }
        for i in range(count)
    ]


def passing_report(warnings: int = 0) -> str:
    findings = [
        {"check": "dicom.conformance", "severity": "warning", "message": "odd slice spacing"}
    ] * warnings
    return json.dumps(
        {
            "dataset": "x",
            "passed": True,
            "counts": {"warning": warnings} if warnings else {},
            "findings": findings,
        }
    )


@pytest.fixture
def ingest(catalog: Catalog, hospital: tuple[Any, str]) -> Callable[..., Any]:
    """Record a transfer and catalog it as ingestion would; returns the DatasetVersion."""

    def _ingest(
        name: str = "lung-ct",
        *,
        transfer_id: str | None = None,
        content_hash: str | None = None,
        title: str = "Lung CT screening",
        description: str = "Low-dose chest CT from the screening programme",
        modality: str = "CT",
        tags: tuple[str, ...] = ("lung", "screening"),
        report_json: str | None = None,
        provider: Any = None,
        body_part: str = "CHEST",
    ) -> Any:
        transfer_id = transfer_id or f"tr-{uuid.uuid4().hex[:10]}"
        provider = provider or hospital[0]
        catalog.record_transfer(
            transfer_id, provider, dataset_name=name, k=3, n=5, share_length=4096
        )
        files = dicom_files("1.2.3.1", "1.2.3", 4, modality) + dicom_files(
            "1.2.3.2", "1.2.3", 3, modality
        )
        files.append({"path": "clinical.csv", "size": 200, "sha256": "a" * 64, "kind": "table"})
        series = [
            {
                "series_uid": uid,
                "study_uid": "1.2.3",
                "modality": modality,
                "rows": 512,
                "columns": 512,
                "slices": n,
                "spacing": [0.7, 0.7, 2.5],
                "orientation": [1, 0, 0, 0, 1, 0],
                "body_part": body_part,
            }
            for uid, n in (("1.2.3.1", 4), ("1.2.3.2", 3))
        ]
        return catalog.catalog_version(
            transfer_id,
            manifest={
                "name": name,
                "title": title,
                "description": description,
                "license": "CC-BY-4.0",
                "modality": modality,
                "body_part": body_part,
                "tags": list(tags),
                "labels": ["nodule"],
            },
            content_hash=content_hash or hashlib.sha256(transfer_id.encode()).hexdigest(),
            size_bytes=sum(f["size"] for f in files),
            store_location=f"store/{transfer_id}",
            wrapped_key=b"wrapped:" + transfer_id.encode(),
            files=files,
            series=series,
            report_json=report_json if report_json is not None else passing_report(1),
            feature_tables=[
                {
                    "name": "radiomics",
                    "path": "features/radiomics.parquet",
                    "rows": 7,
                    "columns": ["a", "b", "c"],
                }
            ],
            actor="ingestion:worker",
        )

    return _ingest
