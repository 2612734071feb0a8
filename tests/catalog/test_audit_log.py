"""The tamper-evident audit log: signed checkpoints catch and name every rewrite of history.

Every test runs on SQLite and on a real PostgreSQL. To tamper, the tests do what an attacker
with database access must: drop the append-only triggers, edit, and put the triggers back.
"""

from __future__ import annotations

import json
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError

from catalog import Catalog, InvalidInput, audit, merkle, open_catalog
from catalog.audit import (
    AuditError,
    AuditProofError,
    AuditVerificationError,
    checkpoint,
    export,
    leaf_data,
    load_or_create_signing_key,
    prove,
    verify,
    verify_proof,
)
from catalog.db import create_catalog_engine
from catalog.models import AuditCheckpoint, utcnow
from enclave.cli import main
from secret_sharing.keys import key_fingerprint


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def history(catalog, ingest) -> list[int]:
    """A short but real history: a provider, an ingested version, publishing, grants and
    revocations. Returns the audit entry ids, oldest first."""
    ingest()
    catalog.publish("lung-ct", 1, actor="admin:ana")
    for group in ("radiology", "oncology", "course-101"):
        catalog.grant("lung-ct", 1, group=group, actor="admin:ana")
    catalog.revoke("lung-ct", 1, group="oncology", actor="admin:bob")
    catalog.grant("lung-ct", 1, user="carol", mode="notebook", actor="admin:ana")
    catalog.edit("lung-ct", title="Lung CT screening (2026)", actor="admin:bob")
    catalog.retire("lung-ct", 1, actor="admin:ana", reason="superseded")
    return ids(catalog)


def ids(catalog: Catalog) -> list[int]:
    with catalog.engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM audit_events ORDER BY id")).scalars())


def row(catalog: Catalog, entry_id: int) -> dict:
    return next(e for e in export(catalog) if e["id"] == entry_id)


@contextmanager
def triggers_dropped(catalog: Catalog, *tables: str) -> Iterator[None]:
    """Drop the append-only triggers on ``tables``, let the block edit, then recreate them."""
    tables = tables or ("audit_events",)
    with catalog.engine.begin() as conn:
        if catalog.dialect == "postgresql":
            found = conn.execute(
                text(
                    "SELECT tgname, tgrelid::regclass::text, pg_get_triggerdef(oid) FROM "
                    "pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text = ANY(:t)"
                ),
                {"t": list(tables)},
            ).all()
            for name, table, _ in found:
                conn.execute(text(f"DROP TRIGGER {name} ON {table}"))
            definitions = [d for _, _, d in found]
        else:
            found = conn.execute(
                text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN "
                    f"({', '.join(repr(t) for t in tables)})"
                )
            ).all()
            for name, _ in found:
                conn.execute(text(f"DROP TRIGGER {name}"))
            definitions = [d for _, d in found]
    assert definitions, f"no triggers on {tables}"
    try:
        yield
    finally:
        with catalog.engine.begin() as conn:
            for definition in definitions:
                conn.execute(text(definition))


def tamper(catalog: Catalog, *statements: str, tables: tuple[str, ...] = ()) -> None:
    with triggers_dropped(catalog, *tables), catalog.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def problem(report: audit.VerifyReport) -> audit.Problem:
    assert not report.ok, report.summary()
    return report.problems[0]


# -- the leaf --------------------------------------------------------------------------------


def test_an_entrys_leaf_is_its_canonical_json_array():
    at = datetime(2026, 12, 6, 10, 11, 12, 123, tzinfo=UTC)
    data = leaf_data(
        7, at, "admin:ana", "grant.add", "dataset:lung-ct@1", {"mode": "desktop", "b": [1, None]}
    )
    assert data == (
        b'["enclave-audit-v1",7,"2026-12-06T10:11:12.000123Z","admin:ana","grant.add",'
        b'"dataset:lung-ct@1",{"b":[1,null],"mode":"desktop"}]'
    )
    # SQLite's stored text and PostgreSQL's naive datetime give the same leaf.
    assert (
        leaf_data(
            7,
            "2026-12-06 10:11:12.000123",
            "admin:ana",
            "grant.add",
            "dataset:lung-ct@1",
            '{"mode": "desktop", "b": [1, null]}',
        )
        == data
    )
    assert (
        leaf_data(
            7,
            at.replace(tzinfo=None),
            "admin:ana",
            "grant.add",
            "dataset:lung-ct@1",
            {"b": [1, None], "mode": "desktop"},
        )
        == data
    )


