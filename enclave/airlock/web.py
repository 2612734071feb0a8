"""The airlock as a JupyterHub-managed service at ``/services/airlock/``: pages and a JSON API.

Who may do what comes from the hub token's scopes (``enclave.workspace.hub.load_roles``):

* ``custom:airlock:submit`` (researchers, students; also in the token of their own servers, so
  ``enclave airlock submit`` works from a session): make, submit, withdraw and download one's
  own requests;
* ``custom:airlock:review`` (the ``reviewers`` group): see every request, its files' checks and
  lineage, preview the files no check refused, and vote;
* ``custom:airlock:oversee`` (admins): see every request, without voting;
* ``custom:airlock:transparency`` (providers): the provider page (``/provider``).

Where a deployment's airlock reads no homes (``FileSource.UPLOAD``: Kubernetes), the requester
uploads a draft request's files first: ``PUT api/requests/ID/files?name=NAME`` with the bytes as
the body and their SHA-256 in ``X-Content-SHA256``, ``PUT api/requests/ID/lineage?name=RUN.json``
for each lineage record, then ``POST api/requests/ID/submit``. ``GET api/intake`` says which
path the deployment takes and its caps.

Pages use the hub's OAuth login and a cookie (forms carry a CSRF token bound to it); the API
takes ``Authorization: Bearer TOKEN`` (or ``token TOKEN``). Run by the hub:
``python -m enclave.airlock.web --state-dir DIR``.
"""

from __future__ import annotations

import argparse
import logging
import mimetypes
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

from catalog.airlock import CheckVerdict, ExportState, RequestView, Viewer
from enclave.airlock.scopes import (
    AIRLOCK_SCOPES,
    OVERSEE,
    PROVIDER_GROUP_PREFIX,
    REVIEW,
    SERVICE_NAME,
    SUBMIT,
    TRANSPARENCY,
)
from enclave.airlock.uploads import UploadError
from enclave.airlock.workflow import Airlock, AirlockError, Requester
from enclave.workspace.hub_login import (
    HubLogin,
    HubUser,
    HubUsers,
    UserResolver,
    csrf_ok,
    csrf_token,
)

log = logging.getLogger("enclave.airlock")

