"""``enclave share``: provider-side key generation, split, verify and combine.

This module must stay cheap to import (the ``send``/``status`` commands are added to
the same group elsewhere): the crypto stack and rich are imported inside commands.
Results for scripts go to stdout (the transfer id, the output path); progress,
notes and warnings go to stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def share() -> None:
    """Split, verify, combine and send secret-shared datasets."""


@contextmanager
def transfer_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with throughput on stderr; silent when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda nbytes: progress.advance(task, nbytes)


def _human(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{nbytes} B"  # pragma: no cover


@share.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder for signing.key (private, 0600) and verify.key (public).",
)
def keygen(out_dir: Path) -> None:
    """Create a provider signing key pair; prints the verify key's fingerprint."""
    from secret_sharing import key_fingerprint, load_verify_key, write_keypair

    signing_path, verify_path = write_keypair(out_dir)
    fingerprint = key_fingerprint(load_verify_key(verify_path))
    click.echo(f"signing key (keep private): {signing_path}", err=True)
    click.echo(f"verify key (register with the enclave): {verify_path}", err=True)
    click.echo(fingerprint)


@share.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--k", "k", type=int, required=True, help="Shares needed to rebuild (2..n).")
@click.option("--n", "n", type=int, required=True, help="Shares to write (k..255).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--sign-key", "sign_key", required=True, type=click.Path(path_type=Path, dir_okay=False)
)
@click.option(
    "--segment-mib",
    type=click.IntRange(1, 4),
    default=4,
    show_default=True,
    help="Segment size in MiB (recorded in the shares).",
)
def split(path: Path, k: int, n: int, out_dir: Path, sign_key: Path, segment_mib: int) -> None:
    """Split the file or folder PATH into n shares; prints the transfer id."""
    from secret_sharing import load_signing_key, measure_dataset, split_dataset
    from secret_sharing.errors import ShareParameterError
    from secret_sharing.format import MIB, FormatProblem, check_parameters

    try:
        check_parameters(k, n, segment_mib * MIB)
    except FormatProblem as exc:
        raise ShareParameterError(str(exc)) from None
    signing_key = load_signing_key(sign_key)
    summary = measure_dataset(path)
    with transfer_progress(f"split {summary.name}", summary.stream_length) as advance:
        result = split_dataset(
            path,
            out_dir,
            k=k,
            n=n,
            signing_key=signing_key,
            segment_size=segment_mib * MIB,
            progress=advance,
        )
    click.echo(
        f"{summary.name}: {summary.file_count} files, {_human(summary.content_bytes)} -> "
        f"{n} shares of {_human(result.manifest.share_length)} in {out_dir} "
        f"(any {k} rebuild it)",
        err=True,
    )
    click.echo(result.transfer_id)


@share.command()
@click.argument("share_path", metavar="SHARE", type=click.Path(path_type=Path))
@click.option(
    "--verify-key", "verify_key", required=True, type=click.Path(path_type=Path, dir_okay=False)
)
def verify(share_path: Path, verify_key: Path) -> None:
    """Check one share completely on its own (signature, layout, every block)."""
    from secret_sharing import load_verify_key, verify_share

    info = verify_share(share_path, load_verify_key(verify_key))
    click.echo(
        f"ok: {share_path} is share {info.index} of {info.n} (any {info.k} rebuild) of "
        f"transfer {info.transfer_id}, {info.dataset_kind} {info.dataset_name!r}"
    )


@share.command()
@click.argument(
    "share_paths", metavar="SHARE...", nargs=-1, required=True, type=click.Path(path_type=Path)
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--verify-key", "verify_key", required=True, type=click.Path(path_type=Path, dir_okay=False)
)
def combine(share_paths: tuple[Path, ...], out_dir: Path, verify_key: Path) -> None:
    """Rebuild the dataset from any k or more shares into OUT; prints its path."""
    from secret_sharing import ShareError, combine_shares, load_verify_key, read_share_info

    key = load_verify_key(verify_key)
    total = None
    for candidate in share_paths:
        try:
            total = read_share_info(candidate).manifest.plaintext_length
            break
        except ShareError:
            continue
    with transfer_progress("combine", total) as advance:
        result = combine_shares(list(share_paths), out_dir, verify_key=key, progress=advance)
    for rejected, reason in result.rejected.items():
        click.echo(f"warning: did not use {rejected}: {reason}", err=True)
    click.echo(result.output_path)


# `send` and `status` (upload to the enclave's receivers) live with the ingestion client
# code; importing them here registers them on this group (enclave/cli/send.py).
import enclave.cli.send  # noqa: E402, F401
