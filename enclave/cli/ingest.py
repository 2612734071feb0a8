"""``enclave ingest`` (run the ingestion service) and ``enclave providers`` (register senders)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from enclave.errors import EnclaveError

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("ENCLAVE_STATE_DIR", ".enclave"),
    show_default="$ENCLAVE_STATE_DIR or .enclave",
    help="The enclave's state directory.",
)
db_url_option = click.option(
    "--db-url", default=None, help="Catalog database URL (default: $ENCLAVE_DB_URL or SQLite)."
)


@click.group()
def ingest() -> None:
    """Run the ingestion service (share receivers and reconstruction worker)."""


@ingest.command("serve")
@state_dir_option
@db_url_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=int,
    default=8470,
    show_default=True,
    help="Status API port; receivers take the next n ports (0: any free ports).",
)
@click.option(
    "--receivers",
    "receiver_count",
    type=int,
    default=5,
    show_default=True,
    help="Share receivers to run here (one per share index, 1..n).",
)
@click.option(
    "--receiver",
    "receiver_urls",
    multiple=True,
    metavar="URL",
    help="Use receivers already running elsewhere (in index order) instead.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log each transfer's progress.")
def serve(
    state_dir: Path,
    db_url: str | None,
    host: str,
    port: int,
    receiver_count: int,
    receiver_urls: tuple[str, ...],
    verbose: bool,
) -> None:
    """Unseal the master key and run the receivers and the reconstruction worker.

    K custodian mnemonics are read at a prompt, or one per line from standard input when it
    is not a terminal. The key is kept only in this process's memory.
    """
    from enclave import custody
    from ingestion.service import IngestService

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not custody.custody_initialised(state_dir):
        raise EnclaveError(
            f"no master key in {state_dir}: create one with `enclave keys init --state-dir "
            f"{state_dir}`, then start the service with the custodians' mnemonics "
            "(check them with `enclave keys unseal`)"
        )
    master_key = custody.read_mnemonics(state_dir, stdin=sys.stdin)
    if not 1 <= receiver_count <= 255:
        raise EnclaveError(f"--receivers must be 1..255, got {receiver_count}")
    service = IngestService(
        state_dir,
        master_key,
        host=host,
        port=port,
        receivers=len(receiver_urls) or receiver_count,
        database_url=db_url,
        receiver_urls=list(receiver_urls),
    )
    urls = service.start_receivers()
    click.echo(f"ingestion service: {service.coordinator_url}  (OpenAPI: /docs)", err=True)
    for j, url in enumerate(urls, start=1):
        click.echo(f"receiver {j}: {url}", err=True)
    click.echo(
        f"send with: enclave share send SHARES... --to {service.coordinator_url} --token TOKEN",
        err=True,
    )
    service.serve_forever()


@ingest.command("receiver")
@state_dir_option
@db_url_option
@click.option("--index", type=int, required=True, help="The share index this receiver takes.")
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="This receiver's own store directory (its own disk in production).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, required=True)
@click.option(
    "--worker-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Secret the worker presents (default: STATE/ingest/worker-token).",
)
def receiver(
    state_dir: Path,
    db_url: str | None,
    index: int,
    store: Path,
    host: str,
    port: int,
    worker_token_file: Path | None,
) -> None:
    """Run one share receiver on its own (one per host in production)."""
    from catalog import resolve_database_url
    from ingestion.service import run_receiver
    from ingestion.settings import IngestPaths

    if not 1 <= index <= 255:
        raise EnclaveError(f"--index must be 1..255, got {index}")
    token = (
        worker_token_file.read_text().strip()
        if worker_token_file
        else IngestPaths(state_dir).worker_token()
    )
    run_receiver(
        index=index,
        store_dir=store,
        host=host,
        port=port,
        database_url=resolve_database_url(state_dir, db_url),
        worker_token=token,
    )


@click.group()
def providers() -> None:
    """Register data providers and their signing keys."""


def _deid_option_codes(values: tuple[str, ...]) -> list[str]:
    """PS3.16 codes from ``--deid-option`` values (codes or names); a bad one is a usage error."""
    from ingestion.validators.deid_options import DeidOption

    codes = []
    for value in values:
        try:
            codes.append(DeidOption.parse(value).code)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--deid-option") from None
    return sorted(set(codes))


deid_option_option = click.option(
    "--deid-option",
    "deid_options",
    multiple=True,
    metavar="CODE",
    help="A de-identification option (PS3.15 E.3) the provider may declare, by PS3.16 code "
    "or name (113108 or retain-patient-characteristics); repeat for several.",
)


@providers.command("add")
@click.argument("name")
@click.option(
    "--verify-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="The provider's public verify key (PEM, from `share keygen`).",
)
@click.option(
    "--quota-gb",
    type=float,
    default=None,
    help="Bytes in flight this provider may have on each receiver (default 50 GB).",
)
@deid_option_option
@state_dir_option
@db_url_option
def providers_add(
    name: str,
    verify_key: Path,
    quota_gb: float | None,
    deid_options: tuple[str, ...],
    state_dir: Path,
    db_url: str | None,
) -> None:
    """Register NAME with its verify key and print its upload token (shown once, stored hashed)."""
    from catalog import open_catalog, resolve_database_url
    from ingestion.shares import fingerprint_of_pem

    pem = verify_key.read_bytes()
    fingerprint = fingerprint_of_pem(pem)
    catalog = open_catalog(resolve_database_url(state_dir, db_url))
    quota = None if quota_gb is None else int(quota_gb * 1e9)
    provider, token = catalog.add_provider(
        name,
        pem,
        fingerprint,
        actor="cli",
        quota_bytes=quota,
        deid_options=_deid_option_codes(deid_options),
    )
    click.echo(f"provider {name} registered (key {fingerprint[:16]}...); upload token:", err=True)
    click.echo(token)


@providers.command("set")
@click.argument("name")
@deid_option_option
@click.option(
    "--no-deid-options",
    is_flag=True,
    help="Allow no de-identification option: the Basic Profile alone.",
)
@state_dir_option
@db_url_option
def providers_set(
    name: str,
    deid_options: tuple[str, ...],
    no_deid_options: bool,
    state_dir: Path,
    db_url: str | None,
) -> None:
    """Replace the de-identification options NAME may declare (audited)."""
    from catalog import open_catalog, resolve_database_url
    from ingestion.validators.deid_options import DeidOption, describe

    if not deid_options and not no_deid_options:
        raise click.UsageError("give --deid-option CODE (repeatable) or --no-deid-options")
    if deid_options and no_deid_options:
        raise click.UsageError("--deid-option and --no-deid-options exclude each other")
    catalog = open_catalog(resolve_database_url(state_dir, db_url))
    provider = catalog.set_provider_deid_options(
        name, _deid_option_codes(deid_options), actor="cli"
    )
    allowed = [DeidOption(code) for code in provider.deid_options]
    click.echo(f"provider {name} may declare: {describe(allowed)}")


@providers.command("list")
@state_dir_option
@db_url_option
def providers_list(state_dir: Path, db_url: str | None) -> None:
    """Registered providers, their key fingerprints and allowed de-identification options."""
    from rich.console import Console
    from rich.table import Table

    from catalog import open_catalog, resolve_database_url
    from ingestion.validators.deid_options import DeidOption

    catalog = open_catalog(resolve_database_url(state_dir, db_url))
    table = Table("provider", "key", "active", "de-identification options")
    for p in catalog.list_providers():
        options = ", ".join(f"{code} {DeidOption(code).slug}" for code in (p.deid_options or []))
        table.add_row(p.name, p.fingerprint[:16], "yes" if p.active else "no", options or "-")
    Console().print(table)


@providers.command("report")
@click.argument("name")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the full report, with every inclusion proof, as JSON here.",
)
@state_dir_option
@db_url_option
def providers_report(name: str, output: Path | None, state_dir: Path, db_url: str | None) -> None:
    """Where NAME's datasets went: grants, mounts and released files, each with an inclusion
    proof against a signed audit checkpoint (check one with `enclave audit verify-proof`)."""
    from rich.console import Console
    from rich.table import Table

    from enclave.airlock.setup import open_airlock

    _, transparency = open_airlock(state_dir, db_url)
    report = transparency.report(name)
    if output is not None:
        output.write_text(json.dumps(report, indent=2) + "\n")
    table = Table("dataset", "event", "who", "when", "audit entry")
    for v in report["versions"]:
        label = f"{v['dataset']} v{v['version']}"
        for g in v["grants"]:
            table.add_row(
                label, g["action"], g["subject"] or "", g["at"], str(g["proof"]["entry"]["id"])
            )
        for m in v["mounts"]:
            table.add_row(
                label, f"mount ({m['session']})", m["user"], m["at"], str(m["proof"]["entry"]["id"])
            )
        for r in v["releases"]:
            entry = str(r["proof"]["entry"]["id"]) if r["proof"] else ""
            table.add_row(
                label,
                f"released {r['file']} (#{r['request_id']})",
                r["requester"],
                r["released_at"] or "",
                entry,
            )
    console = Console()
    console.print(table)
    console.print(
        f"signed by audit key {report['verify_key_fingerprint'][:16]}...; "
        + (f"full report with proofs: {output}" if output else "pass -o FILE for the proofs")
    )
