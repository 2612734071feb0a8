"""``enclave airlock``: ask to export results, follow a request, review, download, verify.

These commands talk to the airlock service over HTTP with a hub token. Inside a session both
come from the environment the hub set (``ENCLAVE_AIRLOCK_URL`` and ``JUPYTERHUB_API_TOKEN``,
which may submit); a reviewer elsewhere passes ``--url`` (the hub's ``/services/airlock/``)
and a token from the hub's token page (``--token`` or ``ENCLAVE_TOKEN``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from enclave.errors import EnclaveError

DEFAULT_URL = "http://127.0.0.1:8000/services/airlock/"
#: How long ``submit`` waits for the automated checks by default (seconds).
CHECK_WAIT_SECONDS = 600


class AirlockClientError(EnclaveError):
    """The airlock service refused a request or could not be reached."""


def _connection_options(f: Any) -> Any:
    f = click.option(
        "--token",
        default=None,
        help="Hub API token (default: $ENCLAVE_TOKEN, else the session's $JUPYTERHUB_API_TOKEN).",
    )(f)
    f = click.option(
        "--url",
        default=None,
        help=f"The airlock service (default: $ENCLAVE_AIRLOCK_URL, else {DEFAULT_URL}).",
    )(f)
    return f


class AirlockClient:
    def __init__(self, url: str | None, token: str | None) -> None:
        self.url = (url or os.environ.get("ENCLAVE_AIRLOCK_URL") or DEFAULT_URL).rstrip("/") + "/"
        self.token = (
            token or os.environ.get("ENCLAVE_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN")
        )
        if not self.token:
            raise AirlockClientError(
                "no hub token: pass --token (a token from the hub's token page) or set "
                "ENCLAVE_TOKEN; inside a session the server's own token is used"
            )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = httpx.request(
                method,
                self.url + path,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=120,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise AirlockClientError(
                f"the airlock at {self.url} cannot be reached: {exc}"
            ) from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text.strip()[:300]
            raise AirlockClientError(f"airlock: {message} (HTTP {response.status_code})")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()


def _print_request(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]export request #{r['id']}[/] {r['state']} (round {r['round']}), by {r['requester']}"
    )
    console.print(f"justification: {r['justification']}")
    if r.get("note"):
        console.print(f"note: {r['note']}")
    if r["files"]:
        table = Table("file", "size", "verdict", "checks not passed")
        for f in r["files"]:
            reasons = "; ".join(
                f"{c['name']}: {c['reason']}" for c in f["checks"] if c["verdict"] != "pass"
            )
            released = {True: " (released)", False: " (not released)"}.get(f.get("released"), "")
            table.add_row(f["name"], str(f["size_bytes"]), f["verdict"] + released, reasons)
        console.print(table)
    else:
        console.print(f"paths: {', '.join(r['paths'])} (not checked yet)")
    for v in r.get("votes", []):
        console.print(f"vote: {v['reviewer']} {v['decision']}: {v['comment']}")
    if not r.get("votes") and r.get("votes_cast"):
        console.print(f"{r['votes_cast']} vote(s) cast")
    for v in r.get("history", []):
        console.print(f"earlier round: {v['reviewer']} {v['decision']}: {v['comment']}")
    if r["state"] == "released":
        console.print(
            f"released; download with `enclave airlock download {r['id']}` "
            f"(manifest sha256 {r['manifest_sha256']})"
        )


@click.group()
def airlock() -> None:
    """Export results through automated checks and two-person review."""


@airlock.command("submit")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--justification", "-j", required=True, help="What the files are, why they must leave."
)
@click.option("--note", default="", help="A note for the reviewers (needed for pickled models).")
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for the checks.")
@click.option("--json", "as_json", is_flag=True, help="Print the request as JSON.")
@_connection_options
def submit(
    paths: tuple[str, ...],
    justification: str,
    note: str,
    no_wait: bool,
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Ask to export files or folders under ~/outputs; prints the automated checks."""
    client = AirlockClient(url, token)
    outputs = Path(os.environ.get("ENCLAVE_OUTPUTS") or Path.home() / "outputs")
    names = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_absolute() or path.exists():
            try:
                names.append(str(path.resolve(strict=False).relative_to(outputs.resolve())))
                continue
            except ValueError:
                if path.is_absolute() or not path.exists():
                    raise AirlockClientError(
                        f"{raw} is not under {outputs}: only ~/outputs can be exported"
                    ) from None
        names.append(raw)
    body = {"paths": names, "justification": justification, "note": note, "submit": True}
    r = client.json("POST", "api/requests", json=body)
    deadline = time.monotonic() + (0 if no_wait else CHECK_WAIT_SECONDS)
    while r["state"] == "submitted" and time.monotonic() < deadline:
        time.sleep(0.5)
        r = client.json("GET", f"api/requests/{r['id']}")
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        _print_request(r)


