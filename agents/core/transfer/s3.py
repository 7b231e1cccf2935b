"""The S3 backend: a bucket prefix, through boto3's transfer manager.

``S3Backend("s3://bucket/prefix", endpoint_url=...)`` implements :class:`~.base.Backend`
over any S3 server (AWS, Swift s3api, Ceph, rclone serve s3, MinIO):

- **put/get** go through s3transfer's :class:`~s3transfer.manager.TransferManager`: files
  over ``multipart_threshold`` go up and down in ``chunk_size`` parts, ``concurrency``
  requests at a time, each retried by botocore (``retries`` attempts, standard mode). Files
  of at most :data:`SMALL_PUT_BYTES` (without a bandwidth cap) skip the manager's
  machinery: each is read whole and sent with one ``PutObject`` from a pool of
  ``concurrency`` threads, and only bodies of :data:`EXPECT_CONTINUE_BYTES` or more ask
  for ``100-continue`` (botocore asks for every body: one more round trip per small
  file). Each object carries user metadata ``mtime`` (the local file's, so servers that
  keep files, like rclone, restore it) plus :attr:`~.base.Item.metadata` (e.g. ``sha256``).
- **the lean path**: with a path-style endpoint (``endpoint_url``) that no proxy applies to,
  small ``PutObject`` bodies (under :data:`EXPECT_CONTINUE_BYTES`, plain ASCII metadata)
  and listings skip botocore's request machinery (about 0.85 ms of client CPU per request,
  under the GIL): :class:`_LeanS3` signs each request with botocore's own SigV4 signer and
  sends it with :mod:`http.client` over one keep-alive connection per thread, retried under
  :class:`~hpcsync.agents.core.http.RetryPolicy`; a failure is the botocore exception boto3
  would raise, so errors read the same. A listing lists its prefix's top level by ``/`` and
  then each directory below it, :data:`LIST_THREADS` at once. A multipart
  ETag (``"<md5>-N"``) is never taken for a content hash: :meth:`S3Backend.checksum` reads
  the hash stored in metadata, trusts a plain single-part ETag for md5 only, and otherwise
  downloads and hashes.
- **a stop or a timeout** interrupts uploads mid-body (the file reader raises; a small file
  already under way, at most :data:`SMALL_PUT_BYTES`, ends first and one not started is not
  sent), cancels downloads, and aborts unfinished multipart uploads: S3 never shows a
  partial object, and a download lands under a temporary name renamed into place only when
  complete. A stopped ``put`` raises ``CommandCancelled`` whose ``sent`` lists the paths
  that reached the server whole before the stop.
- **credentials** come from the environment or boto3's usual chain, a named ``profile``, or
  an AWS-style ``credentials_file`` (ini: ``aws_access_key_id``/``aws_secret_access_key``)
  — never from arguments, never printed (:meth:`describe` names the bucket and endpoint).
- **errors**: a missing bucket is a :class:`~.base.DestinationError`, refused credentials a
  :class:`CredentialsRefused` (one of them), an endpoint that does not answer
  :class:`~.base.RemoteUnreachable`; each names the endpoint and what the server said.

Keys are ``<prefix>/<path>``, at most 1,024 UTF-8 bytes (S3's limit, :attr:`max_path_bytes`
accounts for the prefix); a longer one, or a name that is not valid UTF-8, is skipped and
named, the rest of the batch goes on.
"""

from __future__ import annotations

import concurrent.futures
import configparser
import contextlib
import hashlib
import http.client
import io
import logging
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, unquote_plus, urlencode, urlparse, urlsplit

from hpcsync.agents.core.files import read_operator_text
from hpcsync.agents.core.process import CommandCancelled

from .base import (
    CHECKSUM_KINDS,
    Backend,
    DestinationError,
    Entry,
    RemoteUnreachable,
    TransferOutcome,
    check_relative_paths,
    unsafe_relative_path,
)

log = logging.getLogger("hpcsync.transfer.s3")

#: S3's longest key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Error codes that mean "these credentials are not accepted here" (not one file's fault).
CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidClientTokenId",
})  # fmt: skip
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
MISSING_KEY_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
#: How often a waiting call looks at its cancel event and deadline (s).
POLL = 0.05
#: Files up to this size are read whole and sent with one PutObject each (no transfer manager).
SMALL_PUT_BYTES = 1 << 20
#: Bodies from this size on ask for ``100-continue`` before they are sent (botocore: all bodies).
EXPECT_CONTINUE_BYTES = 1 << 20
#: Listings of the directories below a listed prefix at once (see :meth:`S3Backend.list`).
LIST_THREADS = 4
#: With more directories than this below a listed prefix, it is listed flat instead.
LIST_SPLIT_MAX = 200


class CredentialsRefused(DestinationError):
    """The S3 server refused the credentials (or none were found): no file can move."""


class S3ConfigError(ValueError):
    """The S3 backend's settings are wrong (bad URL, unreadable credentials file)."""


