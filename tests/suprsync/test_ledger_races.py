"""Two producers registering the same remote path at the same moment, on the multi-host
backends (SQLite's write lock makes them take turns): neither registration is lost silently."""

from __future__ import annotations

import threading

import pytest

from hpcsync.agents.suprsync import ledger as ledger_module
from hpcsync.agents.suprsync.ledger import SupRsyncFilesManager

from .conftest import ARCHIVE, write

_counter = iter(range(1_000_000))


@pytest.fixture(params=["postgresql", "mariadb"])
def shared_url(request):
    server = request.getfixturevalue("postgres" if request.param == "postgresql" else "mariadb")
    return server.create_database(f"suprsync_race_{next(_counter)}_{request.param[:2]}")


def test_a_path_registered_by_another_producer_meanwhile_is_reported_and_the_last_registration_wins(
    shared_url, src, monkeypatch
):
    ours, theirs = SupRsyncFilesManager(shared_url), SupRsyncFilesManager(shared_url)
    mine = write(src / "mine.g3", "our content")
    other = write(src / "other.g3", "their content, longer")
    real_insert = ledger_module.insert_ignore
    raced = []

    def insert_after_the_other_producer(s, model, rows):
        # The other producer commits the same path after we looked for it, before we insert.
        if not raced:
            raced.append(True)
            done = threading.Thread(target=lambda: theirs.add_file(str(other), "16000/x.g3", ARCHIVE))
            done.start()
            done.join(30)
        return real_insert(s, model, rows)

    monkeypatch.setattr(ledger_module, "insert_ignore", insert_after_the_other_producer)
    try:
        report = ours.add_files([(str(mine), "16000/x.g3")], ARCHIVE)
        assert raced and report.as_dict() == {"added": 0, "requeued": 1, "unchanged": 0, "refused": 0}
        (row,) = ours.get_known_files(ARCHIVE)
        assert row.local_path == str(mine) and row.status == "pending" and row.local_size == len("our content")
        assert "registered at the same time by another producer" in row.last_error
    finally:
        ours.dispose()
        theirs.dispose()


def test_the_same_file_registered_twice_at_once_is_one_row_and_unchanged(shared_url, src, monkeypatch):
    ours, theirs = SupRsyncFilesManager(shared_url), SupRsyncFilesManager(shared_url)
    f = write(src / "same.g3", "one file")
    real_insert = ledger_module.insert_ignore
    raced = []

    def insert_after_the_other_producer(s, model, rows):
        if not raced:
            raced.append(True)
            done = threading.Thread(target=lambda: theirs.add_file(str(f), "16000/same.g3", ARCHIVE))
            done.start()
            done.join(30)
        return real_insert(s, model, rows)

    monkeypatch.setattr(ledger_module, "insert_ignore", insert_after_the_other_producer)
    try:
        report = ours.add_files([(str(f), "16000/same.g3")], ARCHIVE)
        assert report.as_dict() == {"added": 0, "requeued": 0, "unchanged": 1, "refused": 0}
        assert len(ours.get_known_files(ARCHIVE)) == 1
    finally:
        ours.dispose()
        theirs.dispose()
