"""Local accounts with a mandatory TOTP second factor (NativeAuthenticator underneath).

NativeAuthenticator makes two-factor optional at sign-up; in the enclave every local account has
it: sign-up always creates a TOTP secret (shown once, for an authenticator app) and a login
without a valid code is refused. Production sites use an identity provider that enforces MFA
instead (``GenericOAuthenticator``, see docs/workspaces.md).
"""

from __future__ import annotations

from typing import Any

from nativeauthenticator import NativeAuthenticator


class EnclaveAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with two-factor authentication required for everyone."""

    def create_user(self, username: str, password: str, **kwargs: Any) -> Any:
        kwargs["has_2fa"] = True
        return super().create_user(username, password, **kwargs)

    async def authenticate(self, handler: Any, data: dict) -> Any:
        user = self.get_user(data.get("username", ""))
        if user is not None and not user.has_2fa:
            self.log.warning("refused login of %s: no second factor enrolled", user.username)
            return None
        return await super().authenticate(handler, data)
