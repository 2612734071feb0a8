"""Example notebooks, copied into a new user's home on first spawn.

The hub runs as root and writes into a home the user controls, so nothing here follows a link
the user could have planted: ``~/examples`` is created with ``mkdir`` (which refuses an existing
name, link or not), files are written through a descriptor of that new folder with
``O_NOFOLLOW | O_EXCL``, and ownership is handed to the user only after everything is written.
If ``~/examples`` exists in any form, nothing is copied: a user's edits and deletions stand.
"""

from __future__ import annotations

import os
from pathlib import Path

from enclave._data import data_path
from enclave.errors import EnclaveError

EXAMPLES_DIR = "examples"
SUFFIXES = (".ipynb", ".md")


class ExamplesError(EnclaveError):
    """The example notebooks cannot be found or installed."""


def examples_source() -> Path:
    """The shipped examples: ``$ENCLAVE_EXAMPLES_DIR``, else the data root's ``examples/``."""
    value = os.environ.get("ENCLAVE_EXAMPLES_DIR")
    folder = Path(value) if value else data_path(EXAMPLES_DIR)
    if not folder.is_dir():
        raise ExamplesError(
            f"example notebooks not found at {folder}; set ENCLAVE_EXAMPLES_DIR to their folder"
        )
    return folder


def example_files(source: Path | None = None) -> list[Path]:
    source = examples_source() if source is None else Path(source)
    return sorted(
        p
        for p in source.iterdir()
        if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith(".")
    )


def install_examples(home: Path, *, uid: int, gid: int, source: Path | None = None) -> list[Path]:
    """Copy the example notebooks into ``home/examples`` unless it exists; returns new files."""
    files = example_files(source)
    home = Path(home)
    target = home / EXAMPLES_DIR
    try:
        os.mkdir(target, 0o700)
    except FileExistsError:
        return []
    except OSError as exc:
        raise ExamplesError(f"cannot create {target}: {exc.strerror}") from None
    dir_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    written = []
    try:
        for src in files:
            fd = os.open(
                src.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd
            )
            with os.fdopen(fd, "wb") as out:
                out.write(src.read_bytes())
                os.fchown(out.fileno(), uid, gid)
            written.append(target / src.name)
        os.fchmod(dir_fd, 0o755)
        os.fchown(dir_fd, uid, gid)
    finally:
        os.close(dir_fd)
    return written
