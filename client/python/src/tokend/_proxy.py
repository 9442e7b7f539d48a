"""Requests to a credential's API through tokend's proxy (docs/HTTP.md,
"Proxy"): tokend adds the token and, when the API refuses it, gets a new
one and sends the request once more. Standard library only."""

from __future__ import annotations

import http.client
import threading
from typing import Mapping, Optional, Union
from urllib.parse import quote

from ._client import _STALE, DEFAULT_TIMEOUT, UnixHTTPConnection, _error_from, default_socket

Body = Union[bytes, str, None]

# Methods whose request may be sent again after a connection failed under it.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class ProxySession:
    """Requests to credential ``name``'s API, its token added by tokend.

    ``path`` is below the credential's API URL (``tokenctl edit NAME
    --api-url URL``), with its query: ``session.get("campaigns?page=2")``.
    The answer is the standard library's ``http.client.HTTPResponse``, read
    as it streams; read it whole (or close it) before the next request on
    the same session. An answer of tokend's own (the ``Tokend-Error``
    header: unknown credential, not allowed, needs a login, no API URL…)
    raises the same exceptions as :class:`tokend.Client`; the API's own
    answers, 4xx and 5xx included, are returned. One kept-alive connection
    per session; a lock makes it safe to share between threads (one request
    at a time).
    """

    def __init__(
        self,
        name: str,
        socket_path: Optional[str] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a credential name is a non-empty str")
        self.name = name
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self._conn: Optional[UnixHTTPConnection] = None
        self._lock = threading.Lock()

    def __enter__(self) -> "ProxySession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def request(
        self,
        method: str,
        path: str = "",
        body: Body = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> http.client.HTTPResponse:
        target = "/v1/proxy/" + quote(self.name, safe="") + "/" + path.lstrip("/")
        data = body.encode("utf-8") if isinstance(body, str) else body
        with self._lock:
            reused = self._conn is not None
            if self._conn is None:
                self._conn = UnixHTTPConnection(self.socket_path, timeout=self.timeout)
            try:
                self._conn.request(method, target, body=data, headers=dict(headers or {}))
                answer = self._conn.getresponse()
            except _STALE:
                # A kept-alive connection the daemon had closed (idle,
                # restart) is tried once more on a new one. The same reset
                # comes from a daemon that read the request, sent it on and
                # then stopped: only a request that may be sent twice
                # (RFC 9110 §9.2.2) is, so a POST never reaches the API twice.
                self._conn.close()
                self._conn = None
                if not reused or method.upper() not in _IDEMPOTENT:
                    raise
                self._conn = UnixHTTPConnection(self.socket_path, timeout=self.timeout)
                self._conn.request(method, target, body=data, headers=dict(headers or {}))
                answer = self._conn.getresponse()
            except BaseException:
                self._conn.close()
                self._conn = None
                raise
        if answer.getheader("Tokend-Error") is not None:
            raise _error_from(answer.status, answer.read())
        return answer

    def get(self, path: str = "", headers: Optional[Mapping[str, str]] = None) -> http.client.HTTPResponse:
        return self.request("GET", path, headers=headers)

    def post(
        self, path: str = "", body: Body = None, headers: Optional[Mapping[str, str]] = None
    ) -> http.client.HTTPResponse:
        return self.request("POST", path, body=body, headers=headers)


def proxy_session(name: str, socket_path: Optional[str] = None, timeout: Optional[float] = DEFAULT_TIMEOUT) -> ProxySession:
    """A :class:`ProxySession` for credential ``name`` on the default daemon
    (or the HTTP socket ``socket_path``)."""
    return ProxySession(name, socket_path, timeout)
