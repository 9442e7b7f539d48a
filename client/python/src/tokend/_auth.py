"""``BearerAuth``: tokend tokens for ``requests`` and ``httpx``.

Both libraries are optional: each is imported here only if installed, and
``BearerAuth`` subclasses the auth base class of each one found.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any, Generator, Iterable, List, Optional, Tuple

from ._client import Client
from ._errors import Error

__all__ = ["BearerAuth"]

_bases: List[type] = []
try:  # requests: an AuthBase is called with the PreparedRequest
    import requests.auth as _requests_auth
    from requests.cookies import extract_cookies_to_jar as _extract_cookies_to_jar

    _bases.append(_requests_auth.AuthBase)
except ImportError:  # pragma: no cover - depends on the environment
    _requests_auth = None  # type: ignore[assignment]
try:  # httpx: an Auth has a generator auth_flow
    import httpx as _httpx

    _bases.append(_httpx.Auth)
except ImportError:  # pragma: no cover - depends on the environment
    _httpx = None  # type: ignore[assignment]
if not _bases:
    _bases.append(object)

_RETRIED = "_tokend_retried"


def _may_retry(first_url: str, answered_url: str) -> bool:
    """Whether an answer from ``answered_url`` to a request sent to
    ``first_url`` may cost the token and be sent again with a fresh one:
    only if it is the very URL the token was attached for (an answer after
    a redirect comes from somewhere else, which the token was not meant
    for), and only over https or to this machine (a fresh token never
    crosses a network in clear)."""
    if answered_url != first_url:
        return False
    parts = urllib.parse.urlsplit(first_url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BearerAuth(*_bases):  # type: ignore[misc]
    """Sets ``Authorization: Bearer <token>`` from tokend on every request.

    When the API answers one of ``reject_on`` (default 401 and 403: Uptempo
    answers an expired token with 403), it tells tokend that the token it
    sent was refused (``Client.reject``), takes the new token and sends the
    request once more. If tokend has no other token (a static bearer token,
    or the refresh did not change it), the first answer is returned as is.
    Only an answer from the URL the token was sent to counts: one that
    came after a redirect is returned as is, and nothing is rejected or
    sent again. A retry goes over https, or to this machine, only.

    Works with ``requests`` (``requests.get(url, auth=BearerAuth("x"))``) and
    ``httpx`` (``httpx.Client(auth=BearerAuth("x"))``, sync or async; the
    calls to tokend are short blocking calls on a local socket).

    ``client`` is the :class:`tokend.Client` to use (default: the shared
    :func:`tokend.default_client`); ``min_valid`` is passed to ``token()``.
    """

    # httpx: read the request body before the flow, so a retry can resend it.
    requires_request_body = True
    requires_response_body = False

    def __init__(
        self,
        name: str,
        reject_on: Iterable[int] = (401, 403),
        client: Optional[Client] = None,
        min_valid: int = 0,
    ):
        self.name = name
        self.reject_on: Tuple[int, ...] = tuple(reject_on)
        self.min_valid = min_valid
        self._client = client

    def __repr__(self) -> str:
        return f"tokend.BearerAuth({self.name!r}, reject_on={self.reject_on!r})"

    @property
    def client(self) -> Client:
        if self._client is None:
            from . import default_client

            self._client = default_client()
        return self._client

    def _token(self) -> str:
        return self.client.token(self.name, self.min_valid)

    def _replacement(self, refused: str) -> Optional[str]:
        """Rejects ``refused`` and returns the token to retry with, or None
        when tokend has nothing newer."""
        try:
            self.client.reject(self.name, refused)
        except Error as e:
            # A static bearer token cannot be refreshed (400): it may still
            # have been replaced (`tokenctl add --replace`), so look.
            if e.code != "bad_request":
                raise
        fresh = self._token()
        return None if fresh == refused else fresh

    # -- requests ----------------------------------------------------------

    def __call__(self, r: Any) -> Any:
        first_url = r.url
        sent = self._token()
        r.headers["Authorization"] = "Bearer " + sent
        try:
            position = r.body.tell()
        except AttributeError:
            position = None
        except OSError:
            position = None

        def on_response(resp: Any, **kwargs: Any) -> Any:
            # requests runs this hook for every answer, redirects' included.
            if not _may_retry(first_url, resp.request.url):
                return resp
            return self._requests_retry(resp, sent, position, **kwargs)

        r.register_hook("response", on_response)
        return r

    def _requests_retry(self, resp: Any, sent: str, position: Optional[int], **kwargs: Any) -> Any:
        request = resp.request
        if resp.status_code not in self.reject_on or getattr(request, _RETRIED, False):
            return resp
        fresh = self._replacement(sent)
        if fresh is None:
            return resp
        if position is not None:
            try:
                request.body.seek(position)
            except (AttributeError, OSError):
                return resp  # the body cannot be sent again
        # As requests' own HTTPDigestAuth does: finish the first answer,
        # carry its cookies over, send a copy with the new token.
        _ = resp.content
        resp.close()
        retry = request.copy()
        _extract_cookies_to_jar(retry._cookies, request, resp.raw)
        retry.prepare_cookies(retry._cookies)
        retry.headers["Authorization"] = "Bearer " + fresh
        setattr(retry, _RETRIED, True)
        again = resp.connection.send(retry, **kwargs)
        again.history.append(resp)
        again.request = retry
        return again

    # -- httpx -------------------------------------------------------------

    def auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        sent = self._token()
        request.headers["Authorization"] = "Bearer " + sent
        response = yield request
        if response.status_code not in self.reject_on:
            return
        # The last answer of any redirects httpx followed: its history says.
        answered = str(response.request.url)
        if response.history or not _may_retry(str(request.url), answered):
            return
        fresh = self._replacement(sent)
        if fresh is None:
            return
        request.headers["Authorization"] = "Bearer " + fresh
        yield request
