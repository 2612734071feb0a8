"""The airlock's records: export requests, their files and checks, reviewers' votes, and the
content index the checks look data up in.

An export request moves through ``ExportState``::

    draft -> submitted (files copied, checks running) -> in-review -> approved -> released
                                                        \\-> returned (-> submitted again)
                                                        \\-> rejected
    draft, submitted, in-review, returned -> withdrawn

Two reviewers, neither of them the requester, vote on each round independently: a reviewer
sees the other's vote only after casting their own. With both votes in, a rejection rejects,
a return returns (with both comments), and two approvals approve the files both approved and
no automated check refused. Every transition and vote is an entry in the audit log, in the
same transaction.

``AirlockLedger`` holds the rules; ``enclave.airlock`` does the file work (copying out of the
user's reach, checks, release) and calls it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from catalog.errors import Conflict, InvalidInput, NotFound
from catalog.models import Base, Dataset, DatasetVersion, File, utcnow

if TYPE_CHECKING:
    from catalog.service import Catalog

#: Longest justification, note or comment accepted (characters).
MAX_TEXT = 20_000
#: Most files in one request.
MAX_FILES = 10_000
#: Votes a round needs before it is decided.
VOTES_NEEDED = 2
#: How long the airlock keeps the enclave's identifier digests before reading them again.
IDENTIFIER_CACHE_SECONDS = 60.0
#: Bytes of a content index digest (chunk or identifier; ``ingestion/content_index.py``).
DIGEST_BYTES = 16


class ExportState(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    IN_REVIEW = "in-review"
    APPROVED = "approved"
    RETURNED = "returned"
    REJECTED = "rejected"
    RELEASED = "released"
    WITHDRAWN = "withdrawn"

    @property
    def final(self) -> bool:
        return self in (ExportState.REJECTED, ExportState.RELEASED, ExportState.WITHDRAWN)


#: States a requester may withdraw from.
WITHDRAWABLE = frozenset(
    {ExportState.DRAFT, ExportState.SUBMITTED, ExportState.IN_REVIEW, ExportState.RETURNED}
)


class Decision(StrEnum):
    APPROVE = "approve"
    RETURN = "return"
    REJECT = "reject"


class CheckVerdict(StrEnum):
    """An automated check's verdict: ``hold`` asks reviewers to look, ``refuse`` never leaves."""

    PASS = "pass"
    HOLD = "hold"
    REFUSE = "refuse"

    @property
    def weight(self) -> int:
        return {"pass": 0, "hold": 1, "refuse": 2}[self.value]


def _enum_check(column: str, enum: type[StrEnum]) -> str:
    return f"{column} IN ({','.join(repr(e.value) for e in enum)})"


# ------------------------------------------------------------------------------ tables


