"""The client: HTTP/1.1 + JSON over tokend's Unix socket ``http.sock``."""

from __future__ import annotations

import http.client
import json
import os
import socket as _socket
import struct
import threading
import time
import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import quote, urlencode

from ._errors import Error, NotUsable, PermissionDenied, UnknownCredential, Unreachable

__all__ = [
    "Client",
    "DEFAULT_TIMEOUT",
    "REFRESH_TIMEOUT",
    "SYSTEM_HTTP_SOCKET",
    "default_socket",
    "user_http_socket",
]

#: Seconds allowed for connecting and for each quick call (``status``,
#: ``credentials``, …).
DEFAULT_TIMEOUT = 5.0

#: Seconds allowed for an answer to the calls that may wait for a refresh
#: (``token``, ``token_info``, ``reject``, ``refresh``): the daemon itself
#: waits up to ``refresh.wait_secs`` (10 s) for a refresh in flight and up to
#: ``refresh.http_timeout_secs`` (15 s) for the provider, then answers with an
#: error. The client must not give up before the daemon does.
REFRESH_TIMEOUT = 30.0

#: The system daemon's HTTP socket (``tokend --system``).
SYSTEM_HTTP_SOCKET = "/run/tokend/http.sock"

HTTP_SOCKET_FILE = "http.sock"

#: Seconds an event stream may stay silent before it is taken as dead and
#: opened again: the daemon sends a heartbeat every 15 s.
WATCH_SILENCE = 45.0

#: Pause before the first reconnection of an event stream; it doubles up to
#: :data:`WATCH_MAX_PAUSE`.
WATCH_FIRST_PAUSE = 0.25
WATCH_MAX_PAUSE = 10.0

#: Seconds a stream must have lived for the pause to start again from
#: :data:`WATCH_FIRST_PAUSE`; one that ended sooner (``dropped`` at once, a
#: daemon that closes every stream) keeps doubling it: never a hot loop.
WATCH_STABLE = 30.0


def _reopen_pause(pause: float, lived: float) -> Tuple[float, float]:
    """The pause before opening an event stream again after one that
    ``lived`` seconds (0 for one that did not open), and the next pause."""
    if lived >= WATCH_STABLE:
        pause = WATCH_FIRST_PAUSE
    return pause, min(pause * 2, WATCH_MAX_PAUSE)

PathLike = Union[str, "os.PathLike[str]"]


def _user_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR``, else ``/run/user/UID`` if it exists, else
    ``$TMPDIR/tokend-UID`` — where the user's daemon puts its sockets."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return runtime
    uid = os.geteuid()
    run_user = f"/run/user/{uid}"
    if os.path.isdir(run_user):
        return run_user
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"tokend-{uid}")


def user_http_socket() -> str:
    """The user's daemon's HTTP socket: ``<runtime dir>/tokend/http.sock``."""
    return os.path.join(_user_runtime_dir(), "tokend", HTTP_SOCKET_FILE)


