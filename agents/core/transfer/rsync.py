"""rsync backends: a directory on this machine, or ``[user@]host:basedir`` over ssh.

:class:`LocalRsyncBackend` and :class:`SshRsyncBackend` share every operation; they differ
only in how a command reaches the files (run here, or through ssh) and how rsync names the
remote side. What keeps hostile file names (spaces, newlines, quotes, leading dashes,
``$(...)``, backslashes, any bytes) harmless:

- **no shell ever sees a file name.** Names travel NUL-separated on stdin: to rsync with
  ``--files-from=- --from0``, to remote commands through ``xargs -0`` (which passes them as
  argv words, each prefixed ``./`` and after ``--``: no name reads as an option, nor as
  md5sum's ``-`` for standard input). The only shell scripts are constants; their one variable
  argument, the base directory, is a positional parameter, quoted for the remote shell
  (:func:`~hpcsync.agents.core.ssh.remote_command`) and prefixed ``./`` when relative.
- ``--protect-args``: rsync sends names to the remote rsync inside its protocol, not on
  the remote command line.
- Output is NUL-separated (``find -printf``, the delete report) or parsed with md5sum's own
  escaping of backslashes and newlines (:func:`parse_checksum_output`).
- Every command runs through :func:`~hpcsync.agents.core.process.run_command`: a timeout,
  a cancel event, its process group killed on either, and SIGKILL if the agent dies.
  ssh runs with ``BatchMode``, ``ConnectTimeout`` and keep-alives
  (:class:`~hpcsync.agents.core.ssh.SshOptions`).

**put** sends a whole batch with one rsync: a temporary tree of symlinks laid out as the
remote paths, sent recursively from the tree's top-level entries (listing every file in
``--files-from`` costs rsync about 1 s per 20,000 files), with ``--copy-links`` (the
targets, not the links) and ``--ignore-times``:
a file sent again can have the size and mtime of the copy already there, and rsync's quick
check would skip it. **get** is one rsync pull into a staging directory, each file then
renamed into its local path (whole or not at all); remote symlinks are not followed.
**checksum** is one ``md5sum`` (or ``sha1sum``/``sha256sum``) through ``xargs -0`` run in the
base directory, so a batch of any size never overflows a command line. **list** is one
``find -printf`` with NUL-separated fields; **delete** one ``rm -f --`` through ``xargs -0``
that reports, NUL-separated, every path still there afterwards.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import re
import shlex
import shutil
import tempfile
import threading
from collections.abc import Sequence

from hpcsync.agents.core.daemon import pid_alive
from hpcsync.agents.core.process import CommandCancelled, CommandError, CommandResult, CommandTimeout, run_command
from hpcsync.agents.core.ssh import SshOptions, remote_command, rsync_base_argv, ssh_diagnosis

from .base import (
    CHECKSUM_KINDS,
    Backend,
    DestinationError,
    DestinationFull,
    Entry,
    Item,
    PreparedPut,
    RemoteUnreachable,
    TransferOutcome,
    check_relative_paths,
    unsafe_relative_path,
)
from .tree import TreeOutcome, TreeRules

log = logging.getLogger("hpcsync.transfer")

#: rsync's own I/O timeout: a connection that moves no data this long is dropped.
RSYNC_IO_TIMEOUT = 120

# Remote scripts. Each runs from the base directory ($1) and exits 111 when it does not
# exist; file names arrive NUL-separated on stdin, never in the script.
_CD_BASE = 'cd "$1" 2>/dev/null || exit 111; '
#: $2: the checksum program (md5sum, sha1sum, sha256sum).
_CHECKSUM_SCRIPT = _CD_BASE + 'exec xargs -0 -r "$2" --'
#: $2: where to list (``.`` or ``./<prefix>``); prints path, size, mtime, each NUL-terminated.
# rsync's temp dirs (.hpcsync-tmp-<owner>, at the top) hold no file of the backend's.
_LIST_SCRIPT = (
    _CD_BASE + '[ -e "$2" ] || exit 0; exec find "$2" -path "./.hpcsync-tmp-*" -prune -o -type f '
    "-printf '%p\\0%s\\0%T@\\0'"
)
#: $2: the script xargs runs on each chunk of names (:data:`_RM_CHUNK`).
_DELETE_SCRIPT = _CD_BASE + 'exec xargs -0 -r sh -c "$2" hpcsync-rm'
#: Removes its arguments, then prints (NUL-terminated) each one still there.
_RM_CHUNK = 'rm -f -- "$@"; for p in "$@"; do if [ -e "$p" ] || [ -L "$p" ]; then printf "%s\\0" "$p"; fi; done; exit 0'
_CHECKSUM_PROGRAMS = {"md5": "md5sum", "sha1": "sha1sum", "sha256": "sha256sum"}
# From the base directory: empty (or make) the owner's temp dir; print how many files it held.
_TEMP_DIR_SCRIPT = (
    'cd "$1" 2>/dev/null || exit 111; n=0; if [ -d "$2" ]; then n=$(find "$2" -type f | wc -l); '
    'rm -rf -- "$2"; fi; mkdir -m 700 -- "$2" && echo "$n"'
)


def default_tmp_root() -> str | None:
    """Where batch symlink trees are built: ``/dev/shm`` (tmpfs) when usable, else the
    system temp dir. A symlink costs ~4 us on tmpfs and ~150 us on a journaled disk, which
    is most of a 1,000-file batch of small files."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


