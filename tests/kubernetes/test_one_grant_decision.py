"""One grant decision: the local spawner and the key holder give a session the same versions.

``enclave.workspace.grants`` is the one place that turns a hub user and a session kind into
dataset versions; ``IsolatedSpawner`` (which mounts them on one machine) and the key holder
(which issues a pod's ticket for them on Kubernetes) both call it. Here both run against the
same real catalog for every kind of person and session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from catalog.models import AccessMode
from enclave.kubernetes.keyholder import Keyholder
from enclave.spawner import IsolatedSpawner
from enclave.workspace import grants


@dataclass
class Group:
    name: str


@dataclass
class HubUser:
    name: str
    groups: list[Group] = field(default_factory=list)


PEOPLE = [
    ("ana", ["researchers"]),
    ("sam", ["students"]),
    ("root", ["admins"]),
    ("nobody", []),
    ("ana2", ["researchers", "students"]),
]


def local_versions(keyholder: Keyholder, user: str, groups: list[str], kind: AccessMode):
    spawner = IsolatedSpawner(
        user=HubUser(user, [Group(g) for g in groups]),
        grants_source=keyholder.grants.visible_versions,
    )
    spawner.user_options = {"kind": kind.value}
    assert spawner.session_kind is kind
    return sorted((v.name, int(v.version)) for v in spawner.session_grants(kind))


def keyholder_versions(keyholder: Keyholder, user: str, groups: list[str], kind: AccessMode):
    issued = keyholder.issue(user, groups, kind.value, f"jupyter-{user}")
    return sorted((v["name"], v["version"]) for v in issued["versions"])


@pytest.mark.parametrize("kind", list(AccessMode))
@pytest.mark.parametrize(("user", "groups"), PEOPLE)
def test_the_local_spawner_and_the_key_holder_give_a_session_the_same_versions(
    site, user, groups, kind
):
    keyholder, client, mnemonics = site
    for m in mnemonics[:2]:
        client.post("/unseal", json={"mnemonic": m})
    assert local_versions(keyholder, user, groups, kind) == keyholder_versions(
        keyholder, user, groups, kind
    )


def test_the_decision_keeps_desktop_only_grants_out_of_notebook_sessions(site):
    keyholder = site[0]
    notebook = grants.session_versions(
        keyholder.grants, "ana", ["researchers"], AccessMode.NOTEBOOK
    )
    desktop = grants.session_versions(keyholder.grants, "ana", ["researchers"], AccessMode.DESKTOP)
    assert [v.name for v in notebook] == ["open-ct"]
    assert sorted(v.name for v in desktop) == ["open-ct", "private-ct"]
    assert grants.session_versions(keyholder.grants, "sam", ["students"], AccessMode.DESKTOP) == []


def test_a_hub_user_without_a_role_group_is_a_student_principal():
    assert grants.principal_for("x", ["zeta", "alpha"]).role == "student"
    assert grants.principal_for("x", ["researchers"]).role == "researcher"
    assert grants.principal_for("x", ["admins", "students"]).role == "admin"