COOKIE = "enclave_airlock_token"
#: Bytes of a text file a reviewer's preview shows.
PREVIEW_TEXT_BYTES = 64 * 1024
#: Kinds a reviewer may preview inline.
PREVIEW_IMAGES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif"}
PREVIEW_TEXT = {"text", "empty", "svg"}
SECURITY_HEADERS = {
    # No script on any page; the only inline content is the stylesheet.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TEMPLATES = Path(__file__).resolve().parent / "templates"


def viewer_of(user: HubUser) -> Viewer:
    return Viewer(user.name, reviewer=user.has(REVIEW), admin=user.has(OVERSEE))


def requester_of(user: HubUser) -> Requester:
    return Requester(user.name, user.groups)


def _templates() -> Any:
    import jinja2

    from catalog.api import TEMPLATES as CATALOG_TEMPLATES

    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(str(TEMPLATES)),
                jinja2.FileSystemLoader(str(CATALOG_TEMPLATES)),
            ]
        ),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    env.filters["size"] = human_size
    return env


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def create_app(
    airlock: Airlock,
    users: UserResolver,
    *,
    hub_auth: Any = None,
    prefix: str = "/services/airlock",
    transparency: Any = None,
) -> Any:
    """The airlock's FastAPI app. ``hub_auth`` enables the browser login (None in unit tests,
    which pass tokens in headers); ``transparency`` answers the provider page."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import (
        FileResponse,
        HTMLResponse,
        JSONResponse,
        RedirectResponse,
        Response,
    )

    prefix = prefix.rstrip("/")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    templates = _templates()
    checks = ThreadPoolExecutor(2, thread_name_prefix="airlock-checks")
    app.state.checks = checks

    def token_of(request: Request) -> tuple[str, bool]:
        """The caller's token and whether it came from the cookie (then forms need CSRF)."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("bearer", "token") and value.strip():
            return value.strip(), False
        return request.cookies.get(COOKIE, ""), True

    def user_of(request: Request) -> HubUser:
        token, _ = token_of(request)
        user = users.resolve(token)
        if user is None:
            raise HTTPException(401, "not logged in: a hub token is needed")
        if not (user.scopes & AIRLOCK_SCOPES.keys()):
            raise HTTPException(403, f"{user.name} has no airlock rights")
        return user

    def need(user: HubUser, scope: str, what: str) -> None:
        if not user.has(scope):
            raise HTTPException(403, f"{user.name} may not {what}")

    async def form_of(request: Request) -> dict[str, Any]:
        form = await request.form()
        token, from_cookie = token_of(request)
        if from_cookie and not csrf_ok(token, str(form.get("_csrf", ""))):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
        return {k: form.getlist(k) if k in ("paths", "exclude") else form.get(k) for k in form}

    def run_checks(request_id: int, requester: Requester) -> None:
        def work() -> None:
            try:
                airlock.check(request_id, requester)
            except Exception:
                log.exception("export %s: the checks failed", request_id)

        checks.submit(work)

    def page(name: str, request: Request, user: HubUser, **context: Any) -> Any:
        token, _ = token_of(request)
        html = templates.get_template(name).render(
            user=user,
            viewer=viewer_of(user),
            csrf=csrf_token(token),
            base=prefix + "/",
            SUBMIT=SUBMIT,
            REVIEW=REVIEW,
            TRANSPARENCY=TRANSPARENCY,
            **context,
        )
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    def error(exc: Exception) -> HTTPException:
        from catalog.errors import Conflict, InvalidInput, NotFound

        if isinstance(exc, NotFound):
            return HTTPException(404, str(exc))
        if isinstance(exc, Conflict):
            return HTTPException(409, str(exc))
        if isinstance(exc, InvalidInput | AirlockError):
            return HTTPException(400, str(exc))
        raise exc

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        if request.url.path.startswith(prefix + "/api/"):
            return JSONResponse({"error": exc.detail}, exc.status_code, headers=SECURITY_HEADERS)
        from html import escape

        body = (
            f"<!doctype html><title>Airlock</title><p>{escape(str(exc.detail))}</p>"
            f"<p><a href='{prefix}/'>Back to the airlock</a></p>"
        )
        return HTMLResponse(body, exc.status_code, headers=SECURITY_HEADERS)

    # ------------------------------------------------------------------ JSON API

    @app.get(prefix + "/api/requests")
    def api_list(request: Request, state: str = "", mine: bool = False) -> Any:
        user = user_of(request)
        try:
            states = [ExportState(s) for s in state.split(",") if s]
        except ValueError:
            raise HTTPException(400, f"unknown state in {state!r}") from None
        views = airlock.ledger.find(viewer_of(user), states=states, mine=mine)
        return {"requests": [v.to_dict() for v in views]}

    @app.post(prefix + "/api/requests", status_code=201)
    async def api_create(request: Request) -> Any:
        user = user_of(request)
        need(user, SUBMIT, "ask to export")
        body = await _json(request)
        paths = body.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise HTTPException(400, "paths must be a list of paths under ~/outputs")
        try:
            view = airlock.create(
                requester_of(user),
                paths,
                body.get("justification", ""),
                body.get("note", "") or "",
            )
            if body.get("submit", True):
                view = airlock.submit(view.id, requester_of(user))
                run_checks(view.id, requester_of(user))
        except Exception as exc:  # catalog and airlock errors become 4xx
            raise error(exc) from None
        return view.to_dict()

    @app.get(prefix + "/api/requests/{request_id}")
    def api_show(request: Request, request_id: int) -> Any:
        user = user_of(request)
        try:
            return airlock.ledger.get(request_id, viewer_of(user)).to_dict()
        except Exception as exc:
            raise error(exc) from None

    @app.post(prefix + "/api/requests/{request_id}/submit")
    async def api_submit(request: Request, request_id: int) -> Any:
        user = user_of(request)
        need(user, SUBMIT, "ask to export")
        body = await _json(request, optional=True)
        try:
            if body:
                airlock.ledger.revise(
                    request_id,
                    user.name,
                    paths=body.get("paths"),
                    justification=body.get("justification"),
                    note=body.get("note"),
                )
            view = airlock.submit(request_id, requester_of(user))
        except Exception as exc:
            raise error(exc) from None
        run_checks(request_id, requester_of(user))
        return view.to_dict()

    @app.get(prefix + "/api/intake")
    def api_intake(request: Request) -> Any:
        user_of(request)
        caps = airlock.caps
        return {
            "files": airlock.file_source.value,
            "max_file_bytes": caps.max_file_bytes,
            "max_request_bytes": caps.max_request_bytes,
            "max_files": caps.max_files,
        }

    @app.put(prefix + "/api/requests/{request_id}/files", status_code=201)
    async def api_upload(request: Request, request_id: int, name: str = "") -> Any:
        from starlette.requests import ClientDisconnect

        user = user_of(request)  # from the headers: nothing is read before the caller is known
        need(user, SUBMIT, "upload files to export")
        try:
            received = await airlock.receive_file(
                request_id,
                requester_of(user),
                name,
                request.stream(),
                request.headers.get("x-content-sha256"),
                _length(request),
            )
        except ClientDisconnect:
            log.info("export %s: the upload of %r was cut off; nothing kept", request_id, name)
            raise HTTPException(400, f"the upload of {name!r} was cut off: send it again") from None
        except UploadError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except Exception as exc:
            raise error(exc) from None
        return {"name": received.name, "size": received.size, "sha256": received.sha256}

    @app.put(prefix + "/api/requests/{request_id}/lineage", status_code=201)
    async def api_upload_lineage(request: Request, request_id: int, name: str = "") -> Any:
        from enclave.airlock.files import MAX_LINEAGE_BYTES

        user = user_of(request)
        need(user, SUBMIT, "upload files to export")
        try:
            raw = await _bounded_body(request, MAX_LINEAGE_BYTES, f"lineage record {name!r}")
            kept = airlock.receive_lineage(request_id, requester_of(user), name, raw)
        except UploadError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except HTTPException:
            raise
        except Exception as exc:
            raise error(exc) from None
        return {"name": kept}

    @app.post(prefix + "/api/requests/{request_id}/withdraw")
    def api_withdraw(request: Request, request_id: int) -> Any:
        user = user_of(request)
        need(user, SUBMIT, "withdraw export requests")
        try:
            return airlock.withdraw(request_id, requester_of(user)).to_dict()
        except Exception as exc:
            raise error(exc) from None

    @app.post(prefix + "/api/requests/{request_id}/vote")
    async def api_vote(request: Request, request_id: int) -> Any:
        user = user_of(request)
        need(user, REVIEW, "review export requests")
        body = await _json(request)
        exclude = body.get("exclude") or []
        if not isinstance(exclude, list):
            raise HTTPException(400, "exclude must be a list of file names")
        try:
            view = airlock.vote(
                request_id,
                viewer_of(user),
                str(body.get("decision", "")),
                str(body.get("comment", "") or ""),
                exclude=[str(x) for x in exclude],
            )
        except Exception as exc:
            raise error(exc) from None
        return view.to_dict()

    @app.get(prefix + "/api/requests/{request_id}/download")
    def api_download(request: Request, request_id: int) -> Any:
        return download(request, request_id)

    @app.get(prefix + "/api/outputs")
    def api_outputs(request: Request) -> Any:
        user = user_of(request)
        need(user, SUBMIT, "ask to export")
        return {"files": outputs_of(user)}

    @app.get(prefix + "/api/key")
    def api_key() -> Any:
        from enclave.airlock.release import key_id

        public = airlock.signer.public_key_bytes()
        return {"algorithm": "Ed25519", "public_key": public.hex(), "key_id": key_id(public)}

    @app.get(prefix + "/api/providers/{name}/report")
    def api_provider_report(request: Request, name: str) -> Any:
        user = user_of(request)
        return provider_report(user, name)

    def provider_report(user: HubUser, name: str) -> dict[str, Any]:
        need(user, TRANSPARENCY, "see provider reports")
        if transparency is None:
            raise HTTPException(404, "provider transparency is not set up")
        if PROVIDER_GROUP_PREFIX + name not in user.groups and not user.has(OVERSEE):
            raise HTTPException(404, f"no provider {name!r} of yours")
        try:
            return dict(transparency.report(name))
        except Exception as exc:
            raise error(exc) from None

    # ------------------------------------------------------------------ helpers

    def outputs_of(user: HubUser) -> list[dict[str, Any]]:
        try:
            reader = airlock.outputs_reader(requester_of(user))
            found = []
            for name, fd, st in reader.files("."):
                os.close(fd)
                found.append({"name": name, "size": st.st_size})
                if len(found) >= 2000:
                    break
            return found
        except Exception as exc:  # no account yet, no ~/outputs: an empty list, said why
            log.info("outputs of %s: %s", user.name, exc)
            return []

    def download(request: Request, request_id: int) -> Any:
        user = user_of(request)
        need(user, SUBMIT, "download releases")
        try:
            path = airlock.download(request_id, requester_of(user))
        except Exception as exc:
            raise error(exc) from None
        return FileResponse(
            path,
            media_type="application/zip",
            filename=f"export-{request_id}.zip",
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    # ------------------------------------------------------------------ pages

    @app.get(prefix + "/")
    def index(request: Request, error_message: str = "") -> Any:
        user = user_of(request)
        viewer = viewer_of(user)
        mine = airlock.ledger.find(viewer, mine=True) if user.has(SUBMIT) else []
        queue: list[RequestView] = []
        if viewer.reviewer or viewer.admin:
            queue = [v for v in airlock.ledger.find(viewer) if v.requester != user.name]
        outputs = outputs_of(user) if user.has(SUBMIT) else []
        return page(
            "airlock.html",
            request,
            user,
            mine=mine,
            queue=queue,
            outputs=outputs,
            error=error_message,
        )

    @app.post(prefix + "/new")
    async def new(request: Request) -> Any:
        user = user_of(request)
        need(user, SUBMIT, "ask to export")
        form = await form_of(request)
        try:
            view = airlock.create(
                requester_of(user),
                [str(p) for p in form.get("paths") or []],
                str(form.get("justification") or ""),
                str(form.get("note") or ""),
            )
            view = airlock.submit(view.id, requester_of(user))
        except Exception as exc:
            raise error(exc) from None
        run_checks(view.id, requester_of(user))
        return RedirectResponse(f"{prefix}/requests/{view.id}", 303)

    @app.get(prefix + "/requests/{request_id}")
    def show(request: Request, request_id: int) -> Any:
        user = user_of(request)
        try:
            view = airlock.ledger.get(request_id, viewer_of(user))
        except Exception as exc:
            raise error(exc) from None
        previewable = {*PREVIEW_IMAGES, *PREVIEW_TEXT}
        return page("request.html", request, user, r=view, quote=quote, previewable=previewable)

    @app.post(prefix + "/requests/{request_id}/vote")
    async def vote(request: Request, request_id: int) -> Any:
        user = user_of(request)
        need(user, REVIEW, "review export requests")
        form = await form_of(request)
        try:
            airlock.vote(
                request_id,
                viewer_of(user),
                str(form.get("decision") or ""),
                str(form.get("comment") or ""),
                exclude=[str(x) for x in form.get("exclude") or []],
            )
        except Exception as exc:
            raise error(exc) from None
        return RedirectResponse(f"{prefix}/requests/{request_id}", 303)

    @app.post(prefix + "/requests/{request_id}/withdraw")
    async def withdraw(request: Request, request_id: int) -> Any:
        user = user_of(request)
        need(user, SUBMIT, "withdraw export requests")
        await form_of(request)
        try:
            airlock.withdraw(request_id, requester_of(user))
        except Exception as exc:
            raise error(exc) from None
        return RedirectResponse(f"{prefix}/requests/{request_id}", 303)

    @app.post(prefix + "/requests/{request_id}/resubmit")
    async def resubmit(request: Request, request_id: int) -> Any:
        user = user_of(request)
        need(user, SUBMIT, "ask to export")
        form = await form_of(request)
        try:
            justification = str(form.get("justification") or "").strip() or None
            airlock.ledger.revise(request_id, user.name, justification=justification)
            airlock.submit(request_id, requester_of(user))
        except Exception as exc:
            raise error(exc) from None
        run_checks(request_id, requester_of(user))
        return RedirectResponse(f"{prefix}/requests/{request_id}", 303)

    @app.get(prefix + "/requests/{request_id}/download")
    def page_download(request: Request, request_id: int) -> Any:
        return download(request, request_id)

    @app.get(prefix + "/requests/{request_id}/preview/{name:path}")
    def preview(request: Request, request_id: int, name: str) -> Any:
        user = user_of(request)
        need(user, REVIEW, "preview export files")
        try:
            view = airlock.ledger.get(request_id, viewer_of(user))
        except Exception as exc:
            raise error(exc) from None
        entry = next((f for f in view.files if f.name == name), None)
        if entry is None:
            raise HTTPException(404, f"export request {request_id} has no file {name!r}")
        if entry.verdict is CheckVerdict.REFUSE:
            raise HTTPException(403, f"{name} was refused by the checks: it is not shown")
        path = airlock.staged_dir(request_id, view.round) / name
        if not path.is_file():
            raise HTTPException(410, f"{name} is no longer staged (the request is {view.state})")
        headers = {**SECURITY_HEADERS, "Content-Security-Policy": "default-src 'none'; sandbox"}
        if entry.kind in PREVIEW_IMAGES:
            return FileResponse(path, media_type=PREVIEW_IMAGES[entry.kind], headers=headers)
        if entry.kind in PREVIEW_TEXT:
            with open(path, "rb") as fh:
                data = fh.read(PREVIEW_TEXT_BYTES)
            return Response(data, media_type="text/plain; charset=utf-8", headers=headers)
        kind = mimetypes.guess_type(name)[0] or entry.kind
        raise HTTPException(415, f"{name} ({kind}) has no preview: judge it by its checks")

    @app.get(prefix + "/provider")
    def provider_page(request: Request, name: str = "") -> Any:
        user = user_of(request)
        need(user, TRANSPARENCY, "see provider reports")
        names = sorted(
            g.removeprefix(PROVIDER_GROUP_PREFIX)
            for g in user.groups
            if g.startswith(PROVIDER_GROUP_PREFIX)
        )
        chosen = name or (names[0] if names else "")
        report = provider_report(user, chosen) if chosen else None
        return page("provider.html", request, user, names=names, report=report)

    if hub_auth is not None:

        def wants_login(request: Request) -> bool:
            path = request.url.path
            return path.startswith(prefix) and not path.startswith(prefix + "/api/")

        HubLogin(hub_auth, prefix, COOKIE).install(app, wants_login=wants_login)

    return app


def _length(request: Request) -> int | None:
    """The declared ``Content-Length``, if any (a cap refuses it before a byte is read)."""
    from fastapi import HTTPException

    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"Content-Length {raw!r} is not a number") from None
    if value < 0:
        raise HTTPException(400, f"Content-Length {raw!r} is negative")
    return value


