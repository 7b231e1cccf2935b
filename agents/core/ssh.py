"""ssh and rsync command building: batch mode, timeouts, keys, ports, host-key policy.

Every ssh an agent runs (directly, or as rsync's remote shell) is built here, so that ssh
never prompts (``BatchMode=yes``), never waits forever for a dead host
(``ConnectTimeout``, ``ServerAliveInterval``) and checks host keys unless the operator
turned that off explicitly.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

#: Host-key policies an operator can choose.
#: ``yes``: the host must already be in known_hosts (the default, as ssh itself).
#: ``accept-new``: trust on first use, refuse a changed key.
#: ``off``: no checking at all (test rigs only; logged as a warning by agents).
HOST_KEY_POLICIES = ("yes", "accept-new", "off")

_HOST_RE = re.compile(r"^(?:(?P<user>[^@\s/:]+)@)?(?P<host>[A-Za-z0-9._\-]+|\[[0-9A-Fa-f:.]+\])$")


class SshConfigError(ValueError):
    """An ssh destination or option is malformed."""


@dataclass(frozen=True)
class SshOptions:
    """How to reach one remote host over ssh."""

    destination: str
    port: int | None = None
    key_file: str | None = None
    known_hosts_file: str | None = None
    host_key_checking: str = "yes"
    connect_timeout: int = 10
    server_alive_interval: int = 15
    server_alive_count: int = 3
    ssh_program: str = "ssh"

    def __post_init__(self) -> None:
        if not _HOST_RE.match(self.destination or ""):
            raise SshConfigError(
                f"ssh host {self.destination!r} is not of the form [user@]host (no spaces, slashes or options)"
            )
        if self.host_key_checking not in HOST_KEY_POLICIES:
            raise SshConfigError(
                f"host key checking {self.host_key_checking!r} is not one of {', '.join(HOST_KEY_POLICIES)}"
            )
        if self.port is not None and not 0 < int(self.port) < 65536:
            raise SshConfigError(f"ssh port {self.port!r} is not between 1 and 65535")
        if self.connect_timeout <= 0:
            raise SshConfigError("ssh connect timeout must be positive")

    @property
    def user(self) -> str | None:
        return _HOST_RE.match(self.destination).group("user")

    @property
    def host(self) -> str:
        return _HOST_RE.match(self.destination).group("host").strip("[]")

    def options(self) -> list[str]:
        """The ``-o``/``-p``/``-i`` arguments, without the program or destination."""
        opts = [
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={int(self.connect_timeout)}",
            "-o", f"ServerAliveInterval={int(self.server_alive_interval)}",
            "-o", f"ServerAliveCountMax={int(self.server_alive_count)}",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if self.host_key_checking == "off":
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        else:
            opts += ["-o", f"StrictHostKeyChecking={self.host_key_checking}"]
            if self.known_hosts_file:
                opts += ["-o", f"UserKnownHostsFile={self.known_hosts_file}"]
        if self.key_file:
            opts += ["-i", self.key_file, "-o", "IdentitiesOnly=yes"]
        if self.port:
            opts += ["-p", str(int(self.port))]
        return opts

    def ssh_argv(self, remote_argv: Sequence[str]) -> list[str]:
        """argv that runs ``remote_argv`` on the remote host.

        The remote side always goes through a shell, so each word is quoted: file names
        with spaces, quotes, newlines or leading dashes arrive as one argument each.
        """
        return [self.ssh_program, *self.options(), "--", self.destination, remote_command(remote_argv)]

    def rsync_rsh(self) -> str:
        """The string for ``rsync -e`` / ``--rsh`` (rsync splits it like a shell)."""
        return shlex.join([self.ssh_program, *self.options()])

    def rsync_remote(self, path: str) -> str:
        """``dest:path`` for rsync. Paths are passed with ``--protect-args`` (``-s``)."""
        return f"{self.destination}:{path}"


def remote_command(argv: Sequence[str]) -> str:
    """Quote ``argv`` into one string for the remote shell."""
    if not argv:
        raise ValueError("remote command is empty")
    return shlex.join(str(a) for a in argv)


def rsync_base_argv(
    *,
    ssh: SshOptions | None = None,
    compress: bool = False,
    bwlimit: str | None = None,
    chmod: str | None = None,
    extra: Sequence[str] = (),
    rsync_program: str = "rsync",
    timeout: int | None = None,
) -> list[str]:
    """Start of an rsync argv with the options every hpcsync transfer shares.

    ``--protect-args`` keeps remote file names out of the remote shell, so hostile names
    are transferred as they are. ``--timeout`` makes rsync itself give up on a stalled
    connection (the caller's process timeout is the hard limit).
    """
    argv = [rsync_program, "--protect-args"]
    if compress:
        argv.append("--compress")
    if bwlimit:
        if not re.fullmatch(r"\d+(\.\d+)?[KMGkmg]?", str(bwlimit)):
            raise SshConfigError(f"bwlimit {bwlimit!r} is not a number with an optional K/M/G unit")
        argv.append(f"--bwlimit={bwlimit}")
    if chmod:
        if not re.fullmatch(r"[ugoaDF]*[-+=][rwxXst]*(,[ugoaDF]*[-+=][rwxXst]*)*", chmod):
            raise SshConfigError(f"chmod {chmod!r} is not an rsync --chmod specification")
        argv += ["--perms", f"--chmod={chmod}"]
    if timeout:
        argv.append(f"--timeout={int(timeout)}")
    if ssh is not None:
        argv += ["--rsh", ssh.rsync_rsh()]
    argv += list(extra)
    return argv


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
