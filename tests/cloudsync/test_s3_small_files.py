"""The S3 backend's path for small files (what CloudSync's pushes are mostly made of), on the
real S3 server: one PutObject per file from the backend's pool, 100-continue only for large
bodies, fast listing timestamps, and a stop that leaves no partial object."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from hpcsync.agents.core.process import CommandCancelled
from hpcsync.agents.core.transfer import Item
from hpcsync.agents.core.transfer.s3 import EXPECT_CONTINUE_BYTES, SMALL_PUT_BYTES, S3Backend

pytestmark = pytest.mark.integration
TIMEOUT = 120


def _backend(s3_server, tmp_path) -> tuple[S3Backend, str]:
    bucket = s3_server.make_bucket()
    creds = s3_server.credentials_file(tmp_path / "creds")
    return S3Backend(f"s3://{bucket}/p", endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                     credentials_file=str(creds)), bucket  # fmt: skip


def test_small_and_large_files_land_whole_with_their_metadata_and_only_large_ones_wait_for_100_continue(
    s3_server, tmp_path
):
    backend, bucket = _backend(s3_server, tmp_path)
    expects: dict[str, str | None] = {}

    def seen(request, **kwargs):  # what each PUT asked for, as it leaves
        if request.method == "PUT":
            value = request.headers.get("Expect")
            expects[request.url.rsplit("/", 1)[-1]] = value.decode() if isinstance(value, bytes) else value

    backend._client.meta.events.register("before-send.s3", seen)
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"empty": 0, "tiny": 10, "small": EXPECT_CONTINUE_BYTES - 1, "edge": SMALL_PUT_BYTES,
             "large": SMALL_PUT_BYTES + 1, "big": 3 << 20}  # fmt: skip
    items = []
    for name, size in sizes.items():
        data = os.urandom(size)
        (src / name).write_bytes(data)
        items.append(Item(str(src / name), f"d/{name}", size, {"sha256": hashlib.sha256(data).hexdigest()}))
    outcome = backend.put(items, timeout=TIMEOUT)
    assert outcome.ok and not outcome.file_errors, outcome
    stored = s3_server.bucket_dir(bucket) / "p" / "d"
    for name in sizes:
        assert (stored / name).read_bytes() == (src / name).read_bytes(), name
    sums = backend.checksum([f"d/{n}" for n in sizes], "sha256", timeout=TIMEOUT)
    assert sums == {f"d/{n}": hashlib.sha256((src / n).read_bytes()).hexdigest() for n in sizes}
    assert expects["empty"] is None and expects["tiny"] is None and expects["small"] is None
    assert expects["edge"] == expects["large"] == expects["big"] == "100-continue"

    # listing times parsed the fast way are the ones botocore's own parser gives
    mine = {e.path: e.mtime for e in backend.list(timeout=TIMEOUT)}
    theirs = {o["Key"][2:]: o["LastModified"].timestamp()
              for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}  # fmt: skip
    assert mine == theirs and len(mine) == len(sizes)


def test_a_stop_during_many_small_puts_sends_no_partial_object_and_raises(s3_server, tmp_path):
    backend, bucket = _backend(s3_server, tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    items = []
    for i in range(1500):
        (src / f"f{i}").write_bytes(os.urandom(20_000))
        items.append(Item(str(src / f"f{i}"), f"many/f{i}", 20_000))
    cancel = threading.Event()
    sent = []

    def count(**kwargs):  # the operator's stop arrives after the 50th object
        sent.append(1)
        if len(sent) >= 50:
            cancel.set()

    backend._client.meta.events.register("after-call.s3.PutObject", count)
    with pytest.raises(CommandCancelled):
        backend.put(items, timeout=TIMEOUT, cancel=cancel)
    landed = list((s3_server.bucket_dir(bucket) / "p" / "many").iterdir())
    assert 50 <= len(landed) < len(items)  # it stopped part-way
    for path in landed:  # and whatever arrived is whole
        assert path.read_bytes() == (src / path.name).read_bytes(), path.name
    # nothing keeps arriving after the call returned
    assert len(list((s3_server.bucket_dir(bucket) / "p" / "many").iterdir())) == len(landed)
