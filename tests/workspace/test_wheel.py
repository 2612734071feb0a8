"""The enclave as a wheel: built from this checkout, installed into a fresh virtualenv outside
it, it finds every shipped data file and can run ``enclave up``.

The wheel is installed without its dependencies (``--no-deps``); the fresh virtualenv reaches
the project's own locked ones through a path entry to their site-packages, and gets their
command-line scripts written as pip would write them. The project itself (``enclave``,
``secret_sharing``, ``catalog``, ``ingestion``) and its data come only from the wheel: the
checkout is not on the path and the commands run from a folder outside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import temporary_site
from .rfbclient import RfbClient

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("enclave", "secret_sharing", "catalog", "ingestion")
DATA_FOLDERS = ("hub_config", "policies", "examples")

# Writes each dependency's console scripts into the fresh virtualenv's bin, as pip would.
WRITE_SCRIPTS = r"""
import importlib.metadata, os, sys
from pathlib import Path
bin_dir = Path(sys.executable).parent
for dist in importlib.metadata.distributions():
    for ep in dist.entry_points:
        target = bin_dir / ep.name
        if ep.group != "console_scripts" or target.exists():
            continue
        module, _, attr = ep.value.partition(":")
        target.write_text(
            f"#!{sys.executable}\nimport sys\nfrom {module} import {attr.split('.')[0]}\n"
            f"sys.exit({attr}())\n"
        )
        target.chmod(0o755)
"""

# Run by the wheel's interpreter: where everything was found, and every file's hash.
REPORT = r"""
import hashlib, json, sys
from pathlib import Path
import enclave, secret_sharing, catalog, ingestion
from enclave._data import data_root
from enclave.workspace.launcher import hub_config_file
from enclave.workspace.policy import load_page_config, policy_source
from enclave.data.examples import example_files, examples_source
from catalog.migrate import MIGRATIONS_DIR, head_revision

def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()

def tree(root):
    return {p.relative_to(root).as_posix(): digest(p)
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}

root = data_root()
print(json.dumps({
    "prefix": sys.prefix,
    "packages": {m.__name__: str(Path(m.__file__).parent)
                 for m in (enclave, secret_sharing, catalog, ingestion)},
    "data_root": str(root),
    "data": {folder: tree(root / folder) for folder in ("hub_config", "policies", "examples")},
    "package_files": {m.__name__: tree(Path(m.__file__).parent)
                      for m in (enclave, secret_sharing, catalog, ingestion)},
    "hub_config": str(hub_config_file()),
    "policy": str(policy_source()),
    "disabled_plugins": sorted(load_page_config()["disabledExtensions"]),
    "examples": [str(p) for p in example_files(examples_source())],
    "migrations": str(MIGRATIONS_DIR),
    "head_revision": head_revision(),
}))
"""


def tracked(*paths: str) -> list[str]:
    done = subprocess.run(
        ["git", "ls-files", "-z", "--", *paths], cwd=REPO, capture_output=True, check=True
    )
    return [name for name in done.stdout.decode().split("\0") if name]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def wheel_env() -> Iterator[Path]:
    """A fresh virtualenv, in a folder every user can enter, with only the wheel installed."""
    work = Path(tempfile.mkdtemp(prefix="enclave-wheel-", dir="/tmp"))
    work.chmod(0o755)  # user servers run the wheel's code as unprivileged users
    try:
        dist = work / "dist"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--quiet", "--wheel-dir", str(dist), str(REPO)],
            check=True, capture_output=True, cwd=work,
        )  # fmt: skip
        (wheel,) = dist.glob("enclave-*.whl")
        venv = work / "venv"
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)],
            check=True, capture_output=True,
        )  # fmt: skip
        python = venv / "bin" / "python"
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
             "--no-index", "--quiet", str(wheel)],
            check=True, capture_output=True, cwd=work,
        )  # fmt: skip
        site_packages = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        # A plain path line: the locked dependencies, without running their .pth files (one
        # of which would put this checkout on the path for the editable install).
        Path(site_packages, "enclave-test-dependencies.pth").write_text(
            sysconfig.get_paths()["purelib"] + "\n"
        )
        subprocess.run([str(python), "-I", "-c", WRITE_SCRIPTS], check=True, cwd=work)
        # And their shared data (JupyterLab's assets, kernel specs), as pip would install it.
        (venv / "share").mkdir(exist_ok=True)
        (venv / "share" / "jupyter").symlink_to(Path(sys.prefix) / "share" / "jupyter")
        yield venv
    finally:
        shutil.rmtree(work, ignore_errors=True)


def clean_env() -> dict[str, str]:
    """The caller's environment without anything that could point back at the checkout."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("ENCLAVE_")
    }


