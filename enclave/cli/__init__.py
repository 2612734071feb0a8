"""The ``enclave`` command line: one entry point, one subcommand group per area.

Subcommand modules are imported when their group is first used, so that
``enclave share ...`` on a provider's machine never imports the server stack.
"""

from __future__ import annotations

import importlib
import sys

import click

from enclave.errors import EnclaveError
from secret_sharing.allocator import tune_allocator

# group name -> (module, attribute, short help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "share": (
        "enclave.cli.share",
        "share",
        "Split, verify, combine and send secret-shared datasets.",
    ),
    "gateway": (
        "enclave.cli.gateway",
        "gateway",
        "Provider side: a DICOM gateway a PACS pushes studies to; send what it received.",
    ),
    "keys": ("enclave.cli.keys", "keys", "Enclave master key custody (SLIP-39 mnemonic shares)."),
    "catalog": (
        "enclave.cli.catalog",
        "catalog",
        "Curate the dataset catalog: list, publish, grant.",
    ),
    "audit": (
        "enclave.cli.audit",
        "audit",
        "Checkpoint, verify, prove and export the tamper-evident audit log.",
    ),
    "ingest": (
        "enclave.cli.ingest",
        "ingest",
        "Run the ingestion service (share receivers and reconstruction worker).",
    ),
    "providers": (
        "enclave.cli.ingest",
        "providers",
        "Register data providers and their signing keys.",
    ),
    "airlock": (
        "enclave.cli.airlock",
        "airlock",
        "Export results through automated checks and two-person review.",
    ),
    "k8s": (
        "enclave.cli.k8s",
        "k8s",
        "Kubernetes mode: render manifests offline, unseal the key holder, migrate.",
    ),
    "up": ("enclave.cli.up", "up", "Bring the enclave up on this machine."),
    "down": ("enclave.cli.up", "down", "Stop everything `enclave up` started."),
    "users": ("enclave.cli.users", "users", "Add workspace users with a role; list them."),
    "course": (
        "enclave.cli.users",
        "course",
        "Enrol a class with course datasets and an end date.",
    ),
    "samples": (
        "enclave.samples",
        "samples",
        "Make de-identified sample datasets for demos, tests and benchmarks.",
    ),
    "lineage": (
        "enclave.data.cli",
        "lineage",
        "Show which run, data and code produced an output file.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        module_name, attr, _ = SUBCOMMANDS[cmd_name]
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="enclave")
def cli() -> None:
    """Enclave: secret-shared medical data in, reviewed results out."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI, turning expected failures into one line on stderr."""
    tune_allocator()  # share, ingest: gigabytes through short-lived buffers
    try:
        cli.main(args=argv, prog_name="enclave", standalone_mode=False)
    except EnclaveError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # one line, as for every other error
        where = exc.ctx.command_path if exc.ctx is not None else "enclave"
        click.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        # Files that vanish, disks that fill: say which file, not a traceback.
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
