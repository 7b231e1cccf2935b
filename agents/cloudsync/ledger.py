"""CloudSync's queries: the local hash cache and each target's last push and pull."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, select

from hpcsync.db.dialect import chunked, insert_ignore
from hpcsync.db.models import CloudSyncHash, CloudSyncTarget, path_hash


@dataclass(frozen=True)
class Signature:
    """What says a file is unchanged since it was hashed (users cannot set ctime)."""

    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int

    @classmethod
    def of(cls, st) -> Signature:
        ino = st.st_ino if st.st_ino < 2**63 else st.st_ino - 2**64
        return cls(st.st_size, st.st_mtime_ns, ino, st.st_ctime_ns)


def scope_of(local_dir: str) -> str:
    return hashlib.sha1(local_dir.encode("utf-8", "surrogateescape")).hexdigest()


def load_hashes(db, scope: str) -> dict[str, tuple[Signature, str]]:
    """``{relative path: (signature, sha256)}`` for every cached file under ``scope``: one query."""
    with db.reading() as s:
        rows = s.execute(
            select(CloudSyncHash.path, CloudSyncHash.size, CloudSyncHash.mtime_ns, CloudSyncHash.ino,
                   CloudSyncHash.ctime_ns, CloudSyncHash.sha256).where(CloudSyncHash.scope == scope)
        )  # fmt: skip
        return {r.path: (Signature(r.size, r.mtime_ns, r.ino, r.ctime_ns), r.sha256) for r in rows}


def save_hashes(db, scope: str, fresh: dict[str, tuple[Signature, str]], gone: Iterable[str] = ()) -> None:
    """Replace the rows of ``fresh`` paths and drop those of ``gone`` ones (one transaction)."""
    replace = list(fresh)
    drop = [path_hash(p) for p in (*replace, *gone)]
    if not drop:
        return
    now = time.time()
    with db.session() as s:
        for chunk in chunked(drop):
            s.execute(delete(CloudSyncHash).where(CloudSyncHash.scope == scope, CloudSyncHash.path_hash.in_(chunk)))
        rows = [
            {"scope": scope, "path_hash": path_hash(p), "path": p, "size": sig.size, "mtime_ns": sig.mtime_ns,
             "ino": sig.ino, "ctime_ns": sig.ctime_ns, "sha256": sha, "hashed_at": now}
            for p, (sig, sha) in fresh.items()
        ]  # fmt: skip
        for chunk in chunked(rows, 500):
            insert_ignore(s, CloudSyncHash, chunk)


def target_state(db, instance_id: str, name: str) -> CloudSyncTarget | None:
    with db.reading() as s:
        row = s.scalar(select(CloudSyncTarget).where(CloudSyncTarget.instance_id == instance_id,
                                                     CloudSyncTarget.name == name))  # fmt: skip
        if row is not None:
            s.expunge(row)
        return row


def record_target(db, instance_id: str, name: str, local_dir: str, remote: str, **fields) -> None:
    """Upsert the target's row with ``fields`` (e.g. ``last_push_at=...``)."""
    with db.session() as s:
        insert_ignore(s, CloudSyncTarget, [{"instance_id": instance_id, "name": name, "local_dir": local_dir,
                                            "remote": remote, "legacy_imported": False}])  # fmt: skip
        row = s.scalar(select(CloudSyncTarget).where(CloudSyncTarget.instance_id == instance_id,
                                                     CloudSyncTarget.name == name))  # fmt: skip
        row.local_dir, row.remote = local_dir, remote
        for key, value in fields.items():
            setattr(row, key, value)
