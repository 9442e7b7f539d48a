"""tokend: fresh API tokens from the local credential broker.

    import tokend
    token = tokend.token("uptempo")          # one call, for scripts

    with tokend.Client() as client:          # one kept-alive connection
        info = client.token_info("uptempo")
        client.reject("uptempo", info["access_token"])   # the API said 401/403

    import requests
    requests.get(url, auth=tokend.BearerAuth("uptempo"))

    with tokend.proxy_session("uptempo") as api:   # no token handling at all
        answer = api.get("campaigns?page=2")       # tokend adds it, retries once

    for event in tokend.watch("uptempo"):          # live: current, refreshed, …
        print(event["event"], event["data"])

Standard library only; ``BearerAuth`` works with ``requests`` and ``httpx``
when they are installed.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional

from ._client import (
    DEFAULT_TIMEOUT,
    REFRESH_TIMEOUT,
    SYSTEM_HTTP_SOCKET,
    Client,
    default_socket,
    user_http_socket,
)
from ._errors import Error, NotUsable, PermissionDenied, UnknownCredential, Unreachable
from ._proxy import ProxySession, proxy_session

if TYPE_CHECKING:  # pragma: no cover
    from ._auth import BearerAuth

__version__ = "0.1.0"

__all__ = [
    "BearerAuth",
    "Client",
    "DEFAULT_TIMEOUT",
    "Error",
    "NotUsable",
    "PermissionDenied",
    "ProxySession",
    "REFRESH_TIMEOUT",
    "SYSTEM_HTTP_SOCKET",
    "UnknownCredential",
    "Unreachable",
    "default_client",
    "default_socket",
    "proxy_session",
    "token",
    "user_http_socket",
    "watch",
]

_default: Optional[Client] = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide client used by :func:`token` and by ``BearerAuth``
    without a ``client``: made on first use, for the default socket."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def token(name: str, min_valid: int = 0) -> str:
    """A valid access token for credential ``name`` from the default daemon,
    valid for at least ``min_valid`` more seconds."""
    return default_client().token(name, min_valid)


def watch(name: Optional[str] = None, **kw: Any) -> Iterator[Dict[str, Any]]:
    """The default daemon's events for credential ``name`` (every credential
    this user may use when ``None``): see :meth:`Client.watch`. The stream
    has a connection of its own; the default client is not held."""
    return Client().watch(name, **kw)


def __getattr__(attr: str) -> Any:
    # BearerAuth imports requests and httpx (when installed); only pay for
    # that when it is used.
    if attr == "BearerAuth":
        from ._auth import BearerAuth

        globals()["BearerAuth"] = BearerAuth
        return BearerAuth
    raise AttributeError(f"module 'tokend' has no attribute {attr!r}")


def __dir__() -> list:
    return sorted(set(globals()) | {"BearerAuth"})
