"""People and courses: hub accounts with a role group, local passwords with TOTP, class rosters.

``enclave users add`` and ``enclave course create`` talk to the running hub's REST API with the
``enclave-admin`` service token (``STATE_DIR/hub/admin-service-token``, root only), and write the
NativeAuthenticator record (bcrypt password, authorized, two-factor secret) into the hub
database, so a new person can log in at once with the password and an authenticator app.
"""

from __future__ import annotations

import csv
import os
import re
import secrets
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from enclave.errors import EnclaveError
from enclave.workspace.hub import HubSettings, admin_token
from enclave.workspace.profiles import PEOPLE_GROUPS

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
COURSE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
COURSE_GROUP_PREFIX = "course-"


class PeopleError(EnclaveError):
    """A person or course cannot be added as asked."""


@dataclass(frozen=True)
class NewAccount:
    name: str
    role: str
    password: str | None  # None: the person existed already and keeps their password
    otp_secret: str | None
    groups: tuple[str, ...] = ()

    @property
    def otp_uri(self) -> str | None:
        if not self.otp_secret:
            return None
        return f"otpauth://totp/Enclave:{quote(self.name)}?secret={self.otp_secret}&issuer=Enclave"


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise PeopleError(
            f"user name {name!r} is not allowed: use 1-32 lower-case letters, digits, '.', '_' or '-'"
        )
    return name


class HubAdmin:
    """The hub's REST API as the ``enclave-admin`` service."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.client = httpx.Client(
            base_url=f"{settings.public_url.rstrip('/')}/hub/api",
            headers={"Authorization": f"token {admin_token(settings)}"},
            timeout=30,
        )

    def __enter__(self) -> HubAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            reply = self.client.request(method, path, **kw)
        except httpx.HTTPError:
            raise PeopleError(
                f"the hub at {self.settings.public_url} does not answer: start the enclave with "
                f"`enclave up --state-dir {self.settings.state_dir}`"
            ) from None
        if reply.status_code >= 400 and reply.status_code != 409:
            raise PeopleError(
                f"hub refused {method} {path}: {reply.status_code} {reply.text[:200]}"
            )
        return reply

    def ensure_user(self, name: str) -> None:
        self._call("POST", f"/users/{name}")

    def ensure_group(self, group: str) -> None:
        self._call("POST", f"/groups/{group}")

    def add_to_group(self, group: str, names: list[str]) -> None:
        self._call("POST", f"/groups/{group}/users", json={"users": names})

    def users(self) -> list[dict[str, Any]]:
        return self._call("GET", "/users").json()

    def groups(self) -> list[dict[str, Any]]:
        return self._call("GET", "/groups").json()


def _set_local_login(settings: HubSettings, name: str) -> tuple[str | None, str | None]:
    """Create the NativeAuthenticator record (authorized, 2FA) if missing; return new secrets."""
    import bcrypt
    from nativeauthenticator.orm import UserInfo
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(f"sqlite:///{settings.hub_dir / 'jupyterhub.sqlite'}")
    try:
        with Session(engine) as session:
            if session.query(UserInfo).filter(UserInfo.username == name).first() is not None:
                return None, None
            password = secrets.token_urlsafe(12)
            info = UserInfo(
                username=name,
                password=bcrypt.hashpw(password.encode(), bcrypt.gensalt()),
                is_authorized=True,
                has_2fa=True,
            )
            session.add(info)
            session.commit()
            return password, info.otp_secret
    finally:
        engine.dispose()


def add_person(
    settings: HubSettings, name: str, role: str, *, groups: tuple[str, ...] = ()
) -> NewAccount:
    """A hub user in the role's group (and ``groups``), able to log in with password + TOTP."""
    check_name(name)
    if role not in PEOPLE_GROUPS:
        raise PeopleError(f"role {role!r} is not one of {', '.join(sorted(PEOPLE_GROUPS))}")
    all_groups = (PEOPLE_GROUPS[role], *groups)
    with HubAdmin(settings) as hub:
        hub.ensure_user(name)
        for group in all_groups:
            hub.ensure_group(group)
            hub.add_to_group(group, [name])
    password, otp = _set_local_login(settings, name)
    return NewAccount(name, role, password, otp, tuple(all_groups))


