"""The group report: per volume and gid, used bytes and last modification, from a dump.

For each good line of a dump: ``used[gid] += size // nlink`` (entries with nlink 0 are
skipped: a file stat'ed while being deleted), ``mtime[gid] = max(mtime)`` over mtimes not
after the dump's reference time (its file mtime, as lurge), and ``entries[gid] += 1``.
Each block is grouped by polars; the small per-block results are merged into one table
of at most a few thousand gids, so memory does not grow with the dump.

Then, per group: the name and PI from LDAP, the quota, the archive marker, and the lurge
TSV (same columns, ``-`` for nulls, sorted by volume, PI, group).
"""

from __future__ import annotations

import csv
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from .dump import BLOCK_SIZE, BadLines, FileProgress, detect_format, head_lines, scan

#: Groups using less than this are checked for an archive marker (lurge: 100 MiB).
ARCHIVE_CHECK_BELOW = 100 * 2**20
ARCHIVE_MARKER = ".imirrored"
TSV_HEADER = ("Lustre Volume", "PI", "Unix Group", "Used (bytes)", "Quota (bytes)", "Last Modified (days)",
              "Archived Directories", "Is Humgen?")  # fmt: skip
NULL = "-"
SECONDS_PER_DAY = 86400
#: The fields the report reads (what ``validate="used"`` checks).
REPORT_FIELDS = ("size", "gid", "mtime", "nlink")
#: How :func:`aggregate_volume` reads a dump.
READERS = ("compiled", "polars")


@dataclass
class GidUsage:
    used: int = 0
    mtime: int | None = None
    entries: int = 0


@dataclass
class VolumeUsage:
    """One dump's totals per gid."""

    volume: str
    path: str
    reference_time: int
    lines: int = 0
    gids: dict[int, GidUsage] = field(default_factory=dict)


def _block_totals(df: pl.DataFrame, reference_time: int) -> pl.DataFrame:
    nlink, size = pl.col("nlink"), pl.col("size")
    # an nlink past 2**63 (a hostile dump) gives 0, or -1 for a negative size: Python's floor
    past_i64 = pl.when(size < 0).then(-1).otherwise(0)
    share = pl.when(nlink == 0).then(0).when(nlink > 2**63 - 1).then(past_i64)
    return df.group_by("gid").agg(
        share.otherwise(size // nlink.cast(pl.Int64, strict=False)).sum().alias("used"),
        pl.col("mtime").filter(pl.col("mtime") <= reference_time).max().alias("mtime"),
        pl.len().alias("entries"),
    )


def _merge(parts: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(parts).group_by("gid").agg(pl.col("used").sum(), pl.col("mtime").max(), pl.col("entries").sum())


def aggregate_volume(
    path: str | Path,
    volume: str,
    bad: BadLines,
    *,
    reference_time: int | None = None,
    cancel: threading.Event | None = None,
    on_block: Callable[[FileProgress], None] | None = None,
    block_size: int = BLOCK_SIZE,
    validate: str = "all",
    reader: str = "compiled",
) -> VolumeUsage:
    """Totals per gid of one dump (see the module docstring). ``validate="used"`` checks
    only the fields the report reads (size, gid, mtime, nlink) and the column count.

    ``reader``: ``"compiled"``, the one-pass scan of :mod:`.compiled`, or ``"polars"``,
    the general reader the other jobs use (slower; the two find the same good and bad
    lines, which the tests hold them to)."""
    if reader not in READERS:
        raise ValueError(f"reader must be one of {', '.join(READERS)}, not {reader!r}")
    ref = int(os.stat(path).st_mtime) if reference_time is None else int(reference_time)
    usage = VolumeUsage(volume, str(path), ref)
    fmt = detect_format(head_lines(path), str(path))
    if reader == "compiled":
        # imported here, not at the top: numba and its compiler (~100 MiB) load only when
        # a report runs, not with the CLI or the other jobs
        from . import compiled

        totals, usage.lines = compiled.scan_report(path, fmt, bad, ref, check_all=validate != "used", cancel=cancel,
                                                   on_block=on_block, block_size=block_size)  # fmt: skip
        usage.gids = {gid: GidUsage(*values) for gid, values in totals.items()}
        return usage
    merged: pl.DataFrame | None = None
    parts: list[pl.DataFrame] = []
    lines = 0
    fields = REPORT_FIELDS if validate == "used" else None
    for _fmt, df, _ in scan(path, bad, cancel=cancel, on_block=on_block, block_size=block_size, fmt=fmt,
                            fields=fields, keep=REPORT_FIELDS):  # fmt: skip
        lines += df.height
        if df.height:
            parts.append(_block_totals(df.select("gid", "size", "nlink", "mtime"), ref))
        if len(parts) >= 32:
            merged = _merge([merged, *parts] if merged is not None else parts)
            parts = []
    if parts or merged is not None:
        merged = _merge([merged, *parts] if merged is not None else parts)
        for gid, used, mtime, entries in merged.iter_rows():
            usage.gids[int(gid)] = GidUsage(int(used), None if mtime is None else int(mtime), int(entries))
    usage.lines = lines
    return usage


def last_modified_days(reference_time: int, mtime: int | None) -> float | None:
    """Days between the newest mtime and the dump's time, one decimal (lurge's rounding)."""
    if mtime is None:
        return None
    return round((reference_time - mtime) / SECONDS_PER_DAY, 1)


@dataclass
class GroupRow:
    """One line of the report (one group on one volume)."""

    volume: str
    gid: int
    group: str
    pi: str | None
    used: int
    quota: int | None
    last_modified: float | None
    archived: str | None
    is_humgen: bool
    entries: int = 0
    warning: int | None = None

    def tsv(self) -> list[str]:
        values = [self.volume, self.pi, self.group, self.used, self.quota, self.last_modified, self.archived,
                  self.is_humgen]  # fmt: skip
        return [NULL if v is None else str(v) for v in values]


def sort_key(row: GroupRow) -> tuple:
    # lurge: ORDER BY volume, PI, groupName in SQLite, where NULL sorts first
    return (row.volume, row.pi is not None, row.pi or "", row.group)


def find_archive(roots: list[str], group: str) -> str | None:
    """The first ``<root>/<group>`` holding an ``.imirrored`` file (lurge's archive check)."""
    for root in roots:
        directory = os.path.join(root, group)
        if os.path.lexists(os.path.join(directory, ARCHIVE_MARKER)):
            return directory
    return None


def write_tsv(path: str | Path, rows: list[GroupRow]) -> None:
    """Write the lurge TSV atomically (a temp file renamed over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
            writer.writerow(TSV_HEADER)
            for row in sorted(rows, key=sort_key):
                writer.writerow(row.tsv())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
