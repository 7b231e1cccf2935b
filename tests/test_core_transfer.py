"""The transfer backends' contract, run unchanged on every backend: a local directory (rsync,
and pure Python), rsync
over ssh to the suite's real sshd (a non-root remote user, host key pinned), and S3 on the
suite's real S3 server (rclone serve s3, SigV4 checked; it keeps each object as a file under
``<data>/<bucket>/<key>``, so the same on-disk checks apply).

Every check looks at real files on disk: what ``put`` wrote under the base directory, what
``get`` wrote locally, what ``delete`` left. File names are hostile on purpose: a shell that
saw one would run ``touch x``, split it, or take it for an option.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcsync.agents.core.process import CommandCancelled
from hpcsync.agents.core.ssh import SshOptions
from hpcsync.agents.core.transfer import (
    Backend,
    DestinationError,
    Entry,
    Item,
    LocalDirBackend,
    LocalRsyncBackend,
    RemoteUnreachable,
    SshRsyncBackend,
    make_backend,
)
from hpcsync.agents.core.transfer.rsync import parse_checksum_output, parse_find_output
from hpcsync.agents.core.transfer.s3 import CredentialsRefused, S3Backend
from hpcsync.agents.core.transfer.sftp import SftpBackend

HOSTILE_NAMES = [
    "with space.dat",
    "new\nline.dat",
    "-leading-dash.dat",
    "--",
    "-",
    "$(touch x).dat",
    "`touch x`.dat",
    "back\\slash.dat",
    "ünïcødé ✓.dat",
    "quote'and\"double.dat",
    "tab\there.dat",
    "star*.dat",
]
TIMEOUT = 60.0


def _remote_paths() -> list[str]:
    """Each hostile name at the top, and again two levels down under hostile directories."""
    paths = list(HOSTILE_NAMES)
    paths += [f"sub dir/-d/{name}" for name in HOSTILE_NAMES]
    paths.append("$(touch x)/new\nline/deep.dat")
    return paths


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Rig:
    """One kind of backend: ``base`` is its base directory as seen on this machine (the
    remote side of the ssh backend is this machine too); ``make`` builds a backend of this
    kind for another base directory or with other options."""

    base: Path
    make: Callable[..., Backend]
    kind: str = "rsync"
    #: a backend of this kind whose base does not exist (None: ``make(base / "not-mounted")``)
    missing: Callable[[], Backend] | None = None

    @property
    def backend(self) -> Backend:
        return self.make(self.base)


def _s3_rig(s3_server) -> Rig:
    """S3: the base is ``<bucket dir>/<prefix>``; ``make`` maps a path there to its URL."""
    bucket = s3_server.make_bucket()
    base = s3_server.bucket_dir(bucket) / "pre fix"

    def make(basedir: Path, **kw) -> S3Backend:
        rel = Path(basedir).relative_to(s3_server.data).as_posix()
        return S3Backend(f"s3://{rel}", endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                         credentials_file=str(creds), **kw)  # fmt: skip

    creds = s3_server.credentials_file(base.parent.parent.parent / f"{bucket}.credentials")
    base.mkdir(parents=True)
    return Rig(base, make, kind="s3", missing=lambda: make(s3_server.data / f"{bucket}-gone" / "pre fix"))


@pytest.fixture(params=["local", "localdir", pytest.param("ssh", marks=pytest.mark.integration),
                        pytest.param("s3", marks=pytest.mark.integration),
                        pytest.param("sftp", marks=pytest.mark.integration)])  # fmt: skip
def rig(request, tmp_path) -> Rig:
    if request.param == "local":
        base = tmp_path / "base"
        base.mkdir()
        yield Rig(base, lambda basedir, **kw: LocalRsyncBackend(str(basedir), **kw))
        return
    if request.param == "localdir":
        base = tmp_path / "base"
        base.mkdir()
        yield Rig(base, lambda basedir, **kw: LocalDirBackend(str(basedir), **kw), kind="localdir")
        return
    if request.param == "s3":
        yield _s3_rig(request.getfixturevalue("s3_server"))
        return
    if request.param == "sftp":
        yield from _sftp_rig(request.getfixturevalue("sshd"))
        return
    sshd = request.getfixturevalue("sshd")
    base = sshd.make_remote_dir()
    opts = SshOptions(sshd.shell_destination, port=sshd.port, key_file=str(sshd.client_key),
                      known_hosts_file=str(sshd.known_hosts), connect_timeout=5)  # fmt: skip
    yield Rig(base, lambda basedir, **kw: SshRsyncBackend(str(basedir), opts, **kw))
    shutil.rmtree(base, ignore_errors=True)


def _sftp_rig(sshd):
    """sftp to the chrooted sftp-only user: the base is ``<chroot>/upload/<fresh dir>``,
    which the user sees as ``/upload/<fresh dir>`` (no shell, no rsync there)."""
    base = sshd.sftp_upload_dir / uuid.uuid4().hex[:12]
    base.mkdir()
    shutil.chown(base, "hsftponly", "hsftponly")
    opts = SshOptions(sshd.sftp_destination, port=sshd.port, key_file=str(sshd.client_key),
                      known_hosts_file=str(sshd.known_hosts), connect_timeout=5)  # fmt: skip

    def make(basedir: Path, **kw) -> SftpBackend:
        return SftpBackend("/upload/" + Path(basedir).relative_to(sshd.sftp_upload_dir).as_posix(), opts, **kw)

    yield Rig(base, make, kind="sftp")
    shutil.rmtree(base, ignore_errors=True)


def _write_sources(root: Path) -> dict[str, bytes]:
    """``{remote path: content}``; the local file of each is ``root/<index>``."""
    contents = {}
    for i, rel in enumerate(_remote_paths()):
        data = f"payload {i}: {rel!r}\n".encode() * (i + 1)
        (root / str(i)).write_bytes(data)
        contents[rel] = data
    return contents


def _no_shell_ran(*dirs: Path) -> None:
    for d in dirs:
        assert not (d / "x").exists(), f"a shell ran 'touch x' in {d}"


def test_put_list_checksum_get_delete_round_trip(rig, tmp_path):
    backend, base = rig.backend, rig.base
    src = tmp_path / "src"
    src.mkdir()
    contents = _write_sources(src)
    paths = list(contents)
    items = [Item(str(src / str(i)), rel, len(contents[rel])) for i, rel in enumerate(paths)]

    with backend.connection():
        # put: every file lands at its remote path with its bytes and mtime
        outcome = backend.put(items, timeout=TIMEOUT)
        assert outcome.ok and not outcome.skipped, outcome
        for i, rel in enumerate(paths):
            assert (base / rel).read_bytes() == contents[rel], rel
            assert abs((base / rel).stat().st_mtime - (src / str(i)).stat().st_mtime) < 1

        # list: exactly those files, with sizes and mtimes; a prefix narrows it
        entries = backend.list(timeout=TIMEOUT)
        assert sorted(e.path for e in entries) == sorted(paths)
        for e in entries:
            assert e.size == len(contents[e.path])
            assert abs(e.mtime - (base / e.path).stat().st_mtime) < 1e-3
        under = backend.list("sub dir/-d", timeout=TIMEOUT)
        assert sorted(e.path for e in under) == sorted(p for p in paths if p.startswith("sub dir/-d/"))
        assert backend.list("no such dir", timeout=TIMEOUT) == []

        # checksum: md5 (and sha256) of each file there; a missing one is simply absent
        md5s = backend.checksum([*paths, "missing.dat"], timeout=TIMEOUT)
        assert md5s == {rel: _md5(data) for rel, data in contents.items()}
        sha = backend.checksum(paths[:3], "sha256", timeout=TIMEOUT)
        assert sha == {rel: hashlib.sha256(contents[rel]).hexdigest() for rel in paths[:3]}

    # get (outside the shared connection): into a flat local layout and a mirrored one
    flat = tmp_path / "flat"
    mirror = tmp_path / "mirror"
    fetch = [Item(str(flat / f"f{i}"), rel) for i, rel in enumerate(paths)]
    fetch += [Item(str(mirror / rel), rel) for rel in paths[:4]]
    outcome = backend.get(fetch, timeout=TIMEOUT)
    assert outcome.ok and not outcome.file_errors, outcome
    for i, rel in enumerate(paths):
        assert (flat / f"f{i}").read_bytes() == contents[rel]
    for rel in paths[:4]:
        assert (mirror / rel).read_bytes() == contents[rel]
    assert not [p for p in tmp_path.rglob(".hpcsync-get-*")], "the staging directory was left behind"

    # delete: the named files go, a missing one is no error, the others stay
    gone = [p for p in paths if p.startswith("sub dir/")] + ["-", "--", "$(touch x).dat"]
    outcome = backend.delete([*gone, "never existed.dat"], timeout=TIMEOUT)
    assert outcome.ok and not outcome.file_errors, outcome
    for rel in paths:
        assert (base / rel).exists() == (rel not in gone), rel
    assert sorted(e.path for e in backend.list(timeout=TIMEOUT)) == sorted(set(paths) - set(gone))

    _no_shell_ran(base, tmp_path, src, Path.cwd(), Path("/home/hsyncuser"))


def test_paths_that_leave_the_base_directory_are_refused(rig, tmp_path):
    backend, base = rig.backend, rig.base
    outside = tmp_path / "outside.dat"
    outside.write_text("keep me")
    for bad in ("../outside.dat", "/etc/hostname", "a/../../outside.dat", "", "a\0b"):
        with pytest.raises(ValueError):
            backend.delete([bad], timeout=TIMEOUT)
        with pytest.raises(ValueError):
            backend.checksum([bad], timeout=TIMEOUT)
    with pytest.raises(ValueError):
        backend.list("../", timeout=TIMEOUT)
    (tmp_path / "f").write_text("f")
    outcome = backend.put([Item(str(tmp_path / "f"), "../escaped.dat"), Item(str(tmp_path / "f"), "ok.dat")],
                          timeout=TIMEOUT)  # fmt: skip
    assert set(outcome.skipped) == {"../escaped.dat"} and (base / "ok.dat").read_text() == "f"
    outcome = backend.get([Item(str(tmp_path / "got"), "../outside.dat")], timeout=TIMEOUT)
    assert not outcome.ok and set(outcome.skipped) == {"../outside.dat"} and not (tmp_path / "got").exists()
    assert outside.read_text() == "keep me" and not (base.parent / "escaped.dat").exists()


def test_what_cannot_be_fetched_or_deleted_is_named_and_the_rest_goes(rig, tmp_path):
    backend, base = rig.backend, rig.base
    (base / "real.dat").write_text("real")
    (base / "a dir").mkdir()  # rm -f cannot remove a directory
    os.symlink("/etc/hostname", base / "link.dat")  # a remote symlink is never followed
    outcome = backend.get(
        [Item(str(tmp_path / "real"), "real.dat"), Item(str(tmp_path / "missing"), "missing.dat"),
         Item(str(tmp_path / "link"), "link.dat")],
        timeout=TIMEOUT,
    )  # fmt: skip
    assert not outcome.ok and set(outcome.file_errors) == {"missing.dat", "link.dat"}
    assert (tmp_path / "real").read_text() == "real"
    assert not (tmp_path / "missing").exists() and not (tmp_path / "link").exists()
    assert [e.path for e in backend.list(timeout=TIMEOUT)] == ["real.dat"]  # symlinks are not listed

    outcome = backend.delete(["a dir", "real.dat"], timeout=TIMEOUT)
    if rig.kind == "s3":
        # An object store has no directories: "a dir" is no object, so there is nothing to
        # delete and nothing left (the server's own folder is not an object).
        assert outcome.ok and not outcome.file_errors, outcome
        assert backend.list(timeout=TIMEOUT) == []
    else:
        assert not outcome.ok and set(outcome.file_errors) == {"a dir"}
        assert (base / "a dir").is_dir()
    assert not (base / "real.dat").exists()


def test_a_missing_base_directory_is_a_destination_error(rig):
    gone = rig.missing() if rig.missing else rig.make(rig.base / "not-mounted")
    for call in (lambda: gone.list(timeout=TIMEOUT), lambda: gone.delete(["a"], timeout=TIMEOUT),
                 lambda: gone.checksum(["a"], timeout=TIMEOUT)):  # fmt: skip
        with pytest.raises(DestinationError, match="does not exist"):
            call()


def test_a_stop_request_kills_a_running_put_and_nothing_half_written_remains(rig, tmp_path):
    base = rig.base
    big = tmp_path / "big.dat"
    big.write_bytes(os.urandom(4 << 20))
    (tmp_path / "tiny.dat").write_bytes(b"tiny")
    slow = rig.make(base, bwlimit="100")  # 4 MiB at 100 KiB/s: about 40 s unless stopped
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(CommandCancelled) as info:
        slow.put([Item(str(tmp_path / "tiny.dat"), "tiny.dat"), Item(str(big), "big.dat")], timeout=TIMEOUT,
                 cancel=cancel)  # fmt: skip
    assert not (base / "big.dat").exists()
    if rig.kind in ("localdir", "s3"):  # these say what reached the remote whole before the stop
        assert info.value.sent == [p for p in ("tiny.dat", "big.dat") if (base / p).exists()]
    if rig.kind == "localdir":  # copied in turn: the tiny file went before the stop
        assert info.value.sent == ["tiny.dat"] and (base / "tiny.dat").read_bytes() == b"tiny"
    outcome = slow.put([Item(str(big), "big.dat")], timeout=0.5)
    assert outcome.timed_out and not outcome.ok and not (base / "big.dat").exists()


def test_make_backend_picks_the_backend_from_the_arguments(tmp_path):
    local = make_backend(str(tmp_path))
    assert isinstance(local, LocalRsyncBackend) and local.describe() == str(tmp_path)
    remote = make_backend("/srv/data", ssh_host="sync@example.org", ssh_port=2222, chmod="g+rwX")
    assert isinstance(remote, SshRsyncBackend) and remote.describe() == "sync@example.org:/srv/data (port 2222)"


def test_parsers_take_any_name_and_refuse_cut_output():
    out = (
        b"d41d8cd98f00b204e9800998ecf8427e  ./plain name.dat\n"
        b"\\0cc175b9c0f1b6a831c399e269772661  ./new\\nline\\\\back.dat\n"
        b"sha256sum: ./gone.dat: No such file or directory\n"
    )
    assert parse_checksum_output(out) == {
        "./plain name.dat": "d41d8cd98f00b204e9800998ecf8427e",
        "./new\nline\\back.dat": "0cc175b9c0f1b6a831c399e269772661",
    }
    digest = "a" * 64
    assert parse_checksum_output(f"{digest} *-\n".encode(), "sha256") == {"-": digest}
    listing = b"./a\nb\x0012\x001700000000.5000000000\x00./-x\x000\x001.0\x00"
    assert parse_find_output(listing) == [Entry("a\nb", 12, 1_700_000_000.5), Entry("-x", 0, 1.0)]
    assert parse_find_output(b"") == []
    with pytest.raises(ValueError, match="cut short"):
        parse_find_output(listing[:-3])


# -- S3 only: credentials, limits, multipart --------------------------------------------------


def _s3(s3_server, bucket: str, prefix: str = "p", **kw) -> S3Backend:
    kw.setdefault("endpoint_url", s3_server.endpoint_url)
    return S3Backend(f"s3://{bucket}/{prefix}", region=s3_server.region, **kw)


@pytest.mark.integration
def test_s3_credentials_from_file_profile_or_environment_and_a_wrong_secret_fails_clearly(s3_server, tmp_path,
                                                                                         monkeypatch):  # fmt: skip
    bucket = s3_server.make_bucket()
    (tmp_path / "f").write_text("f")
    good = s3_server.credentials_file(tmp_path / "creds")
    # a named profile in a credentials file, as [sync] (not the default section)
    prof = s3_server.credentials_file(tmp_path / "creds-prof", profile="sync")
    assert _s3(s3_server, bucket, credentials_file=str(good)).put([Item(str(tmp_path / "f"), "a")], timeout=TIMEOUT).ok
    named = _s3(s3_server, bucket, credentials_file=str(prof), profile="sync")
    assert [e.path for e in named.list(timeout=TIMEOUT)] == ["a"]
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(prof))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    assert len(_s3(s3_server, bucket, profile="sync").list(timeout=TIMEOUT)) == 1
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    env_backend = _s3(s3_server, bucket)
    assert len(env_backend.list(timeout=TIMEOUT)) == 1
    assert s3_server.secret_key not in env_backend.describe() and s3_server.secret_key not in repr(env_backend.__dict__)

    bad = _s3(s3_server, bucket, credentials_file=str(s3_server.credentials_file(tmp_path / "bad", secret_key="wrong")))
    for call in (lambda: bad.list(timeout=TIMEOUT), lambda: bad.put([Item(str(tmp_path / "f"), "b")], timeout=TIMEOUT),
                 lambda: bad.read_object("a", timeout=TIMEOUT)):  # fmt: skip
        with pytest.raises(CredentialsRefused, match="refused the credentials.*SignatureDoesNotMatch"):
            call()
    assert not (s3_server.bucket_dir(bucket) / "p" / "b").exists()
    with pytest.raises(Exception, match="no \\[nope\\] section"):
        _s3(s3_server, bucket, credentials_file=str(good), profile="nope")


@pytest.mark.integration
def test_s3_small_puts_the_lean_way_fail_clearly_on_a_wrong_secret(s3_server, tmp_path):
    """A small file goes without botocore's request machinery (see the S3 module), and its
    errors are the same: a refused signature is CredentialsRefused, naming no secret."""
    bucket = s3_server.make_bucket()
    (tmp_path / "f").write_text("f")
    good = _s3(s3_server, bucket, credentials_file=str(s3_server.credentials_file(tmp_path / "creds")))
    bad = _s3(s3_server, bucket, credentials_file=str(s3_server.credentials_file(tmp_path / "bad", secret_key="nope")))
    assert good._lean is not None and bad._lean is not None
    good.check_access()  # the bucket is there: what follows fails on the lean request itself
    bad._bucket_ok = True
    with pytest.raises(CredentialsRefused, match="refused the credentials.*SignatureDoesNotMatch") as info:
        bad.put([Item(str(tmp_path / "f"), "b")], timeout=TIMEOUT)
    assert "nope" not in str(info.value) and s3_server.secret_key not in str(info.value)
    assert bad._lean.requests_made == 1  # a refusal is not tried again
    assert not (s3_server.bucket_dir(bucket) / "p" / "b").exists()


class _FlakyS3(threading.Thread):
    """A stand-in S3 endpoint on loopback (no signature check) that answers PutObject with
    the statuses it is given, in turn, then 200; with ``drop_after_ok`` it closes a
    keep-alive connection after each success without saying so, as idle servers do."""

    def __init__(self, statuses: list[int], drop_after_ok: bool = False):
        import http.server

        super().__init__(daemon=True)
        self.statuses, self.drop_after_ok, self.puts, self.connections = list(statuses), drop_after_ok, [], 0
        flaky = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                flaky.connections += 1

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # the backend's one access check: an empty listing
                self._answer(200, b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")

            def do_PUT(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = flaky.statuses.pop(0) if flaky.statuses else 200
                flaky.puts.append((self.path, status, body, self.headers.get("Authorization", "")))
                if status == 200:
                    self._answer(200, b"")
                    self.close_connection = flaky.drop_after_ok
                else:
                    self._answer(status, b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def run(self):
        self.server.serve_forever(poll_interval=0.05)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("statuses, drop, tries", [([503, 500], False, 3), ([], True, 1), ([503] * 9, False, 3)])
def test_s3_lean_puts_retry_5xx_and_a_dropped_keep_alive_connection(tmp_path, statuses, drop, tries):
    server = _FlakyS3(statuses, drop_after_ok=drop)
    server.start()
    try:
        creds = tmp_path / "creds"
        creds.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = not-shown\n")
        backend = S3Backend("s3://bkt/p", endpoint_url=server.endpoint, region="us-east-1",
                            credentials_file=str(creds), retries=tries, concurrency=1)  # fmt: skip
        for name in ("a b", "c"):
            (tmp_path / name).write_bytes(name.encode() * 100)
        outcome = backend.put([Item(str(tmp_path / "a b"), "d/a b", metadata={"sha256": "0" * 64})],
                              timeout=TIMEOUT)  # fmt: skip
        if len(statuses) >= tries:  # kept failing: the server's code, after every try
            assert not outcome.ok and outcome.file_errors == {"d/a b": "SlowDown: Reduce your rate"}, outcome
            assert len(server.puts) == tries
            return
        assert outcome.ok, outcome
        assert [s for _p, s, _b, _a in server.puts] == [*statuses, 200]
        path, _status, body, auth = server.puts[-1]
        assert path == "/bkt/p/d/a%20b" and body == b"a b" * 100
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/") and "not-shown" not in auth
        # a second file on the kept connection; when the server had dropped it, one free try on a new
        # one (plus the connection of boto3's access check, made once)
        assert backend.put([Item(str(tmp_path / "c"), "c")], timeout=TIMEOUT).ok
        assert server.puts[-1][2] == b"c" * 100 and server.connections == (3 if drop else 2)
    finally:
        server.stop()


@pytest.mark.integration
def test_s3_unreachable_endpoint_is_one_clear_error(s3_server, tmp_path):
    from services import free_port

    creds = s3_server.credentials_file(tmp_path / "creds")
    dead = S3Backend("s3://bucket/p", endpoint_url=f"http://127.0.0.1:{free_port()}", credentials_file=str(creds),
                     retries=1, connect_timeout=2)  # fmt: skip
    with pytest.raises(RemoteUnreachable, match="is unreachable"):
        dead.list(timeout=TIMEOUT)


@pytest.mark.integration
def test_s3_keys_up_to_1024_bytes_go_longer_ones_are_named_and_the_rest_goes(s3_server, tmp_path):
    bucket = s3_server.make_bucket()
    creds = s3_server.credentials_file(tmp_path / "creds")
    backend = _s3(s3_server, bucket, "pre", credentials_file=str(creds))
    assert backend.max_path_bytes == 1024 - len("pre/")
    # 1,020 bytes of path under "pre/": exactly S3's 1,024-byte limit (no component over 255)
    longest = "/".join(["é" * 100] * 5) + "/" + "k" * (1020 - 5 * 201)
    assert len(("pre/" + longest).encode()) == 1024
    too_long = longest + "x"
    (tmp_path / "f").write_bytes(b"long key")
    outcome = backend.put([Item(str(tmp_path / "f"), longest), Item(str(tmp_path / "f"), too_long),
                           Item(str(tmp_path / "f"), "short")], timeout=TIMEOUT)  # fmt: skip
    assert set(outcome.skipped) == {too_long} and "1025-byte key" in outcome.skipped[too_long]
    assert (s3_server.bucket_dir(bucket) / "pre" / longest).read_bytes() == b"long key"
    assert sorted(e.path for e in backend.list(timeout=TIMEOUT)) == sorted([longest, "short"])
    backend.get([Item(str(tmp_path / "back"), longest)], timeout=TIMEOUT)
    assert (tmp_path / "back").read_bytes() == b"long key"


@pytest.mark.integration
def test_s3_multipart_objects_keep_their_content_hash_and_small_objects_round_trip(s3_server, tmp_path):
    bucket = s3_server.make_bucket()
    creds = s3_server.credentials_file(tmp_path / "creds")
    backend = _s3(s3_server, bucket, credentials_file=str(creds), multipart_threshold=5 << 20, chunk_size=5 << 20)
    data = os.urandom((12 << 20) + 123)  # three parts
    (tmp_path / "big").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    outcome = backend.put([Item(str(tmp_path / "big"), "dir/big.bin", len(data), {"sha256": sha})], timeout=TIMEOUT)
    assert outcome.ok, outcome
    assert (s3_server.bucket_dir(bucket) / "p" / "dir" / "big.bin").read_bytes() == data
    # the stored hashes, not the ETag: sha256 from metadata; md5 is computed when none is stored
    assert backend.checksum(["dir/big.bin"], "sha256", timeout=TIMEOUT) == {"dir/big.bin": sha}
    assert backend.checksum(["dir/big.bin"], "md5", timeout=TIMEOUT) == {"dir/big.bin": _md5(data)}
    head = backend.head(["dir/big.bin"], timeout=TIMEOUT)["dir/big.bin"]
    assert head["sha256"] == sha and float(head["mtime"]) == (tmp_path / "big").stat().st_mtime
    # a hash that is not a digest (an ETag "<md5>-3" copied into metadata by another tool) is not trusted
    key = "p/dir/big.bin"
    s3_server.client().copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                                   Metadata={"md5": _md5(data)[:32] + "-3"}, MetadataDirective="REPLACE")  # fmt: skip
    assert backend.checksum(["dir/big.bin"], "md5", timeout=TIMEOUT) == {"dir/big.bin": _md5(data)}
    got = backend.get([Item(str(tmp_path / "out" / "big"), "dir/big.bin")], timeout=TIMEOUT)
    assert got.ok and (tmp_path / "out" / "big").read_bytes() == data
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["big"]  # no temporary left

    # small objects: write_object/read_object, whole
    backend.write_object("manifest.json", b'{"a": 1}', timeout=TIMEOUT)
    assert backend.read_object("manifest.json", timeout=TIMEOUT) == b'{"a": 1}'
    assert backend.read_object("nothing.json", timeout=TIMEOUT) is None


def test_the_default_read_and_write_object_work_on_any_backend(tmp_path):
    backend = LocalRsyncBackend(str(tmp_path))
    backend.write_object("d/m.json", b"manifest", timeout=TIMEOUT)
    assert (tmp_path / "d" / "m.json").read_bytes() == b"manifest"
    assert backend.read_object("d/m.json", timeout=TIMEOUT) == b"manifest"
    assert backend.read_object("d/none.json", timeout=TIMEOUT) is None


def test_localdir_never_writes_or_reads_through_a_symlinked_directory(tmp_path):
    base, outside = tmp_path / "base", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("outside")
    os.symlink(outside, base / "link")
    (tmp_path / "f").write_text("payload")
    backend = LocalDirBackend(str(base))
    put = backend.put([Item(str(tmp_path / "f"), "link/new"), Item(str(tmp_path / "f"), "ok")], timeout=TIMEOUT)
    assert set(put.file_errors) == {"link/new"} and not (outside / "new").exists() and (base / "ok").exists()
    got = backend.get([Item(str(tmp_path / "got"), "link/secret")], timeout=TIMEOUT)
    assert set(got.file_errors) == {"link/secret"} and not (tmp_path / "got").exists()
    assert backend.delete(["link/secret"], timeout=TIMEOUT).file_errors and (outside / "secret").exists()
    assert [e.path for e in backend.list(timeout=TIMEOUT)] == ["ok"]