def read_roster(path: Path) -> list[str]:
    """User names from a roster CSV (a ``username`` column; ``email`` etc. are ignored)."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "username" not in [
                f.strip().lower() for f in reader.fieldnames
            ]:
                raise PeopleError(f"{path}: the roster needs a 'username' column")
            key = next(f for f in reader.fieldnames if f.strip().lower() == "username")
            names = []
            for line, row in enumerate(reader, start=2):
                name = (row.get(key) or "").strip().lower()
                if not name:
                    raise PeopleError(f"{path} line {line}: empty username")
                try:
                    check_name(name)
                except PeopleError as exc:
                    raise PeopleError(f"{path} line {line}: {exc}") from None
                names.append(name)
    except FileNotFoundError:
        raise PeopleError(f"roster {path} does not exist") from None
    if not names:
        raise PeopleError(f"{path}: the roster lists no students")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise PeopleError(f"{path}: student(s) listed twice: {', '.join(dupes)}")
    return names


def parse_dataset_ref(ref: str) -> tuple[str, int]:
    name, sep, version = ref.rpartition(":")
    if not sep or not name or not version.isdigit():
        raise PeopleError(f"dataset {ref!r} must be NAME:VERSION, e.g. lung-ct:1")
    return name, int(version)


@dataclass(frozen=True)
class Course:
    name: str
    group: str
    ends: date
    students: list[NewAccount]
    datasets: list[tuple[str, int]]
    credentials_file: Path | None
    mode: str = "notebook"


def create_course(
    settings: HubSettings,
    course: str,
    roster: Path,
    datasets: list[str],
    *,
    ends: date,
    mode: str = "notebook",
    actor: str = "cli",
    today: date | None = None,
) -> Course:
    """Enrol a class: student accounts, a ``course-NAME`` group, grants that lapse at ``ends``.

    A course's datasets are course material: granted in ``notebook`` mode unless ``mode`` says
    ``desktop`` (students then work on them in desktop sessions)."""
    from catalog.db import resolve_database_url
    from catalog.service import open_catalog

    if not COURSE_RE.match(course or ""):
        raise PeopleError(f"course name {course!r}: use lower-case letters, digits, '_' or '-'")
    today = today or date.today()
    if ends <= today:
        raise PeopleError(f"course end date {ends.isoformat()} is not in the future")
    refs = [parse_dataset_ref(r) for r in datasets]
    if not refs:
        raise PeopleError("a course needs at least one --datasets NAME:VERSION")
    names = read_roster(Path(roster))
    group = COURSE_GROUP_PREFIX + course
    url = settings.catalog_url or resolve_database_url(Path(settings.state_dir))
    with open_catalog(url) as catalog:
        for name, version in refs:  # fail before anyone is enrolled if a dataset is wrong
            status = catalog.get_version(name, version).summary.status
            if status != "published":
                raise PeopleError(f"dataset {name}:{version} is {status}; publish it first")
        accounts = [add_person(settings, n, "student", groups=(group,)) for n in names]
        expires = datetime.combine(ends, datetime.min.time())
        for name, version in refs:
            catalog.grant(name, version, group=group, expires=expires, mode=mode, actor=actor)
    creds = None
    fresh = [a for a in accounts if a.password]
    if fresh:
        creds = Path(settings.state_dir) / "courses" / f"{course}-credentials.csv"
        creds.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(creds.parent, 0o700)
        with open(creds, "w", newline="") as fh:
            os.chmod(creds, 0o600)
            writer = csv.writer(fh)
            writer.writerow(["username", "initial_password", "totp_secret", "totp_uri"])
            for a in fresh:
                writer.writerow([a.name, a.password, a.otp_secret, a.otp_uri])
    return Course(course, group, ends, accounts, refs, creds, mode)
