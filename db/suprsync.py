"""socs's import path for the SupRsync files ledger, kept for producers.

A producer (a pysmurf-monitor-like process) registers files with::

    >>> from hpcsync.db.suprsync import SupRsyncFilesManager
    >>> SupRsyncFilesManager("/data/so/dbs/suprsync.db").add_file(local, "16750/obs/a.g3", "smurf")

The ledger itself lives with its agent: :mod:`hpcsync.agents.suprsync.ledger` (the queries),
:mod:`hpcsync.agents.suprsync.files` (path rules, signature, errors) and
:mod:`hpcsync.agents.suprsync.socs_import`. This module only re-exports the names below,
loaded on first use.

This is the one documented exception to the rule that ``hpcsync.db`` imports no agent
code: nothing in ``hpcsync.db`` imports this module, and it imports the agent modules only
when one of these names is asked for, so ``hpcsync.db`` itself never depends on an agent.
New code imports from the agent modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: name -> module (under ``hpcsync.agents.suprsync``) that defines it
_EXPORTS = {
    "SupRsyncFilesManager": "ledger",
    "ALL_STATES": "ledger",
    "SupRsyncError": "files",
    "RemotePathError": "files",
    "normalize_remote_path": "files",
    "check_timecode": "files",
    "split_path": "files",
    "import_socs_database": "socs_import",
}

__all__ = [
    "ALL_STATES",
    "RemotePathError",
    "SupRsyncError",
    "SupRsyncFilesManager",
    "check_timecode",
    "import_socs_database",
    "normalize_remote_path",
    "split_path",
]

if TYPE_CHECKING:
    from hpcsync.agents.suprsync.files import (
        RemotePathError,
        SupRsyncError,
        check_timecode,
        normalize_remote_path,
        split_path,
    )
    from hpcsync.agents.suprsync.ledger import ALL_STATES, SupRsyncFilesManager
    from hpcsync.agents.suprsync.socs_import import import_socs_database


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hpcsync.agents.suprsync.{module}"), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
