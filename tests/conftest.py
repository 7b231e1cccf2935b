"""Shared fixtures: real services on loopback, started once per test session.

Services start lazily (only when a test asks for them), live in the session's temp
directory and are stopped by PID at the end. One that fails to start fails the tests
that need it; nothing is skipped.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from services.hub import start_hub
from services.mariadb import start_mariadb
from services.postgres import start_postgres
from services.smtp import start_smtp
from services.sshd import start_sshd


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """A real crossbar router on a free loopback port, with a site config for agents."""
    h = start_hub(tmp_path_factory.mktemp("hub"))
    yield h
    h.stop()


@pytest.fixture(scope="session")
def service_dir():
    """Make a directory for a service that runs as its own user (postgres, mysql, slurm).

    pytest's temp root is private to root (0700), which those users cannot enter; these
    directories live under one world-traversable root removed at the end of the session.
    """
    root = Path(tempfile.mkdtemp(prefix="hpcsync-services-"))
    root.chmod(0o755)

    def make(name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
        path.chmod(0o755)
        return path

    yield make
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(service_dir):
    server = start_postgres(service_dir("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb(service_dir):
    server = start_mariadb(service_dir("mariadb"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """OpenSSH on loopback with a shell user and an sftp-only chroot user; host key pinned."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.close()


_db_counter = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request, tmp_path):
    """A fresh, empty database on each backend hpcsync supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hpcsync.db'}"
    name = f"hpcsync_t{next(_db_counter)}"
    server = request.getfixturevalue("postgres" if request.param == "postgresql" else "mariadb")
    return server.create_database(name)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (rclone serve s3, SigV4 checked) on a free loopback port.

    ``.endpoint_url``, ``.access_key``, ``.secret_key``, ``.region``; ``.make_bucket()``
    creates a fresh bucket, ``.bucket_dir(name)`` is where its objects are files on disk,
    ``.credentials_file(path)`` writes an AWS credentials file, ``.client()`` a boto3 client.
    """
    from services.s3 import start_s3

    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    """A private OpenLDAP slapd on a free loopback port (see ``services/slapd.py``)."""
    from services.slapd import start_slapd

    server = start_slapd(tmp_path_factory.mktemp("slapd"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smtp_server(tmp_path_factory):
    """aiosmtpd on loopback requiring STARTTLS and AUTH (self-signed certificate, its CA file)."""
    server = start_smtp(tmp_path_factory.mktemp("smtp"))
    yield server
    server.stop()


@pytest.fixture
def synchrotron_portal():
    """The Synchrotron portal emulator on a free loopback port (one per test)."""
    from hpcsync.agents.testing.synchrotron_portal import SynchrotronPortalEmulator

    emulator = SynchrotronPortalEmulator().start()
    yield emulator
    emulator.stop()
