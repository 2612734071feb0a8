"""Provider transparency: for each dataset a provider sent, who was granted it, who mounted it,
and which released files derive from it, each event with an inclusion proof.

Every line of the report is an entry of the audit log, and comes with the entry's RFC 6962
inclusion proof against a signed checkpoint (``catalog.audit.prove``) made for the report, so a
provider can keep the report and later show, with nothing but the site's verify key
(``enclave audit verify-proof``), that the enclave recorded exactly this: an entry removed or
changed afterwards no longer matches a checkpoint the provider holds.

Released files are found by lineage: the release's manifest names the dataset versions (by
content hash) the run that made each file read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from catalog.airlock import ExportState
from catalog.models import AuditEvent, Dataset, DatasetVersion, Provider

#: Audit actions that concern a dataset version's use.
GRANT_ACTIONS = ("grant.add", "grant.renew", "grant.revoke")
MOUNT_ACTIONS = ("dataset.mount",)


class Transparency:
    def __init__(self, catalog: Any, airlock: Any, state_dir: Path) -> None:
        self.catalog = catalog
        self.airlock = airlock
        self.state_dir = Path(state_dir)

    def _versions(self, provider: str) -> list[tuple[str, int, str]]:
        from catalog.errors import UnknownProvider

        with self.catalog._read() as s:
            if s.scalar(select(Provider.id).where(Provider.name == provider)) is None:
                raise UnknownProvider(provider)
            rows = s.execute(
                select(Dataset.name, DatasetVersion.version, DatasetVersion.content_hash)
                .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
                .join(Provider, Dataset.provider_id == Provider.id)
                .where(Provider.name == provider)
                .order_by(Dataset.name, DatasetVersion.version)
            ).all()
        return [(str(n), int(v), str(h)) for n, v, h in rows]

    def _events(self, targets: list[str], actions: tuple[str, ...]) -> list[AuditEvent]:
        if not targets:
            return []
        with self.catalog._read() as s:
            return list(
                s.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.target.in_(targets), AuditEvent.action.in_(actions))
                    .order_by(AuditEvent.id)
                )
            )

    def _release_events(self) -> dict[int, AuditEvent]:
        with self.catalog._read() as s:
            rows = s.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == f"airlock.{ExportState.RELEASED.value}")
                .order_by(AuditEvent.id)
            )
            return {int(e.target.removeprefix("export:")): e for e in rows}

    def report(self, provider: str) -> dict[str, Any]:
        """The provider's report, each event with its inclusion proof."""
        from catalog.audit import (
            checkpoint,
            key_fingerprint,
            load_or_create_signing_key,
            prove_many,
        )

        key = load_or_create_signing_key(self.state_dir)
        checkpoint(self.catalog, key)  # seal everything so far, so every entry has a proof
        versions = self._versions(provider)
        by_hash = {h: (n, v) for n, v, h in versions}
        targets = [f"dataset:{n}@{v}" for n, v, _ in versions]
        grants = self._events(targets, GRANT_ACTIONS)
        mounts = self._events(targets, MOUNT_ACTIONS)
        released = self._release_events()
        releases = list(self.airlock.ledger.released_files())
        wanted = sorted(
            {e.id for e in (*grants, *mounts)}
            | {released[r.id].id for r, _ in releases if r.id in released}
        )
        # One tree for every proof (``prove`` alone rebuilds it per entry).
        proofs = dict(zip(wanted, prove_many(self.catalog, wanted), strict=True)) if wanted else {}

        def proof(event: AuditEvent) -> dict[str, Any]:
            return proofs[event.id]

        out: dict[str, dict[str, Any]] = {}
        for name, version, content_hash in versions:
            out[f"{name}@{version}"] = {
                "dataset": name,
                "version": version,
                "content_hash": content_hash,
                "grants": [],
                "mounts": [],
                "releases": [],
            }
        for e in grants:
            entry = out[e.target.removeprefix("dataset:")]
            entry["grants"].append(
                {
                    "action": e.action,
                    "subject": (e.details or {}).get("subject"),
                    "mode": (e.details or {}).get("mode"),
                    "by": e.actor,
                    "at": e.at.isoformat(timespec="seconds"),
                    "proof": proof(e),
                }
            )
        for e in mounts:
            entry = out[e.target.removeprefix("dataset:")]
            entry["mounts"].append(
                {
                    "user": (e.details or {}).get("user", e.actor),
                    "session": (e.details or {}).get("session"),
                    "at": e.at.isoformat(timespec="seconds"),
                    "proof": proof(e),
                }
            )
        for request, f in releases:
            event = released.get(request.id)
            for d in (f.lineage or {}).get("datasets", []):
                hit = by_hash.get(str(d.get("content_hash")))
                if hit is None:
                    continue
                out[f"{hit[0]}@{hit[1]}"]["releases"].append(
                    {
                        "request_id": request.id,
                        "file": f.name,
                        "sha256": f.sha256,
                        "requester": request.requester,
                        "released_at": request.released_at.isoformat(timespec="seconds")
                        if request.released_at
                        else None,
                        "manifest_sha256": request.manifest_sha256,
                        "proof": proof(event) if event is not None else None,
                    }
                )
        public = key.public_key()
        return {
            "format": "enclave-provider-report/1",
            "provider": provider,
            "verify_key_fingerprint": key_fingerprint(public),
            "versions": list(out.values()),
        }