class ExportRequest(Base):
    __tablename__ = "export_requests"
    __table_args__ = (CheckConstraint(_enum_check("state", ExportState), name="state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    requester: Mapped[str] = mapped_column(String(128), index=True)
    justification: Mapped[str] = mapped_column(Text)
    note: Mapped[str] = mapped_column(Text, default="")
    # Paths under ~/outputs the requester chose (files or folders), as given.
    paths: Mapped[list[Any]] = mapped_column(default=list)
    state: Mapped[str] = mapped_column(String(16), default=ExportState.DRAFT.value, index=True)
    round: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    released_at: Mapped[datetime | None]
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    downloads: Mapped[int] = mapped_column(default=0)

    files: Mapped[list[ExportFile]] = relationship(
        lazy="selectin", order_by="ExportFile.id", cascade="all, delete-orphan"
    )
    votes: Mapped[list[ExportVote]] = relationship(
        lazy="selectin", order_by="ExportVote.id", cascade="all, delete-orphan"
    )


class ExportFile(Base):
    """One file of one round of a request, with its checks and lineage."""

    __tablename__ = "export_files"
    __table_args__ = (
        UniqueConstraint("request_id", "round", "name"),
        CheckConstraint(_enum_check("verdict", CheckVerdict), name="verdict"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("export_requests.id"), index=True)
    round: Mapped[int]
    name: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    verdict: Mapped[str] = mapped_column(String(8))
    checks: Mapped[list[Any]] = mapped_column(default=list)
    lineage: Mapped[dict[str, Any] | None]
    # Set when the round is decided: whether this file is released.
    released: Mapped[bool | None]


class ExportVote(Base):
    __tablename__ = "export_votes"
    __table_args__ = (
        UniqueConstraint("request_id", "round", "reviewer"),
        CheckConstraint(_enum_check("decision", Decision), name="decision"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("export_requests.id"), index=True)
    round: Mapped[int]
    reviewer: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str] = mapped_column(Text, default="")
    # Names of files this reviewer would not release, in an approving vote.
    excluded: Mapped[list[Any]] = mapped_column(default=list)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ContentChunk(Base):
    """A 64 KiB-aligned chunk of a dataset file, by its BLAKE3 digest (16 bytes)."""

    __tablename__ = "content_chunks"
    __table_args__ = (Index("ix_content_chunks_digest", "digest"),)

    file_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("files.id"), primary_key=True
    )
    digest: Mapped[bytes] = mapped_column(LargeBinary(DIGEST_BYTES), primary_key=True)


class VersionIdentifier(Base):
    """A subject identifier of a version, as a salted digest (never the value)."""

    __tablename__ = "version_identifiers"
    __table_args__ = (Index("ix_version_identifiers_digest", "digest"),)

    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(DIGEST_BYTES), primary_key=True)


# ------------------------------------------------------------------------------ views


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


@dataclass(frozen=True)
class Viewer:
    """Who is looking, with the airlock rights the hub gave them."""

    name: str
    reviewer: bool = False
    admin: bool = False


@dataclass(frozen=True)
class FileView:
    name: str
    size_bytes: int
    sha256: str
    kind: str
    verdict: CheckVerdict
    checks: list[dict[str, Any]]
    lineage: dict[str, Any] | None
    released: bool | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data


@dataclass(frozen=True)
class VoteView:
    reviewer: str
    decision: Decision
    comment: str
    excluded: list[str]
    at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reviewer": self.reviewer,
            "decision": self.decision.value,
            "comment": self.comment,
            "excluded": list(self.excluded),
            "at": _iso(self.at),
        }


@dataclass(frozen=True)
class RequestView:
    id: int
    requester: str
    justification: str
    note: str
    paths: list[str]
    state: ExportState
    round: int
    created_at: datetime | None
    submitted_at: datetime | None
    decided_at: datetime | None
    released_at: datetime | None
    manifest_sha256: str | None
    downloads: int
    files: list[FileView] = field(default_factory=list)
    # Votes of the current round the viewer may see, and how many were cast in all.
    votes: list[VoteView] = field(default_factory=list)
    votes_cast: int = 0
    # Votes of earlier rounds (their comments are what a resubmission answers).
    history: list[VoteView] = field(default_factory=list)
    viewer_voted: bool = False

    @property
    def verdict(self) -> CheckVerdict:
        return max(
            (f.verdict for f in self.files), key=lambda v: v.weight, default=CheckVerdict.PASS
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "requester": self.requester,
            "justification": self.justification,
            "note": self.note,
            "paths": list(self.paths),
            "state": self.state.value,
            "round": self.round,
            "created_at": _iso(self.created_at),
            "submitted_at": _iso(self.submitted_at),
            "decided_at": _iso(self.decided_at),
            "released_at": _iso(self.released_at),
            "manifest_sha256": self.manifest_sha256,
            "downloads": self.downloads,
            "verdict": self.verdict.value,
            "files": [f.to_dict() for f in self.files],
            "votes": [v.to_dict() for v in self.votes],
            "votes_cast": self.votes_cast,
            "history": [v.to_dict() for v in self.history],
            "viewer_voted": self.viewer_voted,
        }


def _vote_view(v: ExportVote) -> VoteView:
    return VoteView(v.reviewer, Decision(v.decision), v.comment, list(v.excluded or []), v.at)


def _request_view(r: ExportRequest, viewer: Viewer) -> RequestView:
    current = [v for v in r.votes if v.round == r.round]
    voted = any(v.reviewer == viewer.name for v in current)
    decided = ExportState(r.state) not in (ExportState.SUBMITTED, ExportState.IN_REVIEW)
    # Independence: nobody sees a round's votes before it is decided, except a reviewer who
    # has already cast theirs.
    visible = current if decided or voted else []
    return RequestView(
        id=r.id,
        requester=r.requester,
        justification=r.justification,
        note=r.note,
        paths=list(r.paths or []),
        state=ExportState(r.state),
        round=r.round,
        created_at=r.created_at,
        submitted_at=r.submitted_at,
        decided_at=r.decided_at,
        released_at=r.released_at,
        manifest_sha256=r.manifest_sha256,
        downloads=r.downloads,
        files=[
            FileView(
                f.name,
                f.size_bytes,
                f.sha256,
                f.kind,
                CheckVerdict(f.verdict),
                list(f.checks or []),
                f.lineage,
                f.released,
            )
            for f in r.files
            if f.round == r.round
        ],
        votes=[_vote_view(v) for v in visible],
        votes_cast=len(current),
        history=[_vote_view(v) for v in r.votes if v.round < r.round],
        viewer_voted=voted,
    )