class _Stopped(Exception):
    """Raised inside a transfer's file reader to end its request at once."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (no slashes at the ends)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise S3ConfigError(f"{url!r} is not an S3 URL: expected s3://bucket[/prefix]")
    if parsed.query or parsed.fragment or parsed.params:
        raise S3ConfigError(f"{url!r}: an S3 URL has no ?query or #fragment")
    prefix = parsed.path.strip("/")
    if prefix and unsafe_relative_path(prefix):
        raise S3ConfigError(f"{url!r}: the prefix {unsafe_relative_path(prefix)}")
    return parsed.netloc, prefix


def read_credentials_file(path: str, profile: str | None = None) -> dict[str, str]:
    """Keys from an AWS-style credentials file (``[profile]`` section, default ``default``)."""
    text = read_operator_text(path, "S3 credentials file", S3ConfigError)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise S3ConfigError(f"S3 credentials file {path} is not an ini file: {exc.message.splitlines()[0]}") from None
    section = profile or "default"
    if not parser.has_section(section):
        raise S3ConfigError(f"S3 credentials file {path} has no [{section}] section")
    keys = {}
    for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        value = parser.get(section, name, fallback="").strip()
        if value:
            keys[name] = value
    missing = [n for n in ("aws_access_key_id", "aws_secret_access_key") if n not in keys]
    if missing:
        raise S3ConfigError(f"S3 credentials file {path} [{section}] lacks {' and '.join(missing)}")
    return keys


class _Limiter:
    """A shared bandwidth cap (bytes/s) that sleeps on the call's stop event."""

    def __init__(self, rate: float | None, stop: threading.Event):
        self.rate = rate
        self.stop = stop
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def spend(self, nbytes: int) -> None:
        if self.stop.is_set():
            raise _Stopped()
        if not self.rate or nbytes <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + nbytes / self.rate
            wait = self._next - now
        if wait > 0 and self.stop.wait(wait):
            raise _Stopped()


def _osutil(limiter: _Limiter):
    """s3transfer OSUtils whose upload readers stop mid-body when asked, and pace reads."""
    from s3transfer.utils import OSUtils, ReadFileChunk

    class StoppableChunk(ReadFileChunk):
        def read(self, amount=None):
            if amount is None or amount < 0 or amount > 256 * 1024:
                amount = 256 * 1024 if amount is not None and amount > 0 else None
            data = super().read(amount)
            limiter.spend(len(data))
            return data

    class StoppableOSUtils(OSUtils):
        def open_file_chunk_reader_from_fileobj(self, fileobj, chunk_size, full_file_size, callbacks,
                                                close_callbacks=None):  # fmt: skip
            return StoppableChunk(fileobj, chunk_size, full_file_size, callbacks=callbacks,
                                  enable_callbacks=False, close_callbacks=close_callbacks)  # fmt: skip

    return StoppableOSUtils()


@dataclass
class _Call:
    """One backend call's deadline and stop flag (set on cancel or timeout)."""

    timeout: float
    cancel: threading.Event | None

    def __post_init__(self):
        self.deadline = time.monotonic() + self.timeout
        self.stop = threading.Event()
        self.timed_out = False
        #: set whenever one of the call's transfers ends, so waiting ends without a poll's delay
        self.wake = threading.Event()

    def woken(self, future):
        """``future`` (a concurrent.futures one) wakes :meth:`wait_all` when it ends."""
        future.add_done_callback(lambda _f: self.wake.set())
        return future

    def check(self) -> None:
        """Raise CommandCancelled on a stop request; mark a passed deadline."""
        if self.cancel is not None and self.cancel.is_set():
            self.stop.set()
            raise CommandCancelled("stopped on request")
        if time.monotonic() >= self.deadline and not self.timed_out:
            self.timed_out = True
            self.stop.set()

    def wait_all(self, futures: Sequence, on_stop: Callable[[], None]) -> None:
        """Wait for every future; on cancel or timeout call ``on_stop`` and return/raise."""
        pending = list(futures)
        first = 0  # futures end roughly in order: skip the finished ones at the front only
        while first < len(pending):
            try:
                self.check()
            except CommandCancelled:
                on_stop()
                raise
            if self.timed_out:
                on_stop()
                return
            while first < len(pending) and pending[first].done():
                first += 1
            if first < len(pending):
                self.wake.wait(POLL)
                self.wake.clear()


