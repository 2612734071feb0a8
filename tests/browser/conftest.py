"""A real hub, real people with TOTP logins, real datasets, and headless Chromium to use them.

One hub for the module (started as ``enclave up`` starts it, from ``hub_config``), on its own
ports, address range, nftables table and prefixes; ``lung-ct`` goes through real validation
and the encrypted store and is granted to ``researchers``; ``restricted-mr`` is published and
granted to nobody. People are added with ``enclave.workspace.people.add_person``, so they log
in exactly as a new researcher or student would: password plus authenticator code.

Chromium is Debian's, driven by Debian's chromedriver; selenium-manager is never asked for a
driver (``SE_OFFLINE``), and Chromium's own background traffic to Google is switched off.
Screenshots go to ``$ENCLAVE_SCREENSHOTS`` (kept) or the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..workspace.conftest import (
    Hub,
    catalog_folder,
    cleanup_everything,
    free_port,
    needs_root_and_tools,
    private_range,
    start_hub,
    stop_hub,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
RESEARCHER, STUDENT = "rhea", "stu"
#: The airlock's people: a researcher who exports, two reviewers, a provider's data manager.
EXPORTER, REVIEWER_1, REVIEWER_2, DATA_MANAGER = "ada", "rev1", "rev2", "dm"
PROVIDER = "test-hospital"
GRANTED, NOT_GRANTED = "lung-ct", "restricted-mr"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--lang=en-US",
)


@dataclass(frozen=True)
class Login:
    """What an admin hands a new person: name, one-time password and TOTP secret."""

    name: str
    password: str
    otp_secret: str

    def code(self) -> str:
        """The current code, never one about to expire (the hub accepts the current step only)."""
        import time

        import onetimepass

        if time.time() % 30 > 25:
            time.sleep(30 - time.time() % 30 + 0.5)
        return str(onetimepass.get_totp(self.otp_secret)).zfill(6)

    def wrong_code(self) -> str:
        """A six-digit code valid in no nearby time step."""
        import time

        import onetimepass

        now = int(time.time())
        near = {
            str(onetimepass.get_totp(self.otp_secret, clock=now + step)).zfill(6)
            for step in (-60, -30, 0, 30, 60)
        }
        candidate = 0
        while f"{candidate:06d}" in near:
            candidate += 1
        return f"{candidate:06d}"


@dataclass
class Enclave:
    """The running hub with its people and datasets."""

    hub: Hub
    logins: dict[str, Login]
    granted_version: int
    granted: Any  # catalog VersionSummary-like facts the page must show
    manifest: dict[str, Any]


def catalog_validated(catalog: Any, folder: Path, key: Any, store_root: Path) -> tuple[Any, dict]:
    """Validate ``folder`` as ingestion does, encrypt it into the store, catalog and publish it."""
    from ingestion.store import write_version
    from ingestion.validate import validate_dataset
    from ingestion.worker import _as_dict, _catalog_files

    transfer_id = f"tr-{uuid.uuid4().hex[:10]}"
    if "test-hospital" not in {p.name for p in catalog.list_providers()}:
        catalog.add_provider(
            "test-hospital", b"-----BEGIN PUBLIC KEY-----\ntest\n", "fp-test", actor="test"
        )
    outcome = validate_dataset(folder, transfer_id=transfer_id)
    assert outcome.report.passed, outcome.report.to_json()
    manifest = _as_dict(outcome.manifest)
    catalog.record_transfer(
        transfer_id, "test-hospital", dataset_name=manifest["name"], k=2, n=3, share_length=1
    )
    stored = write_version(folder, store_root, key, name_hint=transfer_id)
    from ingestion.content_index import identifier_digests

    version = catalog.catalog_version(
        transfer_id,
        manifest=manifest,
        content_hash=outcome.content_hash,
        size_bytes=stored.size_bytes,
        store_location=stored.store_location,
        wrapped_key=stored.wrapped_key,
        files=_catalog_files(outcome.files),
        series=list(outcome.series),
        report_json=outcome.report.to_json(),
        feature_tables=list(outcome.feature_tables),
        chunks=stored.chunk_digests,
        identifiers=identifier_digests(outcome.subject_ids),
        actor="test",
    )
    catalog.publish(manifest["name"], version.version, actor="test")
    return version, manifest


@pytest.fixture(scope="session")
def enclave(tmp_path_factory) -> Iterator[Enclave]:
    needs_root_and_tools()
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.fail("chromium / chromium-driver are missing: run `make system-deps`")
    from catalog.db import resolve_database_url
    from catalog.service import open_catalog
    from enclave.custody import init_custody, unseal
    from enclave.samples import make_sample_dataset
    from enclave.workspace.hub import HubSettings
    from enclave.workspace.people import add_person

    state_dir = Path(tempfile.mkdtemp(prefix="enclave-br-", dir="/tmp"))
    homes = Path(f"{state_dir}-homes")
    tag = uuid.uuid4().hex[:4]
    settings = HubSettings(
        state_dir=str(state_dir),
        public_port=free_port(),
        proxy_api_port=free_port(),
        hub_port=free_port(),
        catalog_port=free_port(),
        airlock_port=free_port(),
        address_range=private_range(),
        netns_table="enclave_brtest",
        namespace_prefix=f"encbr{tag}-",
        veth_prefix=f"b{tag}-",  # its own: another enclave's rules never match these
        unix_prefix=f"encb{tag}-",
        home_root=str(homes),
        plaintext_root=str(state_dir / "plaintext"),
        lock_path=str(state_dir / "netns.lock"),
        managed_services=["catalog", "airlock"],
        log_level="INFO",
    )
    hub = None
    try:
        mnemonics = init_custody(state_dir, custodians=3, threshold=2)[:2]
        settings.catalog_url = resolve_database_url(state_dir)
        key = unseal(state_dir, mnemonics)
        samples = tmp_path_factory.mktemp("samples")
        lung = make_sample_dataset(samples, name=GRANTED, subjects=1, slices=4, size=32)
        other = make_sample_dataset(
            samples, name=NOT_GRANTED, subjects=1, slices=2, size=16, with_segmentation=False
        )
        with open_catalog(settings.catalog_url) as catalog:
            version, manifest = catalog_validated(catalog, lung, key, state_dir / "store")
            # For notebooks: these pages show JupyterLab in the browser too (desktops see it too).
            catalog.grant(
                GRANTED, version.version, group="researchers", mode="notebook", actor="test"
            )
            catalog_folder(
                catalog,
                other,
                NOT_GRANTED,
                key,
                state_dir / "store",
                description="Restricted MR cohort that no group has been granted",
            )
            summary = next(d for d in catalog.list_datasets(None) if d.name == GRANTED)
        hub = start_hub(state_dir, settings, mnemonics)
        logins = {}
        people = (
            (RESEARCHER, "researcher", ()),
            (STUDENT, "student", ()),
            (EXPORTER, "researcher", ()),
            (REVIEWER_1, "reviewer", ()),
            (REVIEWER_2, "reviewer", ()),
            (DATA_MANAGER, "provider", (f"provider-{PROVIDER}",)),
        )
        for name, role, groups in people:
            account = add_person(settings, name, role, groups=groups)
            # Both are set for a person new to the hub, as everyone is in this fresh state dir.
            assert account.password is not None and account.otp_secret is not None
            logins[name] = Login(name, account.password, account.otp_secret)
        yield Enclave(
            hub=hub,
            logins=logins,
            granted_version=version.version,
            granted=summary,
            manifest=manifest,
        )
    finally:
        if hub is not None:
            stop_hub(hub)
            shutil.copyfile(hub.log, Path(tempfile.gettempdir()) / "enclave-browser-tests-hub.log")
        cleanup_everything(settings, [RESEARCHER, STUDENT, EXPORTER])
        for path in (state_dir, homes, settings.server_files_dir):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    wanted = os.environ.get("ENCLAVE_SCREENSHOTS")
    if wanted:
        path = Path(wanted)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


def chromium(profile: Path, *, record_network: bool = False) -> Any:
    """Headless Debian Chromium through Debian's chromedriver; nothing is downloaded.

    ``record_network`` keeps the DevTools network events (every response and websocket
    frame), read with ``driver.get_log("performance")``."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    if record_network:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser_for(tmp_path_factory) -> Iterator[Callable[..., Any]]:
    """One Chromium per person (separate profiles, so cookies never mix); quit afterwards.
    ``browser_for(name, record_network=True)`` is a second one that records the network."""
    drivers: dict[tuple[str, bool], Any] = {}

    def open_for(name: str, *, record_network: bool = False) -> Any:
        key = (name, record_network)
        if key not in drivers:
            profile = tmp_path_factory.mktemp(f"chromium-{name}")
            drivers[key] = chromium(profile, record_network=record_network)
        return drivers[key]

    yield open_for
    for driver in drivers.values():
        driver.quit()
