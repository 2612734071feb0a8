"""Fixtures for the secret-shared transfer tests: provider keys, datasets, transfers."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from secret_sharing import generate_signing_key, split_dataset
from secret_sharing.format import MIB


@pytest.fixture(scope="session")
def provider_key():
    """The hospital's signing key (registered with the enclave as its verify key)."""
    return generate_signing_key()


@pytest.fixture(scope="session")
def other_provider_key():
    """A different provider's key: its shares must not pass as the hospital's."""
    return generate_signing_key()


def pseudo_random_bytes(size: int, seed: int) -> bytes:
    """Incompressible, reproducible bytes (a seeded PRNG, not os.urandom per byte)."""
    return random.Random(seed).randbytes(size)


def write_tree(root: Path, tree: dict) -> Path:
    """Create files (bytes values) and folders (dict values) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, value in tree.items():
        path = root / name
        if isinstance(value, dict):
            write_tree(path, value)
        else:
            path.write_bytes(value)
    return root


def tree_of(root: Path) -> dict:
    """The dataset as a nested dict (names -> bytes or dict), for bit-for-bit comparison."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    result = {}
    for child in sorted(root.iterdir()):
        result[child.name] = tree_of(child)[child.name] if child.is_file() else tree_of(child)
    return result


@pytest.fixture
def radiology_study(tmp_path) -> Path:
    """A small study folder: nested series, an empty file, an empty folder, non-ASCII names."""
    return write_tree(
        tmp_path / "study-0042",
        {
            "README.txt": b"CT head, de-identified\n",
            "series-1": {
                "IM-0001.dcm": pseudo_random_bytes(5000, 1),
                "IM-0002.dcm": pseudo_random_bytes(7001, 2),
            },
            "séries-é": {"notes-ü.txt": "Bildgebung – 画像".encode()},
            "empty.dat": b"",
            "empty-folder": {},
        },
    )


@pytest.fixture
def multi_segment_study(tmp_path) -> Path:
    """About 2.3 MiB: three 1 MiB segments, so tampering can hit the middle of a stream."""
    return write_tree(
        tmp_path / "ct-series",
        {
            "volume.raw": pseudo_random_bytes(2 * MIB + 300_000, 7),
            "labels": {"mask.nii": pseudo_random_bytes(1000, 8)},
        },
    )


@dataclass
class Transfer:
    source: Path
    shares: list[Path]
    transfer_id: str
    k: int
    n: int


@pytest.fixture
def split_transfer(tmp_path, provider_key):
    """Split a dataset with the provider key at the smallest segment size (1 MiB)."""
    counter = iter(range(1000))

    def make(source: Path, k: int = 3, n: int = 5, key=None) -> Transfer:
        out = tmp_path / f"outbox-{next(counter)}"
        result = split_dataset(
            source, out, k=k, n=n, signing_key=key or provider_key, segment_size=MIB
        )
        return Transfer(source, result.share_paths, result.transfer_id, k, n)

    return make
