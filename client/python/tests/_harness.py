"""Shared harness for the Python client's tests: the real ``tokend`` in a
temporary directory (as tests/src/lib.rs ``Daemon::command`` starts it),
driven with the real ``tokenctl``, plus small local HTTP servers (an OAuth2
token endpoint and an API that refuses its first token).

Binaries: ``$TOKEND_BIN_DIR``, else ``$CARGO_TARGET_DIR/debug``, else the
repository's ``target/debug``. Tests that need them are skipped only when
``tokend`` is missing there.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.dirname(HERE)  # client/python
REPO = os.path.dirname(os.path.dirname(PACKAGE_DIR))
SRC = os.path.join(PACKAGE_DIR, "src")

# The package under test: the source tree, unless TOKEND_TEST_INSTALLED=1
# asks for the installed one.
if os.environ.get("TOKEND_TEST_INSTALLED") != "1" and SRC not in sys.path:
    sys.path.insert(0, SRC)

import tokend  # noqa: E402


def bin_dir() -> str:
    named = os.environ.get("TOKEND_BIN_DIR")
    if named:
        return os.path.abspath(named)
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        return os.path.join(os.path.abspath(os.path.join(REPO, target)), "debug")
    return os.path.join(REPO, "target", "debug")


def binary(name: str) -> str:
    return os.path.join(bin_dir(), name)


def _built() -> bool:
    return os.access(binary("tokend"), os.X_OK) and os.access(binary("tokenctl"), os.X_OK)


# TOKEND_REQUIRE_DAEMON=1 (run_tests.py --require-daemon, for CI): missing
# binaries fail the daemon tests instead of skipping them.
REQUIRE_DAEMON = os.environ.get("TOKEND_REQUIRE_DAEMON") == "1"


def have_daemon() -> bool:
    """Whether the daemon tests run: the binaries are built, or they are
    required (then a missing binary fails them)."""
    return REQUIRE_DAEMON or _built()


SKIP_REASON = (
    f"tokend/tokenctl not built in {bin_dir()} (cargo build --workspace --bins, "
    "or set TOKEND_BIN_DIR)"
)

# Environment a test process must not pass on to the daemon or tokenctl.
_SCRUB = (
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "CREDENTIALS_DIRECTORY",
    "TOKEND_SOCKET",
    "TOKEND_HTTP_SOCKET",
)


class Daemon:
    """A real ``tokend`` in its own temporary directory."""

    def __init__(self, config: Optional[str] = None):
        self.dir = tempfile.mkdtemp(prefix="tokend-py")
        self.socket = os.path.join(self.dir, "run", "tokend.sock")
        # The daemon's default: http.sock beside the main socket.
        self.http_socket = os.path.join(self.dir, "run", "http.sock")
        self.db = os.path.join(self.dir, "state", "tokend.db")
        self.config = os.path.join(self.dir, "config.toml")
        self.log = os.path.join(self.dir, "tokend.log")
        if config is not None:
            with open(self.config, "w") as f:
                f.write(config)
        self.proc: Optional[subprocess.Popen] = None

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env["XDG_RUNTIME_DIR"] = os.path.join(self.dir, "xdg-run")
        env["XDG_STATE_HOME"] = os.path.join(self.dir, "xdg-state")
        env["XDG_CONFIG_HOME"] = os.path.join(self.dir, "xdg-config")
        env.setdefault("TOKEND_LOG", "debug")
        return env

    def start(self) -> "Daemon":
        if not _built():
            raise AssertionError(SKIP_REASON.replace("not built", "missing"))
        cmd = [binary("tokend"), "--socket", self.socket, "--db", self.db, "--config", self.config]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )
        self.wait_ready()
        return self

    def wait_ready(self, limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"tokend exited early ({self.proc.returncode}):\n{self.log_text()}")
            if os.path.exists(self.http_socket):
                try:
                    with tokend.Client(self.http_socket, timeout=2.0) as c:
                        if c.health().get("status") == "ok":
                            return
                except tokend.Error:
                    pass
            time.sleep(0.02)
        raise AssertionError(
            f"tokend did not answer on {self.http_socket} within {limit} s "
            f"(built without the HTTP listener?):\n{self.log_text()}"
        )

    def stop(self) -> None:
        """SIGTERM and wait for the exit."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"tokend did not stop after SIGTERM:\n{self.log_text()}")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def tokenctl(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        env = self.env()
        env["TOKEND_SOCKET"] = self.socket
        return subprocess.run(
            [binary("tokenctl"), *args],
            input=stdin.encode(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60,
        )

    def tokenctl_ok(self, *args: str, stdin: str = "") -> str:
        out = self.tokenctl(*args, stdin=stdin)
        if out.returncode != 0:
            raise AssertionError(
                f"tokenctl {' '.join(args)} exited {out.returncode}\n"
                f"stdout: {out.stdout.decode(errors='replace')}\n"
                f"stderr: {out.stderr.decode(errors='replace')}"
            )
        return out.stdout.decode()

    def add_bearer(self, name: str, token: str, *extra: str) -> None:
        self.tokenctl_ok("add", "bearer", name, *extra, stdin=token)

    def client(self, **kw) -> tokend.Client:
        return tokend.Client(self.http_socket, **kw)


class _ThreadingHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server:
    """An ``http.server`` on 127.0.0.1 in a thread."""

    handler: type

    def __init__(self) -> None:
        owner = self

        class Handler(self.handler):  # type: ignore[misc, name-defined]
            server_owner = owner
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

        self.httpd = _ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _ProviderHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        owner = self.server_owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        with owner.lock:
            owner.requests.append(form)
            owner.issued += 1
            token = f"py-access-{owner.issued}-{os.urandom(4).hex()}"
            owner.tokens.append(token)
        body = json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Provider(_Server):
    """An OAuth2 token endpoint for the client-credentials grant: every POST
    issues a new, distinct access token (valid one hour)."""

    handler = _ProviderHandler

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: List[dict] = []
        self.tokens: List[str] = []
        self.issued = 0
        super().__init__()


class _ApiHandler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        owner = self.server_owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body_in = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization") or ""
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        with owner.lock:
            owner.seen.append((self.command, token, body_in))
            if owner.refused is None:
                owner.refused = token
            ok = token is not None and token != owner.refused and not owner.always
        status = 200 if ok else owner.status
        body = json.dumps({"ok": ok}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer


class RefusingApi(_Server):
    """An API that answers ``status`` (403) to the first token it sees and
    200 to any other (or ``status`` to every token, with ``always``)."""

    handler = _ApiHandler

    def __init__(self, status: int = 403, always: bool = False) -> None:
        self.lock = threading.Lock()
        self.always = always
        self.status = status
        self.refused: Optional[str] = None
        self.seen: List[tuple] = []
        super().__init__()


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        owner = self.server_owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with owner.lock:
            owner.seen.append((self.command, self.headers.get("Authorization")))
        self.send_response(307)
        self.send_header("Location", owner.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = _answer
    do_POST = _answer


class RedirectingApi(_Server):
    """An API that answers every request with a 307 to ``target``."""

    handler = _RedirectHandler

    def __init__(self, target: str) -> None:
        self.lock = threading.Lock()
        self.target = target
        self.seen: List[tuple] = []
        super().__init__()


def dead_socket(directory: str) -> str:
    """A socket file nobody listens on (connect gives ECONNREFUSED)."""
    path = os.path.join(directory, "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    return path