class RsyncBackend(Backend):
    """Shared rsync and remote-command logic; subclasses say how to reach the files."""

    def __init__(
        self,
        basedir: str,
        *,
        compress: bool = False,
        bwlimit: str | None = None,
        chmod: str | None = None,
        tmp_root: str | None = None,
        rsync_program: str = "rsync",
        owner: str | None = None,
    ):
        if not basedir:
            raise ValueError("the remote base directory is empty")
        #: who uses this backend (an agent instance): names its temporary files, so what a
        #: killed run left behind is found and removed by the next (:meth:`remove_leftovers`)
        self.owner = re.sub(r"[^A-Za-z0-9_.-]", "_", owner) if owner else None
        self._temp_dir_ready = False
        self.basedir = basedir.rstrip("/") or "/"
        # A relative base dir (the remote home) must not look like an option to cd or rsync.
        self._safe_basedir = self.basedir if self.basedir.startswith("/") else "./" + self.basedir
        self.compress = compress
        self.bwlimit = bwlimit
        self.chmod = chmod
        self.tmp_root = tmp_root if tmp_root is not None else default_tmp_root()
        self.rsync_program = rsync_program
        # Build once: validates bwlimit/chmod at startup, not at the first batch.
        self._rsync_argv(pull=False)

    # -- temporary files and what a killed run left ------------------------------------------

    @property
    def stage_prefix(self) -> str:
        """Prefix of this process's symlink trees (``hpcsync-put-<owner>-<pid>-``)."""
        return f"hpcsync-put-{self.owner or 'any'}-{os.getpid()}-"

    @property
    def remote_temp_dir(self) -> str | None:
        """Where rsync writes files before renaming them into place, relative to the base
        directory (``.hpcsync-tmp-<owner>``); None without an owner (rsync's default: next to
        each file, where a killed transfer leaves ``.name.XXXXXX`` behind)."""
        return f".hpcsync-tmp-{self.owner}" if self.owner else None

    def remove_leftovers(self, *, timeout: float, cancel=None) -> list[str]:
        """Remove what earlier, killed runs of this owner left: symlink trees and ssh control
        directories of dead processes here, and rsync's partial files in the remote temp
        directory (which is then ready for this run). Returns what was removed."""
        removed: list[str] = []
        if self.owner is None:
            return removed
        mine = re.compile(rf"^hpcsync-(?:put|ssh)-{re.escape(self.owner)}-(\d+)-")
        for root in {self.tmp_root or tempfile.gettempdir(), tempfile.gettempdir()}:
            try:
                names = os.listdir(root)
            except OSError:
                continue
            for name in names:
                match = mine.match(name)
                if match and not pid_alive(int(match.group(1))):
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                    removed.append(os.path.join(root, name))
        result, stderr = self._run_script("cleanup", _TEMP_DIR_SCRIPT, [self.remote_temp_dir], None, timeout, cancel)
        if result.returncode == 0:
            self._temp_dir_ready = True
            left = int(result.stdout.decode().strip() or 0)
            if left:
                removed.append(f"{left} partial files in {self.describe()}/{self.remote_temp_dir}")
        elif result.returncode != 111:  # 111: no base directory yet; rsync makes it
            log.warning("could not prepare %s on %s: %s", self.remote_temp_dir, self.describe(), stderr.strip()[-200:])
        return removed

    # -- what subclasses provide --------------------------------------------------------------

    @property
    def ssh(self) -> SshOptions | None:
        return None

    def _remote_spec(self) -> str:
        """The base directory as rsync names it (destination of put, source of get)."""
        return self._safe_basedir + "/"

    def _command_argv(self, argv: Sequence[str]) -> list[str]:
        """argv that runs ``argv`` where the files are."""
        return list(argv)

    def _rsh(self) -> str | None:
        """The ``--rsh`` string, or None for a local destination."""
        return None

    def _unreachable(self, returncode: int, stderr: str) -> bool:
        return False

    def _unreachable_message(self, stderr: str, fallback: str) -> str:
        why = ssh_diagnosis(stderr)
        return f"{self.describe()} is unreachable: {why or fallback}"

    # -- rsync --------------------------------------------------------------------------------

    def _rsync_argv(self, *, pull: bool) -> list[str]:
        rsh = self._rsh()
        if pull:
            # Remote symlinks are not followed (they could point anywhere): without
            # --links or --copy-links rsync skips them. Permissions are the receiver's.
            extra = ["--times", "--omit-dir-times"]
        else:
            extra = ["--copy-links", "--times", "--ignore-times", "--omit-dir-times"]
            if self._temp_dir_ready and self.remote_temp_dir:
                extra.append(f"--temp-dir={self.remote_temp_dir}")
        return rsync_base_argv(
            compress=self.compress,
            bwlimit=self.bwlimit,
            chmod=None if pull else self.chmod,
            timeout=RSYNC_IO_TIMEOUT,
            rsync_program=self.rsync_program,
            extra=[*(["--rsh", rsh] if rsh else []), *extra, "--files-from=-", "--from0"],
        )

    def _run_rsync(
        self, argv: list[str], names: list[bytes] | None, timeout: float, cancel, *, pull: bool
    ) -> CommandResult:
        """Run one rsync fed ``names`` on stdin (None: no stdin). Raises CommandTimeout, CommandCancelled,
        CommandError (rsync could not start), RemoteUnreachable or DestinationError (the
        receiving side is out of space or quota)."""
        stdin = None if names is None else b"\0".join(names) + b"\0"
        result = run_command(argv, input=stdin, timeout=timeout, check=False, cancel=cancel)
        if result.returncode != 0:
            if self._unreachable(result.returncode, result.stderr):
                raise RemoteUnreachable(self._unreachable_message(result.stderr, result.describe()))
            full = _destination_full(result.stderr)
            if full and pull:
                raise DestinationFull(f"the local disk cannot take files from {self.describe()}: {full}")
            if full:
                raise DestinationFull(f"the destination {self.describe()} cannot take files: {full}")
        return result

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
            else:
                if not path.startswith("/"):  # already relative to the base directory
                    by_rel.setdefault(path.removeprefix("./"), line)
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

    def put(self, items, *, timeout, cancel=None) -> TransferOutcome:
        with self.prepare_put(items) as prepared:
            return self.put_prepared(prepared, timeout=timeout, cancel=cancel)

    def prepare_put(self, items) -> PreparedPut:
        """The batch's staging tree: a symlink per file at its remote path (rsync follows
        them with ``--copy-links``), so one rsync recursion sends exactly this batch."""
        items = list(items)
        if not items:
            return PreparedPut(items)
        staged = _StagedPut(items, tempfile.mkdtemp(prefix=self.stage_prefix, dir=self.tmp_root))
        try:
            stage = _StagingTree(staged.tree)
            try:
                listing = set()
                for item in items:
                    why = unsafe_relative_path(item.remote_path)
                    if why:
                        staged.skipped[item.remote_path] = f"cannot send to {why}"
                        continue
                    try:
                        stage.link(item.remote_path, item.local_path)
                    except OSError as exc:
                        # e.g. "a" and "a/b" in one batch: one cannot be both a file and a dir.
                        # Only this file fails; the batch goes on.
                        staged.skipped[item.remote_path] = (
                            f"cannot stage {item.remote_path!r} for rsync: {exc.strerror or exc}"
                        )
                        continue
                    listing.add(next(p for p in item.remote_path.split("/") if p not in ("", ".")))
            finally:
                stage.close()
        except BaseException:
            staged.close()
            raise
        # The tree holds exactly this batch: rsync recurses from its top-level entries.
        # Listing every file instead costs rsync about 1 s per 20,000 files, and recursing
        # from the tree's root would copy its modes onto the base directory.
        staged.tops = [_files_from_entry(name) for name in sorted(listing)]
        return staged

    def put_prepared(self, prepared, *, timeout, cancel=None) -> TransferOutcome:
        if not prepared.items:
            return TransferOutcome(ok=True)
        if not isinstance(prepared, _StagedPut) or prepared.tops is None:
            raise ValueError("put_prepared needs what this backend's prepare_put returned, not yet closed")
        skipped = dict(prepared.skipped)
        if not prepared.tops:
            return TransferOutcome(ok=False, error="no file of the batch could be staged", skipped=skipped)
        argv = [*self._rsync_argv(pull=False), "--recursive", prepared.tree + "/", self._remote_spec()]
        log.debug("rsync of %d files to %s", len(prepared.items) - len(skipped), self.describe())
        try:
            result = self._run_rsync(argv, prepared.tops, timeout, cancel, pull=False)
        except CommandTimeout as exc:
            return TransferOutcome(ok=False, error=str(exc), timed_out=True, elapsed=timeout, skipped=skipped)
        except CommandCancelled:
            raise
        except CommandError as exc:  # rsync could not start at all
            return TransferOutcome(ok=False, error=str(exc), skipped=skipped)
        if result.returncode == 0:
            return TransferOutcome(ok=True, returncode=0, elapsed=result.elapsed, skipped=skipped)
        return TransferOutcome(ok=False, error=result.describe(), returncode=result.returncode,
                               elapsed=result.elapsed, skipped=skipped,
                               file_errors=self._file_errors(result.stderr, prepared.items))  # fmt: skip

    def get(self, items, *, timeout, cancel=None) -> TransferOutcome:
        if not items:
            return TransferOutcome(ok=True)
        skipped: dict[str, str] = {}
        wanted: list[Item] = []
        for item in items:
            why = unsafe_relative_path(item.remote_path)
            if why:
                skipped[item.remote_path] = f"cannot fetch {why}"
            elif not item.local_path:
                skipped[item.remote_path] = f"no local path given for {item.remote_path!r}"
            else:
                wanted.append(item)
        if not wanted:
            return TransferOutcome(ok=False, error="no file of the batch can be fetched", skipped=skipped)
        staging = self._staging_dir([i.local_path for i in wanted])
        try:
            argv = [*self._rsync_argv(pull=True), self._remote_spec(), staging + "/"]
            log.debug("rsync of %d files from %s", len(wanted), self.describe())
            outcome = TransferOutcome(ok=True, skipped=skipped)
            rsync_errors: dict[str, str] = {}
            names = [_files_from_entry(i.remote_path) for i in wanted]
            try:
                result = self._run_rsync(argv, names, timeout, cancel, pull=True)
            except CommandTimeout as exc:
                # Files rsync finished are complete in the staging tree (it renames into
                # place there too): they are moved; the others are reported.
                outcome.ok, outcome.error, outcome.timed_out, outcome.elapsed = False, str(exc), True, timeout
                result = None
            except CommandCancelled:
                raise
            except CommandError as exc:  # rsync could not start at all
                return TransferOutcome(ok=False, error=str(exc), skipped=skipped)
            if result is not None:
                outcome.returncode, outcome.elapsed = result.returncode, result.elapsed
                if result.returncode != 0:
                    outcome.ok, outcome.error = False, result.describe()
                    rsync_errors = self._file_errors(result.stderr, wanted)
            # The last item of a remote path takes the staged file; earlier ones get a copy.
            last_of = {item.remote_path: n for n, item in enumerate(wanted)}
            for n, item in enumerate(wanted):
                staged = os.path.join(staging, item.remote_path)
                if not os.path.isfile(staged) or os.path.islink(staged):
                    outcome.file_errors[item.remote_path] = rsync_errors.get(item.remote_path) or (
                        f"{item.remote_path!r} was not fetched (not on {self.describe()}, or not a regular file)"
                    )
                    continue
                try:
                    _move_into_place(staged, item.local_path, copy=last_of[item.remote_path] != n)
                except OSError as exc:
                    outcome.file_errors[item.remote_path] = (
                        f"cannot put {item.remote_path!r} at {item.local_path!r}: {exc.strerror or exc}"
                    )
            if outcome.file_errors or outcome.skipped:
                outcome.ok = False
                outcome.error = outcome.error or f"{len(outcome.file_errors) + len(skipped)} files were not fetched"
            return outcome
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _staging_dir(self, local_paths: list[str]) -> str:
        """A fresh directory on the same filesystem as the local paths if possible (so files
        are renamed into place), else in the temp dir (copied into place)."""
        parents = [os.path.dirname(os.path.abspath(p)) for p in local_paths]
        parent = os.path.commonpath(parents)
        while parent != "/" and not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        if parent != "/":
            with contextlib.suppress(OSError):
                return tempfile.mkdtemp(prefix=".hpcsync-get-", dir=parent)
        return tempfile.mkdtemp(prefix="hpcsync-get-", dir=self.tmp_root)

    # -- remote commands ----------------------------------------------------------------------

    def _run_script(
        self, what: str, script: str, args: Sequence[str], stdin: bytes | None, timeout: float, cancel
    ) -> tuple[CommandResult, str]:
        """Run ``script`` with ``sh`` where the files are (``$1``: the base directory).

        Returns the result (bytes output) and its stderr as text. Raises RemoteUnreachable
        when the command does not answer or ssh cannot connect, CommandCancelled on a stop
        request. Exit 111 (no base directory) is left to the caller."""
        argv = self._command_argv(["sh", "-c", script, f"hpcsync-{what}", self._safe_basedir, *args])
        try:
            result = run_command(argv, input=stdin, timeout=timeout, check=False, cancel=cancel, text=False)
        except CommandTimeout as exc:
            raise RemoteUnreachable(f"{what} on {self.describe()} did not answer: {exc}") from None
        except CommandCancelled:
            raise
        except CommandError as exc:
            raise RemoteUnreachable(f"cannot run {what} for {self.describe()}: {exc}") from None
        stderr = result.stderr.decode("utf-8", "replace")
        if self._unreachable(result.returncode, stderr):
            raise RemoteUnreachable(self._unreachable_message(stderr, f"ssh exited with 255: {stderr.strip()[-300:]}"))
        return result, stderr

    def _no_basedir(self, what: str) -> DestinationError:
        return DestinationError(
            f"the base directory {self.basedir} does not exist on the destination {self.describe()} "
            f"(is the disk mounted?); nothing to {what}"
        )

    def checksum(self, paths, kind="md5", *, timeout, cancel=None) -> dict[str, str]:
        program = _CHECKSUM_PROGRAMS.get(kind)
        if program is None:
            raise ValueError(f"checksum kind {kind!r} is not one of {', '.join(_CHECKSUM_PROGRAMS)}")
        if not paths:
            return {}
        check_relative_paths(paths)
        stdin = _dot_slash_list(paths)
        result, stderr = self._run_script(program, _CHECKSUM_SCRIPT, [program], stdin, timeout, cancel)
        if result.returncode == 111:
            # Asked after a put: a base dir that still does not exist means rsync could
            # not create it (a missing parent, an unmounted disk), not a bad file.
            raise DestinationError(
                f"the base directory {self.basedir} does not exist on the destination and rsync could not create "
                "it (is the destination disk mounted? create the directory); files stay pending"
            )
        found = {_strip_dot_slash(name): digest for name, digest in parse_checksum_output(result.stdout, kind).items()}
        if result.returncode not in (0, 123) and not found:
            # 123: xargs saying the program failed for some file (missing ones); others are real errors.
            raise CommandError(
                f"{program} on {self.describe()} exited with {result.returncode}: {stderr.strip()[-300:]}"
            )
        return found

    def list(self, prefix="", *, timeout, cancel=None) -> list[Entry]:
        where = "."
        if prefix not in ("", ".", "./"):
            check_relative_paths([prefix])
            where = "./" + prefix.rstrip("/")
        result, stderr = self._run_script("find", _LIST_SCRIPT, [where], None, timeout, cancel)
        if result.returncode == 111:
            raise self._no_basedir("list")
        if result.returncode != 0:
            # Part of the tree could not be read: a partial list could mislead a sync.
            raise CommandError(
                f"listing {where} on {self.describe()} failed (find exited with {result.returncode}): "
                f"{stderr.strip()[-300:]}"
            )
        return parse_find_output(result.stdout)

    def delete(self, paths, *, timeout, cancel=None) -> TransferOutcome:
        if not paths:
            return TransferOutcome(ok=True)
        check_relative_paths(paths)
        stdin = _dot_slash_list(paths)
        result, stderr = self._run_script("rm", _DELETE_SCRIPT, [_RM_CHUNK], stdin, timeout, cancel)
        if result.returncode == 111:
            raise self._no_basedir("delete")
        left = [_strip_dot_slash(os.fsdecode(p)) for p in result.stdout.split(b"\0") if p]
        outcome = TransferOutcome(ok=result.returncode == 0 and not left, returncode=result.returncode,
                                  elapsed=result.elapsed)  # fmt: skip
        reason = _last_line(stderr) or "still there after rm"
        outcome.file_errors = {p: f"cannot delete {p!r}: {reason}" for p in left}
        if result.returncode != 0:
            outcome.error = f"rm on {self.describe()} exited with {result.returncode}: {stderr.strip()[-300:]}"
        elif left:
            outcome.error = f"{len(left)} files could not be deleted on {self.describe()}: {reason}"
        return outcome

    # -- whole trees (the optional features of :mod:`.tree`) ----------------------------------

    def _remote_spec_under(self, prefix: str) -> str:
        """``<basedir>/<prefix>/`` as rsync names it (the source of a tree pull)."""
        return "/".join(p for p in (self._safe_basedir.rstrip("/"), prefix.strip("/")) if p) + "/"

    def _tree_argv(self, rules: TreeRules, *, dry_run: bool, itemize: bool = False, checksums: bool = False):
        """The one rsync option list of a tree pull: its dry run, its live run and its
        verification differ only by ``--dry-run``, ``--itemize-changes`` and ``--checksum``."""
        rsh = self._rsh()
        extra = [*(["--rsh", rsh] if rsh else []), "--recursive", "--times", f"--partial-dir={rules.partial_dir}"]
        if rules.size_only:
            extra.append("--size-only")
        extra += [f"--include={name}" for name in rules.keep_dotfiles]
        if rules.exclude_dotfiles:
            extra.append("--exclude=.*")
        extra += ["--stats", "--no-human-readable"]
        if dry_run:
            extra.append("--dry-run")
        if itemize:
            extra.append("--itemize-changes")
        if checksums:
            extra.append("--checksum")
        return rsync_base_argv(compress=self.compress, bwlimit=self.bwlimit, chmod=rules.chmod,
                               timeout=RSYNC_IO_TIMEOUT, rsync_program=self.rsync_program, extra=extra)  # fmt: skip

    def _tree_rsync(self, argv: list[str], prefix: str, outcome: TreeOutcome, timeout: float, cancel):
        """Run a tree rsync; fill ``outcome`` from its exit status and ``--stats``."""
        try:
            result = self._run_rsync(argv, None, timeout, cancel, pull=True)
        except CommandTimeout as exc:
            outcome.ok, outcome.error, outcome.timed_out, outcome.elapsed = False, str(exc), True, timeout
            return None
        except CommandCancelled:
            raise
        except CommandError as exc:
            outcome.ok, outcome.error = False, str(exc)
            return None
        outcome.returncode, outcome.elapsed = result.returncode, result.elapsed
        stats = parse_rsync_stats(result.stdout)
        outcome.files_total, outcome.bytes_total = stats.get("files", 0), stats.get("bytes", 0)
        outcome.files_sent, outcome.bytes_sent = stats.get("files_sent", 0), stats.get("bytes_sent", 0)
        if result.returncode != 0:
            outcome.ok = False
            if "No such file or directory" in result.stderr and prefix.strip("/") in result.stderr:
                outcome.error = f"{prefix} does not exist on {self.describe()}: {result.describe()}"
            else:
                outcome.error = result.describe()
        return result

    def _local_target(self, local_dir: str) -> str:
        target = local_dir.rstrip("/") or "/"
        return (target if target.startswith("/") else "./" + target) + "/"

    def pull_tree(self, prefix, local_dir, rules, *, dry_run=False, timeout, cancel=None) -> TreeOutcome:
        """One rsync of ``<basedir>/<prefix>/`` into ``local_dir`` (see :func:`.tree.pull_tree`)."""
        check_relative_paths([prefix])
        if not dry_run:
            os.makedirs(local_dir, exist_ok=True)
        outcome = TreeOutcome(ok=True, dry_run=dry_run)
        argv = [
            *self._tree_argv(rules, dry_run=dry_run),
            self._remote_spec_under(prefix),
            self._local_target(local_dir),
        ]
        log.debug("rsync of tree %s from %s%s", prefix, self.describe(), " (dry run)" if dry_run else "")
        self._tree_rsync(argv, prefix, outcome, timeout, cancel)
        return outcome

    def compare_tree(self, prefix, local_dir, rules, *, checksums=False, timeout, cancel=None) -> TreeOutcome:
        """An rsync dry run of the same pull, itemized: every file it would still send is
        a difference (``--checksum``: compared by content, read on both sides)."""
        check_relative_paths([prefix])
        outcome = TreeOutcome(ok=True, dry_run=True)
        if not os.path.isdir(local_dir):
            outcome.ok, outcome.error = False, f"{local_dir} does not exist"
            return outcome
        argv = [*self._tree_argv(rules, dry_run=True, itemize=True, checksums=checksums),
                self._remote_spec_under(prefix), self._local_target(local_dir)]  # fmt: skip
        result = self._tree_rsync(argv, prefix, outcome, timeout, cancel)
        if result is not None:
            for flags, name in parse_itemized(result.stdout):
                if flags.startswith(">f"):
                    why = "missing" if "+++" in flags else "checksum differs" if flags[2] == "c" else "size differs"
                    outcome.note_difference(name, why)
        return outcome

    def list_dirs(self, prefix="", *, timeout, cancel=None) -> list[str]:
        """One ``rsync --list-only`` of ``<basedir>/<prefix>/`` (works on hosts that allow
        rsync but no shell, as ASSyncy's epnalert listed ``/data/<beamline>/``)."""
        if prefix.strip("/"):
            check_relative_paths([prefix])
        rsh = self._rsh()
        argv = rsync_base_argv(timeout=RSYNC_IO_TIMEOUT, rsync_program=self.rsync_program,
                               extra=[*(["--rsh", rsh] if rsh else []), "--list-only", "--no-human-readable",
                                      self._remote_spec_under(prefix)])  # fmt: skip
        try:
            result = self._run_rsync(argv, None, timeout, cancel, pull=True)
        except CommandTimeout as exc:
            raise RemoteUnreachable(f"listing {self.describe()} did not answer: {exc}") from None
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                where = "/".join(p for p in (self.basedir, prefix.strip("/")) if p)
                raise DestinationError(f"{where} does not exist on {self.describe()}")
            raise CommandError(f"listing {self.describe()}: {result.describe()}", result)
        return sorted(name for kind, name in parse_list_only(result.stdout) if kind == "d" and name != ".")


