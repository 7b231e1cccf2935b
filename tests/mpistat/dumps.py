"""Test dumps from a real tree: build it, walk it with ``os.lstat``, write it as every
crawler does, and compute the expected report with a plain loop.

Nothing here imports the agent: the encoders below are written from the formats'
descriptions (Python's base64, Go's ``%q`` style, wrstat's lexical alphabet), so a reader
bug cannot hide behind a shared helper.
"""

from __future__ import annotations

import base64
import gzip
import os
import stat
from dataclasses import dataclass
from pathlib import Path

LEXICAL = b"+/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
STANDARD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

#: (name, path encoding, columns, size rule) of each producer
FORMATS = {
    "mpistat": ("base64", 11, "capped"),
    "wrstat-5.1": ("lexical", 11, "capped"),
    "wrstat-5.2": ("quoted", 11, "capped"),
    "wrstat-6.4": ("quoted", 12, "literal"),
}

GIDS = (5001, 5002, 5003)


@dataclass
class Entry:
    path: bytes
    st: os.stat_result

    @property
    def type(self) -> str:
        m = self.st.st_mode
        for test, letter in ((stat.S_ISREG, "f"), (stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"), (stat.S_ISSOCK, "s"),
                             (stat.S_ISBLK, "b"), (stat.S_ISCHR, "c"), (stat.S_ISFIFO, "F")):  # fmt: skip
            if test(m):
                return letter
        return "X"


def build_tree(root: Path, now: float) -> Path:
    """A tree with every awkward kind of entry, owned by three gids."""
    top = root / "lustre" / "scratch999"
    teams = top / "teams"
    projects = top / "projects"
    for d in (teams / "alpha" / "data", teams / "beta", projects / "proj1" / "users" / "bob" / "deep",
              projects / "proj1" / "raw"):  # fmt: skip
        d.mkdir(parents=True, exist_ok=True)
    files = {
        teams / "alpha" / "data" / "a.bam": 3000,
        teams / "alpha" / "data" / "b.cram": 1500,
        teams / "alpha" / "data" / "c.vcf.gz": 700,
        teams / "alpha" / "data" / "x.ped": 90,
        teams / "beta" / "notes.txt": 10,
        projects / "proj1" / "raw" / "r.fastq.gz": 5000,
        projects / "proj1" / "users" / "bob" / "deep" / "s.sam": 1234,
        projects / "proj1" / "users" / "bob" / "deep" / "t.bed": 77,
    }
    for path, size in files.items():
        path.write_bytes(b"x" * size)
    # hard links: one file, three names (size counted once across them)
    (teams / "alpha" / "data" / "hard1").write_bytes(b"h" * 9000)
    os.link(teams / "alpha" / "data" / "hard1", teams / "alpha" / "data" / "hard2")
    os.link(teams / "alpha" / "data" / "hard1", teams / "beta" / "hard3")
    # sparse file: 10 MB apparent, one 4 KiB block written
    with open(teams / "beta" / "sparse.img", "wb") as f:
        f.seek(10_000_000)
        f.write(b"s" * 4096)
    os.symlink("data/a.bam", teams / "alpha" / "link-to-bam")
    os.mkfifo(teams / "beta" / "fifo")
    hostile = [b"new\nline.bam", b"tab\tname.vcf", b"bad\xff\xfeutf8.cram", b'quote"back\\slash', "café.bed".encode()]
    for name in hostile:
        with open(os.path.join(bytes(projects / "proj1" / "raw"), name), "wb") as f:
            f.write(b"y" * 321)
    long_name = b"L" * 251 + b".bam"  # 255 bytes
    with open(os.path.join(bytes(projects / "proj1" / "raw"), long_name), "wb") as f:
        f.write(b"z" * 55)
    # ownership and times: gid by subtree; one mtime in the future
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames, ""]:
            p = os.path.join(dirpath, name) if name else dirpath
            gid = GIDS[0] if "/teams/alpha" in p else GIDS[1] if "/teams/beta" in p else GIDS[2]
            if "/projects" not in p and "/teams/" not in p:
                gid = GIDS[2]
            os.lchown(p, 0, gid)
            if not os.path.islink(p):
                os.utime(p, (now - 86400 * 3, now - 86400 * 5))
    os.utime(teams / "alpha" / "data" / "b.cram", (now, now - 86400 * 2))
    os.utime(teams / "beta" / "notes.txt", (now, now + 86400 * 30))  # in the future: ignored
    return top


def walk(top: Path) -> list[Entry]:
    """Every entry under ``top`` (``top`` included), by os.lstat, as byte paths."""
    out = [Entry(bytes(top), os.lstat(top))]
    for dirpath, dirnames, filenames in os.walk(bytes(top)):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            out.append(Entry(p, os.lstat(p)))
    return out


def go_quote(path: bytes) -> str:
    """A Go-quoted string: printable ASCII kept, ``"`` and ``\\`` escaped, the rest as \\xNN
    (Go itself keeps printable UTF-8; both are valid Go string literals)."""
    out = []
    for b in path:
        if b == 0x22:
            out.append('\\"')
        elif b == 0x5C:
            out.append("\\\\")
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x09:
            out.append("\\t")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def encode(path: bytes, encoding: str) -> str:
    if encoding == "quoted":
        return go_quote(path)
    text = base64.b64encode(path)
    if encoding == "lexical":
        text = text.translate(bytes.maketrans(STANDARD, LEXICAL))
    return text.decode()


def size_of(entry: Entry, rule: str) -> int:
    st = entry.st
    return min(st.st_size, st.st_blocks * 512) if rule == "capped" else st.st_size


def dump_line(entry: Entry, fmt: str) -> str:
    encoding, columns, rule = FORMATS[fmt]
    st = entry.st
    fields = [encode(entry.path, encoding), size_of(entry, rule), st.st_uid, st.st_gid, int(st.st_atime),
              int(st.st_mtime), int(st.st_ctime), entry.type, st.st_ino, st.st_nlink, st.st_dev]  # fmt: skip
    if columns == 12:
        fields.append(st.st_size)
    return "\t".join(str(f) for f in fields) + "\n"


def write_dump(entries: list[Entry], fmt: str, path: Path, *, bad_lines: dict[int, str] | None = None,
               gz: bool = True, mtime: float | None = None) -> Path:  # fmt: skip
    """Write ``entries`` as ``fmt``; ``bad_lines`` makes line N (1-based) of the file that raw line."""
    lines = [dump_line(e, fmt) for e in entries]
    for number in sorted(bad_lines or {}):
        lines.insert(number - 1, bad_lines[number])
    data = "".join(lines).encode("utf-8", "surrogateescape")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def expected_usage(entries: list[Entry], rule: str, reference: int) -> dict[int, dict]:
    """The group report's numbers, by a plain loop: used = sum(size // nlink) over entries
    with nlink > 0, newest mtime not after ``reference``, entry count."""
    out: dict[int, dict] = {}
    for e in entries:
        g = out.setdefault(e.st.st_gid, {"used": 0, "mtime": None, "entries": 0})
        g["entries"] += 1
        if e.st.st_nlink > 0:
            g["used"] += size_of(e, rule) // e.st.st_nlink
        mtime = int(e.st.st_mtime)
        if mtime <= reference and (g["mtime"] is None or mtime > g["mtime"]):
            g["mtime"] = mtime
    return out
