"""The local-directory backend in pure Python: no rsync, no subprocess, no network.

``LocalDirBackend("/srv/store")`` keeps files under a directory of this machine. It is the
embedded default of agents that sync to "somewhere" (CloudSync's demo and offline use) and
a reference implementation of :class:`~.base.Backend`:

- **put/get** copy each file to a temporary name next to its destination (``.<name>.XXXX``)
  and rename it into place, so a reader never sees half a file; the copy keeps the source's
  mtime. A stop request (``cancel``) ends the copy within one 1 MiB block and raises
  :class:`~hpcsync.agents.core.process.CommandCancelled` (its ``sent``: the paths copied
  whole before the stop); a passed ``timeout`` ends the batch with ``timed_out``; in both
  cases the temporary is removed.
- **never through a symlink**: a destination whose directory resolves outside the base
  (a symlinked directory inside it) is refused; remote symlinks are neither listed nor
  fetched, nor are they followed by ``list``.
- ``bwlimit`` (KiB/s, rsync style) paces the copies, e.g. to test stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Sequence

from hpcsync.agents.core.process import CommandCancelled

from .base import (
    CHECKSUM_KINDS,
    Backend,
    DestinationError,
    Entry,
    Item,
    TransferOutcome,
    check_relative_paths,
    unsafe_relative_path,
)

BLOCK = 1 << 20


class _Budget:
    """A call's deadline, cancel event and pace."""

    def __init__(self, timeout: float, cancel: threading.Event | None, rate: float | None):
        self.deadline = time.monotonic() + timeout
        self.cancel = cancel
        self.rate = rate
        self.timed_out = False
        self._next = time.monotonic()

    def spend(self, nbytes: int) -> None:
        """Raise CommandCancelled on a stop, TimeoutError past the deadline; pace the copy."""
        if self.cancel is not None and self.cancel.is_set():
            raise CommandCancelled("stopped on request")
        if time.monotonic() >= self.deadline:
            self.timed_out = True
            raise TimeoutError("timed out")
        if self.rate and nbytes:
            now = time.monotonic()
            self._next = max(now, self._next) + nbytes / self.rate
            wait = min(self._next - now, max(0.0, self.deadline - now) + 0.01)
            if wait > 0 and self.cancel is not None and self.cancel.wait(wait):
                raise CommandCancelled("stopped on request")
            if wait > 0 and self.cancel is None:
                time.sleep(wait)
            if time.monotonic() >= self.deadline:
                self.timed_out = True
                raise TimeoutError("timed out")


def _copy(src: str, dst: str, budget: _Budget, *, src_nofollow: bool = False) -> None:
    """Copy ``src`` to ``dst`` through a temporary next to it, renamed into place whole.
    The copy keeps ``src``'s mtime. ``src_nofollow``: refuse a symlink or non-regular source."""
    flags = os.O_RDONLY | (os.O_NOFOLLOW if src_nofollow else 0)
    fd_in = os.open(src, flags)
    try:
        st = os.fstat(fd_in)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{src!r} is not a regular file")
        directory = os.path.dirname(dst) or "."
        fd_out, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)[:100]}.", dir=directory)
        try:
            with os.fdopen(fd_out, "wb") as out:
                while True:
                    budget.spend(0)
                    block = os.read(fd_in, BLOCK)
                    if not block:
                        break
                    out.write(block)
                    budget.spend(len(block))
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    finally:
        os.close(fd_in)