class LocalRsyncBackend(RsyncBackend):
    """Files live in a directory on this machine (rsync without a remote shell)."""

    def describe(self) -> str:
        return self.basedir


class SshRsyncBackend(RsyncBackend):
    """Files live in ``[user@]host:basedir`` over ssh (batch mode, timeouts, pinned host keys)."""

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

    def _remote_spec(self) -> str:
        return self._ssh.rsync_remote(self.basedir + "/")

    def _remote_spec_under(self, prefix: str) -> str:
        return self._ssh.rsync_remote("/".join(p for p in (self.basedir.rstrip("/"), prefix.strip("/")) if p) + "/")

    def _command_argv(self, argv):
        ssh = self._ssh
        return [ssh.ssh_program, *ssh.options(), *self._mux_options(), "--", ssh.destination, remote_command(argv)]

    @contextlib.contextmanager
    def connection(self, cancel: threading.Event | None = None):
        """One ssh connection (an OpenSSH ControlMaster) shared by every command run
        inside: the first command's ssh becomes the master, the others open a session on
        it in a few ms instead of a full handshake each. The master is closed on exit, and
        closes itself after :attr:`CONTROL_PERSIST` idle seconds if the agent is killed.
        An unreachable host still fails the first command (RemoteUnreachable)."""
        if self._control_path is not None:  # nested: already shared
            yield self
            return
        sockdir = tempfile.mkdtemp(prefix=f"hpcsync-ssh-{self.owner or 'any'}-{os.getpid()}-")
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

    def _unreachable_message(self, stderr: str, fallback: str) -> str:
        why = ssh_diagnosis(stderr)
        if why is None:
            # ssh logs "Timeout, server not responding" only at INFO level: a connection that
            # dies with nothing from ssh is a host that stopped answering its keep-alives.
            waited = self._ssh.server_alive_interval * self._ssh.server_alive_count
            why = (
                f"the host is not responding (the connection was lost after about {waited} s without an answer to "
                f"ssh's keep-alives: is the host frozen or the network down?); {fallback}"
            )
        return f"{self.describe()} is unreachable: {why}"

    def _unreachable(self, returncode: int, stderr: str) -> bool:
        # ssh exits 255 on its own errors; rsync reports a dead connection as 255, or as a
        # protocol/socket error (12, 10, 35) with ssh's complaint in stderr.
        if returncode == 255:
            return True
        text = stderr.lower()
        return returncode in (10, 12, 35) and any(
            s in text for s in ("ssh:", "connection", "host key", "permission denied (publickey")
        )


