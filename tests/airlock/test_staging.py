"""Copying a request's files as root without being tricked: links, FIFOs, files of others,
paths outside ~/outputs and oversized requests are refused, each named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enclave.airlock.files import OutputsReader, StagingError, relative_name, stage

pytestmark = pytest.mark.root

OWNER = 65534  # nobody: a uid that is not the test's


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.fail("staging tests run as root (they chown files to another user)")
    home = tmp_path / "home"
    out = home / "outputs"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\nroc")
    (out / "table.csv").write_text("group,n\nA,12\n")
    (out / ".lineage").mkdir()
    (out / ".lineage" / "run.json").write_text("{}")
    for path in [home, *home.rglob("*")]:
        os.chown(path, OWNER, OWNER)
    return out


def do_stage(outputs: Path, paths: list[str], dest: Path, **caps: int):
    limits = {"max_file_bytes": 1 << 20, "max_request_bytes": 1 << 20, "max_files": 100}
    return stage(OutputsReader(outputs, OWNER), paths, dest, **{**limits, **caps})


def test_files_and_folders_are_copied_with_their_hashes_lineage_folder_left_out(outputs, tmp_path):
    staged = do_stage(outputs, ["figures", "~/outputs/table.csv"], tmp_path / "staged")
    assert [s.name for s in staged] == ["figures/roc.png", "table.csv"]
    assert (tmp_path / "staged" / "table.csv").read_text() == "group,n\nA,12\n"
    assert stat_mode(tmp_path / "staged") == 0o700
    everything = do_stage(outputs, ["."], tmp_path / "all")
    assert ".lineage/run.json" not in {s.name for s in everything}


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_symbolic_link_is_refused_wherever_it_is(outputs, tmp_path):
    os.symlink("/etc/shadow", outputs / "shadow.txt")
    with pytest.raises(StagingError, match="shadow.txt is a symbolic link"):
        do_stage(outputs, ["shadow.txt"], tmp_path / "a")
    os.symlink("/etc", outputs / "etc")
    with pytest.raises(StagingError, match="~/outputs/etc is a symbolic link or not a folder"):
        do_stage(outputs, ["etc/passwd"], tmp_path / "b")
    with pytest.raises(StagingError, match="is a symbolic link"):
        do_stage(outputs, ["."], tmp_path / "c")  # found while walking a folder too


def test_a_fifo_and_a_file_of_someone_else_are_refused(outputs, tmp_path):
    os.mkfifo(outputs / "pipe.csv")
    os.chown(outputs / "pipe.csv", OWNER, OWNER)
    with pytest.raises(StagingError, match="pipe.csv is not a regular file or a folder"):
        do_stage(outputs, ["pipe.csv"], tmp_path / "a")
    (outputs / "planted.csv").write_text("x\n")  # root's, in the user's folder
    with pytest.raises(StagingError, match="planted.csv does not belong to the requester"):
        do_stage(outputs, ["planted.csv"], tmp_path / "b")


def test_paths_outside_outputs_are_refused(outputs, tmp_path):
    with pytest.raises(StagingError, match="'..' is not allowed"):
        do_stage(outputs, ["../.bashrc"], tmp_path / "a")
    with pytest.raises(StagingError, match="/etc/passwd is not under"):
        do_stage(outputs, ["/etc/passwd"], tmp_path / "b")
    with pytest.raises(StagingError, match="does not exist"):
        do_stage(outputs, ["missing.csv"], tmp_path / "c")
    assert str(relative_name(str(outputs / "table.csv"), outputs)) == "table.csv"


def test_caps_are_checked_before_copying(outputs, tmp_path):
    with pytest.raises(StagingError, match="over the per-file cap of 10 bytes"):
        do_stage(outputs, ["table.csv"], tmp_path / "a", max_file_bytes=10)
    with pytest.raises(StagingError, match="more than 20 bytes"):
        do_stage(outputs, ["."], tmp_path / "b", max_request_bytes=20)
    with pytest.raises(StagingError, match="more than 1 files"):
        do_stage(outputs, ["."], tmp_path / "c", max_files=1)


def test_lineage_records_are_read_only_from_the_owner_and_in_the_lineage_format(outputs):
    from enclave.data.lineage import FORMAT

    (outputs / ".lineage" / "good.json").write_text(f'{{"format": "{FORMAT}", "run_id": "r1"}}')
    os.chown(outputs / ".lineage" / "good.json", OWNER, OWNER)
    (outputs / ".lineage" / "forged.json").write_text(f'{{"format": "{FORMAT}", "run_id": "r2"}}')
    os.symlink("/etc/passwd", outputs / ".lineage" / "link.json")
    records = OutputsReader(outputs, OWNER).lineage_records()
    assert [r["run_id"] for r in records] == ["r1"]
