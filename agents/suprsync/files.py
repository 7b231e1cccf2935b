"""A registered file, as SupRsync sees it: its paths, its signature, its md5, and the plain
records the ledger and the copy and delete steps hand each other.

- **Paths**: a remote path is relative to the destination's base directory and can never
  leave it (:func:`normalize_remote_path`); its first component may be a 5-digit timecode
  (:func:`check_timecode`). Local paths are absolute, and both are valid UTF-8 (the ledger
  keeps paths as text).
- **Signature**: what one ``os.stat`` says about a file's content without reading it
  (size, mtime, inode, ctime); a file whose signature changed since it was hashed is
  hashed again (socs#475).
- **Records**: :class:`FileTask` (a file to copy or delete, a snapshot of its ledger row),
  :class:`CopyResult` and :class:`DeleteResult` (what happened to it).

Nothing here touches the database; :mod:`.ledger` does.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat as statmod
import threading
from dataclasses import dataclass
from typing import NamedTuple

#: The longest remote path (bytes) that can be copied: rsync and the remote md5sum take at
#: most 4,095 bytes relative to the base directory, with ``./`` in front.
MAX_REMOTE_PATH = 4000
#: The longest name of one path component (bytes), as every Linux filesystem has it.
MAX_NAME = 255
#: Longest archive name (the ledger's column).
MAX_ARCHIVE_NAME = 64
_TIMECODE_RE = re.compile(r"^\d{5}$")
_MD5_RE = re.compile(r"[0-9a-f]{32}")
_MTIME_TOLERANCE = 1e-6


class SupRsyncError(ValueError):
    """A file cannot be registered as asked (bad path, missing file, bad archive)."""


class RemotePathError(SupRsyncError):
    """A ``remote_relpath`` is absolute, empty or escapes the remote base directory."""


# -- paths and timecodes ----------------------------------------------------------------------


def normalize_remote_path(remote_relpath: str | os.PathLike) -> str:
    """The canonical form of a remote path relative to the base dir, or RemotePathError.

    ``a//b/./c`` becomes ``a/b/c``. Absolute paths, ``..`` components, empty paths and NUL
    bytes are refused: the file would land outside ``--remote-basedir``.
    """
    path = os.fspath(remote_relpath)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path or not path.strip("/"):
        raise RemotePathError(f"remote path {path!r} is empty")
    if "\0" in path:
        raise RemotePathError(f"remote path {path!r} contains a NUL byte")
    if not is_utf8(path):
        raise RemotePathError(
            f"remote path {path!r} is not valid UTF-8 (undecodable bytes in the name); the ledger keeps paths as text"
        )
    if path.startswith("/"):
        raise RemotePathError(f"remote path {path!r} is absolute; give it relative to the remote base directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RemotePathError(f"remote path {path!r} contains '..' and could escape the remote base directory")
    if not parts:
        raise RemotePathError(f"remote path {path!r} names the base directory itself, not a file")
    for part in parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > MAX_NAME:
            raise RemotePathError(
                f"remote path component {part[:40]!r}... is {size} bytes; filesystems take names of at most "
                f"{MAX_NAME} bytes, so it could never be copied"
            )
    norm = "/".join(parts)
    size = len(norm.encode("utf-8", "surrogateescape"))
    if size > MAX_REMOTE_PATH:
        raise RemotePathError(
            f"remote path is {size} bytes, longer than the {MAX_REMOTE_PATH} bytes that can be copied "
            "(rsync and the remote tools take paths of at most 4,095 bytes)"
        )
    return norm


def is_utf8(text: str) -> bool:
    """False for names decoded with ``surrogateescape`` from bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_timecode(remote_path: str) -> int | None:
    """The 5-digit timecode of a remote path (its first component), or None."""
    first = split_path(remote_path)[0] if remote_path else ""
    return int(first) if _TIMECODE_RE.match(first) else None


def split_path(path: str) -> list[str]:
    """``'16750/a/b.g3'`` -> ``['16750', 'a', 'b.g3']`` (no empty parts)."""
    return [p for p in posixpath.normpath(path).split("/") if p not in ("", ".")]


def absolute_local_path(local_abspath: str | os.PathLike) -> str:
    """``local_abspath`` made absolute, or SupRsyncError if it is empty, has a NUL byte or
    is not valid UTF-8."""
    path = os.fspath(local_abspath)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path:
        raise SupRsyncError("local path is empty")
    if "\0" in path:
        raise SupRsyncError(f"local path {path!r} contains a NUL byte")
    if not is_utf8(path):
        raise SupRsyncError(
            f"local path {path!r} is not valid UTF-8 (undecodable bytes in the name); the ledger keeps paths "
            "as text: rename the file to register it"
        )
    return os.path.abspath(path)