# -- output parsing ---------------------------------------------------------------------------

_RSYNC_ERROR_RE = re.compile(r'^rsync: (?:\[\w+\] )?.*?"(?P<path>[^"]+)".*?(?:failed|error).*$', re.IGNORECASE)
# A file written to the temp dir that could not be put in place: its destination is named
# relative to the base directory (the receiver's working directory).
_RSYNC_RENAME_RE = re.compile(r'^rsync: (?:\[\w+\] )?(?:rename|copy) "[^"]+" -> "(?P<path>[^"]+)": .+$')
_FULL_MARKERS = ("No space left on device", "Disk quota exceeded")


class _StagedPut(PreparedPut):
    """A batch staged for rsync: the symlink tree, its top-level entries, the files that
    could not be staged. ``close()`` removes the tree (only symlinks and directories)."""

    def __init__(self, items: list[Item], tree: str):
        super().__init__(items)
        self.tree = tree
        self.tops: list[bytes] | None = None
        self.skipped: dict[str, str] = {}

    def close(self) -> None:
        self.tops = None
        shutil.rmtree(self.tree, ignore_errors=True)


class _StagingTree:
    """The symlink tree of one put, built with directory file descriptors: every call takes
    one path component, so a remote path of up to rsync's own limit (4,095 bytes, relative
    to the tree) can be staged however long the temp directory's own path is."""

    #: Directory descriptors kept open (most recently used); a batch of 5,000 files in as
    #: many directories must not run out of file descriptors.
    OPEN_DIRS = 64

    def __init__(self, root: str):
        self._root = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()

    def _dir(self, rel: str) -> int:
        if not rel:
            return self._root
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        parent, _sep, name = rel.rpartition("/")
        parent_fd = self._dir(parent)
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        self._fds[rel] = fd
        while len(self._fds) > self.OPEN_DIRS:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def link(self, remote_path: str, target: str) -> None:
        parts = [p for p in remote_path.split("/") if p not in ("", ".")]
        os.symlink(target, parts[-1], dir_fd=self._dir("/".join(parts[:-1])))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self._root)


