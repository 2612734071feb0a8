"""Suite-wide fixtures and markers. Area fixtures live in each tests/<area>/conftest.py.

Markers (``-m``): ``root``, ``browser``, ``postgres`` and ``slow``. Modules and tests mark
themselves where the need is theirs; the markers a shared fixture implies are added here, so
a test that takes the fixture is selected with it however it is written.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

#: Fixtures that need root: they create network namespaces, Unix users or nftables rules.
ROOT_FIXTURES = frozenset({"as_root"})
#: Fixtures that start or use the temporary PostgreSQL server.
POSTGRES_FIXTURES = frozenset({"postgres_server", "migrated_template", "fresh_postgres_database"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & ROOT_FIXTURES:
            item.add_marker(pytest.mark.root)
        callspec = getattr(item, "callspec", None)
        # The catalog fixture runs each test on SQLite and on PostgreSQL (its "postgresql"
        # parameter asks for the server at run time, which the closure does not show).
        if names & POSTGRES_FIXTURES or (
            callspec is not None and "postgresql" in callspec.params.values()
        ):
            item.add_marker(pytest.mark.postgres)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_enclave(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., CliResult]:
    """Run the ``enclave`` CLI in-process as a user would, with optional standard input."""
    from enclave.cli import main

    def run(*args: str, stdin: str | None = None) -> CliResult:
        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run
