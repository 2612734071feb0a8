"""A throwaway PostgreSQL server for tests and benchmarks: initdb, pg_ctl, clean up.

The server listens only on a Unix socket inside its own private temporary directory
(no TCP), with ``trust`` authentication: only its owner, and root, can reach it.
PostgreSQL refuses to run as root, so under root the server runs as the ``postgres``
user (or ``nobody``), with the directory handed over to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TypedDict

from ingestion.service import free_port
from secret_sharing.errors import EnclaveError

BINDIR_ENV = "ENCLAVE_PG_BINDIR"
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found: install the Debian "
    "package 'postgresql' (`make system-deps`) or set ENCLAVE_PG_BINDIR"
)


class PostgresUnavailable(EnclaveError):
    """PostgreSQL binaries are missing or the temporary server would not start."""


def find_postgres_bindir() -> Path:
    """Where initdb and pg_ctl live: $ENCLAVE_PG_BINDIR, pg_config, Debian's layout, $PATH."""
    candidates: list[str] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(os.environ[BINDIR_ENV])
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(out.stdout.strip())
        except (subprocess.SubprocessError, OSError):
            pass

    def version_key(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    raise PostgresUnavailable(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root and no 'postgres' or 'nobody' user to run PostgreSQL as"
    )


class _RunAs(TypedDict, total=False):
    """The ``subprocess.run`` options that run a PostgreSQL tool as the unprivileged user."""

    user: int
    group: int
    extra_groups: list[int]
    env: dict[str, str]


class TemporaryPostgres:
    """``with TemporaryPostgres() as url:`` gives a SQLAlchemy URL to a fresh server.

    ``create_database(name)`` adds more databases (one per test, say) on the same
    server; ``url_for(name)`` names them. The server is stopped and its directory
    removed on exit, whatever happened inside the block.
    """

    def __init__(
        self,
        *,
        database: str = "enclave",
        user: str = "enclave",
        base_dir: str | os.PathLike[str] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.database = database
        self.user = user
        self.base_dir = base_dir
        self.bindir = Path(bindir) if bindir else None
        self.start_timeout = start_timeout
        self.port = 0
        self.root: Path | None = None
        self._run_as: pwd.struct_passwd | None = None
        self._started = False

    # -- paths ------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return (
            f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}&port={self.port}"
        )

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> str:
        self.start()
        return self.url

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> str:
        bindir = self.bindir or find_postgres_bindir()
        if not (bindir / "initdb").is_file() or not (bindir / "pg_ctl").is_file():
            raise PostgresUnavailable(f"no initdb/pg_ctl in {bindir}: {INSTALL_HINT}")
        self.bindir = bindir
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None
        base = self.base_dir
        if base is None and self._run_as is not None:
            # The server's user must be able to reach its directory: not under /root.
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else "/tmp"
        self.root = Path(tempfile.mkdtemp(prefix="enclave-pg-", dir=base))
        try:
            self.socket_dir.mkdir(mode=0o700)
            if self._run_as is not None:
                for path in (self.root, self.socket_dir):
                    os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                what="initdb",
            )
            options = " ".join(
                [
                    f"-p {self.port_or_pick()}",
                    f"-k {self.socket_dir}",
                    "-c listen_addresses=''",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=200",
                ]
            )
            self._run(
                [
                    str(bindir / "pg_ctl"),
                    "start",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(self.start_timeout)),
                    "-o",
                    options,
                ],
                what="pg_ctl start",
            )
            self._started = True
            self._psql(f'CREATE DATABASE "{self.database}"', database="postgres")
        except BaseException:
            self.stop()
            raise
        return self.url

    def port_or_pick(self) -> int:
        if not self.port:
            self.port = free_port()
        return self.port

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if self._started and self.bindir is not None:
                self._run(
                    [
                        str(self.bindir / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "immediate",
                        "-w",
                    ],
                    what="pg_ctl stop",
                    check=False,
                )
        finally:
            self._started = False
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- databases --------------------------------------------------------------------------

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database ``name`` (optionally a copy of ``template``) and return its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad database name {name!r}")
        clause = f' TEMPLATE "{template}"' if template else ""
        self._psql(f'CREATE DATABASE "{name}"{clause}', database="postgres")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', database="postgres")

    def _psql(self, sql: str, *, database: str) -> None:
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=self.user,
            dbname=database,
            autocommit=True,
        ) as conn:
            conn.execute(sql)

    def _run(self, argv: list[str], *, what: str, check: bool = True) -> None:
        kwargs: _RunAs = {}
        if self._run_as is not None:
            kwargs = {
                "user": self._run_as.pw_uid,
                "group": self._run_as.pw_gid,
                "extra_groups": [],
                "env": {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "HOME": str(self.root),
                    "LC_ALL": "C",
                },
            }
        proc = subprocess.run(
            argv,
            cwd=str(self.root),
            capture_output=True,
            text=True,
            timeout=self.start_timeout + 30,
            **kwargs,
        )
        if check and proc.returncode != 0:
            log = ""
            if self.root is not None and self.log_file.exists():
                log = self.log_file.read_text(errors="replace")[-2000:]
            raise PostgresUnavailable(
                f"{what} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}{' / log: ' + log if log else ''}"
            )