def check_archive_name(archive: str) -> str:
    """``archive`` if it is a usable archive name, else SupRsyncError."""
    if not archive or not isinstance(archive, str) or len(archive) > MAX_ARCHIVE_NAME:
        raise SupRsyncError(
            f"archive name {archive!r} must be a non-empty string of at most {MAX_ARCHIVE_NAME} characters"
        )
    return archive


def check_md5(md5: str | None, local_path: str) -> str | None:
    """``md5`` if it is None or 32 lowercase hex digits, else SupRsyncError naming the file."""
    if md5 is not None and not _MD5_RE.fullmatch(md5):
        raise SupRsyncError(f"local_md5sum {md5!r} of {local_path!r} is not 32 lowercase hex digits")
    return md5


# -- signature and md5 ------------------------------------------------------------------------


class Signature(NamedTuple):
    """What one ``os.stat`` tells about a local file's content without reading it.

    Size and mtime alone miss a file replaced by different content of the same size and
    mtime (``cp -p``, ``rsync -t``, ``mv`` of a file written with the same mtime, a tool
    that resets mtime). The inode changes when the file is replaced and the ctime changes
    on every write, replacement, rename or chmod, and cannot be set by users: any change
    of content changes the signature. ``ino`` is folded into a signed 64-bit value (the
    ledger's BIGINT).
    """

    size: int
    mtime: float
    ino: int
    ctime_ns: int


_INO_WRAP = 1 << 64


def _db_ino(ino: int) -> int:
    """An inode number as a signed 64-bit value (some filesystems use all 64 bits)."""
    return ino - _INO_WRAP if ino >= 1 << 63 else ino


class LocalFileGone(SupRsyncError):
    """The local file does not exist (``ENOENT``/``ENOTDIR``): the only stat error that means gone."""


class LocalFileUnreadable(SupRsyncError):
    """The local file could not be looked at now (a stale NFS handle, EIO, EACCES ...). It may
    well still be there: neither copied as missing nor recorded as deleted; tried again."""


def local_signature(local_path: str) -> Signature:
    """The :class:`Signature` of a regular local file.

    Raises :class:`LocalFileGone` if it does not exist, :class:`LocalFileUnreadable` if
    it cannot be stat'ed for another reason, :class:`SupRsyncError` if it is not a
    regular file.
    """
    try:
        st = os.stat(local_path)
    except (FileNotFoundError, NotADirectoryError):
        raise LocalFileGone(f"local file {local_path!r} does not exist") from None
    except OSError as exc:
        raise LocalFileUnreadable(f"cannot stat local file {local_path!r}: {exc.strerror or exc}") from None
    if not statmod.S_ISREG(st.st_mode):
        raise SupRsyncError(f"local path {local_path!r} is not a regular file")
    return Signature(st.st_size, st.st_mtime_ns / 1e9, _db_ino(st.st_ino), st.st_ctime_ns)


def same_signature(
    size: int | None, mtime: float | None, ino: int | None, ctime_ns: int | None, other: Signature
) -> bool:
    """True only if every stored field is known and matches ``other`` (the file now).

    A row missing any field (imported from socs, or written before inode and ctime were
    recorded) never matches: its md5 is recomputed before it is trusted.
    """
    if size is None or mtime is None or ino is None or ctime_ns is None:
        return False
    return (
        size == other.size
        and abs(mtime - other.mtime) < _MTIME_TOLERANCE
        and ino == other.ino
        and ctime_ns == other.ctime_ns
    )


def same_size_and_mtime(size: int | None, mtime: float | None, other: Signature) -> bool:
    """The comparison of rows that lack inode and ctime (re-registration of older rows)."""
    return size == other.size and mtime is not None and abs(mtime - other.mtime) < _MTIME_TOLERANCE


#: How close to the moment a file was hashed its mtime may be before the signature is not
#: trusted ("racily clean", as git calls it): on a filesystem with whole-second timestamps
#: (ext2/3 with 128-byte inodes, NFS from some servers) a rewrite in the same second after
#: the hash keeps size, mtime, inode and ctime. Sub-second timestamps tick with the kernel's
#: coarse clock (a few ms).
RACY_WINDOW_COARSE = 2.0
RACY_WINDOW_FINE = 0.05


