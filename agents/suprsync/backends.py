"""Moved: SupRsync's transfer backends are the shared ones in :mod:`hpcsync.agents.core.transfer`.

This module only re-exports them for the modules that still import ``.backends``
(``agent.py``, ``cli.py``, ``options.py``); delete it once they import
``hpcsync.agents.core.transfer``.
"""

from hpcsync.agents.core.transfer import (
    Backend,
    DestinationError,
    Item,
    LocalRsyncBackend,
    PutOutcome,
    RemoteUnreachable,
    SshRsyncBackend,
    make_backend,
)

__all__ = [
    "Backend",
    "DestinationError",
    "Item",
    "LocalRsyncBackend",
    "PutOutcome",
    "RemoteUnreachable",
    "SshRsyncBackend",
    "make_backend",
]
