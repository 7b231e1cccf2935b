"""Transfer backends: one small interface (list, put, get, checksum, delete) over the places
agents move files to and from, so sync logic never knows which backend it drives.

- :mod:`.base`: the :class:`Backend` interface and what it takes and returns (:class:`Item`,
  :class:`Entry`, :class:`TransferOutcome`, :class:`RemoteUnreachable`, :class:`DestinationError`);
- :mod:`.rsync`: :class:`LocalRsyncBackend` (a directory here) and :class:`SshRsyncBackend`
  (``[user@]host:dir`` over ssh, one shared connection per :meth:`Backend.connection`).

- :mod:`.localdir`: :class:`LocalDirBackend` (a directory here, pure Python: the embedded
  default where no rsync is wanted);
- :mod:`.s3`: :class:`S3Backend` (``s3://bucket/prefix`` through boto3's transfer manager).

An sftp backend belongs next to them, implementing the same interface.
"""

from __future__ import annotations

from hpcsync.agents.core.ssh import SshOptions

from .base import (
    CHECKSUM_KINDS,
    Backend,
    DestinationError,
    DestinationFull,
    Entry,
    Item,
    PreparedPut,
    PutOutcome,
    RemoteUnreachable,
    TransferOutcome,
)
from .localdir import LocalDirBackend
from .rsync import LocalRsyncBackend, RsyncBackend, SshRsyncBackend
from .s3 import CredentialsRefused, S3Backend, S3ConfigError


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
    owner: str | None = None,
) -> RsyncBackend:
    """The backend an agent's arguments describe: rsync over ssh when a host is given,
    else a local directory. Malformed options raise
    :class:`~hpcsync.agents.core.ssh.SshConfigError` here, not at the first transfer."""
    options = {"compress": compress, "bwlimit": bwlimit, "chmod": chmod, "owner": owner}
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


__all__ = [
    "CHECKSUM_KINDS",
    "Backend",
    "CredentialsRefused",
    "DestinationError",
    "DestinationFull",
    "Entry",
    "Item",
    "LocalDirBackend",
    "LocalRsyncBackend",
    "PreparedPut",
    "PutOutcome",
    "RemoteUnreachable",
    "RsyncBackend",
    "S3Backend",
    "S3ConfigError",
    "SshRsyncBackend",
    "TransferOutcome",
    "make_backend",
]
