"""``enclave k8s``: Kubernetes mode: render every manifest offline, unseal, migrate, load.

``render`` needs no cluster; ``unseal`` talks to the key holder (through ``kubectl
port-forward`` or an internal address); ``migrate`` is what the Alembic Job runs.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

import click

from enclave.errors import EnclaveError


@click.group("k8s")
def k8s() -> None:
    """Kubernetes mode: Zero-to-JupyterHub values, our objects and user pods."""


@k8s.command("render")
@click.option(
    "--out",
    "-o",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the YAML files to (created).",
)
@click.option(
    "--values",
    "values",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A site's settings, merged over the shipped deploy/kubernetes/enclave.yaml.",
)
def render_command(out: Path, values: Path | None) -> None:
    """Write the chart's values, our objects and each profile's pod as YAML (offline)."""
    from enclave.kubernetes.render import render
    from enclave.kubernetes.settings import KubeSettings

    settings = KubeSettings.load(values)
    for path in render(settings, out):
        click.echo(str(path))


@k8s.command("unseal")
@click.option("--url", required=True, help="The key holder, e.g. http://127.0.0.1:8472")
def unseal_command(url: str) -> None:
    """Give the key holder this custodian's mnemonic (asked at a prompt, or one line on stdin)."""
    import httpx

    if sys.stdin.isatty():
        mnemonic = getpass.getpass("your mnemonic: ")
    else:
        mnemonic = sys.stdin.readline()
    if not mnemonic.strip():
        raise EnclaveError("no mnemonic given")
    try:
        reply = httpx.post(f"{url.rstrip('/')}/unseal", json={"mnemonic": mnemonic}, timeout=30)
    except httpx.HTTPError as exc:
        raise EnclaveError(f"the key holder at {url} does not answer ({exc})") from None
    try:
        body = reply.json()
    except ValueError:
        raise EnclaveError(f"the key holder at {url} answered {reply.status_code}") from None
    if reply.status_code != 200:
        raise EnclaveError(f"the key holder refused: {body.get('error', body)}")
    if body["sealed"]:
        click.echo(
            f"accepted: {body['given']} of {body['threshold']} mnemonics given; still sealed"
        )
    else:
        click.echo("unsealed")


@k8s.command("migrate")
@click.option("--database-url", required=True, envvar="ENCLAVE_DB_URL")
def migrate_command(database_url: str) -> None:
    """Upgrade the catalog database to the newest Alembic revision (the migration Job)."""
    from catalog import migrate
    from catalog.db import create_catalog_engine

    engine = create_catalog_engine(database_url)
    try:
        migrate.upgrade(engine)
        click.echo(f"catalog schema at {migrate.current_revision(engine)}")
    finally:
        engine.dispose()