def test_the_leaf_is_ascii_json_that_any_json_library_reads_back():
    details = {"note": 'Tōkyō \u2603 "quoted"', "n": 1.5, "nested": {"z": 1, "a": [True]}}
    data = leaf_data(1, datetime(2026, 1, 1, tzinfo=UTC), "a\u00e9", "x.y", "t", details)
    assert data.isascii()
    assert json.loads(data) == [
        "enclave-audit-v1",
        1,
        "2026-01-01T00:00:00.000000Z",
        "a\u00e9",
        "x.y",
        "t",
        details,
    ]
    assert (
        data
        == json.dumps(
            json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()
    )


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_details_the_json_column_accepts_can_always_be_checkpointed(catalog, key):
    """On SQLite the JSON column keeps Python's NaN and infinities (PostgreSQL refuses them at
    insert), so the leaf encodes them too rather than stopping every later checkpoint."""
    with catalog._tx() as s:
        catalog._audit(s, "admin:ana", "test.float", "x", ratio=float("nan"), big=float("inf"))
    assert checkpoint(catalog, key) is not None
    assert verify(catalog, key.public_key()).ok


# -- verification ----------------------------------------------------------------------------


def test_a_clean_log_verifies(catalog, history, key):
    made = checkpoint(catalog, key)
    assert made is not None and made.tree_size == len(history)
    assert made.last_entry_id == history[-1]
    report = verify(catalog, key.public_key())
    assert report.ok, report.problems
    assert (report.entries, report.checkpointed, report.not_checkpointed) == (len(history),) * 2 + (
        0,
    )
    assert report.summary().startswith(f"audit log intact: {len(history)} entries")


def test_entries_after_the_last_checkpoint_are_counted_as_not_checkpointed(catalog, history, key):
    report = verify(catalog, key.public_key())
    assert report.ok and report.checkpoints == 0 and report.not_checkpointed == len(history)
    first = checkpoint(catalog, key)
    catalog.create_token("dave", "researcher", ["radiology"], actor="admin:ana")
    report = verify(catalog, key.public_key())
    assert report.ok
    assert report.not_checkpointed == len(ids(catalog)) - len(history) > 0
    assert report.checkpointed == len(history)
    assert "not yet checkpointed" in report.summary()

    second = checkpoint(catalog, key)
    assert first is not None and second is not None
    assert second.tree_size == len(ids(catalog)) and second.id != first.id
    assert checkpoint(catalog, key) is None  # nothing new
    report = verify(catalog, key.public_key())
    assert report.ok and report.checkpoints == 2 and report.not_checkpointed == 0


def test_each_checkpoint_holds_only_its_new_leaves_and_continues_the_last_frontier(
    catalog, history, key
):
    checkpoint(catalog, key)
    catalog.create_token("dave", "researcher", actor="admin:ana")
    checkpoint(catalog, key)
    with catalog.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT tree_size, root_hash, leaf_hashes, frontier FROM audit_checkpoints "
                "ORDER BY tree_size"
            )
        ).all()
    all_leaves = [bytes.fromhex(e["leaf_hash"]) for e in export(catalog)]
    previous = 0
    for size, root_hash, leaves, frontier in rows:
        assert bytes(leaves) == b"".join(all_leaves[previous:size])
        assert merkle.root(all_leaves[:size]) == bytes(root_hash)
        assert merkle.Frontier.from_bytes(bytes(frontier)).root() == bytes(root_hash)
        previous = size


def test_editing_one_rows_details_is_named_as_a_change(catalog, history, key):
    checkpoint(catalog, key)
    grant_id = next(e["id"] for e in export(catalog) if e["action"] == "grant.add")
    at = row(catalog, grant_id)["at"]
    tamper(
        catalog,
        f'UPDATE audit_events SET details = \'{{"subject": "group:everyone"}}\' '
        f"WHERE id = {grant_id}",
    )
    found = problem(verify(catalog, key.public_key()))
    assert (found.kind, found.entry_id, found.action, found.at) == (
        "changed",
        grant_id,
        "grant.add",
        at,
    )
    assert (
        found.message == f"audit entry {grant_id} (grant.add, {at}) was changed after checkpoint 1"
    )


