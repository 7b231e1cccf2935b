"""Sync targets as ``alces sync`` has them: one YAML file per target.

A target is a name, a local directory and three pattern lists. Its file is
``<config dir>/sync.<name>.yml``::

    source: /data            # or "home" (alces: ``:source: :home``)
    include: ['.bashrc']     # always synced, even if an exclude matches
    exclude: ['.*', 'gridware/*']
    encrypt: ['.ssh/*']      # always synced, and stored encrypted

alces's own files (Ruby-symbol keys ``:source:``, ``:include:`` ..., ``+`` after an encrypt
pattern, a ``:files:`` permissions map) are read as well; ``:files:`` is ignored locally
(the remote manifest holds attributes). The target ``default`` syncs the home directory
with alces's default patterns when no ``sync.default.yml`` exists.

**Patterns** are shell globs matched against the path relative to the target's directory
(``*`` also matches ``/``, as in s3cmd); a pattern also matches everything below a directory
it matches. A file matching an encrypt pattern is synced encrypted; else one matching an
include pattern is synced; else one matching an exclude pattern is left out.

The remote of a target is ``<remote root>/sync/<user>/<name>``: a bucket (``s3://bucket``)
or a local directory, as alces laid it out.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hpcsync.agents.core.errors import ConfigError
from hpcsync.agents.core.files import read_operator_text

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEYS = ("source", "include", "exclude", "encrypt", "files")
DEFAULT_NAME = "default"
#: alces's default target: dotfiles out, except shell and clusterware rc files; keys encrypted.
DEFAULT_EXCLUDE = (".*", "gridware/*")
DEFAULT_INCLUDE = (".bash*", ".emacs", ".modulerc", ".modules", ".config/clusterware/*")
DEFAULT_ENCRYPT = (".ssh/*", ".config/clusterware/storage*")


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"target name {name!r} is not valid: use letters, digits, '.', '_' and '-' "
            "(at most 64, not starting with '.')"
        )
    return name


def _matches(rel: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(rel, pattern):
        return True
    # a pattern matching a directory matches what is below it
    parts = rel.split("/")
    return any(fnmatch.fnmatchcase("/".join(parts[:n]), pattern) for n in range(1, len(parts)))


@dataclass(frozen=True)
class Target:
    """One target: its name, local directory, patterns, and the file it came from."""

    name: str
    local_dir: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    encrypt: tuple[str, ...] = ()
    path: str | None = None  # the YAML file (None: the built-in default)
    home: bool = False

    def classify(self, rel: str) -> str | None:
        """``"encrypt"``, ``"plain"`` or None (left out) for the relative path ``rel``."""
        if any(_matches(rel, p) for p in self.encrypt):
            return "encrypt"
        if any(_matches(rel, p) for p in self.include):
            return "plain"
        if any(_matches(rel, p) for p in self.exclude):
            return None
        return "plain"

    def excluded_dir(self, rel: str) -> bool:
        """True when nothing under directory ``rel`` can be synced (an exclude matches it and
        no include or encrypt pattern could match below it), so the scan skips it."""
        if not any(_matches(rel, p) for p in self.exclude):
            return False
        for pattern in (*self.include, *self.encrypt):
            head = pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
            if head.startswith(rel + "/") or (rel + "/").startswith(head) or head == "":
                return False
        return True


@dataclass
class TargetStore:
    """The directory of target files (alces: ``~/.config/clusterware``)."""

    config_dir: str
    home: str = field(default_factory=lambda: os.path.expanduser("~"))

    def path(self, name: str) -> Path:
        return Path(self.config_dir).expanduser() / f"sync.{check_name(name)}.yml"

    def names(self) -> list[str]:
        directory = Path(self.config_dir).expanduser()
        found = set()
        if directory.is_dir():
            for p in directory.glob("sync.*.yml"):
                name = p.name[len("sync.") : -len(".yml")]
                if NAME_RE.match(name):
                    found.add(name)
        found.add(DEFAULT_NAME)
        return sorted(found)

    def load(self, name: str) -> Target:
        path = self.path(name)
        if not path.exists():
            if name == DEFAULT_NAME:
                return Target(DEFAULT_NAME, self.home, DEFAULT_INCLUDE, DEFAULT_EXCLUDE, DEFAULT_ENCRYPT, None, True)
            raise ConfigError(f"no target {name!r}: {path} does not exist (add it with: hpcsync sync add {name} DIR)")
        return parse_target(name, read_operator_text(path, "target file", ConfigError), str(path), self.home)

    def load_all(self) -> list[Target]:
        return [self.load(n) for n in self.names()]

    def add(self, name: str, directory: str, *, include: Sequence[str] = (), exclude: Sequence[str] = (),
            encrypt: Sequence[str] = ()) -> Target:  # fmt: skip
        check_name(name)
        path = self.path(name)
        if path.exists():
            raise ConfigError(f"target {name!r} exists already ({path}); remove it first")
        local = os.path.abspath(os.path.expanduser(directory))
        if not os.path.isdir(local):
            raise ConfigError(f"{local} is not a directory")
        data = {"source": local, "include": list(include), "exclude": list(exclude), "encrypt": list(encrypt)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        os.replace(tmp, path)
        return self.load(name)

    def remove(self, name: str) -> Path:
        path = self.path(name)
        if not path.exists():
            raise ConfigError(f"no target {name!r}: {path} does not exist")
        path.unlink()
        return path


def _pattern_list(value, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: {key} must be a list of non-empty glob patterns")
    out = []
    for v in value:
        if key == "encrypt" and v.endswith("+"):
            v = v[:-1]  # alces's "always encrypt" mark; every encrypt pattern is "always" here
        out.append(v)
    return tuple(out)


def parse_target(name: str, text: str, source: str, home: str) -> Target:
    """A :class:`Target` from its YAML (hpcsync's keys or alces's ``:key:`` symbols)."""
    where = f"target file {source}"
    # alces writes Ruby symbols: ":source: :home" -> "source: home"
    text = re.sub(r"^(\s*(?:-\s+)?):(\w+):", r"\1\2:", text, flags=re.M)
    text = re.sub(r"^(\s*source:\s*):home\s*$", r"\1home", text, flags=re.M)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{where}{line}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with source, include, exclude, encrypt")
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(unknown)} (expected {', '.join(KEYS[:4])})")
    src = data.get("source", "home")
    if not isinstance(src, str) or not src:
        raise ConfigError(f"{where}: source must be a directory path or 'home'")
    is_home = src == "home"
    local = home if is_home else os.path.abspath(os.path.expanduser(src))
    return Target(
        check_name(name),
        local,
        _pattern_list(data.get("include"), where, "include"),
        _pattern_list(data.get("exclude"), where, "exclude"),
        _pattern_list(data.get("encrypt"), where, "encrypt"),
        source,
        is_home,
    )


def remote_root(remote: str, user: str) -> str:
    """``<remote>/sync/<user>``: where a user's targets live (a URL or a directory)."""
    return f"{remote.rstrip('/')}/sync/{user}"


def describe_patterns(patterns: Iterable[str]) -> str:
    return ", ".join(patterns) or "-"
