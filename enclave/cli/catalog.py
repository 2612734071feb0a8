"""``enclave catalog``: curate the dataset catalog on the enclave server.

Runs where the catalog database is (``--state-dir``; ``--db-url`` or
``$ENCLAVE_DB_URL`` for PostgreSQL). Tables for people, ``--json`` for scripts.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from enclave.errors import EnclaveError

F = Callable[..., Any]


def _state_options(f: F) -> F:
    f = click.option(
        "--db-url",
        envvar="ENCLAVE_DB_URL",
        default=None,
        help="SQLAlchemy URL of the catalog (default: STATE_DIR/catalog.sqlite).",
    )(f)
    f = click.option(
        "--state-dir",
        envvar="ENCLAVE_STATE_DIR",
        type=click.Path(file_okay=False, path_type=Path),
        required=True,
        help="The enclave's state directory (or $ENCLAVE_STATE_DIR).",
    )(f)
    return f


def _json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def _version_option(f: F) -> F:
    return click.option("--version", "version", required=True, help="Version number, e.g. 2.")(f)


def _subject_options(f: F) -> F:
    f = click.option("--user", default=None, help="A single user.")(f)
    f = click.option("--group", default=None, help="Every member of this group.")(f)
    return f


def _open(state_dir: Path, db_url: str | None) -> Any:
    from catalog import open_catalog, resolve_database_url

    url = resolve_database_url(state_dir, db_url)
    if url.startswith("sqlite") and not state_dir.is_dir():
        raise EnclaveError(
            f"state directory {state_dir} does not exist (create it, or run `enclave up` first)"
        )
    return open_catalog(url)


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}"


def _one_subject(group: str | None, user: str | None) -> None:
    if (group is None) == (user is None):
        raise click.UsageError("give exactly one of --group or --user")


def _console() -> Any:
    from rich.console import Console

    return Console()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _size(n: int) -> str:
    from catalog.api import human_size

    return human_size(n)


def _dataset_table(datasets: list[Any], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("name", "title", "modality", "versions", "latest", "files", "size"):
        table.add_column(column, justify="right" if column in ("files", "size") else "left")
    for d in datasets:
        latest = d.latest
        versions = ", ".join(f"v{v.version} {v.status}" for v in d.versions) or "-"
        table.add_row(
            d.name,
            d.title,
            " ".join(d.modalities) or d.modality or "-",
            versions,
            f"v{latest.version}" if latest else "-",
            str(latest.file_count) if latest else "-",
            _size(latest.size_bytes) if latest else "-",
        )
    return table


@click.group()
def catalog() -> None:
    """Curate the dataset catalog: list, publish, grant."""


@catalog.command("list")
@_state_options
@_json_option
def list_(state_dir: Path, db_url: str | None, as_json: bool) -> None:
    """List every dataset with its versions and their review status."""
    with _open(state_dir, db_url) as cat:
        datasets = cat.list_datasets()
    if as_json:
        _print_json([d.to_dict() for d in datasets])
        return
    if not datasets:
        click.echo("the catalog has no datasets yet")
        return
    _console().print(_dataset_table(datasets, f"{len(datasets)} dataset(s)"))


@catalog.command("show")
@click.argument("name")
@click.option("--version", "version", default=None, help="Show one version in detail.")
@_state_options
@_json_option
def show(
    name: str, version: str | None, state_dir: Path, db_url: str | None, as_json: bool
) -> None:
    """Show dataset NAME, or one of its versions (files, series, validation, grants)."""
    from rich.table import Table

    with _open(state_dir, db_url) as cat:
        dataset = cat.get_dataset(name)
        detail = cat.get_version(name, version) if version is not None else None
    if as_json:
        _print_json(detail.to_dict() if detail else dataset.to_dict())
        return
    console = _console()
    if detail is None:
        console.print(f"[bold]{dataset.name}[/bold]: {dataset.title}")
        if dataset.description:
            console.print(dataset.description)
        facts = {
            "provider": dataset.provider or "-",
            "modality": " ".join(dataset.modalities) or dataset.modality or "-",
            "body part": dataset.body_part or "-",
            "license": dataset.license or "-",
            "tags": ", ".join(dataset.tags) or "-",
        }
        for key, value in facts.items():
            console.print(f"  {key:10} {value}")
        table = Table(title="versions", title_justify="left")
        for column in (
            "version",
            "status",
            "studies",
            "series",
            "files",
            "size",
            "validation",
            "content hash",
        ):
            table.add_column(column)
        for v in dataset.versions:
            table.add_row(
                f"v{v.version}",
                v.status,
                str(v.study_count),
                str(v.series_count),
                str(v.file_count),
                _size(v.size_bytes),
                v.validation.describe() if v.validation else "-",
                v.content_hash[:16],
            )
        console.print(table)
        return
    s = detail.summary
    console.print(f"[bold]{s.dataset} v{s.version}[/bold]: {s.status}")
    facts = {
        "content hash": s.content_hash,
        "size": _size(s.size_bytes),
        "contents": f"{s.study_count} studies, {s.series_count} series, {s.file_count} files",
        "modalities": " ".join(s.modalities) or "-",
        "validation": s.validation.describe() if s.validation else "-",
        "transfers": ", ".join(detail.transfer_ids) or "-",
        "store": detail.store_location,
        "cataloged": f"{s.created_at:%Y-%m-%d %H:%M} by {detail.created_by}"
        if s.created_at
        else "-",
    }
    if s.published_at:
        facts["published"] = f"{s.published_at:%Y-%m-%d %H:%M} by {detail.published_by}"
    if s.retired_at:
        facts["retired"] = f"{s.retired_at:%Y-%m-%d %H:%M} by {detail.retired_by}"
    for key, value in facts.items():
        console.print(f"  {key:12} {value}")
    if detail.series:
        table = Table(title="series", title_justify="left")
        for column in (
            "series",
            "modality",
            "body part",
            "size (px)",
            "slices",
            "spacing (mm)",
            "files",
        ):
            table.add_column(column)
        for r in detail.series[:50]:
            spacing = " x ".join(f"{x:g}" for x in r.spacing if x is not None) or "-"
            dims = f"{r.rows}x{r.columns}" if r.rows and r.columns else "-"
            table.add_row(
                r.series_uid,
                r.modality or "-",
                r.body_part or "-",
                dims,
                str(r.slices or "-"),
                spacing,
                str(r.file_count),
            )
        console.print(table)
        if len(detail.series) > 50:
            console.print(f"  ... and {len(detail.series) - 50} more series (--json for all)")
    if detail.feature_tables:
        console.print("feature tables:")
        for t in detail.feature_tables:
            console.print(f"  {t.name}: {t.path} ({t.rows} rows, {t.columns} columns)")
    console.print("grants:" if detail.grants else "grants: none")
    for g in detail.grants:
        until = f" until {g.expires_at:%Y-%m-%d %H:%M} UTC" if g.expires_at else ""
        console.print(f"  {g.subject}, {g.mode} mode{until} (by {g.granted_by})")


@catalog.command("search")
@click.argument("text")
@click.option("--modality", default=None, help="Only datasets with this modality (CT, MR, SEG...).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@_state_options
@_json_option
def search(
    text: str, modality: str | None, limit: int, state_dir: Path, db_url: str | None, as_json: bool
) -> None:
    """Find datasets whose name, title, description, tags or body part contain every word of TEXT."""
    with _open(state_dir, db_url) as cat:
        found = cat.search(text, modality=modality, limit=limit)
    if as_json:
        _print_json([d.to_dict() for d in found])
        return
    if not found:
        click.echo(
            f"no dataset matches {text!r}" + (f" with modality {modality}" if modality else "")
        )
        return
    _console().print(_dataset_table(found, f"{len(found)} match(es) for {text!r}"))


@catalog.command("publish")
@click.argument("name")
@_version_option
@_state_options
def publish(name: str, version: str, state_dir: Path, db_url: str | None) -> None:
    """Publish a reviewed version so that it can be granted."""
    with _open(state_dir, db_url) as cat:
        v = cat.publish(name, version, actor=_actor())
    click.echo(f"published {name} v{v.version}")


@catalog.command("retire")
@click.argument("name")
@_version_option
@click.option("--reason", default=None, help="Why (kept in the audit trail).")
@_state_options
def retire(
    name: str, version: str, reason: str | None, state_dir: Path, db_url: str | None
) -> None:
    """Retire a version for good: its grants stop giving access."""
    with _open(state_dir, db_url) as cat:
        v = cat.retire(name, version, actor=_actor(), reason=reason)
    click.echo(f"retired {name} v{v.version}")


@catalog.command("edit")
@click.argument("name")
@click.option("--title", default=None)
@click.option("--description", default=None)
@click.option("--license", "license_", default=None)
@click.option("--tag", "tags", multiple=True, help="Replace the tags (repeat for several).")
@_state_options
def edit(
    name: str,
    title: str | None,
    description: str | None,
    license_: str | None,
    tags: tuple[str, ...],
    state_dir: Path,
    db_url: str | None,
) -> None:
    """Curate a dataset's title, description, licence or tags."""
    with _open(state_dir, db_url) as cat:
        cat.edit(
            name,
            title=title,
            description=description,
            license=license_,
            tags=list(tags) if tags else None,
            actor=_actor(),
        )
    click.echo(f"updated {name}")