def test_changing_only_an_entrys_time_or_actor_is_caught(catalog, history, key):
    checkpoint(catalog, key)
    target = history[4]
    tamper(catalog, f"UPDATE audit_events SET actor = 'admin:nobody' WHERE id = {target}")
    assert problem(verify(catalog, key.public_key())).entry_id == target


def test_deleting_a_row_is_named_as_a_removal(catalog, history, key):
    checkpoint(catalog, key)
    gone = history[5]
    tamper(catalog, f"DELETE FROM audit_events WHERE id = {gone}")
    found = problem(verify(catalog, key.public_key()))
    assert found.kind == "removed" and found.leaf_index == 5
    assert found.message == (
        f"an audit entry was removed after checkpoint 1: leaf 5 (between entries "
        f"{history[4]} and {history[6]}) has no row"
    )


def test_deleting_the_newest_checkpointed_row_is_a_removal_not_a_change(catalog, history, key):
    checkpoint(catalog, key)
    catalog.create_token("dave", "researcher", actor="admin:ana")  # not checkpointed
    tamper(catalog, f"DELETE FROM audit_events WHERE id = {history[-1]}")
    found = problem(verify(catalog, key.public_key()))
    assert found.kind == "removed" and found.leaf_index == len(history) - 1


def test_deleting_a_row_and_renumbering_the_rest_is_named_as_a_removal(catalog, history, key):
    checkpoint(catalog, key)
    gone = history[3]
    tamper(
        catalog,
        f"DELETE FROM audit_events WHERE id = {gone}",
        f"UPDATE audit_events SET id = id + 1000000 WHERE id > {gone}",
        "UPDATE audit_events SET id = id - 1000001 WHERE id > 1000000",
    )
    assert ids(catalog) == history[:-1]  # no gap left
    found = problem(verify(catalog, key.public_key()))
    assert found.kind == "removed" and found.leaf_index == 3
    assert "renumbered" in found.message


def test_swapping_two_rows_contents_is_named_as_reordering(catalog, history, key):
    checkpoint(catalog, key)
    first, second = history[4], history[7]
    columns = "at, actor, action, target, details"
    tamper(
        catalog,
        f"CREATE TABLE swap AS SELECT id, {columns} FROM audit_events WHERE id IN ({first}, {second})",
        *(
            f"UPDATE audit_events SET ({columns}) = (SELECT {columns} FROM swap WHERE id = {b}) "
            f"WHERE id = {a}"
            for a, b in ((first, second), (second, first))
        ),
        "DROP TABLE swap",
    )
    found = problem(verify(catalog, key.public_key()))
    assert found.kind == "reordered" and found.entry_id == first
    assert f"holds what checkpoint 1 recorded for entry {second} and the other way round" in (
        found.message
    )


def test_a_forged_row_inserted_in_the_middle_is_named(catalog, history, key):
    checkpoint(catalog, key)
    after = history[5]
    tamper(
        catalog,
        f"UPDATE audit_events SET id = id + 1000000 WHERE id > {after}",
        "UPDATE audit_events SET id = id - 999999 WHERE id > 1000000",
        "INSERT INTO audit_events (id, at, actor, action, target, details) VALUES "
        f"({after + 1}, '2026-12-06 10:00:00.000000', 'admin:ana', 'grant.add', "
        "'dataset:lung-ct@1', '{\"subject\": \"user:mallory\"}')",
    )
    found = problem(verify(catalog, key.public_key()))
    assert (found.kind, found.entry_id, found.action) == ("inserted", after + 1, "grant.add")
    assert found.message.startswith(f"audit entry {after + 1} (grant.add, ")
    assert "was inserted after checkpoint 1" in found.message


