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
    pattern: str  # a regex on the decoded path (Python's and polars' syntax alike)
    prefix: bytes  # literal part before the first glob character
    parent_len: int  # components of the root's parent


def glob_regex(glob: str) -> str:
    """A shell glob as a regex on ``/``-separated paths: ``*`` and ``?`` stop at ``/``."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in glob[i + 2 :]:
            close = glob.index("]", i + 2)
            body = glob[i + 1 : close]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = close
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _compile_root(glob: str) -> _Root:
    glob = "/" + glob.strip("/")
    literal = re.split(r"[*?\[]", glob, maxsplit=1)[0]
    regex = "^" + glob_regex(glob) + "(?:/|$)"
    return _Root(regex, literal.encode(), len(glob.strip("/").split("/")) - 1)


def humanise(number: int) -> str:
    """lurge's humanised sizes (KiB to PiB, two decimals)."""
    for power, unit in ((50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if number >= 2**power:
            return f"{round(number / 2**power, 2)} {unit}"
    return str(number)


def _decoded(df: pl.DataFrame, encoding: str) -> pl.Series:
    """The raw paths (Binary) of a block's valid rows."""
    if encoding in (BASE64, BASE64_LEXICAL):
        col = pl.col("path")
        if encoding == BASE64_LEXICAL:
            col = col.str.replace_many([chr(c) for c in LEXICAL_ALPHABET], [chr(c) for c in STD_ALPHABET])
        return df.select(col.str.decode("base64")).to_series()
    return pl.Series([decode_path(v, encoding) for v in df["path"].to_list()], dtype=pl.Binary)


def _as_text(paths: pl.Series) -> pl.Series:
    """Paths as text; names that are not UTF-8 get U+FFFD, as lurge decoded them."""
    try:
        return paths.cast(pl.String)
    except pl.exceptions.ComputeError:
        return pl.Series([p.decode("utf-8", "replace") for p in paths.to_list()], dtype=pl.String)


_SUMS = ["size", "files", *CATEGORIES]


class Inspection:
    """Accumulates one volume's directory reports, block by block, in columns.

    Each block's matching rows become one row per (entry, ancestor directory) and are
    grouped by directory; the partial tables are merged as they grow, so memory follows
    the number of directories reported, not the number of lines read.
    """

    def __init__(self, roots: list[str], depth: int, directory: GroupDirectory):
        if not roots:
            raise ValueError("no inspector roots")
        self.roots = [_compile_root(r) for r in roots]
        self.depth = depth + 1
        self.directory = directory
        self._parts: list[pl.DataFrame] = []
        self._owners: list[pl.DataFrame] = []
        self._merged: pl.DataFrame | None = None
        self._seq = 0

    def add(self, df: pl.DataFrame, encoding: str) -> None:
        if not df.height:
            return
        paths = _decoded(df, encoding)
        mask = None
        for root in self.roots:
            hit = paths.bin.starts_with(root.prefix)
            mask = hit if mask is None else mask | hit
        mask = mask & df["type"].is_in(["f", "d"])
        if not mask.any():
            return
        rows = df.select("type", "size", "nlink", "mtime", "gid").filter(mask)
        rows = rows.with_columns(path=_as_text(paths.filter(mask)).str.strip_chars_end("/"))
        self._seq += 1
        which = pl.lit(None, dtype=pl.Int64)
        for index in reversed(range(len(self.roots))):
            which = pl.when(pl.col("path").str.contains(self.roots[index].pattern)).then(index).otherwise(which)
        rows = rows.with_columns(root=which)
        for index, root in enumerate(self.roots):
            matched = rows.filter(pl.col("root") == index)
            if matched.height:
                self._add_matched(matched, root)
        if len(self._parts) >= 16:
            self._merge()

    def _add_matched(self, rows: pl.DataFrame, root: _Root) -> None:
        rel = pl.col("path").str.strip_chars("/").str.split("/").list.slice(root.parent_len)
        rows = (
            rows.with_columns(rel=rel)
            .with_columns(
                holder=pl.when(pl.col("type") == "d")
                .then(pl.col("rel"))
                .otherwise(pl.col("rel").list.head(pl.col("rel").list.len() - 1)),
                depth=pl.lit(self.depth)
                + (
                    (pl.col("rel").list.len() > 2)
                    & (pl.col("rel").list.get(2, null_on_oob=True).str.to_lowercase() == "users")
                ).cast(pl.Int64),
            )
            .with_columns(keyparts=pl.col("holder").list.head(pl.col("depth")))
        )
        rows = rows.with_columns(n=pl.col("keyparts").list.len()).filter(pl.col("n") > 0)
        name = pl.col("rel").list.last()
        category = pl.lit(None, dtype=pl.String)
        for cat, rx in reversed(list(CATEGORIES.items())):
            category = pl.when(name.str.contains(rx.pattern.decode())).then(pl.lit(cat)).otherwise(category)
        files = rows.filter((pl.col("type") == "f") & (pl.col("nlink") > 0)).with_columns(
            share=pl.col("size") // pl.col("nlink").cast(pl.Int64), category=category
        )
        dirs = rows.filter(pl.col("type") == "d")
        levels = int(rows["n"].max())
        pieces = []
        for level in range(1, levels + 1):
            key = pl.col("keyparts").list.head(level).list.join("/").alias("key")
            at = files.filter(pl.col("n") >= level)
            if at.height:
                pieces.append(at.select(
                    key, pl.col("share").alias("size"), pl.lit(1, dtype=pl.Int64).alias("files"),
                    pl.col("mtime"),
                    *[pl.when(pl.col("category") == cat).then(pl.col("share")).otherwise(0).alias(cat)
                      for cat in CATEGORIES],
                ))  # fmt: skip
            made = dirs.filter(pl.col("n") >= level)
            if made.height:
                pieces.append(made.select(
                    key, pl.lit(0, dtype=pl.Int64).alias("size"), pl.lit(0, dtype=pl.Int64).alias("files"),
                    pl.lit(None, dtype=pl.Int64).alias("mtime"),
                    *[pl.lit(0, dtype=pl.Int64).alias(c) for c in CATEGORIES],
                ))  # fmt: skip
        if pieces:
            self._parts.append(self._group(pl.concat(pieces)))
        if dirs.height:
            self._owners.append(dirs.select(pl.col("keyparts").list.join("/").alias("key"), "gid",
                                            pl.lit(self._seq).alias("seq")).unique("key", keep="last"))  # fmt: skip

    @staticmethod
    def _group(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.group_by("key").agg(*[pl.col(c).sum() for c in _SUMS], pl.col("mtime").max())

    def _merge(self) -> None:
        frames = ([self._merged] if self._merged is not None else []) + self._parts
        if frames:
            self._merged = self._group(pl.concat(frames))
        self._parts = []
        if len(self._owners) > 1:
            self._owners = [pl.concat(self._owners).unique("key", keep="last")]

    def rows(self, reference_time: int) -> list[DirectoryRow]:
        self._merge()
        if self._merged is None:
            return []
        owners = {}
        if self._owners:
            owners = dict(self._owners[0].select("key", "gid").iter_rows())
        out = []
        for row in self._merged.sort("key").iter_rows(named=True):
            key = row["key"]
            info_gid = owners.get(key)
            info = self.directory.groups.get(info_gid) if info_gid is not None else None
            out.append(DirectoryRow(
                path=key, project="/".join(key.split("/")[:2]), files=row["files"], size=row["size"],
                mtime=row["mtime"],
                last_modified=None if row["mtime"] is None else round((reference_time - row["mtime"]) / 86400, 1),
                gid=info_gid, group=info.name if info else None, pi=info.pi if info else None,
                is_humgen=bool(info and info.selected), categories={c: row[c] for c in CATEGORIES},
            ))  # fmt: skip
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
    validate: str = "all",
) -> list[DirectoryRow]:
    inspection = Inspection(roots, depth, directory)
    used = ("path", "size", "gid", "mtime", "type", "nlink")
    for fmt, df, _ in scan(
        path, bad, cancel=cancel, on_block=on_block, fields=used if validate == "used" else None, keep=used
    ):
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