def _files_from_entry(path: str) -> bytes:
    """A ``--files-from`` entry: rsync reads a line that starts with ``#`` or ``;`` as a
    comment even with ``--from0`` (and then reports success without the file); ``./``
    first keeps every name a name, and marks where the relative path starts."""
    return b"./" + os.fsencode(path)


def _rsync_error_lines(stderr: str) -> list[tuple[str, str]]:
    """``(path, line)`` for each rsync error line that names a path in double quotes."""
    found = []
    for line in stderr.splitlines()[:2000]:
        m = _RSYNC_RENAME_RE.match(line.strip()) or _RSYNC_ERROR_RE.match(line.strip())
        if m:
            found.append((m.group("path"), line.strip()[:300]))
    return found


def _destination_full(stderr: str) -> str | None:
    """rsync's line saying the destination is out of space or quota, if any."""
    for line in stderr.splitlines():
        if any(marker in line for marker in _FULL_MARKERS):
            return line.strip()[:300]
    return None


def _dot_slash_list(paths: Sequence[str]) -> bytes:
    """``paths`` for a remote command's stdin: NUL-terminated, each prefixed ``./``, so that
    no name reads as an option or as md5sum's ``-`` (standard input), even after ``--``."""
    return b"".join(b"./" + os.fsencode(p) + b"\0" for p in paths)