@pytest.mark.parametrize("catalog_url", ["postgresql"], indirect=True)
def test_a_forged_row_in_a_gap_of_ids_is_named_as_inserted(catalog, history, key):
    """PostgreSQL leaves a gap where a transaction that took an id rolled back."""
    with pytest.raises(RuntimeError), catalog._tx() as s:
        catalog._audit(s, "admin:ana", "grant.add", "dataset:lung-ct@1")
        s.flush()
        raise RuntimeError("rolled back")
    catalog.create_token("dave", "researcher", actor="admin:ana")
    gap = history[-1] + 1
    assert gap not in ids(catalog)
    checkpoint(catalog, key)
    tamper(
        catalog,
        "INSERT INTO audit_events (id, at, actor, action, target, details) VALUES "
        f"({gap}, '2026-12-06 10:00:00', 'admin:eve', 'grant.add', 'dataset:lung-ct@1', '{{}}')",
    )
    found = problem(verify(catalog, key.public_key()))
    assert (found.kind, found.entry_id, found.action) == ("inserted", gap, "grant.add")


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_a_row_the_catalog_could_not_have_written_is_named_as_changed(catalog, history, key):
    """SQLite stores any text in any column: details that are not JSON, a time that is not one."""
    checkpoint(catalog, key)
    tamper(
        catalog,
        f"UPDATE audit_events SET details = 'not json' WHERE id = {history[3]}",
        f"UPDATE audit_events SET at = 'yesterday' WHERE id = {history[5]}",
    )
    found = problem(verify(catalog, key.public_key()))
    assert (found.kind, found.entry_id) == ("changed", history[3])
    with pytest.raises(AuditVerificationError, match=f"audit entry {history[3]} is malformed"):
        list(export(catalog))
    catalog.create_token("dave", "researcher", actor="admin:ana")
    tamper(catalog, f"UPDATE audit_events SET at = 'yesterday' WHERE id = {ids(catalog)[-1]}")
    with pytest.raises(AuditVerificationError, match="is malformed"):
        checkpoint(catalog, key)


def test_the_first_of_several_changes_is_named(catalog, history, key):
    checkpoint(catalog, key)
    tamper(
        catalog,
        f"UPDATE audit_events SET actor = 'x' WHERE id IN ({history[6]}, {history[2]})",
    )
    assert problem(verify(catalog, key.public_key())).entry_id == history[2]


def test_a_checkpoint_with_a_bad_signature_is_caught(catalog, history, key):
    checkpoint(catalog, key)
    tamper(
        catalog,
        "UPDATE audit_checkpoints SET tree_size = tree_size - 1",
        tables=("audit_checkpoints",),
    )
    found = problem(verify(catalog, key.public_key()))
    assert found.kind == "checkpoint" and found.checkpoint_id == 1
    assert (
        found.message == "audit checkpoint 1 has a bad signature (its signed fields were changed)"
    )


def test_a_signed_checkpoint_whose_root_does_not_match_its_leaves_is_caught(catalog, history, key):
    """Even with the signing key, a checkpoint cannot claim a root its leaves do not give."""
    good = checkpoint(catalog, key)
    assert good is not None
    catalog.create_token("dave", "researcher", actor="admin:ana")
    new_id = ids(catalog)[-1]
    leaf = bytes.fromhex(row(catalog, new_id)["leaf_hash"])
    wrong_root = merkle.leaf_hash(b"not the tree")
    created = utcnow()
    fingerprint = key_fingerprint(key.public_key())
    body = audit.checkpoint_body(good.tree_size + 1, wrong_root, created, fingerprint, new_id)
    frontier = merkle.Frontier()
    frontier.extend(bytes.fromhex(e["leaf_hash"]) for e in export(catalog))
    with catalog.engine.begin() as conn:
        conn.execute(
            insert(AuditCheckpoint).values(
                tree_size=good.tree_size + 1,
                last_entry_id=new_id,
                root_hash=wrong_root,
                created_at=created,
                key_fingerprint=fingerprint,
                signature=key.sign(body),
                leaf_hashes=leaf,
                frontier=frontier.to_bytes(),
            )
        )
    report = verify(catalog, key.public_key())
    found = problem(report)
    assert found.kind == "checkpoint" and found.checkpoint_id == 2
    assert "signed root" in found.message and "does not match its leaf hashes" in found.message
    assert report.checkpointed == good.tree_size  # the good checkpoint still counts
    with pytest.raises(AuditVerificationError, match="frontier does not match its root"):
        checkpoint(catalog, key)


