"""MpistatReporter's errors: all are "bad input or unreachable service" (one line, no traceback)."""

from __future__ import annotations

from hpcsync.agents.core.errors import ConfigError, Refused

from .dump import DumpError  # an OSError, so the reader needs no import of the agent core

__all__ = ["AlreadyDone", "DumpError", "LdapError", "MpistatError"]


class MpistatError(ConfigError):
    """Bad input for a MpistatReporter job: the message names the file, option or service."""


class LdapError(MpistatError):
    """The LDAP server could not be reached or refused the searches."""


class AlreadyDone(MpistatError, Refused):
    """A report, inspection or split for this date exists and ``replace`` was not given
    (refused by name: the op fails, the agent is not degraded)."""
