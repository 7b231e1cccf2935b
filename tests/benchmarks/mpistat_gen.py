"""Write a synthetic mpistat dump of the real shape: ``python tests/benchmarks/mpistat_gen.py OUT.dat.gz``.

Lines are mpistat's 11 tab-separated columns with base64 paths under
``/lustre/scratch123/{teams,projects}/g<gid>/d<0-39>/s<0-299>/f<n>.<ext>``: about 3 % directories,
1 % symlinks, a few hard links (nlink 2-3) and nlink-0 entries, sizes log-normal (capped
as mpistat caps them), ~400 gids, mtimes over five years with a few in the future, file
extensions that hit the inspector's categories. Columns are built with numpy and written
by polars, so 10 million lines take seconds, not minutes. ``--lines N`` (default
10,000,000), ``--seed S``, ``--bad N`` malformed lines spread through the file.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import polars as pl

try:
    from isal.igzip import compress as gzip_compress
except ImportError:  # pragma: no cover
    from gzip import compress as gzip_compress

EXTENSIONS = ["bam", "cram", "vcf.gz", "bed", "fastq.gz", "sam", "txt", "log", "py", "tsv", "h5", "dat"]
CHUNK = 1_000_000
DUMP_TIME = 1_764_547_200  # 2025-12-01: the "dump's date" of generated files


def chunk(rng: np.random.Generator, start: int, n: int) -> pl.DataFrame:
    kind = rng.choice(np.array(["f", "d", "l"]), size=n, p=[0.96, 0.03, 0.01])
    gid = rng.integers(0, 400, size=n) + 10_000
    area = np.where(gid % 3 == 0, "teams", "projects")
    subdir = rng.integers(0, 40, size=n)
    leaf = rng.integers(0, 300, size=n)
    ext = rng.choice(np.array(EXTENSIONS), size=n)
    index = np.arange(start, start + n)
    size = np.where(kind == "f", rng.lognormal(9, 3, size=n).astype(np.int64), 4096)
    size = np.where(kind == "l", 0, np.minimum(size, 2**44))
    nlink = np.where(kind == "d", 2, rng.choice([1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 0], size=n))
    mtime = DUMP_TIME - rng.integers(-86400 * 3, 86400 * 365 * 5, size=n)
    df = pl.DataFrame({"kind": kind, "gid": gid, "area": area, "subdir": subdir, "leaf": leaf, "ext": ext,
                       "index": index, "size": size, "nlink": nlink, "mtime": mtime})  # fmt: skip
    path = pl.concat_str([
        pl.lit("/lustre/scratch123/"), pl.col("area"), pl.lit("/g"), pl.col("gid").cast(pl.String), pl.lit("/d"),
        pl.col("subdir").cast(pl.String), pl.lit("/s"), pl.col("leaf").cast(pl.String), pl.lit("/f"),
        pl.col("index").cast(pl.String), pl.lit("."), pl.col("ext"),
    ])  # fmt: skip
    return df.select(
        path.str.encode("base64").alias("path"),
        pl.col("size"),
        (pl.col("gid") + 1000).alias("uid"),
        pl.col("gid"),
        (pl.col("mtime") + 3600).alias("atime"),
        pl.col("mtime"),
        (pl.col("mtime") + 60).alias("ctime"),
        pl.col("kind").alias("type"),
        (pl.col("index") * 7 + 1_000_003).alias("inode"),
        pl.col("nlink"),
        pl.lit(64_769).alias("dev"),
    )


BAD_KINDS = ("wrong column count", "wrong column count", "undecodable path", "non-integer numeric field")


def generate(out: Path, lines: int, seed: int = 12, bad: int = 0) -> dict[int, str]:
    """Write the dump; return ``{line number: kind}`` of the malformed lines put in it."""
    rng = np.random.default_rng(seed)
    bad_at = set(rng.choice(lines, size=bad, replace=False).tolist()) if bad else set()
    truth: dict[int, str] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as handle:
        for start in range(0, lines, CHUNK):
            n = min(CHUNK, lines - start)
            text = chunk(rng, start, n).write_csv(separator="\t", include_header=False, quote_style="never")
            if bad_at:
                rows = text.split("\n")
                for i in sorted(b - start for b in bad_at if start <= b < start + n):
                    broken = ["short\tline", "", "!!!!\t1\t2\t3\t4\t5\t6\tf\t7\t1\t9", rows[i].replace("\t", "\tx", 1)]
                    rows[i] = broken[i % 4]
                    truth[start + i + 1] = BAD_KINDS[i % 4]
                text = "\n".join(rows)
            handle.write(gzip_compress(text.encode(), 3))
    tmp.replace(out)
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--bad", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    generate(args.out, args.lines, args.seed, args.bad)
    size = args.out.stat().st_size
    print(f"wrote {args.lines:,} lines to {args.out} ({size / 2**20:.0f} MiB) in {time.monotonic() - started:.1f} s")
    with gzip.open(args.out, "rt") as f:
        first = f.readline().rstrip()
    print("first line:", first)


if __name__ == "__main__":
    main()
