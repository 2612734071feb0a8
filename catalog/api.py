"""The catalog's REST API and web page (FastAPI; OpenAPI at /openapi.json).

Authorisation by role: admins curate everything; a provider sees only its own
transfers; researchers and students see only dataset versions granted to them (to
them, or to one of their groups, unexpired, published). Datasets a caller may not
see answer 404 exactly like missing ones; a wrong role is 403; no token is 401.

Mutating requests take the token only from the ``Authorization: Bearer`` header. The
web page also accepts it from an HttpOnly, SameSite=Strict cookie set by ``/login``,
which is only honoured for GET pages.
"""

# No "from __future__ import annotations": FastAPI must see the Annotated dependencies
# defined inside create_app as real objects, not strings.

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from catalog.auth import Principal, PrincipalResolver
from catalog.errors import CatalogError, Conflict, InvalidInput, NotFound
from catalog.models import AccessMode
from catalog.service import Catalog
from catalog.views import DatasetSummary, TransferView

COOKIE = "enclave_catalog_token"
TEMPLATES = Path(__file__).resolve().parent / "templates"


class EditRequest(BaseModel):
    title: str | None = None
    description: str | None = None
    license: str | None = None
    tags: list[str] | None = None


class GrantRequest(BaseModel):
    group: str | None = Field(default=None, description="grant to every member of this group")
    user: str | None = Field(default=None, description="grant to this one user")
    expires: date | datetime | None = Field(
        default=None, description="last day of access (YYYY-MM-DD, through its end, UTC)"
    )
    mode: AccessMode = Field(
        default=AccessMode.DESKTOP,
        description="desktop: pixels only (the default); notebook: JupyterLab in the browser may show it",
    )


class RetireRequest(BaseModel):
    reason: str | None = None


def _status_for(exc: CatalogError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, InvalidInput):
        return 400
    return 400


def _templates() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = human_size
    return env


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _mount_path(request: Request) -> str:
    """Where this app is served: ``/`` standalone, ``/services/catalog/`` under the hub."""
    return request.scope.get("root_path", "").rstrip("/") + "/"


