"""The errors that mean "bad input or unreachable service", not "bug".

The CLI prints these as one line naming what was wrong; agent ops turn them into a failed
op with the same message. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from hpcsync.db.engine import DatabaseError

from .http import ApiError
from .hub import HubError
from .localsite import LocalSiteError
from .process import CommandError
from .secrets import SecretError
from .siteconfig import SiteConfigError
from .ssh import SshConfigError
from .transfer.base import RemoteUnreachable


class ConfigError(ValueError):
    """An agent's configuration (arguments, profile file) is wrong."""


class Refused(ConfigError):
    """The job was asked for something it refuses to do as asked (a report for a date already
    stored without ``replace``): the op fails with this message, but nothing is wrong with
    the agent, so it is not marked degraded."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ApiError,
    CommandError,
    ConfigError,
    DatabaseError,
    HubError,
    LocalSiteError,
    SecretError,
    SiteConfigError,
    SshConfigError,
    RemoteUnreachable,
    OSError,
)
