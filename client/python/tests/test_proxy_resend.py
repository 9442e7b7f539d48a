"""ProxySession never sends a request that may have reached the API twice:
a kept-alive connection closed after the request was read looks like one
closed before (the same reset), so only idempotent methods are sent again.
No daemon: a Unix socket server that answers the first request on a
connection and reads the second, then closes without an answer (a daemon
that forwarded it and then stopped)."""

import os
import socket
import tempfile
import threading
import unittest

import tokend


class _ClosingServer:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "http.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.seen = []
        threading.Thread(target=self._run, daemon=True).start()

    def _read_request(self, conn, buf: bytes):
        while b"\r\n\r\n" not in buf:
            more = conn.recv(65536)
            if not more:
                return None, b""
            buf += more
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v.strip())
        while len(rest) < length:
            rest += conn.recv(65536)
        return head.split(b"\r\n")[0].decode(), rest[length:]

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        first, buf = self._read_request(conn, b"")
        if first is None:
            return conn.close()
        self.seen.append(first)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        second, _ = self._read_request(conn, buf)
        if second is not None:
            self.seen.append(second)
        # Read and (as far as the client can tell) forwarded; no answer.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    def close(self) -> None:
        self.sock.close()


class ProxyResendTest(unittest.TestCase):
    def test_a_post_that_may_have_reached_the_api_is_not_sent_twice(self) -> None:
        server = _ClosingServer()
        self.addCleanup(server.close)
        with tokend.proxy_session("ut", server.path, timeout=5) as session:
            self.assertEqual(session.get("warm").read(), b"ok")
            with self.assertRaises(OSError):
                session.post("orders", body='{"pay": 100}')
        posts = [r for r in server.seen if r.startswith("POST ")]
        self.assertEqual(len(posts), 1, server.seen)

    def test_a_get_on_a_connection_closed_under_it_is_sent_again(self) -> None:
        server = _ClosingServer()
        self.addCleanup(server.close)
        with tokend.proxy_session("ut", server.path, timeout=5) as session:
            self.assertEqual(session.get("one").read(), b"ok")
            self.assertEqual(session.get("two").read(), b"ok", "sent again on a new connection")
        self.assertEqual(len(server.seen), 3, server.seen)


if __name__ == "__main__":
    unittest.main()
