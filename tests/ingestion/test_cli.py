"""``enclave providers add``, ``enclave share send`` and ``enclave share status`` as a data
manager runs them."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

import enclave.cli.send  # noqa: F401 - registers send/status on the share group
from enclave.cli import main
from ingestion.client import send_shares
from ingestion.shares import read_prologue


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_providers_add_prints_a_token_that_authenticates(enclave, tmp_path, capsys):
    from secret_sharing import write_keypair

    _, verify = write_keypair(tmp_path / "keys")
    code, out, err = run_cli(
        [
            "providers",
            "add",
            "north-hospital",
            "--verify-key",
            str(verify),
            "--state-dir",
            str(enclave.state_dir),
            "--quota-gb",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    token = out.strip()
    provider = enclave.catalog.authenticate_provider(token)
    assert provider.name == "north-hospital" and provider.quota_bytes == 2_000_000_000
    assert token not in (enclave.state_dir / "catalog.sqlite").read_bytes().decode("latin-1")

    code, _, err = run_cli(
        [
            "providers",
            "add",
            "north-hospital",
            "--verify-key",
            str(verify),
            "--state-dir",
            str(enclave.state_dir),
        ],
        capsys,
    )
    assert code != 0 and "already exists" in err


def test_providers_add_refuses_a_file_that_is_not_a_key(enclave, tmp_path, capsys):
    bogus = tmp_path / "verify.key"
    bogus.write_text("not a key\n")
    code, _, err = run_cli(
        [
            "providers",
            "add",
            "x-hospital",
            "--verify-key",
            str(bogus),
            "--state-dir",
            str(enclave.state_dir),
        ],
        capsys,
    )
    assert code != 0 and err.startswith("error:") and "Traceback" not in err


def test_share_send_then_status_through_the_cli(
    enclave, provider, service, sample_dataset, split, capsys
):
    shares = split(sample_dataset, provider)
    code, out, err = run_cli(
        [
            "share",
            "send",
            *map(str, shares.share_paths),
            "--to",
            service.coordinator_url,
            "--token",
            provider.token,
        ],
        capsys,
    )
    assert code == 0, err
    assert f"transfer {shares.transfer_id}" in out and "share 1 ->" in out
    # On demand: the first k went, the enclave verified them, the spares stayed home.
    assert "share 4 ->" in out and "not needed (the enclave verified the first k shares)" in out
    assert any(line.startswith(f"transfer {shares.transfer_id}: ") for line in out.splitlines())

    transfer = enclave.wait_for_state(shares.transfer_id, ("cataloged", "quarantined", "failed"))
    assert transfer.state == "cataloged", transfer.reason
    code, out, err = run_cli(
        [
            "share",
            "status",
            shares.transfer_id,
            "--to",
            service.coordinator_url,
            "--token",
            provider.token,
        ],
        capsys,
    )
    assert code == 0, err
    assert "cataloged" in out and "demo-ct version 1 (pending-review)" in out


def test_share_status_shows_each_share_while_the_transfer_is_receiving(
    provider, service, sample_dataset, split, capsys
):
    shares = split(sample_dataset, provider)
    for index in (1, 2):  # two shares begun (prologue only), the others not sent
        url = f"{service.receiver_urls[index - 1]}/v1/transfers/{shares.transfer_id}/shares/{index}"
        prologue = read_prologue(shares.share_paths[index - 1])
        resp = httpx.post(
            url, content=prologue, headers={"authorization": f"Bearer {provider.token}"}
        )
        assert resp.status_code == 200, resp.text
    code, out, err = run_cli(
        [
            "share",
            "status",
            shares.transfer_id,
            "--to",
            service.coordinator_url,
            "--token",
            provider.token,
        ],
        capsys,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"transfer {shares.transfer_id}: receiving"
    length = shares.share_paths[0].stat().st_size
    for index in (1, 2):
        line = next(line for line in lines if line.startswith(f"  share {index}: "))
        assert f"/{length} bytes" in line and "%" in line
    assert not any(line.startswith(("  share 3:", "  share 4:", "  share 5:")) for line in lines)


def test_share_status_of_a_quarantined_transfer_gives_the_reason_and_a_report_link_that_works(
    enclave, provider, service, split, tmp_path, capsys
):
    from enclave.samples import make_sample_dataset
    from tests.phi import planting

    dataset = make_sample_dataset(
        tmp_path / "phi",
        name="phi-ct",
        subjects=1,
        slices=4,
        size=32,
        edit_header=planting("patient-name"),
    )
    shares = split(dataset, provider)
    send_shares(shares.share_paths, [service.coordinator_url], provider.token)
    transfer = enclave.wait_for_state(shares.transfer_id, ("cataloged", "quarantined", "failed"))
    assert transfer.state == "quarantined"
    code, out, err = run_cli(
        [
            "share",
            "status",
            shares.transfer_id,
            "--to",
            service.coordinator_url,
            "--token",
            provider.token,
        ],
        capsys,
    )
    assert code == 0, err
    assert out.startswith(f"transfer {shares.transfer_id}: quarantined")
    assert "  reason: " in out
    link = next(line for line in out.splitlines() if line.startswith("  report: "))
    url = link.removeprefix("  report: ")
    assert url == f"{service.coordinator_url}/v1/transfers/{shares.transfer_id}/report"
    report = httpx.get(url, headers={"authorization": f"Bearer {provider.token}"})
    assert report.status_code == 200 and report.json()["passed"] is False


def test_share_status_of_an_unknown_transfer_is_an_error(provider, service, capsys):
    code, _, err = run_cli(
        ["share", "status", "ab" * 16, "--to", service.coordinator_url, "--token", provider.token],
        capsys,
    )
    assert code != 0 and "ab" * 16 in err


def test_share_send_with_a_bad_token_says_refused(provider, service, sample_dataset, split, capsys):
    shares = split(sample_dataset, provider)
    code, _, err = run_cli(
        [
            "share",
            "send",
            str(shares.share_paths[0]),
            "--to",
            service.coordinator_url,
            "--token",
            "wrong",
        ],
        capsys,
    )
    assert code != 0 and "401" in err and "token" in err


@pytest.mark.parametrize("group", ["ingest", "providers"])
def test_groups_are_registered(group):
    proc = subprocess.run(
        [sys.executable, "-m", "enclave", group, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "Usage" in proc.stdout
