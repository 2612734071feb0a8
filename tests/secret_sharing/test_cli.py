"""`enclave share ...` as a data manager runs it: exit codes, one-line errors, stdout for scripts."""

import os
import re
import stat
import subprocess
import sys

import pytest

from enclave.cli import main

from .conftest import tree_of


def run(capsys, *argv):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def keys(tmp_path, capsys):
    code, out, err = run(capsys, "share", "keygen", "--out", str(tmp_path / "keys"))
    assert code == 0 and re.fullmatch(r"[0-9a-f]{64}\n", out)
    return tmp_path / "keys"


def test_keygen_writes_a_private_key_with_mode_0600(keys, capsys):
    assert stat.S_IMODE((keys / "signing.key").stat().st_mode) == 0o600
    assert (keys / "verify.key").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    code, out, err = run(capsys, "share", "keygen", "--out", str(keys))
    assert code == 1 and out == ""
    assert err == f"error: {keys / 'signing.key'} already exists; refusing to overwrite a key\n"


def test_split_verify_combine(tmp_path, keys, radiology_study, capsys):
    shares = tmp_path / "outbox"
    code, out, err = run(
        capsys,
        "share",
        "split",
        str(radiology_study),
        "--k",
        "2",
        "--n",
        "3",
        "--out",
        str(shares),
        "--sign-key",
        str(keys / "signing.key"),
        "--segment-mib",
        "1",
    )
    assert code == 0, err
    transfer_id = out.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", transfer_id)
    assert sorted(os.listdir(shares)) == ["share-1", "share-2", "share-3"]

    code, out, err = run(
        capsys, "share", "verify", str(shares / "share-2"), "--verify-key", str(keys / "verify.key")
    )
    assert (
        code == 0
        and out.startswith(f"ok: {shares / 'share-2'} is share 2 of 3")
        and transfer_id in out
    )

    inbox = tmp_path / "inbox"
    code, out, err = run(
        capsys,
        "share",
        "combine",
        str(shares / "share-3"),
        str(shares / "share-1"),
        "--out",
        str(inbox),
        "--verify-key",
        str(keys / "verify.key"),
    )
    assert code == 0, err
    assert out == f"{inbox / 'study-0042'}\n"
    assert tree_of(inbox / "study-0042") == tree_of(radiology_study)


def one_error_line(err):
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_errors_are_one_line(tmp_path, keys, radiology_study, capsys):
    sign = str(keys / "signing.key")
    verify = str(keys / "verify.key")
    code, out, err = run(
        capsys,
        "share",
        "split",
        str(radiology_study),
        "--k",
        "4",
        "--n",
        "3",
        "--out",
        str(tmp_path / "o"),
        "--sign-key",
        sign,
    )
    assert code == 1 and "2 <= k <= n <= 255" in one_error_line(err)
    code, out, err = run(
        capsys,
        "share",
        "split",
        str(radiology_study),
        "--k",
        "2",
        "--n",
        "3",
        "--out",
        str(tmp_path / "o"),
        "--sign-key",
        verify,
    )
    assert code == 1 and "is a public verify key" in one_error_line(err)
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello")
    code, out, err = run(capsys, "share", "verify", str(not_a_key), "--verify-key", str(not_a_key))
    assert code == 1 and f"{not_a_key} is not a PEM public key" in one_error_line(err)
    code, out, err = run(capsys, "share", "verify", str(not_a_key), "--verify-key", verify)
    assert code == 1 and f"{not_a_key}: not an enclave share" in one_error_line(err)
    (radiology_study / "link").symlink_to("README.txt")
    code, out, err = run(
        capsys,
        "share",
        "split",
        str(radiology_study),
        "--k",
        "2",
        "--n",
        "3",
        "--out",
        str(tmp_path / "o"),
        "--sign-key",
        sign,
    )
    assert code == 1 and f"{radiology_study / 'link'} is a symbolic link" in one_error_line(err)
    assert out == ""


def test_combine_with_too_few_shares_names_them(tmp_path, keys, radiology_study, capsys):
    shares = tmp_path / "outbox"
    run(
        capsys,
        "share",
        "split",
        str(radiology_study),
        "--k",
        "3",
        "--n",
        "4",
        "--out",
        str(shares),
        "--sign-key",
        str(keys / "signing.key"),
    )
    with open(shares / "share-1", "r+b") as handle:  # damage a data block of share 1
        handle.seek(100)
        handle.write(b"\xff\xff")
    inbox = tmp_path / "inbox"
    code, out, err = run(
        capsys,
        "share",
        "combine",
        str(shares / "share-1"),
        str(shares / "share-4"),
        "--out",
        str(inbox),
        "--verify-key",
        str(keys / "verify.key"),
    )
    assert code == 1 and "needs 3 good shares of 4, have 2" in one_error_line(err)
    code, out, err = run(
        capsys,
        "share",
        "combine",
        *(str(shares / f"share-{j}") for j in (1, 2, 3)),
        "--out",
        str(inbox),
        "--verify-key",
        str(keys / "verify.key"),
    )
    line = one_error_line(err)
    assert code == 1 and f"{shares / 'share-1'}: data block of segment 0 does not match" in line
    assert not inbox.exists()
    # with a spare the damaged share is reported as a warning, the dataset still arrives
    code, out, err = run(
        capsys,
        "share",
        "combine",
        *(str(shares / f"share-{j}") for j in (4, 1, 2, 3)),
        "--out",
        str(inbox),
        "--verify-key",
        str(keys / "verify.key"),
    )
    assert code == 0 and out == f"{inbox / 'study-0042'}\n"
    assert f"warning: did not use {shares / 'share-1'}: data block of segment 0" in err


def test_subprocess_exit_codes_and_streams(tmp_path, keys, radiology_study):
    """The installed entry point: stdout carries only the transfer id."""
    command = [
        sys.executable,
        "-m",
        "enclave",
        "share",
        "split",
        str(radiology_study),
        "--k",
        "2",
        "--n",
        "2",
        "--out",
        str(tmp_path / "s"),
        "--sign-key",
        str(keys / "signing.key"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"[0-9a-f]{32}\n", done.stdout)
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip().startswith("error: ") and "share-1 already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_share_group_is_light_to_import():
    """Other commands join this group; importing it must not pull in the crypto stack (the
    lowest layer's errors module may load, the codec may not)."""
    heavy = ["secret_sharing.split", "secret_sharing.combine", "rich", "zfec", "cryptography"]
    code = (
        "import sys, enclave.cli.share as s; "
        f"print(s.share.name, *[m in sys.modules for m in {heavy!r}])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["share"] + ["False"] * len(heavy)
