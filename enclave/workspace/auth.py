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

TOTP_STEP_SECONDS = 30


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
        if user is not None and user.otp_secret and data.get("2fa"):
            data = dict(data, **{"2fa": current_totp_for(str(data["2fa"]), user.otp_secret)})
        return await super().authenticate(handler, data)


def current_totp_for(code: str, secret: str, now: float | None = None) -> str:
    """The current step's code when ``code`` is valid now or in the step that just ended, else
    ``code`` unchanged (still checked, and refused, by NativeAuthenticator).

    NativeAuthenticator accepts only the current 30 s step, so a code typed at the end of its
    step fails on arrival; RFC 6238 (5.2) allows one step back for that delay, no more.
    """
    import time

    import onetimepass

    now = time.time() if now is None else now
    code = code.strip()
    current = str(onetimepass.get_totp(secret, clock=int(now))).zfill(6)
    previous = str(onetimepass.get_totp(secret, clock=int(now) - TOTP_STEP_SECONDS)).zfill(6)
    return current if code in (current, previous) else code
