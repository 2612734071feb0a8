"""The directory tree of a decrypting mount: which paths are folders and files, and their
``stat`` attributes. Pure data; nothing here reads the store."""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any


class TreeError(ValueError):
    """A stored path cannot be served (absolute, ``..``, or a folder and a file at once)."""


@dataclass
class Node:
    """A folder (``children``) or a file (``size``, and where its bytes come from)."""

    size: int = 0
    children: dict[str, Node] | None = None
    #: The stored file's path in the version, or None for a file served from memory.
    stored: str | None = None
    content: bytes | None = field(default=None, repr=False)

    @property
    def is_dir(self) -> bool:
        return self.children is not None


@dataclass(frozen=True)
class Attributes:
    """What every node shares: root owns everything, nothing is writable, one time stamp."""

    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0


def _parts(path: str) -> list[str]:
    pure = PurePosixPath(path)
    if pure.is_absolute() or not pure.parts or any(p in ("..", ".", "") for p in pure.parts):
        raise TreeError(f"stored path {path!r} cannot be served (absolute, empty or with ..)")
    return list(pure.parts)


class Tree:
    """Folders and files of one version, looked up by the absolute paths FUSE passes."""

    def __init__(
        self,
        files: Mapping[str, int],
        extra: Mapping[str, bytes] | None = None,
        attributes: Attributes | None = None,
    ) -> None:
        """``files``: stored path -> size; ``extra``: files served from memory (the version's
        ``.enclave-version.json``), which must not clash with stored ones."""
        self.root = Node(children={})
        self.attributes = attributes or Attributes()
        self.files = 0
        self.bytes = 0
        for path, size in files.items():
            self._add(path, Node(size=int(size), stored=path))
        for path, content in (extra or {}).items():
            self._add(path, Node(size=len(content), content=bytes(content)))

    def _add(self, path: str, leaf: Node) -> None:
        parts = _parts(path)
        folder = self.root
        for part in parts[:-1]:
            assert folder.children is not None
            child = folder.children.setdefault(part, Node(children={}))
            if not child.is_dir:
                raise TreeError(f"{path!r}: {part!r} is a file and a folder")
            folder = child
        assert folder.children is not None
        if parts[-1] in folder.children:
            raise TreeError(f"{path!r} is in the version twice")
        folder.children[parts[-1]] = leaf
        self.files += 1
        self.bytes += leaf.size

    def lookup(self, path: str) -> Node | None:
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if node.children is None:
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node

    def listing(self, node: Node) -> Iterable[str]:
        return [".", "..", *sorted(node.children or {})]

    def stat(self, node: Node) -> dict[str, Any]:
        a = self.attributes
        common = {
            "st_uid": a.uid,
            "st_gid": a.gid,
            "st_atime": a.mtime_ns,
            "st_mtime": a.mtime_ns,
            "st_ctime": a.mtime_ns,
        }
        if node.children is not None:
            subfolders = sum(1 for c in node.children.values() if c.is_dir)
            return {
                **common,
                "st_mode": stat.S_IFDIR | 0o555,
                "st_nlink": 2 + subfolders,
                "st_size": 4096,
            }
        return {
            **common,
            "st_mode": stat.S_IFREG | 0o444,
            "st_nlink": 1,
            "st_size": node.size,
            "st_blocks": -(-node.size // 512),
        }
