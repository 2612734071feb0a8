"""Local accounts with a mandatory TOTP second factor (NativeAuthenticator underneath).

NativeAuthenticator makes two-factor optional at sign-up; in the enclave every local account has
it: sign-up always creates a TOTP secret (shown once, for an authenticator app) and a login
without a valid code is refused. Production sites use an identity provider that enforces MFA
instead (``GenericOAuthenticator``, see docs/workspaces.md).
"""

from __future__ import annotations

from typing import Any

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler


class EnclaveLoginHandler(NativeLoginHandler):
    """NativeAuthenticator 1.3's login handler without its JupyterHub-5 ``statsd`` call.

    JupyterHub 6 removed ``BaseHandler.statsd``, so the upstream ``post`` fails with a 500 on
    every login; this is the same logic without the timer, answering 403 on a failed login.
    """

    async def post(self) -> None:
        data = {arg: self.get_argument(arg, strip=arg == "username")
                for arg in self.request.body_arguments if arg != "_xsrf"}
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        error = "Invalid username, password or authenticator code."
        username = data.get("username", "")
        info = self.authenticator.get_user(username)
        if info is not None and info.is_valid_password(data.get("password", "")) and not info.is_authorized:
            error = f"User {username} has not been authorized by an administrator yet."
        self.set_status(403)
        self.finish(await self._render(login_error=error, username=username[:32]))


class EnclaveAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with two-factor authentication required for everyone."""

    def get_handlers(self, app: Any) -> list:
        return [(path, EnclaveLoginHandler if path == r"/login" else handler)
                for path, handler in super().get_handlers(app)]

    def create_user(self, username: str, password: str, **kwargs: Any) -> Any:
        kwargs["has_2fa"] = True
        return super().create_user(username, password, **kwargs)

    async def authenticate(self, handler: Any, data: dict) -> Any:
        user = self.get_user(data.get("username", ""))
        if user is not None and not user.has_2fa:
            self.log.warning("refused login of %s: no second factor enrolled", user.username)
            return None
        return await super().authenticate(handler, data)
