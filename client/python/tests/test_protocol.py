"""The client's side of the protocol, against a small fake of the HTTP API
on a Unix socket (no daemon needed): socket discovery, keep-alive and
reconnecting, error mapping, answers that are not the documented JSON."""

from __future__ import annotations

import http.server
import json
import os
import pickle
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import unittest
from unittest import mock

import _harness  # noqa: F401  (puts the package under test on sys.path)
import tokend

SECRET = "fake-secret-token-0123456789"


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.connections += 1  # type: ignore[attr-defined]
            self.server.open.add(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.open.discard(self.connection)  # type: ignore[attr-defined]
        super().finish()

    def _send(self, status: int, body, content_type: str = "application/json", close: bool = False) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        srv.seen.append((self.command, self.path, dict(self.headers), raw))  # type: ignore[attr-defined]
        p = self.path
        if p.startswith("/v1/credentials/rot/"):
            with srv.lock:  # type: ignore[attr-defined]
                current = f"rot-token-{srv.rotations}"  # type: ignore[attr-defined]
                if p.endswith("/reject"):
                    refreshed = json.loads(raw or b"{}").get("token") == current
                    if refreshed:
                        srv.rotations += 1  # type: ignore[attr-defined]
                    return self._send(200, {"refreshed": refreshed, "message": "m", "expires_at": None, "expires_in": None})
            return self._send(200, {"access_token": current, "token_type": "Bearer", "expires_at": None, "expires_in": None})
        if p == "/v1/credentials/x/reject" and raw and json.loads(raw).get("token") == "bearer":
            return self._send(400, {"error": "bad_request", "message": "bearer credential \"x\" cannot be refreshed"})
        if p == "/v1/health":
            return self._send(200, {"status": "ok", "version": "fake"})
        if p == "/v1/status":
            return self._send(200, {"version": "fake", "credentials": 1})
        if p == "/v1/credentials":
            return self._send(200, {"credentials": [{"name": "x", "state": "ready"}]})
        if p == "/v1/credentials/x":
            return self._send(200, {"name": "x", "state": "ready", "has_token": True})
        if p.startswith("/v1/credentials/x/token"):
            return self._send(200, {"access_token": SECRET, "token_type": "Bearer", "expires_at": None, "expires_in": None})
        if p == "/v1/credentials/x/reject" and self.command == "POST":
            return self._send(200, {"refreshed": True, "message": "refreshed credential \"x\"", "expires_at": None, "expires_in": None})
        if p == "/v1/credentials/x/refresh" and self.command == "POST":
            return self._send(200, {"refreshed": True, "message": "ok", "expires_at": None, "expires_in": None})
        if p == "/v1/credentials/closing/token":
            return self._send(200, {"access_token": SECRET, "token_type": "Bearer", "expires_at": None, "expires_in": None}, close=True)
        if p == "/v1/credentials/login/token":
            return self._send(409, {"error": "not_usable", "state": "needs-login", "message": "credential \"login\" needs a login: run `tokenctl login login`"})
        if p == "/v1/credentials/denied/token":
            return self._send(403, {"error": "permission_denied", "message": "permission denied: uid 1000 may not read credential \"denied\""})
        if p == "/v1/credentials/busy/token":
            return self._send(503, {"error": "timeout", "message": "credential \"busy\" is still refreshing"})
        if p == "/v1/credentials/garbage/token":
            return self._send(200, b"<html>" + SECRET.encode(), "text/html")
        if p == "/v1/credentials/garbage-error/token":
            return self._send(500, b"oops " + SECRET.encode(), "text/plain")
        if p.startswith("/v1/credentials/"):
            return self._send(404, {"error": "unknown_credential", "message": "no credential named \"nope\""})
        return self._send(404, {"error": "not_found", "message": "no such route"})

    do_GET = _route
    do_POST = _route


class _FakeServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str):
        self.lock = threading.Lock()
        self.connections = 0
        self.rotations = 0
        self.open: set = set()
        self.seen: list = []
        super().__init__(path, _FakeHandler)

    def drop_all(self) -> None:
        """Closes every kept-alive connection, as a restarted daemon would."""
        with self.lock:
            conns = list(self.open)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _WithFake(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="tokend-py-fake")
        self.path = os.path.join(self.dir, "http.sock")
        self.server = _FakeServer(self.path)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.client = tokend.Client(self.path)

    def tearDown(self) -> None:
        self.client.close()
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeDaemonTest(_WithFake):
    def test_calls_and_requests(self) -> None:
        c = self.client
        self.assertEqual(c.health(), {"status": "ok", "version": "fake"})
        self.assertEqual(c.token("x"), SECRET)
        self.assertEqual(c.token_info("x")["token_type"], "Bearer")
        self.assertEqual(c.credentials(), [{"name": "x", "state": "ready"}])
        self.assertEqual(c.credential("x")["name"], "x")
        self.assertEqual(c.status()["version"], "fake")
        self.assertTrue(c.refresh("x")["refreshed"])
        self.assertTrue(c.reject("x", SECRET)["refreshed"])
        self.assertTrue(c.reject("x")["refreshed"])
        c.token("x", min_valid=120)
        seen = self.server.seen
        method, path, headers, body = seen[1]
        self.assertEqual((method, path), ("GET", "/v1/credentials/x/token"))
        self.assertEqual(headers["Host"], "localhost")
        # the token goes in the body, never in the URL
        reject_with, reject_without = seen[7], seen[8]
        self.assertEqual(reject_with[:2], ("POST", "/v1/credentials/x/reject"))
        self.assertEqual(json.loads(reject_with[3]), {"token": SECRET})
        self.assertEqual(reject_with[2]["Content-Type"], "application/json")
        self.assertEqual(reject_without[3], b"")
        self.assertEqual(reject_without[2]["Content-Length"], "0")
        self.assertEqual(seen[9][1], "/v1/credentials/x/token?min_valid=120")
        # all of it on one kept-alive connection
        self.assertEqual(self.server.connections, 1)

    def test_names_are_quoted(self) -> None:
        with self.assertRaises(tokend.UnknownCredential):
            self.client.token("a/b c")
        self.assertEqual(self.server.seen[-1][1], "/v1/credentials/a%2Fb%20c/token")
        with self.assertRaises(ValueError):
            self.client.token("")
        with self.assertRaises(ValueError):
            self.client.token("x", min_valid=-1)
        with self.assertRaises(TypeError):
            self.client.token("x", min_valid=1.5)

    def test_reconnects_once_when_the_daemon_closed_the_connection(self) -> None:
        self.assertEqual(self.client.token("x"), SECRET)
        for _ in range(3):
            self.server.drop_all()
            self.assertEqual(self.client.token("x"), SECRET)
        self.assertEqual(self.server.connections, 4)

    def test_connection_close_answer_is_not_reused(self) -> None:
        self.assertEqual(self.client.token("closing"), SECRET)
        self.assertIsNone(self.client._conn)
        self.assertEqual(self.client.token("x"), SECRET)
        self.assertEqual(self.server.connections, 2)

    def test_errors(self) -> None:
        c = self.client
        with self.assertRaises(tokend.NotUsable) as cm:
            c.token("login")
        e = cm.exception
        self.assertEqual((e.code, e.status, e.state), ("not_usable", 409, "needs-login"))
        self.assertIn("needs a login", str(e))
        self.assertIn("needs-login", repr(e))
        with self.assertRaises(tokend.PermissionDenied) as cm:
            c.token("denied")
        self.assertEqual((cm.exception.code, cm.exception.status), ("permission_denied", 403))
        with self.assertRaises(tokend.UnknownCredential) as cm:
            c.token("nope")
        self.assertEqual(cm.exception.status, 404)
        with self.assertRaises(tokend.Error) as cm:
            c.token("busy")
        self.assertEqual((type(cm.exception), cm.exception.code, cm.exception.status), (tokend.Error, "timeout", 503))
        # a body that is not the documented JSON is never echoed
        for name in ("garbage", "garbage-error"):
            with self.assertRaises(tokend.Error) as cm:
                c.token(name)
            self.assertNotIn(SECRET, str(cm.exception))
            self.assertNotIn(SECRET, repr(cm.exception))
        # after all that, the connection still works
        self.assertEqual(c.token("x"), SECRET)

    def test_exceptions_pickle_with_their_fields(self) -> None:
        e = tokend.NotUsable("m", "not_usable", 409, "failing")
        back = pickle.loads(pickle.dumps(e))
        self.assertEqual((type(back), back.message, back.code, back.status, back.state), (tokend.NotUsable, "m", "not_usable", 409, "failing"))
        u = pickle.loads(pickle.dumps(tokend.Unreachable("gone")))
        self.assertEqual((type(u), u.code, u.status), (tokend.Unreachable, "unreachable", None))

    def test_threads_share_one_client(self) -> None:
        errors = []

        def work() -> None:
            try:
                for _ in range(50):
                    assert self.client.token("x") == SECRET
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(self.server.connections, 1)

    def test_module_level_token_and_environment(self) -> None:
        env = dict(os.environ, TOKEND_HTTP_SOCKET=self.path, PYTHONPATH=_harness.SRC)
        out = subprocess.run(
            [sys.executable, "-c", "import tokend, sys; sys.stdout.write(tokend.token('x'))"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
        )
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertEqual(out.stdout.decode(), SECRET)

    def test_timeout_is_unreachable(self) -> None:
        # a socket that accepts but never answers
        path = os.path.join(self.dir, "silent.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(1)
        try:
            with tokend.Client(path, timeout=0.3) as c:
                with self.assertRaises(tokend.Unreachable) as cm:
                    c.health()
            self.assertEqual(cm.exception.code, "timeout")
            self.assertIn("did not answer within 0.3 s", str(cm.exception))
        finally:
            s.close()


try:
    import requests
except ImportError:  # pragma: no cover - depends on the environment
    requests = None
try:
    import httpx
except ImportError:  # pragma: no cover - depends on the environment
    httpx = None


class BearerAuthFakeTest(_WithFake):
    """BearerAuth's retry logic against the fake daemon, whose credential
    "rot" gets a new token when its current one is rejected."""

    def _check(self, send) -> None:
        api = _harness.RefusingApi(403)
        self.addCleanup(api.close)
        auth = tokend.BearerAuth("rot", client=self.client)
        self.assertEqual(send(api.url("/a"), auth), (200, 1))
        self.assertEqual([t for _, t, _ in api.seen], ["rot-token-0", "rot-token-1"])
        self.assertEqual(api.seen[0][2], api.seen[1][2])
        self.assertEqual(send(api.url("/b"), auth), (200, 0))
        # 401 is not in reject_on here: returned as is
        api401 = _harness.RefusingApi(401)
        self.addCleanup(api401.close)
        self.assertEqual(send(api401.url("/c"), tokend.BearerAuth("rot", reject_on=(403,), client=self.client)), (401, 0))
        # a token tokend cannot replace: the refusal is returned as is
        api2 = _harness.RefusingApi(403)
        self.addCleanup(api2.close)
        self.assertEqual(send(api2.url("/d"), tokend.BearerAuth("x", client=self.client)), (403, 0))
        self.assertEqual(len(api2.seen), 1)
        # a second refusal after the retry is returned, not retried again
        api3 = _harness.RefusingApi(403, always=True)
        self.addCleanup(api3.close)
        before = self.server.rotations
        self.assertEqual(send(api3.url("/e"), auth), (403, 1))
        self.assertEqual(self.server.rotations, before + 1)
        self.assertEqual(len(api3.seen), 2)

    @unittest.skipIf(requests is None, "requests is not installed")
    def test_requests(self) -> None:
        def send(url, auth):
            r = requests.post(url, data=b"payload", auth=auth, timeout=10)
            return r.status_code, len(r.history)

        self._check(send)

    @unittest.skipIf(httpx is None, "httpx is not installed")
    def test_httpx(self) -> None:
        def send(url, auth):
            with httpx.Client(auth=auth, timeout=10) as h:
                r = h.post(url, content=b"payload")
            return r.status_code, len(r.history)

        self._check(send)

    @unittest.skipIf(httpx is None, "httpx is not installed")
    def test_httpx_async(self) -> None:
        import asyncio

        def send(url, auth):
            async def go():
                async with httpx.AsyncClient(auth=auth, timeout=10) as h:
                    return await h.post(url, content=b"payload")

            r = asyncio.run(go())
            return r.status_code, len(r.history)

        self._check(send)

    def test_no_token_in_repr(self) -> None:
        auth = tokend.BearerAuth("rot", client=self.client)
        self.assertNotIn("rot-token", repr(auth))


class WatchPauseTest(unittest.TestCase):
    def test_reopening_backs_off_and_starts_again_only_after_a_long_stream(self) -> None:
        from tokend._client import _reopen_pause

        pause, slept = tokend._client.WATCH_FIRST_PAUSE, []
        for _ in range(7):
            now, pause = _reopen_pause(pause, 0.1)
            slept.append(now)
        # Streams dropped at once (even after events) keep the pause growing.
        self.assertEqual(slept, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0])
        # A stream that lived 30 s was a good one: from the start again.
        now, pause = _reopen_pause(pause, 30.0)
        self.assertEqual((now, pause), (0.25, 0.5))
        self.assertEqual(_reopen_pause(pause, 1.0), (0.5, 1.0))


class DiscoveryTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="tokend-py-disc")

    def tearDown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_order(self) -> None:
        runtime = os.path.join(self.dir, "run")
        user = os.path.join(runtime, "tokend", "http.sock")
        with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": runtime, "TOKEND_HTTP_SOCKET": "/x/http.sock"}):
            self.assertEqual(tokend.default_socket(), "/x/http.sock")
            self.assertEqual(tokend.Client().socket_path, "/x/http.sock")
            self.assertEqual(tokend.Client(socket="/y.sock").socket_path, "/y.sock")
        with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": runtime, "TOKEND_HTTP_SOCKET": ""}):
            self.assertEqual(tokend.user_http_socket(), user)
            expected = tokend.SYSTEM_HTTP_SOCKET if os.path.exists(tokend.SYSTEM_HTTP_SOCKET) else user
            self.assertEqual(tokend.default_socket(), expected)
            os.makedirs(os.path.dirname(user))
            open(user, "w").close()
            self.assertEqual(tokend.default_socket(), user)

    def test_missing_and_dead_sockets_are_unreachable(self) -> None:
        missing = os.path.join(self.dir, "nothing", "http.sock")
        with tokend.Client(missing) as c:
            with self.assertRaises(tokend.Unreachable) as cm:
                c.token("x")
        e = cm.exception
        self.assertEqual((e.code, e.status), ("unreachable", None))
        self.assertIn(missing, str(e))
        dead = _harness.dead_socket(self.dir)
        with self.assertRaises(tokend.Unreachable) as cm:
            tokend.Client(dead).health()
        self.assertIn("nothing listens", str(cm.exception))

    def test_import_without_requests_or_httpx(self) -> None:
        code = (
            "import sys; sys.modules['requests'] = None; sys.modules['httpx'] = None\n"
            "import tokend\n"
            "a = tokend.BearerAuth('x')\n"
            "assert 'requests' not in repr(type(a).__mro__), type(a).__mro__\n"
            "print('ok')\n"
        )
        env = dict(os.environ, PYTHONPATH=_harness.SRC)
        out = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertEqual(out.stdout.decode().strip(), "ok")

    def test_import_does_not_load_requests(self) -> None:
        code = "import sys, tokend; print('requests' in sys.modules, 'httpx' in sys.modules)"
        env = dict(os.environ, PYTHONPATH=_harness.SRC)
        out = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(out.stdout.decode().strip(), "False False", out.stderr.decode())


if __name__ == "__main__":
    unittest.main()
