"""Who may start which op: hpcsync's use of OCS access control.

Every op declares the credential level it needs (``min_privs``):

* :data:`READ` (1) -- the op only reads (status, listings, dry runs that touch nothing);
  anyone on the hub may start it.
* :data:`CHANGE` (2) -- the op can change state (copies, deletes, pushes, ignores, retries);
  the client must present the level-2 password.

An agent's policy comes from OCS's ``--access-policy`` (or the site config hub's
``access_policy``). Besides OCS's own ``none`` and ``director:<instance-id>``, hpcsync
reads a policy from a file or an environment variable so that passwords never appear in a
command line (``ps``): ``file:/path`` or ``env:NAME`` names a secret holding either OCS's
``override:PW2,PW3`` string or a small YAML mapping::

    password_2: <level-2 password>
    password_3: <level-3 password>   # optional; without it level 3 is blocked
    hash: md5                        # optional; the passwords are ocs md5 hashes

:func:`install_policy` resolves such a reference before the agent is created and swaps the
rules into the agent afterwards, so the clear or hashed passwords only live in memory.
OCS's own ``override:`` on a command line is refused for the same reason.
"""

from __future__ import annotations

import secrets as _random
from dataclasses import dataclass
from typing import Any

import yaml

from .secrets import SecretError, load_secret

#: ``min_privs`` of an op that only reads: open to every client.
READ = 1
#: ``min_privs`` of an op that can change state: needs the level-2 password.
CHANGE = 2

#: Policy prefixes hpcsync resolves itself (the rest is a secret reference).
REFERENCE_PREFIXES = ("file:", "env:")

#: Hash functions ocs.access knows for password values.
HASHES = ("none", "md5")


class AccessPolicyError(ValueError):
    """A policy reference could not be resolved or its content is malformed."""


@dataclass(frozen=True)
class FilePolicy:
    """Passwords of a file/env policy. ``password_3`` None means level 3 is blocked."""

    source: str
    password_2: str
    password_3: str | None = None
    hash: str = "none"

    def __repr__(self) -> str:  # never show the passwords
        return f"FilePolicy(from {self.source}, hash={self.hash})"

    __str__ = __repr__

    def rules(self) -> list[Any]:
        """ocs ``AccessRule`` list: level 1 free, level 2 and 3 behind their passwords."""
        from ocs import access

        scope = access.ScopeSpec(default=True)

        def hashed(value: str | None) -> Any:
            if value is None:
                return access.HashedPass.create_blocked()
            return access.HashedPass(hash=self.hash, value=value)

        return [
            access.AccessRule(scope_spec=scope, hashed_pass=access.HashedPass.create_free(), cred_level=1),
            access.AccessRule(scope_spec=scope, hashed_pass=hashed(self.password_2), cred_level=2),
            access.AccessRule(scope_spec=scope, hashed_pass=hashed(self.password_3), cred_level=3),
        ]


def is_reference(policy: str | None) -> bool:
    return bool(policy) and policy.startswith(REFERENCE_PREFIXES)


def parse_policy_text(text: str, source: str) -> FilePolicy:
    """Parse the content of a policy secret: ``override:PW2,PW3`` or a YAML mapping."""
    text = text.strip()
    if text.startswith("override:"):
        parts = text[len("override:") :].split(",")
        if len(parts) not in (1, 2) or not all(p.strip() for p in parts):
            raise AccessPolicyError(f"access policy {source}: expected 'override:PW2,PW3' with two non-empty passwords")
        pw2 = parts[0].strip()
        pw3 = parts[1].strip() if len(parts) == 2 else None
        return FilePolicy(source, pw2, pw3)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise AccessPolicyError(f"access policy {source}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise AccessPolicyError(
            f"access policy {source}: expected 'override:PW2,PW3' or a YAML mapping with password_2 (and password_3)"
        )
    unknown = set(data) - {"password_2", "password_3", "hash"}
    if unknown:
        raise AccessPolicyError(
            f"access policy {source}: unknown key(s) {', '.join(sorted(map(str, unknown)))};"
            " expected password_2, password_3, hash"
        )
    hash_ = data.get("hash", "none")
    if hash_ not in HASHES:
        raise AccessPolicyError(f"access policy {source}: hash must be one of {', '.join(HASHES)}, not {hash_!r}")
    values = {}
    for key in ("password_2", "password_3"):
        value = data.get(key)
        if value is None and key == "password_3":
            continue
        if not isinstance(value, str) or not value.strip():
            raise AccessPolicyError(f"access policy {source}: {key} must be a non-empty string")
        values[key] = value.strip()
    return FilePolicy(source, values["password_2"], values.get("password_3"), hash_)


def load_policy(reference: str) -> FilePolicy:
    """Read and parse the policy named by ``file:/path`` or ``env:NAME``."""
    try:
        secret = load_secret(reference, what="access policy")
    except (SecretError, OSError) as exc:
        raise AccessPolicyError(str(exc)) from None
    return parse_policy_text(secret.reveal(), secret.source)


def check_policy_argument(policy: str | None) -> None:
    """Refuse a policy string that carries passwords in clear (OCS's ``override:``)."""
    if policy and policy.startswith("override:"):
        raise AccessPolicyError(
            "access policy 'override:' puts passwords in the command line or site config;"
            " put it in a 0600 file and pass --access-policy file:/path instead"
        )


def install_policy(parsed: Any) -> FilePolicy | None:
    """Resolve ``parsed.access_policy`` before ``init_site_agent``.

    For a ``file:``/``env:`` reference, returns the :class:`FilePolicy` and sets
    ``parsed.access_policy`` to an ``override:`` placeholder with random unguessable
    passwords, so OCS builds an override policy; :func:`apply_rules` then puts the real
    rules in. Returns None (and leaves ``parsed`` alone) for OCS's own policies.
    """
    policy = getattr(parsed, "access_policy", None)
    check_policy_argument(policy)
    if not is_reference(policy):
        return None
    loaded = load_policy(policy)
    parsed.access_policy = f"override:{_random.token_hex(32)},{_random.token_hex(32)}"
    parsed.access_policy_reference = policy
    return loaded


def apply_rules(agent: Any, parsed: Any, loaded: FilePolicy | None) -> None:
    """Put ``loaded``'s rules into the agent made from ``parsed`` (see :func:`install_policy`)."""
    if loaded is None:
        return
    agent.access_config.rules = loaded.rules()
    # Only the reference stays visible in the parsed arguments.
    parsed.access_policy = parsed.access_policy_reference
