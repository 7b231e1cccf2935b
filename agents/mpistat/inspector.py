"""The project inspector: per-directory usage under project roots, to a depth.

For each root (a glob such as ``/lustre/scratch115/realdata/mdt[0-9]/projects``) an
entry's path is made relative to the root's parent (``projects/<project>/<sub>/...``).
Its *directory* is the first ``depth + 1`` components of the directory holding it (of the
entry itself for a directory); when the third component is ``users`` one more component
is kept (lurge's ``users`` rule). A regular file adds ``size // nlink`` (nlink 0: skipped),
one file and its mtime to its directory and every parent up to the root, and its size to
its type's column: BAM ``.bam``, CRAM ``.cram``, VCF ``.vcf/.bcf/.gvcf``, PEDBED
``.ped/.bed``, SAM ``.sam``, FASTQ ``.fastq/.fq`` (each also ``.gz``). A directory entry
creates its directory's report and gives it its PI and group (from LDAP, by gid).

Differences from lurge, on purpose: a file's key is its directory (lurge's could be the
file itself at shallow depth); SAM is its own column (later lurge), not part of BAM.

Only rows whose decoded path starts with a root's literal prefix reach the Python loop;
the base64 decoding is columnar.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from .dump import BASE64, BASE64_LEXICAL, LEXICAL_ALPHABET, STD_ALPHABET, BadLines, FileProgress, decode_path, scan
from .ldapdir import GroupDirectory

CATEGORIES = {
    "BAM": re.compile(rb"\.bam(\.gz)?$"),
    "CRAM": re.compile(rb"\.cram(\.gz)?$"),
    "VCF": re.compile(rb"\.(vcf|bcf|gvcf)(\.gz)?$"),
    "PEDBED": re.compile(rb"\.(ped|bed)(\.gz)?$"),
    "SAM": re.compile(rb"\.sam(\.gz)?$"),
    "FASTQ": re.compile(rb"\.(fastq|fq)(\.gz)?$"),
}
PROJECT_HEADER = ("Project", "Directory", "Total", "BAM", "CRAM", "VCF", "PED/BED", "Files", "Last Modified (days)",
                  "PI", "Unix Group", "Volume", "SAM", "FASTQ")  # fmt: skip
GENERIC_HEADER = ("Directory", "Total", "BAM", "CRAM", "VCF", "PED/BED", "Files", "Last Modified (days)", "SAM",
                  "FASTQ")  # fmt: skip


@dataclass
class DirectoryRow:
    path: str
    project: str
    files: int = 0
    size: int = 0
    mtime: int | None = None
    last_modified: float | None = None
    gid: int | None = None
    group: str | None = None
    pi: str | None = None
    is_humgen: bool = False
    categories: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))


@dataclass
class _Root:
    pattern: re.Pattern
    prefix: bytes  # literal part before the first glob character
    parent_len: int  # components of the root's parent


def _compile_root(glob: str) -> _Root:
    glob = "/" + glob.strip("/")
    regex = fnmatch.translate(glob).replace(r"\Z", "")  # the root may be followed by /...
    literal = re.split(r"[*?\[]", glob, maxsplit=1)[0]
    return _Root(re.compile(("(?s:" + regex.removeprefix("(?s:") + r"(?:/|$)").encode()),
                 literal.encode(), len(glob.strip("/").split("/")) - 1)  # fmt: skip


def humanise(number: int) -> str:
    """lurge's humanised sizes (KiB to PiB, two decimals)."""
    for power, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if number >= 2**power:
            return f"{round(number / 2**power, 2)} {unit}"
    return str(number)


def _decoded(df: pl.DataFrame, encoding: str) -> list[bytes] | pl.Series:
    if encoding in (BASE64, BASE64_LEXICAL):
        col = pl.col("path")
        if encoding == BASE64_LEXICAL:
            col = col.str.replace_many([chr(c) for c in LEXICAL_ALPHABET], [chr(c) for c in STD_ALPHABET])
        return df.select(col.str.decode("base64")).to_series()
    return pl.Series([decode_path(v, encoding) for v in df["path"].to_list()], dtype=pl.Binary)


