"""``enclave users`` (people and roles) and ``enclave course`` (class enrolment)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import click

from enclave.errors import EnclaveError
from enclave.workspace.profiles import PEOPLE_GROUPS

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("ENCLAVE_STATE_DIR", ".enclave"),
    show_default="$ENCLAVE_STATE_DIR or .enclave",
    help="The running enclave's state directory.",
)
ROLES = tuple(PEOPLE_GROUPS)


def _settings(state_dir: Path):
    from enclave.workspace.hub import HubSettings

    if not (state_dir / "hub").is_dir():
        raise EnclaveError(
            f"{state_dir} holds no enclave: start one with `enclave up --state-dir {state_dir}`"
        )
    return HubSettings.load(state_dir.resolve())


@click.group()
def users() -> None:
    """Add people with a role (researchers, students, providers, admins) and list them."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="The hub group it joins.")
@click.option("--group", "groups", multiple=True, help="Also join this group (e.g. a project).")
@click.option(
    "--provider",
    "provider",
    default=None,
    help="For --role provider: the registered provider this person speaks for (their "
    "datasets' transparency report).",
)
@state_dir_option
def add(
    name: str, role: str, groups: tuple[str, ...], provider: str | None, state_dir: Path
) -> None:
    """Create NAME with ROLE; print the initial password and TOTP secret (shown once)."""
    from enclave.airlock.scopes import PROVIDER_GROUP_PREFIX
    from enclave.workspace.people import add_person

    if provider is not None:
        if role != "provider":
            raise EnclaveError("--provider goes with --role provider")
        groups = (*groups, PROVIDER_GROUP_PREFIX + provider)
    account = add_person(_settings(state_dir), name.lower(), role, groups=groups)
    click.echo(f"{account.name}: role {account.role}, groups {', '.join(account.groups)}")
    if account.password:
        click.echo(f"initial password: {account.password}")
        click.echo(f"TOTP secret: {account.otp_secret}  ({account.otp_uri})")
        click.echo(
            "give both to the person out of band; the password can be changed at "
            "/hub/change-password"
        )
    else:
        click.echo("already had a login: password and second factor unchanged")


@users.command("list")
@state_dir_option
def list_users(state_dir: Path) -> None:
    """People on the hub with their groups and whether a server runs."""
    from enclave.workspace.people import HubAdmin

    with HubAdmin(_settings(state_dir)) as hub:
        for user in sorted(hub.users(), key=lambda u: u["name"]):
            running = "running" if user.get("servers") else "-"
            click.echo(f"{user['name']:24} {running:8} {', '.join(sorted(user.get('groups', [])))}")


@click.group()
def course() -> None:
    """Enrol a class in a sandbox with course datasets that lapse at the course end."""


@course.command("create")
@click.argument("name")
@click.option(
    "--students",
    "roster",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    required=True,
    help="Roster CSV with a 'username' column.",
)
@click.option(
    "--datasets",
    "datasets",
    multiple=True,
    required=True,
    metavar="NAME:VERSION",
    help="A published dataset version for the class (repeat for more).",
)
@click.option(
    "--ends",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    required=True,
    help="Last day of access (YYYY-MM-DD): grants expire then, mounts vanish at the next spawn.",
)
@click.option(
    "--mode",
    type=click.Choice(["notebook", "desktop"]),
    default="notebook",
    show_default=True,
    help="How the class may use the datasets: notebook (JupyterLab in the browser; course "
    "material and open data) or desktop (pixels only: students start desktop sessions).",
)
@state_dir_option
def create(
    name: str,
    roster: Path,
    datasets: tuple[str, ...],
    ends: object,
    mode: str,
    state_dir: Path,
) -> None:
    """Create group course-NAME, student accounts from the roster, and expiring grants."""
    from enclave.workspace.people import create_course

    end_day: date = ends.date()  # type: ignore[attr-defined]
    made = create_course(
        _settings(state_dir), name, roster, list(datasets), ends=end_day, mode=mode
    )
    new = sum(1 for s in made.students if s.password)
    click.echo(
        f"course {made.name}: group {made.group}, {len(made.students)} student(s) "
        f"({new} new), datasets {', '.join(f'{n}:{v}' for n, v in made.datasets)} "
        f"in {made.mode} mode, access until {made.ends.isoformat()}"
    )
    if made.credentials_file:
        click.echo(f"initial passwords and TOTP secrets: {made.credentials_file} (root only)")
