"""The airlock's rules on the catalog's database (SQLite and PostgreSQL): states, two
independent reviewers who are never the requester, returns, and every step audited."""

from __future__ import annotations

import pytest

from catalog.airlock import (
    AirlockLedger,
    CheckedFile,
    CheckVerdict,
    ExportState,
    Viewer,
)
from catalog.errors import Conflict, InvalidInput, NotFound

ALICE = Viewer("alice")
BOB = Viewer("bob", reviewer=True)
CAROL = Viewer("carol", reviewer=True)


def checked(name: str, verdict: CheckVerdict = CheckVerdict.PASS) -> CheckedFile:
    return CheckedFile(
        name,
        10,
        "0" * 64,
        "text",
        verdict,
        [{"name": "type", "verdict": verdict.value, "reason": "r"}],
    )


@pytest.fixture
def ledger(catalog) -> AirlockLedger:
    return AirlockLedger(catalog)


def in_review(ledger: AirlockLedger, *files: CheckedFile) -> int:
    r = ledger.create("alice", ["results"], "figures for the paper")
    assert r.state is ExportState.DRAFT
    assert ledger.start_submission(r.id, "alice").state is ExportState.SUBMITTED
    files = files or (checked("results/fig1.png"), checked("results/table.csv"))
    assert ledger.record_checks(r.id, list(files)).state is ExportState.IN_REVIEW
    return r.id


def test_two_approvals_by_different_reviewers_approve_and_one_does_not(ledger):
    rid = in_review(ledger)
    after_one = ledger.vote(rid, BOB, "approve", "fine")
    assert after_one.state is ExportState.IN_REVIEW
    assert after_one.votes_cast == 1
    after_two = ledger.vote(rid, CAROL, "approve")
    assert after_two.state is ExportState.APPROVED
    assert all(f.released for f in after_two.files)


def test_a_reviewer_sees_the_other_vote_only_after_casting_their_own(ledger):
    rid = in_review(ledger)
    ledger.vote(rid, BOB, "approve", "looks aggregate")
    before = ledger.get(rid, CAROL)
    assert before.votes == [] and before.votes_cast == 1 and not before.viewer_voted
    assert ledger.get(rid, ALICE).votes == []  # nor does the requester
    after = ledger.vote(rid, CAROL, "approve")
    assert [v.reviewer for v in after.votes] == ["bob", "carol"]


def test_the_requester_never_votes_on_their_own_request_even_as_a_reviewer(ledger):
    rid = in_review(ledger)
    with pytest.raises(Conflict, match="alice made export request .* never reviews"):
        ledger.vote(rid, Viewer("alice", reviewer=True), "approve", "mine")
    with pytest.raises(NotFound):
        ledger.vote(rid, Viewer("mallory"), "approve", "not a reviewer")
    assert ledger.get(rid, BOB).votes_cast == 0


def test_a_reviewer_votes_once_per_round(ledger):
    rid = in_review(ledger)
    ledger.vote(rid, BOB, "approve")
    with pytest.raises(Conflict, match="bob has already voted on round 1"):
        ledger.vote(rid, BOB, "approve")


def test_a_return_sends_it_back_and_a_resubmission_starts_a_new_round(ledger):
    rid = in_review(ledger)
    ledger.vote(rid, BOB, "approve")
    returned = ledger.vote(rid, CAROL, "return", "suppress the small cells")
    assert returned.state is ExportState.RETURNED
    assert ledger.get(rid, ALICE).votes[1].comment == "suppress the small cells"
    ledger.revise(rid, "alice", justification="cells merged")
    assert ledger.start_submission(rid, "alice").round == 2
    again = ledger.record_checks(rid, [checked("results/table.csv")])
    assert again.state is ExportState.IN_REVIEW and again.votes_cast == 0
    assert [v.comment for v in again.history][1] == "suppress the small cells"
    assert [f.name for f in again.files] == ["results/table.csv"]
    ledger.vote(rid, BOB, "approve")
    assert ledger.vote(rid, CAROL, "approve").state is ExportState.APPROVED


def test_one_rejection_rejects(ledger):
    rid = in_review(ledger)
    ledger.vote(rid, BOB, "reject", "these are images")
    assert ledger.vote(rid, CAROL, "approve").state is ExportState.REJECTED
    with pytest.raises(Conflict, match="rejected, not in review"):
        ledger.vote(rid, Viewer("dave", reviewer=True), "approve")


def test_returns_and_rejections_need_a_comment_and_held_files_need_one_to_be_approved(ledger):
    rid = in_review(ledger, checked("a.csv", CheckVerdict.HOLD), checked("b.png"))
    with pytest.raises(InvalidInput, match="a return needs a comment"):
        ledger.vote(rid, BOB, "return")
    with pytest.raises(InvalidInput, match="a.csv was held .* needs a comment"):
        ledger.vote(rid, BOB, "approve")
    ledger.vote(rid, BOB, "approve", exclude=["a.csv"])  # leaving it out needs no comment
    with pytest.raises(InvalidInput, match="no file 'c.txt'"):
        ledger.vote(rid, CAROL, "approve", "ok", exclude=["c.txt"])


