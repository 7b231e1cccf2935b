"""Faults of a real ssh destination (the suite's sshd, a non-root remote user), driven
through the engine without a hub: what an operator reads in ``last_error`` and
``list_failed``, and that no file pays an attempt for a fault of the destination."""

from __future__ import annotations

import subprocess

import pytest

from hpcsync.agents.core.transfer import make_backend
from hpcsync.agents.suprsync.copier import CopySettings
from hpcsync.agents.suprsync.engine import EngineSettings, SupRsyncEngine

from .conftest import ARCHIVE, status_of, write

pytestmark = pytest.mark.integration


def ssh_engine(ledger, sshd, basedir, tmp_path, known_hosts=None) -> SupRsyncEngine:
    backend = make_backend(
        str(basedir), ssh_host=sshd.shell_destination, ssh_key=str(sshd.client_key), ssh_port=sshd.port,
        known_hosts=str(known_hosts or sshd.known_hosts), connect_timeout=3, owner="sync-test",
    )  # fmt: skip
    settings = EngineSettings(ARCHIVE, str(tmp_path / "root"), "sync-test", copy=CopySettings(ARCHIVE))
    return SupRsyncEngine(lambda: ledger, backend, settings)


def test_permission_denied_in_one_subdir_fails_that_file_alone_and_says_why(ledger, src, sshd, tmp_path):
    remote = sshd.make_remote_dir()
    (remote / "locked").mkdir(mode=0o555)  # owned by root: the remote user cannot write there
    for name in ("ok/a", "locked/b", "ok/c"):
        ledger.add_file(str(write(src / name, name)), name, ARCHIVE)
    engine = ssh_engine(ledger, sshd, remote, tmp_path)
    report = engine.iterate()
    assert status_of(ledger)["copied"] == 2 and status_of(ledger)["pending"] == 1
    assert not report.ok  # degraded while a file fails
    (bad,) = ledger.list_files(ARCHIVE, (), with_errors=True)
    assert bad.remote_path == "locked/b" and bad.failed_copy_attempts == 1
    # rsync's own line for that file, not its generic "some files were not transferred"
    assert "Permission denied" in bad.last_error and "locked/b" in bad.last_error


def test_a_missing_remote_base_dir_costs_no_attempt_and_is_named(ledger, src, sshd, tmp_path):
    """An unmounted destination disk must not turn every pending file into a failed one."""
    remote = sshd.make_remote_dir()
    ledger.add_file(str(write(src / "a", "a")), "16000/a", ARCHIVE)
    engine = ssh_engine(ledger, sshd, remote / "not-mounted" / "base", tmp_path)
    for _ in range(2):
        report = engine.iterate()
        assert not report.ok and report.unreachable
    assert "not-mounted/base does not exist" in engine.last_error["message"]
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.status == "pending" and row.failed_copy_attempts == 0

    (remote / "not-mounted" / "base").mkdir(parents=True)  # mounted again
    subprocess.run(["chown", "-R", "hsyncuser", str(remote / "not-mounted")], check=True)
    assert engine.iterate().ok and status_of(ledger)["copied"] == 1


def test_a_changed_host_key_is_refused_and_said_so(ledger, src, sshd, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    kind, key = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {key}\n")  # the recorded key is not the server's
    remote = sshd.make_remote_dir()
    ledger.add_file(str(write(src / "a", "a")), "a", ARCHIVE)
    engine = ssh_engine(ledger, sshd, remote, tmp_path, known_hosts=known)
    report = engine.iterate()
    assert report.unreachable and not any(remote.iterdir())
    message = engine.last_error["message"]
    assert "host key CHANGED" in message and "man-in-the-middle" in message and str(known) in message
    assert key not in message
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.status == "pending" and row.failed_copy_attempts == 0

    known.write_text("")  # not known at all: refused too (checking is on by default)
    engine.iterate()
    assert "not in known_hosts" in engine.last_error["message"] and not any(remote.iterdir())


def _process_tree(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *(p for c in children for p in _process_tree(int(c)))]


def test_a_host_that_freezes_mid_transfer_is_reported_as_not_responding(ledger, src, sshd, tmp_path):
    """A frozen host used to be reported, after ssh's keep-alives gave up, as rsync's
    'unexplained error (code 255)': ssh says 'not responding' only at a log level it is
    not run with."""
    import os
    import signal
    import threading

    from hpcsync.agents.core.ssh import SshOptions
    from hpcsync.agents.core.transfer import SshRsyncBackend

    remote = sshd.make_remote_dir()
    big = src / "big.dat"
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(os.urandom(1 << 20) * 40)  # 40 MiB at 4 MiB/s: ten seconds in flight
    ledger.add_file(str(big), "16000/big.dat", ARCHIVE)
    ssh = SshOptions(sshd.shell_destination, port=sshd.port, key_file=str(sshd.client_key),
                     known_hosts_file=str(sshd.known_hosts), connect_timeout=3,
                     server_alive_interval=1, server_alive_count=2)  # fmt: skip
    backend = SshRsyncBackend(str(remote), ssh, bwlimit="4M", owner="sync-test")
    settings = EngineSettings(ARCHIVE, str(tmp_path / "root"), "sync-test", copy=CopySettings(ARCHIVE))
    engine = SupRsyncEngine(lambda: ledger, backend, settings)
    frozen: list[int] = []

    def freeze_when_sending() -> None:
        for _ in range(200):
            if any(remote.rglob("*.dat*")) or any((remote / ".hpcsync-tmp-sync-test").glob("*")):
                break
            threading.Event().wait(0.05)
        for pid in _process_tree(sshd.pid):
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)

    freezer = threading.Thread(target=freeze_when_sending)
    freezer.start()
    try:
        report = engine.iterate()
    finally:
        freezer.join()
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert frozen and report.unreachable
    message = engine.last_error["message"]
    assert "is not responding" in message and "keep-alives" in message, message
    (row,) = ledger.get_known_files(ARCHIVE)
    assert row.status == "pending" and row.failed_copy_attempts == 0