@catalog.command("grant")
@click.argument("name")
@_version_option
@_subject_options
@click.option(
    "--expires", default=None, help="Last day of access, YYYY-MM-DD (through its end, UTC)."
)
@click.option(
    "--mode",
    type=click.Choice(["desktop", "notebook"]),
    default="desktop",
    show_default=True,
    help="desktop: only in desktop sessions, whose browser gets pixels only. notebook: also in "
    "JupyterLab in the browser, which can show the data (course material, open data).",
)
@_state_options
def grant(
    name: str,
    version: str,
    group: str | None,
    user: str | None,
    expires: str | None,
    mode: str,
    state_dir: Path,
    db_url: str | None,
) -> None:
    """Grant a group or a user access to a published version (again: change its expiry or mode)."""
    _one_subject(group, user)
    with _open(state_dir, db_url) as cat:
        g = cat.grant(
            name, version, group=group, user=user, expires=expires, mode=mode, actor=_actor()
        )
    until = f" until {g.expires_at:%Y-%m-%d %H:%M} UTC" if g.expires_at else ""
    click.echo(f"granted {name} v{g.version} to {g.subject} in {g.mode} mode{until}")


@catalog.command("revoke")
@click.argument("name")
@_version_option
@_subject_options
@_state_options
def revoke(
    name: str,
    version: str,
    group: str | None,
    user: str | None,
    state_dir: Path,
    db_url: str | None,
) -> None:
    """Revoke a group's or a user's grant on a version."""
    _one_subject(group, user)
    with _open(state_dir, db_url) as cat:
        g = cat.revoke(name, version, group=group, user=user, actor=_actor())
    click.echo(f"revoked {name} v{g.version} from {g.subject}")