def test_a_checkpoint_signed_by_another_key_is_caught(catalog, history, key):
    checkpoint(catalog, Ed25519PrivateKey.generate())
    found = problem(verify(catalog, key.public_key()))
    assert found.kind == "checkpoint" and "not by the verify key" in found.message
    assert verify(catalog, [key.public_key(), Ed25519PrivateKey.generate().public_key()]).problems


def test_checkpoints_are_append_only_in_the_database(catalog, history, key):
    checkpoint(catalog, key)
    statements = ["UPDATE audit_checkpoints SET tree_size = 1", "DELETE FROM audit_checkpoints"]
    if catalog.dialect == "postgresql":
        statements.append("TRUNCATE audit_checkpoints")
    for statement in statements:
        with pytest.raises(DBAPIError, match="audit_checkpoints is append-only"):
            with catalog.engine.begin() as conn:
                conn.execute(text(statement))


# -- inclusion proofs ------------------------------------------------------------------------


def test_an_inclusion_proof_verifies_offline_and_fails_for_a_changed_entry(catalog, history, key):
    checkpoint(catalog, key)
    catalog.create_token("dave", "researcher", actor="admin:ana")
    checkpoint(catalog, key)
    entry_id = history[6]
    proof = json.loads(json.dumps(prove(catalog, entry_id)))  # as it travels
    assert proof["entry"]["id"] == entry_id and proof["leaf_index"] == 6
    assert proof["tree_size"] == len(ids(catalog)) and proof["checkpoint"]["id"] == 2
    assert verify_proof(proof, key.public_key()).id == 2
    older = prove(catalog, entry_id, checkpoint_id=1)
    assert verify_proof(older, key.public_key()).tree_size == len(history)

    changed = json.loads(json.dumps(proof))
    changed["entry"]["details"]["subject"] = "group:everyone"
    with pytest.raises(AuditProofError, match=f"audit entry {entry_id} .* is not at leaf 6"):
        verify_proof(changed, key.public_key())
    moved = dict(proof, leaf_index=5)
    with pytest.raises(AuditProofError, match="is not at leaf 5"):
        verify_proof(moved, key.public_key())
    with pytest.raises(AuditProofError, match="not by the verify key"):
        verify_proof(proof, Ed25519PrivateKey.generate().public_key())
    resigned = json.loads(json.dumps(proof))
    resigned["checkpoint"]["tree_size"] += 1
    resigned["tree_size"] += 1
    with pytest.raises(AuditProofError, match="bad signature"):
        verify_proof(resigned, key.public_key())

    tamper(catalog, f"UPDATE audit_events SET actor = 'admin:eve' WHERE id = {entry_id}")
    with pytest.raises(AuditVerificationError, match=f"audit entry {entry_id} .* does not match"):
        prove(catalog, entry_id)


def test_proofs_for_many_entries_match_proofs_one_at_a_time(catalog, history, key):
    checkpoint(catalog, key)
    many = audit.prove_many(catalog, list(reversed(history)))
    assert [p["entry"]["id"] for p in many] == list(reversed(history))
    assert many == [prove(catalog, entry_id) for entry_id in reversed(history)]
    for proof in many:
        verify_proof(proof, key.public_key())


def test_a_later_checkpoint_proves_it_extends_an_earlier_one(catalog, history, key):
    checkpoint(catalog, key)
    catalog.create_token("dave", "researcher", actor="admin:ana")
    checkpoint(catalog, key)
    proof = json.loads(json.dumps(audit.prove_consistency(catalog, 1)))
    old, new = audit.verify_consistency_proof(proof, key.public_key())
    assert (old.id, new.id, old.tree_size) == (1, 2, len(history))
    rewritten = json.loads(json.dumps(proof))
    rewritten["proof"][0] = "00" * 32
    with pytest.raises(AuditProofError, match="does not extend checkpoint 1"):
        audit.verify_consistency_proof(rewritten, key.public_key())
    with pytest.raises(AuditProofError, match="not signed by the verify key"):
        audit.verify_consistency_proof(proof, Ed25519PrivateKey.generate().public_key())


def test_verify_takes_an_engine_as_well_as_a_catalog(catalog, history, key):
    checkpoint(catalog, key)
    assert verify(catalog.engine, key.public_key()).checkpointed == len(history)


