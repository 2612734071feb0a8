"""``enclave up`` / ``enclave down``: the embedded single-machine enclave."""

from __future__ import annotations

from pathlib import Path

import click

from enclave.errors import EnclaveError


class NotBuiltYet(EnclaveError):
    exit_code = 2


@click.command("up")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where the enclave keeps its database, stores and keys.")
def up(state_dir: Path) -> None:
    """Bring the enclave up on this machine."""
    raise NotBuiltYet(
        "the embedded enclave (JupyterHub workspaces) is not built yet; what runs today: "
        "`enclave share ...` (secret-shared transfer) and `enclave keys ...` (key custody); see docs/status.md"
    )


@click.command("down")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The state directory given to `enclave up`.")
def down(state_dir: Path) -> None:
    """Stop everything `enclave up` started."""
    raise NotBuiltYet("nothing to stop: `enclave up` is not built yet (see docs/status.md)")