def default_socket() -> str:
    """The socket a client uses when none is named, found the way
    ``tokenctl`` finds ``tokend.sock``: ``$TOKEND_HTTP_SOCKET``, else the
    user's daemon's socket if it exists, else the system daemon's if that
    exists, else the user's (so that the error names the expected path)."""
    named = os.environ.get("TOKEND_HTTP_SOCKET")
    if named:
        return named
    user = user_http_socket()
    if os.path.exists(user):
        return user
    if os.path.exists(SYSTEM_HTTP_SOCKET):
        return SYSTEM_HTTP_SOCKET
    return user


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``http.client.HTTPConnection`` over a Unix stream socket.

    The Host header is ``localhost``; everything else (keep-alive, chunked
    answers, ``Content-Length``) is the standard library's.
    """

    def __init__(self, socket_path: str, timeout: Optional[float] = DEFAULT_TIMEOUT):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _peer_uid(sock: _socket.socket) -> Optional[int]:
    """The uid of the process on the other end, from the kernel (Linux)."""
    opt = getattr(_socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        creds = sock.getsockopt(_socket.SOL_SOCKET, opt, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# Errors that, on a connection already used before, mean the daemon closed it
# (restart, idle timeout) before reading our request: reconnect and send again.
_STALE = (
    BrokenPipeError,
    ConnectionResetError,  # includes http.client.RemoteDisconnected
    ConnectionAbortedError,
    http.client.RemoteDisconnected,
)

# Every live client, so that a forked child starts with a fresh lock and no
# connection shared with its parent.
_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._lock = threading.Lock()
        client._conn = None  # the parent's socket: never read or written here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Client:
    """A connection to tokend's HTTP socket.

    ``socket`` is the path of ``http.sock`` (default: :func:`default_socket`).
    ``timeout`` bounds connecting and each quick call, in seconds;
    ``refresh_timeout`` bounds the calls that may wait for a refresh
    (``token``, ``token_info``, ``reject``, ``refresh``), at least
    ``timeout``. ``None`` waits forever.

    The client keeps one HTTP/1.1 connection open and reuses it for every
    call. When the daemon has closed it (restart, idle timeout), the next
    call reconnects and sends its request again, once.

    **Threads:** a ``Client`` may be shared between threads. A lock
    serializes the calls: one request at a time on the one connection, so
    a ``token()`` that waits for a refresh makes the other threads wait too.
    For parallel calls, give each thread its own ``Client``. After
    ``os.fork()`` the child gets a fresh lock and opens its own connection.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        socket: Optional[PathLike] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        *,
        refresh_timeout: Optional[float] = REFRESH_TIMEOUT,
    ):
        self.socket_path: str = os.fspath(socket) if socket is not None else default_socket()
        self.timeout = timeout
        if refresh_timeout is not None and timeout is not None:
            refresh_timeout = max(refresh_timeout, timeout)
        elif timeout is None:
            refresh_timeout = None
        self.refresh_timeout = refresh_timeout
        self._lock = threading.Lock()
        self._conn: Optional[UnixHTTPConnection] = None
        _clients.add(self)

    def __repr__(self) -> str:
        return f"tokend.Client(socket={self.socket_path!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (a later call opens a new one)."""
        with self._lock:
            self._drop()

    # -- the API -----------------------------------------------------------

    def token(self, name: str, min_valid: int = 0) -> str:
        """A valid access token for credential ``name``, valid for at least
        ``min_valid`` more seconds (the daemon refreshes first if needed)."""
        return self.token_info(name, min_valid)["access_token"]

    def token_info(self, name: str, min_valid: int = 0) -> Dict[str, Any]:
        """The token with its metadata: ``{"access_token", "token_type",
        "expires_at" (RFC 3339 or None), "expires_in" (seconds or None)}``."""
        min_valid = _seconds(min_valid)
        query = f"?min_valid={min_valid}" if min_valid else ""
        body = self._call("GET", _cred(name, "/token") + query, slow=True)
        if not isinstance(body.get("access_token"), str):
            raise Error("tokend answered without an access token", "protocol", 200)
        return body

    def reject(self, name: str, token: Optional[str] = None) -> Dict[str, Any]:
        """Tells the daemon the API refused ``token`` (401/403): it refreshes
        now, unless ``token`` was already replaced (then nothing happens).
        Without ``token``, refreshes unconditionally. Returns
        ``{"refreshed", "message", "expires_at", "expires_in"}``."""
        payload = None if token is None else {"token": token}
        return self._call("POST", _cred(name, "/reject"), payload, slow=True)

    def refresh(self, name: str) -> Dict[str, Any]:
        """Refreshes now. Returns ``{"refreshed", "message", "expires_at",
        "expires_in"}``."""
        return self._call("POST", _cred(name, "/refresh"), slow=True)

    def credentials(self) -> List[Dict[str, Any]]:
        """Every credential this user may see (no secrets)."""
        body = self._call("GET", "/v1/credentials")
        creds = body.get("credentials")
        if not isinstance(creds, list):
            raise Error("tokend answered without a credential list", "protocol", 200)
        return creds

    def credential(self, name: str) -> Dict[str, Any]:
        """One credential's details (``tokenctl show``)."""
        return self._call("GET", _cred(name))

    def status(self) -> Dict[str, Any]:
        """The daemon's status (``tokenctl status``)."""
        return self._call("GET", "/v1/status")

    def health(self) -> Dict[str, Any]:
        """``{"status": "ok", "version": …}`` when the daemon answers."""
        return self._call("GET", "/v1/health")

    def watch(
        self,
        name: Optional[str] = None,
        *,
        include_token: bool = False,
        reconnect: bool = True,
    ) -> Iterator[Dict[str, Any]]:
        """The daemon's events for credential ``name`` (every credential this
        user may use when ``None``), as they happen: a generator of
        ``{"event": KIND, "data": {...}}`` with KIND one of ``current`` (first,
        the state of each credential, as :meth:`credential` gives it),
        ``refreshed``, ``state``, ``expiring``, ``added``, ``removed``
        (docs/HTTP.md, "Events"). With ``include_token``, ``refreshed``
        carries the new ``access_token``.

        The stream has a connection of its own (the client's other calls go
        on meanwhile). When it ends — the daemon restarted, the stream fell
        behind, nothing came for :data:`WATCH_SILENCE` seconds — it is
        opened again after a short pause (``reconnect=False``: the generator
        ends instead), and starts again with ``current``: a consumer always
        learns the state it may have missed. A refusal (unknown credential,
        permission denied, a bad argument) is raised, never retried; so is
        a daemon that cannot be reached on the first connection."""
        query: Dict[str, str] = {}
        if name is not None:
            _cred(name)
            query["credential"] = name
        if include_token:
            query["include_token"] = "true"
        path = "/v1/events" + ("?" + urlencode(query) if query else "")
        pause = WATCH_FIRST_PAUSE
        first = True
        while True:
            stream = self._stream(path)
            opened = time.monotonic()
            try:
                for event in stream:
                    first = False
                    if event["event"] == "dropped":
                        break  # fell behind: open again for the current state
                    yield event
            except Unreachable:
                if first or not reconnect:
                    raise
            finally:
                stream.close()
            if not reconnect:
                return
            now, pause = _reopen_pause(pause, time.monotonic() - opened)
            time.sleep(now)

    def _stream(self, path: str) -> Iterator[Dict[str, Any]]:
        """One event stream, to its end: its events parsed. Errors of the
        answer are raised as the other calls raise them; a connection lost
        or silent ends the stream (:class:`Unreachable`)."""
        conn = self._connect()
        try:
            conn.sock.settimeout(WATCH_SILENCE)
            try:
                conn.request("GET", path, headers={"Accept": "text/event-stream"})
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise Unreachable(
                    f"tokend at {self.socket_path} did not start the event stream: {_describe(e)}"
                ) from None
            if response.status != 200:
                raise _error_from(response.status, response.read())
            kind, data = "message", ""
            while True:
                try:
                    raw = response.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise Unreachable(
                        f"the event stream from {self.socket_path} ended: {_describe(e)}"
                    ) from None
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].lstrip(" ")
                elif not line and data:
                    try:
                        parsed = json.loads(data)
                    except ValueError:
                        raise Error("tokend sent an event that is not JSON", "protocol", 200) from None
                    yield {"event": kind, "data": parsed}
                    kind, data = "message", ""
        finally:
            conn.close()

    # -- the transport -----------------------------------------------------

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def _connect(self) -> UnixHTTPConnection:
        conn = UnixHTTPConnection(self.socket_path, self.timeout)
        path = self.socket_path
        try:
            conn.connect()
        except FileNotFoundError:
            raise Unreachable(f"tokend is not running: no socket at {path}") from None
        except ConnectionRefusedError:
            raise Unreachable(f"tokend is not running: nothing listens on {path}") from None
        except PermissionError:
            raise PermissionDenied(
                f"cannot open {path}: permission denied (ask an admin to add you to the "
                "socket's group, e.g. `usermod -aG tokend $USER`, then log in again)",
                "permission_denied",
            ) from None
        except _socket.timeout:
            raise Unreachable(
                f"tokend at {path} did not accept the connection within {self.timeout} s",
                "timeout",
            ) from None
        except OSError as e:
            raise Unreachable(f"cannot connect to tokend at {path}: {e.strerror or e}") from None
        uid = _peer_uid(conn.sock)
        me = os.geteuid()
        if uid is not None and uid not in (me, 0) and _same_path(path, user_http_socket()):
            conn.close()
            raise Unreachable(
                f"the socket {path} is served by uid {uid}, not by you or root: refusing "
                "to talk to it (another user may have created it; remove it, or set "
                "TOKEND_HTTP_SOCKET)",
                "impostor",
            )
        return conn

    def _call(
        self,
        method: str,
        path: str,
        payload: Optional[Dict[str, Any]] = None,
        slow: bool = False,
    ) -> Dict[str, Any]:
        status, data = self._roundtrip(method, path, payload, slow)
        if 200 <= status < 300:
            try:
                body = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise Error(f"tokend answered HTTP {status} without valid JSON", "protocol", status) from None
            if not isinstance(body, dict):
                raise Error(f"tokend answered HTTP {status} with JSON that is not an object", "protocol", status)
            return body
        raise _error_from(status, data)

    def _roundtrip(
        self,
        method: str,
        path: str,
        payload: Optional[Dict[str, Any]],
        slow: bool,
    ) -> Tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode("utf-8")
            headers["Content-Type"] = "application/json"
        read_timeout = self.refresh_timeout if slow else self.timeout
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                if not reused:
                    self._conn = self._connect()
                conn = self._conn
                try:
                    conn.sock.settimeout(read_timeout)
                    conn.request(method, path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                except _socket.timeout:
                    self._drop()
                    raise Unreachable(
                        f"tokend at {self.socket_path} did not answer within {read_timeout} s",
                        "timeout",
                    ) from None
                except _STALE as e:
                    self._drop()
                    if reused and attempt == 1:
                        continue  # the daemon closed a kept-alive connection: once more
                    raise Unreachable(
                        f"tokend at {self.socket_path} closed the connection: {_describe(e)}"
                    ) from None
                except http.client.HTTPException as e:
                    self._drop()
                    raise Error(
                        f"tokend at {self.socket_path} answered something that is not HTTP "
                        f"({type(e).__name__})",
                        "protocol",
                    ) from None
                except OSError as e:
                    self._drop()
                    raise Unreachable(
                        f"talking to tokend at {self.socket_path} failed: {_describe(e)}"
                    ) from None
                except BaseException:
                    # KeyboardInterrupt and the like: the connection is mid-request.
                    self._drop()
                    raise
                if response.will_close:
                    self._drop()
                elif self.timeout != read_timeout and self._conn is not None:
                    try:
                        self._conn.sock.settimeout(self.timeout)
                    except OSError:
                        self._drop()
                return response.status, data
        raise AssertionError("unreachable")  # pragma: no cover


def _describe(e: BaseException) -> str:
    if isinstance(e, http.client.RemoteDisconnected):
        return "it closed the connection without an answer"
    if isinstance(e, OSError) and e.errno is not None:
        return os.strerror(e.errno).lower()
    return type(e).__name__


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _seconds(value: int) -> int:
    if isinstance(value, bool):
        raise TypeError("min_valid must be a whole number of seconds")
    try:
        secs = int(value.__index__())  # type: ignore[union-attr]
    except AttributeError:
        raise TypeError("min_valid must be a whole number of seconds") from None
    if secs < 0:
        raise ValueError("min_valid must not be negative")
    return secs


def _cred(name: str, suffix: str = "") -> str:
    if not isinstance(name, str):
        raise TypeError("a credential name is a str")
    if not name:
        raise ValueError("a credential name must not be empty")
    return "/v1/credentials/" + quote(name, safe="") + suffix


def _error_from(status: int, data: bytes) -> Error:
    """The exception for an error answer. The message is the daemon's; a body
    that is not the documented JSON is never echoed (it is not ours to show)."""
    body: Dict[str, Any] = {}
    try:
        parsed = json.loads(data.decode("utf-8"))
        if isinstance(parsed, dict):
            body = parsed
    except (UnicodeDecodeError, ValueError):
        pass
    code = body.get("error") if isinstance(body.get("error"), str) else None
    message = body.get("message") if isinstance(body.get("message"), str) else None
    if not message:
        message = f"tokend answered HTTP {status}" + (f" ({code})" if code else "")
    code = code or f"http_{status}"
    if code == "permission_denied" or status == 403:
        return PermissionDenied(message, code, status)
    if code == "unknown_credential":
        return UnknownCredential(message, code, status)
    if code == "not_usable":
        state = body.get("state") if isinstance(body.get("state"), str) else None
        return NotUsable(message, code, status, state)
    return Error(message, code, status)

