"""HTTP for agents that talk to remote web APIs: timeouts, bounded retries, clear errors.

One policy for every call (:class:`RetryPolicy`): a timeout per request; connection errors,
timeouts and 5xx answers retried a bounded number of times with doubling backoff (a stop
request ends the wait at once); 401/403 raise :class:`ApiAuthError` at once with a message
an operator can act on; other 4xx raise :class:`ApiError` with the body's first line. The
credential is kept in a header and never appears in an error message, log line or ``repr``.

Two transports follow it:

- :class:`ApiClient` (``requests``): reads, pagination, anything that needs ``requests``'
  features (proxies from the environment, redirects);
- :func:`json_sender`: many small JSON writes (tens of thousands of upserts) over one
  persistent HTTP/1.1 connection per thread with :mod:`http.client`. Through ``requests``
  each call costs about 0.5 ms of client CPU (session merging, proxy lookup, urllib3
  pools), five times what an API spends on it; this path skips that. Where a proxy applies
  to the URL it falls back to ``requests``, which honours it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urljoin, urlsplit
from urllib.request import getproxies, proxy_bypass

import requests

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({500, 502, 503, 504})


class ApiError(RuntimeError):
    """A remote API call failed for good (after retries, or not retryable)."""

    def __init__(self, message: str, status: int | None = None, url: str | None = None):
        super().__init__(message)
        self.status = status
        self.url = url


class ApiAuthError(ApiError):
    """401/403: the credential is missing, wrong, expired or lacks the permission."""


class ApiUnavailable(ApiError):
    """The API could not be reached or kept failing with 5xx/timeouts."""


T = TypeVar("T")


class Retry(Exception):
    """One attempt failed in a way worth trying again (connection error, timeout, 5xx)."""


def _strip_query(url: str) -> str:
    # Some APIs take tokens in the query string; never echo it.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class RetryPolicy:
    """Timeouts and bounded, cancellable retries: the rule every HTTP call here follows."""

    def __init__(
        self, *, timeout: float = 30.0, retries: int = 4, backoff: float = 1.0, cancel: threading.Event | None = None
    ):
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.cancel = cancel

    def call(self, shown: str, attempt: Callable[[], T], *, url: str | None = None) -> T:
        """``attempt()`` until it returns; it raises :class:`Retry` for a transient failure."""
        delay = self.backoff
        problem = ""
        for number in range(self.retries + 1):
            if number:
                log.warning("%s: %s; retry %d of %d in %.1f s", shown, problem, number, self.retries, delay)
                if self.wait(delay):
                    raise ApiUnavailable(f"{shown}: stopped while retrying ({problem})", url=url)
                delay = min(delay * 2, 30.0)
            try:
                return attempt()
            except Retry as exc:
                problem = str(exc)
        raise ApiUnavailable(f"{shown}: gave up after {self.retries + 1} tries: {problem}", url=url)

    def check_status(self, shown: str, status: int, reason: str, excerpt: Callable[[], str], url: str | None) -> None:
        """Raise for an answer that is not a success: :class:`Retry` for 5xx, errors for 4xx."""
        if status in (401, 403):
            raise ApiAuthError(
                f"{shown}: HTTP {status} {reason}: the API token was refused (check that the token file holds "
                "a valid, unexpired token of a user with the needed permission)",
                status=status,
                url=url,
            )
        if status in RETRY_STATUSES:
            raise Retry(f"HTTP {status} {reason}")
        if status >= 400:
            raise ApiError(f"{shown}: HTTP {status} {reason}: {excerpt()}", status=status, url=url)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; True (at once) if the run was asked to stop."""
        if self.cancel is not None:
            return self.cancel.wait(seconds)
        time.sleep(seconds)
        return False