class Inspection:
    """Accumulates one volume's directory reports."""

    def __init__(self, roots: list[str], depth: int, directory: GroupDirectory):
        if not roots:
            raise ValueError("no inspector roots")
        self.roots = [_compile_root(r) for r in roots]
        self.depth = depth + 1
        self.directory = directory
        self.reports: dict[str, DirectoryRow] = {}

    def _row(self, key: str) -> DirectoryRow:
        row = self.reports.get(key)
        if row is None:
            parts = key.split("/")
            row = self.reports[key] = DirectoryRow(key, "/".join(parts[:2]))
        return row

    def add(self, df: pl.DataFrame, encoding: str) -> None:
        if not df.height:
            return
        paths = _decoded(df, encoding)
        mask = None
        for root in self.roots:
            hit = paths.bin.starts_with(root.prefix)
            mask = hit if mask is None else mask | hit
        if not mask.any():
            return
        picked = df.select("type", "size", "nlink", "mtime", "gid").filter(mask)
        for path, (kind, size, nlink, mtime, gid) in zip(paths.filter(mask).to_list(), picked.iter_rows(),
                                                          strict=True):  # fmt: skip
            if kind not in ("f", "d"):
                continue
            path = path.rstrip(b"/")
            for root in self.roots:
                if root.pattern.match(path):
                    break
            else:
                continue
            parts = path.strip(b"/").split(b"/")[root.parent_len :]
            holder = parts if kind == "d" else parts[:-1]
            depth = self.depth + 1 if len(parts) > 2 and parts[2].lower() == b"users" else self.depth
            key_parts = [p.decode("utf-8", "replace") for p in holder[:depth]]
            if not key_parts:
                continue
            keys = ["/".join(key_parts[:i]) for i in range(1, len(key_parts) + 1)]
            if kind == "d":
                for key in keys:
                    self._row(key)
                row = self._row(keys[-1])
                info = self.directory.groups.get(gid)
                row.gid = gid
                row.group, row.pi, row.is_humgen = (info.name, info.pi, info.selected) if info else (None, None, False)
                continue
            if nlink == 0:
                continue
            share = size // nlink
            category = next((name for name, rx in CATEGORIES.items() if rx.search(parts[-1])), None)
            for key in keys:
                row = self._row(key)
                row.size += share
                row.files += 1
                if row.mtime is None or mtime > row.mtime:
                    row.mtime = mtime
                if category:
                    row.categories[category] += share

    def rows(self, reference_time: int) -> list[DirectoryRow]:
        out = []
        for key in sorted(self.reports):
            row = self.reports[key]
            if row.mtime is not None:
                row.last_modified = round((reference_time - row.mtime) / 86400, 1)
            out.append(row)
        return out


def inspect_dump(
    path: str,
    roots: list[str],
    depth: int,
    directory: GroupDirectory,
    bad: BadLines,
    *,
    reference_time: int,
    cancel: threading.Event | None = None,
    on_block: Callable[[FileProgress], None] | None = None,
) -> list[DirectoryRow]:
    inspection = Inspection(roots, depth, directory)
    for fmt, df, _ in scan(path, bad, cancel=cancel, on_block=on_block):
        inspection.add(df, fmt.encoding)
    return inspection.rows(reference_time)


def tsv_lines(rows: list[DirectoryRow], volume: str, *, generic: bool, header: bool) -> list[str]:
    """lurge's inspector table (humanised sizes), plus SAM and FASTQ at the end."""
    out = ["\t".join(GENERIC_HEADER if generic else PROJECT_HEADER)] if header else []
    for row in rows:
        c = row.categories
        mtime = "-" if row.last_modified is None else str(row.last_modified)
        sizes = [humanise(row.size), humanise(c["BAM"]), humanise(c["CRAM"]), humanise(c["VCF"]),
                 humanise(c["PEDBED"])]  # fmt: skip
        tail = [humanise(c["SAM"]), humanise(c["FASTQ"])]
        if generic:
            out.append("\t".join([row.path, *sizes, str(row.files), mtime, *tail]))
        else:
            sub = "/".join(row.path.split("/")[2:]) or "Total"
            out.append("\t".join([row.project, sub, *sizes, str(row.files), mtime, row.pi or "-", row.group or "-",
                                  volume, *tail]))  # fmt: skip
    return out
