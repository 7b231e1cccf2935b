"""MpistatReporter's queries on its tables (see :mod:`hpcsync.db.models.mpistat`).

- a report date is written in one transaction (and with ``replace`` the date's old rows
  are deleted in that same transaction), so a reader sees all of a date or none of it;
- an inspection's directories go into a ``building`` set, made ``current`` in one short
  transaction that retires the old set (deleted afterwards);
- history reads use the ``(unix_id, volume_id, record_date)`` index.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from hpcsync.db import Database
from hpcsync.db.dialect import chunked, insert_ignore
from hpcsync.db.models.mpistat import (
    FILETYPES,
    MpistatDirectory,
    MpistatDirectorySet,
    MpistatFileSize,
    MpistatFiletype,
    MpistatLustreUsage,
    MpistatPi,
    MpistatUnixGroup,
    MpistatVolume,
)

from .errors import AlreadyDone

#: Directories written per transaction while a set is building.
DIRECTORY_BATCH = 2000


@dataclass(frozen=True)
class UsagePoint:
    date: dt.date
    volume: str
    used: int
    quota: int | None
    warning: int | None


def _ids(s: Session, model, key_col, id_col, names: Iterable[str], extra=None) -> dict[str, int]:
    names = sorted({n for n in names if n is not None})
    if not names:
        return {}
    insert_ignore(s, model, [{key_col.key: n, **((extra or {}).get(n, {}))} for n in names])
    out: dict[str, int] = {}
    for part in chunked(names):
        out.update(s.execute(select(key_col, id_col).where(key_col.in_(part))).all())
    return out


def pi_ids(s: Session, names: Iterable[str | None]) -> dict[str, int]:
    return _ids(s, MpistatPi, MpistatPi.pi_name, MpistatPi.pi_id, names)


def volume_ids(s: Session, names: Iterable[str]) -> dict[str, int]:
    return _ids(s, MpistatVolume, MpistatVolume.scratch_disk, MpistatVolume.volume_id, names)


def group_ids(s: Session, groups: dict[str, tuple[int | None, bool]]) -> dict[str, int]:
    """``{name: group_id}`` for ``{name: (gid, is_humgen)}``; gid and flag kept current."""
    extra = {name: {"gid": gid, "is_humgen": humgen} for name, (gid, humgen) in groups.items()}
    ids = _ids(s, MpistatUnixGroup, MpistatUnixGroup.group_name, MpistatUnixGroup.group_id, groups, extra)
    for name, (gid, humgen) in groups.items():
        s.execute(
            update(MpistatUnixGroup).where(MpistatUnixGroup.group_id == ids[name]).values(gid=gid, is_humgen=humgen)
        )
    return ids


def filetype_ids(s: Session) -> dict[str, int]:
    insert_ignore(s, MpistatFiletype, [{"filetype_name": n} for n in FILETYPES])
    return dict(s.execute(select(MpistatFiletype.filetype_name, MpistatFiletype.filetype_id)).all())


class MpistatLedger:
    def __init__(self, db: Database):
        self.db = db

    # -- group reports ----------------------------------------------------------------------

    def report_exists(self, date: dt.date, volumes: list[str]) -> list[str]:
        """The volumes that already have rows for ``date``."""
        with self.db.session() as s:
            q = (
                select(MpistatVolume.scratch_disk)
                .join(MpistatLustreUsage, MpistatLustreUsage.volume_id == MpistatVolume.volume_id)
                .where(MpistatLustreUsage.record_date == date, MpistatVolume.scratch_disk.in_(volumes))
                .distinct()
            )
            return sorted(s.execute(q).scalars())

    def store_report(self, date: dt.date, rows: list, *, replace: bool) -> int:
        """Write one date's rows (``report.GroupRow``) in one transaction; AlreadyDone
        naming the date and volumes when they are stored and ``replace`` is False."""
        volumes = sorted({r.volume for r in rows})
        with self.db.session() as s:
            vids = volume_ids(s, volumes)
            existing = s.execute(
                select(func.count()).select_from(MpistatLustreUsage)
                .where(MpistatLustreUsage.record_date == date, MpistatLustreUsage.volume_id.in_(list(vids.values())))
            ).scalar_one()  # fmt: skip
            if existing and not replace:
                raise AlreadyDone(
                    f"a report for {date.isoformat()} is already stored for {', '.join(volumes)} "
                    "(pass replace=True to replace it)"
                )
            if existing:
                s.execute(
                    delete(MpistatLustreUsage).where(
                        MpistatLustreUsage.record_date == date, MpistatLustreUsage.volume_id.in_(list(vids.values()))
                    )
                )
            pids = pi_ids(s, (r.pi for r in rows))
            gids = group_ids(s, {r.group: (r.gid, r.is_humgen) for r in rows})
            values = [
                {"record_date": date, "volume_id": vids[r.volume], "unix_id": gids[r.group],
                 "pi_id": pids.get(r.pi) if r.pi else None, "used": r.used, "quota": r.quota,
                 "last_modified": r.last_modified, "archived": r.archived is not None,
                 "archived_path": r.archived, "entries": r.entries, "warning": r.warning}
                for r in rows
            ]  # fmt: skip
            for part in chunked(values, 1000):
                s.execute(MpistatLustreUsage.__table__.insert(), list(part))
        return len(rows)

    def history(self, group: str, volume: str | None = None, before: dt.date | None = None) -> list[UsagePoint]:
        """A group's stored usage, oldest first (one volume or all)."""
        with self.db.session() as s:
            q = (
                select(MpistatLustreUsage.record_date, MpistatVolume.scratch_disk, MpistatLustreUsage.used,
                       MpistatLustreUsage.quota, MpistatLustreUsage.warning)
                .join(MpistatUnixGroup, MpistatUnixGroup.group_id == MpistatLustreUsage.unix_id)
                .join(MpistatVolume, MpistatVolume.volume_id == MpistatLustreUsage.volume_id)
                .where(MpistatUnixGroup.group_name == group)
                .order_by(MpistatLustreUsage.record_date)
            )  # fmt: skip
            if volume:
                q = q.where(MpistatVolume.scratch_disk == volume)
            if before:
                q = q.where(MpistatLustreUsage.record_date < before)
            return [UsagePoint(*row) for row in s.execute(q).all()]

    def histories(self, before: dt.date, volumes: list[str]) -> dict[tuple[str, str], list[tuple[dt.date, int]]]:
        """Every group's usage before ``before`` on ``volumes``: ``{(group, volume): [(date, used)]}``."""
        out: dict[tuple[str, str], list[tuple[dt.date, int]]] = {}
        with self.db.session() as s:
            q = (
                select(MpistatUnixGroup.group_name, MpistatVolume.scratch_disk, MpistatLustreUsage.record_date,
                       MpistatLustreUsage.used)
                .join(MpistatUnixGroup, MpistatUnixGroup.group_id == MpistatLustreUsage.unix_id)
                .join(MpistatVolume, MpistatVolume.volume_id == MpistatLustreUsage.volume_id)
                .where(MpistatLustreUsage.record_date < before, MpistatVolume.scratch_disk.in_(volumes))
                .order_by(MpistatLustreUsage.record_date)
            )  # fmt: skip
            for group, volume, date, used in s.execute(q):
                out.setdefault((group, volume), []).append((date, used))
        return out

    def latest_report_date(self) -> dt.date | None:
        with self.db.session() as s:
            return s.execute(select(func.max(MpistatLustreUsage.record_date))).scalar()

    def report_rows(self, date: dt.date) -> list[dict]:
        with self.db.session() as s:
            q = (
                select(MpistatVolume.scratch_disk, MpistatPi.pi_name, MpistatUnixGroup.group_name,
                       MpistatLustreUsage.used, MpistatLustreUsage.quota, MpistatLustreUsage.last_modified,
                       MpistatLustreUsage.archived_path, MpistatUnixGroup.is_humgen, MpistatLustreUsage.warning)
                .join(MpistatUnixGroup, MpistatUnixGroup.group_id == MpistatLustreUsage.unix_id)
                .join(MpistatVolume, MpistatVolume.volume_id == MpistatLustreUsage.volume_id)
                .outerjoin(MpistatPi, MpistatPi.pi_id == MpistatLustreUsage.pi_id)
                .where(MpistatLustreUsage.record_date == date)
            )  # fmt: skip
            keys = ("volume", "pi", "group", "used", "quota", "last_modified", "archived", "is_humgen", "warning")
            return [dict(zip(keys, row, strict=True)) for row in s.execute(q).all()]

    # -- inspections --------------------------------------------------------------------------

    def begin_set(self, volume: str, date: dt.date, source: str) -> int:
        """A new ``building`` set for ``volume`` (left-over building sets are deleted first)."""
        with self.db.session() as s:
            vid = volume_ids(s, [volume])[volume]
            stale = s.execute(select(MpistatDirectorySet.set_id).where(
                MpistatDirectorySet.volume_id == vid, MpistatDirectorySet.status.in_(("building", "old"))
            )).scalars().all()  # fmt: skip
        for set_id in stale:
            self._delete_set(set_id)
        with self.db.session() as s:
            row = MpistatDirectorySet(volume_id=vid, status="building", record_date=date, created_at=time.time(),
                                      source=source)  # fmt: skip
            s.add(row)
            s.flush()
            return row.set_id

    def add_directories(self, set_id: int, volume: str, directories: list) -> None:
        """Write directories (``inspector.DirectoryRow``) into a building set, a batch per
        transaction: one multi-row insert for the directories, one for their sizes."""
        for part in chunked(directories, DIRECTORY_BATCH):
            with self.db.session() as s:
                vid = volume_ids(s, [volume])[volume]
                pids = pi_ids(s, (d.pi for d in part))
                gids = group_ids(s, {d.group: (d.gid, d.is_humgen) for d in part if d.group})
                types = filetype_ids(s)
                before = s.execute(
                    select(func.coalesce(func.max(MpistatDirectory.directory_id), 0)).where(
                        MpistatDirectory.set_id == set_id
                    )
                ).scalar_one()
                s.execute(
                    MpistatDirectory.__table__.insert(),
                    [{"set_id": set_id, "project_name": d.project, "directory_path": d.path, "num_files": d.files,
                      "size": d.size, "last_modified": d.last_modified, "pi_id": pids.get(d.pi) if d.pi else None,
                      "group_id": gids.get(d.group) if d.group else None, "volume_id": vid} for d in part],
                )  # fmt: skip
                ids = dict(
                    s.execute(
                        select(MpistatDirectory.directory_path, MpistatDirectory.directory_id).where(
                            MpistatDirectory.set_id == set_id, MpistatDirectory.directory_id > before
                        )
                    ).all()
                )
                s.execute(
                    MpistatFileSize.__table__.insert(),
                    [{"directory_id": ids[d.path], "filetype_id": types[name], "size": size}
                     for d in part for name, size in d.categories.items()],
                )  # fmt: skip

    def publish_set(self, set_id: int) -> None:
        """Make ``set_id`` its volume's current set and retire the previous one, at once."""
        with self.db.session() as s:
            new = s.get(MpistatDirectorySet, set_id)
            s.execute(
                update(MpistatDirectorySet)
                .where(MpistatDirectorySet.volume_id == new.volume_id, MpistatDirectorySet.status == "current")
                .values(status="old")
            )
            new.status = "current"
        with self.db.session() as s:
            old = s.execute(select(MpistatDirectorySet.set_id).where(
                MpistatDirectorySet.volume_id == new.volume_id, MpistatDirectorySet.status == "old"
            )).scalars().all()  # fmt: skip
        for old_id in old:
            self._delete_set(old_id)

    def discard_set(self, set_id: int) -> None:
        self._delete_set(set_id)

    def _delete_set(self, set_id: int) -> None:
        with self.db.session() as s:
            dirs = select(MpistatDirectory.directory_id).where(MpistatDirectory.set_id == set_id)
            s.execute(delete(MpistatFileSize).where(MpistatFileSize.directory_id.in_(dirs)))
            s.execute(delete(MpistatDirectory).where(MpistatDirectory.set_id == set_id))
            s.execute(delete(MpistatDirectorySet).where(MpistatDirectorySet.set_id == set_id))

    def current_directories(self, volume: str) -> list[dict]:
        """The current set's directories of ``volume`` with their per-type sizes."""
        with self.db.session() as s:
            q = (
                select(MpistatDirectory.directory_id, MpistatDirectory.project_name, MpistatDirectory.directory_path,
                       MpistatDirectory.num_files, MpistatDirectory.size, MpistatDirectory.last_modified,
                       MpistatPi.pi_name, MpistatUnixGroup.group_name, MpistatDirectorySet.record_date)
                .join(MpistatDirectorySet, MpistatDirectorySet.set_id == MpistatDirectory.set_id)
                .join(MpistatVolume, MpistatVolume.volume_id == MpistatDirectorySet.volume_id)
                .outerjoin(MpistatPi, MpistatPi.pi_id == MpistatDirectory.pi_id)
                .outerjoin(MpistatUnixGroup, MpistatUnixGroup.group_id == MpistatDirectory.group_id)
                .where(MpistatVolume.scratch_disk == volume, MpistatDirectorySet.status == "current")
            )  # fmt: skip
            keys = ("id", "project", "path", "files", "size", "last_modified", "pi", "group", "date")
            rows = [dict(zip(keys, r, strict=True)) for r in s.execute(q).all()]
            sizes: dict[int, dict[str, int]] = {}
            for part in chunked([r["id"] for r in rows]):
                q = (
                    select(MpistatFileSize.directory_id, MpistatFiletype.filetype_name, MpistatFileSize.size)
                    .join(MpistatFiletype, MpistatFiletype.filetype_id == MpistatFileSize.filetype_id)
                    .where(MpistatFileSize.directory_id.in_(part))
                )
                for directory_id, name, size in s.execute(q):
                    sizes.setdefault(directory_id, {})[name] = size
            for r in rows:
                r["categories"] = sizes.get(r.pop("id"), {})
            return rows

    def sets(self, volume: str) -> list[tuple[int, str]]:
        with self.db.session() as s:
            q = (
                select(MpistatDirectorySet.set_id, MpistatDirectorySet.status)
                .join(MpistatVolume, MpistatVolume.volume_id == MpistatDirectorySet.volume_id)
                .where(MpistatVolume.scratch_disk == volume)
                .order_by(MpistatDirectorySet.set_id)
            )
            return [tuple(r) for r in s.execute(q).all()]
