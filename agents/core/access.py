"""Who may start which op: hpcsync's use of OCS access control.

Every op declares the credential level it needs (``min_privs``):

* :data:`READ` (1) -- the op only reads (status, listings, counts); any client may start it.
* :data:`CHANGE` (2) -- the op can change state (copies, deletes, pushes, ignores, retries),
  even if only when a parameter says so; the client must present the level-2 password.

An agent's policy comes from OCS's ``--access-policy`` (or the site config hub's
``access_policy``):

* ``director:<instance-id>`` -- OCS's own: rules (hashed passwords) pushed by an
  ``AccessDirector`` agent; until they arrive every client is blocked.
* ``file:/path`` or ``env:NAME`` -- hpcsync's: a secret (see :mod:`.secrets`) holding OCS's
  ``override:PW2,PW3`` string or a small YAML mapping::

      hash: md5            # optional: the values are ocs md5 hashes (default: clear text)
      password_2: ...      # level 2, needed by CHANGE ops
      password_3: ...      # optional; without it level 3 is blocked

  :func:`prepare` reads it before the OCS agent is made and :func:`apply` puts its rules
  into the agent, so passwords live only in that file and in memory: never in a command
  line (``ps``), a site config, a log line or ``session.data``.
* ``none`` (or nothing) -- clients get level 1, so CHANGE ops cannot be started from the
  hub at all. Unlike plain OCS, the agent's own startup ops (``startup=True``) still run.

OCS's ``override:PW2,PW3`` given directly is refused: it would put passwords in ``ps``
output or in the site config.
"""

from __future__ import annotations

import hashlib
import os
import secrets as _random
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .secrets import SecretError, load_secret

#: ``min_privs`` of an op that only reads: open to every client.
READ = 1
#: ``min_privs`` of an op that can change state: needs the level-2 password.
CHANGE = 2

#: Policy prefixes hpcsync resolves itself (the rest of the policy is a secret reference).
REFERENCE_PREFIXES = ("file:", "env:")

#: Password hashes a policy file may use (those ocs.access knows, except "blocked").
HASHES = ("none", "md5")

#: Keys of a YAML policy file.
POLICY_KEYS = ("hash", "password_2", "password_3")


class AccessPolicyError(SecretError):
    """A policy could not be read, or says something hpcsync will not do."""


# -- reading a policy ------------------------------------------------------------------


@dataclass(frozen=True)
class FilePolicy:
    """The passwords of a ``file:``/``env:`` policy; ``password_3`` None blocks level 3."""

    source: str
    password_2: str
    password_3: str | None = None
    hash: str = "none"

    def __repr__(self) -> str:  # never print the passwords
        return f"FilePolicy(from {self.source}, hash={self.hash})"

    __str__ = __repr__

    def rules(self) -> list[Any]:
        """ocs ``AccessRule``s: level 1 free, levels 2 and 3 behind their passwords."""
        from ocs import access

        scope = access.ScopeSpec(default=True)

        def password(value: str | None) -> Any:
            if value is None:
                return access.HashedPass.create_blocked()
            return access.HashedPass(hash=self.hash, value=value)

        return [
            access.AccessRule(scope_spec=scope, hashed_pass=access.HashedPass.create_free(), cred_level=READ),
            access.AccessRule(scope_spec=scope, hashed_pass=password(self.password_2), cred_level=CHANGE),
            access.AccessRule(scope_spec=scope, hashed_pass=password(self.password_3), cred_level=3),
        ]


def is_reference(policy: str | None) -> bool:
    """True for a policy hpcsync reads itself (``file:...`` or ``env:...``)."""
    return bool(policy) and policy.startswith(REFERENCE_PREFIXES)


def parse_policy_text(text: str, source: str) -> FilePolicy:
    """Parse a policy secret: ``override:PW2,PW3`` (or ``override:PW2``) or YAML."""
    text = text.strip()
    where = f"access policy {source}"
    if text.startswith("override:"):
        parts = [p.strip() for p in text[len("override:") :].split(",")]
        if len(parts) > 2 or not all(parts):
            raise AccessPolicyError(f"{where}: expected 'override:PW2,PW3' (non-empty passwords, no commas in them)")
        return FilePolicy(source, parts[0], parts[1] if len(parts) == 2 else None)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise AccessPolicyError(f"{where}: not valid YAML{line}") from None
    if not isinstance(data, dict):
        raise AccessPolicyError(f"{where}: expected 'override:PW2,PW3' or a YAML mapping with password_2")
    unknown = sorted(str(k) for k in data if k not in POLICY_KEYS)
    if unknown:
        raise AccessPolicyError(f"{where}: unknown key {', '.join(unknown)} (expected {', '.join(POLICY_KEYS)})")
    hash_ = data.get("hash", "none")
    if hash_ not in HASHES:
        raise AccessPolicyError(f"{where}: hash must be one of {', '.join(HASHES)}, not {hash_!r}")
    passwords: dict[str, str | None] = {}
    for key in ("password_2", "password_3"):
        value = data.get(key)
        if value is None and key == "password_3":
            passwords[key] = None
            continue
        if not isinstance(value, str) or not value.strip():
            # An empty password would match any password: refuse it rather than open up.
            raise AccessPolicyError(f"{where}: {key} must be a non-empty string")
        passwords[key] = value.strip()
    return FilePolicy(source, passwords["password_2"], passwords["password_3"], hash_)


def load_policy(reference: str) -> FilePolicy:
    """Read and parse the policy named by ``file:/path`` or ``env:NAME``."""
    secret = load_secret(reference, what="access policy")
    return parse_policy_text(secret.reveal(), secret.source)


