"""The airlock end to end on a real hub: a researcher asks from inside her session to export
results, some of which must not leave; one reviewer votes in the review page (headless
Chromium), the other with the CLI; the release downloads once with a signed manifest whose
hashes match; the provider sees where its data went; the audit log verifies.

The tests run in file order, as the people would act. Pages are saved as PNGs.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from ..workspace.conftest import Kernel
from .conftest import DATA_MANAGER, EXPORTER, GRANTED, REVIEWER_1, REVIEWER_2
from .test_pages import log_in, shoot, wait_for, wait_until

pytestmark = [pytest.mark.root, pytest.mark.browser, pytest.mark.timeout(300)]

FACTS: dict[str, Any] = {}


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    """A real PNG (a gradient), so the reviewer's preview shows a picture."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes((x * 4) % 256 for x in range(width)) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def token_for(enclave: Any, name: str) -> str:
    hub = enclave.hub
    if name not in hub.tokens:
        with hub.admin() as api:
            reply = api.post(f"/users/{name}/tokens", json={"note": "airlock tests"})
            reply.raise_for_status()
        hub.tokens[name] = reply.json()["token"]
    return hub.tokens[name]


def enclave_cli(*args: str, token: str, url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "enclave", *args, "--url", url, "--token", token],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def airlock_url(enclave: Any) -> str:
    return f"{enclave.hub.url}/services/airlock/"


SESSION_CODE = """
import json, shutil, struct, subprocess
from pathlib import Path
import enclave.data as ed

out = Path.home() / "outputs"
dicom = sorted((Path.home() / "datasets" / "{name}" / "1").rglob("*.dcm"))[0]
shutil.copy(dicom, out / "scan.dcm")
shutil.copy(dicom, out / "scan.png")
(out / "counts.csv").write_text("site,patients\\nOslo,42\\nBergen,3\\n")
(out / "notes.txt").write_text("the outlier is " + dicom.parent.parent.name + "\\n")
header = b'{{"w": {{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}}}'
weights = struct.pack("<Q", len(header)) + header + bytes(4)
(out / "unet.safetensors").write_bytes(weights)
(out / "figures").mkdir(exist_ok=True)
(out / "figures" / "roc.png").write_bytes(bytes.fromhex("{png}"))
with ed.training_run("unet-lung", datasets=["{name}@1"], params={{"lr": 0.001}}) as run:
    run.output("trained.safetensors").write_bytes(weights + b"trained")
proc = subprocess.run(
    ["enclave", "airlock", "submit", "scan.dcm", "scan.png", "counts.csv", "notes.txt",
     "unet.safetensors", "trained.safetensors", "figures", "--json",
     "-j", "Figures, counts and the trained model for the paper"],
    capture_output=True, text=True, cwd=out,
)
print(json.dumps({{"code": proc.returncode, "out": proc.stdout, "err": proc.stderr}}))
"""


def test_a_researcher_submits_from_her_session_and_each_unsafe_file_is_held_with_its_reason(
    enclave,
):
    token_for(enclave, EXPORTER)
    enclave.hub.spawn(EXPORTER, kind="notebook", timeout=120)
    kernel = Kernel(enclave.hub, EXPORTER)
    raw = kernel.run(SESSION_CODE.format(name=GRANTED, png=png_bytes().hex()), timeout=180)
    result = json.loads(raw.strip().splitlines()[-1])
    assert result["code"] == 0, result["err"]
    request = json.loads(result["out"])
    FACTS["request"] = request
    assert request["state"] == "in-review", request
    files = {f["name"]: f for f in request["files"]}

    def why(name: str) -> str:
        return " | ".join(c["reason"] for c in files[name]["checks"] if c["verdict"] != "pass")

    assert files["scan.dcm"]["verdict"] == "refuse"
    assert "copy of dataset file lung-ct v1" in why("scan.dcm")
    assert files["scan.png"]["verdict"] == "refuse"
    assert "the name says .png but the content is dicom" in why("scan.png")
    assert files["counts.csv"]["verdict"] == "hold"
    assert "Bergen / patients is 3 (below 10)" in why("counts.csv")
    assert files["notes.txt"]["verdict"] == "hold"
    assert "is a subject identifier of lung-ct v1" in why("notes.txt")
    assert files["unet.safetensors"]["verdict"] == "hold"
    assert "no lineage record for this model" in why("unet.safetensors")
    assert files["trained.safetensors"]["verdict"] == "pass"
    lineage = files["trained.safetensors"]["lineage"]
    assert lineage["datasets"][0]["catalog"] == "confirmed"
    assert files["figures/roc.png"]["verdict"] == "pass"


def test_the_requester_cannot_vote_on_her_own_request(enclave):
    rid = FACTS["request"]["id"]
    proc = enclave_cli(
        "airlock",
        "review",
        str(rid),
        "--approve",
        "-m",
        "mine",
        token=token_for(enclave, EXPORTER),
        url=airlock_url(enclave),
    )
    assert proc.returncode != 0
    assert "ada may not review export requests" in proc.stderr


