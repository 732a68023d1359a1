"""A stand-in OpenAI-compatible teacher server for fast tests: real HTTP on loopback, no model.

    with OpenAIStub() as stub:             # stub.url ends in /v1
        ... teacher.base_urls: [stub.url] ...
        stub.hold.set()                     # from now on chat requests wait until hold is cleared
        stub.requests                       # chat requests answered so far
        stub.bodies                         # the JSON body of every chat request, in arrival order

`GET /v1/models` lists `model` (owned by "stub"); `POST /v1/chat/completions` answers with a reasoning block and
a boxed answer: the first number in the last user message plus `offset` (0: the "right" answer for problems
whose gold is that number). While `hold` is set, every chat request after the first `hold_after` waits
(bounded by `hold_s`), so a test can freeze a run at a known point instead of racing it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OpenAIStub:
    def __init__(self, model: str = "stub-teacher", offset: int = 0, hold_s: float = 120.0, hold_after: int = 0):
        self.model, self.offset, self.hold_s, self.hold_after = model, offset, hold_s, hold_after
        self.hold = threading.Event()
        self.requests = 0  # chat requests answered
        self.arrived = 0  # chat requests received
        self.waiting = 0  # requests now held
        self.bodies: list[dict] = []  # the JSON body of every chat request received
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (killed, interrupted)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model",
                                                                  "owned_by": "stub"}]})
                else:
                    self._send(200, {"status": "ok"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub._lock:
                    index = stub.arrived
                    stub.arrived += 1
                    stub.bodies.append(body)
                    held = index >= stub.hold_after and stub.hold.is_set()
                    stub.waiting += held
                deadline = time.monotonic() + stub.hold_s
                while held and stub.hold.is_set() and time.monotonic() < deadline:
                    time.sleep(0.01)
                with stub._lock:
                    stub.waiting -= held
                    stub.requests += 1
                user = next((m["content"] for m in reversed(body.get("messages", [])) if m["role"] == "user"), "")
                number = re.search(r"\d+", user)
                answer = int(number.group()) + stub.offset if number else 0
                text = f"<think>\nThe number is {answer}.\n</think>\n\nSo the answer is $\\boxed{{{answer}}}$."
                self._send(200, {
                    "id": f"stub-{stub.requests}", "object": "chat.completion", "created": 0, "model": stub.model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "OpenAIStub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.hold.clear()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def wait_until_held(self, count: int = 1, timeout: float = 120.0) -> None:
        """Block until `count` requests are waiting on `hold` (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.waiting >= count:
                return
            time.sleep(0.01)
        raise AssertionError(f"no request reached the stub's hold within {timeout} s")
