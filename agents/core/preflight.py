"""``hpcsync check``: a whole site config checked before anything starts.

:func:`check_site` reads the file (:mod:`.siteconfig`), names keys ocs would ignore, parses
every instance's arguments with its agent's own parser, builds each hpcsync agent's
options, and runs each local instance's preflight: its database reachable and at a schema
this hpcsync knows, its directories present, its secrets and files readable, its remote
host or API answering. Every problem is one line naming the file, the instance and the
option; ``hpcsync up`` starts nothing while there is one.

Directories are never created silently: a missing one is a problem unless the caller asks
for them (``--create-directories``, or ``create-directories: true`` in the site config, as
the demo has), and each one made is reported.

The generic checks (:func:`database`, :func:`directory`, :func:`readable_file`,
:func:`secret`, :func:`reachable`, :func:`destination`) return a problem (a string) or
None; each agent's options choose which apply to them (``AgentOptions.preflight``).
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .siteconfig import SiteConfig, SiteConfigError, load_site_config, parse_instance, unknown_keys

#: Seconds a database, host or API gets to answer a preflight probe.
PROBE_TIMEOUT = 10.0


@dataclass
class Preflight:
    """What one check found: problems (nothing may start) and notes (what was done or will be)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: create missing directories (and say so) instead of reporting them
    create: bool = False
    #: only say which directories would be created (``hpcsync check`` on a site config
    #: that asks for them)
    dry: bool = False

    def add(self, where: str, problem: str | None) -> None:
        if problem:
            self.problems.append(f"{where}: {problem}")


# -- generic checks ----------------------------------------------------------------------


def directory(path: str | None, key: str, flight: Preflight, where: str, of: str | None = None) -> None:
    """``path`` is a directory this user can write to (created if ``flight.create``).

    ``of``: the option's own value when ``path`` is derived from it (a SQLite file's directory).
    """
    if not path:
        return
    p = Path(path).expanduser()
    what = f"{key} {of}: directory {path}" if of else f"{key} {path}: directory"
    if p.is_dir():
        if not _writable(p):
            flight.add(where, f"{what} is not writable by this user")
        return
    if p.exists():
        flight.add(where, f"{what} is a file, not a directory")
    elif flight.create and flight.dry:
        flight.notes.append(f"{where}: {key} directory {p} does not exist; 'hpcsync up' will create it")
    elif flight.create:
        try:
            p.mkdir(parents=True)
        except OSError as exc:
            flight.add(where, f"{what} cannot be created: {exc.strerror or exc}")
            return
        flight.notes.append(f"{where}: created {key} directory {p}")
    else:
        flight.add(where, f"{what} does not exist (create it, or pass --create-directories)")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def readable_file(path: str | None, key: str) -> str | None:
    """``path`` is a file this user can read."""
    if not path:
        return None
    from .files import read_operator_file

    try:
        read_operator_file(path, key, SiteConfigError)
    except SiteConfigError as exc:
        return str(exc)
    return None


def secret(reference: str | None, key: str) -> str | None:
    """A secret reference (``file:``/``env:``) resolves; its value is never shown."""
    if not reference:
        return None
    from .secrets import SecretError, load_secret

    try:
        load_secret(reference, what=key)
    except SecretError as exc:
        return str(exc)
    return None


def reachable(url_or_host: str, key: str, default_port: int | None = None) -> str | None:
    """Something accepts TCP connections at the URL's (or ``host[:port]``'s) address."""
    parts = urlsplit(url_or_host if "://" in url_or_host else f"tcp://{url_or_host}")
    port = parts.port or default_port or {"https": 443, "http": 80}.get(parts.scheme)
    if not parts.hostname or not port:
        return f"{key} {url_or_host}: no host and port to reach"
    try:
        socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        return f"{key} {url_or_host}: {parts.hostname}:{port} is not reachable ({exc.strerror or exc})"
    return None


