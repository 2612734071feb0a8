"""``enclave share send`` and ``enclave share status``: upload shares, see where they stand.

Registered on the ``share`` group by an import at the end of ``enclave/cli/share.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from enclave.cli.share import share

token_option = click.option(
    "--token",
    envvar="ENCLAVE_PROVIDER_TOKEN",
    required=True,
    help="Your provider upload token (or $ENCLAVE_PROVIDER_TOKEN).",
)


@share.command("send")
@click.argument(
    "share_paths",
    nargs=-1,
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
)
@click.option(
    "--to",
    "urls",
    multiple=True,
    required=True,
    metavar="URL",
    help="The ingestion service URL, or receiver URLs (share j goes to receiver j).",
)
@token_option
@click.option(
    "--all-shares",
    is_flag=True,
    help="Send the spare shares at once too, instead of only if the enclave needs "
    "them (a corrupt or missing share among the first k).",
)
def send(
    share_paths: tuple[Path, ...], urls: tuple[str, ...], token: str, all_shares: bool
) -> None:
    """Send shares to the enclave's receivers; rerun the same command to resume.

    Shares 1..k go first; then the command waits until the enclave has checked them and
    sends the spares only if one was corrupt or missing. Any k rebuild the dataset, so
    this uploads the dataset's size once instead of n/k times.
    """
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from ingestion.client import send_shares

    tasks: dict[int, TaskID] = {}
    states: list[str] = []
    with Progress(
        TextColumn("share {task.fields[index]}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=not os.isatty(2),
    ) as progress:

        def update(index: int, done: int, total: int) -> None:
            if index not in tasks:
                tasks[index] = progress.add_task("", total=total, index=index)
            progress.update(tasks[index], completed=done)

        def waiting(state: str) -> None:
            if not states:
                states.append(state)
                progress.console.print("first k shares sent; waiting for the enclave to check them")
            if state != states[-1]:
                states.append(state)
                progress.console.print(f"transfer {state}")

        result = send_shares(
            list(share_paths),
            list(urls),
            token,
            progress=update,
            spares="all" if all_shares else "on-demand",
            waiting=waiting,
        )
    for u in sorted(result.uploads, key=lambda u: u.index):
        how = {
            "sent": f"sent ({u.sent_bytes} bytes"
            + (f", resumed at {u.resumed_from})" if u.resumed_from else ")"),
            "already-complete": "already on the receiver",
            "not-needed": "not needed (the enclave verified the first k shares)",
        }.get(u.outcome, f"not needed: transfer {u.outcome.removeprefix('already-')}")
        click.echo(f"share {u.index} -> {u.url}: {how}")
    click.echo(f"transfer {result.transfer_id}" + (f": {result.state}" if result.state else ""))


@share.command("status")
@click.argument("transfer_id")
@click.option(
    "--to",
    "urls",
    multiple=True,
    required=True,
    metavar="URL",
    help="The ingestion service URL (or receiver URLs).",
)
@token_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(transfer_id: str, urls: tuple[str, ...], token: str, as_json: bool) -> None:
    """Show where a transfer stands: receiving, reconstructing, validating, quarantined
    (with reasons) or cataloged (with dataset and version)."""
    from ingestion.client import transfer_status

    info = transfer_status(transfer_id, list(urls), token)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    click.echo(f"transfer {transfer_id}: {info.get('state')}")
    if info.get("dataset"):
        click.echo(f"  dataset: {info['dataset']} (k={info.get('k')} of n={info.get('n')})")
    version = info.get("version")
    if version:
        click.echo(
            f"  cataloged as {version.get('dataset')} version {version.get('version')} "
            f"({version.get('status')})"
        )
    if info.get("reason"):
        click.echo(f"  reason: {info['reason']}")
    for share_info in info.get("shares", []):
        length = share_info.get("length") or 0
        pct = f"{100 * share_info.get('received', 0) / length:.0f}%" if length else "-"
        extra = f" ({share_info['reason']})" if share_info.get("reason") else ""
        click.echo(
            f"  share {share_info.get('index')}: {share_info.get('state')} "
            f"{share_info.get('received', 0)}/{length} bytes {pct}{extra}"
        )
    if info.get("report"):
        click.echo(f"  report: {urls[0].rstrip('/')}{info['report']}")
