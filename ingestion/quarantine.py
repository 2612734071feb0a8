"""Quarantine: what the enclave keeps of a submission it refused.

Decision: a quarantined submission's *data* is deleted (its plaintext staging copy and every
share on the receivers); only the validation report is kept, as ``report.json`` and
``report.html`` under ``STATE/quarantine/<transfer id>/``. A submission that failed the
de-identification checks may hold PHI the enclave must not keep, and the provider still has
the source: they fix it and send a new transfer. Reports name files, tags and columns, never
values, so they are safe to show to the provider and the curator.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ingestion.report import ValidationReport


def quarantine_dir(quarantine_root: Path, transfer_id: str) -> Path:
    return Path(quarantine_root) / transfer_id


def write_report(quarantine_root: Path, transfer_id: str, report: ValidationReport) -> Path:
    """Keep the report atomically (a crash leaves the old report or the new one, never half)."""
    final = quarantine_dir(quarantine_root, transfer_id)
    tmp = final.with_name(f".tmp-{transfer_id}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "report.json").write_text(report.to_json())
    (tmp / "report.html").write_text(report.to_html())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def read_report(quarantine_root: Path, transfer_id: str) -> ValidationReport | None:
    path = quarantine_dir(quarantine_root, transfer_id) / "report.json"
    if not path.is_file():
        return None
    import json

    return ValidationReport.from_dict(json.loads(path.read_text()))


def summarise(report: ValidationReport, limit: int = 5) -> str:
    """One line for the transfer's reason: the first errors, by check, file and tag."""
    parts = []
    for finding in report.errors[:limit]:
        where = " ".join(x for x in (finding.path, finding.tag) if x)
        parts.append(f"{finding.check}" + (f" ({where})" if where else "") + f": {finding.message}")
    more = len(report.errors) - limit
    if more > 0:
        parts.append(f"and {more} more error(s)")
    return "; ".join(parts) or "validation failed"