def refuse_inline_passwords(policy: str | None) -> None:
    """Refuse OCS's ``override:`` given directly: its passwords would be in ``ps`` or a site config."""
    if policy and policy.strip().startswith("override:"):
        raise AccessPolicyError(
            "access policy 'override:' puts passwords on the command line or in the site config;"
            " write it to a file only the agent's user can read and pass 'file:/path/to/it'"
        )


# -- installing a policy in an OCS agent -----------------------------------------------


@dataclass
class Prepared:
    """What :func:`prepare` found; :func:`apply` finishes the job on the agent."""

    policy: str  # as the operator wrote it: none, director:ID, file:PATH, env:NAME
    loaded: FilePolicy | None = None


def prepare(parsed: Any) -> Prepared:
    """Resolve ``parsed.access_policy`` before ``ocs_agent.init_site_agent(parsed)``.

    For a ``file:``/``env:`` policy the file is read now (so a bad one stops the agent
    before it joins the hub) and ``parsed.access_policy`` becomes an ``override:`` with
    random throw-away passwords, so OCS sets the agent up for an override policy;
    :func:`apply` then replaces those rules with the real ones.
    """
    policy = getattr(parsed, "access_policy", None) or "none"
    refuse_inline_passwords(policy)
    prepared = Prepared(policy)
    if is_reference(policy):
        prepared.loaded = load_policy(policy)
        parsed.access_policy = f"override:{_random.token_hex(32)},{_random.token_hex(32)}"
    return prepared


def apply(agent: Any, parsed: Any, prepared: Prepared) -> None:
    """Finish :func:`prepare` on the agent ``init_site_agent`` made."""
    from ocs import access

    parsed.access_policy = prepared.policy
    config = agent.access_config
    if prepared.loaded is not None:
        config.rules = prepared.loaded.rules()
        agent.access_data["policy"] = prepared.policy.split(":", 1)[0]
    elif config.policy == "none":
        # OCS's "none" gives every caller level 1 before it looks for the agent's own
        # superuser key, so a CHANGE op with startup=True would be refused at startup.
        # Same rules for clients (level 1 only), but the agent itself is recognised.
        config.policy = "hpcsync-none"
        config.rules = [
            access.AccessRule(
                scope_spec=access.ScopeSpec(default=True),
                hashed_pass=access.HashedPass.create_free(),
                cred_level=READ,
            )
        ]
    if config.agent is None:
        spec = access.AgentSpec(instance_id=agent.instance_id, agent_class=agent.class_name, superuser_key=agent)
        config.agent = spec


def describe(prepared: Prepared) -> str:
    """One line for the agent's log: which policy, and what it means for CHANGE ops."""
    if prepared.loaded is not None:
        return f"access policy {prepared.policy}: ops that change state need the level-2 password"
    if prepared.policy.startswith("director:"):
        return f"access policy {prepared.policy}: passwords come from that AccessDirector"
    return (
        "access policy none: clients may start only read ops; ops that change state are refused"
        " (give --access-policy file:/path, see docs/access-control.rst)"
    )


# -- demo credentials ------------------------------------------------------------------


def _hash_md5(value: str) -> str:
    # ocs.access's "md5" hash: the first 16 hex digits of the md5 of the UTF-8 text.
    return hashlib.md5(value.encode("utf-8")).hexdigest()[:16]


def _private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check it; it and every directory above it must belong
    to this user or root, so nobody else can swap the files (think of a shared /tmp)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise AccessPolicyError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise AccessPolicyError(f"{path} belongs to another user; remove it or choose another directory")
    for above in path.resolve().parents:
        if os.stat(above).st_uid not in (0, os.getuid()):
            raise AccessPolicyError(f"{above} belongs to another user; choose a directory only you can change")


def _write_private(path: Path, text: str) -> None:
    """Write a new file readable by this user only (refuses to follow or replace anything)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def ensure_demo_credentials(policy_file: str | os.PathLike, passwords_file: str | os.PathLike) -> bool:
    """Create a demo's agent policy and client password file if they are missing.

    The policy (for ``--access-policy file:...``) holds md5 hashes of two random passwords;
    the client file (for ``OCS_PASSWORDS_FILE``) holds them in clear, in the format
    :func:`ocs.access.client_get_password` reads. Both are mode 0600 in 0700 directories.
    Returns True if they were created; an existing pair is left alone; one without the
    other is an error (the passwords could not match).
    """
    policy_file, passwords_file = Path(policy_file), Path(passwords_file)
    exists = policy_file.exists(), passwords_file.exists()
    if all(exists):
        return False
    if any(exists):
        have, missing = (policy_file, passwords_file) if exists[0] else (passwords_file, policy_file)
        raise AccessPolicyError(f"{have} exists but {missing} does not; remove {have} to make a new pair")
    for directory in {policy_file.parent, passwords_file.parent}:
        _private_dir(directory)
    pw2, pw3 = _random.token_urlsafe(24), _random.token_urlsafe(24)
    _write_private(
        policy_file,
        "# Access policy of the hpcsync demo agents (--access-policy file:<this file>).\n"
        f"# Made by 'hpcsync up'; the clear-text passwords are in {passwords_file}.\n"
        f"hash: md5\npassword_2: {_hash_md5(pw2)}\npassword_3: {_hash_md5(pw3)}\n",
    )
    _write_private(
        passwords_file,
        "# OCS client passwords for the hpcsync demo: export OCS_PASSWORDS_FILE=<this file>,\n"
        "# then OCSClient('<instance-id>', privs=2) starts ops that change state.\n"
        f"- default: true\n  password_2: {pw2}\n  password_3: {pw3}\n",
    )
    return True