def test_a_reviewer_sees_checks_and_lineage_in_the_review_page_and_votes(
    enclave, browser_for, screenshots
):
    from selenium.webdriver.common.by import By

    rid = FACTS["request"]["id"]
    driver = browser_for(REVIEWER_1)
    log_in(driver, enclave, REVIEWER_1, next_path=f"/services/airlock/requests/{rid}")
    wait_until(
        driver,
        lambda d: f"/services/airlock/requests/{rid}" in d.current_url,
        f"not sent to the request page: {driver.current_url}",
        timeout=60,
    )
    wait_for(driver, "#files")
    text = driver.find_element(By.TAG_NAME, "body").text
    assert f"Export request #{rid}" in text
    assert "the name says .png but the content is dicom" in text
    assert "Bergen / patients is 3 (below 10)" in text
    assert "Lineage: run" in text and "confirmed" in text
    shoot(driver, screenshots, "airlock-01-review-page")
    # The preview of a file the checks passed opens; a refused one is not offered.
    names = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "div.file h3 a")]
    assert names.count("preview") == 3  # tables, text and pictures no check refused
    driver.find_element(By.CSS_SELECTOR, "input[name=decision][value=approve]").click()
    driver.find_element(By.CSS_SELECTOR, "input[name=exclude][value='notes.txt']").click()
    driver.find_element(By.NAME, "comment").send_keys(
        "Counts aggregate enough for a site table; the untracked model is the baseline."
    )
    shoot(driver, screenshots, "airlock-02-vote-filled")
    driver.find_element(By.CSS_SELECTOR, "#review button[type=submit]").click()
    wait_until(
        driver,
        lambda d: "Votes (1/2)" in d.find_element(By.TAG_NAME, "body").text,
        "the vote was not recorded",
    )
    assert driver.find_element(By.ID, "state").text == "in-review"  # one approval: no release
    shoot(driver, screenshots, "airlock-03-after-first-vote")


def test_one_approval_does_not_release_and_the_second_reviewer_votes_blind(enclave):
    rid = FACTS["request"]["id"]
    url = airlock_url(enclave)
    early = enclave_cli(
        "airlock",
        "download",
        str(rid),
        "-o",
        "/tmp/never.zip",
        token=token_for(enclave, EXPORTER),
        url=url,
    )
    assert early.returncode != 0 and "in-review: nothing to download" in early.stderr
    seen = enclave_cli(
        "airlock", "show", str(rid), "--json", token=token_for(enclave, REVIEWER_2), url=url
    )
    shown = json.loads(seen.stdout)
    assert shown["votes"] == [] and shown["votes_cast"] == 1
    vote = enclave_cli(
        "airlock",
        "review",
        str(rid),
        "--approve",
        "--exclude",
        "notes.txt",
        "-m",
        "Agree; the table is fine at site level.",
        token=token_for(enclave, REVIEWER_2),
        url=url,
    )
    assert vote.returncode == 0, vote.stderr
    assert "it is now released" in vote.stdout


def test_the_release_downloads_with_a_signed_manifest_whose_hashes_match(enclave, tmp_path):
    import zipfile

    rid = FACTS["request"]["id"]
    url = airlock_url(enclave)
    target = tmp_path / "export.zip"
    got = enclave_cli(
        "airlock",
        "download",
        str(rid),
        "-o",
        str(target),
        token=token_for(enclave, EXPORTER),
        url=url,
    )
    assert got.returncode == 0, got.stderr
    checked = enclave_cli(
        "airlock", "verify", str(target), token=token_for(enclave, EXPORTER), url=url
    )
    assert checked.returncode == 0, checked.stderr
    assert "verified" in checked.stdout
    with zipfile.ZipFile(target) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        released = sorted(n.removeprefix("files/") for n in zf.namelist() if n.startswith("files/"))
    assert released == [
        "counts.csv",
        "figures/roc.png",
        "trained.safetensors",
        "unet.safetensors",
    ]
    submitted = {f["name"]: f["sha256"] for f in FACTS["request"]["files"]}
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == {
        name: submitted[name] for name in released
    }
    FACTS["manifest"] = manifest


def test_the_provider_sees_who_had_its_data_and_what_left_derived_from_it(
    enclave, browser_for, screenshots
):
    from selenium.webdriver.common.by import By

    driver = browser_for(DATA_MANAGER)
    log_in(driver, enclave, DATA_MANAGER, next_path="/services/airlock/provider")
    wait_until(
        driver,
        lambda d: "/services/airlock/provider" in d.current_url,
        f"not sent to the provider page: {driver.current_url}",
        timeout=60,
    )
    wait_for(driver, "section.version")
    text = driver.find_element(By.TAG_NAME, "body").text
    assert "group:researchers" in text  # the grant
    assert EXPORTER in text  # her mount, and the release
    assert "trained.safetensors" in text
    shoot(driver, screenshots, "airlock-04-provider-page")


def test_the_audit_log_holds_logins_mounts_and_the_airlock_and_verifies(enclave):
    from catalog.db import resolve_database_url
    from catalog.service import open_catalog

    state_dir = enclave.hub.state_dir
    with open_catalog(resolve_database_url(Path(state_dir))) as catalog:
        actions = {(e.actor, e.action) for e in catalog.audit_events(limit=2000)}
    assert (REVIEWER_1, "login") in actions
    assert (EXPORTER, "dataset.mount") in actions
    assert (EXPORTER, "server.start") in actions
    assert (REVIEWER_1, "airlock.vote") in actions and (EXPORTER, "airlock.download") in actions
    for args in (("checkpoint",), ("verify",)):
        proc = subprocess.run(
            [sys.executable, "-m", "enclave", "audit", *args, "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
