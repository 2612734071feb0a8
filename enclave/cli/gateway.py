"""``enclave gateway``: the provider's DICOM gateway (serve a PACS, send what it received)."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group()
def gateway() -> None:
    """Receive studies from a PACS (C-STORE), de-identify them, send them to the enclave."""


def _options(values: tuple[str, ...]) -> frozenset:
    from ingestion.validators.deid_options import parse_options

    try:
        return parse_options(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--deid-option") from None


@gateway.command("serve")
@click.option("--ae-title", required=True, help="The gateway's own AE title (called AE).")
@click.option("--port", type=int, required=True, help="TCP port to listen on.")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option(
    "--allow-calling-ae",
    "allowed",
    multiple=True,
    required=True,
    metavar="AET",
    help="A calling AE title allowed to send (repeat); others are rejected at association.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--dataset", default="pacs-import", show_default=True, help="Dataset folder name.")
@click.option(
    "--deid-option",
    "deid_options",
    multiple=True,
    metavar="CODE",
    help="A PS3.15 option to apply and declare (PS3.16 code or name); repeat for several.",
)
@click.option(
    "--no-burned-in",
    "no_burned_in",
    multiple=True,
    metavar="MODALITY",
    help="A modality (CT, MR...) whose pixels you attest carry no burned-in text.",
)
@click.option(
    "--complete-after",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds without a new instance after which a study counts as complete.",
)
@click.option("--reserve-mb", type=int, default=512, show_default=True, help="Free space kept.")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CA of client certificates: with it, peers must present one.",
)
@click.option(
    "--send-to",
    "send_to",
    multiple=True,
    metavar="URL",
    help="Send each completed study to this enclave ingestion URL (repeat for receivers).",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="File holding the provider upload token (with --send-to).",
)
@click.option(
    "--sign-key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The provider's signing key (with --send-to).",
)
@click.option("--k", "k", type=int, default=2, show_default=True, help="Shares that rebuild.")
@click.option("--n", "n", type=int, default=3, show_default=True, help="Shares written.")
def serve_cmd(
    ae_title: str,
    port: int,
    host: str,
    allowed: tuple[str, ...],
    out_dir: Path,
    dataset: str,
    deid_options: tuple[str, ...],
    no_burned_in: tuple[str, ...],
    complete_after: float,
    reserve_mb: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    send_to: tuple[str, ...],
    token_file: Path | None,
    sign_key: Path | None,
    k: int,
    n: int,
) -> None:
    """Run the Storage SCP until interrupted, showing what arrives, is de-identified and
    (with --send-to) is sent."""
    from rich.console import Console

    from ingestion.gateway import Gateway, GatewayConfig, serve
    from ingestion.gateway_send import Sender, SendTarget
    from ingestion.validators.deid_options import describe

    target = None
    if send_to:
        if token_file is None or sign_key is None:
            raise click.UsageError("--send-to needs --token-file and --sign-key")
        token = token_file.read_text().strip()
        if not token:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
        target = SendTarget(urls=send_to, token=token, signing_key=sign_key, k=k, n=n)

    config = GatewayConfig(
        ae_title=ae_title,
        port=port,
        host=host,
        out_dir=out_dir,
        allowed_calling=frozenset(allowed),
        dataset=dataset,
        options=_options(deid_options),
        no_burned_in_modalities=frozenset(m.upper() for m in no_burned_in),
        complete_after=complete_after,
        reserve_bytes=reserve_mb * 1024 * 1024,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        queue_sends=target is not None,
    )
    console = Console(stderr=True)
    gw = Gateway(config)
    gw.on_progress = lambda line: console.print(line)
    server = serve(config, gw, block=False)
    sender = None
    if target is not None:
        sender = Sender(gw, target)
        sender.on_progress = lambda line: console.print(line)
        sender.run_once()  # what a crash left queued goes first
        sender.thread()
    console.print(
        f"gateway {ae_title} on {host}:{port}, options: {describe(config.options)}; "
        f"writing {config.dataset_dir}" + (f"; sending to {', '.join(send_to)}" if sender else "")
    )
    try:
        with console.status("") as status:
            while True:
                line = (
                    f"received {gw.received}, de-identified {gw.deidentified}, "
                    f"studies waiting {len(gw.pending_studies())}"
                )
                if sender is not None:
                    line += f", sent {sender.sent}, to send {len(sender.pending())}"
                    if sender.failures:
                        line += f" (retrying in {sender.backoff():.0f} s)"
                status.update(line)
                time.sleep(1)
    finally:
        server.shutdown()
        gw.stop()
        if sender is not None:
            sender.stop()
        gw.process_ready(all_studies=False)


@gateway.command("send")
@click.argument("dataset_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--to", "urls", multiple=True, required=True, metavar="URL")
@click.option("--token", envvar="ENCLAVE_PROVIDER_TOKEN", required=True)
@click.option(
    "--sign-key", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True
)
@click.option("--k", "k", type=int, default=2, show_default=True)
@click.option("--n", "n", type=int, default=3, show_default=True)
@click.option("--shares", "shares_dir", type=click.Path(path_type=Path, file_okay=False))
def send_cmd(
    dataset_dir: Path,
    urls: tuple[str, ...],
    token: str,
    sign_key: Path,
    k: int,
    n: int,
    shares_dir: Path | None,
) -> None:
    """Split DATASET_DIR (the gateway's dataset folder) k-of-n and send it as `share send` does."""
    from enclave.cli.share import transfer_progress
    from ingestion.client import send_shares
    from ingestion.gateway import EVENTS_NAME, EventLog, GatewayEvent
    from secret_sharing import load_signing_key, measure_dataset, split_dataset

    shares_dir = shares_dir or dataset_dir.parent / ".gateway" / "shares" / dataset_dir.name
    summary = measure_dataset(dataset_dir)
    with transfer_progress(f"split {summary.name}", summary.stream_length) as advance:
        result = split_dataset(
            dataset_dir,
            shares_dir,
            k=k,
            n=n,
            signing_key=load_signing_key(sign_key),
            progress=advance,
        )
    sent = send_shares(list(result.share_paths), list(urls), token)
    EventLog(dataset_dir.parent / ".gateway" / EVENTS_NAME).record(
        GatewayEvent.SENT, files=summary.file_count, transfer=sent.transfer_id
    )
    click.echo(f"{summary.file_count} files sent as transfer {sent.transfer_id}")
