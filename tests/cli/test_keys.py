"""Master key custody: init, unseal, and every way custodians get it wrong."""

from __future__ import annotations

import json
import os
import stat

import pytest

from enclave import custody


@pytest.fixture
def sealed_enclave(tmp_path, run_enclave):
    """An enclave with a 3-of-5 master key; returns (state_dir, mnemonics)."""
    state = tmp_path / "state"
    result = run_enclave(
        "keys", "init", "--state-dir", str(state), "--custodians", "5", "--threshold", "3"
    )
    assert result.exit_code == 0, result.stderr
    mnemonics = result.stdout.strip().splitlines()
    return state, mnemonics


def test_init_prints_one_mnemonic_per_custodian(sealed_enclave):
    state, mnemonics = sealed_enclave
    assert len(mnemonics) == 5
    assert len(set(mnemonics)) == 5
    assert all(len(m.split()) == 33 for m in mnemonics)  # 256-bit secret: 33 words


def test_state_dir_keeps_only_a_check_value(sealed_enclave):
    state, mnemonics = sealed_enclave
    files = sorted(p.name for p in state.iterdir())
    assert files == ["custody.json"]
    record = json.loads((state / "custody.json").read_text())
    assert set(record) == {
        "version",
        "identifier",
        "threshold",
        "custodians",
        "check",
        "created_at",
    }
    assert stat.S_IMODE(os.stat(state / "custody.json").st_mode) == 0o600
    master = custody.unseal(state, mnemonics[:3])
    # The record holds neither the key nor the derived wrapping key.
    raw = (state / "custody.json").read_bytes()
    assert master._wrap_key.hex().encode() not in raw


@pytest.mark.parametrize("subset", [(0, 1, 2), (2, 3, 4), (4, 0, 2), (1, 3, 4, 0)])
def test_any_threshold_subset_unseals_from_stdin(sealed_enclave, run_enclave, subset):
    state, mnemonics = sealed_enclave
    lines = "\n".join(mnemonics[i] for i in subset) + "\n"
    result = run_enclave("keys", "unseal", "--state-dir", str(state), stdin=lines)
    assert result.exit_code == 0, result.stderr
    assert "unsealed" in result.stdout


def test_unsealed_keys_from_different_subsets_wrap_compatibly(sealed_enclave):
    state, mnemonics = sealed_enclave
    first = custody.unseal(state, mnemonics[:3])
    second = custody.unseal(state, mnemonics[2:])
    wrapped = first.wrap(b"k" * 32, b"dataset demo-ct v1")
    assert second.unwrap(wrapped, b"dataset demo-ct v1") == b"k" * 32
    with pytest.raises(custody.CustodyError, match="does not open"):
        second.unwrap(wrapped, b"dataset demo-ct v2")
    tampered = bytearray(wrapped)
    tampered[-1] ^= 1
    with pytest.raises(custody.CustodyError):
        second.unwrap(bytes(tampered), b"dataset demo-ct v1")


def test_typo_in_a_mnemonic_is_named(sealed_enclave, run_enclave):
    state, mnemonics = sealed_enclave
    words = mnemonics[1].split()
    words[5] = "academic" if words[5] != "academic" else "acid"
    lines = "\n".join([mnemonics[0], " ".join(words), mnemonics[2]]) + "\n"
    result = run_enclave("keys", "unseal", "--state-dir", str(state), stdin=lines)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: mnemonic 2 is not valid")
    assert len(result.stderr.strip().splitlines()) == 1


def test_share_from_another_key_set_is_refused(sealed_enclave, run_enclave, tmp_path):
    state, mnemonics = sealed_enclave
    other = custody.init_custody(tmp_path / "other", custodians=5, threshold=3)
    lines = "\n".join([mnemonics[0], mnemonics[1], other[2]]) + "\n"
    result = run_enclave("keys", "unseal", "--state-dir", str(state), stdin=lines)
    assert result.exit_code == 1
    assert "mnemonic 3 belongs to another key set" in result.stderr


def test_too_few_shares_are_refused(sealed_enclave, run_enclave):
    state, mnemonics = sealed_enclave
    result = run_enclave(
        "keys", "unseal", "--state-dir", str(state), stdin=mnemonics[0] + "\n" + mnemonics[1] + "\n"
    )
    assert result.exit_code == 1
    assert "2 distinct mnemonic share(s) given, 3 needed" in result.stderr


def test_the_same_share_twice_counts_once(sealed_enclave, run_enclave):
    state, mnemonics = sealed_enclave
    lines = "\n".join([mnemonics[0], mnemonics[0], mnemonics[1]]) + "\n"
    result = run_enclave("keys", "unseal", "--state-dir", str(state), stdin=lines)
    assert result.exit_code == 1
    assert "2 distinct" in result.stderr


def test_no_input_says_how_to_unseal(sealed_enclave, run_enclave):
    state, _ = sealed_enclave
    result = run_enclave("keys", "unseal", "--state-dir", str(state), stdin="")
    assert result.exit_code == 1
    assert "sealed" in result.stderr and "3 of 5" in result.stderr


def test_tampered_check_value_is_detected(sealed_enclave):
    state, mnemonics = sealed_enclave
    record = json.loads((state / "custody.json").read_text())
    record["check"] = "0" * 64
    (state / "custody.json").write_text(json.dumps(record))
    with pytest.raises(custody.CustodyError, match="does not match"):
        custody.unseal(state, mnemonics[:3])


def test_init_refuses_to_replace_an_existing_key(sealed_enclave, run_enclave):
    state, _ = sealed_enclave
    result = run_enclave(
        "keys", "init", "--state-dir", str(state), "--custodians", "3", "--threshold", "2"
    )
    assert result.exit_code == 1
    assert "already exists" in result.stderr


@pytest.mark.parametrize(
    ("custodians", "threshold", "message"),
    [
        (3, 4, "--threshold must be between 1 and --custodians"),
        (17, 2, "--custodians must be between"),
        (3, 1, "threshold of 1"),
        (0, 0, "--custodians must be between"),
    ],
)
def test_bad_custodian_counts(tmp_path, run_enclave, custodians, threshold, message):
    result = run_enclave(
        "keys",
        "init",
        "--state-dir",
        str(tmp_path / "s"),
        "--custodians",
        str(custodians),
        "--threshold",
        str(threshold),
    )
    assert result.exit_code == 1
    assert message in result.stderr
    assert not (tmp_path / "s" / "custody.json").exists()


def test_unseal_without_init_says_what_to_run(tmp_path, run_enclave):
    result = run_enclave("keys", "unseal", "--state-dir", str(tmp_path), stdin="x\n")
    assert result.exit_code == 1
    assert "enclave keys init" in result.stderr


def test_status(sealed_enclave, run_enclave, tmp_path):
    state, _ = sealed_enclave
    assert "3 of 5" in run_enclave("keys", "status", "--state-dir", str(state)).stdout
    assert (
        "no master key"
        in run_enclave("keys", "status", "--state-dir", str(tmp_path / "none")).stdout
    )