async def _bounded_body(request: Request, cap: int, what: str) -> bytes:
    """The body, read while counting: over ``cap`` bytes it is refused (413) unread."""
    from fastapi import HTTPException

    declared = _length(request)
    if declared is not None and declared > cap:
        raise HTTPException(413, f"{what} is {declared} bytes, over the cap of {cap}")
    parts = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, f"{what} is over the cap of {cap} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _json(request: Request, *, optional: bool = False) -> dict[str, Any]:
    from fastapi import HTTPException

    raw = await request.body()
    if not raw and optional:
        return {}
    if len(raw) > 1024 * 1024:
        raise HTTPException(413, "the request body is over 1 MB")
    import json

    try:
        body = json.loads(raw)
    except ValueError:
        raise HTTPException(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return body


def _preload_acro() -> None:
    import acro.sdcchecks  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)

    from enclave.airlock.setup import open_airlock

    airlock, transparency = open_airlock(args.state_dir, args.database_url)
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8091"))
    serve(airlock, transparency, url.hostname or "127.0.0.1", url.port or 8091)


def serve(airlock: Airlock, transparency: Any, host: str, port: int) -> None:
    """Run the airlock service as a hub service (one machine or a cluster's Deployment):
    finish what a crash interrupted, seal the audit log every few minutes, serve."""
    import threading

    import uvicorn
    from jupyterhub.services.auth import HubOAuth

    from enclave.airlock.setup import checkpoint_forever

    # ACRO (with statsmodels) takes seconds to import: not in the first request's time.
    threading.Thread(target=_preload_acro, daemon=True).start()
    # The audit log is sealed by a signed checkpoint every few minutes (the key is root's).
    threading.Thread(
        target=checkpoint_forever, args=(airlock.catalog, airlock.signer), daemon=True
    ).start()
    airlock.recover()
    hub_auth = HubOAuth(cache_max_age=30)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE_NAME}/")
    app = create_app(
        airlock, HubUsers(hub_auth), hub_auth=hub_auth, prefix=prefix, transparency=transparency
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)


if __name__ == "__main__":
    main()
