"""Timecode directories: completion, sync tracking and finalization files.

Remote paths usually start with a 5-digit *timecode* (the first five digits of a ctime,
one per ~1.16 days): ``<timecode>/<subdirs...>/<file>``. Per archive, a timecode dir is

- **completed** when the archive has a newer timecode dir, or when
  ``now // 1e5 - timecode > 1`` (about a day after it ended);
- **synced** when it is completed and none of its files is pending, failed or missing
  (ignored files do not hold it back: an operator gave up on them);
- **finalized** once the finalization file is written and registered.

The finalization file (socs format) is written locally to
``<file-root>/<tc_now>/<instance-id>/<int(now)>_<archive>_<timecode>_finalized.yaml`` and
registered in the same archive with the remote path
``<tc_now>/suprsync/<instance-id>/<same name>``, so the copy loop sends it like any file.
Its keys: ``timecode, num_files, subdirs, finalized_at, finalized_until, archive_name,
instance_id``. Every query is scoped to the archive (socs mixed archives sharing a DB).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # the ledger calls this module: no import cycle at run time
    from .ledger import SupRsyncFilesManager

log = logging.getLogger("hpcsync.suprsync")

#: A timecode directory with no newer one is complete this many timecodes (~days) later.
DAYS_TO_COMPLETE_TCDIR = 1


def timecode_of(ts: float) -> int:
    return int(ts // 1e5)


def is_complete(timecode: int, newest_timecode: int | None, now: float) -> bool:
    """socs's completion rule, per archive."""
    if newest_timecode is not None and newest_timecode > timecode:
        return True
    return (now // 1e5 - timecode) > DAYS_TO_COMPLETE_TCDIR


def finalization_paths(file_root: str, archive: str, timecode: int, instance_id: str, now: float) -> tuple[str, str]:
    """``(local_path, remote_path)`` of the finalization file written at ``now``."""
    tc_now = str(timecode_of(now))
    name = f"{int(now)}_{archive}_{timecode}_finalized.yaml"
    local = os.path.join(os.path.abspath(file_root), tc_now, instance_id, name)
    remote = "/".join((tc_now, "suprsync", instance_id, name))
    return local, remote


def write_yaml(path: str, summary: dict[str, Any]) -> None:
    """Write ``summary`` to ``path`` atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(summary, f, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def update_timecode_dirs(
    manager: SupRsyncFilesManager,
    archive: str,
    file_root: str,
    instance_id: str,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Move the archive's open timecode dirs forward; return the summaries finalized now."""
    now = time.time() if now is None else now
    newest = manager.newest_timecode(archive)
    finalized = []
    for d in manager.open_timecode_dirs(archive):
        completed = d.completed or is_complete(d.timecode, newest, now)
        if not completed:
            continue
        if not d.completed:
            manager.set_timecode_dir_state(d.id, completed=True)
        synced = d.synced or manager.timecode_dir_unsynced(archive, d.timecode) == 0
        if not synced:
            continue
        if not d.synced:
            manager.set_timecode_dir_state(d.id, synced=True)
        num_files, subdirs = manager.timecode_dir_summary(archive, d.timecode)
        summary = {
            "timecode": d.timecode,
            "num_files": num_files,
            "subdirs": subdirs,
            "finalized_at": now,
            "finalized_until": manager.get_finalized_until(archive, now=now),
            "archive_name": archive,
            "instance_id": instance_id,
        }
        local, remote = finalization_paths(file_root, archive, d.timecode, instance_id, now)

        def write(local=local, summary=summary):
            write_yaml(local, summary)

        try:
            manager.register_finalization(d.id, local, remote, archive, now, write=write)
        except BaseException:
            # The row was not committed: do not leave a finalization file nobody will send.
            try:
                os.remove(local)
            except OSError:
                pass
            raise
        log.info("timecode dir %s of %s finalized: %s", d.timecode, archive, remote)
        finalized.append(summary)
    return finalized
