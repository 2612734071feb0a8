"""The catalog as a JupyterHub-managed service at ``/services/catalog/``.

``catalog.api.create_app`` authenticates through ``resolve_principal(token)``; here that token is
a JupyterHub token, so researchers and students browse the catalog with their hub login:

* the browser is sent through JupyterHub's OAuth (``/hub/api/oauth2/authorize``); the callback
  exchanges the code for a hub token and keeps it in an HttpOnly cookie scoped to the service;
* every token (cookie or ``Authorization: Bearer``) is checked with the hub, which answers with
  the user's groups and scopes; a caller without ``custom:catalog:read`` (or the service's access
  scope) is refused; hub groups become the catalog role (admins > providers > researchers >
  students), and every hub group is a group catalog grants can name.

Run by the hub: ``python -m enclave.workspace.catalog_service --state-dir DIR``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from enclave.workspace.profiles import role_of

CATALOG_SCOPES = (
    "custom:catalog:read",
    "custom:catalog:request",
    "custom:catalog:publish",
    "custom:catalog:curate",
)
SERVICE_NAME = "catalog"


class HubPrincipalResolver:
    """``resolve_principal(token)`` backed by the hub's ``/api/user`` (cached briefly)."""

    def __init__(self, hub_auth: Any, cache_seconds: float = 30.0) -> None:
        self.hub_auth = hub_auth
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Any]] = {}

    @staticmethod
    def principal_from_model(model: dict[str, Any]) -> Any:
        from catalog.auth import Principal

        scopes = set(model.get("scopes") or [])
        allowed = "custom:catalog:read" in scopes or any(
            s in scopes for s in ("access:services", f"access:services!service={SERVICE_NAME}")
        )
        if not allowed:
            return None
        groups = list(model.get("groups") or [])
        role = role_of(groups) or "student"
        return Principal.of(model["name"], role, groups)

    def resolve_principal(self, token: str) -> Any:
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit and now - hit[0] < self.cache_seconds:
            return hit[1]
        try:
            model = self.hub_auth.user_for_token(token, use_cache=False)
        except Exception:
            model = None
        principal = (
            self.principal_from_model(model)
            if model and model.get("kind", "user") == "user"
            else None
        )
        self._cache[token] = (now, principal)
        return principal


def create_service_app(catalog: Any, hub_auth: Any) -> Any:
    """The catalog app mounted under the service prefix, with the hub's OAuth login."""
    from fastapi import FastAPI

    from catalog.api import COOKIE, create_app
    from enclave.workspace.hub_login import HubLogin

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE_NAME}/").rstrip("/")
    hub_base = os.environ.get("JUPYTERHUB_BASE_URL", "/").rstrip("/")
    # Signing out of the catalog signs out of the hub too: its OAuth would log straight back in.
    inner = create_app(
        catalog, resolver=HubPrincipalResolver(hub_auth), logout_url=f"{hub_base}/hub/logout"
    )
    outer = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    HubLogin(hub_auth, prefix, COOKIE).install(
        outer, wants_login=lambda request: request.url.path in (prefix, prefix + "/")
    )
    outer.mount(prefix, inner)
    return outer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)

    import uvicorn
    from jupyterhub.services.auth import HubOAuth

    from catalog.db import resolve_database_url
    from catalog.service import open_catalog

    catalog = open_catalog(resolve_database_url(args.state_dir, args.database_url))
    hub_auth = HubOAuth(cache_max_age=30)
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8090"))
    app = create_service_app(catalog, hub_auth)
    uvicorn.run(
        app,
        host=url.hostname or "127.0.0.1",
        port=url.port or 8090,
        log_level="warning",
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )


if __name__ == "__main__":
    main()