@airlock.command("list")
@click.option("--state", default="", help="Only these states (comma-separated).")
@click.option("--mine", is_flag=True, help="Only my own requests (reviewers see all).")
@click.option("--json", "as_json", is_flag=True)
@_connection_options
def list_requests(
    state: str, mine: bool, as_json: bool, url: str | None, token: str | None
) -> None:
    """Export requests: yours, or (reviewers) everyone's."""
    client = AirlockClient(url, token)
    params = {"state": state, "mine": "true" if mine else "false"}
    found = client.json("GET", "api/requests", params=params)["requests"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "requester", "state", "files", "verdict", "votes", "submitted")
    for r in found:
        table.add_row(
            str(r["id"]),
            r["requester"],
            r["state"],
            str(len(r["files"]) or len(r["paths"])),
            r["verdict"] if r["files"] else "",
            f"{r['votes_cast']}/2",
            r["submitted_at"] or "",
        )
    Console().print(table)


@airlock.command("show")
@click.argument("request_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@_connection_options
def show(request_id: int, as_json: bool, url: str | None, token: str | None) -> None:
    """One request: its files' checks, lineage, votes."""
    r = AirlockClient(url, token).json("GET", f"api/requests/{request_id}")
    if as_json:
        click.echo(json.dumps(r, indent=2))
    else:
        _print_request(r)


@airlock.command("review")
@click.argument("request_id", type=int)
@click.option("--approve", "decision", flag_value="approve", help="Release what no check refused.")
@click.option("--return", "decision", flag_value="return", help="Send it back for changes.")
@click.option("--reject", "decision", flag_value="reject", help="Refuse it for good.")
@click.option(
    "--comment", "-m", default="", help="Why (needed to return, reject, or approve a held file)."
)
@click.option("--exclude", multiple=True, help="In an approval, leave this file out (repeatable).")
@_connection_options
def review(
    request_id: int,
    decision: str | None,
    comment: str,
    exclude: tuple[str, ...],
    url: str | None,
    token: str | None,
) -> None:
    """Vote on a request (reviewers; never on one's own)."""
    if decision is None:
        raise AirlockClientError("choose one of --approve, --return or --reject")
    body = {"decision": decision, "comment": comment, "exclude": list(exclude)}
    r = AirlockClient(url, token).json("POST", f"api/requests/{request_id}/vote", json=body)
    click.echo(f"voted {decision} on export request #{request_id}: it is now {r['state']}")


@airlock.command("withdraw")
@click.argument("request_id", type=int)
@_connection_options
def withdraw(request_id: int, url: str | None, token: str | None) -> None:
    """Withdraw one of your requests before it is decided."""
    r = AirlockClient(url, token).json("POST", f"api/requests/{request_id}/withdraw")
    click.echo(f"export request #{request_id} is {r['state']}")


@airlock.command("download")
@click.argument("request_id", type=int)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the zip (default: export-ID.zip here).",
)
@_connection_options
def download(request_id: int, output: Path | None, url: str | None, token: str | None) -> None:
    """Download a released request (files and signed manifest, one zip)."""
    target = output or Path(f"export-{request_id}.zip")
    if target.exists():
        raise AirlockClientError(f"{target} exists: choose another --output")
    response = AirlockClient(url, token).call("GET", f"api/requests/{request_id}/download")
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(response.content)
    tmp.rename(target)
    click.echo(
        f"{target}: {len(response.content)} bytes; check it with `enclave airlock verify {target}`"
    )


@airlock.command("verify")
@click.argument("zip_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_hex",
    default=None,
    help="The site's public key (hex), from `enclave airlock key`.",
)
@_connection_options
def verify(zip_path: Path, key_hex: str | None, url: str | None, token: str | None) -> None:
    """Check a release's signed manifest and every file's hash."""
    from enclave.airlock.release import key_id, verify_release

    if key_hex is None:
        key_hex = AirlockClient(url, token).json("GET", "api/key")["public_key"]
    try:
        public = bytes.fromhex(key_hex)
    except ValueError:
        raise AirlockClientError("--key must be the public key in hex") from None
    manifest = verify_release(zip_path, public)
    click.echo(
        f"{zip_path}: export request #{manifest['request_id']} by {manifest['requester']}, "
        f"{len(manifest['files'])} file(s), signed by key {key_id(public)}: verified"
    )


@airlock.command("key")
@_connection_options
def key(url: str | None, token: str | None) -> None:
    """The site's public key that signs release manifests (hex)."""
    found = AirlockClient(url, token).json("GET", "api/key")
    click.echo(f"{found['public_key']}  (Ed25519, key id {found['key_id']})")
