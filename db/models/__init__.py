"""All hpcsync tables. Importing this module registers every model on ``Base.metadata``."""

from .base import Base, path_hash
from .core import AgentRun, SyncCursor
from .slurmsync import SlurmJobPush
from .suprsync import FILE_STATES, SupRsyncFile, TimecodeDir

__all__ = [
    "FILE_STATES",
    "AgentRun",
    "Base",
    "SlurmJobPush",
    "SupRsyncFile",
    "SyncCursor",
    "TimecodeDir",
    "path_hash",
]
