"""Remote paths and leftovers from the hostile runs: names rsync reads as comments, paths
at the length limits, and what a SIGKILLed run leaves behind — over a local destination
and over ssh."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

from hpcsync.agents.core.transfer import make_backend
from hpcsync.agents.suprsync.files import RemotePathError

from .conftest import ARCHIVE, files_under, make_engine, md5, status_of, tc_now, write


@pytest.fixture(params=["local", "ssh"])
def destination(request, tmp_path):
    """``(backend factory, remote base dir on this machine)`` for each kind of destination."""
    if request.param == "local":
        base = tmp_path / "dst"
        base.mkdir()
        return (lambda owner=None: make_backend(str(base), owner=owner)), base
    sshd = request.getfixturevalue("sshd")
    base = sshd.make_remote_dir()

    def factory(owner=None):
        return make_backend(
            str(base), ssh_host=sshd.shell_destination, ssh_key=str(sshd.client_key), ssh_port=sshd.port,
            known_hosts=str(sshd.known_hosts), owner=owner,
        )  # fmt: skip

    return factory, base


def test_names_rsync_would_read_as_comments_arrive(ledger, src, tmp_path, destination):
    """rsync reads a --files-from line starting with '#' or ';' as a comment even with
    --from0, and exits 0 without the file: it then failed five attempts as 'not found'."""
    backend, base = destination
    tc = tc_now()
    remotes = ["#hash.dat", ";semicolon.dat", f"{tc}/#nested.dat", f"{tc}/;also nested.dat", "# space.dat"]
    entries = [(str(write(src / f"f{i}", f"payload {i}")), r) for i, r in enumerate(remotes)]
    ledger.add_files(entries, ARCHIVE)
    report = make_engine(ledger, backend(), tmp_path).iterate()
    assert report.ok, report.errors
    assert status_of(ledger)["copied"] == len(remotes)
    assert files_under(base) == {r: md5(local) for local, r in entries}


def test_a_name_longer_than_any_filesystem_takes_is_refused_at_registration(ledger, src):
    f = write(src / "a", "x")
    with pytest.raises(RemotePathError, match=r"component 'nnnn.*is 256 bytes; filesystems take names of at most 255"):
        ledger.add_file(str(f), f"{tc_now()}/{'n' * 256}", ARCHIVE)
    with pytest.raises(RemotePathError, match=r"remote path is 4001 bytes, longer than the 4000 bytes"):
        ledger.add_file(str(f), "/".join(["d" * 199] * 20) + "/x", ARCHIVE)  # 20 * 200 + 1
    assert status_of(ledger) == {}


def test_paths_at_the_limits_are_copied_and_verified(ledger, src, tmp_path, destination):
    """A 255-byte name, and a 4,000-byte path: longer than PATH_MAX once the staging
    directory is in front of it, which used to fail every attempt with 'File name too long'."""
    backend, base = destination
    long_name = f"{tc_now()}/" + "é" * 127 + "x"  # 255 bytes in UTF-8
    deep = "/".join(["d" * 199] * 19) + "/" + "f" * 199  # 19 * 200 + 199 = 3,999 bytes
    deep = deep + "g"
    assert len(deep.encode()) == 4000
    entries = [(str(write(src / "long", "long name")), long_name), (str(write(src / "deep", "deep path")), deep)]
    ledger.add_files(entries, ARCHIVE)
    # A long temp directory in front of the staging tree, as a deep $TMPDIR would give.
    tmp_root = tmp_path / ("t" * 200) / ("t" * 200)
    tmp_root.mkdir(parents=True)
    dest = backend()
    dest.tmp_root = str(tmp_root)
    report = make_engine(ledger, dest, tmp_path).iterate()
    assert report.ok, report.errors
    assert status_of(ledger)["copied"] == 2
    fd = os.open(base, os.O_RDONLY)
    try:  # read the deep file relative to the base dir: its absolute path is past PATH_MAX
        with open(deep, "rb", opener=lambda path, flags: os.open(path, flags, dir_fd=fd)) as got:
            assert got.read() == b"deep path"
    finally:
        os.close(fd)
    assert (base / long_name).read_bytes() == b"long name"


def test_what_a_killed_run_left_is_removed_when_the_next_one_starts(ledger, src, tmp_path, destination):
    """SIGKILL mid-copy leaves the batch's symlink tree in /dev/shm, the ssh control dir in
    $TMPDIR and rsync's partial file on the remote; the next run of the instance removes them."""
    backend, base = destination
    dest = backend(owner="sync-test")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the killed agent's
    tree = tempfile.mkdtemp(prefix=f"hpcsync-put-sync-test-{dead.pid}-", dir=dest.tmp_root)
    os.symlink(str(src), os.path.join(tree, "link"))
    sockdir = tempfile.mkdtemp(prefix=f"hpcsync-ssh-sync-test-{dead.pid}-")
    alive = tempfile.mkdtemp(prefix=f"hpcsync-put-sync-test-{os.getpid()}-", dir=dest.tmp_root)
    other = tempfile.mkdtemp(prefix=f"hpcsync-put-other-{dead.pid}-", dir=dest.tmp_root)
    partial = base / ".hpcsync-tmp-sync-test" / ".a.g3.Xy12Ab"
    partial.parent.mkdir()
    partial.write_bytes(b"half a file")
    owner = base.stat()  # the remote user's, as rsync would have left them
    for p in (partial.parent, partial):
        os.chown(p, owner.st_uid, owner.st_gid)
    try:
        f = write(src / "a.g3", "whole")
        ledger.add_file(str(f), f"{tc_now()}/a.g3", ARCHIVE)
        report = make_engine(ledger, dest, tmp_path).iterate()
        assert report.ok, report.errors
        assert not os.path.exists(tree) and not os.path.exists(sockdir)
        assert os.path.isdir(alive) and os.path.isdir(other)  # a running process's, another instance's
        assert not partial.exists()
        assert files_under(base) == {f"{tc_now()}/a.g3": md5(f)}  # the temp dir holds nothing
        assert dest.list(timeout=30)[0].path == f"{tc_now()}/a.g3"
    finally:
        for d in (alive, other):
            os.rmdir(d)


def test_a_batch_leaves_the_base_directorys_own_mode_alone(ledger, src, tmp_path, destination):
    """rsync recurses from the batch's top-level entries, never from the staging tree's root:
    the base directory keeps the mode its owner gave it."""
    backend, base = destination
    base.chmod(0o750)
    tc = tc_now()
    ledger.add_files([(str(write(src / f"f{i}", str(i))), f"{tc}/d{i % 3}/f{i}") for i in range(9)], ARCHIVE)
    assert make_engine(ledger, backend(owner="sync-test"), tmp_path).iterate().ok
    assert status_of(ledger)["copied"] == 9
    assert base.stat().st_mode & 0o7777 == 0o750
