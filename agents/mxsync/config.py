"""Reading an ASSyncy ``config.yml`` as it is (MxSync and EpnAlert share it).

Every key ASSyncy reads is understood (``epn_cap_map``, ``ignore``, ``equipment``,
``base-url``, ``beamline``, ``epnalert-*``, ``visit-day-range``, ``key-file``, ``host``,
``destination-root-path``, ``sync-frequency-hours``, ``max-tasks``, ``log-level``,
``log-files``, ``comment``), plus hpcsync's additions (:data:`EXTRA_KEYS`). A key of the
wrong type or value is an error naming the file and the key; a key nobody reads is a
warning (a typo would otherwise silently keep a default).

The ``equipment`` passwords may stay inline, as ASSyncy has them (the file is then a
secret: a warning says so if others can read it), or be references ``file:/path`` /
``env:NAME`` resolved by :mod:`hpcsync.agents.core.secrets`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.files import read_operator_text
from hpcsync.agents.core.secrets import Secret, load_secret

from .epns import name_problem
from .portal import Equipment

ASSYNCY_KEYS = {
    "comment",
    "epn_cap_map",
    "ignore",
    "equipment",
    "base-url",
    "beamline",
    "epnalert-email-to",
    "epnalert-email-from",
    "epnalert-email-smtp",
    "epnalert-template-folder",
    "epnalert-template-text",
    "epnalert-template-html",
    "visit-day-range",
    "key-file",
    "host",
    "destination-root-path",
    "sync-frequency-hours",
    "max-tasks",
    "log-level",
    "log-files",
}
#: hpcsync's own keys (each also an agent argument of the same name).
EXTRA_KEYS = {
    "remote-user",
    "source-root",
    "transfer",
    "port",
    "known-hosts",
    "host-key-checking",
    "verify-checksums",
    "epnalert-smtp-port",
    "epnalert-smtp-security",
    "epnalert-smtp-user",
    "epnalert-smtp-password",
    "epnalert-reminder-days",
    "epnalert-run-at",
    "epnalert-subject",
}
_SECRET_PREFIXES = ("file:", "env:")


@dataclass
class AssyncyConfig:
    """A parsed ``config.yml``: ``values`` by key (checked types) and what to warn about."""

    path: str
    values: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def _fail(path: str, key: str, why: str) -> ConfigError:
    return ConfigError(f"{path}: key '{key}': {why}")


def _number(path: str, key: str, value: Any, *, integer: bool = False, minimum: float = 0) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _fail(path, key, f"expected {'a whole number' if integer else 'a number'}, got {value!r}")
    if value < minimum or (minimum == 0 and value == 0 and not integer):
        raise _fail(path, key, f"must be {'at least ' + str(minimum) if minimum else 'positive'}, got {value!r}")
    return value


def _text(path: str, key: str, value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise _fail(path, key, f"expected text, got {value!r}")
    return str(value)


def secret_value(value: str, what: str) -> Secret:
    """An inline secret as a :class:`Secret`, or a ``file:``/``env:`` reference resolved."""
    if value.startswith(_SECRET_PREFIXES):
        return load_secret(value, what=what)
    return Secret(value, f"inline in the config ({what})")


def _epn_map(path: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, "epn_cap_map", f"expected a mapping of EPN numbers to projects, got {type(value).__name__}")
    out = {}
    for base, project in value.items():
        base_text = str(base)
        if isinstance(base, bool) or not base_text.isdigit():
            raise _fail(path, "epn_cap_map", f'EPN number {base!r} is not digits (write "12282": ny79)')
        project_text = "" if project is None else str(project)
        why = name_problem(project_text)
        if why:
            raise _fail(
                path, "epn_cap_map", f"project {project!r} of EPN {base_text} cannot be a directory name: {why}"
            )
        out[base_text] = project_text
    return out


def _equipment(path: str, value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _fail(path, "equipment", "expected a list of {username, password, client_name, client_password, id}")
    out = []
    for n, entry in enumerate(value, 1):
        if not isinstance(entry, dict):
            raise _fail(path, "equipment", f"entry {n} is not a mapping")
        row = {}
        for name in ("username", "password", "client_name", "client_password", "id"):
            if entry.get(name) in (None, ""):
                raise _fail(path, "equipment", f"entry {n} has no '{name}'")
            row[name] = str(entry[name])
        if not row["id"].isdigit():
            raise _fail(path, "equipment", f"entry {n}: id {entry['id']!r} is not a number")
        out.append(row)
    return out


def equipment_entries(rows: list[dict[str, str]]) -> list[Equipment]:
    """The ``equipment`` rows with their passwords as secrets (references resolved)."""
    return [
        Equipment(
            r["id"],
            r["username"],
            secret_value(r["password"], f"portal password of equipment {r['id']}"),
            r["client_name"],
            secret_value(r["client_password"], f"portal client password of equipment {r['id']}"),
        )
        for r in rows
    ]


def load_assyncy_config(path: str) -> AssyncyConfig:
    """Read and check ``path``; ConfigError naming the file and key on any problem."""
    text = read_operator_text(path, "ASSyncy config file", ConfigError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top, got {type(raw).__name__}")
    config = AssyncyConfig(path, {})
    values = config.values
    for key, value in raw.items():
        key = str(key)
        if key not in ASSYNCY_KEYS | EXTRA_KEYS:
            config.warnings.append(f"{path}: key '{key}' is not a setting ASSyncy or hpcsync reads; ignored")
            continue
        if value is None and key not in ("epn_cap_map", "comment", "log-files"):
            raise _fail(path, key, "has no value")
        if key == "epn_cap_map":
            values[key] = _epn_map(path, value)
        elif key == "equipment":
            values[key] = _equipment(path, value)
        elif key in ("visit-day-range", "sync-frequency-hours", "epnalert-reminder-days"):
            values[key] = _number(path, key, value)
        elif key in ("max-tasks", "port", "epnalert-smtp-port"):
            values[key] = int(_number(path, key, value, integer=True, minimum=1))
        elif key == "verify-checksums":
            if not isinstance(value, bool):
                raise _fail(path, key, f"expected true or false, got {value!r}")
            values[key] = value
        elif key == "base-url":
            url = _text(path, key, value)
            if not url.startswith(("http://", "https://")):
                raise _fail(path, key, f"{url!r} must start with http:// or https://")
            values[key] = url
        elif key in ("beamline",):
            values[key] = _text(path, key, value)
            why = name_problem(values[key])
            if why:
                raise _fail(path, key, f"{values[key]!r} cannot be a directory name: {why}")
        elif key == "log-level":
            level = _text(path, key, value)
            if level not in ("logging.ERROR", "logging.WARNING", "logging.INFO", "logging.DEBUG"):
                raise _fail(path, key, f"{level!r} is not one of logging.ERROR/WARNING/INFO/DEBUG")
            values[key] = level
        elif key in ("log-files", "comment"):
            values[key] = value
        else:
            values[key] = _text(path, key, value)
    inline = [
        r
        for r in values.get("equipment", [])
        for k in ("password", "client_password")
        if not r[k].startswith(_SECRET_PREFIXES)
    ]
    if inline and _others_can_read(path):
        config.warnings.append(f"{path} holds portal passwords and is readable by group or others; chmod 600 it")
    return config


def _others_can_read(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False