class _LeanS3:
    """PutObject of small bodies without botocore's request machinery: each request is
    signed by botocore's own SigV4 signer (:class:`botocore.auth.S3SigV4Auth` on an
    :class:`~botocore.awsrequest.AWSRequest`, the payload's sha256 signed as botocore does
    over http) and sent with :mod:`http.client` over one keep-alive connection per thread,
    as :class:`~hpcsync.agents.core.http.KeepAliveSender` does. Connection errors, timeouts,
    5xx, 429 and ``RequestTimeout`` are retried under a :class:`~hpcsync.agents.core.http.RetryPolicy`
    (a stop ends the wait); a reused connection the server had closed gets one free try on a
    new one (a PUT of the same body is idempotent). A failure ends as the botocore exception
    boto3 would have raised (``ClientError`` with the server's code, ``EndpointConnectionError``,
    ``ConnectTimeoutError``, ``ReadTimeoutError``), so the backend's error mapping is shared.

    Through botocore each small PutObject costs about 0.85 ms of client CPU, under the GIL;
    this path about a quarter of that. Used only for a path-style endpoint that no proxy
    applies to; anything else (multipart, ``Expect: 100-continue`` bodies, metadata that is
    not plain ASCII, a redirect) goes through boto3.
    """

    RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

    def __init__(self, endpoint_url: str, bucket: str, region: str, credentials, *, connect_timeout: float,
                 read_timeout: float, retries: int, ca_bundle: str | None = None):  # fmt: skip
        parts = urlsplit(endpoint_url)
        self.scheme, self.hostname, self.port = parts.scheme, parts.hostname or "", parts.port
        default = {"http": 80, "https": 443}[parts.scheme]
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        self.host_header = host if self.port in (None, default) else f"{host}:{self.port}"
        self.origin = f"{parts.scheme}://{self.host_header}"
        self.bucket_path = f"{parts.path.rstrip('/')}/{quote(bucket, safe='~')}"
        self.endpoint_url = endpoint_url
        self.region = region
        self.credentials = credentials  # botocore Credentials: never printed (its repr shows no key)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = max(0, retries - 1)  # botocore's max_attempts counts the first try
        self._lock = threading.Lock()
        self.requests_made = 0
        context = None
        if self.scheme == "https":
            from botocore.httpsession import get_cert_path

            # the CA bundle botocore would use: AWS_CA_BUNDLE or the profile's ca_bundle, else its default
            context = ssl.create_default_context(cafile=ca_bundle or get_cert_path(True))
        from hpcsync.agents.core.http import ThreadConnections

        self.connections = ThreadConnections(self.scheme, self.hostname, self.port, timeout=connect_timeout,
                                             ssl_context=context)  # fmt: skip

    @staticmethod
    def usable(endpoint_url: str | None, addressing_style: str | None) -> bool:
        """Whether requests to ``endpoint_url`` can go this way (else boto3 sends them)."""
        if not endpoint_url or (addressing_style or "path") != "path":
            return False
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.username:
            return False
        from hpcsync.agents.core.http import proxy_applies

        return not proxy_applies(endpoint_url)

    @staticmethod
    def plain_metadata(meta: Mapping[str, str]) -> bool:
        """Metadata that goes as ``x-amz-meta-*`` headers unchanged (what botocore would send)."""
        return all(_HEADER_NAME.match(k) and v.isascii() and v.isprintable() for k, v in meta.items())

    def close(self) -> None:
        self.connections.close()

    def _signed_headers(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=self.origin + path, data=body,
                             headers={"Host": self.host_header, **headers})  # fmt: skip
        S3SigV4Auth(self.credentials.get_frozen_credentials(), "s3", self.region).add_auth(request)
        return dict(request.headers.items())

    def put(self, key: str, body: bytes, meta: Mapping[str, str], stop: threading.Event) -> None:
        """PutObject ``body`` at ``key`` with user metadata ``meta``."""
        headers = {"Content-Length": str(len(body)), **{f"x-amz-meta-{k}": v for k, v in meta.items()}}
        self.request("PUT", f"/{quote(key, safe='/~')}", body=body, headers=headers, operation="PutObject",
                     stop=stop)  # fmt: skip

    def list_page(self, prefix: str, delimiter: str, token: str | None,
                  stop: threading.Event) -> tuple[list[tuple[str, int, str]], list[str], str | None]:  # fmt: skip
        """One ListObjectsV2 page under ``prefix``: ``([(key, size, LastModified text)], [common
        prefix], next token)``. Keys are asked for URL-encoded (XML cannot carry every byte a
        key may hold) and decoded as botocore does."""
        import xml.etree.ElementTree as ET

        query = {"list-type": "2", "prefix": prefix, "max-keys": "1000", "encoding-type": "url"}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        data = self.request("GET", "", query=query, operation="ListObjectsV2", stop=stop)
        root = ET.fromstring(data)
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        decode = (root.findtext(f"{ns}EncodingType") or "").strip() == "url"
        entries = []
        for obj in root.iterfind(f"{ns}Contents"):
            key = obj.findtext(f"{ns}Key") or ""
            entries.append((unquote_plus(key) if decode else key, int(obj.findtext(f"{ns}Size") or 0),
                            obj.findtext(f"{ns}LastModified") or ""))  # fmt: skip
        prefixes = [root_prefix.findtext(f"{ns}Prefix") or "" for root_prefix in root.iterfind(f"{ns}CommonPrefixes")]
        if decode:
            prefixes = [unquote_plus(p) for p in prefixes]
        truncated = (root.findtext(f"{ns}IsTruncated") or "").strip().lower() == "true"
        return entries, prefixes, (root.findtext(f"{ns}NextContinuationToken") or None) if truncated else None

    def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: bytes = b"",
                headers: Mapping[str, str] | None = None, operation: str, stop: threading.Event) -> bytes:  # fmt: skip
        """One signed request to ``path`` under the bucket, retried; the 2xx answer's body.
        Raises the botocore exception boto3 would, :class:`_Redirected` for a 3xx, or
        :class:`_Stopped` when a stop ends a wait between tries."""
        from hpcsync.agents.core.http import ApiUnavailable, Retry, RetryPolicy

        target = self.bucket_path + path
        if query:
            target += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="~")
        headers = dict(headers or {})
        shown = f"{method} {self.origin}{self.bucket_path + path}"  # no query: it may hold a token
        last: list[BaseException] = []

        def once() -> tuple[int, bytes, http.client.HTTPResponse]:
            conn, reused = self.connections.get()
            connected = conn.sock is not None
            signed = self._signed_headers(method, target, body, headers)
            with self._lock:
                self.requests_made += 1
            try:
                if not connected:
                    conn.connect()
                    conn.sock.settimeout(self.read_timeout)
                    # headers and body leave in two sends: without this the body's last
                    # segment waits for the headers' ACK (Nagle), a delayed ACK per request
                    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    connected = True
                conn.request(method, target, body=body if body or method == "PUT" else None, headers=signed)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.connections.drop()
                if reused and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError,
                                               BrokenPipeError)):  # fmt: skip
                    raise _StaleConnection from None
                last[:] = [self._transport_error(exc, connecting=not connected)]
                raise Retry(f"{type(exc).__name__}: {exc}") from None
            self.connections.answered(resp)
            return resp.status, data, resp

        def attempt() -> tuple[int, bytes, http.client.HTTPResponse]:
            try:
                status, data, resp = once()
            except _StaleConnection:  # the server closed an idle connection: one free try
                status, data, resp = once()
            if status in self.RETRY_STATUSES or (status == 400 and b"<Code>RequestTimeout<" in data):
                last[:] = [_client_error(status, resp.reason, data, operation)]
                raise Retry(f"HTTP {status} {resp.reason}")
            return status, data, resp

        policy = RetryPolicy(timeout=self.read_timeout, retries=self.retries, backoff=0.1, cancel=stop)
        try:
            status, data, resp = policy.call(shown, attempt)
        except ApiUnavailable:
            if stop.is_set() or not last:
                raise _Stopped() from None
            raise last[0] from None
        if 300 <= status < 400:
            raise _Redirected()
        if status >= 400:
            raise _client_error(status, resp.reason, data, operation)
        return data

    def _transport_error(self, exc: BaseException, *, connecting: bool) -> BaseException:
        import botocore.exceptions as bx

        if isinstance(exc, TimeoutError):
            kind = bx.ConnectTimeoutError if connecting else bx.ReadTimeoutError
            return kind(endpoint_url=self.endpoint_url, error=exc)
        if connecting:
            return bx.EndpointConnectionError(endpoint_url=self.endpoint_url, error=exc)
        return bx.ConnectionClosedError(endpoint_url=self.endpoint_url, error=exc)