@dataclass(frozen=True)
class CheckedFile:
    """A staged file with its checks, as ``enclave.airlock`` hands it over."""

    name: str
    size_bytes: int
    sha256: str
    kind: str
    verdict: CheckVerdict
    checks: list[dict[str, Any]]
    lineage: dict[str, Any] | None = None


def check_text(value: object, what: str, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    value = value.strip()
    if required and not value:
        raise InvalidInput(f"{what} is empty: say what the files are and why they must leave")
    if len(value) > MAX_TEXT:
        raise InvalidInput(f"{what} is {len(value)} characters long, over {MAX_TEXT}")
    return value


# ------------------------------------------------------------------------------ the rules


class AirlockLedger:
    """Export requests on the catalog's database; every change audited in its transaction."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # -- plumbing

    def _tx(self) -> Any:
        return self.catalog._tx()

    def _read(self) -> Any:
        return self.catalog._read()

    def _audit(self, s: Session, actor: str, action: str, r: ExportRequest, **details: Any) -> None:
        self.catalog._audit(s, actor, action, f"export:{r.id}", state=r.state, **details)

    @staticmethod
    def _row(s: Session, request_id: int, *, lock: bool = False) -> ExportRequest:
        if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id < 1:
            raise InvalidInput(f"export request id must be a positive number, not {request_id!r}")
        stmt = select(ExportRequest).where(ExportRequest.id == request_id)
        if lock:
            stmt = stmt.with_for_update()
        row = s.scalar(stmt)
        if row is None:
            raise NotFound(f"no export request {request_id}")
        return row

    @staticmethod
    def _may_see(r: ExportRequest, viewer: Viewer) -> bool:
        return viewer.reviewer or viewer.admin or r.requester == viewer.name

    def _move(
        self, s: Session, r: ExportRequest, to: ExportState, actor: str, **details: Any
    ) -> None:
        r.state = to.value
        r.updated_at = utcnow()
        self._audit(s, actor, f"airlock.{to.value}", r, **details)

    # -- the requester

    def create(
        self, requester: str, paths: Sequence[str], justification: str, note: str = ""
    ) -> RequestView:
        """A draft request for files or folders under the requester's ``~/outputs``."""
        justification = check_text(justification, "the justification", required=True)
        note = check_text(note, "the note")
        if not paths:
            raise InvalidInput("an export request needs at least one file or folder")
        if len(paths) > MAX_FILES:
            raise InvalidInput(f"an export request holds at most {MAX_FILES} paths")
        with self._tx() as s:
            r = ExportRequest(
                requester=requester,
                justification=justification,
                note=note,
                paths=[str(p) for p in paths],
                state=ExportState.DRAFT.value,
            )
            s.add(r)
            s.flush()
            self._audit(s, requester, "airlock.draft", r, paths=r.paths)
            return _request_view(r, Viewer(requester))

    def start_submission(self, request_id: int, requester: str) -> RequestView:
        """draft or returned -> submitted: the files are about to be copied and checked."""
        with self._tx() as s:
            r = self._row(s, request_id, lock=True)
            if r.requester != requester:
                raise NotFound(f"no export request {request_id}")
            if ExportState(r.state) not in (ExportState.DRAFT, ExportState.RETURNED):
                raise Conflict(
                    f"export request {request_id} is {r.state}: only a draft or a returned "
                    "request can be submitted"
                )
            r.round += 1
            r.submitted_at = utcnow()
            r.decided_at = None
            self._move(s, r, ExportState.SUBMITTED, requester, round=r.round)
            return _request_view(r, Viewer(requester))

    def revise(
        self,
        request_id: int,
        requester: str,
        *,
        paths: Sequence[str] | None = None,
        justification: str | None = None,
        note: str | None = None,
    ) -> RequestView:
        """Change a draft or a returned request before (re)submitting it."""
        with self._tx() as s:
            r = self._row(s, request_id, lock=True)
            if r.requester != requester:
                raise NotFound(f"no export request {request_id}")
            if ExportState(r.state) not in (ExportState.DRAFT, ExportState.RETURNED):
                raise Conflict(f"export request {request_id} is {r.state}: it cannot be changed")
            if paths is not None:
                if not paths:
                    raise InvalidInput("an export request needs at least one file or folder")
                r.paths = [str(p) for p in paths]
            if justification is not None:
                r.justification = check_text(justification, "the justification", required=True)
            if note is not None:
                r.note = check_text(note, "the note")
            r.updated_at = utcnow()
            self._audit(s, requester, "airlock.revise", r, paths=r.paths)
            return _request_view(r, Viewer(requester))

    def record_checks(self, request_id: int, files: Sequence[CheckedFile]) -> RequestView:
        """submitted -> in-review with the round's files and their checks; -> returned at once
        when the automated checks refuse every file (no reviewer could release anything)."""
        if not files:
            raise InvalidInput(f"export request {request_id}: no files to record")
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise InvalidInput(f"export request {request_id}: a file is named twice")
        with self._tx() as s:
            r = self._row(s, request_id, lock=True)
            if ExportState(r.state) is not ExportState.SUBMITTED:
                raise Conflict(f"export request {request_id} is {r.state}, not submitted")
            for f in files:
                s.add(
                    ExportFile(
                        request_id=r.id,
                        round=r.round,
                        name=f.name,
                        size_bytes=f.size_bytes,
                        sha256=f.sha256,
                        kind=f.kind,
                        verdict=f.verdict.value,
                        checks=f.checks,
                        lineage=f.lineage,
                    )
                )
            counts = {v.value: sum(f.verdict is v for f in files) for v in CheckVerdict}
            summary = {"files": len(files), **counts}
            if counts["refuse"] == len(files):
                r.decided_at = utcnow()
                self._move(s, r, ExportState.RETURNED, "airlock", checks=summary)
            else:
                self._move(s, r, ExportState.IN_REVIEW, "airlock", checks=summary)
            s.flush()
            s.refresh(r)
            return _request_view(r, Viewer(r.requester))

    def fail_submission(self, request_id: int, reason: str) -> RequestView:
        """submitted -> returned when the files could not be copied (named in ``reason``)."""
        with self._tx() as s:
            r = self._row(s, request_id, lock=True)
            if ExportState(r.state) is not ExportState.SUBMITTED:
                raise Conflict(f"export request {request_id} is {r.state}, not submitted")
            r.decided_at = utcnow()
            self._move(s, r, ExportState.RETURNED, "airlock", reason=reason[:2000])
            return _request_view(r, Viewer(r.requester))

    def withdraw(self, request_id: int, requester: str) -> RequestView:
        with self._tx() as s:
            r = self._row(s, request_id, lock=True)
            if r.requester != requester:
                raise NotFound(f"no export request {request_id}")
            if ExportState(r.state) not in WITHDRAWABLE:
                raise Conflict(f"export request {request_id} is {r.state}: it cannot be withdrawn")
            self._move(s, r, ExportState.WITHDRAWN, requester)
            return _request_view(r, Viewer(requester))

    # -- the reviewers

    def vote(
        self,
        request_id: int,
        reviewer: Viewer,
        decision: Decision | str,
        comment: str = "",
        *,
        exclude: Iterable[str] = (),
    ) -> RequestView:
        """One reviewer's vote on the current round; the second vote decides it."""
        if not reviewer.reviewer:
            raise NotFound(f"no export request {request_id}")  # not a reviewer: not theirs to see
        try:
            decision = Decision(decision)
        except ValueError:
            raise InvalidInput(
                f"decision must be one of {', '.join(d.value for d in Decision)}, not {decision!r}"
            ) from None
        comment = check_text(comment, "the comment")
        excluded = sorted(set(exclude))
        with self._tx() as s:
            r = self._row(s, request_id, lock=True)
            if r.requester == reviewer.name:
                raise Conflict(
                    f"{reviewer.name} made export request {request_id}: a requester never reviews their own request"
                )
            if ExportState(r.state) is not ExportState.IN_REVIEW:
                raise Conflict(f"export request {request_id} is {r.state}, not in review")
            current = [v for v in r.votes if v.round == r.round]
            if any(v.reviewer == reviewer.name for v in current):
                raise Conflict(
                    f"{reviewer.name} has already voted on round {r.round} of export request {request_id}"
                )
            files = [f for f in r.files if f.round == r.round]
            names = {f.name for f in files}
            unknown = [n for n in excluded if n not in names]
            if unknown:
                raise InvalidInput(f"export request {request_id} has no file {unknown[0]!r}")
            if decision is not Decision.APPROVE and excluded:
                raise InvalidInput("files are excluded only in an approving vote")
            if decision is not Decision.APPROVE and not comment:
                raise InvalidInput(f"a {decision.value} needs a comment the requester can act on")
            held = [
                f.name
                for f in files
                if f.verdict == CheckVerdict.HOLD.value and f.name not in excluded
            ]
            if decision is Decision.APPROVE:
                if all(f.name in excluded or f.verdict == "refuse" for f in files):
                    raise InvalidInput("an approval must leave at least one releasable file")
                if held and not comment:
                    raise InvalidInput(
                        f"{held[0]} was held by the automated checks: approving it needs a "
                        "comment saying why it is safe"
                    )
            vote = ExportVote(
                request_id=r.id,
                round=r.round,
                reviewer=reviewer.name,
                decision=decision.value,
                comment=comment,
                excluded=excluded,
            )
            s.add(vote)
            r.votes.append(vote)
            self._audit(
                s,
                reviewer.name,
                "airlock.vote",
                r,
                round=r.round,
                decision=decision.value,
                excluded=excluded,
            )
            if len(current) + 1 >= VOTES_NEEDED:
                self._decide(s, r, [*current, vote], files)
            s.flush()
            return _request_view(r, reviewer)

    def _decide(
        self, s: Session, r: ExportRequest, votes: list[ExportVote], files: list[ExportFile]
    ) -> None:
        decisions = {Decision(v.decision) for v in votes}
        r.decided_at = utcnow()
        if Decision.REJECT in decisions:
            self._move(s, r, ExportState.REJECTED, "airlock", round=r.round)
            return
        if Decision.RETURN in decisions:
            self._move(s, r, ExportState.RETURNED, "airlock", round=r.round)
            return
        excluded = {name for v in votes for name in (v.excluded or [])}
        released = []
        for f in files:
            f.released = f.verdict != CheckVerdict.REFUSE.value and f.name not in excluded
            if f.released:
                released.append(f.name)
        if not released:
            self._move(s, r, ExportState.RETURNED, "airlock", round=r.round, released=[])
            return
        self._move(s, r, ExportState.APPROVED, "airlock", round=r.round, released=released)

    def mark_released(self, request_id: int, manifest_sha256: str) -> RequestView:
        """approved -> released, once the release area holds the files and signed manifest."""
        with self._tx() as s:
            r = self._row(s, request_id, lock=True)
            if ExportState(r.state) is not ExportState.APPROVED:
                raise Conflict(f"export request {request_id} is {r.state}, not approved")
            r.released_at = utcnow()
            r.manifest_sha256 = manifest_sha256
            self._move(s, r, ExportState.RELEASED, "airlock", manifest_sha256=manifest_sha256)
            return _request_view(r, Viewer(r.requester))

    def record_download(self, request_id: int, requester: str, what: str) -> RequestView:
        with self._tx() as s:
            r = self._row(s, request_id, lock=True)
            if r.requester != requester:
                raise NotFound(f"no export request {request_id}")
            if ExportState(r.state) is not ExportState.RELEASED:
                raise Conflict(f"export request {request_id} is {r.state}: nothing is released")
            r.downloads += 1
            self.catalog._audit(
                s, requester, "airlock.download", f"export:{r.id}", what=what, downloads=r.downloads
            )
            return _request_view(r, Viewer(requester))

    # -- reading

    def get(self, request_id: int, viewer: Viewer) -> RequestView:
        with self._read() as s:
            r = self._row(s, request_id)
            if not self._may_see(r, viewer):
                raise NotFound(f"no export request {request_id}")
            return _request_view(r, viewer)

    def find(
        self, viewer: Viewer, *, states: Iterable[ExportState | str] = (), mine: bool = False
    ) -> list[RequestView]:
        with self._read() as s:
            stmt = select(ExportRequest).order_by(ExportRequest.id.desc())
            if mine or not (viewer.reviewer or viewer.admin):
                stmt = stmt.where(ExportRequest.requester == viewer.name)
            wanted = [ExportState(x).value for x in states]
            if wanted:
                stmt = stmt.where(ExportRequest.state.in_(wanted))
            return [_request_view(r, viewer) for r in s.scalars(stmt)]

    def in_state(self, state: ExportState) -> list[int]:
        """Ids of requests in ``state`` (restart: finish submissions and releases)."""
        with self._read() as s:
            return list(
                s.scalars(select(ExportRequest.id).where(ExportRequest.state == state.value))
            )

    def released_files(self) -> Iterator[tuple[RequestView, FileView]]:
        """Every released file with its request (provider transparency)."""
        with self._read() as s:
            rows = s.scalars(
                select(ExportRequest).where(ExportRequest.state == ExportState.RELEASED.value)
            ).all()
            views = [_request_view(r, Viewer(r.requester)) for r in rows]
        for view in views:
            for f in view.files:
                if f.released:
                    yield view, f


class ContentIndex:
    """The catalog's ``DataIndex`` for the airlock checks: dataset files by hash and by chunk,
    subject identifiers by digest; each hit named ``dataset vN: path``."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._loaded: tuple[float, dict[bytes, str]] | None = None

    @staticmethod
    def _where(name: str, version: int, path: str | None = None) -> str:
        return f"{name} v{version}: {path}" if path else f"{name} v{version}"

    def files_with_sha256(self, sha256: str) -> list[str]:
        with self.catalog._read() as s:
            rows = s.execute(
                select(Dataset.name, DatasetVersion.version, File.path)
                .join(DatasetVersion, File.version_id == DatasetVersion.id)
                .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
                .where(File.sha256 == sha256)
                .limit(20)
            ).all()
        return [self._where(*row) for row in rows]

    def chunks_found(self, digests: list[bytes]) -> dict[bytes, str]:
        found: dict[bytes, str] = {}
        with self.catalog._read() as s:
            for start in range(0, len(digests), 2000):
                batch = digests[start : start + 2000]
                rows = s.execute(
                    select(ContentChunk.digest, Dataset.name, DatasetVersion.version, File.path)
                    .join(File, ContentChunk.file_id == File.id)
                    .join(DatasetVersion, File.version_id == DatasetVersion.id)
                    .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
                    .where(ContentChunk.digest.in_(batch))
                ).all()
                for digest, name, version, path in rows:
                    found.setdefault(bytes(digest), self._where(name, version, path))
        return found

    def identifiers_found(self, digests: list[bytes]) -> dict[bytes, str]:
        """Looked up in memory: the enclave's identifiers (one per subject, a few MB even for
        a million subjects) are loaded once a minute, not queried token by token."""
        known = self._identifiers()
        return {d: known[d] for d in digests if d in known}

    def _identifiers(self) -> dict[bytes, str]:
        now = time.monotonic()
        if self._loaded is None or now - self._loaded[0] > IDENTIFIER_CACHE_SECONDS:
            with self.catalog._read() as s:
                rows = s.execute(
                    select(VersionIdentifier.digest, Dataset.name, DatasetVersion.version)
                    .join(DatasetVersion, VersionIdentifier.version_id == DatasetVersion.id)
                    .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
                    .order_by(DatasetVersion.id)
                ).all()
            known: dict[bytes, str] = {}
            for digest, name, version in rows:
                known.setdefault(bytes(digest), self._where(name, version))
            self._loaded = (now, known)
        return self._loaded[1]


def index_version_content(
    s: Session,
    version_id: int,
    *,
    chunks: dict[str, list[bytes]],
    identifiers: Iterable[bytes],
) -> None:
    """Add a new version's chunk and identifier digests (in its cataloging transaction), in
    batches through the driver's executemany: a terabyte of data is 16 million chunks."""
    file_ids = dict(
        s.execute(select(File.path, File.id).where(File.version_id == version_id)).all()
    )
    conn = s.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    insert_chunk = f"INSERT INTO content_chunks (file_id, digest) VALUES ({mark}, {mark})"
    batch: list[tuple[int, bytes]] = []
    for path, digests in chunks.items():
        file_id = file_ids.get(path)
        if file_id is None:
            continue
        batch.extend((file_id, bytes(d)) for d in set(digests))
        if len(batch) >= 50_000:
            conn.exec_driver_sql(insert_chunk, batch)
            batch = []
    if batch:
        conn.exec_driver_sql(insert_chunk, batch)
    ids = [(version_id, bytes(d)) for d in set(identifiers)]
    if ids:
        conn.exec_driver_sql(
            f"INSERT INTO version_identifiers (version_id, digest) VALUES ({mark}, {mark})", ids
        )