def test_the_wheel_outside_the_checkout_finds_every_data_file(wheel_env):
    python = wheel_env / "bin" / "python"
    done = subprocess.run(
        [str(python), "-I", "-c", REPORT],
        capture_output=True, text=True, cwd=wheel_env, env=clean_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)

    prefix = Path(found["prefix"])
    assert prefix == wheel_env
    for name, folder in found["packages"].items():
        assert Path(folder).is_relative_to(prefix), f"{name} imported from {folder}"
    assert Path(found["data_root"]) == prefix / "share" / "enclave"
    assert found["hub_config"] == str(prefix / "share/enclave/hub_config/jupyterhub_config.py")
    assert found["policy"] == str(prefix / "share/enclave/policies/jupyterlab")
    assert "@jupyterlab/docmanager-extension:download" in found["disabled_plugins"]
    assert {Path(p).name for p in found["examples"]} >= {
        "segmentation-unet.ipynb",
        "outcome-classification.ipynb",
    }
    assert Path(found["migrations"]).is_relative_to(prefix)
    assert found["head_revision"]

    # Every file of the data folders, byte for byte.
    for folder in DATA_FOLDERS:
        expected = {
            Path(name).relative_to(folder).as_posix(): sha256(REPO / name)
            for name in tracked(folder)
        }
        assert found["data"][folder] == expected, folder
    # Every file of the packages that is not Python source (templates, migrations' mako
    # template, validation tables, READMEs), and every module, byte for byte.
    for package in PACKAGES:
        expected = {
            Path(name).relative_to(package).as_posix(): sha256(REPO / name)
            for name in tracked(package)
        }
        assert found["package_files"][package] == expected, package


def test_the_wheels_command_line_runs_outside_the_checkout(wheel_env):
    done = subprocess.run(
        [str(wheel_env / "bin" / "enclave"), "--help"],
        capture_output=True, text=True, cwd=wheel_env, env=clean_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for group in ("up", "down", "share", "catalog", "ingest"):
        assert group in done.stdout


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_enclave_up_from_the_wheel_serves_the_demo_dataset_to_a_spawned_server(wheel_env):
    from enclave.workspace.accounts import unix_name
    from enclave.workspace.hub import admin_token
    from enclave.workspace.launcher import hub_pid

    enclave = str(wheel_env / "bin" / "enclave")
    with temporary_site("enclave_wheeltest") as site:
        up = subprocess.run(
            [enclave, "up", "--state-dir", site.state_dir],
            capture_output=True, text=True, cwd=wheel_env, env=clean_env(), timeout=400,
            check=False,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr[-3000:]
        assert "published and granted to group demo-researchers" in up.stderr
        hub = hub_pid(site)
        assert hub is not None
        command = Path(f"/proc/{hub}/cmdline").read_bytes().split(b"\0")
        assert str(wheel_env / "share/enclave/hub_config/jupyterhub_config.py").encode() in command

        api = httpx.Client(
            base_url=f"{site.public_url}hub/api",
            timeout=60,
            headers={"Authorization": f"token {admin_token(site)}"},
        )
        try:
            assert api.post("/users/demo-researcher/server").status_code in (201, 202)
            deadline = time.monotonic() + 120
            while not api.get("/users/demo-researcher").json()["servers"].get("", {}).get("ready"):
                assert time.monotonic() < deadline, "the demo researcher's server never started"
                time.sleep(0.5)
            token = api.post("/users/demo-researcher/tokens", json={"note": "wheel test"})
            headers = {"Authorization": f"token {token.json()['token']}"}
            user = httpx.Client(base_url=site.public_url.rstrip("/"), timeout=60, headers=headers)
            # A researcher's default session is a desktop: its page and noVNC come from the
            # wheel's package data and Debian, its pixels from a desktop the wheel started.
            page = user.get("/user/demo-researcher/")
            assert page.status_code == 200 and "static/desktop/desktop.js" in page.text
            for path in ("static/desktop/desktop.js", "static/novnc/core/rfb.js"):
                assert user.get(f"/user/demo-researcher/{path}").status_code == 200, path
            assert user.get("/user/demo-researcher/api/contents").status_code == 403
            user.close()
            url = site.public_url.replace("http", "ws", 1) + "user/demo-researcher/websockify"
            assert asyncio.run(first_frame(url, headers)).std() > 0
            # The examples (shared data) were copied into the home; the demo dataset mounted.
            home = Path(site.home_root) / unix_name("demo-researcher", site.unix_prefix)
            assert (home / "examples" / "segmentation-unet.ipynb").is_file()
            assert (home / "datasets" / "demo-ct" / "1" / "dataset.yaml").is_file()
        finally:
            api.close()


async def first_frame(url: str, headers: dict[str, str]) -> np.ndarray:
    rfb = RfbClient(url, headers)
    await rfb.connect()
    try:
        return await rfb.full_frame()
    finally:
        await rfb.close()
