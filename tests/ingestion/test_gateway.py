"""The provider's PACS gateway against real DICOM peers (dcmtk's echoscu and storescu):
allowed senders' studies arrive, are de-identified into a dataset the enclave's validator
accepts, and no original identifier is left in output, log or state; bad input gets a DIMSE
answer and loses nothing."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from ingestion.gateway import Gateway, GatewayConfig, serve
from ingestion.gateway_spool import SUFFIX, read_records
from ingestion.validate import validate_dataset
from ingestion.validators.deid_options import DeidOption
from tests.ingestion.gateway_peers import needs


@pytest.fixture(autouse=True)
def dcmtk_installed() -> None:
    """dcmtk is a real peer here: missing, the tests fail naming the package, never skip."""
    needs("storescu")
    needs("echoscu")


CT = str(get_testdata_file("CT_small.dcm", download=False))
MR = str(get_testdata_file("MR_small.dcm", download=False))
PHI = [b"CompressedSamples", b"1CT1", b"4MR1"]  # patient names and IDs of the two files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def running(tmp_path):
    """A gateway on loopback accepting calling AE PACS; yields (config, gateway)."""
    config = GatewayConfig(
        ae_title="ENCLAVEGW",
        port=free_port(),
        out_dir=tmp_path / "out",
        allowed_calling=frozenset({"PACS"}),
        host="127.0.0.1",
        options=frozenset(
            {DeidOption.RETAIN_PATIENT_CHARACTERISTICS, DeidOption.RETAIN_SAFE_PRIVATE}
        ),
        no_burned_in_modalities=frozenset({"CT", "MR"}),
        complete_after=3600,  # tests finish studies explicitly
        reserve_bytes=0,
    )
    gateway = Gateway(config)
    server = serve(config, gateway, block=False)
    yield config, gateway
    server.shutdown()
    gateway.stop()


def dcmtk(tool: str, config: GatewayConfig, *args: str, aet: str = "PACS"):
    return subprocess.run(
        [tool, "-aet", aet, "-aec", config.ae_title, "127.0.0.1", str(config.port), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_echoscu_from_an_allowed_peer_is_answered(running):
    config, _ = running
    assert dcmtk("echoscu", config).returncode == 0


def test_an_unknown_calling_ae_title_is_rejected_at_association_and_nothing_is_spooled(running):
    config, gateway = running
    result = dcmtk("storescu", config, CT, aet="INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr
    assert gateway.received == 0 and gateway.pending_studies() == []


def test_a_study_sent_by_storescu_becomes_a_dataset_the_validator_accepts_without_phi(running):
    config, gateway = running
    assert dcmtk("storescu", config, CT, MR).returncode == 0
    assert gateway.received == 2
    assert gateway.process_ready(all_studies=True) == 2
    assert gateway.pending_studies() == []
    outcome = validate_dataset(config.dataset_dir, allowed_options=["113108", "113111"])
    assert outcome.report.errors == [], [f.to_dict() for f in outcome.report.errors]
    files = sorted((config.dataset_dir / "dicom").rglob("*.dcm"))
    assert len(files) == 2
    ct = next(dcmread(f) for f in files if dcmread(f).Modality == "CT")
    codes = {item.CodeValue for item in ct.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113108", "113111"}
    assert ct.PatientSex  # kept under Retain Patient Characteristics
    everything = all_bytes(config.out_dir)
    for value in PHI:
        assert value not in everything
    events = gateway.events.read()
    assert [e["event"] for e in events].count("received") == 2
    assert sum(e["count"] for e in events if e["event"] == "deidentified") == 2


def test_a_truncated_file_never_reaches_the_spool(running, tmp_path):
    config, gateway = running
    broken = tmp_path / "broken.dcm"
    data = Path(CT).read_bytes()
    broken.write_bytes(data[: len(data) // 3])  # cut inside the header's elements
    result = dcmtk("storescu", config, str(broken))
    # dcmtk refuses to send a file it cannot parse; nothing of it reaches the spool.
    assert result.returncode != 0
    assert gateway.received == 0
    assert gateway.pending_studies() == []


def test_a_full_disk_is_answered_out_of_resources_and_the_retry_is_kept(running):
    config, gateway = running
    config.reserve_bytes = 1 << 62  # no disk has this much free: the reserve is hit
    refused = dcmtk("storescu", config, CT)
    assert "0xa700" in (refused.stderr + refused.stdout).lower() or refused.returncode != 0
    assert gateway.received == 0
    config.reserve_bytes = 0
    assert dcmtk("storescu", config, CT).returncode == 0
    assert gateway.received == 1
    reasons = [e.get("reason") for e in gateway.events.read() if e["event"] == "refused"]
    assert reasons == ["disk-full"]


def test_a_crash_between_output_and_spool_cleanup_is_finished_by_the_next_start(running):
    config, gateway = running
    assert dcmtk("storescu", config, CT, MR).returncode == 0
    spooled = {p: p.read_bytes() for p in config.spool.rglob("*" + SUFFIX)}
    assert sum(len(list(read_records(p))) for p in spooled) == 2
    gateway.process_ready(all_studies=True)
    out = sorted((config.dataset_dir / "dicom").rglob("*.dcm"))
    # The crash window: outputs written, but the spool copies not yet deleted.
    for path, data in spooled.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    restarted = Gateway(config)
    assert restarted.process_ready(all_studies=True) == 2
    assert restarted.pending_studies() == []
    assert sorted((config.dataset_dir / "dicom").rglob("*.dcm")) == out  # same names, no twins
    assert Gateway(config).process_ready(all_studies=True) == 0
