"""``enclave lineage PATH``: which run, data and code produced an output (no MONAI import)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("lineage", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--outputs",
    "outputs_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Outputs folder (default: $ENCLAVE_OUTPUTS_DIR or ~/outputs).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def lineage(path: Path, outputs_dir: Path | None, as_json: bool) -> None:
    """Show the training runs that produced PATH and whether it changed since."""
    from enclave.data.lineage import lineage as find

    found = find(path, outputs_dir=outputs_dir)
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2))
    else:
        click.echo(repr(found))
    if found.modified:
        raise SystemExit(3)
