"""MpistatReporter's errors: all are "bad input or unreachable service" (one line, no traceback)."""

from __future__ import annotations

from hpcsync.agents.core.errors import ConfigError


class MpistatError(ConfigError):
    """Bad input for a MpistatReporter job: the message names the file, option or service."""


class DumpError(MpistatError):
    """A dump cannot be read at all (missing, not gzip, no line in any known format)."""


class LdapError(MpistatError):
    """The LDAP server could not be reached or refused the searches."""


class AlreadyDone(MpistatError):
    """A report, inspection or split for this date exists and ``replace`` was not given."""
