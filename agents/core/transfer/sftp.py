"""sftp through paramiko: for hosts that allow sftp and nothing else (no shell, no rsync).

:class:`SftpBackend` implements the :class:`~.base.Backend` interface, and a resumable
:meth:`SftpBackend.pull_tree` for :mod:`.tree`. It reaches the host as the ssh backends do
(:class:`~hpcsync.agents.core.ssh.SshOptions`: destination, port, key file, known_hosts,
host-key policy, connect timeout):

- **host keys are checked** unless the operator turned that off: ``yes`` refuses a host not
  in known_hosts, ``accept-new`` records a new one, and a *changed* key is always refused
  (paramiko's BadHostKeyException), as ssh does;
- **keys from files** only (no agent, no password prompt); **timeouts** on connect, banner,
  auth and every channel read (a stalled server ends the call);
- **no name ever reaches a shell**: sftp requests carry paths as data;
- a stop request is seen between blocks of 256 KiB (well within 0.1 s on any link that
  moves data), a whole call past its ``timeout`` ends with ``timed_out``;
- a file sent or fetched appears whole or not at all: written under a temporary name
  (``.<name>.hpcsync-<random>``) and renamed into place; ``pull_tree`` keeps an interrupted
  file in its tree's partial directory and resumes it from where it stopped.

One sftp session per thread: :meth:`SftpBackend.connection` shares a session among the
calls a thread makes inside it; other calls open their own and close it after.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Iterator

import paramiko

from hpcsync.agents.core.process import CommandCancelled
from hpcsync.agents.core.ssh import SshOptions

from .base import (
    CHECKSUM_KINDS,
    Backend,
    DestinationError,
    Entry,
    RemoteUnreachable,
    TransferOutcome,
    check_relative_paths,
    unsafe_relative_path,
)
from .tree import TreeOutcome, TreeRules

log = logging.getLogger("hpcsync.transfer")

BLOCK = 256 * 1024
#: seconds a channel read or write may stall before the call fails
IO_TIMEOUT = 60.0


class _Deadline:
    def __init__(self, timeout: float, cancel: threading.Event | None):
        self.end = time.monotonic() + timeout
        self.cancel = cancel

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CommandCancelled("sftp transfer was stopped")
        if time.monotonic() > self.end:
            raise TimeoutError("sftp call ran past its timeout")


class SftpBackend(Backend):
    """Files live in ``[user@]host:basedir``, reached over sftp only."""

    def __init__(
        self,
        basedir: str,
        ssh: SshOptions,
        *,
        compress: bool = False,
        bwlimit: str | None = None,
        chmod: str | None = None,
        io_timeout: float = IO_TIMEOUT,
    ):
        if not basedir:
            raise ValueError("the remote base directory is empty")
        self.basedir = basedir.rstrip("/") or "/"
        self.ssh = ssh
        self.compress = compress
        self.rate = _parse_bwlimit(bwlimit)
        self.chmod = chmod
        if chmod:
            apply_chmod(0o644, chmod, is_dir=False)  # validates now, not at the first transfer
        self.io_timeout = io_timeout
        self._local = threading.local()

    def describe(self) -> str:
        port = f" (port {self.ssh.port})" if self.ssh.port else ""
        return f"sftp {self.ssh.destination}:{self.basedir}{port}"

    # -- sessions ---------------------------------------------------------------------------------

    def _open(self) -> tuple[paramiko.SSHClient, paramiko.SFTPClient]:
        ssh = self.ssh
        client = paramiko.SSHClient()
        known = ssh.known_hosts_file or os.path.expanduser("~/.ssh/known_hosts")
        if ssh.host_key_checking == "off":
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            if os.path.exists(known):
                client.load_host_keys(known)
            elif ssh.host_key_checking == "accept-new":
                client.load_host_keys(_touch(known))
            policy = paramiko.AutoAddPolicy() if ssh.host_key_checking == "accept-new" else paramiko.RejectPolicy()
            client.set_missing_host_key_policy(policy)
        try:
            client.connect(
                ssh.host,
                port=int(ssh.port or 22),
                username=ssh.user or None,
                key_filename=ssh.key_file,
                look_for_keys=ssh.key_file is None,
                allow_agent=False,
                timeout=ssh.connect_timeout,
                banner_timeout=ssh.connect_timeout,
                auth_timeout=ssh.connect_timeout,
                compress=self.compress,
            )
            transport = client.get_transport()
            transport.set_keepalive(ssh.server_alive_interval)
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.io_timeout)
        except paramiko.BadHostKeyException:
            client.close()
            raise RemoteUnreachable(
                f"{self.describe()} is unreachable: ssh refused to connect: the host key CHANGED since it was "
                f"recorded in {known}; this can be a man-in-the-middle attack. Nothing was sent. If the host was "
                "legitimately re-keyed, replace its entry in known_hosts"
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise RemoteUnreachable(
                f"{self.describe()} is unreachable: the ssh key was refused ({exc}); check the key file and the "
                "remote authorized_keys"
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            text = str(exc)
            if "not found in known_hosts" in text:
                text = (
                    f"the host key is not in {known} (host key checking is on); add it (ssh-keyscan, checked "
                    "out of band) or use host key checking accept-new"
                )
            raise RemoteUnreachable(f"{self.describe()} is unreachable: {text}") from None
        except (TimeoutError, OSError, EOFError) as exc:
            client.close()
            raise RemoteUnreachable(f"{self.describe()} is unreachable: {exc.strerror or exc}") from None
        return client, sftp

    @contextlib.contextmanager
    def _session(self) -> Iterator[paramiko.SFTPClient]:
        shared = getattr(self._local, "sftp", None)
        if shared is not None:
            yield shared
            return
        client, sftp = self._open()
        try:
            yield sftp
        finally:
            client.close()

    @contextlib.contextmanager
    def connection(self, cancel: threading.Event | None = None):
        """One sftp session shared by the calls this thread makes inside."""
        if getattr(self._local, "sftp", None) is not None:
            yield self
            return
        client, sftp = self._open()
        self._local.sftp = sftp
        try:
            yield self
        finally:
            self._local.sftp = None
            client.close()

    def _path(self, rel: str = "") -> str:
        return (
            "/".join(p for p in (self.basedir.rstrip("/") if self.basedir != "/" else "", rel.strip("/")) if p) or "/"
        )

    def _check_base(self, sftp: paramiko.SFTPClient, what: str) -> None:
        try:
            if not stat.S_ISDIR(sftp.stat(self._path()).st_mode or 0):
                raise DestinationError(f"{self.basedir} on {self.describe()} is not a directory; nothing to {what}")
        except FileNotFoundError:
            raise DestinationError(
                f"the base directory {self.basedir} does not exist on the destination {self.describe()} "
                f"(is the disk mounted?); nothing to {what}"
            ) from None

    # -- listing ----------------------------------------------------------------------------------

    def _walk(self, sftp, rel: str, deadline: _Deadline) -> Iterator[tuple[str, paramiko.SFTPAttributes]]:
        for attr in sftp.listdir_attr(self._path(rel)):
            deadline.check()
            path = f"{rel}/{attr.filename}" if rel else attr.filename
            mode = attr.st_mode or 0
            if stat.S_ISDIR(mode):
                yield from self._walk(sftp, path, deadline)
            elif stat.S_ISREG(mode):
                yield path, attr

    def list(self, prefix="", *, timeout, cancel=None) -> list[Entry]:
        start = ""
        if prefix not in ("", ".", "./"):
            check_relative_paths([prefix])
            start = prefix.strip("/")
        deadline = _Deadline(timeout, cancel)
        with self._session() as sftp:
            self._check_base(sftp, "list")
            try:
                if start and not stat.S_ISDIR(sftp.stat(self._path(start)).st_mode or 0):
                    return []
            except FileNotFoundError:
                return []
            try:
                return [
                    Entry(path, attr.st_size or 0, float(attr.st_mtime or 0))
                    for path, attr in self._walk(sftp, start, deadline)
                ]
            except TimeoutError as exc:
                raise RemoteUnreachable(f"listing {self.describe()} did not finish: {exc}") from None
            except OSError as exc:
                raise OSError(f"listing {prefix or '.'} on {self.describe()} failed: {exc}") from None

    def list_dirs(self, prefix="", *, timeout, cancel=None) -> list[str]:
        if prefix.strip("/"):
            check_relative_paths([prefix])
        with self._session() as sftp:
            try:
                attrs = sftp.listdir_attr(self._path(prefix))
            except FileNotFoundError:
                raise DestinationError(f"{self._path(prefix)} does not exist on {self.describe()}") from None
        return sorted(a.filename for a in attrs if stat.S_ISDIR(a.st_mode or 0))

    # -- put / get --------------------------------------------------------------------------------

    def _throttle(self, started: float, sent: int, deadline: _Deadline) -> None:
        if not self.rate:
            return
        while sent / self.rate > time.monotonic() - started:
            deadline.check()
            time.sleep(min(0.05, sent / self.rate - (time.monotonic() - started)))

    def _makedirs(self, sftp, rel_dir: str) -> None:
        path = ""
        for part in [p for p in rel_dir.split("/") if p]:
            path = f"{path}/{part}" if path else part
            try:
                sftp.stat(self._path(path))
            except FileNotFoundError:
                sftp.mkdir(self._path(path))

    def put(self, items, *, timeout, cancel=None) -> TransferOutcome:
        outcome = TransferOutcome(ok=True)
        if not items:
            return outcome
        deadline = _Deadline(timeout, cancel)
        started = time.monotonic()
        with self._session() as sftp:
            self._check_base(sftp, "send")
            for item in items:
                why = unsafe_relative_path(item.remote_path)
                if why:
                    outcome.skipped[item.remote_path] = f"cannot send to {why}"
                    continue
                parent, _, name = item.remote_path.rpartition("/")
                tmp = (
                    f"{parent}/.{name}.hpcsync-{uuid.uuid4().hex[:8]}"
                    if parent
                    else f".{name}.hpcsync-{uuid.uuid4().hex[:8]}"
                )
                try:
                    self._makedirs(sftp, parent)
                    st = os.stat(item.local_path)
                    with open(item.local_path, "rb") as src, sftp.open(self._path(tmp), "wb") as dst:
                        dst.set_pipelined(True)
                        sent, t0 = 0, time.monotonic()
                        while block := src.read(BLOCK):
                            deadline.check()
                            dst.write(block)
                            sent += len(block)
                            self._throttle(t0, sent, deadline)
                    sftp.utime(self._path(tmp), (int(st.st_atime), int(st.st_mtime)))
                    if self.chmod:
                        sftp.chmod(self._path(tmp), apply_chmod(st.st_mode & 0o7777, self.chmod, is_dir=False))
                    sftp.posix_rename(self._path(tmp), self._path(item.remote_path))
                except (CommandCancelled, TimeoutError) as exc:
                    _remove_quietly(sftp, self._path(tmp))
                    if isinstance(exc, CommandCancelled):
                        raise
                    outcome.ok, outcome.timed_out, outcome.error = (
                        False,
                        True,
                        f"sftp put timed out after {timeout:g} s",
                    )
                    break
                except (OSError, paramiko.SSHException) as exc:
                    _remove_quietly(sftp, self._path(tmp))
                    outcome.file_errors[item.remote_path] = f"cannot send {item.remote_path!r}: {exc}"
        if outcome.file_errors or outcome.skipped:
            outcome.ok = False
            outcome.error = outcome.error or f"{len(outcome.file_errors) + len(outcome.skipped)} files were not sent"
        outcome.elapsed = time.monotonic() - started
        return outcome

    def _download(self, sftp, remote: str, local: str, deadline: _Deadline, *, offset: int = 0) -> int:
        """Append ``remote`` from ``offset`` to ``local``; return the bytes read."""
        read = 0
        with sftp.open(remote, "rb") as src, open(local, "ab" if offset else "wb") as dst:
            src.prefetch() if not offset else src.seek(offset)
            t0 = time.monotonic()
            while True:
                deadline.check()
                block = src.read(BLOCK)
                if not block:
                    break
                dst.write(block)
                read += len(block)
                self._throttle(t0, read, deadline)
        return read

    def get(self, items, *, timeout, cancel=None) -> TransferOutcome:
        outcome = TransferOutcome(ok=True)
        if not items:
            return outcome
        deadline = _Deadline(timeout, cancel)
        started = time.monotonic()
        with self._session() as sftp:
            for item in items:
                why = unsafe_relative_path(item.remote_path)
                if why or not item.local_path:
                    outcome.skipped[item.remote_path] = f"cannot fetch {why or 'without a local path'}"
                    continue
                try:
                    attr = sftp.lstat(self._path(item.remote_path))
                except FileNotFoundError:
                    outcome.file_errors[item.remote_path] = f"{item.remote_path!r} is not on {self.describe()}"
                    continue
                if not stat.S_ISREG(attr.st_mode or 0):
                    outcome.file_errors[item.remote_path] = f"{item.remote_path!r} is not a regular file"
                    continue
                local = os.path.abspath(item.local_path)
                os.makedirs(os.path.dirname(local), exist_ok=True)
                tmp = os.path.join(os.path.dirname(local), f".{os.path.basename(local)}.hpcsync-{uuid.uuid4().hex[:8]}")
                try:
                    self._download(sftp, self._path(item.remote_path), tmp, deadline)
                    os.utime(tmp, (attr.st_atime or 0, attr.st_mtime or 0))
                    os.replace(tmp, local)
                except (CommandCancelled, TimeoutError) as exc:
                    _unlink_quietly(tmp)
                    if isinstance(exc, CommandCancelled):
                        raise
                    outcome.ok, outcome.timed_out, outcome.error = (
                        False,
                        True,
                        f"sftp get timed out after {timeout:g} s",
                    )
                    break
                except (OSError, paramiko.SSHException) as exc:
                    _unlink_quietly(tmp)
                    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise DestinationError(
                            f"the local disk cannot take files from {self.describe()}: {exc}"
                        ) from None
                    outcome.file_errors[item.remote_path] = f"cannot fetch {item.remote_path!r}: {exc}"
        if outcome.file_errors or outcome.skipped:
            outcome.ok = False
            outcome.error = outcome.error or f"{len(outcome.file_errors) + len(outcome.skipped)} files were not fetched"
        outcome.elapsed = time.monotonic() - started
        return outcome

    # -- checksum / delete ------------------------------------------------------------------------

    def checksum(self, paths, kind="md5", *, timeout, cancel=None) -> dict[str, str]:
        """Digests computed here from the remote bytes (an sftp-only host runs no md5sum)."""
        if kind not in CHECKSUM_KINDS:
            raise ValueError(f"checksum kind {kind!r} is not one of {', '.join(CHECKSUM_KINDS)}")
        if not paths:
            return {}
        check_relative_paths(paths)
        deadline = _Deadline(timeout, cancel)
        found = {}
        with self._session() as sftp:
            self._check_base(sftp, "checksum")
            for path in paths:
                try:
                    if not stat.S_ISREG(sftp.lstat(self._path(path)).st_mode or 0):
                        continue
                    digest = hashlib.new(kind)
                    with sftp.open(self._path(path), "rb") as src:
                        src.prefetch()
                        while block := src.read(BLOCK):
                            deadline.check()
                            digest.update(block)
                    found[path] = digest.hexdigest()
                except FileNotFoundError:
                    continue
                except TimeoutError as exc:
                    raise RemoteUnreachable(f"checksums on {self.describe()} did not finish: {exc}") from None
        return found

    def delete(self, paths, *, timeout, cancel=None) -> TransferOutcome:
        outcome = TransferOutcome(ok=True)
        if not paths:
            return outcome
        check_relative_paths(paths)
        with self._session() as sftp:
            self._check_base(sftp, "delete")
            for path in paths:
                try:
                    sftp.remove(self._path(path))
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    outcome.file_errors[path] = f"cannot delete {path!r}: {exc}"
                    continue
        if outcome.file_errors:
            outcome.ok = False
            outcome.error = f"{len(outcome.file_errors)} files could not be deleted on {self.describe()}"
        return outcome

    # -- trees (see .tree) ------------------------------------------------------------------------

    def pull_tree(self, prefix, local_dir, rules: TreeRules, *, dry_run=False, timeout, cancel=None) -> TreeOutcome:
        """Fetch the files of ``prefix`` that are missing here or of another size; an
        interrupted file waits in ``<its dir>/<rules.partial_dir>/`` and is resumed."""
        check_relative_paths([prefix])
        deadline = _Deadline(timeout, cancel)
        outcome = TreeOutcome(ok=True, dry_run=dry_run)
        started = time.monotonic()
        with self._session() as sftp:
            try:
                if not stat.S_ISDIR(sftp.stat(self._path(prefix)).st_mode or 0):
                    raise FileNotFoundError(prefix)
            except FileNotFoundError:
                outcome.ok, outcome.error = False, f"{prefix} does not exist on {self.describe()}"
                return outcome
            try:
                for rel, attr in self._walk(sftp, prefix.strip("/"), deadline):
                    sub = rel[len(prefix.strip("/")) + 1 :]
                    if not rules.admits(sub):
                        continue
                    size = attr.st_size or 0
                    outcome.files_total += 1
                    outcome.bytes_total += size
                    local = os.path.join(local_dir, sub)
                    if os.path.isfile(local) and (
                        os.path.getsize(local) == size
                        if rules.size_only
                        else os.path.getsize(local) == size and int(os.path.getmtime(local)) == int(attr.st_mtime or 0)
                    ):
                        continue
                    outcome.files_sent += 1
                    outcome.bytes_sent += size
                    if not dry_run:
                        self._pull_file(sftp, rel, attr, local, rules, deadline)
            except TimeoutError:
                outcome.ok, outcome.timed_out, outcome.error = False, True, f"sftp pull timed out after {timeout:g} s"
            except (OSError, paramiko.SSHException) as exc:
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DestinationError(f"the local disk cannot take files from {self.describe()}: {exc}") from None
                outcome.ok, outcome.error = False, f"sftp pull of {prefix} from {self.describe()} failed: {exc}"
        outcome.elapsed = time.monotonic() - started
        return outcome

    def _pull_file(self, sftp, rel: str, attr, local: str, rules: TreeRules, deadline: _Deadline) -> None:
        directory, name = os.path.split(local)
        partial_dir = os.path.join(directory, rules.partial_dir)
        os.makedirs(partial_dir, exist_ok=True)
        if rules.chmod:
            _chmod_dirs(os.path.dirname(partial_dir), rules.chmod)
        partial = os.path.join(partial_dir, name)
        size = attr.st_size or 0
        offset = os.path.getsize(partial) if os.path.isfile(partial) else 0
        if offset > size:
            offset = 0
        self._download(sftp, self._path(rel), partial, deadline, offset=offset)
        if os.path.getsize(partial) != size:
            raise OSError(f"{rel!r} changed size while being fetched")
        os.utime(partial, (attr.st_atime or 0, attr.st_mtime or 0))
        if rules.chmod:
            os.chmod(partial, apply_chmod(attr.st_mode & 0o7777 if attr.st_mode else 0o644, rules.chmod, is_dir=False))
        os.replace(partial, local)
        with contextlib.suppress(OSError):
            os.rmdir(partial_dir)


# -- helpers -------------------------------------------------------------------------------------

_CLAUSE = re.compile(r"([DF]?)([ugoa]*)([-+=])([rwxXst]*)")
_BITS = {"u": (0o400, 0o200, 0o100, 0o4000), "g": (0o040, 0o020, 0o010, 0o2000), "o": (0o004, 0o002, 0o001, 0)}


def apply_chmod(mode: int, spec: str, *, is_dir: bool) -> int:
    """``mode`` changed by an rsync ``--chmod`` spec (``Dg+s,ug+w,o-wx,ug+X``)."""
    for clause in spec.split(","):
        m = _CLAUSE.fullmatch(clause)
        if not m:
            raise ValueError(f"chmod {spec!r}: {clause!r} is not an rsync --chmod clause")
        kind, who, op, perms = m.groups()
        if (kind == "D" and not is_dir) or (kind == "F" and is_dir):
            continue
        bits = 0
        for w in who.replace("a", "ugo") or "ugo":
            r, wr, x, special = _BITS[w]
            bits |= (r if "r" in perms else 0) | (wr if "w" in perms else 0) | (x if "x" in perms else 0)
            if "X" in perms and (is_dir or mode & 0o111):
                bits |= x
            if "s" in perms:
                bits |= special
        if "t" in perms:
            bits |= 0o1000
        if op == "+":
            mode |= bits
        elif op == "-":
            mode &= ~bits
        else:
            clear = 0
            for w in who.replace("a", "ugo") or "ugo":
                clear |= sum(_BITS[w][:3])
            mode = (mode & ~clear) | bits
    return mode


def _chmod_dirs(directory: str, spec: str) -> None:
    with contextlib.suppress(OSError):
        os.chmod(directory, apply_chmod(os.stat(directory).st_mode & 0o7777, spec, is_dir=True))


def _parse_bwlimit(bwlimit: str | None) -> float | None:
    """rsync's ``--bwlimit`` (KiB/s, or with a K/M/G unit) as bytes per second."""
    if not bwlimit:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGkmg]?)", str(bwlimit))
    if not m:
        raise ValueError(f"bwlimit {bwlimit!r} is not a number with an optional K/M/G unit")
    return float(m.group(1)) * {"": 1024, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


def _remove_quietly(sftp, path: str) -> None:
    with contextlib.suppress(OSError, paramiko.SSHException):
        sftp.remove(path)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _touch(path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a"):
        pass
    return path


__all__ = ["SftpBackend", "apply_chmod"]
