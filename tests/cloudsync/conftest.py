"""CloudSync fixtures: an engine on a local-directory remote or on the suite's S3 server."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcsync.agents.cloudsync.engine import CloudSyncEngine, Settings
from hpcsync.db import open_database

#: File names that break naive tools: spaces, a newline, non-ASCII, a leading dash, shell syntax.
HOSTILE_NAMES = ("with space.txt", "new\nline.txt", "ünïcødé ✓.txt", "-dash", "sub dir/$(touch x).txt")
#: The same for the test S3 server. rclone serve s3 stores a key with a control character
#: as is, but lists it re-encoded (``new␊line.txt``) once it reads the directory from disk
#: again, which it may do between two runs: a later push then sees the object missing and
#: sends it again. Real S3 keeps such keys; the S3 rig uses an URL-hostile name instead.
S3_HOSTILE_NAMES = ("with space.txt", "new%0Aline +?.txt", "ünïcødé ✓.txt", "-dash", "sub dir/$(touch x).txt")


@dataclass
class Rig:
    tmp: Path
    remote: str
    stored: Path  # where the remote's objects are files on this machine (<...>/sync/<user>)
    backend_options: dict
    db: object
    hostile: tuple[str, ...] = HOSTILE_NAMES

    def engine(self, home: Path, *, passphrase: str | None = None, config: str = "cfg", **kw) -> CloudSyncEngine:
        settings = Settings(str(self.tmp / config), self.remote, "alice", home=str(home), passphrase=passphrase,
                            backend_options=dict(self.backend_options), **kw)  # fmt: skip
        return CloudSyncEngine(settings, lambda: self.db)


@pytest.fixture(params=["localdir", pytest.param("s3", marks=pytest.mark.integration)])
def rig(request, tmp_path) -> Rig:
    db = open_database(f"sqlite:///{tmp_path / 'hpcsync.db'}")
    if request.param == "localdir":
        remote = tmp_path / "remote"
        remote.mkdir()
        yield Rig(tmp_path, str(remote), remote / "sync" / "alice", {}, db)
    else:
        s3 = request.getfixturevalue("s3_server")
        bucket = s3.make_bucket()
        creds = s3.credentials_file(tmp_path / "s3.credentials")
        options = {"endpoint_url": s3.endpoint_url, "region": s3.region, "credentials_file": str(creds)}
        yield Rig(tmp_path, f"s3://{bucket}", s3.bucket_dir(bucket) / "sync" / "alice", options, db, S3_HOSTILE_NAMES)
    db.dispose()


@pytest.fixture
def passphrase(tmp_path) -> str:
    path = tmp_path / "passphrase"
    path.write_text("correct horse battery staple\n")
    os.chmod(path, 0o600)
    return f"file:{path}"
