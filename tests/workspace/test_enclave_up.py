"""``enclave up`` / ``down`` as an operator runs them, the demo journey as a new user lives it,
and ``enclave users`` / ``enclave course`` against the running enclave.

The state directory is prepared with this test's own ports, address range and prefixes
(``STATE_DIR/hub/settings.json``), so a real enclave on this machine is never touched.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from enclave.workspace.hub import RUN_DIR, HubSettings

from .conftest import enclave, temporary_site

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def site():
    with temporary_site("enclave_uptest") as settings:
        yield settings


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


def wait_for_desktop(client: httpx.Client, name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = client.get(f"/user/{name}/")
        if reply.status_code == 200 and "static/desktop/desktop.js" in reply.text:
            return
        time.sleep(1)
    raise AssertionError(f"{name}'s desktop did not open in {timeout}s")


def test_up_works_with_the_state_dir_below_a_private_parent(site, first_up):
    """``--state-dir ~/enclave`` as root: the parent is 0700, so the files every user server
    reads go where servers can reach them (the demo researcher's server then starts, below)."""
    parent = Path(site.state_dir).parent
    assert parent.stat().st_mode & 0o777 == 0o700
    shared = site.server_files_dir
    assert shared.parent == RUN_DIR and shared.stat().st_mode & 0o777 == 0o755
    assert (shared / "jupyter-policy" / "labconfig" / "page_config.json").is_file()
    for folder in (*reversed(shared.parents), shared):
        assert folder.stat().st_mode & 0o005 == 0o005, folder


def test_up_prints_the_url_the_admin_login_and_labels_demo_secrets(site, first_up):
    out, err = first_up.stdout, first_up.stderr
    assert site.public_url in out
    assert "username 'admin'" in out and "TOTP secret" in out
    assert "DEMO ONLY" in err
    secrets = Path(site.state_dir) / "DEMO-ONLY-secrets.txt"
    assert secrets.stat().st_mode & 0o777 == 0o600 and secrets.stat().st_uid == 0
    assert "[custodian mnemonics]" in secrets.read_text()
    assert "published and granted to group demo-researchers" in err


def test_demo_researcher_gets_a_desktop_that_hands_the_browser_no_dataset_byte(site, first_up):
    """The journey from the issue: logged in as the demo researcher, walk datasets/demo-ct/1
    through the contents API with the browser's own cookies. A desktop answers 403."""
    login = secrets_block(site, "demo researcher login")
    _, refused = browser_login(site, "demo-researcher", login["password"], None, code="000000")
    assert refused.status_code == 403  # a password alone is not enough
    client, reply = browser_login(site, "demo-researcher", login["password"], login["totp secret"])
    assert reply.status_code == 200 and "/hub/login" not in str(reply.url)
    try:
        form = client.get("/hub/spawn")
        assert 'value="desktop" checked' in form.text  # a researcher's default session
        client.get("/hub/spawn?opt-kind=desktop")
        wait_for_desktop(client, "demo-researcher")
        base = "/user/demo-researcher"
        for path in (
            "api/contents/datasets/demo-ct/1",
            "api/contents/datasets/demo-ct/1/dataset.yaml?content=1",
            "files/datasets/demo-ct/1/dataset.yaml",
            "api/kernels",
            "lab",
        ):
            assert client.get(f"{base}/{path}").status_code == 403, path
        catalog = client.get("/services/catalog/")
        assert catalog.status_code == 200 and "demo-ct" in catalog.text
        assert "desktop only" in catalog.text  # the demo dataset is granted desktop
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
    from enclave.workspace.launcher import enclave_processes, hub_pid

    down = enclave("down", "--state-dir", site.state_dir, timeout=120)
    assert down.returncode == 0 and "enclave stopped" in down.stdout
    assert hub_pid(site) is None
    assert enclave_processes(site) == {}
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


def assert_nothing_left_running(settings: HubSettings) -> None:
    from enclave.workspace.launcher import enclave_processes, hub_pid

    assert hub_pid(settings) is None
    assert enclave_processes(settings) == {}
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert settings.netns_table not in tables
    for port in (settings.public_port, settings.hub_port, settings.ingest_port):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_failed_demo_journey_stops_the_hub_proxy_and_services(monkeypatch, capsys):
    """As when reconstruction broke on a new cryptography release: the hub and its services
    were up when the demo transfer failed, and they were left running."""
    from enclave.cli import main
    from enclave.workspace import launcher

    def failing_journey(settings, say, **kwargs):
        raise launcher.LaunchError(
            "demo transfer 0123abcd was failed: data and buf must not overlap"
        )

    monkeypatch.setattr(launcher, "run_demo_journey", failing_journey)
    with temporary_site("enclave_upfail") as settings:
        with pytest.raises(SystemExit) as exited:
            main(["up", "--state-dir", settings.state_dir])
        assert exited.value.code != 0
        err = capsys.readouterr().err
        assert "enclave up failed; stopping what it started" in err
        assert "nothing of this enclave is left running" in err
        assert err.strip().endswith(
            "error: demo transfer 0123abcd was failed: data and buf must not overlap"
        )
        assert_nothing_left_running(settings)


def test_up_with_its_public_port_taken_says_so_in_one_line_and_starts_nothing():
    with temporary_site("enclave_upport") as settings, socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((settings.public_ip, settings.public_port))
        squatter.listen()
        result = enclave("up", "--state-dir", settings.state_dir, "--no-demo", timeout=200)
        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1] == (
            f"error: port {settings.public_port} on {settings.public_ip} (public_port) is not "
            f"free (Address already in use): stop what listens there or set another "
            f"public_port in {settings.hub_dir / 'settings.json'} (or `enclave up --port`)"
        )
        squatter.close()
        assert_nothing_left_running(settings)
