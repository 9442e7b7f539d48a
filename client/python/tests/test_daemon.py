"""The Python client against the real ``tokend`` binary (started in a temp
directory, credentials added with the real ``tokenctl``). Skipped only when
the binaries are not built; ``.ci/run`` builds them first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import _harness
import tokend

try:
    import requests
except ImportError:  # pragma: no cover - depends on the environment
    requests = None
try:
    import httpx
except ImportError:  # pragma: no cover - depends on the environment
    httpx = None

BEARER = "py-bearer-secret-6f1c0e2a9b"


def _add_client_credentials(daemon: _harness.Daemon, name: str, provider: _harness.Provider) -> None:
    daemon.tokenctl_ok(
        "add", "client-credentials", name,
        "--token-url", provider.url("/token"),
        "--client-id", "py-client",
        stdin="py-client-secret",
    )


@unittest.skipUnless(_harness.have_daemon(), _harness.SKIP_REASON)
class DaemonTest(unittest.TestCase):
    """One daemon for the class: every call, the errors, BearerAuth."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.daemon = _harness.Daemon()
        cls.addClassCleanup(cls.daemon.cleanup)
        cls.daemon.start()
        cls.daemon.add_bearer("static", BEARER)
        cls.daemon.tokenctl_ok(
            "add", "oauth2", "login",
            "--auth-url", "http://127.0.0.1:9/a",
            "--token-url", "http://127.0.0.1:9/t",
            "--client-id", "c", "--no-client-secret",
        )
        cls.provider = _harness.Provider()
        cls.addClassCleanup(cls.provider.close)
        _add_client_credentials(cls.daemon, "cc", cls.provider)

    def setUp(self) -> None:
        self.client = self.daemon.client()
        self.addCleanup(self.client.close)

    def fail_with_log(self, msg: str) -> None:  # pragma: no cover - diagnostics
        self.fail(f"{msg}\n--- tokend log ---\n{self.daemon.log_text()[-4000:]}")

    def test_health_and_status(self) -> None:
        health = self.client.health()
        self.assertEqual(health["status"], "ok")
        self.assertIsInstance(health["version"], str)
        status = self.client.status()
        self.assertIsInstance(status, dict)
        self.assertNotIn(BEARER, json.dumps(status))

    def test_bearer_token(self) -> None:
        self.assertEqual(self.client.token("static"), BEARER)
        self.assertEqual(self.client.token("static", min_valid=60), BEARER)
        info = self.client.token_info("static")
        self.assertEqual(info["access_token"], BEARER)
        self.assertEqual(info["token_type"], "Bearer")
        self.assertIsNone(info["expires_at"])
        self.assertIsNone(info["expires_in"])

    def test_credentials_and_credential(self) -> None:
        creds = self.client.credentials()
        by_name = {c["name"]: c for c in creds}
        self.assertLessEqual({"static", "login", "cc"}, set(by_name))
        self.assertEqual(by_name["static"]["state"], "ready")
        self.assertEqual(by_name["login"]["state"], "needs-login")
        show = self.client.credential("static")
        self.assertEqual(show["name"], "static")
        self.assertEqual(show["state"], "ready")
        self.assertIs(show["has_token"], True)
        for field in ("description", "spec", "owner_uid", "allowed", "reason", "has_refresh_token",
                      "created_at", "expires_at", "last_refresh_at", "last_use_at",
                      "next_refresh_at", "last_error", "last_check"):
            self.assertIn(field, show)
        everything = json.dumps([creds, show])
        self.assertNotIn(BEARER, everything)
        self.assertNotIn("py-client-secret", everything)

    def test_oauth_token_refresh_and_reject(self) -> None:
        c = self.client
        first = c.token("cc")
        self.assertIn(first, self.provider.tokens)
        info = c.token_info("cc")
        self.assertEqual(info["access_token"], first)
        self.assertIsInstance(info["expires_in"], int)
        self.assertGreater(info["expires_in"], 3000)
        self.assertIsInstance(info["expires_at"], str)

        answer = c.refresh("cc")
        self.assertIs(answer["refreshed"], True)
        self.assertIsInstance(answer["message"], str)
        second = c.token("cc")
        self.assertNotEqual(second, first)
        self.assertEqual(second, self.provider.tokens[-1])

        # a token that was already replaced: nothing happens
        issued = self.provider.issued
        stale = c.reject("cc", first)
        self.assertIs(stale["refreshed"], False)
        self.assertEqual(self.provider.issued, issued)
        self.assertEqual(c.token("cc"), second)

        # the current token: a refresh
        fresh = c.reject("cc", second)
        self.assertIs(fresh["refreshed"], True)
        self.assertEqual(self.provider.issued, issued + 1)
        third = c.token("cc")
        self.assertNotIn(third, (first, second))
        for answer in (stale, fresh):
            for t in (first, second, third):
                self.assertNotIn(t, json.dumps(answer))

    def test_unknown_credential(self) -> None:
        for call in (lambda: self.client.token("no-such"), lambda: self.client.credential("no-such"),
                     lambda: self.client.reject("no-such", BEARER)):
            with self.assertRaises(tokend.UnknownCredential) as cm:
                call()
            e = cm.exception
            self.assertEqual((e.code, e.status), ("unknown_credential", 404))
            self.assertTrue(e.message)
            self.assertNotIn(BEARER, str(e) + repr(e))

    def test_needs_login_is_not_usable(self) -> None:
        with self.assertRaises(tokend.NotUsable) as cm:
            self.client.token("login")
        e = cm.exception
        self.assertEqual((e.code, e.status, e.state), ("not_usable", 409, "needs-login"))
        self.assertTrue(e.message)
        self.assertIsInstance(e, tokend.Error)

    def test_bearer_cannot_be_refreshed(self) -> None:
        with self.assertRaises(tokend.Error) as cm:
            self.client.refresh("static")
        self.assertEqual(cm.exception.status, 400)
        self.assertNotIn(BEARER, str(cm.exception) + repr(cm.exception))

    def test_one_connection_for_many_calls_and_threads(self) -> None:
        c = self.client
        c.health()
        conn = c._conn
        errors = []

        def work() -> None:
            try:
                for _ in range(50):
                    if c.token("static") != BEARER:
                        raise AssertionError("wrong token")
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual([repr(e) for e in errors], [])
        self.assertIs(c._conn, conn, "the kept-alive connection was replaced")

    def test_module_level_token(self) -> None:
        env = dict(os.environ, TOKEND_HTTP_SOCKET=self.daemon.http_socket, PYTHONPATH=_harness.SRC)
        out = subprocess.run(
            [sys.executable, "-c", "import sys, tokend; sys.stdout.write(tokend.token('static', min_valid=5))"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
        )
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertEqual(out.stdout.decode(), BEARER)

    def _bearer_auth_retries(self, name: str, send) -> None:
        """``send(url, auth)`` makes one request and returns (status, number
        of earlier answers, the answer's JSON)."""
        _add_client_credentials(self.daemon, name, self.provider)
        api = _harness.RefusingApi(403)
        self.addCleanup(api.close)
        first = self.client.token(name)
        auth = tokend.BearerAuth(name, client=self.client)
        status, history, body = send(api.url("/data"), auth)
        self.assertEqual((status, history, body), (200, 1, {"ok": True}))
        tokens = [t for _, t, _ in api.seen]
        self.assertEqual(tokens[0], first)
        self.assertEqual(len(tokens), 2)
        self.assertNotEqual(tokens[1], first)
        self.assertEqual(tokens[1], self.client.token(name))
        # the body went out again with the retry
        self.assertEqual(api.seen[0][2], api.seen[1][2])
        self.assertEqual(json.loads(api.seen[1][2]), {"n": 1})
        # a later request uses the new token at once
        status, history, _ = send(api.url("/again"), auth)
        self.assertEqual((status, history), (200, 0))

    def _static_bearer_not_retried(self, send) -> None:
        api = _harness.RefusingApi(403)
        self.addCleanup(api.close)
        status, history, _ = send(api.url("/data"), tokend.BearerAuth("static", client=self.client))
        self.assertEqual((status, history), (403, 0))
        self.assertEqual([t for _, t, _ in api.seen], [BEARER])

    def _refusal_after_a_redirect_not_retried(self, name: str, send) -> None:
        """An API that redirects to another origin, which refuses: the other
        origin never sees a token, and nothing is rejected or refreshed."""
        _add_client_credentials(self.daemon, name, self.provider)
        other = _harness.RefusingApi(401, always=True)
        self.addCleanup(other.close)
        api = _harness.RedirectingApi(other.url("/elsewhere"))
        self.addCleanup(api.close)
        first = self.client.token(name)
        issued = self.provider.issued
        status, _, _ = send(api.url("/data"), tokend.BearerAuth(name, client=self.client))
        self.assertEqual(status, 401)
        self.assertEqual([a for _, a in api.seen], ["Bearer " + first])
        self.assertTrue(other.seen, "the redirect was not followed")
        self.assertEqual([t for _, t, _ in other.seen], [None] * len(other.seen))
        self.assertEqual(self.provider.issued, issued, "a refresh for another origin's refusal")
        self.assertEqual(self.client.token(name), first)

    def _no_retry_in_clear_off_the_machine(self) -> None:
        from tokend._auth import _may_retry

        for url in ("https://api.example/x", "http://127.0.0.1:8/x", "http://[::1]:8/x",
                    "http://localhost/x", "http://127.8.9.1/x"):
            self.assertTrue(_may_retry(url, url), url)
        for url in ("http://api.example/x", "http://10.0.0.1/x", "http://[2001:db8::1]/x"):
            self.assertFalse(_may_retry(url, url), url)
        self.assertFalse(_may_retry("https://a.example/x", "https://b.example/x"))

    def test_proxy_session_adds_the_token_and_retries_once(self) -> None:
        api = _harness.RefusingApi()
        self.addCleanup(api.close)
        _add_client_credentials(self.daemon, "proxied", self.provider)
        self.daemon.tokenctl_ok("edit", "proxied", "--api-url", api.url("/v2/"))
        with tokend.proxy_session("proxied", self.daemon.http_socket) as session:
            answer = session.post("items?x=1", body='{"n": 1}', headers={"Authorization": "Bearer mine"})
            self.assertEqual(answer.status, 200)
            self.assertEqual(answer.getheader("Tokend-Retried"), "1")
            self.assertEqual(json.loads(answer.read()), {"ok": True})
            again = session.get("items")
            self.assertEqual(again.status, 200)
            self.assertIsNone(again.getheader("Tokend-Retried"))
            again.read()
        methods = [m for (m, _t, _b) in api.seen]
        tokens = [t for (_m, t, _b) in api.seen]
        self.assertEqual(methods, ["POST", "POST", "GET"])
        self.assertEqual([b for (_m, _t, b) in api.seen][:2], [b'{"n": 1}', b'{"n": 1}'])
        self.assertNotIn("mine", tokens)
        self.assertEqual(tokens[1], tokens[2])
        self.assertNotEqual(tokens[0], tokens[1])
        with tokend.proxy_session("static", self.daemon.http_socket) as session:
            with self.assertRaises(tokend.Error) as cm:
                session.get("x")
            self.assertEqual(cm.exception.code, "no_api_url")
        with tokend.proxy_session("no-such", self.daemon.http_socket) as session:
            with self.assertRaises(tokend.UnknownCredential):
                session.get("x")

    @unittest.skipIf(requests is None, "requests is not installed")
    def test_bearer_auth_with_requests(self) -> None:
        def send(url, auth):
            r = requests.post(url, json={"n": 1}, auth=auth, timeout=30)
            return r.status_code, len(r.history), r.json()

        self._bearer_auth_retries("api-requests", send)
        self._static_bearer_not_retried(send)
        self._refusal_after_a_redirect_not_retried("redirect-requests", send)
        self._no_retry_in_clear_off_the_machine()

    @unittest.skipIf(httpx is None, "httpx is not installed")
    def test_bearer_auth_with_httpx(self) -> None:
        def send(url, auth):
            with httpx.Client(auth=auth, timeout=30, follow_redirects=True) as h:
                r = h.post(url, json={"n": 1})
            return r.status_code, len(r.history), r.json()

        self._bearer_auth_retries("api-httpx", send)
        self._static_bearer_not_retried(send)
        self._refusal_after_a_redirect_not_retried("redirect-httpx", send)


@unittest.skipUnless(_harness.have_daemon(), _harness.SKIP_REASON)
class RestartTest(unittest.TestCase):
    def setUp(self) -> None:
        self.daemon = _harness.Daemon()
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()
        self.daemon.add_bearer("static", BEARER)

    def test_reconnects_after_a_restart(self) -> None:
        with self.daemon.client() as c:
            self.assertEqual(c.token("static"), BEARER)
            kept = c._conn
            self.daemon.stop()
            self.daemon.start()
            # the kept-alive connection is dead: the call reconnects by itself
            self.assertEqual(c.token("static"), BEARER)
            self.assertIsNot(c._conn, kept)

            self.daemon.kill()
            with self.assertRaises(tokend.Unreachable) as cm:
                c.token("static")
            self.assertIsNone(cm.exception.status)
            self.assertNotIn(BEARER, str(cm.exception) + repr(cm.exception))
            self.daemon.start()
            self.assertEqual(c.token("static"), BEARER)

    def test_reconnects_after_the_idle_timeout(self) -> None:
        self.daemon.stop()
        with open(self.daemon.config, "w") as f:
            f.write("[limits]\nidle_timeout_secs = 1\n")
        self.daemon.start()
        with self.daemon.client() as c:
            self.assertEqual(c.token("static"), BEARER)
            kept = c._conn
            time.sleep(2.5)  # the daemon closes the idle connection
            self.assertEqual(c.token("static"), BEARER)
            self.assertIsNot(c._conn, kept)

    def test_missing_socket_is_unreachable(self) -> None:
        self.daemon.stop()
        with self.daemon.client() as c:
            with self.assertRaises(tokend.Unreachable) as cm:
                c.token("static")
        self.assertEqual(cm.exception.code, "unreachable")


class VenvInstallTest(unittest.TestCase):
    """``pip install ./client/python`` into a fresh venv, then import it
    there (and fetch a token from the real daemon if it is built)."""

    def test_pip_install_into_a_fresh_venv(self) -> None:
        work = tempfile.mkdtemp(prefix="tokend-py-venv")
        self.addCleanup(shutil.rmtree, work, True)
        venv = os.path.join(work, "venv")
        out = subprocess.run([sys.executable, "-m", "venv", venv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=300)
        self.assertEqual(out.returncode, 0, "python3 -m venv failed (Debian: apt-get install python3-venv):\n"
                         + out.stdout.decode(errors="replace"))
        # Install from a copy, so that the build leaves nothing in the tree.
        src = os.path.join(work, "python")
        shutil.copytree(_harness.PACKAGE_DIR, src,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "tests"))
        py = os.path.join(venv, "bin", "python")
        out = subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", src],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        self.assertEqual(out.returncode, 0, out.stdout.decode(errors="replace"))
        code = "import tokend, sys; print(tokend.__version__, tokend.__file__)"
        out = subprocess.run([py, "-I", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=60, cwd=work)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertIn(venv, out.stdout.decode())
        if not _harness.have_daemon():
            return
        daemon = _harness.Daemon()
        self.addCleanup(daemon.cleanup)
        daemon.start()
        daemon.add_bearer("static", BEARER)
        env = dict(daemon.env(), TOKEND_HTTP_SOCKET=daemon.http_socket)
        code = "import sys, tokend; sys.stdout.write(tokend.Client().token('static'))"
        out = subprocess.run([py, "-I", "-c", code], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, timeout=60, cwd=work)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertEqual(out.stdout.decode(), BEARER)


if __name__ == "__main__":
    unittest.main()


@unittest.skipUnless(_harness.have_daemon(), _harness.SKIP_REASON)
class WatchTest(unittest.TestCase):
    """``watch``: the current state first, then what happens, and again
    after the daemon restarts."""

    def setUp(self) -> None:
        self.daemon = _harness.Daemon()
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()
        self.provider = _harness.Provider()
        self.addCleanup(self.provider.close)
        _add_client_credentials(self.daemon, "cc", self.provider)
        self.daemon.add_bearer("static", BEARER)

    def _events(self, name, **kw):
        """Events of ``watch`` read on a thread, handed over a queue."""
        import queue

        events: "queue.Queue" = queue.Queue()
        client = self.daemon.client()
        self.addCleanup(client.close)
        stream = client.watch(name, **kw)

        def pump() -> None:
            try:
                for event in stream:
                    events.put(event)
            except Exception as e:  # pragma: no cover - shown by the test
                events.put({"event": "error", "data": repr(e)})

        threading.Thread(target=pump, daemon=True).start()
        return events

    def _next(self, events, kind: str, limit: float = 10.0):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            try:
                event = events.get(timeout=max(0.01, end - time.monotonic()))
            except Exception:
                break
            if event["event"] == kind:
                return event
        self.fail(f"no {kind} event within {limit} s\n{self.daemon.log_text()[-3000:]}")

    def test_current_state_then_refreshed_and_removed(self) -> None:
        events = self._events("cc", include_token=True)
        current = self._next(events, "current")
        self.assertEqual(current["data"]["name"], "cc")
        with self.daemon.client() as c:
            c.refresh("cc")
            refreshed = self._next(events, "refreshed")
            self.assertEqual(refreshed["data"]["access_token"], c.token("cc"))
        self.daemon.tokenctl_ok("rm", "cc")
        self.assertEqual(self._next(events, "removed")["data"], {"name": "cc"})

    def test_a_restart_reconnects_with_the_current_state_first(self) -> None:
        events = self._events(None)
        names = {self._next(events, "current")["data"]["name"] for _ in range(2)}
        self.assertEqual(names, {"cc", "static"})
        self.daemon.stop()
        self.daemon.start()
        again = self._next(events, "current", limit=20.0)
        self.assertIn(again["data"]["name"], {"cc", "static"})

    def test_refusals_are_raised_not_retried(self) -> None:
        with self.daemon.client() as c:
            with self.assertRaises(tokend.UnknownCredential):
                next(c.watch("nope"))
            with self.assertRaises(ValueError):
                next(c.watch(""))