def create_app(
    catalog: Catalog,
    *,
    resolver: PrincipalResolver | None = None,
    logout_url: str | None = None,
) -> FastAPI:
    """The catalog service. ``resolver`` maps tokens to principals (default: the catalog's own);
    ``logout_url`` is where sign-out continues (the hub's logout when served under the hub)."""
    resolver = resolver or catalog
    app = FastAPI(
        # Swagger UI and ReDoc load their scripts from a CDN, which an enclave cannot reach;
        # the OpenAPI description itself is served at /openapi.json.
        docs_url=None,
        redoc_url=None,
        title="Enclave dataset catalog",
        description="Browse granted datasets; curate, publish and grant (admins); follow transfers (providers).",
        version="1",
    )
    app.state.catalog = catalog
    bearer = HTTPBearer(auto_error=False, description="API token from `enclave catalog token`")
    templates = _templates()

    @app.exception_handler(CatalogError)
    def _catalog_error(request: Request, exc: CatalogError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_status_for(exc))

    def caller(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        if credentials is None or not credentials.credentials:
            raise HTTPException(
                401,
                "authentication required: send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = resolver.resolve_principal(credentials.credentials)
        if principal is None:
            raise HTTPException(
                401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"}
            )
        return principal

    def requires(*roles: str) -> Callable[[Principal], Principal]:
        def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
            if principal.role not in roles:
                raise HTTPException(
                    403, f"role {principal.role} may not do this (needs {' or '.join(roles)})"
                )
            return principal

        return check

    Admin = Annotated[Principal, Depends(requires("admin"))]
    Reader = Annotated[Principal, Depends(requires("admin", "researcher", "student"))]
    Anyone = Annotated[Principal, Depends(caller)]
    TransferReader = Annotated[Principal, Depends(requires("admin", "provider"))]

    # -- API ----------------------------------------------------------------------------------

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/me", tags=["service"])
    def me(principal: Anyone) -> dict[str, Any]:
        return principal.to_dict()

    @app.get("/api/datasets", tags=["datasets"])
    def list_datasets(principal: Reader) -> list[dict[str, Any]]:
        return [d.to_dict() for d in catalog.list_datasets(principal)]

    @app.get("/api/search", tags=["datasets"])
    def search(
        principal: Reader,
        q: Annotated[str, Query(max_length=200)] = "",
        modality: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[dict[str, Any]]:
        return [
            d.to_dict()
            for d in catalog.search(q, modality=modality, principal=principal, limit=limit)
        ]

    @app.get("/api/datasets/{name}", tags=["datasets"])
    def get_dataset(name: str, principal: Reader) -> dict[str, Any]:
        return catalog.get_dataset(name, principal).to_dict()

    @app.patch("/api/datasets/{name}", tags=["curation"])
    def edit_dataset(name: str, body: EditRequest, principal: Admin) -> dict[str, Any]:
        return catalog.edit(
            name,
            title=body.title,
            description=body.description,
            license=body.license,
            tags=body.tags,
            actor=f"admin:{principal.name}",
        ).to_dict()

    @app.get("/api/datasets/{name}/versions/{version}", tags=["datasets"])
    def get_version(name: str, version: str, principal: Reader) -> dict[str, Any]:
        detail = catalog.get_version(name, version, principal)
        return detail.to_dict(include_private=principal.is_admin)

    @app.post("/api/datasets/{name}/versions/{version}/publish", tags=["curation"])
    def publish(name: str, version: str, principal: Admin) -> dict[str, Any]:
        return catalog.publish(name, version, actor=f"admin:{principal.name}").to_dict()

    @app.post("/api/datasets/{name}/versions/{version}/retire", tags=["curation"])
    def retire(
        name: str, version: str, principal: Admin, body: RetireRequest | None = None
    ) -> dict[str, Any]:
        reason = body.reason if body else None
        return catalog.retire(
            name, version, actor=f"admin:{principal.name}", reason=reason
        ).to_dict()

    @app.get("/api/datasets/{name}/versions/{version}/grants", tags=["curation"])
    def list_grants(name: str, version: str, principal: Admin) -> list[dict[str, Any]]:
        return [g.to_dict() for g in catalog.grants(name, version)]

    @app.post("/api/datasets/{name}/versions/{version}/grants", status_code=201, tags=["curation"])
    def grant(name: str, version: str, body: GrantRequest, principal: Admin) -> dict[str, Any]:
        return catalog.grant(
            name,
            version,
            group=body.group,
            user=body.user,
            expires=body.expires,
            mode=body.mode,
            actor=f"admin:{principal.name}",
        ).to_dict()

    @app.delete("/api/datasets/{name}/versions/{version}/grants", tags=["curation"])
    def revoke(
        name: str,
        version: str,
        principal: Admin,
        group: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        return catalog.revoke(
            name, version, group=group, user=user, actor=f"admin:{principal.name}"
        ).to_dict()

    @app.get("/api/mounts", tags=["datasets"])
    def mounts(principal: Reader) -> list[dict[str, Any]]:
        """Versions the caller may mount now (no keys: those stay inside the enclave)."""
        return [m.to_dict() for m in catalog.visible_versions(principal)]

    @app.get("/api/transfers", tags=["transfers"])
    def transfers(principal: TransferReader, state: str | None = None) -> list[dict[str, Any]]:
        provider = None if principal.is_admin else principal.name
        return [t.to_dict() for t in catalog.list_transfers(provider=provider, state=state)]

    @app.get("/api/transfers/{transfer_id}", tags=["transfers"])
    def transfer(transfer_id: str, principal: TransferReader) -> dict[str, Any]:
        record = catalog.get_transfer(transfer_id)
        if not principal.is_admin and record.provider.name != principal.name:
            raise NotFound(
                f"unknown transfer {transfer_id!r}"
            )  # another provider's: not yours to see
        version = record.version.version if record.version else None
        return TransferView.from_row(record, version).to_dict()

    @app.get("/api/audit", tags=["curation"])
    def audit(
        principal: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        return [e.to_dict() for e in catalog.audit_events(limit)]

    # -- web page -----------------------------------------------------------------------------

    def page_principal(request: Request) -> Principal | None:
        token = None
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        token = token or request.cookies.get(COOKIE)
        return resolver.resolve_principal(token) if token else None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, q: str = "", modality: str = "") -> HTMLResponse:
        principal = page_principal(request)
        if principal is None:
            html = templates.get_template("login.html").render(error=None)
            return HTMLResponse(html, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        datasets: list[DatasetSummary] = []
        error = None
        if principal.role == "provider":
            error = (
                "Providers follow their transfers at /api/transfers; datasets are for researchers."
            )
        else:
            try:
                if q or modality:
                    datasets = catalog.search(q, modality=modality or None, principal=principal)
                else:
                    datasets = catalog.list_datasets(principal)
            except CatalogError as exc:
                error = str(exc)
        html = templates.get_template("index.html").render(
            principal=principal, datasets=datasets, q=q, modality=modality, error=error
        )
        return HTMLResponse(html)

    @app.post("/login", include_in_schema=False, response_model=None)
    def login(request: Request, token: Annotated[str, Form()]) -> HTMLResponse | RedirectResponse:
        if resolver.resolve_principal(token.strip()) is None:
            html = templates.get_template("login.html").render(error="That token is not valid.")
            return HTMLResponse(html, status_code=401)
        base = _mount_path(request)
        response = RedirectResponse(base, status_code=303)
        response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", path=base)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> RedirectResponse:
        base = _mount_path(request)
        response = RedirectResponse(logout_url or base, status_code=303)
        response.delete_cookie(COOKIE, path=base)
        return response

    return app
