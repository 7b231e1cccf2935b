"""All hpcsync tables. Importing this module registers every model on ``Base.metadata``."""

from .base import Base, path_hash
from .cloudsync import CloudSyncHash, CloudSyncTarget
from .core import AgentRun, SyncCursor
from .mpistat import (
    MpistatDirectory,
    MpistatDirectorySet,
    MpistatFileSize,
    MpistatFiletype,
    MpistatLustreUsage,
    MpistatPi,
    MpistatUnixGroup,
    MpistatVolume,
)
from .mxsync import EpnAlertAlert, MxSyncEpnTransfer
from .slurmsync import SlurmJobPush
from .suprsync import FILE_STATES, SupRsyncFile, TimecodeDir

__all__ = [
    "FILE_STATES",
    "AgentRun",
    "Base",
    "CloudSyncHash",
    "CloudSyncTarget",
    "EpnAlertAlert",
    "MpistatDirectory",
    "MpistatDirectorySet",
    "MpistatFileSize",
    "MpistatFiletype",
    "MpistatLustreUsage",
    "MpistatPi",
    "MpistatUnixGroup",
    "MpistatVolume",
    "MxSyncEpnTransfer",
    "SlurmJobPush",
    "SupRsyncFile",
    "SyncCursor",
    "TimecodeDir",
    "path_hash",
]
