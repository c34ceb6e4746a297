"""Stand-in HTTP servers on 127.0.0.1, for the services that cannot run here (the Hugging Face Hub, Ollama,
a hosted LLM endpoint): each records the exact requests its client sent and answers as the test says."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import struct
import threading
from collections.abc import Callable

Reply = tuple[int, str, bytes]  # status, content type, body
Answer = Callable[[str, str, dict, bytes], "Reply | str"]


def json_reply(status: int, obj) -> Reply:
    return status, "application/json", json.dumps(obj).encode()


def json_answer(answer: Callable[[str, str, bytes], tuple[int, object]]) -> Answer:
    """An answer written as (method, path, body) -> (status, JSON-able object)."""
    return lambda method, path, headers, body: json_reply(*answer(method, path, body))


class StandIn:
    """An HTTP/1.1 server on 127.0.0.1 (a context manager). `answer(method, path, headers, body)` returns
    (status, content type, body bytes), or "reset" to drop the connection with a TCP reset instead of
    answering. Every request is kept in `requests` as a dict (method, path, headers in lower case, body)."""

    def __init__(self, answer: Answer, port: int = 0):
        self.requests: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return data
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.requests.append({"method": self.command, "path": self.path, "headers": headers, "body": body})
                reply = answer(self.command, self.path, headers, body)
                if reply == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                status, kind, data = reply
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = _handle

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StandIn:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def ollama_answer(method: str, path: str, body: bytes):
    """What an Ollama server answers to what `haqa ship --ollama` sends (its blob digests checked)."""
    if path == "/api/tags":
        return 200, {"models": []}
    if path.startswith("/api/blobs/sha256:"):
        return (201, {}) if hashlib.sha256(body).hexdigest() == path.rsplit(":", 1)[1] else (400, {"error": "digest"})
    if path == "/api/create":
        return 200, {"status": "success"}
    return 404, {"error": "not found"}