def test_prove_refuses_an_entry_no_checkpoint_covers_yet(catalog, history, key):
    with pytest.raises(AuditError, match="there is none yet"):
        prove(catalog, history[0])
    checkpoint(catalog, key)
    catalog.create_token("dave", "researcher", actor="admin:ana")
    newest = ids(catalog)[-1]
    with pytest.raises(AuditError, match=f"audit entry {newest} is not covered by checkpoint 1"):
        prove(catalog, newest)
    with pytest.raises(Exception, match="no audit entry 999999"):
        prove(catalog, 999999)


# -- export ----------------------------------------------------------------------------------


def test_export_gives_each_entry_with_its_leaf_and_checkpoint_since_a_time(catalog, history, key):
    checkpoint(catalog, key)
    catalog.create_token("dave", "researcher", actor="admin:ana")
    entries = list(export(catalog))
    assert [e["id"] for e in entries] == ids(catalog)
    assert [e["leaf_index"] for e in entries] == list(range(len(entries)))
    assert {e["checkpoint"] for e in entries[: len(history)]} == {1}
    assert entries[-1]["checkpoint"] is None
    with catalog.engine.connect() as conn:
        recorded = bytes(
            conn.execute(text("SELECT leaf_hashes FROM audit_checkpoints")).scalar_one()
        )
    assert b"".join(bytes.fromhex(e["leaf_hash"]) for e in entries[: len(history)]) == recorded
    assert entries[0]["details"] == {"fingerprint": "SHA256:stmary", "deid_options": []}

    cut = datetime.fromisoformat(entries[5]["at"].replace("Z", "+00:00"))
    later = list(export(catalog, since=cut))
    assert later[0]["leaf_index"] <= 5 and later == entries[later[0]["leaf_index"] :]
    assert list(export(catalog, since=utcnow() + timedelta(days=1))) == []


# -- concurrency -----------------------------------------------------------------------------


def test_eight_concurrent_writers_leave_a_log_that_verifies_with_ids_in_commit_order(
    catalog, ingest, key
) -> None:
    ingest()
    catalog.publish("lung-ct", 1, actor="admin:ana")
    before = len(ids(catalog))
    errors: list[BaseException] = []
    out_of_order: list[tuple[int, int]] = []
    per_thread = 16

    def writer(n: int) -> None:
        try:
            for i in range(per_thread):
                if i % 4 == 0:
                    catalog.grant("lung-ct", 1, group=f"g{n}", actor=f"admin:{n}")
                elif i % 4 == 2:
                    catalog.revoke("lung-ct", 1, group=f"g{n}", actor=f"admin:{n}")
                else:
                    with catalog._tx() as s:
                        # Everything committed so far is visible, and nothing else is in flight.
                        newest = s.execute(text("SELECT max(id) FROM audit_events")).scalar_one()
                        catalog._audit(s, f"admin:{n}", "test.append", f"thread:{n}", i=i)
                        s.flush()
                        mine = s.execute(text("SELECT max(id) FROM audit_events")).scalar_one()
                        if catalog.dialect == "postgresql" and mine != newest + 1:
                            out_of_order.append((newest, mine))
                        time.sleep(0.002)  # a slower transaction: others would overtake it
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not out_of_order
    written = ids(catalog)
    assert len(written) == before + 8 * per_thread
    if catalog.dialect == "postgresql":
        assert written == list(range(1, len(written) + 1))  # gap-free
    checkpoint(catalog, key)
    report = verify(catalog, key.public_key())
    assert report.ok and report.checkpointed == len(written)