class LocalDirBackend(Backend):
    """Files under a directory of this machine (see the module docstring)."""

    def __init__(self, basedir: str, *, bwlimit: str | int | None = None):
        if not basedir:
            raise ValueError("the base directory is empty")
        self.basedir = os.path.abspath(os.path.expanduser(str(basedir)))
        from .s3 import _parse_bwlimit  # one parser of rsync-style limits

        self.rate = _parse_bwlimit(bwlimit)

    def describe(self) -> str:
        return self.basedir

    # -- paths ---------------------------------------------------------------------------------

    def _base_real(self) -> str:
        if not os.path.isdir(self.basedir):
            raise DestinationError(f"the base directory {self.basedir} does not exist (not mounted?)")
        return os.path.realpath(self.basedir)

    def _inside(self, path: str, base_real: str) -> bool:
        real = os.path.realpath(path)
        return real == base_real or real.startswith(base_real.rstrip("/") + "/")

    def _dest(self, rel: str, base_real: str) -> str:
        """The absolute path of ``rel``, its directory made; refuses a directory that leaves
        the base through a symlink (OSError)."""
        path = os.path.join(self.basedir, rel)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        if not self._inside(parent, base_real):
            raise PermissionError(f"{os.path.dirname(rel)!r} leads outside {self.basedir} (a symlink)")
        return path

    # -- operations ----------------------------------------------------------------------------

    def list(self, prefix="", *, timeout, cancel=None) -> list[Entry]:
        if prefix:
            check_relative_paths([prefix.rstrip("/")])
        self._base_real()
        start = os.path.join(self.basedir, prefix.rstrip("/")) if prefix else self.basedir
        entries: list[Entry] = []
        budget = _Budget(timeout, cancel, None)
        if not os.path.isdir(start) or os.path.islink(start):
            return []

        def walk(directory: str, rel: str) -> None:
            budget.spend(0)
            with os.scandir(directory) as it:
                for entry in it:
                    name = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        walk(entry.path, name)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        entries.append(Entry(name, st.st_size, st.st_mtime))

        try:
            walk(start, prefix.strip("/"))
        except TimeoutError:
            raise DestinationError(f"listing {self.basedir} timed out after {timeout:.0f} s") from None
        return entries

    def put(self, items, *, timeout, cancel=None) -> TransferOutcome:
        return self._copy_all(items, timeout, cancel, pull=False)

    def get(self, items, *, timeout, cancel=None) -> TransferOutcome:
        return self._copy_all(items, timeout, cancel, pull=True)

    def _copy_all(self, items: Sequence[Item], timeout: float, cancel, *, pull: bool) -> TransferOutcome:
        if not items:
            return TransferOutcome(ok=True)
        base_real = self._base_real()
        started = time.monotonic()
        budget = _Budget(timeout, cancel, self.rate)
        outcome = TransferOutcome(ok=True)
        verb = "fetch" if pull else "send to"
        done: list[str] = []
        for item in items:
            why = unsafe_relative_path(item.remote_path)
            if why:
                outcome.skipped[item.remote_path] = f"cannot {verb} {why}"
                continue
            if pull and not item.local_path:
                outcome.skipped[item.remote_path] = f"no local path given for {item.remote_path!r}"
                continue
            try:
                if pull:
                    src = os.path.join(self.basedir, item.remote_path)
                    if not self._inside(os.path.dirname(src), base_real):
                        raise PermissionError("its directory leads outside the base (a symlink)")
                    dst = os.path.abspath(item.local_path)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    _copy(src, dst, budget, src_nofollow=True)
                else:
                    _copy(item.local_path, self._dest(item.remote_path, base_real), budget)
                done.append(item.remote_path)
            except CommandCancelled as exc:
                exc.sent = done  # type: ignore[attr-defined]  # what was copied whole before the stop
                raise
            except TimeoutError:
                outcome.ok, outcome.timed_out = False, True
                outcome.error = f"copying to or from {self.basedir} timed out after {timeout:.0f} s"
                break
            except FileNotFoundError:
                where = "not on the remote" if pull else f"{item.local_path!r} does not exist"
                (outcome.file_errors if pull else outcome.skipped)[item.remote_path] = where
            except OSError as exc:
                if getattr(exc, "errno", None) == 40:  # ELOOP: O_NOFOLLOW met a symlink
                    outcome.file_errors[item.remote_path] = "a symlink on the remote, not fetched"
                else:
                    outcome.file_errors[item.remote_path] = exc.strerror or str(exc)
        if outcome.file_errors or outcome.skipped:
            outcome.ok = False
            outcome.error = outcome.error or f"{len(outcome.file_errors) + len(outcome.skipped)} file(s) failed"
        outcome.elapsed = time.monotonic() - started
        return outcome

    def checksum(self, paths, kind="md5", *, timeout, cancel=None) -> dict[str, str]:
        if kind not in CHECKSUM_KINDS:
            raise ValueError(f"checksum kind {kind!r} is not one of {', '.join(CHECKSUM_KINDS)}")
        check_relative_paths(paths)
        self._base_real()
        budget = _Budget(timeout, cancel, None)
        out = {}
        for rel in paths:
            try:
                fd = os.open(os.path.join(self.basedir, rel), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    continue
                digest = hashlib.new(kind)
                while block := f.read(BLOCK):
                    try:
                        budget.spend(0)
                    except TimeoutError:
                        raise DestinationError(f"hashing in {self.basedir} timed out after {timeout:.0f} s") from None
                    digest.update(block)
            out[rel] = digest.hexdigest()
        return out

    def delete(self, paths, *, timeout, cancel=None) -> TransferOutcome:
        check_relative_paths(paths)
        base_real = self._base_real()
        outcome = TransferOutcome(ok=True)
        for rel in paths:
            path = os.path.join(self.basedir, rel)
            try:
                if not self._inside(os.path.dirname(path), base_real):
                    raise PermissionError("its directory leads outside the base (a symlink)")
                os.remove(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                outcome.file_errors[rel] = exc.strerror or str(exc)
                continue
            self._prune(os.path.dirname(path))
        if outcome.file_errors:
            outcome.ok = False
            outcome.error = f"{len(outcome.file_errors)} file(s) not deleted"
        return outcome

    def _prune(self, directory: str) -> None:
        """Remove directories left empty by a delete, up to (not including) the base."""
        base = self.basedir.rstrip("/")
        while directory.startswith(base + "/"):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)

    def read_object(self, path, *, timeout, cancel=None) -> bytes | None:
        check_relative_paths([path])
        self._base_real()
        try:
            fd = os.open(os.path.join(self.basedir, path), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write_object(self, path, data, *, timeout, cancel=None, metadata=None) -> None:
        check_relative_paths([path])
        base_real = self._base_real()
        try:
            dst = self._dest(path, base_real)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)[:100]}.", dir=os.path.dirname(dst))
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise
        except OSError as exc:
            raise DestinationError(f"could not write {path!r} in {self.basedir}: {exc.strerror or exc}") from None