def test_refused_and_excluded_files_are_never_released(ledger):
    rid = in_review(
        ledger,
        checked("scan.dcm", CheckVerdict.REFUSE),
        checked("fig.png"),
        checked("table.csv"),
    )
    ledger.vote(rid, BOB, "approve", exclude=["table.csv"])
    decided = ledger.vote(rid, CAROL, "approve")
    assert decided.state is ExportState.APPROVED
    assert {f.name: f.released for f in decided.files} == {
        "scan.dcm": False,
        "fig.png": True,
        "table.csv": False,
    }


def test_a_request_whose_every_file_is_refused_is_returned_without_review(ledger):
    r = ledger.create("alice", ["scan.dcm"], "please")
    ledger.start_submission(r.id, "alice")
    view = ledger.record_checks(r.id, [checked("scan.dcm", CheckVerdict.REFUSE)])
    assert view.state is ExportState.RETURNED


def test_others_cannot_see_withdraw_or_download_a_request(ledger):
    rid = in_review(ledger)
    with pytest.raises(NotFound):
        ledger.get(rid, Viewer("mallory"))
    with pytest.raises(NotFound):
        ledger.withdraw(rid, "mallory")
    assert [r.id for r in ledger.find(Viewer("mallory"))] == []
    assert [r.id for r in ledger.find(BOB)] == [rid]
    with pytest.raises(Conflict, match="in-review: nothing is released"):
        ledger.record_download(rid, "alice", "release.zip")


def test_withdrawing_ends_a_request_and_only_open_requests_can_be_withdrawn(ledger):
    rid = in_review(ledger)
    assert ledger.withdraw(rid, "alice").state is ExportState.WITHDRAWN
    with pytest.raises(Conflict, match="withdrawn: it cannot be withdrawn"):
        ledger.withdraw(rid, "alice")
    with pytest.raises(Conflict, match="only a draft or a returned request can be submitted"):
        ledger.start_submission(rid, "alice")


def test_every_state_change_and_vote_is_in_the_audit_log(ledger, catalog):
    rid = in_review(ledger)
    ledger.vote(rid, BOB, "approve")
    ledger.vote(rid, CAROL, "approve")
    ledger.mark_released(rid, "f" * 64)
    ledger.record_download(rid, "alice", "release.zip")
    events = [
        (e.actor, e.action)
        for e in reversed(catalog.audit_events(limit=50))
        if e.target == f"export:{rid}"
    ]
    assert events == [
        ("alice", "airlock.draft"),
        ("alice", "airlock.submitted"),
        ("airlock", "airlock.in-review"),
        ("bob", "airlock.vote"),
        ("carol", "airlock.vote"),
        ("airlock", "airlock.approved"),
        ("airlock", "airlock.released"),
        ("alice", "airlock.download"),
    ]


def test_bad_input_is_refused_with_what_is_wrong(ledger):
    with pytest.raises(InvalidInput, match="justification is empty"):
        ledger.create("alice", ["x"], "  ")
    with pytest.raises(InvalidInput, match="at least one file"):
        ledger.create("alice", [], "why")
    rid = in_review(ledger)
    with pytest.raises(InvalidInput, match="decision must be one of approve, return, reject"):
        ledger.vote(rid, BOB, "maybe")
    with pytest.raises(InvalidInput, match="positive number"):
        ledger.get(0, BOB)
    with pytest.raises(NotFound, match="no export request 999"):
        ledger.get(999, BOB)


def test_the_content_index_is_written_with_the_version_and_found_on_both_databases(catalog):
    from catalog.airlock import ContentIndex
    from ingestion.content_index import identifier_digest

    provider, _ = catalog.add_provider("h", b"pem", "fp", actor="test")
    catalog.record_transfer("t-1", provider, dataset_name="brain-mr", k=2, n=3, share_length=1)
    chunk = bytes(range(16))
    catalog.catalog_version(
        "t-1",
        manifest={"name": "brain-mr"},
        content_hash="a" * 64,
        size_bytes=10,
        store_location="store/x",
        wrapped_key=b"k",
        files=[{"path": "s1/1.dcm", "size": 10, "sha256": "b" * 64, "kind": "dicom"}],
        chunks={"s1/1.dcm": [chunk, chunk], "not-a-file": [bytes(16)]},
        identifiers=[identifier_digest("S1"), identifier_digest("s1")],
        actor="test",
    )
    index = ContentIndex(catalog)
    assert index.chunks_found([chunk, bytes(16)]) == {chunk: "brain-mr v1: s1/1.dcm"}
    assert index.identifiers_found([identifier_digest("s1")]) == {
        identifier_digest("s1"): "brain-mr v1"
    }
    assert index.files_with_sha256("b" * 64) == ["brain-mr v1: s1/1.dcm"]
    with pytest.raises(InvalidInput, match="chunk digest of x is not 16 bytes"):
        catalog.catalog_version(
            "t-1",
            manifest={"name": "brain-mr"},
            content_hash="a" * 64,
            size_bytes=10,
            store_location="store/x",
            wrapped_key=b"k",
            files=[],
            chunks={"x": [b"short"]},
            actor="test",
        )
