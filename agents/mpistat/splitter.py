"""The group splitter: one gzip file of raw dump lines per group, for Treeserve.

A line is kept when its gid is a *selected* group (lurge: humgen) — the file is named after
the group (``<group>.dat.gz``, or ``<gid>.dat.gz`` with ``by_id``) — or when its decoded
path starts with one of ``path_prefixes`` (lurge: the scratch116 project trees), named
from all groups. Lines of a gid LDAP does not know are skipped and counted. Lines are
written as read (still encoded).

Memory stays bounded: each group's lines are buffered and, when all buffers together pass
:data:`FLUSH_BYTES`, the largest are appended to their files as complete gzip members
(concatenated members are one valid gzip file), so no compressor stays open per group.

``index.txt`` holds lurge's Treeserve start-up estimates, computed as lurge does::

    build time (s) = lines / 11000 + 100
    memory (bytes) = (dirs * 2 + 50) * bytes_per_node
    bytes_per_node = 12000, 10000, 9000, 8500 or 8000 as the share of directories among
                     the group's lines is < 0.8 %, < 1.5 %, < 2 %, < 4 % or more

Everything is built in ``<split_dir>/.<YYYYMMDD>.partial`` and renamed to
``<split_dir>/<YYYYMMDD>`` when complete; a date already there is refused.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from .dump import (
    BASE64_LEXICAL,
    LEXICAL_ALPHABET,
    QUOTED,
    STD_ALPHABET,
    BadLines,
    FileProgress,
    quote_go,
    scan,
)
from .ldapdir import GroupDirectory

try:
    from isal.igzip import compress as _gzip_compress
except ImportError:  # pragma: no cover
    from gzip import compress as _gzip_compress

FLUSH_BYTES = 16 << 20
LINES_PER_SECOND = 11000
INSTANTIATION_OVERHEAD = 100
EXTRA_NODES = 50


def bytes_per_node(dir_percentage: float) -> int:
    if dir_percentage < 0.8:
        return 12000
    if dir_percentage < 1.5:
        return 10000
    if dir_percentage < 2:
        return 9000
    if dir_percentage < 4:
        return 8500
    return 8000


def treeserve_estimate(lines: int, dirs: int) -> tuple[float, int]:
    """``(build time in s, memory in bytes)`` as lurge's ``generateIndex``."""
    build_time = lines / LINES_PER_SECOND + INSTANTIATION_OVERHEAD
    memory = (dirs * 2 + EXTRA_NODES) * bytes_per_node(dirs / lines * 100)
    return build_time, memory


@dataclass
class GroupStats:
    lines: int = 0
    dirs: int = 0


@dataclass
class SplitResult:
    directory: Path
    stats: dict[str, GroupStats] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # group -> file name
    lines_read: int = 0
    lines_written: int = 0
    unknown_gid_lines: int = 0


class _Writers:
    def __init__(self, directory: Path):
        self.directory = directory
        self.buffers: dict[str, list[bytes]] = {}
        self.sizes: dict[str, int] = {}
        self.total = 0

    def add(self, name: str, lines: list[bytes]) -> None:
        chunk = b"\n".join(lines) + b"\n"
        n = len(chunk)
        self.buffers.setdefault(name, []).append(chunk)
        self.sizes[name] = self.sizes.get(name, 0) + n
        self.total += n
        if self.total > FLUSH_BYTES:
            for big in sorted(self.sizes, key=self.sizes.get, reverse=True):
                self.flush(big)
                if self.total <= FLUSH_BYTES // 2:
                    break

    def flush(self, name: str) -> None:
        lines = self.buffers.pop(name, [])
        self.total -= self.sizes.pop(name, 0)
        if lines:
            with open(self.directory / name, "ab") as handle:
                handle.write(_gzip_compress(b"".join(lines)))

    def close(self) -> None:
        for name in list(self.buffers):
            self.flush(name)


def _prefix_mask(df: pl.DataFrame, encoding: str, prefixes: list[bytes]) -> pl.Series:
    if encoding == QUOTED:
        quoted = [quote_go(p)[:-1] for p in prefixes]
        return df.select(pl.any_horizontal([pl.col("path").str.starts_with(q) for q in quoted])).to_series()
    col = pl.col("path")
    if encoding == BASE64_LEXICAL:
        col = col.str.replace_many([chr(c) for c in LEXICAL_ALPHABET], [chr(c) for c in STD_ALPHABET])
    decoded = df.select(col.str.decode("base64")).to_series()
    mask = None
    for p in prefixes:
        hit = decoded.bin.starts_with(p)
        mask = hit if mask is None else mask | hit
    return mask


def split_dumps(
    paths: list[str],
    directory: GroupDirectory,
    out_dir: Path,
    bad: BadLines,
    *,
    path_prefixes: list[str] = (),
    by_id: bool = False,
    cancel: threading.Event | None = None,
    on_block: Callable[[FileProgress], None] | None = None,
    validate: str = "all",
) -> SplitResult:
    """Split ``paths`` into ``out_dir`` (which must exist and be empty)."""
    selected = sorted(gid for gid, info in directory.groups.items() if info.selected)
    prefixes = [p.encode() for p in path_prefixes]
    result = SplitResult(out_dir)
    writers = _Writers(out_dir)
    used = (("path",) if prefixes else ()) + ("gid", "type")
    fields = used if validate == "used" else None
    for path in paths:
        for fmt, df, lines in scan(
            path, bad, cancel=cancel, with_lines=True, on_block=on_block, fields=fields, keep=used
        ):
            result.lines_read += df.height
            if not df.height:
                continue
            keep = df["gid"].is_in(selected)
            if prefixes:
                keep = keep | _prefix_mask(df, fmt.encoding, prefixes)
            if not keep.any():
                continue
            index = keep.arg_true()
            picked = df.select("gid", "type")[index].with_columns(pl.Series("row", index))
            for (gid,), part in picked.group_by(["gid"]):
                info = directory.groups.get(gid)
                if info is None or not info.name:
                    result.unknown_gid_lines += part.height
                    continue
                name = f"{gid}.dat.gz" if by_id else f"{info.name}.dat.gz"
                rows = part["row"].to_list()
                writers.add(name, [lines[i] for i in rows])
                stats = result.stats.setdefault(info.name, GroupStats())
                stats.lines += part.height
                stats.dirs += int((part["type"] == "d").sum())
                result.files[info.name] = name
                result.lines_written += part.height
        if cancel is not None and cancel.is_set():
            break
    writers.close()
    return result


def write_index(path: Path, stats: dict[str, GroupStats]) -> None:
    with open(path, "w") as handle:
        handle.write("Group\tBuild time (sec)\tMemory use (bytes)\n")
        for group, s in stats.items():
            build_time, memory = treeserve_estimate(s.lines, s.dirs)
            handle.write(f"{group}\t{build_time}\t{memory}\n")


def partial_dir(split_dir: Path, stamp: str) -> Path:
    return split_dir / f".{stamp}.partial"


def start_split(split_dir: Path, stamp: str) -> Path:
    """A fresh partial directory (a left-over one from a failed run is removed)."""
    split_dir.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir(split_dir, stamp)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def finish_split(split_dir: Path, stamp: str) -> Path:
    final = split_dir / stamp
    os.rename(partial_dir(split_dir, stamp), final)
    return final
