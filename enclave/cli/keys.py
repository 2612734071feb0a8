"""``enclave keys``: create and unseal the enclave master key."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from enclave import custody

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The enclave's state directory (holds the key check value, never the key).",
)


@click.group()
def keys() -> None:
    """Enclave master key custody (SLIP-39 mnemonic shares)."""


@keys.command("init")
@state_dir_option
@click.option(
    "--custodians", type=int, required=True, help="Number of people who each hold one share."
)
@click.option("--threshold", type=int, required=True, help="How many shares unseal the enclave.")
def init(state_dir: Path, custodians: int, threshold: int) -> None:
    """Create the master key and print one mnemonic share per custodian, one per line.

    Hand each line to a different custodian; they are printed once and not stored.
    """
    mnemonics = custody.init_custody(state_dir, custodians=custodians, threshold=threshold)
    click.echo(
        f"master key created; {threshold} of these {custodians} mnemonics unseal it "
        "(give one to each custodian, they are not stored):",
        err=True,
    )
    for mnemonic in mnemonics:
        click.echo(mnemonic)


@keys.command("unseal")
@state_dir_option
def unseal(state_dir: Path) -> None:
    """Check K mnemonics (prompt, or one per line on standard input) against this enclave.

    Services unseal the same way when they start; this command lets custodians check
    their shares without starting anything.
    """
    custody.read_mnemonics(state_dir, stdin=sys.stdin)
    click.echo("unsealed: the mnemonics match this enclave's master key")


@keys.command("status")
@state_dir_option
def status(state_dir: Path) -> None:
    """Show whether a master key exists and how many custodians unseal it."""
    if not custody.custody_initialised(state_dir):
        click.echo(f"no master key in {state_dir} (run `enclave keys init`)")
        return
    record = custody.CustodyRecord.load(state_dir)
    click.echo(
        f"master key created {record.created_at}; {record.threshold} of {record.custodians} "
        "custodian mnemonics unseal it"
    )
