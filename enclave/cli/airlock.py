"""``enclave airlock``: ask to export results, follow a request, review, download, verify.

These commands talk to the airlock service over HTTP with a hub token. Inside a session both
come from the environment the hub set (``ENCLAVE_AIRLOCK_URL`` and ``JUPYTERHUB_API_TOKEN``,
which may submit); a reviewer elsewhere passes ``--url`` (the hub's ``/services/airlock/``)
and a token from the hub's token page (``--token`` or ``ENCLAVE_TOKEN``).

``submit`` asks the service how it takes files (``api/intake``): on one machine it names the
paths and the airlock copies them from ``~/outputs`` itself; where it reads no homes
(Kubernetes) this command uploads each file, streamed from disk with its SHA-256, and the
lineage records of those files, to a draft request, then submits it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import click

from enclave.errors import EnclaveError

DEFAULT_URL = "http://127.0.0.1:8000/services/airlock/"
#: Tries of one upload when the connection drops (the service keeps nothing of a cut-off one).
UPLOAD_TRIES = 3
#: Folders under ~/outputs never exported as files (as the service's ``files.SKIPPED_DIRS``).
SKIPPED_DIRS = frozenset({".lineage", ".ipynb_checkpoints"})
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

    def call(
        self, method: str, path: str, headers_extra: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        import httpx

        try:
            response = httpx.request(
                method,
                self.url + path,
                headers={"Authorization": f"Bearer {self.token}", **(headers_extra or {})},
                timeout=120,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            error = AirlockClientError(f"the airlock at {self.url} cannot be reached: {exc}")
            error.__context__ = exc  # an upload tries again after a dropped connection
            raise error from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text.strip()[:300]
            raise AirlockClientError(f"airlock: {message} (HTTP {response.status_code})")
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.call(method, path, **kwargs).json()

    def upload(self, request_id: int, name: str, path: Path, sha256: str) -> None:
        """Stream one file to a draft request; tried again if the connection drops."""
        import httpx

        for attempt in range(1, UPLOAD_TRIES + 1):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as fh:
                try:
                    self.call(
                        "PUT",
                        f"api/requests/{request_id}/files",
                        params={"name": name},
                        content=fh,
                        headers_extra={
                            "X-Content-SHA256": sha256,
                            "Content-Length": str(os.fstat(fd).st_size),
                        },
                    )
                    return
                except AirlockClientError as exc:
                    if attempt == UPLOAD_TRIES or not isinstance(
                        exc.__context__, httpx.TransportError
                    ):
                        raise


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
    intake = client.json("GET", "api/intake")
    if intake.get("files") == "upload":
        r = _upload_and_submit(client, outputs, names, justification, note, intake)
    else:
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


def _local_files(outputs: Path, names: list[str]) -> dict[str, Path]:
    """Each regular file the names hold (folders walked), by its name under ``outputs``;
    a symbolic link, a path that leaves ``outputs`` or anything not a file is refused."""
    found: dict[str, Path] = {}

    def visit(rel: str, path: Path) -> None:
        shown = f"~/outputs/{rel}" if rel else "~/outputs"
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise AirlockClientError(f"{shown} does not exist") from None
        if stat.S_ISLNK(st.st_mode):
            raise AirlockClientError(f"{shown} is a symbolic link: not exported")
        if stat.S_ISREG(st.st_mode):
            found[rel] = path
        elif stat.S_ISDIR(st.st_mode):
            for entry in sorted(os.listdir(path)):
                if entry not in SKIPPED_DIRS:
                    visit(f"{rel}/{entry}" if rel else entry, path / entry)
        else:
            raise AirlockClientError(f"{shown} is not a regular file or a folder: not exported")

    for raw in names:
        parts = [p for p in Path(raw).parts if p not in ("", ".")]
        if Path(raw).is_absolute() or ".." in parts:
            raise AirlockClientError(
                f"{raw} is not under {outputs}: only ~/outputs can be exported"
            )
        for i in range(1, len(parts)):  # no link on the way either
            if outputs.joinpath(*parts[:i]).is_symlink():
                shown = "/".join(parts[:i])
                raise AirlockClientError(f"~/outputs/{shown} is a symbolic link: not exported")
        visit("/".join(parts), outputs.joinpath(*parts))
    if not found:
        raise AirlockClientError("the paths named hold no file to export")
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _lineage_for(outputs: Path, hashes: set[str]) -> dict[str, bytes]:
    """The lineage records (``~/outputs/.lineage/*.json``) naming one of these files' hashes."""
    from enclave.data.lineage import FORMAT, LINEAGE_DIR

    records: dict[str, bytes] = {}
    folder = outputs / LINEAGE_DIR
    if not folder.is_dir() or folder.is_symlink():
        return records
    for path in sorted(folder.glob("[!.]*.json")):
        if path.is_symlink() or not path.is_file():
            continue
        raw = path.read_bytes()
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            continue
        produced = {o.get("sha256") for o in record.get("outputs") or [] if isinstance(o, dict)}
        if produced & hashes:
            records[path.name] = raw
    return records


def _upload_and_submit(
    client: AirlockClient,
    outputs: Path,
    names: list[str],
    justification: str,
    note: str,
    intake: dict[str, Any],
) -> Any:
    files = _local_files(outputs, names)
    sizes = {name: path.stat().st_size for name, path in files.items()}
    for name, size in sizes.items():  # the service enforces these; say so before sending
        if size > intake["max_file_bytes"]:
            raise AirlockClientError(
                f"~/outputs/{name} is {size} bytes, over the per-file cap of "
                f"{intake['max_file_bytes']} bytes"
            )
    if sum(sizes.values()) > intake["max_request_bytes"]:
        raise AirlockClientError(
            f"the files hold {sum(sizes.values())} bytes, over the per-request cap of "
            f"{intake['max_request_bytes']} bytes: split them"
        )
    if len(files) > intake["max_files"]:
        raise AirlockClientError(f"{len(files)} files, over the {intake['max_files']} allowed")
    hashes = {name: _sha256(path) for name, path in files.items()}
    body = {"paths": names, "justification": justification, "note": note, "submit": False}
    draft = client.json("POST", "api/requests", json=body)
    for name, path in files.items():
        client.upload(draft["id"], name, path, hashes[name])
    for name, raw in _lineage_for(outputs, set(hashes.values())).items():
        client.call(
            "PUT", f"api/requests/{draft['id']}/lineage", params={"name": name}, content=raw
        )
    return client.json("POST", f"api/requests/{draft['id']}/submit")


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
