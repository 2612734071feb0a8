"""The gateway's studies reach a real enclave: ``enclave gateway send`` with a running ingestion
service, and ``enclave gateway serve --send-to`` sending each completed study by itself, exactly
once, finishing after a crash what it had begun, retrying with backoff and logging counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from enclave.cli import main
from ingestion.gateway import Gateway
from ingestion.gateway_send import Sender, SendTarget
from tests.ingestion.gateway_peers import (
    gateway_config,
    needs,
    phi_found,
    running_gateway,
)

CT = str(get_testdata_file("CT_small.dcm", download=False))
MR = str(get_testdata_file("MR_small.dcm", download=False))
PHI = ["CompressedSamples", "1CT1", "4MR1", "JFK IMAGING CENTER"]
OPTIONS = ["113108", "113111"]  # what gateway_config applies


def storescu(port: int, *files: str, aet: str = "PACS") -> None:
    result = subprocess.run(
        [needs("storescu"), "-aet", aet, "-aec", "ENCLAVEGW", "127.0.0.1", str(port), *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def allowed(enclave, provider):
    enclave.catalog.set_provider_deid_options(provider.name, OPTIONS, actor="test")
    return provider


def test_gateway_send_delivers_the_dataset_folder_which_the_enclave_catalogs(
    enclave, allowed, service, tmp_path, capsys
):
    config = gateway_config(tmp_path / "gw", allowed=frozenset({"PACS"}))
    with running_gateway(config) as gateway:
        storescu(config.port, CT, MR)
        assert gateway.process_ready(all_studies=True) == 2
    code, out, err = run_cli(
        [
            "gateway",
            "send",
            str(config.dataset_dir),
            "--to",
            service.coordinator_url,
            "--token",
            allowed.token,
            "--sign-key",
            str(allowed.signing_key_path),
        ],
        capsys,
    )
    assert code == 0, err
    transfer_id = out.split()[-1]
    assert out.startswith("3 files sent as transfer ")  # two instances and dataset.yaml
    transfer = enclave.wait_for_state(transfer_id, ("cataloged", "quarantined", "failed"))
    assert transfer.state == "cataloged", transfer.reason
    sent = [e for e in Gateway(config).events.read() if e["event"] == "sent"]
    assert sent == [{"at": sent[0]["at"], "event": "sent", "files": 3, "transfer": transfer_id}]


def test_gateway_send_with_a_wrong_token_is_one_line_naming_the_refusal(
    allowed, service, tmp_path, capsys
):
    config = gateway_config(tmp_path / "gw", allowed=frozenset({"PACS"}))
    with running_gateway(config) as gateway:
        storescu(config.port, CT)
        gateway.process_ready(all_studies=True)
    code, _, err = run_cli(
        [
            "gateway",
            "send",
            str(config.dataset_dir),
            "--to",
            service.coordinator_url,
            "--token",
            "not-a-token",
            "--sign-key",
            str(allowed.signing_key_path),
        ],
        capsys,
    )
    assert code != 0 and err.startswith("error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def sender_for(gateway: Gateway, provider, service, **kw) -> Sender:
    target = SendTarget(
        urls=(service.coordinator_url,),
        token=provider.token,
        signing_key=provider.signing_key_path,
        **kw,
    )
    return Sender(gateway, target)


def test_a_completed_study_is_sent_once_even_when_the_pacs_pushes_it_again(
    enclave, allowed, service, tmp_path
):
    config = gateway_config(tmp_path / "gw", allowed=frozenset({"PACS"}), queue_sends=True)
    with running_gateway(config) as gateway:
        sender = sender_for(gateway, allowed, service)
        storescu(config.port, CT)
        gateway.process_ready(all_studies=True)
        assert len(sender.pending()) == 1
        [sent] = sender.send_pending()
        assert sent.files == 1 and sender.pending() == []
        transfer = enclave.wait_for_state(sent.transfer_id, ("cataloged", "quarantined"))
        assert transfer.state == "cataloged", transfer.reason
        storescu(config.port, CT)  # the same study again
        gateway.process_ready(all_studies=True)
        assert sender.pending() == [] and sender.send_pending() == []
    transfers = enclave.catalog.list_transfers(provider=allowed.name)
    assert [t.transfer_id for t in transfers] == [sent.transfer_id]
    events = [e["event"] for e in gateway.events.read()]
    assert events.count("sent") == 1 and events.count("already-sent") == 1
    assert phi_found(PHI, config.out_dir) == []


def test_a_crash_after_the_upload_but_before_the_ledger_resends_the_same_transfer(
    enclave, allowed, service, tmp_path, monkeypatch
):
    config = gateway_config(tmp_path / "gw", allowed=frozenset({"PACS"}), queue_sends=True)
    with running_gateway(config) as gateway:
        storescu(config.port, CT, MR)
        gateway.process_ready(all_studies=True)
    assert len(Sender(gateway, SendTarget(("x",), "t", Path("k"))).pending()) == 2

    import ingestion.gateway_send as module

    real = module.write_durably

    def crash(path: Path, data: bytes) -> None:
        if path.parent == config.sent_ledger:
            raise KeyboardInterrupt("power cut")  # after send_shares returned
        real(path, data)

    monkeypatch.setattr(module, "write_durably", crash)
    first = sender_for(gateway, allowed, service)
    with pytest.raises(KeyboardInterrupt):
        first.send_pending()
    uploaded = enclave.catalog.list_transfers(provider=allowed.name)
    assert len(uploaded) == 1
    monkeypatch.setattr(module, "write_durably", real)

    restarted = sender_for(Gateway(config), allowed, service)
    done = restarted.send_pending()
    assert len(done) == 2 and done[0].transfer_id == uploaded[0].transfer_id
    transfers = enclave.catalog.list_transfers(provider=allowed.name)
    assert len(transfers) == 2  # one per study: the first was not uploaded twice
    for t in transfers:
        assert (
            enclave.wait_for_state(t.transfer_id, ("cataloged", "quarantined")).state == "cataloged"
        )
    assert restarted.pending() == [] and sorted(p.name for p in config.sent_ledger.iterdir()) == (
        sorted(d.study for d in done)
    )


def test_an_unreachable_enclave_is_retried_with_growing_backoff_and_counts_only_logged(tmp_path):
    config = gateway_config(tmp_path / "gw", allowed=frozenset({"PACS"}), queue_sends=True)
    calls = []

    def failing(shares, urls, token):
        calls.append(len(shares))
        raise ConnectionRefusedError("the enclave is down")

    from secret_sharing import write_keypair

    signing, _ = write_keypair(tmp_path / "keys")
    with running_gateway(config) as gateway:
        storescu(config.port, CT)
        gateway.process_ready(all_studies=True)
        target = SendTarget(("http://127.0.0.1:9",), "token", signing, backoff_base=1.0)
        sender = Sender(gateway, target, send=failing)
        waits = []
        for _ in range(4):
            assert sender.run_once() == 0
            waits.append(sender.backoff())
    assert waits == [1.0, 2.0, 4.0, 8.0] and calls == [3, 3, 3, 3]
    assert sender.pending() != []  # kept for the next try
    failed = [e for e in gateway.events.read() if e["event"] == "send-failed"]
    assert [e["failures"] for e in failed] == [1, 2, 3, 4]
    assert all(set(e) == {"at", "event", "error", "failures"} for e in failed)


def test_gateway_serve_with_send_to_sends_each_completed_study_by_itself(
    enclave, allowed, service, tmp_path
):
    token_file = tmp_path / "token"
    token_file.write_text(allowed.token + "\n")
    port = gateway_config(tmp_path, allowed=frozenset()).port
    out = tmp_path / "gw"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "enclave",
            "gateway",
            "serve",
            "--ae-title",
            "ENCLAVEGW",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--allow-calling-ae",
            "PACS",
            "--out",
            str(out),
            "--deid-option",
            "113108",
            "--deid-option",
            "113111",
            "--no-burned-in",
            "CT",
            "--no-burned-in",
            "MR",
            "--complete-after",
            "1",
            "--reserve-mb",
            "0",
            "--send-to",
            service.coordinator_url,
            "--token-file",
            str(token_file),
            "--sign-key",
            str(allowed.signing_key_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 30
        events = out / ".gateway" / "events.jsonl"
        while not events.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the server socket opens right after the "started" event
        storescu(port, CT, MR)
        sent: list[dict] = []
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            lines = events.read_text().splitlines()
            sent = [e for e in map(json.loads, lines) if e["event"] == "sent"]
        assert len(sent) == 2, events.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode()
    assert "Traceback" not in output, output
    for event in sent:
        t = enclave.wait_for_state(event["transfer"], ("cataloged", "quarantined"))
        assert t.state == "cataloged", t.reason
    assert phi_found(PHI, out) == []
    assert all(set(e) == {"at", "event", "study", "count", "transfer"} for e in sent)
