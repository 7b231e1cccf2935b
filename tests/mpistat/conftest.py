"""MpistatReporter fixtures: a real tree walked once per session, LDAP groups in slapd."""

from __future__ import annotations

import time

import pytest

from hpcsync.agents.mpistat.ldapdir import LdapSettings
from services.slapd import GROUP_BASE, PEOPLE_BASE

from .dumps import GIDS, build_tree, walk

NOW = int(time.time())

#: gid -> (group name, PI uid, PI surname, humgen?)
GROUPS = {
    GIDS[0]: ("alpha", "alice", "Anderson", True),
    GIDS[1]: ("beta", "bob", "Brown", True),
    GIDS[2]: ("gamma", None, None, False),
}


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    """``(top, entries)``: the built tree and its lstat walk."""
    root = tmp_path_factory.mktemp("tree")
    top = build_tree(root, NOW)
    return top, walk(top)


@pytest.fixture(scope="session")
def ldap_groups(slapd):
    """The test groups and their PIs in slapd (once per session)."""
    ldif = []
    for gid, (name, pi, surname, humgen) in GROUPS.items():
        classes = ["posixGroup", "sangerProjectGroup"] + (["sangerHumgenProjectGroup"] if humgen else [])
        entry = [f"dn: cn={name},{GROUP_BASE}", *[f"objectClass: {c}" for c in classes], f"cn: {name}",
                 f"gidNumber: {gid}"]  # fmt: skip
        if pi:
            entry.append(f"sangerProjectPI: uid={pi},{PEOPLE_BASE}")
        ldif.append("\n".join(entry))
        if pi:
            ldif.append("\n".join([f"dn: uid={pi},{PEOPLE_BASE}", "objectClass: inetOrgPerson", f"uid: {pi}",
                                   f"cn: {pi}", f"sn: {surname}"]))  # fmt: skip
    slapd.add("\n\n".join(ldif) + "\n")
    return slapd


@pytest.fixture
def ldap_settings(ldap_groups):
    return LdapSettings(url=ldap_groups.url, group_base=GROUP_BASE, people_base=PEOPLE_BASE, timeout=10)
