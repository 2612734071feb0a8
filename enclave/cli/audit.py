"""``enclave audit``: checkpoint, verify, prove and export the tamper-evident audit log.

Runs where the catalog database is (``--state-dir``; ``--db-url`` or ``$ENCLAVE_DB_URL``).
The audit signing key lives in ``STATE_DIR/audit/signing.key`` (made on the first
checkpoint, owner-only) and its public half in ``STATE_DIR/audit/verify.key``; keep a copy of
the verify key where the database's administrators cannot change it. See docs/audit.md.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import click

from enclave.cli.catalog import _open, _print_json, _state_options
from enclave.errors import EnclaveError


def _verify_key_option(f: Any) -> Any:
    return click.option(
        "--verify-key",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The audit verify key (default: STATE_DIR/audit/verify.key).",
    )(f)


def _parse_time(value: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 time (UTC unless it says otherwise)."""
    text = value.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EnclaveError(
            f"bad time {value!r}: use YYYY-MM-DD or an ISO 8601 time such as 2026-12-06T10:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@click.group()
def audit() -> None:
    """Checkpoint, verify, prove and export the tamper-evident audit log."""


@audit.command("checkpoint")
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Sign with this Ed25519 key (default: STATE_DIR/audit/signing.key, made on first use).",
)
@_state_options
def checkpoint_(signing_key: Path | None, state_dir: Path, db_url: str | None) -> None:
    """Sign a checkpoint (a Merkle tree head) over every audit entry so far.

    Run it often (a timer every few minutes): entries after the newest checkpoint are not
    yet protected against an administrator who edits the database."""
    from catalog.audit import checkpoint, list_checkpoints, load_or_create_signing_key
    from secret_sharing.keys import load_signing_key

    key = load_signing_key(signing_key) if signing_key else load_or_create_signing_key(state_dir)
    with _open(state_dir, db_url) as cat:
        made = checkpoint(cat, key)
        if made is None:
            newest = list_checkpoints(cat)
            where = (
                f" (checkpoint {newest[-1].id}, {newest[-1].tree_size} entries)" if newest else ""
            )
            click.echo(f"nothing new to checkpoint{where}")
            return
    click.echo(
        f"checkpoint {made.id}: {made.tree_size} entries up to entry {made.last_entry_id}, "
        f"root {made.root_hash.hex()}"
    )


@audit.command("verify")
@_verify_key_option
@_state_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_(verify_key: Path | None, state_dir: Path, db_url: str | None, as_json: bool) -> None:
    """Check every entry against the signed checkpoints; name the first one tampered with.

    Exits 3 when the log was changed, 0 when it is intact."""
    from catalog.audit import AuditVerificationError, key_paths, list_checkpoints, verify
    from secret_sharing.keys import load_verify_key

    path = verify_key or key_paths(state_dir)[1]
    with _open(state_dir, db_url) as cat:
        if path.exists() or verify_key is not None:
            keys = [load_verify_key(path)]
        elif list_checkpoints(cat):
            raise EnclaveError(
                f"audit verify key {path} does not exist: give the one the checkpoints were "
                "signed with (--verify-key)"
            )
        else:
            keys = []  # nothing signed yet: every entry is "not yet checkpointed"
        report = verify(cat, keys)
    if as_json:
        _print_json(report.to_dict())
    else:
        click.echo(f"{report.summary()} ({report.rate:,.0f} entries/s)")
    if not report.ok:
        raise AuditVerificationError("; ".join(p.message for p in report.problems))


@audit.command("export")
@click.option(
    "--since",
    default=None,
    help="From the first entry at or after this time (YYYY-MM-DD or ISO 8601, UTC).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file (default: standard output).",
)
@_state_options
def export_(since: str | None, out: Path | None, state_dir: Path, db_url: str | None) -> None:
    """Write audit entries as JSON lines for a SIEM, each with its leaf index and hash."""
    from catalog.audit import export

    start = _parse_time(since) if since else None
    count = 0
    with _open(state_dir, db_url) as cat, contextlib.ExitStack() as stack:
        stream = stack.enter_context(out.open("w", encoding="utf-8")) if out else None
        for entry in export(cat, start):
            click.echo(json.dumps(entry, sort_keys=True, separators=(",", ":")), file=stream)
            count += 1
    if out:
        click.echo(f"exported {count} audit entries to {out}", err=True)


@audit.command("prove")
@click.argument("entry_id", type=int)
@click.option("--checkpoint", "checkpoint_id", type=int, default=None, help="Default: the newest.")
@_state_options
def prove_(entry_id: int, checkpoint_id: int | None, state_dir: Path, db_url: str | None) -> None:
    """Print an inclusion proof of one entry against a signed checkpoint, as JSON.

    Anyone with the verify key checks it offline: `enclave audit verify-proof FILE`."""
    from catalog.audit import prove

    with _open(state_dir, db_url) as cat:
        proof = prove(cat, entry_id, checkpoint_id=checkpoint_id)
    _print_json(proof)


@audit.command("verify-proof")
@click.argument("proof_file", type=click.File("r"))
@click.option(
    "--verify-key",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The audit verify key the checkpoint must be signed with.",
)
def verify_proof_(proof_file: Any, verify_key: Path) -> None:
    """Check an inclusion proof from `enclave audit prove` with only the verify key."""
    from catalog.audit import AuditProofError, verify_proof
    from secret_sharing.keys import load_verify_key

    try:
        proof = json.load(proof_file)
    except ValueError as exc:
        raise AuditProofError(f"{proof_file.name} is not a JSON audit proof: {exc}") from None
    if not isinstance(proof, dict):
        raise AuditProofError(f"{proof_file.name} is not a JSON audit proof")
    view = verify_proof(proof, load_verify_key(verify_key))
    entry = proof["entry"]
    click.echo(
        f"audit entry {entry['id']} ({entry['action']}, {entry['at']}) is leaf "
        f"{proof['leaf_index']} of checkpoint {view.id} ({view.tree_size} entries, signed "
        f"{view.created_at:%Y-%m-%d %H:%M:%S} UTC)"
    )
