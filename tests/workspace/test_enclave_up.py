"""``enclave up`` / ``down`` as an operator runs them, the demo journey as a new user lives it,
and ``enclave users`` / ``enclave course`` against the running enclave.

The state directory is prepared with this test's own ports, address range and prefixes
(``STATE_DIR/hub/settings.json``), so a real enclave on this machine is never touched.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, needs_root_and_tools, private_range

pytestmark = pytest.mark.timeout(600)


def enclave(
    *args: str, stdin: str | None = None, timeout: float = 400
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "enclave", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def site():
    """A state directory with test settings; everything is removed afterwards."""
    needs_root_and_tools()
    from enclave.workspace.hub import HubSettings

    state_dir = Path(tempfile.mkdtemp(prefix="enclave-up-", dir="/tmp"))
    homes = Path(f"{state_dir}-homes")
    tag = uuid.uuid4().hex[:4]
    ingest_port = free_port()
    settings = HubSettings(
        state_dir=str(state_dir),
        public_port=free_port(),
        proxy_api_port=free_port(),
        hub_port=free_port(),
        catalog_port=free_port(),
        ingest_port=ingest_port,
        address_range=private_range(),
        netns_table="enclave_uptest",
        namespace_prefix=f"encup{tag}-",
        veth_prefix="encu-",
        unix_prefix=f"encu{tag}-",
        home_root=str(homes),
        plaintext_root=str(state_dir / "plaintext"),
        lock_path=str(state_dir / "netns.lock"),
        idle_timeout_seconds=3600,
    )
    settings.save()
    try:
        yield settings
    finally:
        enclave("down", "--state-dir", str(state_dir), timeout=120)
        for entry in pwd.getpwall():
            if entry.pw_name.startswith(settings.unix_prefix):
                subprocess.run(["userdel", entry.pw_name], capture_output=True)
        log = settings.hub_dir / "hub.log"
        if log.exists():
            shutil.copyfile(log, Path(tempfile.gettempdir()) / "enclave-up-tests-hub.log")
        for path in (state_dir, homes, settings.server_files_dir):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def first_up(site):
    result = enclave("up", "--state-dir", site.state_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def secrets_block(settings, title: str) -> dict[str, str]:
    text = (Path(settings.state_dir) / "DEMO-ONLY-secrets.txt").read_text()
    block = text.split(f"[{title}]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r"^([a-z ]+): (\S+)$", block, re.M))


def browser_login(
    settings, name: str, password: str, otp_secret: str | None, code: str | None = None
) -> tuple[httpx.Client, httpx.Response]:
    import onetimepass

    client = httpx.Client(
        base_url=settings.public_url.rstrip("/"), follow_redirects=True, timeout=60
    )
    client.get("/hub/login")
    code = code or str(onetimepass.get_totp(otp_secret)).zfill(6)
    reply = client.post(
        "/hub/login",
        data={
            "username": name,
            "password": password,
            "2fa": code,
            "_xsrf": client.cookies.get("_xsrf"),
        },
    )
    return client, reply


def wait_for_lab(client: httpx.Client, name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = client.get(f"/user/{name}/lab")
        if reply.status_code == 200 and f"/user/{name}/lab" in str(reply.url):
            return
        time.sleep(1)
    raise AssertionError(f"{name}'s JupyterLab did not open in {timeout}s")


def test_up_prints_the_url_the_admin_login_and_labels_demo_secrets(site, first_up):
    out, err = first_up.stdout, first_up.stderr
    assert site.public_url in out
    assert "username 'admin'" in out and "TOTP secret" in out
    assert "DEMO ONLY" in err
    secrets = Path(site.state_dir) / "DEMO-ONLY-secrets.txt"
    assert secrets.stat().st_mode & 0o777 == 0o600 and secrets.stat().st_uid == 0
    assert "[custodian mnemonics]" in secrets.read_text()
    assert "published and granted to group demo-researchers" in err


def test_demo_researcher_finds_the_dataset_and_the_catalog(site, first_up):
    login = secrets_block(site, "demo researcher login")
    _, refused = browser_login(site, "demo-researcher", login["password"], None, code="000000")
    assert refused.status_code == 403  # a password alone is not enough
    client, reply = browser_login(site, "demo-researcher", login["password"], login["totp secret"])
    assert reply.status_code == 200 and "/hub/login" not in str(reply.url)
    try:
        client.get("/hub/spawn")
        wait_for_lab(client, "demo-researcher")
        listing = client.get("/user/demo-researcher/api/contents/datasets/demo-ct/1")
        assert listing.status_code == 200
        names = {item["name"] for item in listing.json()["content"]}
        assert {"dicom", "segmentations", "tables", "dataset.yaml"} <= names
        assert (
            client.get("/user/demo-researcher/files/datasets/demo-ct/1/dataset.yaml").status_code
            == 403
        )
        catalog = client.get("/services/catalog/")
        assert catalog.status_code == 200 and "demo-ct" in catalog.text
    finally:
        client.close()


def test_users_add_gives_a_role_and_a_one_time_login(site, first_up):
    made = enclave("users", "add", "rita", "--role", "researcher", "--state-dir", site.state_dir)
    assert made.returncode == 0, made.stderr
    password = re.search(r"initial password: (\S+)", made.stdout).group(1)
    secret = re.search(r"TOTP secret: (\S+)", made.stdout).group(1)
    client, reply = browser_login(site, "rita", password, secret)
    client.close()
    assert reply.status_code == 200 and "/hub/login" not in str(reply.url)
    again = enclave("users", "add", "rita", "--role", "researcher", "--state-dir", site.state_dir)
    assert again.returncode == 0 and "unchanged" in again.stdout
    bad = enclave(
        "users", "add", "Bad Name!", "--role", "researcher", "--state-dir", site.state_dir
    )
    assert bad.returncode != 0 and "not allowed" in bad.stderr
    listed = enclave("users", "list", "--state-dir", site.state_dir)
    assert re.search(r"^rita\s+(running|-)\s+researchers$", listed.stdout, re.M), listed.stdout


def test_course_enrols_a_class_whose_access_is_rebuilt_at_each_spawn(site, first_up, tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text("username,email\nstu1,stu1@example.edu\nstu2,stu2@example.edu\n")
    ends = (date.today() + timedelta(days=30)).isoformat()
    made = enclave(
        "course",
        "create",
        "ml101",
        "--students",
        str(roster),
        "--datasets",
        "demo-ct:1",
        "--ends",
        ends,
        "--state-dir",
        site.state_dir,
    )
    assert made.returncode == 0, made.stderr
    assert "2 student(s) (2 new)" in made.stdout
    creds = Path(site.state_dir) / "courses" / "ml101-credentials.csv"
    assert creds.stat().st_mode & 0o777 == 0o600

    from catalog.db import resolve_database_url
    from catalog.service import open_catalog
    from enclave.workspace.hub import admin_token

    api = httpx.Client(
        base_url=f"{site.public_url}hub/api",
        timeout=60,
        headers={"Authorization": f"token {admin_token(site)}"},
    )
    token = api.post("/users/stu1/tokens", json={"note": "test"}).json()["token"]
    user = httpx.Client(
        base_url=site.public_url.rstrip("/"),
        timeout=60,
        headers={"Authorization": f"token {token}"},
    )

    def spawn_and_list() -> list[str]:
        assert api.post("/users/stu1/server").status_code in (201, 202)
        for _ in range(120):
            if api.get("/users/stu1").json()["servers"].get("", {}).get("ready"):
                break
            time.sleep(0.5)
        listing = user.get("/user/stu1/api/contents/datasets").json()["content"]
        names = [
            f"{d['name']}/{v['name']}"
            for d in listing
            for v in user.get(f"/user/stu1/api/contents/datasets/{d['name']}").json()["content"]
        ]
        api.delete("/users/stu1/server")
        for _ in range(120):
            if not api.get("/users/stu1").json()["servers"]:
                break
            time.sleep(0.5)
        return names

    assert spawn_and_list() == ["demo-ct/1"]
    with open_catalog(resolve_database_url(Path(site.state_dir))) as catalog:
        catalog.revoke("demo-ct", 1, group="course-ml101", actor="test")
    assert spawn_and_list() == []  # revoked: gone at the next spawn
    api.close()
    user.close()


def test_course_refuses_bad_rosters_datasets_and_dates(site, first_up, tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text("email\na@example.edu\n")
    ends = (date.today() + timedelta(days=5)).isoformat()
    no_column = enclave(
        "course",
        "create",
        "c1",
        "--students",
        str(roster),
        "--datasets",
        "demo-ct:1",
        "--ends",
        ends,
        "--state-dir",
        site.state_dir,
    )
    assert no_column.returncode != 0 and "'username' column" in no_column.stderr
    roster.write_text("username\nok1\n")
    unknown = enclave(
        "course",
        "create",
        "c1",
        "--students",
        str(roster),
        "--datasets",
        "no-such-data:1",
        "--ends",
        ends,
        "--state-dir",
        site.state_dir,
    )
    assert unknown.returncode != 0 and "no-such-data" in unknown.stderr
    past = enclave(
        "course",
        "create",
        "c1",
        "--students",
        str(roster),
        "--datasets",
        "demo-ct:1",
        "--ends",
        "2020-01-01",
        "--state-dir",
        site.state_dir,
    )
    assert past.returncode != 0 and "not in the future" in past.stderr
    malformed = enclave(
        "course",
        "create",
        "c1",
        "--students",
        str(roster),
        "--datasets",
        "demo-ct",
        "--ends",
        ends,
        "--state-dir",
        site.state_dir,
    )
    assert malformed.returncode != 0 and "NAME:VERSION" in malformed.stderr


def test_down_stops_everything_and_state_survives_a_restart(site, first_up):
    from enclave.workspace.launcher import hub_pid

    down = enclave("down", "--state-dir", site.state_dir, timeout=120)
    assert down.returncode == 0 and "enclave stopped" in down.stdout
    assert hub_pid(site) is None
    assert (
        not [n for n in os.listdir("/run/netns") if n.startswith(site.namespace_prefix)]
        if os.path.isdir("/run/netns")
        else True
    )
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert site.netns_table not in tables
    assert site.state_dir not in Path("/proc/self/mountinfo").read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(site.public_url, timeout=2)

    again = enclave("up", "--state-dir", site.state_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "credentials were printed at the first start" in again.stdout
    assert "demo:" not in again.stderr  # the demo dataset is still there: no second journey
    listed = enclave("users", "list", "--state-dir", site.state_dir)
    assert "rita" in listed.stdout and "stu2" in listed.stdout