def racily_clean(sig: Signature, hashed_at: float) -> bool:
    """True if the file may have changed after ``hashed_at`` without its signature showing
    it: its md5 must be computed again before the file is trusted (e.g. deleted)."""
    coarse = round(sig.mtime * 1e9) % 1_000_000_000 == 0
    return sig.mtime > hashed_at - (RACY_WINDOW_COARSE if coarse else RACY_WINDOW_FINE)


def md5_file(path: str, cancel: threading.Event | None = None, chunk: int = 1 << 20) -> str:
    """Hex md5 of a local file, read in chunks; stops early if ``cancel`` is set.

    Reads into one buffer per thread: a fresh 1 MiB ``read()`` per small file cost more
    than hashing it."""
    buf = getattr(_read_buffers, "buf", None)
    if buf is None or len(buf) != chunk:
        buf = _read_buffers.buf = memoryview(bytearray(chunk))
    digest = hashlib.md5()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while n := os.readv(fd, [buf]):
            digest.update(buf[:n])
            if cancel is not None and cancel.is_set():
                raise InterruptedError(f"md5 of {path!r} interrupted by a stop request")
    finally:
        os.close(fd)
    return digest.hexdigest()


_read_buffers = threading.local()


# -- what the copy and delete steps get and give back -----------------------------------------


@dataclass(frozen=True)
class FileTask:
    """One pending file handed to the copier (a plain snapshot, not an ORM row)."""

    id: int
    local_path: str
    remote_path: str
    local_md5sum: str | None
    local_size: int | None
    local_mtime: float | None
    failed_copy_attempts: int
    registered_at: float = 0.0
    local_ino: int | None = None
    local_ctime_ns: int | None = None

    def signature_matches(self, sig: Signature) -> bool:
        """Whether the file's signature now is the one its md5 (if any) was computed from."""
        return same_signature(self.local_size, self.local_mtime, self.local_ino, self.local_ctime_ns, sig)


@dataclass
class CopyResult:
    """The outcome of one file of a batch, recorded by
    :meth:`~hpcsync.agents.suprsync.ledger.SupRsyncFilesManager.record_results`.

    ``outcome``: ``verified`` (remote md5 matched), ``failed`` (copy or check failed: one
    attempt counted), ``missing`` (local file gone: one attempt counted), ``changed``
    (the file changed while it was copied: nothing counted, it is sent again) or
    ``deferred`` (the local file could not be looked at now, e.g. a stale NFS handle: it
    stays pending with the reason, no attempt counted).
    """

    id: int
    outcome: str
    local_md5sum: str | None = None
    local_size: int | None = None
    local_mtime: float | None = None
    remote_md5sum: str | None = None
    error: str | None = None
    local_ino: int | None = None
    local_ctime_ns: int | None = None

    def set_signature(self, sig: Signature | None) -> CopyResult:
        if sig is not None:
            self.local_size, self.local_mtime, self.local_ino, self.local_ctime_ns = sig
        return self


@dataclass
class DeleteResult:
    """``outcome``: ``removed``, ``gone`` (already deleted), ``changed`` (re-queued), ``kept``
    (not deletable: never tried again) or ``busy`` (a stop request interrupted its check, or
    the file could not be looked at now: it stays ``copied`` and is checked again next time).

    With ``removed``/``kept`` and a signature, the file was hashed again and its md5 still
    is the verified remote md5: that signature is stored (the file stays verified). With
    ``changed``, the file is queued to be sent again with this md5 and signature (both
    None, i.e. hashed again when copied, if the file changed while it was hashed).
    """

    id: int
    outcome: str
    error: str | None = None
    local_md5sum: str | None = None
    local_size: int | None = None
    local_mtime: float | None = None
    local_ino: int | None = None
    local_ctime_ns: int | None = None

    def set_signature(self, sig: Signature | None) -> DeleteResult:
        if sig is not None:
            self.local_size, self.local_mtime, self.local_ino, self.local_ctime_ns = sig
        return self


__all__ = [
    "MAX_REMOTE_PATH",
    "CopyResult",
    "DeleteResult",
    "FileTask",
    "LocalFileGone",
    "LocalFileUnreadable",
    "RemotePathError",
    "Signature",
    "SupRsyncError",
    "absolute_local_path",
    "check_archive_name",
    "check_md5",
    "check_timecode",
    "is_utf8",
    "local_signature",
    "md5_file",
    "normalize_remote_path",
    "racily_clean",
    "same_signature",
    "same_size_and_mtime",
    "split_path",
]
