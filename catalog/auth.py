"""Who is calling: principals, roles and bearer tokens.

Authentication stays behind one small interface, ``resolve_principal(token) ->
Principal | None``, so a JupyterHub-backed resolver (users, groups, scopes) can
replace the catalog's own API tokens without touching authorisation code.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["admin", "researcher", "student", "provider"]
ROLES: tuple[Role, ...] = ("admin", "researcher", "student", "provider")
# Roles that see datasets only through grants.
GRANTED_ROLES: tuple[Role, ...] = ("researcher", "student")

API_TOKEN_PREFIX = "enc_"
PROVIDER_TOKEN_PREFIX = "encp_"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name, one role, and the groups grants can name."""

    name: str
    role: Role
    groups: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, name: str, role: Role, groups: Iterable[str] = ()) -> Principal:
        return cls(name=name, role=role, groups=frozenset(groups))

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def sees_by_grant(self) -> bool:
        return self.role in GRANTED_ROLES

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role, "groups": sorted(self.groups)}


class PrincipalResolver(Protocol):
    """Anything that maps a bearer token to a principal (catalog tokens, JupyterHub)."""

    def resolve_principal(self, token: str) -> Principal | None: ...


def new_token(prefix: str = API_TOKEN_PREFIX) -> str:
    """A fresh random token (256 bits); shown once, stored only as its hash."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    return hmac.compare_digest(a, b)
