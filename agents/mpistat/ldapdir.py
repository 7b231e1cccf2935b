"""Group names and PIs from LDAP: one connection, one search for all groups, one for PIs.

lurge opened a connection per unknown gid; here the directory is read once per run:

1. groups under ``group_base`` matching ``group_filter`` (default ``(objectClass=posixGroup)``):
   ``gidNumber``, ``cn`` and the PI attribute (a DN, e.g. ``uid=alice,ou=people,...``);
2. the gids of the *selected* groups (lurge's humgen groups) with ``selected_filter``
   (default ``(objectClass=sangerHumgenProjectGroup)``), attribute ``gidNumber`` only;
3. the PIs' surnames (``sn``) under ``people_base``, ``(|(uid=a)(uid=b)...)`` in chunks.

The bind password, if any, is a :class:`~hpcsync.agents.core.secrets.Secret`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcsync.agents.core.secrets import Secret
from hpcsync.db.dialect import chunked

from .errors import LdapError


@dataclass(frozen=True)
class LdapSettings:
    url: str
    group_base: str
    people_base: str
    group_filter: str = "(objectClass=posixGroup)"
    selected_filter: str | None = "(objectClass=sangerHumgenProjectGroup)"
    pi_attribute: str = "sangerProjectPI"
    bind_dn: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class GroupInfo:
    gid: int
    name: str
    pi_uid: str | None
    pi: str | None
    selected: bool


@dataclass
class GroupDirectory:
    """Every group the directory knows, by gid."""

    groups: dict[int, GroupInfo] = field(default_factory=dict)

    def by_name(self, name: str) -> GroupInfo | None:
        for info in self.groups.values():
            if info.name == name:
                return info
        return None


def _first(entry, attribute: str):
    values = entry["attributes"].get(attribute)
    if isinstance(values, list):
        return values[0] if values else None
    return values


def _pi_uid(dn: str | None) -> str | None:
    """The value of a DN's first RDN (``uid=alice,ou=people`` -> ``alice``)."""
    if not dn:
        return None
    first = dn.split(",", 1)[0]
    return first.split("=", 1)[1].strip() if "=" in first else None


def read_directory(settings: LdapSettings, password: Secret | None = None) -> GroupDirectory:
    """Read every group, the selected gids and the PIs' surnames; LdapError naming the
    server on any failure (unreachable, bad credentials, bad base or filter)."""
    import ldap3
    from ldap3.core.exceptions import LDAPException

    where = f"LDAP server {settings.url}"
    try:
        timeout = max(1, round(settings.timeout))  # ldap3 packs it into a socket option: whole seconds
        server = ldap3.Server(settings.url, connect_timeout=timeout, get_info=ldap3.NONE)
        conn = ldap3.Connection(
            server,
            user=settings.bind_dn,
            password=password.reveal() if password is not None else None,
            receive_timeout=timeout,
            auto_bind=False,
            raise_exceptions=False,
            read_only=True,
        )
        if not conn.bind():
            raise LdapError(
                f"{where}: bind as {settings.bind_dn or 'anonymous'} failed: {conn.result.get('description')}"
            )
    except LDAPException as exc:
        raise LdapError(f"{where} is unreachable: {exc}") from None
    try:
        rows = _search(conn, where, settings.group_base, settings.group_filter,
                       ["gidNumber", "cn", settings.pi_attribute])  # fmt: skip
        selected: set[int] = set()
        if settings.selected_filter:
            for entry in _search(conn, where, settings.group_base, settings.selected_filter, ["gidNumber"]):
                gid = _first(entry, "gidNumber")
                if gid is not None:
                    selected.add(int(gid))
        raw: list[tuple[int, str, str | None]] = []
        for entry in rows:
            gid, name = _first(entry, "gidNumber"), _first(entry, "cn")
            if gid is None or not name:
                continue
            raw.append((int(gid), str(name), _pi_uid(_first(entry, settings.pi_attribute))))
        uids = sorted({uid for _, _, uid in raw if uid})
        surnames: dict[str, str] = {}
        for part in chunked(uids, 200):
            query = "(|" + "".join(f"(uid={_escape(uid)})" for uid in part) + ")"
            for entry in _search(conn, where, settings.people_base, query, ["uid", "sn"]):
                uid, sn = _first(entry, "uid"), _first(entry, "sn")
                if uid and sn:
                    surnames[str(uid)] = str(sn)
    except LDAPException as exc:
        raise LdapError(f"{where}: {exc}") from None
    finally:
        conn.unbind()
    directory = GroupDirectory()
    for gid, name, uid in raw:
        directory.groups[gid] = GroupInfo(gid, name, uid, surnames.get(uid) if uid else None, gid in selected)
    return directory


def _search(conn, where: str, base: str, query: str, attributes: list[str]) -> list[dict]:
    import ldap3

    entries = conn.extend.standard.paged_search(
        base, query, search_scope=ldap3.SUBTREE, attributes=attributes, paged_size=500, generator=False
    )
    if conn.result.get("result") not in (0, None):
        raise LdapError(f"{where}: search {query} under {base} failed: {conn.result.get('description')} "
                        f"{conn.result.get('message') or ''}".rstrip())  # fmt: skip
    return [e for e in entries if e.get("type") == "searchResEntry"]


def _escape(value: str) -> str:
    from ldap3.utils.conv import escape_filter_chars

    return escape_filter_chars(value)


def local_directory() -> GroupDirectory:
    """Groups from this machine's group database (``getgrall``): no PI, all selected.
    Used when no LDAP server is configured (the demo, or sites without LDAP)."""
    import grp

    directory = GroupDirectory()
    for entry in grp.getgrall():
        directory.groups.setdefault(entry.gr_gid, GroupInfo(entry.gr_gid, entry.gr_name, None, None, True))
    return directory
