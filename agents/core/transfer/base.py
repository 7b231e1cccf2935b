"""The transfer interface every backend implements, and what its operations return.

rclone's idea: sync logic talks to one small interface and never knows which backend is
behind it. A backend is rooted at a base directory (or bucket prefix); every path it takes
or returns is *relative* to that base, ``/``-separated, and can never leave it.

=============================  ================================================================
``list(prefix)``               files under ``prefix``: :class:`Entry` (path, size, mtime)
``put(items)``                 send local files to their remote paths (one batch)
``get(items)``                 fetch remote files to their local paths (one batch)
``checksum(paths, kind)``      ``{path: hex digest}`` of the remote files that exist
``delete(paths)``              remove remote files (a missing one is not an error)
``describe()``                 where the files are, for logs and session.data (no secrets)
``connection()``               share one connection among the calls made inside it
``read_object(path)``          optional: the bytes of one small remote file (a manifest), or None
``write_object(path, data)``   optional: replace one small remote file with ``data``, whole
=============================  ================================================================

Optional extras (backward compatible; backends that cannot use them ignore them):
:attr:`Item.metadata` asks ``put`` to store a few ``name: value`` strings with the remote
copy where the backend can (S3 user metadata: a content hash, the mtime); ``read_object``
and ``write_object`` have defaults here built on ``get`` and ``put``, which a backend with
a cheaper way (one S3 GET or PUT) overrides. :attr:`Backend.max_path_bytes` is the longest
remote path the backend takes (S3: 1,024 bytes of key, prefix included).

Every operation takes a ``timeout`` (seconds; the whole call is killed past it) and an
optional ``cancel`` event (a stop request kills it within 0.1 s and raises
:class:`~hpcsync.agents.core.process.CommandCancelled`). A destination that cannot be
reached raises :class:`RemoteUnreachable`; a reachable one that cannot take files
:class:`DestinationError`. One bad file never fails a batch: it is named in
:attr:`TransferOutcome.skipped` or :attr:`TransferOutcome.file_errors`.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

#: Checksum kinds a backend may offer, with the length of their hex digest.
CHECKSUM_KINDS = {"md5": 32, "sha1": 40, "sha256": 64}


class RemoteUnreachable(RuntimeError):
    """The destination could not be reached (ssh failed to connect, or did not answer)."""


class DestinationError(RemoteUnreachable):
    """The destination answers but cannot take any file: its base directory is missing (an
    unmounted disk) or it is full. Like an unreachable host this is not the files' fault:
    callers count no attempt and try again later."""


class DestinationFull(DestinationError):
    """The destination ran out of space or quota during a transfer: files sent before it
    filled up may have arrived whole (check them), the others did not."""


@dataclass(frozen=True)
class Item:
    """One file to move: ``local_path`` <-> ``<basedir>/<remote_path>``.

    :meth:`Backend.put` sends ``local_path`` to ``remote_path``; :meth:`Backend.get` fetches
    ``remote_path`` into ``local_path``. ``size`` (bytes, if known) is informational.
    ``metadata`` (optional, ``put`` only): short ASCII ``name: value`` strings a backend
    stores with the remote copy if it can (S3 user metadata); others ignore it."""

    local_path: str
    remote_path: str
    size: int = 0
    metadata: Mapping[str, str] | None = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class Entry:
    """One remote file, as :meth:`Backend.list` reports it."""

    path: str
    size: int
    mtime: float


@dataclass
class TransferOutcome:
    """What one batch of :meth:`Backend.put`, :meth:`Backend.get` or :meth:`Backend.delete`
    did. ``ok`` is False when the transfer program exited non-zero or timed out; the files
    are then checked one by one by the caller, so the good ones still count."""

    ok: bool
    error: str | None = None
    timed_out: bool = False
    returncode: int | None = None
    elapsed: float = 0.0
    #: remote paths that could not be sent at all, with the reason (not in the transfer)
    skipped: dict[str, str] = field(default_factory=dict)
    #: remote paths the transfer named in an error (e.g. permission denied in one subdir)
    file_errors: dict[str, str] = field(default_factory=dict)


#: The name SupRsync's copier has always used for what :meth:`Backend.put` returns.
PutOutcome = TransferOutcome


def unsafe_relative_path(path: str) -> str | None:
    """Why ``path`` cannot be a path under a backend's base directory, or None if it can.

    Refused: empty, absolute, with a NUL byte, or with a ``..`` component (it could leave
    the base directory). ``.`` components and doubled slashes are harmless.
    """
    if not isinstance(path, str):
        return f"path {path!r} is not text"
    if "\0" in path:
        return f"path {path!r} contains a NUL byte"
    if path.startswith("/"):
        return f"path {path!r} is absolute; paths are relative to the base directory"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return f"path {path!r} contains '..' and could leave the base directory"
    if not parts:
        return f"path {path!r} is empty or names the base directory itself"
    return None


def check_relative_paths(paths: Sequence[str]) -> None:
    """ValueError naming the first of ``paths`` that :func:`unsafe_relative_path` refuses."""
    for path in paths:
        why = unsafe_relative_path(path)
        if why:
            raise ValueError(why)


class PreparedPut:
    """A put made ready ahead of its turn (:meth:`Backend.prepare_put`). ``close()``
    releases what it holds; it may be called more than once."""

    def __init__(self, items: list[Item]):
        self.items = items

    def close(self) -> None:
        pass

    def __enter__(self) -> PreparedPut:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(abc.ABC):
    """A place files live: a local directory, ``host:dir`` over ssh, later sftp or S3."""

    basedir: str
    #: the longest remote path (UTF-8 bytes, relative to the base) the backend takes, or None
    max_path_bytes: int | None = None

    @abc.abstractmethod
    def describe(self) -> str:
        """Where files go, for logs and session.data (no secrets)."""

    @contextlib.contextmanager
    def connection(self, cancel: threading.Event | None = None) -> Iterator[Backend]:
        """Share one connection among the operations run inside (a no-op by default)."""
        yield self

    @abc.abstractmethod
    def list(self, prefix: str = "", *, timeout: float, cancel: threading.Event | None = None) -> list[Entry]:
        """Every regular file under ``prefix`` (``""``: the whole base directory), in no
        particular order; an empty list if ``prefix`` does not exist. Symlinks are not
        followed or listed. Raises :class:`DestinationError` if the base directory itself
        is missing, and an error rather than a partial list if part of the tree cannot be
        read."""

    @abc.abstractmethod
    def put(self, items: Sequence[Item], *, timeout: float, cancel: threading.Event | None = None) -> TransferOutcome:
        """Send ``items`` (local -> remote), creating remote directories as needed.

        A file sent again replaces the remote copy even if its size and mtime are the same.
        """

    def prepare_put(self, items: Sequence[Item]) -> PreparedPut:
        """Whatever a put of ``items`` can do before its turn to send (rsync: the staging
        tree), so that a pipelined caller does it while the previous batch is sent. Hand
        the result to :meth:`put_prepared`, then ``close()`` it. By default nothing."""
        return PreparedPut(list(items))

    def put_prepared(
        self, prepared: PreparedPut, *, timeout: float, cancel: threading.Event | None = None
    ) -> TransferOutcome:
        """:meth:`put` of what :meth:`prepare_put` made ready (the same outcome)."""
        return self.put(prepared.items, timeout=timeout, cancel=cancel)

    @abc.abstractmethod
    def get(self, items: Sequence[Item], *, timeout: float, cancel: threading.Event | None = None) -> TransferOutcome:
        """Fetch ``items`` (remote -> local), creating local directories as needed. Each
        local file appears whole (renamed into place) or not at all; remote symlinks and
        other non-regular files are not fetched (named in ``file_errors``)."""

    @abc.abstractmethod
    def checksum(
        self, paths: Sequence[str], kind: str = "md5", *, timeout: float, cancel: threading.Event | None = None
    ) -> dict[str, str]:
        """``{path: lowercase hex digest}`` for those of ``paths`` that exist remotely.

        ``kind`` is one of :data:`CHECKSUM_KINDS`. Raises :class:`RemoteUnreachable` when
        the destination cannot be asked at all."""

    @abc.abstractmethod
    def delete(self, paths: Sequence[str], *, timeout: float, cancel: threading.Event | None = None) -> TransferOutcome:
        """Remove the remote files ``paths``; one already gone is not an error. A file that
        is still there afterwards (a directory, no permission) is named in ``file_errors``."""

    # -- optional extras, with defaults built on the operations above ------------------------

    def read_object(self, path: str, *, timeout: float, cancel: threading.Event | None = None) -> bytes | None:
        """The whole content of the small remote file ``path`` (a manifest), or None if it
        does not exist. Raises :class:`RemoteUnreachable`/:class:`DestinationError` as the
        other operations do. The default fetches it with :meth:`get` into a temporary file."""
        check_relative_paths([path])
        tmp = tempfile.mkdtemp(prefix="hpcsync-read-")
        try:
            local = os.path.join(tmp, "object")
            outcome = self.get([Item(local, path)], timeout=timeout, cancel=cancel)
            if not os.path.isfile(local):
                if outcome.timed_out:
                    raise RemoteUnreachable(f"reading {path!r} from {self.describe()} timed out")
                return None
            with open(local, "rb") as f:
                return f.read()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def write_object(
        self,
        path: str,
        data: bytes,
        *,
        timeout: float,
        cancel: threading.Event | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the small remote file ``path`` with ``data`` (whole or not at all).
        Raises :class:`DestinationError` if it could not be written. The default sends a
        temporary file with :meth:`put`."""
        check_relative_paths([path])
        tmp = tempfile.mkdtemp(prefix="hpcsync-write-")
        try:
            local = os.path.join(tmp, "object")
            with open(local, "wb") as f:
                f.write(data)
            outcome = self.put([Item(local, path, len(data), metadata)], timeout=timeout, cancel=cancel)
            if not outcome.ok or outcome.skipped or outcome.file_errors:
                why = next(iter({**outcome.skipped, **outcome.file_errors}.values()), None) or outcome.error
                raise DestinationError(f"could not write {path!r} to {self.describe()}: {why}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
