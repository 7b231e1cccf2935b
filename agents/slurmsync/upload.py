"""Job upserts over persistent HTTP/1.1 connections, one per worker thread.

A full sync sends one PUT per job - tens of thousands. Through ``requests`` each call costs
about 0.5 ms of client CPU (session merging, environment proxy lookup, urllib3 pools), five
times what the API itself spends on it, so the sync was bound by its own client. This
sender uses :mod:`http.client` directly and keeps the policy of
:class:`hpcsync.agents.core.http.ApiClient`: a timeout per request, bounded retries with
doubling backoff on connection errors, timeouts and 5xx, :class:`ApiAuthError` on
401/403, :class:`ApiError` (with the body's first lines) on other 4xx,
:class:`ApiUnavailable` after the last retry, and no token in any message.

It is used only where it can honour what ``requests`` would: not when an HTTP(S) proxy
applies to the API's URL (then :class:`ColdFrontApi` keeps using ``ApiClient``).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from hpcsync.agents.core.http import RETRY_STATUSES, ApiAuthError, ApiError, ApiUnavailable, redact_credentials

log = logging.getLogger(__name__)


def proxy_applies(url: str) -> bool:
    """True if the environment routes ``url`` through a proxy (HTTPS_PROXY, NO_PROXY ...)."""
    parts = urlsplit(url)
    proxies = getproxies()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not proxy_bypass(parts.hostname or "")


class JsonSender:
    """Send JSON bodies to one API origin; thread-safe (a connection per thread)."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 1.0,
        cancel: threading.Event | None = None,
    ):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API base URL {base_url!r} must be http:// or https://")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.cancel = cancel
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []
        self.requests_made = 0
        self._ssl = None
        if self.scheme == "https":
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            self._ssl = ssl.create_default_context(cafile=bundle or None)

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            self._local.used = False
            with self._lock:
                self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def send(self, method: str, path: str, payload: dict) -> int:
        """Send one request; return its 2xx/3xx status or raise an :class:`ApiError`."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        shown = f"{method} {self.origin}{path.split('?', 1)[0]}"
        delay = self.backoff
        last_problem = ""
        attempt = 0
        stale_retry_used = False
        while attempt <= self.retries:
            if attempt and not stale_retry_used:
                log.warning("%s: %s; retry %d of %d in %.1f s", shown, last_problem, attempt, self.retries, delay)
                if self._wait(delay):
                    raise ApiUnavailable(f"{shown}: stopped while retrying ({last_problem})")
                delay = min(delay * 2, 30.0)
            stale_retry_used = False
            conn = self._connection()
            reused = self._local.used
            with self._lock:
                self.requests_made += 1
            try:
                conn.request(method, path, body=body, headers=self.headers)
                resp = conn.getresponse()
                text = resp.read()
                self._local.used = True
                if resp.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
            except TimeoutError:
                self._drop_connection()
                last_problem = f"no answer within {self.timeout:g} s"
                attempt += 1
                continue
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                last_problem = f"cannot connect ({type(exc).__name__})"
                if reused and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    # The server closed an idle keep-alive connection: one free try on a
                    # new one (urllib3 does the same). The PUT is an upsert, so a repeat
                    # of a request that did arrive changes nothing.
                    stale_retry_used = True
                    continue
                attempt += 1
                continue
            status = resp.status
            if status in (401, 403):
                raise ApiAuthError(
                    f"{shown}: HTTP {status} {resp.reason}: the API token was refused (check that the token file "
                    "holds a valid, unexpired token of a user with the needed permission)",
                    status=status,
                    url=shown,
                )
            if status in RETRY_STATUSES:
                last_problem = f"HTTP {status} {resp.reason}"
                attempt += 1
                continue
            if status >= 400:
                excerpt = redact_credentials(text.decode("utf-8", "replace"), self.headers)
                excerpt = excerpt.strip().replace("\n", " ")[:300]
                raise ApiError(f"{shown}: HTTP {status} {resp.reason}: {excerpt}", status=status, url=shown)
            return status
        raise ApiUnavailable(f"{shown}: gave up after {self.retries + 1} tries: {last_problem}")

    def _wait(self, seconds: float) -> bool:
        if self.cancel is not None:
            return self.cancel.wait(seconds)
        time.sleep(seconds)
        return False
