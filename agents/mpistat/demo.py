"""The demo: a small tree made under the demo directory, walked with ``os.lstat`` and
written as today's mpistat dump (``<demo>/dumps/YYYYMMDD_999.dat.gz``), so the agent has
something real to report on with no outside service. Group names come from this
machine's group database (no LDAP)."""

from __future__ import annotations

import base64
import datetime as dt
import grp
import gzip
import os
import stat
from pathlib import Path

DEMO_VOLUME = "999"

_FILES = {
    "projects/demo1/data/sample.bam": 200_000,
    "projects/demo1/data/sample.cram": 80_000,
    "projects/demo1/users/alice/calls.vcf.gz": 12_000,
    "projects/demo2/raw/reads.fastq.gz": 150_000,
    "teams/demo-team/notes.txt": 1_200,
}


def _type(mode: int) -> str:
    for test, letter in ((stat.S_ISREG, "f"), (stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"), (stat.S_ISFIFO, "F")):
        if test(mode):
            return letter
    return "X"


def make_demo_dump(directory: str | Path, today: dt.date | None = None) -> Path:
    """Today's dump of ``<directory>/tree`` (made if missing); an existing one is kept."""
    directory = Path(directory)
    today = today or dt.date.today()
    dump = directory / "dumps" / f"{today:%Y%m%d}_{DEMO_VOLUME}.dat.gz"
    if dump.exists():
        return dump
    tree = directory / "tree" / "lustre" / f"scratch{DEMO_VOLUME}"
    for relative, size in _FILES.items():
        path = tree / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(b"d" * size)
    # a second group where this user may give one (root, or a member of 'users')
    for relative in ("projects/demo2", "projects/demo2/raw", "projects/demo2/raw/reads.fastq.gz"):
        try:
            os.chown(tree / relative, -1, grp.getgrnam("users").gr_gid)
        except (KeyError, PermissionError):
            break
    lines = []
    for root, dirs, files in os.walk(bytes(tree)):
        for name in [b"", *sorted(dirs), *sorted(files)]:
            path = os.path.join(root, name) if name else root
            st = os.lstat(path)
            size = min(st.st_size, st.st_blocks * 512)
            lines.append("\t".join([base64.b64encode(path.rstrip(b"/")).decode(), str(size), str(st.st_uid),
                                    str(st.st_gid), str(int(st.st_atime)), str(int(st.st_mtime)),
                                    str(int(st.st_ctime)), _type(st.st_mode), str(st.st_ino), str(st.st_nlink),
                                    str(st.st_dev)]))  # fmt: skip
    dump.parent.mkdir(parents=True, exist_ok=True)
    tmp = dump.with_name(f".{dump.name}.tmp")
    tmp.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    tmp.replace(dump)
    return dump
