"""HTTP for agents that talk to remote web APIs: timeouts, bounded retries, clear errors.

:class:`ApiClient` wraps a :class:`requests.Session`. Connection errors, timeouts and 5xx
answers are retried a bounded number of times with exponential backoff; 401/403 raise
:class:`ApiAuthError` at once with a message an operator can act on. The credential is kept
in a header and never appears in an error message, log line or ``repr``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

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


def _strip_query(url: str) -> str:
    # Some APIs take tokens in the query string; never echo it.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


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
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.cancel = cancel
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": "application/json", **(headers or {})})
        self.requests_made = 0

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r})"

    def url(self, path: str) -> str:
        """Join ``path`` onto the base URL without doubling slashes."""
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.base_url, path.lstrip("/"))

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send one request; retry transient failures; raise :class:`ApiError` on failure."""
        url = self.url(path)
        shown = f"{method} {_strip_query(url)}"
        delay = self.backoff
        last_problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                log.warning("%s: %s; retry %d of %d in %.1f s", shown, last_problem, attempt, self.retries, delay)
                if self._wait(delay):
                    raise ApiUnavailable(f"{shown}: stopped while retrying ({last_problem})", url=url)
                delay = min(delay * 2, 30.0)
            self.requests_made += 1
            try:
                resp = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.Timeout:
                last_problem = f"no answer within {self.timeout:g} s"
                continue
            except requests.ConnectionError as exc:
                last_problem = f"cannot connect ({type(exc).__name__})"
                continue
            if resp.status_code in (401, 403):
                raise ApiAuthError(
                    f"{shown}: HTTP {resp.status_code} {resp.reason}: the API token was refused "
                    "(check that the token file holds a valid, unexpired token of a user with "
                    "the needed permission)",
                    status=resp.status_code,
                    url=url,
                )
            if resp.status_code in RETRY_STATUSES:
                last_problem = f"HTTP {resp.status_code} {resp.reason}"
                continue
            if resp.status_code >= 400:
                raise ApiError(
                    f"{shown}: HTTP {resp.status_code} {resp.reason}: {_body_excerpt(resp)}",
                    status=resp.status_code,
                    url=url,
                )
            return resp
        raise ApiUnavailable(f"{shown}: gave up after {self.retries + 1} tries: {last_problem}", url=url)

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
            if url and _page_key(self.url(url)) in seen:
                raise ApiError(
                    f"GET {_strip_query(resp.url)} (page {pages}): its 'next' link points back to a page "
                    "already fetched; stopped instead of fetching it again"
                )
            if max_pages is not None and pages >= max_pages:
                return

    def _wait(self, seconds: float) -> bool:
        if self.cancel is not None:
            return self.cancel.wait(seconds)
        time.sleep(seconds)
        return False


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