def _strip_dot_slash(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def parse_checksum_output(stdout: bytes, kind: str = "md5") -> dict[str, str]:
    """``{name: hex digest}`` from GNU md5sum/sha1sum/sha256sum output.

    Each line is ``<digest>  <name>`` (``*`` instead of the second space in binary mode).
    When a name contains a backslash, newline or carriage return, the line starts with
    ``\\`` and they are escaped as ``\\\\``, ``\\n``, ``\\r``. Names are decoded from bytes
    with ``surrogateescape``, as ``os.fsdecode`` does. Lines that are not a digest line
    (error messages) are skipped.
    """
    width = CHECKSUM_KINDS.get(kind)
    if width is None:
        raise ValueError(f"checksum kind {kind!r} is not one of {', '.join(CHECKSUM_KINDS)}")
    found: dict[str, str] = {}
    for line in stdout.split(b"\n"):
        if not line:
            continue
        escaped = line.startswith(b"\\")
        if escaped:
            line = line[1:]
        digest, sep, name = line[:width], line[width : width + 2], line[width + 2 :]
        if len(digest) != width or sep not in (b"  ", b" *"):
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


def parse_md5sum_output(stdout: bytes) -> dict[str, str]:
    """:func:`parse_checksum_output` of md5sum's output."""
    return parse_checksum_output(stdout, "md5")


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


def parse_find_output(stdout: bytes) -> list[Entry]:
    """Entries from ``find <start> -printf '%p\\0%s\\0%T@\\0'`` run in the base directory.

    Every field ends with a NUL (the one byte a name cannot hold), so any name parses; the
    leading ``./`` of each path is removed. Output that does not end on a whole entry was
    cut short and is refused (ValueError) rather than read partly.
    """
    fields = stdout.split(b"\0")
    if fields[-1] != b"" or (len(fields) - 1) % 3:
        raise ValueError("the file listing was cut short (not a whole number of entries)")
    entries = []
    for i in range(0, len(fields) - 1, 3):
        raw, size, mtime = fields[i : i + 3]
        path = os.fsdecode(raw)
        while path.startswith("./"):
            path = path[2:]
        entries.append(Entry(path, int(size), float(mtime)))
    return entries


_STATS = {
    "files": re.compile(r"^Number of files: ([\d,]+)(?: \(reg: ([\d,]+))?", re.M),
    "files_sent": re.compile(r"^Number of regular files transferred: ([\d,]+)", re.M),
    "bytes": re.compile(r"^Total file size: ([\d,]+)", re.M),
    "bytes_sent": re.compile(r"^Total transferred file size: ([\d,]+)", re.M),
}


def parse_rsync_stats(stdout: str) -> dict[str, int]:
    """The counts of rsync's ``--stats`` block: ``files`` (regular files in the source),
    ``files_sent``, ``bytes`` and ``bytes_sent`` (missing ones are left out)."""
    found = {}
    for key, pattern in _STATS.items():
        m = pattern.search(stdout)
        if m:
            value = m.group(2) if key == "files" and m.group(2) else m.group(1)
            found[key] = int(value.replace(",", ""))
    return found


_ITEM_RE = re.compile(r"^([<>ch.*][fdLDS][.+?a-zA-Z]{9}) (.+)$")
_LIST_RE = re.compile(r"^([-dlcbps])[-rwxsStT]{9}\S*\s+[\d,]+\s+\S+\s+\S+ (.+)$")


def _rsync_unescape(name: str) -> str:
    """A name as rsync printed it, where unprintable bytes are ``\\#ooo`` (octal)."""
    if "\\#" not in name:
        return name
    raw = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), os.fsencode(name))
    return os.fsdecode(raw)


def parse_itemized(stdout: str) -> list[tuple[str, str]]:
    """``(flags, name)`` of each ``--itemize-changes`` line (names unescaped)."""
    return [(m.group(1), _rsync_unescape(m.group(2))) for m in map(_ITEM_RE.match, stdout.splitlines()) if m]


def parse_list_only(stdout: str) -> list[tuple[str, str]]:
    """``(kind, name)`` of each ``rsync --list-only`` line: kind ``d`` directory, ``-`` file,
    ``l`` symlink ... (names unescaped)."""
    return [(m.group(1), _rsync_unescape(m.group(2))) for m in map(_LIST_RE.match, stdout.splitlines()) if m]


def _move_into_place(src: str, dst: str, *, copy: bool = False) -> None:
    """Rename ``src`` to ``dst`` (creating its directory). With ``copy``, or across
    filesystems, copy to a temporary name next to ``dst`` first and rename that, so ``dst``
    is never seen half written."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if not copy:
        try:
            os.replace(src, dst)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", dir=os.path.dirname(os.path.abspath(dst)))
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
