"""All hpcsync tables. Importing this module registers every model on ``Base.metadata``."""

from .base import Base, path_hash
from .core import AgentRun, SyncCursor
from .mxsync import EpnAlertAlert, MxSyncEpnTransfer
from .slurmsync import SlurmJobPush
from .suprsync import FILE_STATES, SupRsyncFile, TimecodeDir

__all__ = [
    "FILE_STATES",
    "AgentRun",
    "Base",
    "EpnAlertAlert",
    "MxSyncEpnTransfer",
    "SlurmJobPush",
    "SupRsyncFile",
    "SyncCursor",
    "TimecodeDir",
    "path_hash",
]