def _bounded(probe: Callable[[], Any], what: str) -> Any:
    """Run ``probe`` with :data:`PROBE_TIMEOUT`; a probe that hangs is a problem, not a hang."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = probe()
        except Exception as exc:  # reported below, as the probe's own error
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(PROBE_TIMEOUT)
    if worker.is_alive():
        raise TimeoutError(f"{what} did not answer within {PROBE_TIMEOUT:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def database(value: str | None, key: str, flight: Preflight, where: str) -> None:
    """The database answers and its schema is one this hpcsync knows; a SQLite file's
    directory exists (a missing file is created, and migrated, by the agent)."""
    from sqlalchemy.engine import make_url

    from hpcsync.db import default_url, open_database
    from hpcsync.db.engine import url_from_path_or_url

    shown = value or f"(default) {default_url()}"
    url = url_from_path_or_url(value or default_url())
    try:
        parsed = make_url(url)
    except Exception as exc:
        flight.add(where, f"{key} {shown}: not a database URL or path ({exc})")
        return
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if path.is_dir():
            flight.add(where, f"{key} {shown}: is a directory, not a SQLite file")
            return
        before = len(flight.problems)
        directory(str(path.parent), key, flight, where, of=shown)
        if len(flight.problems) > before:
            return
        if not path.exists():
            flight.notes.append(f"{where}: {key} {path} will be created by the agent")
            return
    try:
        db = open_database(url, upgrade=False)
    except Exception as exc:
        flight.add(where, f"{key} {shown}: {exc}")
        return
    try:
        current, head = _bounded(lambda: (db.current_revision(), db.head_revision()), f"database {db.url}")
        if current not in (None, head):
            from alembic.script import ScriptDirectory

            from hpcsync.db.engine import _alembic_config

            try:
                ScriptDirectory.from_config(_alembic_config(db)).get_revision(current)
            except Exception:
                flight.add(
                    where, f"{key} {shown}: schema revision {current} is unknown to this hpcsync (newest {head})"
                )
                return
            flight.notes.append(f"{where}: {key} {db.url} will be migrated from {current} to {head} at start")
    except Exception as exc:
        reason = getattr(exc, "orig", None) or exc
        flight.add(where, f"{key} {shown}: cannot be reached: {str(reason).strip().splitlines()[0]}")
    finally:
        db.dispose()


def destination(backend: Any, key: str) -> str | None:
    """The transfer backend answers (a read of a file that does not exist; nothing is sent)."""
    from .errors import USER_ERRORS

    try:
        backend.read_object(".hpcsync-preflight", timeout=PROBE_TIMEOUT)
    except (*USER_ERRORS, RuntimeError) as exc:
        return f"{key} {backend.describe()}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
    return None


# -- per agent: each agent's options say what to check (AgentOptions.preflight) ---------


def options_class(agent_class: str) -> type | None:
    """The :class:`~.skeleton.AgentOptions` subclass of an hpcsync agent (None for ocs's own)."""
    from hpcsync.agents.registry import AGENTS

    for entry in AGENTS:
        if entry.agent_class == agent_class:
            module = importlib.import_module(entry.module)
            shell = getattr(module, agent_class, None)
            return getattr(shell, "options_class", None)
    return None


# -- the whole site ----------------------------------------------------------------------


def check_site(path: str | Path, host: str | None = None, *, create: bool = False, starting: bool = False) -> Preflight:
    """Check the site config at ``path``; preflight the instances of ``host`` (this machine).

    Missing directories are created with ``create``, or when the site config says
    ``create-directories: true`` and the check is ``starting`` the agents (``up``).
    """
    flight = Preflight(create=create)
    try:
        site = load_site_config(path)
    except SiteConfigError as exc:
        flight.problems.append(str(exc))
        return flight
    flight.problems += unknown_keys(path)
    if not create and _asks_for_directories(site):
        flight.create, flight.dry = True, not starting
    try:
        local = {i.instance_id for i in site.instances(host)}
    except SiteConfigError as exc:
        flight.problems.append(str(exc))
        local = set()
    for inst in site.all_instances():
        _check_instance(site, inst, inst.instance_id in local, flight)
    return flight


def _demo_files(site: SiteConfig) -> set[str]:
    """The files ``up`` makes for the demo (``demo-credentials``): not there before it runs."""
    raw = yaml.safe_load(site.path.read_text(encoding="utf-8"))
    block = raw.get("demo-credentials") if isinstance(raw, dict) else None
    return {str(v) for v in block.values()} if isinstance(block, dict) else set()


def _asks_for_directories(site: SiteConfig) -> bool:
    raw = yaml.safe_load(site.path.read_text(encoding="utf-8"))
    return raw.get("create-directories") is True


def _check_instance(site: SiteConfig, inst: Any, local: bool, flight: Preflight) -> None:
    from .errors import USER_ERRORS

    where = f"{site.path}: {inst.instance_id}"
    try:
        args = parse_instance(site, inst)
    except SiteConfigError as exc:
        flight.problems.append(str(exc))
        return
    policy = getattr(args, "access_policy", None) or ""
    if local and policy.startswith("file:") and policy[len("file:") :] not in _demo_files(site):
        flight.add(where, readable_file(policy[len("file:") :], "--access-policy file"))
    cls = options_class(inst.agent_class)
    if cls is None:
        return  # one of ocs's own agents: its arguments parsed, nothing more to know
    try:
        options = cls.from_args(args)
    except USER_ERRORS as exc:
        flight.add(where, str(exc))
        return
    if local:
        options.preflight(args, flight, where)
