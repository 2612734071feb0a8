"""Logging in to a hub-managed web service with the hub's OAuth, and who a token belongs to.

Shared by the catalog (``/services/catalog/``) and the airlock (``/services/airlock/``):

* ``HubLogin.install(app)`` adds the OAuth callback and a middleware that sends a browser
  without the service's cookie to ``/hub/api/oauth2/authorize``; the callback exchanges the code
  for a hub token, kept in an HttpOnly, SameSite=Lax cookie scoped to the service's prefix;
* ``HubUsers.resolve(token)`` asks the hub who a token belongs to (name, groups, and the
  token's own scopes), cached briefly.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from fastapi import Request


@dataclass(frozen=True)
class HubUser:
    name: str
    groups: frozenset[str]
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        return scope in self.scopes


class UserResolver(Protocol):
    """Who a token belongs to (``HubUsers``; a table of tokens in tests)."""

    def resolve(self, token: str) -> HubUser | None: ...


class HubUsers:
    """``resolve(token)`` backed by the hub's ``/api/user`` (cached ``cache_seconds``)."""

    def __init__(self, hub_auth: Any, cache_seconds: float = 30.0) -> None:
        self.hub_auth = hub_auth
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, HubUser | None]] = {}

    def resolve(self, token: str) -> HubUser | None:
        if not token:
            return None
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit and now - hit[0] < self.cache_seconds:
            return hit[1]
        try:
            model = self.hub_auth.user_for_token(token, use_cache=False)
        except Exception:  # the hub refused or is away: not logged in
            model = None
        user = None
        if model and model.get("kind", "user") == "user" and model.get("name"):
            user = HubUser(
                str(model["name"]),
                frozenset(model.get("groups") or []),
                frozenset(model.get("scopes") or []),
            )
        self._cache[token] = (now, user)
        if len(self._cache) > 10_000:
            self._cache.clear()
        return user


def csrf_token(token: str) -> str:
    """A form token bound to the login token (double submit: a cross-site page has neither)."""
    return hmac.new(token.encode(), b"enclave-csrf", hashlib.sha256).hexdigest()[:32]


def csrf_ok(token: str, submitted: str) -> bool:
    return bool(token) and hmac.compare_digest(csrf_token(token), submitted or "")


class HubLogin:
    """The hub's OAuth login for one service mounted at ``prefix``."""

    def __init__(self, hub_auth: Any, prefix: str, cookie: str) -> None:
        self.hub_auth = hub_auth
        self.prefix = prefix.rstrip("/")
        self.cookie = cookie
        self.state_cookie = f"{cookie}_oauth_state"

    def redirect(self, next_path: str) -> Any:
        from fastapi.responses import RedirectResponse

        state = secrets.token_urlsafe(24)
        params = {
            "client_id": self.hub_auth.oauth_client_id,
            "redirect_uri": self.hub_auth.oauth_redirect_uri,
            "response_type": "code",
            "state": state,
        }
        url = f"{self.hub_auth.oauth_authorization_url}?{urlencode(params)}"
        response = RedirectResponse(url, 302)
        response.set_cookie(
            self.state_cookie,
            f"{state}|{next_path}",
            httponly=True,
            samesite="lax",
            path=self.prefix + "/",
            max_age=600,
        )
        return response

    def install(self, app: Any, *, wants_login: Callable[[Request], bool]) -> None:
        """Add the callback route and the login redirect for requests ``wants_login`` picks
        (GET pages without a token)."""
        from fastapi.responses import HTMLResponse, RedirectResponse

        prefix = self.prefix

        @app.get(prefix + "/oauth_callback", include_in_schema=False)
        def oauth_callback(request: Request, code: str = "", state: str = "") -> Any:
            expected, _, next_path = request.cookies.get(self.state_cookie, "").partition("|")
            if not code or not state or not secrets.compare_digest(state, expected or "-"):
                return HTMLResponse(
                    "<p>Login state does not match; <a href='./'>try again</a>.</p>", 400
                )
            token = self.hub_auth.token_for_code(code)
            target = next_path if next_path.startswith(prefix + "/") else prefix + "/"
            response = RedirectResponse(target, 302)
            response.set_cookie(
                self.cookie, token, httponly=True, samesite="lax", path=prefix + "/"
            )
            response.delete_cookie(self.state_cookie, path=prefix + "/")
            return response

        @app.middleware("http")
        async def hub_login(request: Request, call_next: Any) -> Any:
            if (
                request.method == "GET"
                and request.url.path != prefix + "/oauth_callback"
                and "authorization" not in request.headers
                and self.cookie not in request.cookies
                and wants_login(request)
            ):
                path = request.url.path
                query = f"?{request.url.query}" if request.url.query else ""
                return self.redirect(path + query)
            return await call_next(request)