class _StaleConnection(Exception):
    """A reused keep-alive connection turned out closed by the server."""


class _Redirected(Exception):
    """The server answered a lean request with a redirect: boto3 sends it instead."""


_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


def _client_error(status: int, reason: str, body: bytes, operation: str):
    """botocore's ``ClientError`` for an S3 error answer (``<Error><Code>..</Code>...``)."""
    import xml.etree.ElementTree as ET

    from botocore.exceptions import ClientError

    code, message = str(status), reason
    try:
        root = ET.fromstring(body) if body else None
    except ET.ParseError:
        root = None
    if root is not None:
        code = (root.findtext("Code") or code).strip()
        message = (root.findtext("Message") or message).strip()
    error = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(error, operation)


class S3Backend(Backend):
    """Files under ``s3://bucket/prefix`` (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        credentials_file: str | None = None,
        concurrency: int = 8,
        multipart_threshold: int = 16 * 1024 * 1024,
        chunk_size: int = 16 * 1024 * 1024,
        retries: int = 5,
        connect_timeout: float = 10,
        read_timeout: float = 60,
        bwlimit: str | int | None = None,
        addressing_style: str | None = None,
        client=None,
    ):
        self.bucket, self.prefix = parse_s3_url(url)
        self.basedir = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint_url = endpoint_url
        if endpoint_url and urlparse(endpoint_url).scheme not in ("http", "https"):
            raise S3ConfigError(f"S3 endpoint {endpoint_url!r} is not an http:// or https:// URL")
        self.concurrency = max(1, int(concurrency))
        if chunk_size < 5 * 1024 * 1024:
            raise S3ConfigError("S3 chunk size must be at least 5 MiB (S3's smallest part)")
        self.multipart_threshold = int(multipart_threshold)
        self.chunk_size = int(chunk_size)
        self.bwlimit = _parse_bwlimit(bwlimit)
        prefix_bytes = len(self.prefix.encode()) + 1 if self.prefix else 0
        self.max_path_bytes = MAX_KEY_BYTES - prefix_bytes
        self._bucket_ok = False
        self._small_pool: ThreadPoolExecutor | None = None
        #: small PutObjects' lean path (None: all of them through boto3)
        self._lean: _LeanS3 | None = None
        self._pool_lock = threading.Lock()
        self._client = client or self._make_client(
            region=region, profile=profile, credentials_file=credentials_file, retries=retries,
            connect_timeout=connect_timeout, read_timeout=read_timeout, addressing_style=addressing_style,
        )  # fmt: skip

    # -- setup ---------------------------------------------------------------------------------

    def _make_client(self, *, region, profile, credentials_file, retries, connect_timeout, read_timeout,
                     addressing_style):  # fmt: skip
        import boto3
        import botocore.exceptions
        import botocore.session
        from botocore.config import Config

        keys: dict[str, str] = {}
        if credentials_file:
            keys = read_credentials_file(credentials_file, profile)
            profile = None  # the file's section is the profile
        core = botocore.session.get_session()
        core.register_component("data_loader", _shared_loader(core))
        # S3 listings carry one ISO 8601 time per object; botocore's dateutil parse of each
        # costs more than the rest of the listing.
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
        try:
            session = boto3.session.Session(botocore_session=core, profile_name=profile)
        except botocore.exceptions.ProfileNotFound:
            raise S3ConfigError(f"AWS profile {profile!r} is not in the AWS config or credentials files") from None
        s3_options = {}
        if addressing_style or self.endpoint_url:
            s3_options["addressing_style"] = addressing_style or "path"
        config = Config(
            region_name=region or session.region_name or "us-east-1",
            retries={"max_attempts": max(1, retries), "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # the transfer manager's requests plus the small-file pool's, at once
            max_pool_connections=2 * self.concurrency + 4,
            s3=s3_options,
            # The engine hashes content itself (sha256, kept in metadata); no per-request CRC.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = session.client("s3", endpoint_url=self.endpoint_url, config=config, **keys)
        if _LeanS3.usable(self.endpoint_url, s3_options.get("addressing_style")):
            if keys:
                from botocore.credentials import Credentials

                credentials = Credentials(keys["aws_access_key_id"], keys["aws_secret_access_key"],
                                          keys.get("aws_session_token"))  # fmt: skip
            else:
                credentials = session.get_credentials()
            if credentials is not None:
                self._lean = _LeanS3(self.endpoint_url, self.bucket, client.meta.region_name, credentials,
                                     connect_timeout=connect_timeout, read_timeout=read_timeout,
                                     retries=retries, ca_bundle=core.get_config_variable("ca_bundle"))  # fmt: skip
        from botocore.handlers import add_expect_header

        client.meta.events.unregister("before-call.s3", add_expect_header)
        client.meta.events.register("before-call.s3", _expect_continue_for_large_bodies)
        return client

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"{self.basedir}{where}"

    # -- keys and errors -----------------------------------------------------------------------

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _bad_key(self, path: str) -> str | None:
        why = unsafe_relative_path(path)
        if why:
            return why
        try:
            size = len(self._key(path).encode("utf-8"))
        except UnicodeEncodeError:
            return f"path {path!r} is not valid UTF-8, which S3 keys must be"
        if size > MAX_KEY_BYTES:
            return f"path {path[:60]!r}... makes a {size}-byte key; S3 takes at most {MAX_KEY_BYTES}"
        return None

    def _error(self, exc: BaseException, doing: str) -> BaseException:
        """The error to raise for ``exc`` if it concerns the whole destination, else ``exc``."""
        import botocore.exceptions as bx

        if isinstance(exc, bx.NoCredentialsError):
            return CredentialsRefused(
                f"no S3 credentials for {self.describe()}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or give a profile or a credentials file"
            )
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError,
                            bx.ReadTimeoutError)):  # fmt: skip
            return RemoteUnreachable(f"{self.describe()} is unreachable while {doing}: {exc}")
        if isinstance(exc, bx.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            text = exc.response.get("Error", {}).get("Message", "") or code
            if code in CREDENTIAL_CODES:
                return CredentialsRefused(f"{self.describe()} refused the credentials while {doing}: {code}: {text}")
            if code in MISSING_BUCKET_CODES:
                return DestinationError(f"bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS'}")
        return exc

    def _code(self, exc: BaseException) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def _is_missing(self, exc: BaseException) -> bool:
        code = self._code(exc)
        status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in MISSING_KEY_CODES or (status == 404 and code not in MISSING_BUCKET_CODES)

    def _raise_destination(self, exc: BaseException, doing: str) -> None:
        err = self._error(exc, doing)
        if err is not exc:
            raise err from None

    def _manager(self, limiter: _Limiter):
        from s3transfer.manager import TransferConfig, TransferManager

        config = TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.chunk_size,
            max_request_concurrency=self.concurrency,
            max_submission_concurrency=max(2, self.concurrency // 2),
            num_download_attempts=5,
        )
        return TransferManager(self._client, config, osutil=_osutil(limiter))

    # -- operations ----------------------------------------------------------------------------

    def list(self, prefix="", *, timeout, cancel=None) -> list[Entry]:
        """The files under ``prefix``: one listing by ``/`` of its top level (its files and
        the "directories" below), then each directory listed whole, :data:`LIST_THREADS` at
        a time (a server walks them in parallel; a cold listing of one prefix is one long
        walk). More than :data:`LIST_SPLIT_MAX` directories: one flat listing instead."""
        if prefix:
            check_relative_paths([prefix.rstrip("/")])
        call = _Call(timeout, cancel)
        key_prefix = self._key(prefix.rstrip("/")) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        entries, below = self._list_under(key_prefix, call, delimiter="/")
        if len(below) > LIST_SPLIT_MAX:
            return self._list_under(key_prefix, call)[0]
        if below:
            with ThreadPoolExecutor(min(LIST_THREADS, len(below)), thread_name_prefix="s3-list") as pool:
                for part, _none in pool.map(lambda p: self._list_under(p, call), below):
                    entries += part
        return entries

    def _list_under(self, key_prefix: str, call: _Call, delimiter: str = "") -> tuple[list[Entry], list[str]]:
        """Every page of one listing: its files, and with ``delimiter`` its common prefixes."""
        entries: list[Entry] = []
        below: list[str] = []
        token = None
        lean = self._lean is not None
        stop = call.cancel if call.cancel is not None else call.stop
        while True:
            call.check()
            if call.timed_out:
                raise RemoteUnreachable(f"listing {self.describe()} timed out after {call.timeout:.0f} s")
            try:
                if lean:
                    try:
                        page, prefixes, token = self._lean.list_page(key_prefix, delimiter, token, stop)
                    except _Redirected:
                        lean = False
                        continue
                    below += prefixes
                    for key, size, modified in page:
                        if not key.endswith("/"):  # a "directory" marker is not a file
                            entries.append(Entry(self._rel(key), size, _parse_timestamp(modified).timestamp()))
                else:
                    args = {"Bucket": self.bucket, "Prefix": key_prefix, "MaxKeys": 1000}
                    if delimiter:
                        args["Delimiter"] = delimiter
                    if token:
                        args["ContinuationToken"] = token
                    page = self._client.list_objects_v2(**args)
                    below += [p["Prefix"] for p in page.get("CommonPrefixes", ())]
                    for obj in page.get("Contents", ()):
                        key = obj["Key"]
                        if not key.endswith("/"):
                            entries.append(Entry(self._rel(key), int(obj["Size"]), obj["LastModified"].timestamp()))
                    token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
            except _Stopped:
                raise CommandCancelled("stopped on request") from None
            except Exception as exc:
                self._raise_destination(exc, "listing")
                raise
            if not token:
                return entries, below

    def put(self, items, *, timeout, cancel=None) -> TransferOutcome:
        if not items:
            return TransferOutcome(ok=True)
        self.check_access()
        call = _Call(timeout, cancel)
        call.check()  # a stop asked for already: nothing is sent
        started = time.monotonic()
        outcome = TransferOutcome(ok=True)
        limiter = _Limiter(self.bwlimit, call.stop)
        futures = []
        small = []
        stopped: CommandCancelled | None = None
        manager = self._manager(limiter)
        pool = self._pool()
        try:
            for item in items:
                why = self._bad_key(item.remote_path)
                if why:
                    outcome.skipped[item.remote_path] = f"cannot send to {why}"
                    continue
                try:
                    st = os.stat(item.local_path)
                except OSError as exc:
                    outcome.skipped[item.remote_path] = f"cannot read {item.local_path!r}: {exc.strerror or exc}"
                    continue
                meta = {"mtime": repr(st.st_mtime)}
                meta.update({str(k).lower(): str(v) for k, v in (item.metadata or {}).items()})
                if self.bwlimit is None and st.st_size <= SMALL_PUT_BYTES:
                    small.append((item, call.woken(pool.submit(self._put_small, item, st.st_size, meta, call))))
                    continue
                future = manager.upload(item.local_path, self.bucket, self._key(item.remote_path),
                                        extra_args={"Metadata": meta}, subscribers=[_Wake(call.wake)])  # fmt: skip
                futures.append((item, future))
            try:
                call.wait_all([f for _i, f in futures + small], on_stop=call.stop.set)
            except CommandCancelled as exc:
                stopped = exc
        finally:
            # Unfinished transfers stop here: readers raise, multipart uploads are aborted;
            # small files not yet started are not sent, those under way end first.
            if call.stop.is_set():
                for _i, f in small:
                    f.cancel()
            concurrent.futures.wait([f for _i, f in small])
            _shutdown(manager, [f for _i, f in futures], cancel=call.stop.is_set())
        if stopped is None and call.cancel is not None and call.cancel.is_set():
            stopped = CommandCancelled("stopped on request")
        if stopped is not None:
            # what reached the remote whole before the stop (the caller may record it)
            stopped.sent = [i.remote_path for i, f in futures + small if _landed(f)]  # type: ignore[attr-defined]
            raise stopped
        futures += [(item, f) for item, f in small if not f.cancelled()]
        for item, f in small:
            if f.cancelled():
                outcome.file_errors[item.remote_path] = "stopped before it started"
        self._collect(futures, outcome, "sending")
        outcome.elapsed = time.monotonic() - started
        if call.timed_out:
            outcome.ok, outcome.timed_out = False, True
            outcome.error = outcome.error or f"the upload to {self.describe()} timed out after {timeout:.0f} s"
        return outcome

    def _pool(self) -> ThreadPoolExecutor:
        """The backend's threads for small files (kept between calls; they end with it)."""
        with self._pool_lock:
            if self._small_pool is None:
                self._small_pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-put")
            return self._small_pool

    def _put_small(self, item, size: int, meta: dict[str, str], call: _Call) -> None:
        """Send one small file (``size`` bytes when looked at) whole with one PutObject (a stop
        before it starts skips it)."""
        if call.stop.is_set() or (call.cancel is not None and call.cancel.is_set()):
            raise _Stopped()
        with open(item.local_path, "rb") as f:
            # a buffer of the size expected (a 1 MiB one per file costs an mmap and munmap)
            body = f.read(size + 1)
            if len(body) > size:  # it grew since it was looked at
                body += f.read(SMALL_PUT_BYTES + 1 - len(body))
            if len(body) > SMALL_PUT_BYTES:  # it grew past the limit: stream it, whole
                f.seek(0)
                body = f
            elif self._lean is not None and len(body) < EXPECT_CONTINUE_BYTES and self._lean.plain_metadata(meta):
                try:
                    return self._lean.put(self._key(item.remote_path), body, meta, call.stop)
                except _Redirected:
                    pass  # boto3 follows what the server asks
            self._client.put_object(Bucket=self.bucket, Key=self._key(item.remote_path), Body=body, Metadata=meta)

    def _collect(self, futures, outcome: TransferOutcome, doing: str) -> None:
        fatal = None
        for item, future in futures:
            try:
                future.result()
            except _Stopped:
                outcome.file_errors[item.remote_path] = "stopped before it finished"
            except Exception as exc:  # one file's failure; a destination-wide one is raised
                err = self._error(exc, doing)
                if err is not exc and fatal is None:
                    fatal = err
                outcome.file_errors[item.remote_path] = self._describe_file_error(exc)
        if fatal is not None and len(outcome.file_errors) == len(futures):
            raise fatal
        if outcome.file_errors or outcome.skipped:
            outcome.ok = False
            outcome.error = outcome.error or f"{len(outcome.file_errors) + len(outcome.skipped)} file(s) failed"

    def _describe_file_error(self, exc: BaseException) -> str:
        if self._is_missing(exc):
            return "not on the remote"
        code = self._code(exc)
        if code:
            message = (getattr(exc, "response", None) or {}).get("Error", {}).get("Message", "")
            return f"{code}: {message}".rstrip(": ")
        if isinstance(exc, OSError):
            return exc.strerror or str(exc)
        return f"{type(exc).__name__}: {exc}"

    def get(self, items, *, timeout, cancel=None) -> TransferOutcome:
        if not items:
            return TransferOutcome(ok=True)
        self.check_access()
        call = _Call(timeout, cancel)
        started = time.monotonic()
        outcome = TransferOutcome(ok=True)
        limiter = _Limiter(self.bwlimit, call.stop)
        futures = []
        temps: dict[int, str] = {}
        manager = self._manager(limiter)
        try:
            for n, item in enumerate(items):
                why = self._bad_key(item.remote_path)
                if why:
                    outcome.skipped[item.remote_path] = f"cannot fetch {why}"
                    continue
                if not item.local_path:
                    outcome.skipped[item.remote_path] = f"no local path given for {item.remote_path!r}"
                    continue
                directory = os.path.dirname(os.path.abspath(item.local_path))
                try:
                    os.makedirs(directory, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(item.local_path)[:100]}.", dir=directory)
                    os.close(fd)
                except OSError as exc:
                    outcome.file_errors[item.remote_path] = f"cannot write in {directory!r}: {exc.strerror or exc}"
                    continue
                temps[n] = tmp
                future = manager.download(self.bucket, self._key(item.remote_path), tmp,
                                          subscribers=[_Wake(call.wake)])  # fmt: skip
                futures.append(((n, item), future))
            call.wait_all([f for _i, f in futures],
                          on_stop=lambda: [f.cancel() for _i, f in futures])  # fmt: skip
        finally:
            _shutdown(manager, [f for _i, f in futures], cancel=call.stop.is_set())
            if call.stop.is_set():
                for tmp in temps.values():
                    with contextlib.suppress(OSError):
                        os.remove(tmp)
        if call.cancel is not None and call.cancel.is_set():
            raise CommandCancelled("stopped on request")
        done_ok = []
        try:
            self._collect([(item, f) for (_n, item), f in futures], outcome, "fetching")
        finally:
            for (n, item), future in futures:
                tmp = temps[n]
                if item.remote_path in outcome.file_errors or (call.timed_out and not future.done()):
                    with contextlib.suppress(OSError):
                        os.remove(tmp)
                    continue
                done_ok.append((tmp, item))
        for tmp, item in done_ok:
            try:
                os.replace(tmp, item.local_path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                outcome.file_errors[item.remote_path] = f"cannot put it in place: {exc.strerror or exc}"
                outcome.ok = False
        outcome.elapsed = time.monotonic() - started
        if call.timed_out:
            outcome.ok, outcome.timed_out = False, True
            outcome.error = outcome.error or f"the download from {self.describe()} timed out after {timeout:.0f} s"
        return outcome

    def _head(self, path: str) -> dict | None:
        try:
            return self._client.head_object(Bucket=self.bucket, Key=self._key(path))
        except Exception as exc:
            self._raise_destination(exc, "reading object metadata")
            if self._is_missing(exc):
                return None
            raise

    def head(self, paths: Sequence[str], *, timeout: float, cancel=None) -> dict[str, dict[str, str]]:
        """``{path: {metadata name (lowercase): value, plus "etag", "size"}}`` of those that exist."""
        check_relative_paths(paths)
        call = _Call(timeout, cancel)
        found: dict[str, dict[str, str]] = {}
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [(p, pool.submit(self._head, p)) for p in paths]
            call.wait_all([f for _p, f in futures], on_stop=lambda: [f.cancel() for _p, f in futures])
            if call.timed_out:
                raise RemoteUnreachable(f"reading metadata from {self.describe()} timed out after {timeout:.0f} s")
            for path, future in futures:
                head = future.result()
                if head is not None:
                    meta = {str(k).lower(): str(v) for k, v in head.get("Metadata", {}).items()}
                    meta["etag"] = str(head.get("ETag", "")).strip('"').lower()
                    meta["size"] = str(head.get("ContentLength", 0))
                    found[path] = meta
        return found

    def checksum(self, paths, kind="md5", *, timeout, cancel=None) -> dict[str, str]:
        width = CHECKSUM_KINDS.get(kind)
        if width is None:
            raise ValueError(f"checksum kind {kind!r} is not one of {', '.join(CHECKSUM_KINDS)}")
        check_relative_paths(paths)
        self.check_access()
        heads = self.head(paths, timeout=timeout, cancel=cancel)
        out: dict[str, str] = {}
        unknown = []
        for path, meta in heads.items():
            stored = meta.get(kind, "").lower()
            if len(stored) == width and all(c in "0123456789abcdef" for c in stored):
                out[path] = stored
            elif kind == "md5" and _PLAIN_MD5.match(meta["etag"]) and "sse-kms" not in meta:
                out[path] = meta["etag"]  # a single-part upload's ETag is its MD5
            else:
                unknown.append(path)
        for path in unknown:  # no stored hash: read the object and hash it
            digest = hashlib.new(kind)
            try:
                body = self._client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"]
                while chunk := body.read(1 << 20):
                    if cancel is not None and cancel.is_set():
                        raise CommandCancelled("stopped on request")
                    digest.update(chunk)
            except CommandCancelled:
                raise
            except Exception as exc:
                self._raise_destination(exc, "hashing")
                if self._is_missing(exc):
                    continue
                raise
            out[path] = digest.hexdigest()
        return out

    def delete(self, paths, *, timeout, cancel=None) -> TransferOutcome:
        check_relative_paths(paths)
        call = _Call(timeout, cancel)
        started = time.monotonic()
        outcome = TransferOutcome(ok=True)
        todo = list(dict.fromkeys(paths))
        self.check_access()
        for i in range(0, len(todo), 1000):
            call.check()
            if call.timed_out:
                outcome.ok, outcome.timed_out = False, True
                outcome.error = f"deleting from {self.describe()} timed out after {timeout:.0f} s"
                break
            chunk = todo[i : i + 1000]
            bad = {p: self._bad_key(p) for p in chunk}
            for p, why in bad.items():
                if why:
                    outcome.skipped[p] = f"cannot delete {why}"
            keys = [{"Key": self._key(p)} for p in chunk if not bad[p]]
            if not keys:
                continue
            try:
                reply = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
            except Exception as exc:
                self._raise_destination(exc, "deleting")
                raise
            for err in reply.get("Errors", ()):
                if err.get("Code") in MISSING_KEY_CODES:
                    continue
                outcome.file_errors[self._rel(err["Key"])] = f"{err.get('Code')}: {err.get('Message', '')}".rstrip(": ")
        if outcome.file_errors or outcome.skipped:
            outcome.ok = False
            outcome.error = outcome.error or f"{len(outcome.file_errors) + len(outcome.skipped)} file(s) not deleted"
        outcome.elapsed = time.monotonic() - started
        return outcome

    # -- small objects -------------------------------------------------------------------------

    def read_object(self, path, *, timeout, cancel=None) -> bytes | None:
        check_relative_paths([path])
        self.check_access()
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()
        except Exception as exc:
            self._raise_destination(exc, "reading")
            if self._is_missing(exc):
                return None
            raise

    def write_object(self, path, data, *, timeout, cancel=None, metadata=None) -> None:
        why = self._bad_key(path)
        if why:
            raise ValueError(why)
        meta = {str(k).lower(): str(v) for k, v in (metadata or {}).items()}
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(path), Body=io.BytesIO(data),
                                    ContentLength=len(data), Metadata=meta)  # fmt: skip
        except Exception as exc:
            self._raise_destination(exc, "writing")
            raise DestinationError(f"could not write {path!r} to {self.describe()}: {exc}") from None

    def check_access(self) -> None:
        """One cheap signed request (a one-key listing, whose errors carry a code, unlike
        HEAD's): raises the clear error if the bucket is missing or the keys are refused.
        Done once per backend before the first call that could not tell a missing bucket
        from a missing key."""
        if self._bucket_ok:
            return
        try:
            self._client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            self._raise_destination(exc, "checking access")
            raise
        self._bucket_ok = True


