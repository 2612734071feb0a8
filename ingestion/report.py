"""Validation findings and the report kept with every ingested or quarantined dataset.

Findings name *where* a problem is (file, DICOM tag, table column) and *what* it is,
never the offending value: reports and logs must not carry PHI.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Finding:
    """One thing a validator found.

    ``check`` is a dotted identifier (``dicom.parse``, ``deid.private-tag``,
    ``table.expectation``) so reports can be grouped and filtered.
    """

    check: str
    severity: Severity
    message: str
    path: str | None = None
    tag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ValidationReport:
    """Everything validation learned about one dataset submission."""

    dataset: str
    version: str | None = None
    transfer_id: str | None = None
    findings: list[Finding] = field(default_factory=list)
    # Counts and facts for the catalog: files, series, rows, bytes, timings.
    summary: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def extend(self, findings: list[Finding]) -> None:
        self.findings.extend(findings)

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.severity for f in self.findings))

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "transfer_id": self.transfer_id,
            "passed": self.passed,
            "created_at": self.created_at,
            "counts": self.counts(),
            "summary": self.summary,
            "findings": [f.to_dict() for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        return cls(
            dataset=data["dataset"],
            version=data.get("version"),
            transfer_id=data.get("transfer_id"),
            findings=[Finding(**f) for f in data.get("findings", [])],
            summary=data.get("summary", {}),
            created_at=data.get("created_at", ""),
        )

    def to_html(self) -> str:
        """A self-contained page a curator or provider can read."""
        esc = html.escape
        status = "passed" if self.passed else "rejected"
        rows = "\n".join(
            "<tr class='{sev}'><td>{sev}</td><td>{check}</td><td>{path}</td><td>{tag}</td><td>{msg}</td></tr>".format(
                sev=esc(f.severity),
                check=esc(f.check),
                path=esc(f.path or ""),
                tag=esc(f.tag or ""),
                msg=esc(f.message),
            )
            for f in sorted(
                self.findings, key=lambda f: ("error", "warning", "info").index(f.severity)
            )
        )
        summary = "\n".join(
            f"<tr><th>{esc(str(k))}</th><td>{esc(json.dumps(v, default=str))}</td></tr>"
            for k, v in sorted(self.summary.items())
        )
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Validation report: {esc(self.dataset)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #1d232a; }}
h1 .passed {{ color: #1a7f37; }} h1 .rejected {{ color: #c62828; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #ccd; padding: .3rem .6rem; text-align: left; vertical-align: top; }}
tr.error td:first-child {{ color: #c62828; font-weight: bold; }}
tr.warning td:first-child {{ color: #b26a00; }}
</style></head><body>
<h1>{esc(self.dataset)} {esc(self.version or "")}: <span class="{status}">{status}</span></h1>
<p>Transfer {esc(self.transfer_id or "-")}, checked {esc(self.created_at)}.
{len(self.errors)} error(s), {self.counts().get("warning", 0)} warning(s).</p>
<h2>Summary</h2><table>{summary}</table>
<h2>Findings</h2>
<table><tr><th>severity</th><th>check</th><th>file</th><th>attribute</th><th>problem</th></tr>
{rows}
</table></body></html>
"""
