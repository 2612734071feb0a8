"""``enclave up`` / ``enclave down``: the embedded single-machine enclave."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from enclave.workspace.hub import HubSettings

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the enclave keeps its database, stores, keys and hub state.",
)


@click.command("up")
@state_dir_option
@click.option("--public-ip", default=None, help="Address the proxy listens on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Public port of the proxy (default 8000).")
@click.option("--no-demo", is_flag=True, help="Skip the demo journey on a first start.")
def up(state_dir: Path, public_ip: str | None, port: int | None, no_demo: bool) -> None:
    """Start JupyterHub, the catalog, ingestion and the idle culler; print how to log in.

    On a first start a DEMO master key is created (mnemonics in a root-only file, labelled
    demo-only) and, with no data yet, a demo provider sends a sample CT dataset through the
    secret-shared path; it is published and granted to a demo researcher.
    """
    from enclave.workspace import launcher
    from enclave.workspace.hub import HubSettings, check_workspace_paths

    def say(message: str) -> None:
        click.echo(message, err=True)

    launcher.check_system()
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    settings = HubSettings.load(state_dir)
    if public_ip:
        settings.public_ip = public_ip
    if port:
        settings.public_port = port
    settings.save()
    if launcher.hub_pid(settings) is not None:
        click.echo(f"the enclave is already up: {settings.public_url}")
        return
    check_workspace_paths(settings)
    launcher.check_ports_free(settings)
    mnemonics = launcher.custodian_mnemonics(state_dir, say)
    say("starting JupyterHub, proxy, catalog, ingestion and idle culler ...")
    try:
        _start(settings, mnemonics, no_demo=no_demo, say=say)
    except BaseException:
        # Nothing may stay half-running: stop what was started before the error is shown.
        say("enclave up failed; stopping what it started ...")
        left = launcher.stop_everything(settings).still_running
        if left:
            say(
                "still running (stop them with `kill -9 PID`): "
                + "; ".join(f"pid {pid}: {cmd}" for pid, cmd in sorted(left.items()))
            )
        else:
            say("nothing of this enclave is left running")
        raise


def _start(
    settings: HubSettings, mnemonics: list[str], *, no_demo: bool, say: Callable[[str], None]
) -> None:
    """Start the hub, create the first admin and run the demo journey; print how to log in."""
    from enclave.workspace import launcher
    from enclave.workspace.people import add_person

    state_dir = Path(settings.state_dir)
    pid = launcher.start_hub(settings, mnemonics)
    admin = add_person(settings, "admin", "admin")
    if admin.password:
        launcher.write_demo_secret(
            state_dir,
            "first admin login",
            [
                "username: admin",
                f"password: {admin.password}",
                f"totp secret: {admin.otp_secret}",
                f"totp uri: {admin.otp_uri}",
            ],
        )
    demo = None if no_demo else launcher.run_demo_journey(settings, say)
    click.echo(f"\nEnclave is up (hub pid {pid}): {settings.public_url}")
    if admin.password:
        click.echo(
            "First admin: username 'admin', password "
            f"{admin.password}\n  TOTP secret {admin.otp_secret} (add it to an "
            f"authenticator app: {admin.otp_uri})\n  and enter the 6-digit code at login."
        )
    else:
        click.echo("Admin: log in as 'admin' (credentials were printed at the first start).")
    if demo is not None:
        click.echo(
            f"Demo: log in as 'demo-researcher' (see {launcher.demo_secrets_path(state_dir)}) "
            f"and start a desktop to find ~/datasets/{demo.dataset}/{demo.version} (granted "
            f"desktop: only pixels reach the browser); the catalog is at "
            f"{settings.public_url}services/catalog/"
        )
    click.echo(f"Logs: {settings.hub_dir / 'hub.log'}   Stop: enclave down --state-dir {state_dir}")


@click.command("down")
@state_dir_option
def down(state_dir: Path) -> None:
    """Stop everything `enclave up` started (state persists)."""
    from enclave.workspace import launcher
    from enclave.workspace.hub import HubSettings

    launcher.check_system()
    settings = HubSettings.load(state_dir.resolve())
    stopped = launcher.stop_everything(settings)
    click.echo("enclave stopped" if stopped.hub_was_running else "the enclave was not running")
    if stopped.leftovers:
        click.echo(f"removed leftovers: {', '.join(stopped.leftovers)}")
    if stopped.killed:
        click.echo(
            "ended processes that outlived the hub: "
            + "; ".join(f"pid {pid}: {cmd}" for pid, cmd in sorted(stopped.killed.items()))
        )
    if stopped.still_running:
        raise click.ClickException(
            "still running after SIGKILL: "
            + "; ".join(f"pid {pid}: {cmd}" for pid, cmd in sorted(stopped.still_running.items()))
        )
