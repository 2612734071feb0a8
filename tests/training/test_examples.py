"""Example notebooks copied into a new user's home (called by the spawner on first spawn)."""

from __future__ import annotations

import json
import os

import pytest

from enclave.data.examples import ExamplesError, example_files, install_examples


def test_examples_ship_two_runnable_notebooks_and_a_readme():
    names = {p.name for p in example_files()}
    assert names == {"README.md", "segmentation-unet.ipynb", "outcome-classification.ipynb"}
    for path in example_files():
        if path.suffix == ".ipynb":
            nb = json.loads(path.read_text())
            assert nb["metadata"]["kernelspec"]["name"] == "python3"
            tagged = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
            assert len(tagged) == 1
            assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")


def test_install_copies_once_and_owns_files(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    installed = install_examples(home, uid=os.getuid(), gid=os.getgid())
    assert sorted(p.name for p in installed) == sorted(p.name for p in example_files())
    for path in installed:
        assert path.read_bytes() == (example_files()[0].parent / path.name).read_bytes()
        assert path.stat().st_uid == os.getuid()
    assert (home / "examples").stat().st_mode & 0o777 == 0o755
    # The user's edits and deletions stand: a second spawn copies nothing.
    (home / "examples" / "segmentation-unet.ipynb").unlink()
    assert install_examples(home, uid=os.getuid(), gid=os.getgid()) == []
    assert not (home / "examples" / "segmentation-unet.ipynb").exists()


@pytest.mark.root  # chown to another user
def test_install_hands_files_to_the_user(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    install_examples(home, uid=12345, gid=12346)
    for path in [home / "examples", *(home / "examples").iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (12345, 12346)


def test_a_planted_link_is_never_followed(tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "etc"
    home.mkdir()
    elsewhere.mkdir()
    (home / "examples").symlink_to(elsewhere)
    assert install_examples(home, uid=os.getuid(), gid=os.getgid()) == []
    assert list(elsewhere.iterdir()) == []


def test_missing_examples_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCLAVE_EXAMPLES_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ExamplesError, match="example notebooks not found"):
        install_examples(tmp_path, uid=os.getuid(), gid=os.getgid())
