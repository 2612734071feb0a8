"""The gateway's record spool and reactors: an acknowledged image survives a killed gateway
exactly once, a torn record is ignored, and the waiting reactors serve only the gateway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from enclave.samples import make_benchmark_series
from ingestion.gateway import (
    TRANSFER_SYNTAXES,
    Gateway,
    GatewayConfig,
    file_meta_bytes,
    make_ae,
)
from ingestion.gateway_reactor import WaitingAssociation, start_server
from ingestion.gateway_spool import HEADER, MAGIC, SUFFIX, RecordFile, read_records
from tests.ingestion.gateway_peers import free_port, needs

CT = str(get_testdata_file("CT_small.dcm", download=False))

SERVE = """
import json, sys
from pathlib import Path
from ingestion.gateway import GatewayConfig, serve
spec = json.loads(sys.argv[1])
serve(GatewayConfig(ae_title="ENCLAVEGW", port=spec["port"], out_dir=Path(spec["out"]),
      allowed_calling=frozenset({"PACS"}), host="127.0.0.1", complete_after=3600,
      reserve_bytes=0, no_burned_in_modalities=frozenset({"CT"})), block=True)
"""


def config_for(out: Path, port: int) -> GatewayConfig:
    return GatewayConfig(
        ae_title="ENCLAVEGW",
        port=port,
        out_dir=out,
        allowed_calling=frozenset({"PACS"}),
        host="127.0.0.1",
        complete_after=3600,
        reserve_bytes=0,
        no_burned_in_modalities=frozenset({"CT"}),
    )


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the gateway process exited before listening"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def test_a_gateway_killed_after_answering_success_loses_no_image_and_writes_none_twice(tmp_path):
    storescu = needs("storescu")
    source = tmp_path / "study"
    sent = make_benchmark_series(source, series=1, slices=20, size=64)
    out, port = tmp_path / "out", free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, json.dumps({"port": port, "out": str(out)})],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        wait_port(port, proc)
        result = subprocess.run(
            [storescu, "-aet", "PACS", "-aec", "ENCLAVEGW", "+sd", "+r", "-nh"]
            + ["127.0.0.1", str(port), str(source)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown: every Success must already be on disk
        proc.wait()
    restarted = Gateway(config_for(out, port))
    try:
        assert restarted.process_ready(all_studies=True) == len(sent)  # worker processes
    finally:
        restarted.stop()
    written = sorted((out / "pacs-import" / "dicom").rglob("*.dcm"))
    assert len(written) == len(sent)
    assert len({str(dcmread(p).SOPInstanceUID) for p in written}) == len(sent)
    assert restarted.pending_studies() == []
    assert Gateway(config_for(out, port)).process_ready(all_studies=True) == 0


def test_a_torn_record_at_the_end_of_a_spool_file_is_ignored(tmp_path):
    path = tmp_path / ("study" + SUFFIX)
    writer = RecordFile(path)
    writer.append([b"first"])
    writer.append([b"sec", b"ond"])
    writer.close()
    intact = path.read_bytes()
    with open(path, "ab") as fh:  # a crash in the middle of a third, unacknowledged record
        fh.write(HEADER.pack(MAGIC, 100, 0) + b"partial")
    assert [r.read() for r in read_records(path)] == [b"first", b"second"]
    path.write_bytes(intact + HEADER.pack(MAGIC, 4, 0) + b"zero")  # full length, bad checksum
    assert [r.read() for r in read_records(path)] == [b"first", b"second"]
    path.write_bytes(intact + b"\0" * 64)  # a zero-filled tail after a power cut
    assert len(list(read_records(path))) == 2


def test_a_sealed_record_file_refuses_more_records(tmp_path):
    writer = RecordFile(tmp_path / ("a" + SUFFIX))
    writer.close()
    with pytest.raises(ValueError, match="sealed"):
        writer.append([b"late"])


def test_an_instance_sent_twice_is_written_once(tmp_path):
    gateway = Gateway(config_for(tmp_path / "out", 0))
    data = Path(CT).read_bytes()
    ds = dcmread(CT)
    for _ in range(2):  # the PACS did not see the first Success and sent it again
        assert gateway.store(data, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)) == 0
    assert gateway.process_ready(all_studies=True) == 1
    assert len(list((tmp_path / "out").rglob("pacs-import/dicom/**/*.dcm"))) == 1
    gateway.stop()


def test_only_the_gateways_associations_use_the_waiting_reactors(tmp_path):
    from pynetdicom import AE, evt
    from pynetdicom.association import Association
    from pynetdicom.sop_class import Verification

    config = config_for(tmp_path / "out", free_port())
    seen: list[type] = []

    def on_echo(event):
        seen.append(type(event.assoc))
        return 0

    server = start_server(
        make_ae(config), ("127.0.0.1", config.port), evt_handlers=[(evt.EVT_C_ECHO, on_echo)]
    )
    other = AE(ae_title="OTHER")
    other.add_supported_context(Verification)
    plain = other.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, on_echo)]
    )
    try:
        scu = AE(ae_title="PACS")
        scu.add_requested_context(Verification)
        for port, called in ((config.port, "ENCLAVEGW"), (plain.server_address[1], "OTHER")):
            assoc = scu.associate("127.0.0.1", port, ae_title=called)
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            assoc.release()
            assert not isinstance(assoc, WaitingAssociation)  # the requestor is untouched
    finally:
        server.shutdown()
        plain.shutdown()
    assert seen == [WaitingAssociation, Association]


def test_every_offered_transfer_syntax_has_a_pixel_decoder_for_the_validator():
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    for uid in TRANSFER_SYNTAXES:
        assert get_decoder(UID(uid)).is_available, UID(uid).name


def test_the_file_meta_written_before_a_received_dataset_reads_back_with_pydicom():
    from io import BytesIO

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(CT)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    meta = file_meta_bytes(str(ds.SOPClassUID), str(ds.SOPInstanceUID), "1.2.840.10008.1.2")
    back = dcmread(BytesIO(meta + body.getvalue()))
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert back.PatientID == ds.PatientID and back.PixelData == ds.PixelData
