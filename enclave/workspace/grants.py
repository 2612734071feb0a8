"""The grant decision: which dataset versions a hub user's session of one kind gets.

One source of truth for both ways a session receives datasets: the local spawner
(``enclave.spawner.IsolatedSpawner``, which mounts them) and, on Kubernetes, the key holder
(``enclave.kubernetes.keyholder``, which issues a pod's ticket for them). Both build the
catalog principal of the hub user with :func:`principal_for`, ask the catalog for the versions
that principal sees (``catalog.service.Catalog.visible_versions``) and keep only those whose
grant mode allows the session's kind (:func:`session_grants`): a notebook session gets only
versions granted for notebooks, a desktop session all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from catalog.auth import Principal, Role
from catalog.models import AccessMode
from enclave.workspace.profiles import role_of

#: The role of a hub user without a role group: the most restricted one.
DEFAULT_ROLE: Role = "student"

G = TypeVar("G")


class GrantSource(Protocol):
    """What the decision asks about grants: the catalog (``catalog.service.Catalog``)."""

    def visible_versions(
        self, principal: Principal, *, now: datetime | None = None
    ) -> list[Any]: ...


def principal_for(user: str, groups: Iterable[str]) -> Principal:
    """The catalog principal of a hub user: their name, the role their groups give, the groups."""
    names = sorted(groups)
    return Principal.of(user, role_of(names) or DEFAULT_ROLE, names)


def session_grants(granted: Iterable[G], kind: AccessMode) -> list[G]:
    """Of the versions a principal is granted, those a session of ``kind`` may have.

    A version without a ``mode`` counts as granted for desktops only (the stricter mode)."""
    return [g for g in granted if AccessMode(getattr(g, "mode", AccessMode.DESKTOP)).allows(kind)]


def session_versions(
    source: GrantSource, user: str, groups: Iterable[str], kind: AccessMode
) -> list[Any]:
    """What ``user``'s session of ``kind`` gets: the catalog's grants, filtered by mode."""
    return session_grants(source.visible_versions(principal_for(user, groups)), kind)
