"""Decrypting mounts for real: a FUSE process per version, bytes identical to what was
cataloged, read-only, faults that fail reads and are audited, and a remount after a crash."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from catalog.service import open_catalog
from enclave.datafs.mounts import FSNAME, datafs_mounts
from enclave.workspace.datasets import DatasetMounter, read_mountinfo
from ingestion import store

pytestmark = pytest.mark.usefixtures("as_root")


@pytest.fixture
def mounter(tmp_path: Path, stored):
    mounter = DatasetMounter(tmp_path / "plaintext", stored.master_key)
    yield mounter
    mounter.release_all()


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.name != ".enclave-version.json"
    }


def _pid_of(mounter: DatasetMounter, point: Path) -> int:
    return mounter._processes._procs[point.name].pid


def test_a_mounted_version_serves_every_file_with_the_hash_it_was_cataloged_with(mounter, stored):
    point = mounter.plaintext_for(stored.version)
    assert _tree_hashes(point) == stored.hashes
    info = (point / ".enclave-version.json").read_text()
    assert '"content_hash": "' + "c" * 64 in info and '"name": "demo"' in info


def test_the_mount_is_read_only_nosuid_nodev_noexec_and_owned_by_root(mounter, stored):
    point = mounter.plaintext_for(stored.version)
    mount = next(m for m in read_mountinfo() if m.mount_point == str(point))
    assert mount.source == FSNAME
    options = Path("/proc/self/mountinfo").read_text()
    line = next(line for line in options.splitlines() if f" {point} " in line)
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(line.split()[5].split(","))
    target = point / "tables" / "clinical.csv"
    st = target.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o444)
    assert (point / "tables").stat().st_mode & 0o777 == 0o555
    for attempt in (
        lambda: open(target, "r+b"),
        lambda: open(point / "new.txt", "w"),
        lambda: os.mkdir(point / "folder"),
        lambda: os.unlink(target),
    ):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno in (errno.EROFS, errno.EACCES)
    assert oct(os.stat(mounter.plaintext_root).st_mode & 0o777) == "0o700"


def test_random_ranges_through_the_mount_are_the_plaintext(mounter, stored):
    import random

    point = mounter.plaintext_for(stored.version)
    plain = (stored.source / "dicom" / "series-1" / "a.dcm").read_bytes()
    rng = random.Random(3)
    with open(point / "dicom" / "series-1" / "a.dcm", "rb", buffering=0) as fh:
        for _ in range(50):
            offset, size = rng.randrange(len(plain)), rng.randrange(1, 300_000)
            assert os.pread(fh.fileno(), size, offset) == plain[offset : offset + size]


def test_a_second_request_reuses_the_mount_and_an_unused_mount_is_collected(mounter, stored):
    first = mounter.plaintext_for(stored.version)
    assert mounter.plaintext_for(stored.version) == first
    assert len(datafs_mounts(mounter.plaintext_root, read_mountinfo())) == 1
    assert mounter.collect_garbage() == [first.name]  # no home binds it
    assert datafs_mounts(mounter.plaintext_root, read_mountinfo()) == {}


def test_a_tampered_segment_is_an_io_error_for_the_reader_and_an_audit_entry(
    tmp_path, mounter, stored
):
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = open_catalog(catalog_url)
    mounter.catalog_url = catalog_url
    opened = store.open_version(stored.version, stored.master_key)
    entry = opened.files["dicom/series-1/a.dcm"]
    pack = Path(stored.version.store_location) / "packs" / f"{entry.pack:06d}.pack"
    at = entry.offset + len(store.MAGIC) + 3 * (5 + opened.segment_size + 16) + 7  # segment 3
    with open(pack, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x80]))
    point = mounter.plaintext_for(stored.version)
    with open(point / "dicom" / "series-1" / "a.dcm", "rb", buffering=0) as fh:
        assert len(os.pread(fh.fileno(), 4096, 0)) == 4096  # an intact segment still reads
        with pytest.raises(OSError) as caught:
            os.pread(fh.fileno(), 4096, 3 * opened.segment_size + 100)
    assert caught.value.errno == errno.EIO
    events = [e for e in catalog.audit_events() if e.action == "dataset.read_failed"]
    assert len(events) == 1
    assert events[0].target == "demo v1"
    assert events[0].details["path"] == "dicom/series-1/a.dcm"
    assert "segment 3 failed authentication" in events[0].details["error"]
    assert f"{entry.pack:06d}.pack" in events[0].details["error"]


def test_killing_the_filesystem_process_fails_reads_and_the_next_mount_starts_again(
    mounter, stored
):
    point = mounter.plaintext_for(stored.version)
    target = point / "tables" / "clinical.csv"
    assert target.read_bytes() == b"subject,age\ns1,40\n"
    os.kill(_pid_of(mounter, point), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.statvfs(point)
        except OSError as exc:
            assert exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the mount still answered after its process was killed")
    for name in ("tables/clinical.csv", "dicom/series-1/b.dcm"):  # read before, and not
        with pytest.raises(OSError) as caught:
            (point / name).read_bytes()  # no stale plaintext, not even what was cached
        assert caught.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    again = mounter.plaintext_for(stored.version)
    assert _tree_hashes(again) == stored.hashes


def test_reads_go_on_after_the_page_cache_is_dropped(mounter, stored):
    point = mounter.plaintext_for(stored.version)
    before = _tree_hashes(point)
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    assert _tree_hashes(point) == before == stored.hashes


def test_a_user_reads_the_version_only_through_the_bind_mount_in_their_home(
    request, mounter, stored
):
    import shutil
    import tempfile
    from types import SimpleNamespace

    parent = Path(tempfile.mkdtemp(prefix="datafs-home-", dir="/tmp"))  # pytest's is 0700
    request.addfinalizer(lambda: shutil.rmtree(parent, ignore_errors=True))
    os.chmod(parent, 0o755)
    home = parent / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    os.chmod(home, 0o700)
    account = SimpleNamespace(home=str(home), uid=65534, gid=65534)
    mounted = mounter.mount_for(account, [stored.version])
    assert [m.path for m in mounted] == [home / "datasets" / "demo" / "1"]
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    inside = home / "datasets" / "demo" / "1" / "tables" / "clinical.csv"
    read = subprocess.run([*as_nobody, "cat", str(inside)], capture_output=True, check=False)
    assert read.returncode == 0 and read.stdout == b"subject,age\ns1,40\n"
    direct = mounter.plaintext_for(stored.version) / "tables" / "clinical.csv"
    denied = subprocess.run([*as_nobody, "cat", str(direct)], capture_output=True, check=False)
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    mounter.unmount_user(home)
    assert mounter.collect_garbage() != []


def test_a_reader_in_a_memory_limited_cgroup_reads_a_file_larger_than_its_limit(tmp_path, stored):
    """Its page cache is charged to its cgroup and reclaimed as it reads: the reads go on."""
    from enclave.isolation import ResourceLimits, apply_limits
    from ingestion.store import write_version

    src = tmp_path / "big"
    src.mkdir()
    block = os.urandom(8 * 1024 * 1024)
    with open(src / "volume.bin", "wb") as fh:
        for i in range(12):  # 96 MiB against a 48 MiB limit
            fh.write(i.to_bytes(4, "big") + block[4:])
    expected = hashlib.sha256((src / "volume.bin").read_bytes()).hexdigest()
    written = write_version(src, tmp_path / "big-store", stored.master_key, name_hint="big")
    version = type(stored.version)("big", 1, written.store_location, written.wrapped_key, "d" * 64)
    mounter = DatasetMounter(tmp_path / "plaintext-big", stored.master_key)
    limits = apply_limits(f"datafs-test-{os.getpid()}", ResourceLimits(memory_max=48 * 1024**2))
    try:
        point = mounter.plaintext_for(version)
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")

        def enter() -> None:
            for procs in limits.procs_files:
                procs.write_text(str(os.getpid()))

        done = subprocess.run(
            ["sha256sum", str(point / "volume.bin")],
            preexec_fn=enter,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[0] == expected
        peaks = [
            int((d / name).read_text())
            for d in limits.cgroup_dirs
            for name in ("memory.max_usage_in_bytes", "memory.peak")
            if (d / name).exists()
        ]
        assert peaks and max(peaks) > 32 * 1024**2  # the limit was reached, pages reclaimed
    finally:
        limits.remove()
        mounter.release_all()


def test_a_segment_whose_length_field_was_changed_is_an_io_error_and_an_audit_entry(
    tmp_path, mounter, stored
):
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = open_catalog(catalog_url)
    mounter.catalog_url = catalog_url
    opened = store.open_version(stored.version, stored.master_key)
    entry = opened.files["dicom/series-1/a.dcm"]
    pack = Path(stored.version.store_location) / "packs" / f"{entry.pack:06d}.pack"
    at = entry.offset + len(store.MAGIC) + 2 * (5 + opened.segment_size + 16)  # segment 2
    with open(pack, "r+b") as fh:
        fh.seek(at)
        fh.write((opened.segment_size + 15).to_bytes(4, "big"))
    point = mounter.plaintext_for(stored.version)
    plain = (stored.source / "dicom" / "series-1" / "a.dcm").read_bytes()
    with open(point / "dicom" / "series-1" / "a.dcm", "rb", buffering=0) as fh:
        assert os.pread(fh.fileno(), 4096, 0) == plain[:4096]
        with pytest.raises(OSError) as caught:
            os.pread(fh.fileno(), 100, 2 * opened.segment_size + 5)
        assert os.pread(fh.fileno(), 4096, 4 * opened.segment_size) == plain[4 * 65536 :][:4096]
    assert caught.value.errno == errno.EIO
    events = [e for e in catalog.audit_events() if e.action == "dataset.read_failed"]
    assert [e.details["path"] for e in events] == ["dicom/series-1/a.dcm"]
    assert "segment 2 has the wrong length or flags" in events[0].details["error"]
