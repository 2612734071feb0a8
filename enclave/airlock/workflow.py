"""The airlock's work around the ledger's rules: copy, check, decide, release, download.

``Airlock`` is what the hub-managed service (``enclave.airlock.web``) and the admin CLI call.
Submitting stages the request's files in ``<state>/airlock/requests/<id>/<round>/`` (root
only) from where the deployment's ``FileSource`` says: on one machine copied out of the
requester's ``~/outputs`` (``enclave.airlock.files``); on Kubernetes linked from what the
requester's session uploaded (``enclave.airlock.uploads``). From there on one path: every
check runs on the staged files (``enclave.airlock.checks``) and records the verdicts; the second
approving vote releases (``enclave.airlock.release``). A crash at any point leaves a state
``recover()`` completes: a submission whose checks did not finish is checked again from
scratch; an approval whose release was not built is built.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.airlock import (
    AirlockLedger,
    CheckedFile,
    ContentIndex,
    Decision,
    ExportState,
    RequestView,
    Viewer,
)
from catalog.errors import Conflict, InvalidInput, NotFound
from enclave.airlock.checks import (
    FileReport,
    Limits,
    check_file,
    check_request_size,
)
from enclave.airlock.files import OutputsReader, StagedFile, StagingError, stage
from enclave.airlock.release import Release, Signer, build_release
from enclave.airlock.uploads import UPLOAD_DIR, Caps, FileSource, UploadArea
from enclave.errors import EnclaveError

log = logging.getLogger("enclave.airlock")

AIRLOCK_DIR = "airlock"


class AirlockError(EnclaveError):
    """An airlock request that cannot be honoured (named in the message)."""


@dataclass(frozen=True)
class Requester:
    """A hub user asking to export, with the Unix account whose ``~/outputs`` is read."""

    name: str
    groups: frozenset[str] = frozenset()


@dataclass
class LineageRecords:
    """The requester's lineage records by output hash, each checked against the catalog: the
    record is written by the requester's own code, so the datasets it names are confirmed
    (the version exists with that content hash and was granted to the requester) or not."""

    by_sha256: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record_for(self, sha256: str) -> dict[str, Any] | None:
        return self.by_sha256.get(sha256)


def _confirm_datasets(catalog: Any, requester: Requester, record: dict[str, Any]) -> dict[str, Any]:
    confirmed = []
    for entry in record.get("datasets") or []:
        name, version = entry.get("name"), entry.get("version")
        try:
            detail = catalog.get_version(name, version)
        except (NotFound, InvalidInput):
            status = "unknown version"
        else:
            if detail.summary.content_hash != entry.get("content_hash"):
                status = "content hash differs from the catalog's"
            else:
                grants = catalog.grants(name, version, include_revoked=True)
                granted = any(
                    g.user == requester.name or g.group in requester.groups for g in grants
                )
                status = "confirmed" if granted else "never granted to the requester"
        confirmed.append({**entry, "catalog": status})
    return {**record, "datasets": confirmed}


class Airlock:
    def __init__(
        self,
        catalog: Any,
        state_dir: Path,
        signer: Signer,
        *,
        home_root: Path = Path("/home"),
        unix_prefix: str = "enclave-",
        limits: Limits | None = None,
        max_files: int = 1000,
        site: str = "enclave",
        file_source: FileSource = FileSource.HOME,
    ) -> None:
        self.catalog = catalog
        self.ledger = AirlockLedger(catalog)
        self.index = ContentIndex(catalog)
        self.root = Path(state_dir) / AIRLOCK_DIR
        self.signer = signer
        self.home_root = Path(home_root)
        self.unix_prefix = unix_prefix
        self.limits = limits or Limits()
        self.max_files = max_files
        self.site = site
        self.file_source = FileSource(file_source)
        #: Bytes of uploads being received, by request (counted against the request's cap).
        self.receiving: dict[int, int] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)

    # -- places

    def staged_dir(self, request_id: int, round_: int) -> Path:
        return self.root / "requests" / str(request_id) / str(round_)

    def release_dir(self, request_id: int) -> Path:
        return self.root / "releases" / str(request_id)

    def upload_area(self, request_id: int) -> UploadArea:
        return UploadArea(self.root / "requests" / str(request_id) / UPLOAD_DIR)

    @property
    def caps(self) -> Caps:
        return Caps(self.limits.max_file_bytes, self.limits.max_request_bytes, self.max_files)

    def outputs_reader(self, requester: Requester) -> OutputsReader:
        from enclave.workspace.accounts import lookup_account

        if self.file_source is FileSource.UPLOAD:
            raise AirlockError(
                f"this airlock does not read {requester.name}'s ~/outputs (each home is a "
                "volume of its own session): send the files with `enclave airlock submit` "
                "from the session, which uploads them"
            )

        account = lookup_account(requester.name, self.unix_prefix)
        if account is None:
            raise AirlockError(
                f"{requester.name} has no workspace account: start a server once, save results "
                "under ~/outputs, then ask to export them"
            )
        return OutputsReader(Path(account.home) / "outputs", account.uid)

    # -- the requester

    def create(
        self,
        requester: Requester,
        paths: Sequence[str],
        justification: str,
        note: str = "",
    ) -> RequestView:
        return self.ledger.create(requester.name, list(paths), justification, note)

    def _uploading(self, request_id: int, requester: Requester) -> UploadArea:
        """The upload area of ``requester``'s own draft or returned request, or why not."""
        if self.file_source is not FileSource.UPLOAD:
            raise Conflict(
                "this airlock copies files from ~/outputs itself (one machine) and takes no "
                "uploads: submit the paths"
            )
        try:
            view = self.ledger.get(request_id, Viewer(requester.name))
        except NotFound:
            view = None
        if view is None or view.requester != requester.name:
            raise NotFound(
                f"no export request {request_id} of {requester.name}'s: only its requester "
                "uploads its files"
            )
        if view.state not in (ExportState.DRAFT, ExportState.RETURNED):
            raise Conflict(
                f"export request {request_id} is {view.state}: files are uploaded to a draft "
                "or a returned request only"
            )
        return self.upload_area(request_id)

    async def receive_file(
        self,
        request_id: int,
        requester: Requester,
        name: str,
        chunks: AsyncIterator[bytes],
        sha256: str | None,
        length: int | None = None,
    ) -> StagedFile:
        """Receive one uploaded file of a draft or returned request (``enclave.airlock.uploads``)."""
        area = self._uploading(request_id, requester)
        received = await area.receive(
            name,
            chunks,
            sha256,
            self.caps,
            length=length,
            in_flight=self.receiving,
            key=request_id,
        )
        log.info("export %s: received %s (%s bytes)", request_id, received.name, received.size)
        return received

    def receive_lineage(self, request_id: int, requester: Requester, name: str, raw: bytes) -> str:
        """Keep a lineage record sent with a draft or returned request's files."""
        return self._uploading(request_id, requester).receive_lineage(name, raw)

    def submit(self, request_id: int, requester: Requester) -> RequestView:
        """Move to ``submitted``; the caller then runs ``check`` (the service in a thread)."""
        return self.ledger.start_submission(request_id, requester.name)

    def check(self, request_id: int, requester: Requester) -> RequestView:
        """Copy and check a submitted request's files; record the verdicts."""
        view = self.ledger.get(request_id, Viewer(requester.name))
        if view.state is not ExportState.SUBMITTED:
            return view
        dest = self.staged_dir(request_id, view.round)
        shutil.rmtree(dest, ignore_errors=True)  # a crashed attempt starts over
        try:
            staged, records = self._stage(view, requester, dest)
            lineage = self.lineage_records(records, requester)
        except (StagingError, AirlockError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            log.info("export %s returned: %s", request_id, exc)
            return self.ledger.fail_submission(request_id, str(exc))
        reports = [
            check_file(
                f.path,
                f.name,
                index=self.index,
                lineage=lineage,
                limits=self.limits,
                note=view.note,
                sha256=f.sha256,
            )
            for f in staged
        ]
        total = check_request_size(reports, self.limits)
        return self.ledger.record_checks(
            request_id, [self._checked(r, lineage, total) for r in reports]
        )

    def _stage(
        self, view: RequestView, requester: Requester, dest: Path
    ) -> tuple[list[StagedFile], list[dict[str, Any]]]:
        """The round's files in ``dest`` and the requester's lineage records, from where this
        deployment takes them (the only step that differs between the two)."""
        if self.file_source is FileSource.UPLOAD:
            area = self.upload_area(view.id)
            return area.stage(view.paths, dest, self.caps), area.lineage_records()
        reader = self.outputs_reader(requester)
        staged = stage(
            reader,
            view.paths,
            dest,
            max_file_bytes=self.limits.max_file_bytes,
            max_request_bytes=self.limits.max_request_bytes,
            max_files=self.max_files,
        )
        return staged, reader.lineage_records()

    @staticmethod
    def _checked(report: FileReport, lineage: LineageRecords, total: Any) -> CheckedFile:
        checks = [c.to_dict() for c in report.checks]
        verdict = report.verdict
        if total.verdict.weight > verdict.weight:
            checks.append(total.to_dict())
            verdict = total.verdict
        return CheckedFile(
            name=report.name,
            size_bytes=report.size,
            sha256=report.sha256,
            kind=report.kind,
            verdict=verdict,
            checks=checks,
            lineage=lineage.record_for(report.sha256),
        )

    def lineage_records(self, found: list[dict[str, Any]], requester: Requester) -> LineageRecords:
        records = LineageRecords()
        for record in found:
            confirmed = _confirm_datasets(self.catalog, requester, record)
            for output in record.get("outputs") or []:
                sha = output.get("sha256") if isinstance(output, dict) else None
                if isinstance(sha, str) and len(sha) == 64:
                    records.by_sha256[sha] = confirmed  # later runs win (records are sorted)
        return records

    def withdraw(self, request_id: int, requester: Requester) -> RequestView:
        view = self.ledger.withdraw(request_id, requester.name)
        shutil.rmtree(self.root / "requests" / str(request_id), ignore_errors=True)
        return view

    # -- the reviewers

    def vote(
        self,
        request_id: int,
        reviewer: Viewer,
        decision: Decision | str,
        comment: str = "",
        *,
        exclude: Sequence[str] = (),
    ) -> RequestView:
        view = self.ledger.vote(request_id, reviewer, decision, comment, exclude=exclude)
        if view.state is ExportState.APPROVED:
            self.release(request_id)
            view = self.ledger.get(request_id, reviewer)
        elif view.state in (ExportState.REJECTED,):
            shutil.rmtree(self.root / "requests" / str(request_id), ignore_errors=True)
        return view

    def release(self, request_id: int) -> Release:
        view = self.ledger.get(request_id, Viewer("airlock", reviewer=True))
        if view.state is not ExportState.APPROVED:
            raise AirlockError(f"export request {request_id} is {view.state}, not approved")
        release = build_release(
            self.release_dir(request_id),
            self.staged_dir(request_id, view.round),
            view,
            self.signer,
            site=self.site,
        )
        self.ledger.mark_released(request_id, release.manifest_sha256)
        shutil.rmtree(self.root / "requests" / str(request_id), ignore_errors=True)
        log.info("export %s released (%s)", request_id, release.manifest_sha256[:12])
        return release

    def download(self, request_id: int, requester: Requester) -> Path:
        """The release zip, for its requester only; every download is audited."""
        view = self.ledger.get(request_id, Viewer(requester.name))
        if view.requester != requester.name:
            raise NotFound(f"no export request {request_id}")
        path = self.release_dir(request_id) / "release.zip"
        if view.state is not ExportState.RELEASED or not path.is_file():
            raise Conflict(f"export request {request_id} is {view.state}: nothing to download")
        self.ledger.record_download(request_id, requester.name, "release.zip")
        return path

    # -- after a crash

    def recover(self, requesters: dict[str, Requester] | None = None) -> list[int]:
        """Finish what a crash interrupted: checks of submitted requests, approved releases.
        A request that fails again is logged and left in its state for the next start."""
        done = []
        for partial in (self.root / "requests").glob(f"*/{UPLOAD_DIR}"):
            UploadArea(partial).clear_partial()  # uploads a crash cut off leave nothing
        pending = [
            *self.ledger.in_state(ExportState.SUBMITTED),
            *self.ledger.in_state(ExportState.APPROVED),
        ]
        for request_id in pending:
            try:
                view = self.ledger.get(request_id, Viewer("airlock", reviewer=True))
                if view.state is ExportState.SUBMITTED:
                    who = (requesters or {}).get(view.requester) or Requester(view.requester)
                    self.check(request_id, who)
                else:
                    self.release(request_id)
            except Exception:
                log.exception("export %s could not be finished after a restart", request_id)
                continue
            done.append(request_id)
        return done
