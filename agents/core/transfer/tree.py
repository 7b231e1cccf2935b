"""Whole remote trees: list the directories under a path, pull a tree, compare a tree.

MxSync pulls an experiment's directory (``/data/<beamline>/<epn>/``) into the project
tree and then checks that nothing is missing; EpnAlert lists the experiment directories.
These are optional features of a backend, as in rclone: a backend that can do one of them
cheaply has a method of that name (:class:`~.rsync.RsyncBackend`: one rsync each;
:class:`~.sftp.SftpBackend`: resumable sftp reads); for any other backend the functions
here do it with the interface every backend has (``list``, ``get``, ``checksum``). Sync
logic calls the functions, never a backend's method directly:

=================================  ===============================================================
``list_dirs(b, prefix)``           names of the directories directly under ``prefix``
``pull_tree(b, prefix, dir, ...)``  make ``dir`` hold the remote tree's files (resumable, no deletes)
``compare_tree(b, prefix, dir)``   what ``dir`` lacks of the remote tree (sizes; md5 when asked)
=================================  ===============================================================
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field

from .base import Backend, Item, check_relative_paths


@dataclass(frozen=True)
class TreeRules:
    """Which files of a remote tree are pulled, and how they land.

    ``exclude_dotfiles`` leaves out every file or directory whose name starts with ``.``,
    at any depth, except the names in ``keep_dotfiles`` (ASSyncy's ``--include .info
    --exclude '.*'``). ``chmod`` is an rsync ``--chmod`` policy for what arrives.
    ``size_only``: a file already there with the same size is not sent again.
    ``partial_dir``: where an interrupted file waits (inside its directory) so the next pull
    resumes it; a partial file never shows under the file's own name.
    """

    keep_dotfiles: tuple[str, ...] = ()
    exclude_dotfiles: bool = False
    chmod: str | None = None
    size_only: bool = False
    partial_dir: str = ".hpcsync-partial"

    def admits(self, path: str) -> bool:
        """True if the relative ``path`` belongs to the tree under these rules."""
        if not self.exclude_dotfiles:
            return True
        return all(not part.startswith(".") or part in self.keep_dotfiles for part in path.split("/") if part)


@dataclass
class TreeOutcome:
    """What a pull or a comparison found and did.

    ``files_total``/``bytes_total``: the source tree under the rules; ``files_sent``/
    ``bytes_sent``: what was (in a dry run: would be) transferred. A comparison names up to
    20 files missing or different at the destination in ``differences`` and counts them
    all in ``n_differences``: the destination is complete when it is 0. ``ok`` is False
    when the operation itself failed (``error`` says why)."""

    ok: bool
    dry_run: bool = False
    error: str | None = None
    returncode: int | None = None
    timed_out: bool = False
    elapsed: float = 0.0
    files_total: int = 0
    bytes_total: int = 0
    files_sent: int = 0
    bytes_sent: int = 0
    n_differences: int = 0
    differences: list[str] = field(default_factory=list)

    def note_difference(self, path: str, why: str) -> None:
        self.n_differences += 1
        if len(self.differences) < 20:
            self.differences.append(f"{path}: {why}")


def file_md5(path: str, cancel: threading.Event | None = None) -> str | None:
    """md5 of a local file, read in 1 MiB blocks (None if a stop was asked meanwhile)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            if cancel is not None and cancel.is_set():
                return None
            digest.update(block)
    return digest.hexdigest()


def _relative(prefix: str, path: str) -> str:
    cut = prefix.strip("/")
    return path[len(cut) + 1 :] if cut else path


def list_dirs(
    backend: Backend, prefix: str = "", *, timeout: float, cancel: threading.Event | None = None
) -> list[str]:
    """Sorted names of the directories directly under ``prefix`` (``""``: the base)."""
    if prefix.strip("/"):
        check_relative_paths([prefix])
    own = getattr(backend, "list_dirs", None)
    if callable(own):
        return own(prefix, timeout=timeout, cancel=cancel)
    names = set()
    for entry in backend.list(prefix, timeout=timeout, cancel=cancel):
        rel = _relative(prefix, entry.path)
        if "/" in rel:
            names.add(rel.split("/", 1)[0])
    return sorted(names)


def pull_tree(
    backend: Backend,
    prefix: str,
    local_dir: str,
    rules: TreeRules,
    *,
    dry_run: bool = False,
    timeout: float,
    cancel: threading.Event | None = None,
) -> TreeOutcome:
    """Make ``local_dir`` hold the files of the remote tree ``prefix`` (as ``rules`` admit
    them): a file missing here, or of another size, is fetched; nothing here is deleted. A
    dry run changes nothing and counts what would be fetched. Raises RemoteUnreachable /
    DestinationError as the backend does; a missing remote ``prefix`` is ``ok=False``."""
    check_relative_paths([prefix])
    own = getattr(backend, "pull_tree", None)
    if callable(own):
        return own(prefix, local_dir, rules, dry_run=dry_run, timeout=timeout, cancel=cancel)
    entries = backend.list(prefix, timeout=timeout, cancel=cancel)
    if not entries:
        return TreeOutcome(ok=False, dry_run=dry_run, error=f"{prefix} is empty or missing on {backend.describe()}")
    outcome = TreeOutcome(ok=True, dry_run=dry_run)
    items = []
    for entry in entries:
        rel = _relative(prefix, entry.path)
        if not rules.admits(rel):
            continue
        outcome.files_total += 1
        outcome.bytes_total += entry.size
        local = os.path.join(local_dir, rel)
        if not (os.path.isfile(local) and os.path.getsize(local) == entry.size):
            items.append(Item(local, entry.path, entry.size))
            outcome.files_sent += 1
            outcome.bytes_sent += entry.size
    if dry_run or not items:
        return outcome
    got = backend.get(items, timeout=timeout, cancel=cancel)
    outcome.ok, outcome.error, outcome.timed_out = got.ok, got.error, got.timed_out
    outcome.returncode, outcome.elapsed = got.returncode, got.elapsed
    return outcome


def compare_tree(
    backend: Backend,
    prefix: str,
    local_dir: str,
    rules: TreeRules,
    *,
    checksums: bool = False,
    timeout: float,
    cancel: threading.Event | None = None,
) -> TreeOutcome:
    """What ``local_dir`` lacks of the remote tree ``prefix`` (under ``rules``): each file
    must be there with its size, and with ``checksums`` its md5. Extra local files are no
    difference."""
    check_relative_paths([prefix])
    own = getattr(backend, "compare_tree", None)
    if callable(own):
        return own(prefix, local_dir, rules, checksums=checksums, timeout=timeout, cancel=cancel)
    outcome = TreeOutcome(ok=True, dry_run=True)
    present = []
    for entry in backend.list(prefix, timeout=timeout, cancel=cancel):
        rel = _relative(prefix, entry.path)
        if not rules.admits(rel):
            continue
        outcome.files_total += 1
        outcome.bytes_total += entry.size
        local = os.path.join(local_dir, rel)
        if not os.path.isfile(local):
            outcome.note_difference(rel, "missing")
        elif os.path.getsize(local) != entry.size:
            outcome.note_difference(rel, f"{os.path.getsize(local)} bytes here, {entry.size} at the source")
        else:
            present.append(entry.path)
    if checksums and present:
        remote = backend.checksum(present, "md5", timeout=timeout, cancel=cancel)
        for path in present:
            if remote.get(path) != file_md5(os.path.join(local_dir, _relative(prefix, path)), cancel):
                outcome.note_difference(_relative(prefix, path), "md5 differs from the source")
    return outcome
