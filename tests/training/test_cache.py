"""Where monai_dataset caches a version: the choice against the memory limit, the cgroup limit
it reads, and the private, keyed disk cache that gives the same items as the memory one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import enclave.data as ed
from enclave.data import cache as caching
from enclave.data.cache import CacheError, MemoryLimit, choose_cache, memory_limit

MiB = 1024 * 1024
LIMIT = MemoryLimit(512 * MiB, "test")


# ------------------------------------------------------------------ the choice


def test_auto_caches_in_memory_what_fits_in_half_the_limit():
    choice = choose_cache("auto", estimated_bytes=200 * MiB, limit=LIMIT)
    assert choice.mode == "memory"
    assert "chosen automatically" in choice.reason and "512.0 MiB" in choice.reason


def test_auto_caches_on_disk_what_exceeds_half_the_limit():
    choice = choose_cache("auto", estimated_bytes=300 * MiB, limit=LIMIT, disk_free=10**12)
    assert choice.mode == "disk"
    assert "too large" in choice.reason


def test_auto_caches_nothing_when_the_disk_cannot_hold_it_either():
    choice = choose_cache("auto", estimated_bytes=2048 * MiB, limit=LIMIT, disk_free=100 * MiB)
    assert choice.mode == "none"
    assert "free on disk" in choice.reason


@pytest.mark.parametrize(
    ("asked", "mode"),
    [("memory", "memory"), ("disk", "disk"), ("none", "none"), (True, "memory"), (False, "none")],
)
def test_an_explicit_cache_overrides_the_automatic_choice(asked, mode):
    choice = choose_cache(asked, estimated_bytes=100 * 1024 * MiB, limit=LIMIT, disk_free=1)
    assert choice.mode == mode
    assert "asked for" in choice.reason


def test_an_unknown_cache_mode_is_refused_by_name():
    with pytest.raises(CacheError, match="not 'ram'"):
        choose_cache("ram", estimated_bytes=1, limit=LIMIT)


# ------------------------------------------------------------------ the limit


def _meminfo(tmp_path: Path, kib: int = 8 * 1024 * 1024) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       {kib} kB\nMemFree:        1 kB\n")
    return path


def test_the_limit_comes_from_a_cgroup_v1_memory_hierarchy_on_a_hybrid_host(tmp_path):
    root = tmp_path / "cgroup"
    leaf = root / "memory" / "jobs" / "server-1"
    leaf.mkdir(parents=True)
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (root / "memory" / "jobs" / "memory.limit_in_bytes").write_text(str(768 * MiB))
    (leaf / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/jobs/server-1\n1:cpu:/\n0::/\n")
    limit = memory_limit(proc_cgroup=proc, cgroup_root=root, meminfo=_meminfo(tmp_path))
    assert limit.bytes == 768 * MiB  # a parent's limit binds the child
    assert "cgroup v1" in limit.source and "jobs/memory.limit_in_bytes" in limit.source


def test_the_limit_comes_from_cgroup_v2_memory_max(tmp_path):
    root = tmp_path / "cgroup"
    leaf = root / "user.slice" / "server"
    leaf.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (leaf / "memory.max").write_text(f"{1024 * MiB}\n")
    (root / "user.slice" / "memory.max").write_text("max\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/user.slice/server\n")
    limit = memory_limit(proc_cgroup=proc, cgroup_root=root, meminfo=_meminfo(tmp_path))
    assert limit.bytes == 1024 * MiB
    assert "cgroup v2" in limit.source


def test_without_a_cgroup_limit_the_machines_memory_is_the_limit(tmp_path):
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/\n")
    limit = memory_limit(
        proc_cgroup=proc, cgroup_root=tmp_path / "none", meminfo=_meminfo(tmp_path, 4096)
    )
    assert limit == MemoryLimit(4096 * 1024, "MemTotal in /proc/meminfo, no lower cgroup limit")


def test_this_process_has_a_memory_limit():
    assert memory_limit().bytes > 0


# ------------------------------------------------------------------ the disk cache


def _dataset(demo_ct, tmp_path: Path, cache: str, **kwargs):
    return ed.monai_dataset(
        demo_ct,
        split="all",
        train=False,
        cache=cache,
        cache_dir=tmp_path / "cache",
        num_workers=0,
        **kwargs,
    )


def _same(a, b) -> None:
    import numpy as np

    assert a.keys() == b.keys()
    for key in ("image", "label"):
        assert type(a[key]) is type(b[key])
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key]))
    assert np.allclose(a["image"].affine, b["image"].affine)


def test_the_disk_cache_gives_the_same_items_as_the_memory_cache(demo_ct, tmp_path, capsys):
    memory = _dataset(demo_ct, tmp_path, "memory")
    disk = _dataset(demo_ct, tmp_path, "disk")
    assert "disk cache (PersistentDataset)" in capsys.readouterr().out
    first = [disk[i] for i in range(len(disk))]  # computed and written
    assert len(list(disk.cache_dir.glob("*.pt"))) == len(memory)
    again = _dataset(demo_ct, tmp_path, "disk")  # a new session reads the files back
    for i in range(len(memory)):
        _same(memory[i], first[i])
        _same(memory[i], again[i])


def test_a_tiny_memory_limit_sends_the_version_to_the_disk_cache(demo_ct, tmp_path, capsys):
    ds = _dataset(demo_ct, tmp_path, "auto", memory_limit=1 * MiB)
    assert ds.cache_choice.mode == "disk"
    line = capsys.readouterr().out
    assert "demo-ct v1 all: disk cache" in line and "chosen automatically" in line


def test_a_large_memory_limit_keeps_the_version_in_memory(demo_ct, tmp_path):
    ds = _dataset(demo_ct, tmp_path, "auto", memory_limit=64 * 1024 * MiB)
    assert ds.cache_choice.mode == "memory" and ds.cache_dir is None


def test_the_cache_folders_are_private_to_the_user(demo_ct, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("ENCLAVE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    ds = ed.monai_dataset(demo_ct, split="val", cache="disk", num_workers=0)
    ds[0]
    assert ds.cache_dir.parent == home / ".cache" / "enclave" / "monai"
    for folder in (home / ".cache", home / ".cache" / "enclave", ds.cache_dir.parent, ds.cache_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    entries = list(ds.cache_dir.iterdir())
    assert entries and all(not e.name.startswith(".tmp-") for e in entries)
    assert all(stat.S_IMODE(e.stat().st_mode) == 0o600 for e in entries)


def test_a_changed_transform_gets_a_fresh_cache_folder(demo_ct, tmp_path):
    native = _dataset(demo_ct, tmp_path, "disk", pixdim=None)
    resampled = _dataset(demo_ct, tmp_path, "disk", pixdim=(2.0, 2.0, 4.0))
    same = _dataset(demo_ct, tmp_path, "disk", pixdim=None)
    assert native.cache_dir != resampled.cache_dir
    assert native.cache_dir == same.cache_dir  # the same pipeline reuses its entries


def test_another_version_gets_a_fresh_cache_folder(researcher_env, tmp_path):
    v1 = ed.monai_dataset(
        "demo-ct", 1, require_label=False, cache="disk", cache_dir=tmp_path, num_workers=0
    )
    v2 = ed.monai_dataset(
        "demo-ct", 2, require_label=False, cache="disk", cache_dir=tmp_path, num_workers=0
    )
    assert v1.cache_dir.name.startswith("demo-ct-v1-")
    assert v2.cache_dir.name.startswith("demo-ct-v2-")


def test_the_cache_key_changes_with_the_content_hash():
    a = caching.cache_key("demo-ct", 1, "a" * 64, "f" * 64)
    b = caching.cache_key("demo-ct", 1, "b" * 64, "f" * 64)
    assert a != b


def test_a_cache_under_the_outputs_folder_is_refused(demo_ct, researcher_env):
    with pytest.raises(CacheError, match="airlock exports from there"):
        ed.monai_dataset(demo_ct, cache="disk", cache_dir=researcher_env / "cache")
    assert not (researcher_env / "cache").exists()


def test_a_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(caching.os, "geteuid", lambda: 12345)
    with pytest.raises(CacheError, match="belongs to uid"):
        caching.prepare_cache_dir("demo-ct-v1-x-y", tmp_path)
