"""Transfer backends: put a batch of files under a base directory, and checksum them there.

The copy loop knows nothing about rsync or ssh: it hands a backend a batch of
``(local_path, remote_path)`` items and asks for the md5 of remote paths, as rclone's sync
drives any backend. Two backends ship:

- :class:`LocalRsyncBackend`: the destination is a directory on this machine (socs's
  "no ``--ssh-host``");
- :class:`SshRsyncBackend`: the destination is ``[user@]host:basedir`` over ssh.

Both send a whole batch with **one** rsync: a temporary tree of symlinks laid out as the
remote paths, passed NUL-separated with ``--files-from=- --from0`` (no argv limit, any file
name), ``--copy-links`` to send the targets, ``--protect-args`` so the remote shell never
sees a name, and ``--ignore-times``: a file sent again (changed after its copy, or retried
after a bad copy) can have the size and mtime of the copy already there, and rsync's quick
check would skip it; the destination would keep the old content forever. (A file that is
not there yet costs nothing extra; one that is is checked by rsync's delta transfer.) They
verify with **one** ``md5sum`` run through ``xargs -0`` fed on stdin from
inside the base directory, so a batch of any size never overflows a command line (socs ran
``md5sum <every path>`` as one argv, which fails at ~5,000 files), and parse its output
including md5sum's escaping of names with backslashes or newlines.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import re
import shlex
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from hpcsync.agents.core.process import CommandCancelled, CommandError, CommandTimeout, run_command
from hpcsync.agents.core.ssh import SshOptions, remote_command, rsync_base_argv

log = logging.getLogger("hpcsync.suprsync")


def default_tmp_root() -> str | None:
    """Where batch symlink trees are built: ``/dev/shm`` (tmpfs) when usable, else the
    system temp dir. A symlink costs ~4 us on tmpfs and ~150 us on a journaled disk, which
    is most of a 1,000-file batch of small files."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


#: rsync's own I/O timeout: a connection that moves no data this long is dropped.
RSYNC_IO_TIMEOUT = 120

# Run from the base directory, read NUL-separated relative paths on stdin. Exit 111 means
# the base directory does not exist (nothing was copied there yet).
_MD5_SCRIPT = 'cd "$1" 2>/dev/null || exit 111; exec xargs -0 -r md5sum --'


class RemoteUnreachable(RuntimeError):
    """The destination could not be reached (ssh failed to connect, or did not answer)."""


class DestinationError(RemoteUnreachable):
    """The destination answers but cannot take any file: its base directory is missing (an
    unmounted disk) or it is full. Like an unreachable host this is not the files' fault:
    no attempt is counted, the loop degrades and tries again later."""


@dataclass(frozen=True)
class Item:
    """One file to send: ``local_path`` to ``<basedir>/<remote_path>``."""

    local_path: str
    remote_path: str
    size: int = 0


