"""All hpcsync tables. Importing this module registers every model on ``Base.metadata``."""

from .base import Base, path_hash
from .core import AgentRun, SyncCursor
from .ledgers import CloudObject, CloudTarget, DirectoryUsage, EpnAlert, EpnTransfer, GroupUsage, UsageReport
from .slurmsync import SlurmJobPush
from .suprsync import FILE_STATES, SupRsyncFile, TimecodeDir

__all__ = [
    "FILE_STATES",
    "AgentRun",
    "Base",
    "CloudObject",
    "CloudTarget",
    "DirectoryUsage",
    "EpnAlert",
    "EpnTransfer",
    "GroupUsage",
    "SlurmJobPush",
    "SupRsyncFile",
    "SyncCursor",
    "TimecodeDir",
    "UsageReport",
    "path_hash",
]
