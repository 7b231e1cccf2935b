"""The S3 backend's path for small files (what CloudSync's pushes are mostly made of), on the
real S3 server: one PutObject per file from the backend's pool, 100-continue only for large
bodies, fast listing timestamps, and a stop that leaves no partial object."""

from __future__ import annotations

import hashlib
import http.client
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
    s3_server, tmp_path, monkeypatch
):
    backend, bucket = _backend(s3_server, tmp_path)
    expects: dict[str, str | None] = {}

    def seen(request, **kwargs):  # what each PUT asked for, as it leaves
        if request.method == "PUT":
            value = request.headers.get("Expect")
            expects[request.url.rsplit("/", 1)[-1]] = value.decode() if isinstance(value, bytes) else value

    backend._client.meta.events.register("before-send.s3", seen)
    lean: dict[str, dict] = {}  # what the lean path sent (http.client; botocore goes through urllib3)
    sending = http.client.HTTPConnection.request

    def lean_sent(conn, method, url, body=None, headers=None, **kw):
        if method == "PUT":
            lean[url.rsplit("/", 1)[-1]] = {k.lower(): v for k, v in (headers or {}).items()}
        return sending(conn, method, url, body, headers or {}, **kw)

    monkeypatch.setattr(http.client.HTTPConnection, "request", lean_sent)
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
    # bodies under the 100-continue size go the lean way (signed, sha256 in metadata, no Expect);
    # the rest through boto3, asking for 100-continue
    assert sorted(lean) == ["empty", "small", "tiny"] and not {"empty", "small", "tiny"} & set(expects)
    for name, headers in lean.items():
        assert "expect" not in headers and headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
        assert headers["x-amz-meta-sha256"] == items[list(sizes).index(name)].metadata["sha256"]
        assert headers["x-amz-content-sha256"] == items[list(sizes).index(name)].metadata["sha256"]
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
    stored = s3_server.bucket_dir(bucket) / "p" / "many"
    done = threading.Event()

    def watch():  # the operator's stop arrives once 50 objects are on the server
        while not done.is_set():
            if stored.is_dir() and sum(1 for p in stored.iterdir() if not p.name.startswith(".")) >= 50:
                cancel.set()
                return
            done.wait(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(CommandCancelled) as info:
            backend.put(items, timeout=TIMEOUT, cancel=cancel)
    finally:
        done.set()
        watcher.join()
    landed = list(stored.iterdir())
    assert 50 <= len(landed) < len(items)  # it stopped part-way
    for path in landed:  # and whatever arrived is whole
        assert path.read_bytes() == (src / path.name).read_bytes(), path.name
    # the stop says which objects reached the server whole (a caller records them)
    assert sorted(info.value.sent) == sorted(f"many/{p.name}" for p in landed)
    # nothing keeps arriving after the call returned
    assert len(list(stored.iterdir())) == len(landed)