@catalog.command("grants")
@click.argument("name")
@_version_option
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked grants.")
@_state_options
@_json_option
def grants(
    name: str,
    version: str,
    include_revoked: bool,
    state_dir: Path,
    db_url: str | None,
    as_json: bool,
) -> None:
    """List who may use a version."""
    with _open(state_dir, db_url) as cat:
        rows = cat.grants(name, version, include_revoked=include_revoked)
    if as_json:
        _print_json([g.to_dict() for g in rows])
        return
    if not rows:
        click.echo(f"{name} v{version} is not granted to anyone")
    for g in rows:
        until = f" until {g.expires_at:%Y-%m-%d %H:%M} UTC" if g.expires_at else ""
        revoked = f" (revoked {g.revoked_at:%Y-%m-%d})" if g.revoked_at else ""
        click.echo(f"{g.subject}, {g.mode} mode{until}{revoked}")


@catalog.command("token")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["admin", "researcher", "student", "provider"]),
    required=True,
    help="What NAME may do through the catalog API.",
)
@click.option("--group", "groups", multiple=True, help="A group NAME belongs to (repeatable).")
@_state_options
def token(
    name: str, role: str, groups: tuple[str, ...], state_dir: Path, db_url: str | None
) -> None:
    """Create principal NAME if needed and print a new API token (shown once, stored hashed)."""
    with _open(state_dir, db_url) as cat:
        secret = cat.create_token(name, role, groups, actor=_actor())
    click.echo(f"new {role} token for {name} (store it now; it is not shown again):", err=True)
    click.echo(secret)


@catalog.command("transfers")
@click.option("--provider", default=None, help="Only this provider's transfers.")
@click.option("--state", default=None, help="Only transfers in this state.")
@_state_options
@_json_option
def transfers(
    provider: str | None, state: str | None, state_dir: Path, db_url: str | None, as_json: bool
) -> None:
    """List transfers and where they stand."""
    from rich.table import Table

    with _open(state_dir, db_url) as cat:
        rows = cat.list_transfers(provider=provider, state=state)
    if as_json:
        _print_json([t.to_dict() for t in rows])
        return
    table = Table(title=f"{len(rows)} transfer(s)", title_justify="left")
    for column in ("transfer", "provider", "dataset", "k-of-n", "state", "version", "reason"):
        table.add_column(column)
    for t in rows:
        table.add_row(
            t.transfer_id,
            t.provider,
            t.dataset_name,
            f"{t.k}-of-{t.n}",
            t.state,
            f"v{t.dataset_version}" if t.dataset_version else "-",
            t.reason or "",
        )
    _console().print(table)


@catalog.command("audit")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@_state_options
@_json_option
def audit(limit: int, state_dir: Path, db_url: str | None, as_json: bool) -> None:
    """Show the newest audit events (every state change, with who made it)."""
    from rich.table import Table

    with _open(state_dir, db_url) as cat:
        events = cat.audit_events(limit)
    if as_json:
        _print_json([e.to_dict() for e in events])
        return
    table = Table(title="audit (newest first)", title_justify="left")
    for column in ("time (UTC)", "actor", "action", "target", "details"):
        table.add_column(column)
    for e in events:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.actor,
            e.action,
            e.target,
            json.dumps(e.details, sort_keys=True, default=str) if e.details else "",
        )
    _console().print(table)


@catalog.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@_state_options
def serve(host: str, port: int, state_dir: Path, db_url: str | None) -> None:
    """Serve the catalog web page and REST API (OpenAPI at /openapi.json)."""
    import uvicorn

    from catalog.api import create_app

    cat = _open(state_dir, db_url)
    try:
        uvicorn.run(create_app(cat), host=host, port=port, log_level="info")
    finally:
        cat.close()
