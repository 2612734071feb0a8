"""Orthanc (Debian's ``orthanc``) as the hospital's PACS: a study uploaded to it through its
REST API and pushed to the gateway with C-STORE arrives, is de-identified into a dataset the
enclave's validator accepts, and none of the original identifiers is left in the gateway's
output, event log or state; Orthanc calling under an AE title not on the allow-list is
refused."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file

from ingestion.validate import validate_dataset
from tests.ingestion.gateway_peers import (
    gateway_config,
    phi_found,
    running_gateway,
    running_orthanc,
)

CT = str(get_testdata_file("CT_small.dcm", download=False))

#: Identifiers planted into the study before the PACS gets it (all made up).
PHI = {
    "PatientName": "Tanaka^Hanako^Q",
    "PatientID": "MRN-8812-4471",
    "PatientBirthDate": "19580317",
    "AccessionNumber": "ACC-99-31337",
    "OtherPatientIDs": "NHS-4431-9876",
    "InstitutionName": "Shibuya Memorial Hospital",
    "ReferringPhysicianName": "Suzuki^Ichiro",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.99123456789012345",
}


def study_with_phi(tmp_path: Path, slices: int = 3) -> list[Path]:
    """``slices`` CT instances of one study carrying the planted identifiers."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(slices):
        ds = dcmread(CT)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.SeriesInstanceUID = PHI["StudyInstanceUID"] + ".1"
        ds.SOPInstanceUID = f"{PHI['StudyInstanceUID']}.1.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        step = float(ds.SliceThickness) * i
        ds.ImagePositionPatient = [x, y, z + step]
        ds.SliceLocation = float(ds.get("SliceLocation", z)) + step
        out.append(tmp_path / f"slice-{i}.dcm")
        ds.save_as(out[-1])
    return out


def test_a_study_orthanc_pushes_becomes_a_validated_dataset_with_no_phi_anywhere(tmp_path):
    config = gateway_config(tmp_path / "gateway", allowed=frozenset({"ORTHANC"}))
    with running_gateway(config) as gateway:
        with running_orthanc(
            tmp_path / "orthanc", {"enclave": (config.ae_title, config.port)}
        ) as orthanc:
            studies = {orthanc.upload(path) for path in study_with_phi(tmp_path / "src")}
            assert len(studies) == 1
            pushed = orthanc.push("enclave", studies.pop())
            assert pushed.status_code == 200, pushed.text
        assert gateway.received == 3
        assert gateway.process_ready(all_studies=True) == 3
    outcome = validate_dataset(config.dataset_dir, allowed_options=["113108", "113111"])
    assert outcome.report.errors == [], [f.to_dict() for f in outcome.report.errors]
    files = sorted((config.dataset_dir / "dicom").rglob("*.dcm"))
    assert len(files) == 3
    assert {str(dcmread(f).StudyInstanceUID) for f in files} != {PHI["StudyInstanceUID"]}
    # Output, event log, secret, spool: every file under the gateway's folder, as bytes.
    assert phi_found(list(PHI.values()), config.out_dir) == []
    events = gateway.events.read()
    assert sum(e["count"] for e in events if e["event"] == "received") == 3


def test_orthanc_calling_under_an_ae_title_not_on_the_allow_list_is_refused(tmp_path):
    config = gateway_config(tmp_path / "gateway", allowed=frozenset({"PACS"}))
    with running_gateway(config) as gateway:
        with running_orthanc(
            tmp_path / "orthanc", {"enclave": (config.ae_title, config.port)}, aet="INTRUDER"
        ) as orthanc:
            study = orthanc.upload(study_with_phi(tmp_path / "src", slices=1)[0])
            pushed = orthanc.push("enclave", study)
            assert pushed.status_code == 500
            assert "Association Rejected" in pushed.json()["Details"]
        assert gateway.received == 0
        assert gateway.pending_studies() == []
    assert list(config.spool.iterdir()) == []
