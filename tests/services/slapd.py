"""A private OpenLDAP slapd on loopback: own cn=config and mdb database in a temp dir.

The directory is ``dc=example,dc=test`` with ``ou=group`` and ``ou=people``, the schemas
core, cosine, nis (posixGroup) and inetorgperson, and a small ``sanger`` schema with the
attributes lurge reads: ``sangerProjectPI`` (a DN) and the auxiliary classes
``sangerProjectGroup`` and ``sangerHumgenProjectGroup``. Anonymous clients may read; a
``cn=reader`` entry with a password tests authenticated binds; ``cn=admin`` writes.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpcsync.agents.core import daemon

from . import ServiceError, free_port, log_tail

SUFFIX = "dc=example,dc=test"
ADMIN_DN = f"cn=admin,{SUFFIX}"
READER_DN = f"cn=reader,{SUFFIX}"
GROUP_BASE = f"ou=group,{SUFFIX}"
PEOPLE_BASE = f"ou=people,{SUFFIX}"

_CONFIG = """\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {base}/slapd.pid
olcArgsFile: {base}/slapd.args

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif

include: file:///etc/ldap/schema/cosine.ldif

include: file:///etc/ldap/schema/nis.ldif

include: file:///etc/ldap/schema/inetorgperson.ldif

dn: cn=sanger,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: sanger
olcAttributeTypes: ( 1.3.6.1.4.1.99999.1.1 NAME 'sangerProjectPI' SUP distinguishedName )
olcObjectClasses: ( 1.3.6.1.4.1.99999.2.1 NAME 'sangerProjectGroup' SUP top AUXILIARY MAY sangerProjectPI )
olcObjectClasses: ( 1.3.6.1.4.1.99999.2.2 NAME 'sangerHumgenProjectGroup' SUP top AUXILIARY )

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcAccess: {{0}}to * by * read

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {suffix}
olcRootDN: {admin}
olcRootPW: {admin_hash}
olcDbDirectory: {base}/db
olcDbMaxSize: 67108864
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by * read
"""

_BASE_ENTRIES = """\
dn: {suffix}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: {groups}
objectClass: organizationalUnit
ou: group

dn: {people}
objectClass: organizationalUnit
ou: people

dn: {reader}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: {reader_hash}
"""


def _hash(password: str) -> str:
    out = subprocess.run(["slappasswd", "-s", password], capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.strip()


@dataclass
class Slapd:
    base: Path
    port: int
    pid: int
    admin_password: str
    reader_password: str

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def add(self, ldif: str) -> None:
        """Add entries (LDIF text) as the admin."""
        result = subprocess.run(
            ["ldapadd", "-x", "-H", self.url, "-D", ADMIN_DN, "-y", str(self.base / "admin.pw")],
            input=ldif, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if result.returncode != 0:
            raise ServiceError(f"ldapadd failed: {result.stderr.strip()}")

    def delete(self, *dns: str) -> None:
        subprocess.run(["ldapdelete", "-x", "-H", self.url, "-D", ADMIN_DN, "-y", str(self.base / "admin.pw"), *dns],
                       capture_output=True, text=True, timeout=30, check=True)  # fmt: skip

    def stop(self) -> None:
        daemon.stop(self.pid, timeout=10)


def start_slapd(base: Path) -> Slapd:
    base = Path(base)
    for name in ("slapd.d", "db"):
        (base / name).mkdir(parents=True, exist_ok=True)
    admin_pw, reader_pw = "admin-secret-pw", "reader-secret-pw"
    (base / "admin.pw").write_text(admin_pw)  # ldapadd -y reads it without a newline
    (base / "admin.pw").chmod(0o600)
    config = _CONFIG.format(base=base, suffix=SUFFIX, admin=ADMIN_DN, admin_hash=_hash(admin_pw))
    (base / "config.ldif").write_text(config)
    load = subprocess.run(["slapadd", "-n0", "-F", str(base / "slapd.d"), "-l", str(base / "config.ldif")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    if load.returncode != 0:
        raise ServiceError(f"slapadd of the config failed: {load.stderr.strip()[-800:]}")
    entries = _BASE_ENTRIES.format(suffix=SUFFIX, groups=GROUP_BASE, people=PEOPLE_BASE, reader=READER_DN,
                                   reader_hash=_hash(reader_pw))  # fmt: skip
    load = subprocess.run(["slapadd", "-n1", "-F", str(base / "slapd.d")], input=entries, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    if load.returncode != 0:
        raise ServiceError(f"slapadd of the base entries failed: {load.stderr.strip()[-800:]}")
    port = free_port()
    log = base / "slapd.log"
    proc = daemon.spawn(["/usr/sbin/slapd", "-d", "0", "-h", f"ldap://127.0.0.1:{port}/", "-F", str(base / "slapd.d")],
                        log_path=log)  # fmt: skip
    probe = ["ldapsearch", "-x", "-H", f"ldap://127.0.0.1:{port}", "-b", SUFFIX, "-s", "base", "dn"]
    ok = daemon.wait_until(
        lambda: proc.poll() is None and subprocess.run(probe, capture_output=True, timeout=5).returncode == 0, 30, 0.1
    )
    if not ok:
        daemon.stop(proc.pid, timeout=5)
        raise ServiceError(f"slapd did not start on port {port}:\n{log_tail(log)}")
    return Slapd(base, port, proc.pid, admin_pw, reader_pw)
