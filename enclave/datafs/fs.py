"""The FUSE operations of a decrypting mount: a read-only tree whose reads decrypt and
authenticate the store segments they cover (:class:`ingestion.store.RangeReader`).

A segment that fails authentication is never served: the read fails with ``EIO`` and the
fault is reported (the daemon's reporter writes each distinct one once to the audit log).
The content of a stored version never changes, so the kernel may keep pages, attributes and
names cached as long as it likes (``kernel_cache``, long timeouts): a second read of a file is
the page cache's, not ours.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

import mfusepy

from enclave.datafs.tree import Node, Tree
from ingestion.store import RangeReader, StoreError

#: Seconds the kernel may trust names and attributes: the tree never changes while mounted.
CACHE_SECONDS = 3600.0


class Ranges(Protocol):
    """What the filesystem needs of a stored version (``ingestion.store.StoredDataset``)."""

    def ranges(self, path: str) -> RangeReader: ...


#: Called with (stored path, what went wrong) when a read fails authentication or the store.
FaultReporter = Callable[[str, str], None]


class DecryptingFS(mfusepy.Operations):
    use_ns = True

    def __init__(
        self,
        tree: Tree,
        store: Ranges,
        *,
        on_fault: FaultReporter | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.tree = tree
        self.store = store
        self.on_fault = on_fault
        self.on_ready = on_ready
        self._handles: dict[int, RangeReader | Node] = {}
        self._next = 1
        self._lock = threading.Lock()

    # ---- life

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.kernel_cache = 1
            config.entry_timeout = CACHE_SECONDS
            config.attr_timeout = CACHE_SECONDS
            config.negative_timeout = CACHE_SECONDS
        if self.on_ready is not None:
            self.on_ready()

    def destroy(self, path: str) -> None:
        with self._lock:
            handles, self._handles = self._handles, {}
        for handle in handles.values():
            if isinstance(handle, RangeReader):
                handle.close()

    # ---- names

    def _node(self, path: str) -> Node:
        node = self.tree.lookup(path)
        if node is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return node

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        return self.tree.stat(self._node(path))

    def readdir(self, path: str, fh: Any) -> list[str]:
        node = self._node(path)
        if not node.is_dir:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return list(self.tree.listing(node))

    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": -(-self.tree.bytes // 4096),
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": self.tree.files,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }

    # ---- files

    def open(self, path: str, fi: Any) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        node = self._node(path)
        if node.is_dir:
            raise mfusepy.FuseOSError(errno.EISDIR)
        handle: RangeReader | Node = node
        if node.stored is not None:
            try:
                handle = self.store.ranges(node.stored)
            except (StoreError, OSError) as exc:
                self._fault(node.stored, str(exc))
                raise mfusepy.FuseOSError(errno.EIO) from None
        with self._lock:
            fi.fh = self._next
            self._next += 1
            self._handles[fi.fh] = handle
        fi.keep_cache = 1
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        out = bytearray(size)
        return bytes(memoryview(out)[: self.read_into(fi.fh, offset, memoryview(out))])

    def read_into(self, fh: int, offset: int, out: memoryview) -> int:
        """Decrypt from ``offset`` straight into ``out`` (libfuse's reply buffer)."""
        handle = self._handles.get(fh)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        if isinstance(handle, Node):
            data = (handle.content or b"")[offset : offset + len(out)]
            out[: len(data)] = data
            return len(data)
        try:
            return handle.read_into(offset, out)
        except (StoreError, OSError) as exc:
            self._fault(handle.path, str(exc))
            raise mfusepy.FuseOSError(errno.EIO) from None

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            handle = self._handles.pop(fi.fh, None)
        if isinstance(handle, RangeReader):
            handle.close()
        return 0

    def _fault(self, stored: str, message: str) -> None:
        if self.on_fault is not None:
            self.on_fault(stored, message)


class DirectFUSE(mfusepy.FUSE):
    """mfusepy's FUSE with reads decrypted straight into libfuse's reply buffer: the
    operations' ``read`` returns bytes that mfusepy then copies, one copy of every byte more
    than needed."""

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        address = ctypes.cast(buf, ctypes.c_void_p).value
        out = memoryview((ctypes.c_char * size).from_address(address or 0)).cast("B")
        return int(self.operations.read_into(fip.contents.fh, offset, out))