class ApiClient:
    """A small JSON/form client for one base URL.

    :param base_url: e.g. ``https://mybrc.brc.berkeley.edu/api/``.
    :param headers: extra headers, e.g. ``{"Authorization": "Token ..."}``.
    :param timeout: seconds for connect and for each read.
    :param retries: how many times a retryable failure is tried again.
    :param backoff: first wait between tries in seconds, doubled each time (max 30 s).
    :param cancel: an event that aborts waits between retries (op stop).
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 1.0,
        cancel: threading.Event | None = None,
        session: requests.Session | None = None,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"API base URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.policy = RetryPolicy(timeout=timeout, retries=retries, backoff=backoff, cancel=cancel)
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": "application/json", **(headers or {})})
        self.requests_made = 0

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r})"

    def same_origin(self, link: str, where: str) -> str:
        """``link`` (absolute or relative) resolved against the base URL; refused when it
        names another scheme, host or port, which would receive the credential."""
        resolved = urljoin(self.base_url, link)
        if _origin(resolved) != _origin(self.base_url):
            raise ApiError(
                f"{where}: its 'next' link points to another server ({_origin(resolved)}, not "
                f"{_origin(self.base_url)}); refused so the credential is not sent there (a proxy in front of the API "
                "may build links with the wrong scheme or host: check its X-Forwarded-Proto/Host settings)"
            )
        return resolved

    def url(self, path: str) -> str:
        """Join ``path`` onto the base URL without doubling slashes."""
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.base_url, path.lstrip("/"))

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request; retry transient failures; raise :class:`ApiError` on failure."""
        url = self.url(path)
        shown = f"{method} {_strip_query(url)}"

        def attempt() -> requests.Response:
            self.requests_made += 1
            try:
                resp = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.Timeout:
                raise Retry(f"no answer within {self.timeout:g} s") from None
            except requests.ConnectionError as exc:
                raise Retry(f"cannot connect ({type(exc).__name__})") from None
            self.policy.check_status(shown, resp.status_code, resp.reason, lambda: _body_excerpt(resp), url)
            return resp

        return self.policy.call(shown, attempt, url=url)

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        resp = self.request("GET", path, params=params)
        return _json(resp)

    def paginate(
        self, path: str, params: Mapping[str, Any] | None = None, *, max_pages: int | None = None
    ) -> Iterator[dict]:
        """Yield every page of a DRF page-number-paginated list, following ``next``.

        Each page is fetched exactly once. ``max_pages`` bounds a run; when it stops early
        the last yielded page still has its ``next`` link, so the caller can say where to
        resume.
        """
        url: str | None = path
        query = dict(params or {})
        pages = 0
        seen: set[str] = set()
        while url:
            resp = self.request("GET", url, params=query if pages == 0 else None)
            page = _json(resp)
            if not isinstance(page, dict) or "results" not in page:
                raise ApiError(f"GET {_strip_query(resp.url)}: expected a paginated object with 'results'")
            seen.add(_page_key(resp.url))
            pages += 1
            yield page
            url = page.get("next")
            if url is not None and not isinstance(url, str):
                raise ApiError(f"GET {_strip_query(resp.url)}: 'next' is not a URL: {str(url)[:100]!r}")
            if url:
                url = self.same_origin(url, f"GET {_strip_query(resp.url)}")
            if url and _page_key(self.url(url)) in seen:
                raise ApiError(
                    f"GET {_strip_query(resp.url)} (page {pages}): its 'next' link points back to a page "
                    "already fetched; stopped instead of fetching it again"
                )
            if max_pages is not None and pages >= max_pages:
                return


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _page_key(url: str) -> tuple:
    """A page's identity: the same page however its query is ordered or encoded (no page = 1)."""
    parts = urlsplit(url)
    query = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if (k, v) != ("page", "1"))
    return parts.netloc.lower(), parts.path.rstrip("/"), tuple(query)


