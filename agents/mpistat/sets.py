"""Finding dumps: the newest complete set of one date, in mpistat's or wrstat's naming.

=====================  =======================================================  ==============
producer               file                                                     volume
=====================  =======================================================  ==============
mpistat (tidy)         ``YYYYMMDD_VVV.dat.gz``                                  ``scratchVVV``
wrstat v4/v5 (tidy)    ``YYYYMMDD_<basename>.<unique>.<unique>.stats.gz``       ``<basename>``
wrstat v6              ``final/YYYYMMDD-HHMMSS_<path, / as U+FF0F>/stats.gz``   last path part
=====================  =======================================================  ==============

A set is *complete* when every configured volume has a dump of that date (without
configured volumes, whatever the date has). Where a volume has several dumps of a date
(wrstat re-runs), the newest file wins.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import MpistatError

_MPISTAT = re.compile(r"^(\d{8})_(\d+)\.dat\.gz$")
_WRSTAT = re.compile(r"^(\d{8})_([^.]+)\.[^.]+\.[^.]+\.stats\.gz$")
_WRSTAT6 = re.compile(r"^(\d{8})-\d{6}_(.+)$")
FULLWIDTH_SLASH = "\uff0f"


def volume_name(value: str) -> str:
    """An operator's volume (``114`` or ``scratch114``) as reports name it."""
    value = value.strip()
    return f"scratch{value}" if value.isdigit() else value


@dataclass(frozen=True)
class Dump:
    date: dt.date
    volume: str
    path: str
    mtime: float


@dataclass(frozen=True)
class DumpSet:
    date: dt.date
    dumps: tuple[Dump, ...]

    @property
    def stamp(self) -> str:
        return self.date.strftime("%Y%m%d")

    def describe(self) -> str:
        return f"{self.date.isoformat()} ({', '.join(d.volume for d in self.dumps)})"


def _parse_date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None


def list_dumps(directory: str | Path) -> list[Dump]:
    """Every dump under ``directory`` whose name says its date and volume."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MpistatError(f"dump directory {directory} does not exist or is not a directory")
    found: list[Dump] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _MPISTAT.match(entry.name) or _WRSTAT.match(entry.name)
            if match and entry.is_file():
                date = _parse_date(match.group(1))
                volume = volume_name(match.group(2))
                if date:
                    found.append(Dump(date, volume, entry.path, entry.stat().st_mtime))
    final = directory / "final"
    if final.is_dir():
        with os.scandir(final) as entries:
            for entry in entries:
                match = _WRSTAT6.match(entry.name)
                stats = Path(entry.path) / "stats.gz"
                if match and stats.is_file():
                    date = _parse_date(match.group(1))
                    volume = match.group(2).replace(FULLWIDTH_SLASH, "/").rstrip("/").rsplit("/", 1)[-1]
                    if date and volume:
                        found.append(Dump(date, volume, str(stats), stats.stat().st_mtime))
    return found


def find_set(
    directory: str | Path,
    volumes: list[str] | None = None,
    *,
    max_days_ago: int = 10,
    today: dt.date | None = None,
    date: dt.date | None = None,
) -> DumpSet:
    """The newest complete set no older than ``max_days_ago`` (or the set of ``date``);
    MpistatError saying what was looked for when there is none."""
    today = today or dt.date.today()
    wanted = [volume_name(v) for v in volumes or []]
    by_date: dict[dt.date, dict[str, Dump]] = {}
    for dump in sorted(list_dumps(directory), key=lambda d: d.mtime):
        by_date.setdefault(dump.date, {})[dump.volume] = dump
    if date is not None:
        candidates = [date]
    else:
        earliest = today - dt.timedelta(days=max_days_ago)
        candidates = sorted((d for d in by_date if earliest <= d <= today), reverse=True)
    for day in candidates:
        have = by_date.get(day, {})
        if wanted and all(v in have for v in wanted):
            return DumpSet(day, tuple(have[v] for v in wanted))
        if not wanted and have:
            return DumpSet(day, tuple(have[v] for v in sorted(have)))
    what = f"volumes {', '.join(wanted)}" if wanted else "any volume"
    when = date.isoformat() if date else f"the last {max_days_ago} days"
    raise MpistatError(f"no complete set of dumps for {what} in {directory} for {when}")