_loader_lock = threading.Lock()
_loader = None


def _shared_loader(core):
    """One botocore data loader per process, so every backend's client reuses the parsed
    S3 model and endpoint rules (a new loader parses them again: tens of MB and ~50 ms)."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        return _loader


class _Wake:
    """An s3transfer subscriber that wakes the waiting call when its transfer ends."""

    def __init__(self, event: threading.Event):
        self.event = event

    def on_queued(self, **kwargs) -> None:
        pass

    def on_progress(self, **kwargs) -> None:
        pass

    def on_done(self, **kwargs) -> None:
        self.event.set()


def _parse_timestamp(value):
    """botocore's timestamp parser, with the ISO 8601 times of S3 listings taken the fast way."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)


def _expect_continue_for_large_bodies(model, params, **kwargs) -> None:
    """botocore's ``add_expect_header`` for bodies of :data:`EXPECT_CONTINUE_BYTES` or more
    only: a large body waits for the server's go-ahead; a small one goes with its headers."""
    if model.http.get("method", "") not in ("PUT", "POST") or not hasattr(params.get("body"), "read"):
        return
    from botocore.utils import determine_content_length

    size = determine_content_length(params["body"])
    if size is None or size >= EXPECT_CONTINUE_BYTES:
        params["headers"]["Expect"] = "100-continue"


