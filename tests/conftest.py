"""Shared fixtures: real services on loopback, started once per test session.

Services start lazily (only when a test asks for them), live in the session's temp
directory and are stopped by PID at the end. One that fails to start fails the tests
that need it; nothing is skipped.
"""

from __future__ import annotations

import pytest

from services.hub import start_hub
from services.mariadb import start_mariadb
from services.postgres import start_postgres
from services.sshd import start_sshd


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """A real crossbar router on a free loopback port, with a site config for agents."""
    h = start_hub(tmp_path_factory.mktemp("hub"))
    yield h
    h.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    server = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """OpenSSH on loopback with a shell user and an sftp-only chroot user; host key pinned."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


_db_counter = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request, tmp_path):
    """A fresh, empty database on each backend hpcsync supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hpcsync.db'}"
    name = f"hpcsync_t{next(_db_counter)}"
    server = request.getfixturevalue("postgres" if request.param == "postgresql" else "mariadb")
    return server.create_database(name)
