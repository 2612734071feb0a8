"""Which de-identification options (PS3.15 E.3, as PS3.16 codes) a provider may declare: set
when it is registered, replaced by a curator, audited, and kept across the 0007 migration."""

from __future__ import annotations

import pytest

from catalog import InvalidInput, UnknownProvider, migrate
from catalog.db import create_catalog_engine
from enclave.cli import main
from secret_sharing.keys import write_keypair
from tests.catalog.conftest import PEM


def test_a_provider_registered_with_options_keeps_them_sorted_and_without_duplicates(catalog):
    catalog.add_provider(
        "st-mary", PEM, "SHA256:x", actor="admin:t", deid_options=["113108", "113106", "113108"]
    )
    assert catalog.get_provider("st-mary").deid_options == ["113106", "113108"]


def test_a_provider_registered_without_options_may_use_none(catalog, hospital):
    assert catalog.get_provider("st-mary").deid_options == []


def test_setting_options_replaces_them_and_the_audit_records_old_and_new(catalog, hospital):
    catalog.set_provider_deid_options("st-mary", ["113108"], actor="admin:ana")
    catalog.set_provider_deid_options("st-mary", ["113105", "113109"], actor="admin:ana")
    assert catalog.get_provider("st-mary").deid_options == ["113105", "113109"]
    event = next(e for e in catalog.audit_events() if e.action == "provider.deid-options")
    assert event.actor == "admin:ana"
    assert event.details == {"old": ["113108"], "new": ["113105", "113109"]}


def test_a_malformed_option_code_is_refused_naming_the_provider_and_the_code(catalog, hospital):
    with pytest.raises(InvalidInput, match=r"'st-mary'.*'patient-stuff'"):
        catalog.set_provider_deid_options("st-mary", ["patient-stuff"], actor="admin:ana")
    assert catalog.get_provider("st-mary").deid_options == []


def test_setting_options_of_an_unknown_provider_names_it(catalog):
    with pytest.raises(UnknownProvider):
        catalog.set_provider_deid_options("nobody", ["113108"], actor="admin:ana")


def test_providers_registered_before_0007_may_use_no_option_after_it(
    catalog, catalog_url, hospital
):
    engine = create_catalog_engine(catalog_url)
    try:
        migrate.downgrade(engine, "0006")
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    assert catalog.get_provider("st-mary").deid_options == []


@pytest.fixture
def enclave(tmp_path, catalog_url, capsys, monkeypatch):
    """Run ``enclave providers ...`` against the test catalog: (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "200")
    state_dir = tmp_path / "state"
    state_dir.mkdir()

    def run(*args):
        try:
            main(["providers", *args, "--state-dir", str(state_dir), "--db-url", catalog_url])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_the_cli_adds_sets_and_lists_options_by_code_or_name(enclave, tmp_path, catalog):
    _, public = write_keypair(tmp_path / "keys")
    code, _, _ = enclave("add", "st-mary", "--verify-key", str(public), "--deid-option", "113108")
    assert code == 0
    assert catalog.get_provider("st-mary").deid_options == ["113108"]
    code, out, _ = enclave(
        "set",
        "st-mary",
        "--deid-option",
        "retain-longitudinal-full-dates",
        "--deid-option",
        "DCM:113105",
    )
    assert code == 0
    assert "Clean Descriptors Option (DCM 113105)" in out
    assert catalog.get_provider("st-mary").deid_options == ["113105", "113106"]
    code, out, _ = enclave("list")
    assert "113106 retain-longitudinal-full-dates" in out
    code, out, _ = enclave("set", "st-mary", "--no-deid-options")
    assert code == 0 and "may declare: none" in out
    assert catalog.get_provider("st-mary").deid_options == []


def test_the_cli_refuses_an_unknown_option_in_one_line_listing_the_known_ones(enclave, hospital):
    code, out, err = enclave("set", "st-mary", "--deid-option", "999999")
    assert code != 0
    assert len(err.strip().splitlines()) == 1
    assert "unknown de-identification option '999999'" in err
    assert "113108 (retain-patient-characteristics)" in err