def test_checkpoints_made_while_writers_append_all_verify(catalog, ingest, key) -> None:
    ingest()
    catalog.publish("lung-ct", 1, actor="admin:ana")
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            while not stop.is_set():
                with catalog._tx() as s:
                    catalog._audit(s, f"admin:{n}", "test.append", f"thread:{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    made = []
    try:
        for _ in range(4):
            seen = len(ids(catalog))
            deadline = time.monotonic() + 10
            while len(ids(catalog)) == seen and time.monotonic() < deadline:
                time.sleep(0.01)  # let the writers append something new
            made.append(checkpoint(catalog, key))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert all(m is not None for m in made)
    report = verify(catalog, key.public_key())
    assert report.ok, report.problems


# -- keys ------------------------------------------------------------------------------------


def test_the_signing_key_is_made_on_first_use_owner_only_and_reused(tmp_path):
    first = load_or_create_signing_key(tmp_path)
    signing, verifying = audit.key_paths(tmp_path)
    assert stat.S_IMODE(signing.stat().st_mode) == 0o600
    assert audit.load_audit_verify_key(tmp_path).public_bytes_raw() == (
        first.public_key().public_bytes_raw()
    )
    assert load_or_create_signing_key(tmp_path).private_bytes_raw() == first.private_bytes_raw()
    signing.chmod(0o644)
    with pytest.raises(AuditError, match=r"signing.key is readable by others \(mode 0644\)"):
        load_or_create_signing_key(tmp_path)
    assert verifying.is_file()


def test_the_signing_key_needs_a_state_directory(tmp_path):
    with pytest.raises(AuditError, match="does not exist"):
        load_or_create_signing_key(tmp_path / "missing")


# -- PostgreSQL privileges -------------------------------------------------------------------


@pytest.mark.parametrize("catalog_url", ["postgresql"], indirect=True)
def test_the_application_role_can_run_the_catalog_but_never_rewrite_the_audit_log(
    catalog, catalog_url, ingest, key
):
    ingest()
    role = f"enclave_app_{uuid.uuid4().hex[:8]}"
    with catalog.engine.begin() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
    try:
        audit.restrict_application_role(catalog.engine, role)
        app = open_catalog(audit.role_url(catalog_url, role))
        try:
            with app.engine.connect() as conn:
                assert conn.execute(text("SELECT current_user")).scalar_one() == role
            # What the application does still works as that role...
            app.publish("lung-ct", 1, actor="admin:ana")
            app.grant("lung-ct", 1, group="radiology", actor="admin:ana")
            app.revoke("lung-ct", 1, group="radiology", actor="admin:ana")
            assert [e.action for e in app.audit_events(3)] == [
                "grant.revoke",
                "grant.add",
                "version.publish",
            ]
            assert checkpoint(app, key) is not None
            # ...but the audit tables refuse it by privilege, not only by trigger.
            for statement in (
                "UPDATE audit_events SET actor = 'admin:eve'",
                "DELETE FROM audit_events",
                "TRUNCATE audit_events",
                "UPDATE audit_checkpoints SET tree_size = 1",
                "DELETE FROM audit_checkpoints",
                "TRUNCATE audit_checkpoints",
                "DROP TRIGGER audit_events_append_only ON audit_events",
                "ALTER TABLE audit_events DISABLE TRIGGER USER",
            ):
                with pytest.raises(DBAPIError) as caught:
                    with app.engine.begin() as conn:
                        conn.execute(text(statement))
                assert caught.value.orig.sqlstate == "42501", statement  # insufficient_privilege
                assert "permission denied" in str(caught.value) or "must be owner" in str(
                    caught.value
                ), statement
        finally:
            app.close()
        assert verify(catalog, key.public_key()).ok
    finally:
        with catalog.engine.begin() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))


@pytest.mark.parametrize("catalog_url", ["postgresql"], indirect=True)
def test_restricting_refuses_a_superuser_an_owner_or_a_missing_role(catalog):
    with pytest.raises(InvalidInput, match="role 'nobody_here' does not exist"):
        audit.restrict_application_role(catalog.engine, "nobody_here")
    with catalog.engine.connect() as conn:
        owner = conn.execute(text("SELECT current_user")).scalar_one()
    with pytest.raises(InvalidInput, match="is a superuser"):
        audit.restrict_application_role(catalog.engine, owner)


