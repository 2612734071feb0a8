"""Local accounts with a mandatory TOTP second factor (NativeAuthenticator underneath).

NativeAuthenticator makes two-factor optional at sign-up; in the enclave every local account has
it: sign-up always creates a TOTP secret (shown once, for an authenticator app) and a login
without a valid code is refused. Production sites use an identity provider that enforces MFA
instead (``GenericOAuthenticator``, see docs/workspaces.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from traitlets import Unicode

from enclave.workspace import access_log

TOTP_STEP_SECONDS = 30


class EnclaveLoginHandler(NativeLoginHandler):
    """NativeAuthenticator 1.3's login handler without its JupyterHub-5 ``statsd`` call.

    JupyterHub 6 removed ``BaseHandler.statsd``, so the upstream ``post`` fails with a 500 on
    every login; this is the same logic without the timer, answering 403 on a failed login.
    """

    async def post(self) -> None:
        data = {
            arg: self.get_argument(arg, strip=arg == "username")
            for arg in self.request.body_arguments
            if arg != "_xsrf"
        }
        user = await self.login_user(data)
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        error = "Invalid username, password or authenticator code."
        username = data.get("username", "")
        info = self.authenticator.get_user(username)
        if (
            info is not None
            and info.is_valid_password(data.get("password", ""))
            and not info.is_authorized
        ):
            error = f"User {username} has not been authorized by an administrator yet."
        self.set_status(403)
        self.finish(await self._render(login_error=error, username=username[:32]))


class EnclaveAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with two-factor authentication required for everyone; every login
    and failed login is an entry of the audit log (``audit_url``: the catalog database)."""

    audit_url = Unicode("", help="Catalog database URL whose audit log records logins.").tag(
        config=True
    )

    def get_handlers(self, app: Any) -> list:
        return [
            (path, EnclaveLoginHandler if path == r"/login" else handler)
            for path, handler in super().get_handlers(app)
        ]

    def create_user(self, username: str, password: str, **kwargs: Any) -> Any:
        kwargs["has_2fa"] = True
        return super().create_user(username, password, **kwargs)

    async def authenticate(self, handler: Any, data: dict) -> Any:
        """NativeAuthenticator's checks (authorized, password, lockout after failed logins)
        with the second factor required and checked by ``totp_accepted``."""
        username = self.normalize_username(data.get("username", ""))
        accepted = self._authenticate(username, data)
        action, why = ("login", None) if accepted else ("login.failed", "refused")
        await asyncio.to_thread(
            access_log.record,
            self.audit_url,
            username[:128] or "-",
            action,
            f"user:{username[:128]}",
            reason=why,
            address=getattr(getattr(handler, "request", None), "remote_ip", None),
        )
        return accepted

    def _authenticate(self, username: str, data: dict) -> str | None:
        user = self.get_user(username)
        if user is None:
            return None
        if not user.has_2fa or not user.otp_secret:
            self.log.warning("refused login of %s: no second factor enrolled", user.username)
            return None
        if self.allowed_failed_logins and self.is_blocked(username):
            return None
        password_ok = user.is_valid_password(data.get("password", ""))
        # Checked after the (slow, bcrypt) password check, at the time that counts.
        code_ok = totp_accepted(str(data.get("2fa") or ""), user.otp_secret)
        if user.is_authorized and password_ok and code_ok:
            self.successful_login(username)
            return username
        self.add_login_attempt(username)
        return None


def totp_accepted(code: str, secret: str, now: float | None = None) -> bool:
    """Whether ``code`` is the TOTP of the current 30 s step or of the step that just ended.

    NativeAuthenticator accepts only the current step, so a code typed near the end of its
    step failed on arrival (the bcrypt password check alone takes noticeable time);
    RFC 6238 (5.2) allows one step back for that delay, no more.
    """
    import hmac
    import time

    import onetimepass

    code = code.strip()
    if not (code.isdigit() and len(code) == 6):
        return False
    now = time.time() if now is None else now
    return any(
        hmac.compare_digest(code, str(onetimepass.get_totp(secret, clock=int(now) - back)).zfill(6))
        for back in (0, TOTP_STEP_SECONDS)
    )
