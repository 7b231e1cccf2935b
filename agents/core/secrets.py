"""Secrets from files or the environment, never from the command line.

A secret is named by a *reference*: ``file:/path/to/token`` (or a bare path) or
``env:VARIABLE``. Agents take references as arguments, so ``ps`` and the site config only
ever show where a secret lives. :class:`Secret` hides its value from ``repr``/``str`` so it
cannot leak into logs or ``session.data`` by accident.
"""

from __future__ import annotations

import logging
import os
import stat

from .files import read_operator_text

log = logging.getLogger(__name__)


class SecretError(ValueError):
    """A secret reference could not be resolved."""


class Secret:
    """A secret value that does not print itself."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str):
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def load_secret(reference: str, *, what: str = "secret", strip: bool = True) -> Secret:
    """Resolve ``reference`` (``file:PATH``, ``env:NAME`` or a bare path) to a :class:`Secret`.

    Raises :class:`SecretError` naming the reference (never the value) when the file is
    missing, unreadable or empty, or the variable is unset or empty. A file readable by
    group or others is accepted with a warning.
    """
    if not reference:
        raise SecretError(f"no {what} given: name a file (file:/path) or a variable (env:NAME)")
    if reference.startswith("env:"):
        name = reference[4:]
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"{what}: environment variable {name} is not set")
        source = f"environment variable {name}"
    else:
        path = os.path.expanduser(reference[5:] if reference.startswith("file:") else reference)
        value = read_operator_text(path, f"{what}: file", SecretError)
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s file %s is readable by group or others; chmod 600 it", what, path)
        source = f"file {path}"
    if strip:
        value = value.strip()
    if not value:
        raise SecretError(f"{what}: {source} is empty")
    return Secret(value, source)


def redact(text: str, *secrets: Secret | None) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for secret in secrets:
        if secret is not None and secret.reveal():
            text = text.replace(secret.reveal(), "***")
    return text