@dataclass
class PutOutcome:
    """What one batch transfer did. ``ok`` is False when rsync exited non-zero or timed out;
    the files are then checked one by one, so the good ones still count as copied."""

    ok: bool
    error: str | None = None
    timed_out: bool = False
    returncode: int | None = None
    elapsed: float = 0.0
    #: remote paths that could not be sent at all, with the reason (not in the transfer)
    skipped: dict[str, str] = field(default_factory=dict)
    #: remote paths rsync named in an error line (e.g. permission denied in one subdir)
    file_errors: dict[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """A destination for files: put a batch, report md5s of remote paths."""

    basedir: str

    @abc.abstractmethod
    def describe(self) -> str:
        """Where files go, for logs and session.data (no secrets)."""

    @contextlib.contextmanager
    def connection(self, cancel: threading.Event | None = None):
        """Share one connection among the puts and checks made inside (a no-op here)."""
        yield self

    @abc.abstractmethod
    def put(self, items: Sequence[Item], *, timeout: float, cancel: threading.Event | None = None) -> PutOutcome:
        """Copy ``items``. Raises :class:`RemoteUnreachable` if the destination cannot be
        reached, :class:`~hpcsync.agents.core.process.CommandCancelled` on a stop request."""

    @abc.abstractmethod
    def md5sums(
        self, remote_paths: Sequence[str], *, timeout: float, cancel: threading.Event | None = None
    ) -> dict[str, str]:
        """``{remote_path: md5}`` for those of ``remote_paths`` that exist remotely.

        Raises :class:`RemoteUnreachable` when the destination cannot be asked at all."""


class RsyncBackend(Backend):
    """Shared rsync/md5sum logic; subclasses say how to reach the destination."""

    def __init__(
        self,
        basedir: str,
        *,
        compress: bool = False,
        bwlimit: str | None = None,
        chmod: str | None = None,
        tmp_root: str | None = None,
        rsync_program: str = "rsync",
    ):
        if not basedir:
            raise ValueError("the remote base directory is empty")
        self.basedir = basedir.rstrip("/") or "/"
        # A relative base dir (the remote home) must not look like an option to cd or rsync.
        self._safe_basedir = self.basedir if self.basedir.startswith("/") else "./" + self.basedir
        self.compress = compress
        self.bwlimit = bwlimit
        self.chmod = chmod
        self.tmp_root = tmp_root if tmp_root is not None else default_tmp_root()
        self.rsync_program = rsync_program
        # Build once: validates bwlimit/chmod at startup, not at the first batch.
        self._rsync_argv_head()

    # -- what subclasses provide --------------------------------------------------------------

    @property
    def ssh(self) -> SshOptions | None:
        return None

    def _dest(self) -> str:
        return self._safe_basedir + "/"

    def _command_argv(self, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` where the files are."""
        return list(argv)

    def _unreachable(self, returncode: int, stderr: str) -> bool:
        return False

    def _unreachable_message(self, stderr: str, fallback: str) -> str:
        why = ssh_diagnosis(stderr)
        return f"{self.describe()} is unreachable: {why or fallback}"

    def _file_errors(self, stderr: str, items: Sequence[Item]) -> dict[str, str]:
        """``{remote_path: rsync's error line}`` for files an rsync error line names:
        the file itself, its temporary ``.name.XXXXXX``, or a directory above it."""
        named = _rsync_error_lines(stderr)
        if not named:
            return {}
        roots = {self.basedir, self._safe_basedir, self.basedir.lstrip("./")}
        by_rel: dict[str, str] = {}
        for path, line in named:
            path = path.rstrip("/")
            for root in roots:
                if root and path.startswith(root.rstrip("/") + "/"):
                    by_rel.setdefault(path[len(root.rstrip("/")) + 1 :], line)
                    break
        if not by_rel:
            return {}
        out: dict[str, str] = {}
        for item in items:
            rel = item.remote_path
            parent, _sep, base = rel.rpartition("/")
            line = by_rel.get(rel)
            if line is None:
                for cand, cand_line in by_rel.items():
                    cparent, _s, cbase = cand.rpartition("/")
                    if cparent == parent and cbase.startswith(f".{base}."):
                        line = cand_line
                        break
            if line is None:
                parts = rel.split("/")
                for n in range(len(parts) - 1, 0, -1):
                    line = by_rel.get("/".join(parts[:n]))
                    if line is not None:
                        break
            if line is not None:
                out[rel] = line
        return out

    # -- the two operations -------------------------------------------------------------------

    def _rsh(self) -> str | None:
        """The ``--rsh`` string, or None for a local destination."""
        return None

    def _rsync_argv_head(self) -> list[str]:
        rsh = self._rsh()
        return rsync_base_argv(
            compress=self.compress,
            bwlimit=self.bwlimit,
            chmod=self.chmod,
            timeout=RSYNC_IO_TIMEOUT,
            rsync_program=self.rsync_program,
            extra=[*(["--rsh", rsh] if rsh else []), "--copy-links", "--times", "--ignore-times",
                   "--omit-dir-times", "--files-from=-", "--from0"],
        )  # fmt: skip

    def put(self, items, *, timeout, cancel=None) -> PutOutcome:
        if not items:
            return PutOutcome(ok=True)
        tree = tempfile.mkdtemp(prefix="suprsync-batch-", dir=self.tmp_root)
        try:
            made: set[str] = set()
            listing = []
            skipped: dict[str, str] = {}
            for item in items:
                link = os.path.join(tree, item.remote_path)
                parent = os.path.dirname(link)
                try:
                    if parent not in made:
                        os.makedirs(parent, exist_ok=True)
                        made.add(parent)
                    os.symlink(item.local_path, link)
                except OSError as exc:
                    # e.g. "a" and "a/b" in one batch: one cannot be both a file and a dir.
                    # Only this file fails (and is counted); the batch goes on.
                    skipped[item.remote_path] = f"cannot stage {item.remote_path!r} for rsync: {exc.strerror or exc}"
                    continue
                listing.append(os.fsencode(item.remote_path))
            if not listing:
                return PutOutcome(ok=False, error="no file of the batch could be staged", skipped=skipped)
            argv = [*self._rsync_argv_head(), tree + "/", self._dest()]
            log.debug("rsync of %d files to %s", len(items), self.describe())
            try:
                result = run_command(
                    argv, input=b"\0".join(listing) + b"\0", timeout=timeout, check=False, cancel=cancel
                )
            except CommandTimeout as exc:
                return PutOutcome(ok=False, error=str(exc), timed_out=True, elapsed=timeout, skipped=skipped)
            except CommandCancelled:
                raise
            except CommandError as exc:  # rsync could not start at all
                return PutOutcome(ok=False, error=str(exc), skipped=skipped)
            if result.returncode == 0:
                return PutOutcome(ok=True, returncode=0, elapsed=result.elapsed, skipped=skipped)
            if self._unreachable(result.returncode, result.stderr):
                raise RemoteUnreachable(self._unreachable_message(result.stderr, result.describe()))
            full = _destination_full(result.stderr)
            if full:
                raise DestinationError(f"the destination {self.describe()} cannot take files: {full}")
            return PutOutcome(ok=False, error=result.describe(), returncode=result.returncode, elapsed=result.elapsed,
                              skipped=skipped, file_errors=self._file_errors(result.stderr, items))  # fmt: skip
        finally:
            shutil.rmtree(tree, ignore_errors=True)

    def md5sums(self, remote_paths, *, timeout, cancel=None) -> dict[str, str]:
        if not remote_paths:
            return {}
        argv = self._command_argv(["sh", "-c", _MD5_SCRIPT, "suprsync-md5", self._safe_basedir])
        stdin = b"\0".join(os.fsencode(p) for p in remote_paths) + b"\0"
        try:
            result = run_command(argv, input=stdin, timeout=timeout, check=False, cancel=cancel, text=False)
        except CommandTimeout as exc:
            raise RemoteUnreachable(f"md5sum on {self.describe()} did not answer: {exc}") from None
        except CommandCancelled:
            raise
        except CommandError as exc:
            raise RemoteUnreachable(f"cannot run md5sum for {self.describe()}: {exc}") from None
        stderr = result.stderr.decode("utf-8", "replace")
        if self._unreachable(result.returncode, stderr):
            raise RemoteUnreachable(self._unreachable_message(stderr, f"ssh exited with 255: {stderr.strip()[-300:]}"))
        if result.returncode == 111:
            # Only asked after rsync ran: a base dir that still does not exist means rsync
            # could not create it (a missing parent, an unmounted disk), not a bad file.
            raise DestinationError(
                f"the base directory {self.basedir} does not exist on the destination and rsync could not create "
                "it (is the destination disk mounted? create the directory); files stay pending"
            )
        found = parse_md5sum_output(result.stdout)
        if result.returncode not in (0, 123) and not found:
            # 123: xargs saying md5sum failed for some file (missing ones); others are real errors.
            raise CommandError(f"md5sum on {self.describe()} exited with {result.returncode}: {stderr.strip()[-300:]}")
        return found


class LocalRsyncBackend(RsyncBackend):
    """Files go to a directory on this machine (rsync without a remote shell)."""

    def describe(self) -> str:
        return self.basedir


class SshRsyncBackend(RsyncBackend):
    """Files go to ``[user@]host:basedir`` over ssh (batch mode, timeouts, pinned host keys)."""

    #: A shared connection left behind (agent killed) closes itself after this idle time.
    CONTROL_PERSIST = 10

    def __init__(self, basedir: str, ssh: SshOptions, **kwargs):
        self._ssh = ssh
        self._control_path: str | None = None
        super().__init__(basedir, **kwargs)

    @property
    def ssh(self) -> SshOptions:
        return self._ssh

    def describe(self) -> str:
        port = f" (port {self._ssh.port})" if self._ssh.port else ""
        return f"{self._ssh.destination}:{self.basedir}{port}"

    def _mux_options(self) -> list[str]:
        if self._control_path is None:
            return []
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={self._control_path}",
                "-o", f"ControlPersist={self.CONTROL_PERSIST}"]  # fmt: skip

    def _rsh(self) -> str:
        return shlex.join([self._ssh.ssh_program, *self._ssh.options(), *self._mux_options()])

    def _dest(self) -> str:
        return self._ssh.rsync_remote(self.basedir + "/")

    def _command_argv(self, argv):
        ssh = self._ssh
        return [ssh.ssh_program, *ssh.options(), *self._mux_options(), "--", ssh.destination, remote_command(argv)]

    @contextlib.contextmanager
    def connection(self, cancel: threading.Event | None = None):
        """One ssh connection (an OpenSSH ControlMaster) shared by every rsync and md5sum
        run inside: the first command's ssh becomes the master, the others open a session
        on it in a few ms instead of a full handshake each. The master is closed on exit,
        and closes itself after :attr:`CONTROL_PERSIST` idle seconds if the agent is
        killed. An unreachable host still fails the first command (RemoteUnreachable)."""
        if self._control_path is not None:  # nested: already shared
            yield self
            return
        sockdir = tempfile.mkdtemp(prefix="suprsync-ssh-")
        control = os.path.join(sockdir, "cm")
        self._control_path = control
        try:
            yield self
        finally:
            self._control_path = None
            if os.path.exists(control):
                ssh = self._ssh
                with contextlib.suppress(CommandError):
                    run_command([ssh.ssh_program, "-o", f"ControlPath={control}", "-O", "exit", "--", ssh.destination],
                                timeout=10, check=False)  # fmt: skip
            shutil.rmtree(sockdir, ignore_errors=True)

    def _unreachable(self, returncode: int, stderr: str) -> bool:
        # ssh exits 255 on its own errors; rsync reports a dead connection as 255, or as a
        # protocol/socket error (12, 10, 35) with ssh's complaint in stderr.
        if returncode == 255:
            return True
        text = stderr.lower()
        return returncode in (10, 12, 35) and any(
            s in text for s in ("ssh:", "connection", "host key", "permission denied (publickey")
        )


_RSYNC_ERROR_RE = re.compile(r'^rsync: (?:\[\w+\] )?.*?"(?P<path>[^"]+)".*?(?:failed|error).*$', re.IGNORECASE)
_FULL_MARKERS = ("No space left on device", "Disk quota exceeded")


def _rsync_error_lines(stderr: str) -> list[tuple[str, str]]:
    """``(path, line)`` for each rsync error line that names a path in double quotes."""
    found = []
    for line in stderr.splitlines()[:2000]:
        m = _RSYNC_ERROR_RE.match(line.strip())
        if m:
            found.append((m.group("path"), line.strip()[:300]))
    return found


def _destination_full(stderr: str) -> str | None:
    """rsync's line saying the destination is out of space or quota, if any."""
    for line in stderr.splitlines():
        if any(marker in line for marker in _FULL_MARKERS):
            return line.strip()[:300]
    return None


def ssh_diagnosis(stderr: str) -> str | None:
    """One sentence saying why ssh refused or failed to connect, from its stderr.

    rsync's own last line ("connection unexpectedly closed", "unexplained error (code
    255)") hides the reason; an operator needs to know that the host key changed (a
    possible man-in-the-middle: refused, never bypassed), is unknown, or the key was
    refused. Key material is never quoted, only ssh's own explanation.
    """
    text = stderr or ""
    lowered = text.lower()
    known_hosts = re.search(r"Offending \S+ key in (\S+?):\d+", text)
    where = f" (offending entry in {known_hosts.group(1)})" if known_hosts else ""
    if "remote host identification has changed" in lowered or "has changed and you have requested strict" in lowered:
        return (
            "ssh refused to connect: the host key CHANGED since it was recorded" + where + "; this can be a "
            "man-in-the-middle attack. Nothing was sent. If the host was legitimately re-keyed, replace its "
            "entry in known_hosts"
        )
    if "host key verification failed" in lowered:
        return (
            "ssh refused to connect: the host key is not in known_hosts (host key checking is on); add it "
            "(ssh-keyscan, checked out of band) or use --ssh-host-key-checking accept-new"
        )
    for marker, why in (
        ("permission denied (publickey", "the ssh key was refused (check --ssh-key and the remote authorized_keys)"),
        ("could not resolve hostname", "the host name does not resolve"),
        ("connection refused", "the connection was refused (is sshd running on that port?)"),
        ("connection timed out", "the connection timed out"),
        ("no route to host", "there is no route to the host"),
    ):
        if marker in lowered:
            line = next((x.strip() for x in text.splitlines() if marker in x.lower()), "")
            return f"{why}: {line[:200]}"
    return None


def parse_md5sum_output(stdout: bytes) -> dict[str, str]:
    """``{name: md5}`` from GNU md5sum output.

    md5sum prints ``<md5>  <name>`` (``*`` instead of the second space in binary mode), and
    when a name contains a backslash, newline or carriage return it prefixes the line with
    ``\\`` and escapes them as ``\\\\``, ``\\n``, ``\\r``. Names are decoded from bytes with
    ``surrogateescape``, as ``os.fsdecode`` does.
    """
    found: dict[str, str] = {}
    for line in stdout.split(b"\n"):
        if not line:
            continue
        escaped = line.startswith(b"\\")
        if escaped:
            line = line[1:]
        digest, sep, name = line[:32], line[32:34], line[34:]
        if len(digest) != 32 or sep not in (b"  ", b" *"):
            continue
        try:
            digest_text = digest.decode("ascii").lower()
            int(digest_text, 16)
        except (UnicodeDecodeError, ValueError):
            continue
        if escaped:
            name = _unescape(name)
        found[os.fsdecode(name)] = digest_text
    return found


def _unescape(name: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(name):
        c = name[i : i + 1]
        if c == b"\\" and i + 1 < len(name):
            nxt = name[i + 1 : i + 2]
            out += {b"\\": b"\\", b"n": b"\n", b"r": b"\r"}.get(nxt, b"\\" + nxt)
            i += 2
        else:
            out += c
            i += 1
    return bytes(out)


def make_backend(
    remote_basedir: str,
    *,
    ssh_host: str | None = None,
    ssh_key: str | None = None,
    ssh_port: int | None = None,
    known_hosts: str | None = None,
    host_key_checking: str = "yes",
    connect_timeout: int = 10,
    compress: bool = False,
    bwlimit: str | None = None,
    chmod: str | None = None,
) -> RsyncBackend:
    """The backend the agent's arguments describe: ssh when a host is given, else local."""
    options = {"compress": compress, "bwlimit": bwlimit, "chmod": chmod}
    if not ssh_host:
        return LocalRsyncBackend(remote_basedir, **options)
    ssh = SshOptions(
        ssh_host,
        port=ssh_port,
        key_file=ssh_key,
        known_hosts_file=known_hosts,
        host_key_checking=host_key_checking,
        connect_timeout=connect_timeout,
    )
    return SshRsyncBackend(remote_basedir, ssh, **options)