def test_restricting_a_role_needs_postgresql(tmp_path):
    engine = create_catalog_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with pytest.raises(InvalidInput, match="only on PostgreSQL"):
        audit.restrict_application_role(engine, "app")


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def enclave_audit(tmp_path, catalog_url, capsys):
    """Run ``enclave audit ...`` on the test catalog; returns (exit code, stdout, stderr)."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()

    def run(*args, state=True):
        argv = ["audit", *args]
        if state:
            argv += ["--state-dir", str(state_dir), "--db-url", catalog_url]
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    run.state_dir = state_dir
    return run


def test_the_cli_checkpoints_verifies_and_names_the_changed_entry(catalog, history, enclave_audit):
    code, out, _ = enclave_audit("verify")
    assert code == 0 and f"{len(history)} not yet checkpointed" in out
    code, out, _ = enclave_audit("checkpoint")
    assert code == 0 and out.startswith(f"checkpoint 1: {len(history)} entries up to entry")
    signing = enclave_audit.state_dir / "audit" / "signing.key"
    assert stat.S_IMODE(signing.stat().st_mode) == 0o600
    assert enclave_audit("checkpoint")[1] == (
        f"nothing new to checkpoint (checkpoint 1, {len(history)} entries)\n"
    )
    code, out, _ = enclave_audit("verify")
    assert code == 0
    assert out.startswith(
        f"audit log intact: {len(history)} entries, {len(history)} under 1 signed checkpoint(s)"
    )
    report = json.loads(enclave_audit("verify", "--json")[1])
    assert report["ok"] and report["problems"] == []

    grant_id = next(e["id"] for e in export(catalog) if e["action"] == "grant.add")
    at = row(catalog, grant_id)["at"]
    tamper(catalog, f"UPDATE audit_events SET actor = 'admin:eve' WHERE id = {grant_id}")
    code, out, err = enclave_audit("verify")
    assert code == 3
    assert out.startswith("audit log TAMPERED")
    assert (
        err == f"error: audit entry {grant_id} (grant.add, {at}) was changed after checkpoint 1\n"
    )


def test_the_cli_exports_json_lines_since_a_time(catalog, history, enclave_audit, tmp_path):
    enclave_audit("checkpoint")
    code, out, _ = enclave_audit("export")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [e["id"] for e in lines] == history
    assert lines[3]["leaf_index"] == 3 and len(lines[3]["leaf_hash"]) == 64
    assert {e["checkpoint"] for e in lines} == {1}
    target = tmp_path / "siem.jsonl"
    code, _, err = enclave_audit("export", "--since", "2000-01-01", "--out", str(target))
    assert code == 0 and err == f"exported {len(history)} audit entries to {target}\n"
    assert target.read_text().splitlines() == out.splitlines()
    assert enclave_audit("export", "--since", "2999-01-01")[1] == ""
    code, _, err = enclave_audit("export", "--since", "yesterday")
    assert code == 1 and err.startswith("error: bad time 'yesterday'")


def test_the_cli_proves_an_entry_that_verifies_with_only_the_verify_key(
    catalog, history, enclave_audit, tmp_path
):
    code, _, err = enclave_audit("prove", str(history[2]))
    assert code == 1 and "there is none yet" in err
    enclave_audit("checkpoint")
    code, out, _ = enclave_audit("prove", str(history[2]))
    assert code == 0 and json.loads(out)["leaf_index"] == 2
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(out)
    verify_key = enclave_audit.state_dir / "audit" / "verify.key"
    code, out, _ = enclave_audit(
        "verify-proof", str(proof_file), "--verify-key", str(verify_key), state=False
    )
    assert (
        code == 0
        and out.startswith(f"audit entry {history[2]} (")
        and "is leaf 2 of checkpoint 1" in out
    )
    forged = json.loads(proof_file.read_text())
    forged["entry"]["actor"] = "admin:eve"
    proof_file.write_text(json.dumps(forged))
    code, _, err = enclave_audit(
        "verify-proof", str(proof_file), "--verify-key", str(verify_key), state=False
    )
    assert code == 1 and f"audit entry {history[2]} " in err and "is not at leaf 2" in err


def test_the_cli_refuses_to_verify_signed_checkpoints_without_their_key(
    catalog, history, enclave_audit, key
):
    checkpoint(catalog, key)
    code, _, err = enclave_audit("verify")
    assert code == 1 and "audit/verify.key does not exist" in err


def test_a_write_transaction_inside_another_fails_at_once_instead_of_waiting_forever(catalog):
    with catalog._tx(), pytest.raises(RuntimeError, match="would wait forever"):
        catalog.create_token("dave", "researcher", actor="admin:ana")
    catalog.create_token("dave", "researcher", actor="admin:ana")  # and afterwards it works
