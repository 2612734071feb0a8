"""Where :func:`enclave.data.monai_dataset` keeps the deterministic part of its pipeline.

A version that fits comfortably in the server's memory is cached in RAM (MONAI
``CacheDataset``); a larger one is cached on disk under the user's own home
(``PersistentDataset``, one file per item, read back each epoch), or not cached at all
(every epoch reads and transforms the files again). This module reads the server's memory
limit (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes`` of this process, else the
machine's memory), estimates what the in-memory cache would take, picks one of the three and
says why, and makes the private cache folder: ``~/.cache/enclave/monai/<dataset>-v<version>-
<content hash>-<transform hash>``, mode 0700 at every level it creates. The cache never goes
under the datasets root (read-only) nor under the outputs folder (the airlock exports from
there: cached volumes are plaintext data).

Standard library only: the choice is made before MONAI or torch are imported.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from enclave.data.mounts import DatasetAccessError, datasets_root, outputs_root

CACHE_MODES = ("auto", "memory", "disk", "none")
#: ``auto`` caches in memory when the estimated cache is at most this share of the limit
#: (the rest is for the model, the loader's batches and the interpreter).
MEMORY_FRACTION = 0.5
#: Any cgroup limit at or above this is "no limit" (the kernel writes 2^63 rounded to a page).
UNLIMITED = 1 << 60
CGROUP_ROOT = Path("/sys/fs/cgroup")


class CacheError(DatasetAccessError):
    """The dataset cache cannot be placed or chosen as asked."""


@dataclass(frozen=True)
class MemoryLimit:
    """The memory this server may use, in bytes, and where that figure came from."""

    bytes: int
    source: str

    def __str__(self) -> str:
        return f"{_size(self.bytes)} ({self.source})"


@dataclass(frozen=True)
class CacheChoice:
    """What :func:`choose_cache` picked and why (``reason`` is one line)."""

    mode: str  # "memory", "disk" or "none"
    reason: str
    estimated_bytes: int
    limit: MemoryLimit

    def describe(self, label: str, cache_dir: Path | None = None) -> str:
        where = {
            "memory": "in-memory cache (CacheDataset)",
            "disk": f"disk cache (PersistentDataset) at {cache_dir}",
            "none": "no cache (Dataset: files read and transformed every epoch)",
        }[self.mode]
        return f"enclave.data: {label}: {where}: {self.reason}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ memory limit


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < UNLIMITED else None


def _ancestors(root: Path, relative: str) -> Iterable[Path]:
    """The cgroup folder of ``relative`` under ``root`` and each parent up to ``root``."""
    parts = [p for p in relative.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        yield root.joinpath(*parts[:depth])


def _v2_limit(root: Path, relative: str) -> tuple[int, Path] | None:
    found: tuple[int, Path] | None = None
    for folder in _ancestors(root, relative):
        value = _read_int(folder / "memory.max")
        if value is not None and (found is None or value < found[0]):
            found = (value, folder / "memory.max")
    return found


def _v1_limit(root: Path, relative: str) -> tuple[int, Path] | None:
    found: tuple[int, Path] | None = None
    for folder in _ancestors(root, relative):
        value = _read_int(folder / "memory.limit_in_bytes")
        if value is not None and (found is None or value < found[0]):
            found = (value, folder / "memory.limit_in_bytes")
    return found


def _mem_total(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            match = re.match(r"MemTotal:\s+(\d+)\s+kB", line)
            if match:
                return int(match.group(1)) * 1024
    except OSError:
        return None
    return None


def memory_limit(
    *,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_root: Path = CGROUP_ROOT,
    meminfo: Path = Path("/proc/meminfo"),
) -> MemoryLimit:
    """The memory limit of this process: the smallest ``memory.max`` (cgroup v2) or
    ``memory.limit_in_bytes`` (cgroup v1) on its cgroup's path, capped at MemTotal.

    On a hybrid host (v1 controllers under ``/sys/fs/cgroup/<controller>``, v2 at
    ``/sys/fs/cgroup/unified``) both are looked at. A path from ``/proc/self/cgroup`` that is
    not visible (a container's own namespace) falls back to the hierarchy's root.
    """
    total = _mem_total(meminfo)
    candidates: list[tuple[int, str]] = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for v2_root in (cgroup_root, cgroup_root / "unified"):
                if (v2_root / "cgroup.controllers").exists():
                    if not (v2_root / relative.lstrip("/")).is_dir():
                        relative = "/"
                    found = _v2_limit(v2_root, relative)
                    if found:
                        candidates.append((found[0], f"cgroup v2 {found[1]}"))
                    break
        elif "memory" in controllers.split(","):
            v1_root = cgroup_root / "memory"
            if not (v1_root / relative.lstrip("/")).is_dir():
                relative = "/"
            found = _v1_limit(v1_root, relative)
            if found:
                candidates.append((found[0], f"cgroup v1 {found[1]}"))
    if candidates:
        value, source = min(candidates)
        if total is None or value <= total:
            return MemoryLimit(value, source)
    if total is not None:
        return MemoryLimit(total, "MemTotal in /proc/meminfo, no lower cgroup limit")
    raise CacheError("cannot tell this server's memory limit: no cgroup limit and no /proc/meminfo")


# ------------------------------------------------------------------ the choice


def files_bytes(paths: Iterable[Path]) -> int:
    """Bytes of the files at ``paths`` (a folder counts the files directly in it)."""
    total = 0
    for path in paths:
        if path.is_dir():
            with os.scandir(path) as entries:
                total += sum(e.stat().st_size for e in entries if e.is_file())
        elif path.exists():
            total += path.stat().st_size
    return total


def estimate_cache_bytes(image_bytes: int, *, with_label: bool, train: bool) -> int:
    """What the cached part of the default pipeline holds for files of ``image_bytes``.

    16-bit DICOM pixels become float32 (x2); a label on the same grid loads as float32 too
    (x2 more); training also keeps the foreground and background voxel indices, one int64
    per voxel between them (x4 more). So x2 for images, x4 with labels, x8 for training.
    Resampling to another spacing changes it by the ratio of voxel counts (not counted).
    """
    factor = 2 * (2 if with_label else 1) * (2 if train and with_label else 1)
    return int(image_bytes * factor)


def choose_cache(
    requested: str | bool,
    *,
    estimated_bytes: int,
    limit: MemoryLimit,
    fraction: float = MEMORY_FRACTION,
    disk_free: int | None = None,
) -> CacheChoice:
    """``memory``, ``disk`` or ``none``: as requested, or for ``auto``: memory when the
    estimate is at most ``fraction`` of the limit, else disk when ``disk_free`` (None: not
    known) holds it, else none."""
    if requested is True:
        requested = "memory"
    elif requested is False:
        requested = "none"
    if requested not in CACHE_MODES:
        raise CacheError(f"cache must be one of {', '.join(CACHE_MODES)}, not {requested!r}")
    budget = int(limit.bytes * fraction)
    sizes = (
        f"estimated cache {_size(estimated_bytes)}, {fraction:.0%} of the memory limit "
        f"{limit} is {_size(budget)}"
    )
    if requested != "auto":
        return CacheChoice(
            requested, f"cache={requested!r} asked for; {sizes}", estimated_bytes, limit
        )
    if estimated_bytes <= budget:
        return CacheChoice("memory", f"chosen automatically: {sizes}", estimated_bytes, limit)
    if disk_free is None or estimated_bytes <= disk_free:
        free = "" if disk_free is None else f", {_size(disk_free)} free on disk"
        return CacheChoice(
            "disk", f"chosen automatically: {sizes} (too large){free}", estimated_bytes, limit
        )
    return CacheChoice(
        "none",
        f"chosen automatically: {sizes} (too large), and only {_size(disk_free)} free on disk",
        estimated_bytes,
        limit,
    )


# ------------------------------------------------------------------ the cache folder


def cache_root() -> Path:
    """``$ENCLAVE_CACHE_DIR``, else ``$XDG_CACHE_HOME/enclave/monai``, else
    ``~/.cache/enclave/monai``."""
    value = os.environ.get("ENCLAVE_CACHE_DIR")
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "enclave" / "monai"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "dataset"


def cache_key(name: str, version: int, content_hash: str, transform_hash: str) -> str:
    """The folder name of one version's cache under one pipeline: a changed version or
    transform gets a fresh folder, never stale entries."""
    return f"{_slug(name)}-v{version}-{content_hash[:16]}-{transform_hash[:16]}"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def _private_dir(path: Path) -> None:
    """Make ``path`` (mode 0700) or check an existing one is ours, a folder, and private."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheError(f"cannot create the dataset cache folder {path}: {exc.strerror}") from None
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise CacheError(f"dataset cache folder {path} is not a folder (a link or a file)")
    if info.st_uid != os.geteuid():
        raise CacheError(f"dataset cache folder {path} belongs to uid {info.st_uid}, not to you")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


def prepare_cache_dir(key: str, root: Path | None = None) -> Path:
    """``root/key``, with ``root`` and the folders above it that are created here made
    mode 0700; refuses a root under the datasets root or the outputs folder."""
    root = Path(root) if root is not None else cache_root()
    for forbidden, why in (
        (datasets_root(), "the datasets are mounted read-only there"),
        (outputs_root(), "the airlock exports from there and cached volumes are plaintext data"),
    ):
        if _inside(root, forbidden):
            raise CacheError(f"dataset cache folder {root} is under {forbidden}: {why}")
    missing = []
    for folder in (root, *root.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        _private_dir(folder)
    _private_dir(root)
    target = root / key
    _private_dir(target)
    return target


def disk_free(path: Path) -> int | None:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None
