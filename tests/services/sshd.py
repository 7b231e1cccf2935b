"""A private OpenSSH server on loopback: a key-only shell user and an sftp-only chroot user.

The server's host key goes into a ``known_hosts`` file, so clients can (and do) check it.
Users and the chroot live at fixed system paths (sshd refuses chroots under /tmp and
key directories that are not root-owned); everything else is in the run's temp dir.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from hpcsync.agents.core import daemon

from . import ServiceError, free_port, log_tail

SHELL_USER = "hsyncuser"
SFTP_USER = "hsftponly"
KEYS_DIR = Path("/etc/ssh/hpcsync_test_keys")
CHROOT_ROOT = Path("/srv/hpcsync-test-sftp")
REMOTE_ROOT = Path("/srv/hpcsync-test-remote")


def _ensure_user(name: str, shell: str, home: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-d", home, "-s", shell, name], check=True, capture_output=True)
    # useradd leaves the account locked; with UsePAM no, sshd then refuses even keys.
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)


@dataclass
class Sshd:
    base: Path
    port: int
    pid: int
    client_key: Path
    known_hosts: Path
    authorized_dir: Path | None = None

    @property
    def shell_destination(self) -> str:
        return f"{SHELL_USER}@127.0.0.1"

    @property
    def sftp_destination(self) -> str:
        return f"{SFTP_USER}@127.0.0.1"

    @property
    def sftp_upload_dir(self) -> Path:
        """Where the sftp-only user's ``/upload`` is on this machine."""
        return CHROOT_ROOT / SFTP_USER / "upload"

    def make_remote_dir(self, name: str | None = None) -> Path:
        """A fresh directory the shell user owns (the remote side of a transfer)."""
        path = REMOTE_ROOT / (name or uuid.uuid4().hex[:12])
        path.mkdir(parents=True, exist_ok=False)
        shutil.chown(path, SHELL_USER, SHELL_USER)
        return path

    def ssh_argv(self) -> list[str]:
        """Client options that reach this server with host-key checking on."""
        return [
            "-p", str(self.port), "-i", str(self.client_key), "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def stop(self) -> None:
        """Stop the server (it can be started again with :meth:`start_again`)."""
        daemon.stop(self.pid, timeout=10)

    def close(self) -> None:
        """Stop for good and remove this server's authorized keys."""
        self.stop()
        if self.authorized_dir is not None:
            shutil.rmtree(self.authorized_dir, ignore_errors=True)

    def start_again(self) -> None:
        """Restart on the same port with the same keys (fault-injection tests)."""
        self.pid = _spawn(self.base, self.port).pid


def _spawn(base: Path, port: int):
    proc = daemon.spawn(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(base / "sshd_config")],
        log_path=base / "sshd.log",
    )
    probe = ["ssh-keyscan", "-p", str(port), "-T", "2", "127.0.0.1"]
    ok = daemon.wait_until(
        lambda: proc.poll() is None and bool(subprocess.run(probe, capture_output=True, timeout=5).stdout),
        30,
        0.1,
    )
    if not ok:
        daemon.stop(proc.pid, timeout=3)
        raise ServiceError(f"sshd did not start on port {port}:\n{log_tail(base / 'sshd.log')}")
    return proc


def _keys_root() -> Path:
    KEYS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    return KEYS_DIR


def start_sshd(base: Path) -> Sshd:
    if os.geteuid() != 0:
        raise ServiceError("the sshd test service needs root (users, chroot, privilege separation)")
    base = Path(base)
    keys = base / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    for name in ("host_ed25519", "client"):
        if not (keys / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    _ensure_user(SHELL_USER, "/bin/bash", f"/home/{SHELL_USER}")
    _ensure_user(SFTP_USER, "/usr/sbin/nologin", "/upload")
    # sshd reads authorized keys as the user, who cannot enter pytest's private temp dir.
    # One directory per server: test runs side by side never overwrite each other's keys.
    authorized = Path(tempfile.mkdtemp(prefix="sshd-", dir=_keys_root()))
    authorized.chmod(0o755)
    for user in (SHELL_USER, SFTP_USER):
        shutil.copy(keys / "client.pub", authorized / user)
        (authorized / user).chmod(0o644)
    chroot = CHROOT_ROOT / SFTP_USER
    chroot.mkdir(mode=0o755, parents=True, exist_ok=True)
    for d in (CHROOT_ROOT, chroot):
        os.chown(d, 0, 0)
        d.chmod(0o755)
    upload = chroot / "upload"
    upload.mkdir(exist_ok=True)
    shutil.chown(upload, SFTP_USER, SFTP_USER)
    REMOTE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    (base / "sshd_config").write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {keys / "host_ed25519"}
PidFile {base / "sshd.pid"}
AuthorizedKeysFile {authorized}/%u
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
StrictModes yes
LogLevel VERBOSE
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp internal-sftp
Match User {SFTP_USER}
  ChrootDirectory {CHROOT_ROOT}/%u
  ForceCommand internal-sftp
  AllowTcpForwarding no
  X11Forwarding no
  PermitTTY no
"""
    )
    check = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(base / "sshd_config")], capture_output=True, text=True)
    if check.returncode != 0:
        raise ServiceError(f"sshd config rejected: {check.stderr.strip()}")
    proc = _spawn(base, port)
    host_pub = (keys / "host_ed25519.pub").read_text().split()
    known = base / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    return Sshd(base, port, proc.pid, keys / "client", known, authorized)