def _landed(future) -> bool:
    """Whether a finished upload's future (concurrent.futures' or s3transfer's) succeeded."""
    if not future.done():
        return False
    try:
        future.result()
    except BaseException:  # cancelled, stopped or failed
        return False
    return True


def _shutdown(manager, futures, *, cancel: bool) -> None:
    """End a transfer manager, cancelling unfinished transfers first if asked. (Each future is
    cancelled itself: s3transfer 0.19's ``shutdown(cancel=True)`` passes its arguments to
    ``_shutdown`` in the wrong order and fails.)"""
    if cancel:
        for future in futures:
            if not future.done():
                future.cancel()
    manager.shutdown()


def _parse_bwlimit(value: str | int | None) -> float | None:
    """rsync-style ``--bwlimit``: KiB/s as a number, or with a K/M/G suffix; None/0: no cap."""
    if value in (None, "", 0, "0"):
        return None
    text = str(value).strip().upper()
    scale = 1024
    if text and text[-1] in "KMG":
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}[text[-1]]
        text = text[:-1]
    try:
        rate = float(text) * scale
    except ValueError:
        raise S3ConfigError(f"bandwidth limit {value!r} is not a number of KiB/s (e.g. 500, 10M)") from None
    if rate <= 0:
        raise S3ConfigError(f"bandwidth limit {value!r} must be positive")
    return rate


def make_s3_backend(url: str, options: Mapping[str, object] | None = None) -> S3Backend:
    """An :class:`S3Backend` for ``url`` with keyword ``options`` (see its signature)."""
    return S3Backend(url, **dict(options or {}))
