"""``enclave catalog``: admin curation from the command line, with one-line errors."""

from __future__ import annotations

import json

import pytest

from enclave.cli import main


@pytest.fixture
def enclave(tmp_path, catalog_url, capsys, monkeypatch):
    """Run ``enclave catalog ...`` against the test catalog; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("COLUMNS", "200")  # rich tables wrap at 80 columns when not on a terminal
    state_dir = tmp_path / "state"
    state_dir.mkdir()

    def run(*args):
        argv = ["catalog", *args, "--state-dir", str(state_dir), "--db-url", catalog_url]
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_list_show_publish_grant_revoke_retire(enclave, ingest):
    ingest()
    code, out, _ = enclave("list")
    assert code == 0 and "lung-ct" in out and "pending-review" in out
    code, out, _ = enclave("list", "--json")
    (entry,) = json.loads(out)
    assert entry["versions"][0]["file_count"] == 8 and "wrapped_key" not in out

    assert enclave("publish", "lung-ct", "--version", "1")[1] == "published lung-ct v1\n"
    code, out, _ = enclave(
        "grant", "lung-ct", "--version", "1", "--group", "radiology", "--expires", "2099-06-30"
    )
    assert code == 0 and out == (
        "granted lung-ct v1 to group radiology in desktop mode until 2099-07-01 00:00 UTC\n"
    )
    code, out, _ = enclave("show", "lung-ct", "--version", "1")
    assert code == 0 and "group radiology, desktop mode" in out
    assert "1 studies, 2 series, 8 files" in out
    assert "0.7 x 0.7 x 2.5" in out
    shown = json.loads(enclave("show", "lung-ct", "--version", "1", "--json")[1])
    assert shown["grants"][0]["group"] == "radiology"
    assert shown["grants"][0]["mode"] == "desktop"
    assert enclave("revoke", "lung-ct", "--version", "1", "--group", "radiology")[1] == (
        "revoked lung-ct v1 from group radiology\n"
    )
    assert enclave("retire", "lung-ct", "--version", "1")[1] == "retired lung-ct v1\n"
    code, out, _ = enclave("audit", "--json")
    actions = [e["action"] for e in json.loads(out)]
    assert actions[:4] == ["version.retire", "grant.revoke", "grant.add", "version.publish"]
    assert json.loads(out)[0]["actor"].startswith("cli:")


def test_search_and_edit(enclave, ingest):
    ingest()
    ingest("brain-mr", title="Glioma MRI", modality="MR", body_part="HEAD", tags=("brain",))
    code, out, _ = enclave("search", "glioma", "--json")
    assert [d["name"] for d in json.loads(out)] == ["brain-mr"]
    code, out, _ = enclave("search", "lung", "--modality", "MR")
    assert code == 0 and "no dataset matches 'lung' with modality MR" in out
    code, out, _ = enclave(
        "edit", "brain-mr", "--title", "Glioma MRI v2", "--tag", "neuro", "--tag", "tumour"
    )
    assert code == 0
    shown = json.loads(enclave("show", "brain-mr", "--json")[1])
    assert shown["title"] == "Glioma MRI v2" and shown["tags"] == ["neuro", "tumour"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "nope"), "error: unknown dataset 'nope'"),
        (("publish", "lung-ct", "--version", "3"), "error: dataset 'lung-ct' has no version 3"),
        (("publish", "lung-ct", "--version", "three"), "error: bad version 'three'"),
        (
            ("grant", "lung-ct", "--version", "1", "--group", "g"),
            "only published versions can be granted",
        ),
        (
            ("grant", "lung-ct", "--version", "1", "--group", "g", "--expires", "31/12/2030"),
            "bad expiry date '31/12/2030'",
        ),
        (
            ("revoke", "lung-ct", "--version", "1", "--user", "zoe"),
            "error: dataset 'lung-ct' version 1 is not granted to user zoe",
        ),
        (("retire", "nope", "--version", "1"), "error: unknown dataset 'nope'"),
        (
            ("grant", "lung-ct", "--version", "1", "--group", "g", "--mode", "browser"),
            "'browser' is not one of 'desktop', 'notebook'",
        ),
        (
            ("token", "x", "--role", "researcher", "--group", "bad group"),
            "error: bad group name 'bad group'",
        ),
    ],
)
def test_errors_are_one_clear_line(enclave, ingest, args, message):
    ingest()
    code, out, err = enclave(*args)
    assert code != 0
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_grant_needs_exactly_one_subject(enclave, ingest):
    ingest()
    code, _, err = enclave("grant", "lung-ct", "--version", "1", "--group", "a", "--user", "b")
    assert code == 2 and "exactly one of --group or --user" in err


def test_token_prints_once_and_works(enclave, catalog):
    code, out, err = enclave("token", "alice", "--role", "researcher", "--group", "radiology")
    token = out.strip()
    assert code == 0 and token.startswith("enc_") and "not shown again" in err
    principal = catalog.resolve_principal(token)
    assert (principal.name, principal.role, principal.groups) == (
        "alice",
        "researcher",
        frozenset({"radiology"}),
    )
    code, _, err = enclave("token", "alice", "--role", "admin")
    assert code == 1 and "exists with role researcher" in err


def test_missing_state_dir_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["catalog", "list", "--state-dir", str(tmp_path / "missing")])
    assert exc.value.code == 1
    assert "does not exist" in capsys.readouterr().err


def test_default_database_is_catalog_sqlite_in_the_state_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ENCLAVE_DB_URL", raising=False)
    main(["catalog", "list", "--state-dir", str(tmp_path)])
    assert (tmp_path / "catalog.sqlite").is_file()
    assert "no datasets yet" in capsys.readouterr().out


def test_a_grant_marked_notebook_says_so_and_a_second_grant_changes_the_mode(enclave, ingest):
    ingest()
    enclave("publish", "lung-ct", "--version", "1")
    code, out, _ = enclave(
        "grant", "lung-ct", "--version", "1", "--group", "ml101", "--mode", "notebook"
    )
    assert code == 0 and out == "granted lung-ct v1 to group ml101 in notebook mode\n"
    assert enclave("grants", "lung-ct", "--version", "1")[1] == "group ml101, notebook mode\n"
    enclave("grant", "lung-ct", "--version", "1", "--group", "ml101")  # desktop again
    assert enclave("grants", "lung-ct", "--version", "1")[1] == "group ml101, desktop mode\n"
    code, out, _ = enclave("audit", "--json")
    renew = json.loads(out)[0]
    assert renew["action"] == "grant.renew"
    assert (renew["details"]["old_mode"], renew["details"]["mode"]) == ("notebook", "desktop")