def _json(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError as exc:
        raise ApiError(
            f"{resp.request.method} {_strip_query(resp.url)}: answer is not JSON: {_body_excerpt(resp)}",
            status=resp.status_code,
        ) from exc


def redact_credentials(text: str, headers: Mapping[str, str] | None) -> str:
    """``text`` without the value of the request's credential headers (nor its key part).

    A server may echo the ``Authorization`` header in an error page; the excerpt of that
    page goes into error messages, logs and ``session.data``.
    """
    for name in ("Authorization", "Proxy-Authorization"):
        value = (headers or {}).get(name)
        if not value:
            continue
        for secret in sorted({value, value.split()[-1]}, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
    return text


def _body_excerpt(resp: requests.Response, limit: int = 300) -> str:
    text = (resp.text or "").strip().replace("\n", " ")
    text = redact_credentials(text, resp.request.headers if resp.request is not None else None)
    return text[:limit] + ("…" if len(text) > limit else "")


# -- many small JSON writes ------------------------------------------------------------


def proxy_applies(url: str) -> bool:
    """True if the environment routes ``url`` through a proxy (HTTPS_PROXY, NO_PROXY ...)."""
    parts = urlsplit(url)
    proxies = getproxies()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not proxy_bypass(parts.hostname or "")


class ThreadConnections:
    """One persistent HTTP/1.1 connection per thread to one origin, and the bookkeeping to
    drop one (after an error, or a server's ``Connection: close``) or close them all.
    Shared by every keep-alive client here (:class:`KeepAliveSender`, the S3 backend's lean
    requests)."""

    def __init__(self, scheme: str, host: str, port: int | None, *, timeout: float, ssl_context=None):
        self.scheme, self.host, self.port = scheme, host, port
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def get(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it carried a request before (a server may
        have closed it meanwhile: such a failure deserves one free retry)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                   context=self.ssl_context)  # fmt: skip
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn, self._local.used = conn, False
            with self._lock:
                self._all.append(conn)
        return conn, self._local.used

    def answered(self, resp: http.client.HTTPResponse) -> None:
        """After a complete answer: the connection is reusable, unless the server closes it."""
        self._local.used = True
        if resp.getheader("Connection", "").lower() == "close":
            self.drop()

    def drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            with self._lock, contextlib.suppress(ValueError):
                self._all.remove(conn)
        self._local.conn = None

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class KeepAliveSender:
    """Send JSON bodies to one API origin over a persistent connection per thread."""

    def __init__(self, base_url: str, headers: Mapping[str, str], policy: RetryPolicy):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API base URL {base_url!r} must be http:// or https://")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.base_path = parts.path.rstrip("/") + "/"
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self.policy = policy
        self.requests_made = 0
        self._lock = threading.Lock()
        context = None
        if self.scheme == "https":
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            context = ssl.create_default_context(cafile=bundle or None)
        self.connections = ThreadConnections(self.scheme, self.host, self.port, timeout=policy.timeout,
                                             ssl_context=context)  # fmt: skip

    def close(self) -> None:
        self.connections.close()

    def send(self, method: str, path: str, payload: Any) -> int:
        """Send one request (``path`` relative to the base URL); return its 2xx/3xx status."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        target = self.base_path + path.lstrip("/")
        shown = f"{method} {self.origin}{target.split('?', 1)[0]}"

        def once() -> tuple[int, str, bytes]:
            conn, reused = self.connections.get()
            with self._lock:
                self.requests_made += 1
            try:
                conn.request(method, target, body=body, headers=self.headers)
                resp = conn.getresponse()
                text = resp.read()
            except TimeoutError:
                self.connections.drop()
                raise Retry(f"no answer within {self.policy.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as exc:
                self.connections.drop()
                stale = reused and isinstance(
                    exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                )
                if stale:
                    raise _StaleConnection from None
                raise Retry(f"cannot connect ({type(exc).__name__})") from None
            self.connections.answered(resp)
            return resp.status, resp.reason, text

        def attempt() -> int:
            try:
                status, reason, text = once()
            except _StaleConnection:
                # The server closed an idle keep-alive connection: one free try on a new one,
                # as urllib3 does. Writes sent this way must be idempotent (upserts).
                status, reason, text = once()

            def excerpt() -> str:
                shown_text = redact_credentials(text.decode("utf-8", "replace"), self.headers)
                return shown_text.strip().replace("\n", " ")[:300]

            self.policy.check_status(shown, status, reason, excerpt, None)
            return status

        return self.policy.call(shown, attempt)


class _StaleConnection(Exception):
    pass


class RequestsSender:
    """:class:`KeepAliveSender`'s interface over ``requests`` (one client per thread), for
    URLs that a proxy from the environment applies to."""

    def __init__(self, base_url: str, headers: Mapping[str, str], policy: RetryPolicy):
        self.base_url = base_url
        self.headers = dict(headers)
        self.policy = policy
        self._local = threading.local()
        self._clients: list[ApiClient] = []
        self._lock = threading.Lock()

    @property
    def requests_made(self) -> int:
        with self._lock:
            return sum(c.requests_made for c in self._clients)

    def send(self, method: str, path: str, payload: Any) -> int:
        client = getattr(self._local, "client", None)
        if client is None:
            p = self.policy
            client = ApiClient(self.base_url, headers=self.headers, timeout=p.timeout, retries=p.retries,
                               backoff=p.backoff, cancel=p.cancel)  # fmt: skip
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client.request(method, path.lstrip("/"), json=payload).status_code

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.session.close()


def json_sender(base_url: str, headers: Mapping[str, str], policy: RetryPolicy) -> KeepAliveSender | RequestsSender:
    """The sender for many small JSON writes to ``base_url`` (see the module docstring)."""
    if proxy_applies(base_url):
        return RequestsSender(base_url, headers, policy)
    return KeepAliveSender(base_url, headers, policy)
