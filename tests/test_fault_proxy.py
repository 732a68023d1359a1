"""Tests for tests/fault_proxy.py (the fault-injecting reverse proxy)."""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))
from fault_proxy import FaultProxy  # noqa: E402


# --------------------------------------------------------------------------- upstream
class Upstream:
    """Tiny aiohttp server on 127.0.0.1 in a daemon thread; counts hits per path."""

    def __init__(self) -> None:
        self.hits: collections.Counter[str] = collections.Counter()
        self.gate = threading.Event()  # released by the streaming test after the first event
        self.gate_timed_out = False
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    # handlers -------------------------------------------------------------
    def _hit(self, request: web.Request) -> None:
        with self._lock:
            self.hits[f"{request.method} {request.path}"] += 1

    async def echo(self, request: web.Request) -> web.Response:
        self._hit(request)
        raw = await request.read()
        payload = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "x_test": request.headers.get("X-Test"),
            "content_type": request.headers.get("Content-Type"),
            "host": request.headers.get("Host"),
            "len": len(raw),
            "body": json.loads(raw) if raw and len(raw) < 10_000 else None,
        }
        status = int(request.query.get("status", "200"))
        return web.json_response(payload, status=status, headers={"X-Upstream": "yes"})

    async def health(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "t"}]})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """SSE: one event, then wait (bounded) until the client says it got it, then the rest."""
        self._hit(request)
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        deadline = time.monotonic() + 3.0
        while not self.gate.is_set():
            if time.monotonic() > deadline:
                self.gate_timed_out = True
                break
            await asyncio.sleep(0.01)
        try:
            await resp.write(b"data: second\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:
            pass  # client (the proxy) went away
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """Minimal OpenAI chat.completions (plain and stream=True)."""
        self._hit(request)
        body = await request.json()
        base = {"id": "c1", "created": 0, "model": body.get("model", "m")}
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "hello"},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, piece in enumerate(["hel", "lo", None]):
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": piece} if piece else {},
                        "finish_reason": None if piece else "stop",
                    }
                ],
            }
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # lifecycle ------------------------------------------------------------
    async def _setup(self) -> None:
        app = web.Application(client_max_size=1 << 26)
        app.router.add_post("/v1/echo", self.echo)
        app.router.add_get("/v1/echo", self.echo)
        app.router.add_post("/v1/other", self.echo)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/stream", self.stream)
        app.router.add_post("/v1/chat/completions", self.chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    def start(self) -> "Upstream":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._setup(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def reset(self) -> None:
        with self._lock:
            self.hits.clear()
        self.gate.clear()
        self.gate_timed_out = False

    def total_hits(self) -> int:
        with self._lock:
            return sum(self.hits.values())


@pytest.fixture(scope="module")
def upstream():
    up = Upstream().start()
    yield up
    up.stop()


@pytest.fixture
def up(upstream):
    upstream.reset()
    return upstream


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- tests
def test_pass_forwards_method_path_query_headers_body_status(up):
    with FaultProxy(up.url) as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        assert proxy.url.startswith("http://127.0.0.1:")
        r = c.post("/v1/echo", params={"status": "201", "q": "a b/ü"}, json={"x": [1, 2]}, headers={"X-Test": "t1"})
        assert r.status_code == 201
        assert r.headers["X-Upstream"] == "yes"
        d = r.json()
        assert d["method"] == "POST" and d["path"] == "/v1/echo"
        assert d["query"] == {"status": "201", "q": "a b/ü"}
        assert d["body"] == {"x": [1, 2]}
        assert d["x_test"] == "t1"
        assert d["content_type"] == "application/json"
        assert d["host"] == up.url.removeprefix("http://")  # Host rewritten to upstream's
        assert proxy.counts == {"pass": 1}
        assert proxy.requests == 1 and proxy.planned == 1
    assert up.hits == {"POST /v1/echo": 1}


def test_large_body_passes(up):
    blob = "x" * (3 << 20)  # > aiohttp's default 1 MiB client_max_size
    with FaultProxy(up.url) as proxy, httpx.Client(base_url=proxy.url, timeout=10) as c:
        raw = json.dumps({"blob": blob}).encode()
        r = c.post("/v1/echo", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 200
        assert r.json()["len"] == len(raw)
        assert proxy.counts == {"pass": 1}


@pytest.mark.parametrize("code", [500, 503, 429])
def test_error_status_without_reaching_upstream(up, code):
    with FaultProxy(up.url, plan=[str(code)]) as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        r = c.post("/v1/echo", json={"a": 1})
        assert r.status_code == code
        err = r.json()["error"]
        assert err["code"] == code and "injected" in err["message"]
        if code == 429:
            assert r.headers["Retry-After"] == "0"
        else:
            assert "Retry-After" not in r.headers
        assert "retry-after-ms" not in r.headers
        # the keep-alive connection still works afterwards
        r2 = c.post("/v1/echo", json={"a": 2})
        assert r2.status_code == code
        assert proxy.counts == {str(code): 2}
    assert up.total_hits() == 0


def test_retry_after_ms_option(up):
    with FaultProxy(up.url, plan=["503"], retry_after_ms=1) as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        r = c.post("/v1/echo", json={})
        assert r.status_code == 503 and r.headers["retry-after-ms"] == "1"


def test_get_requests_bypass_plan(up):
    with FaultProxy(up.url, plan=["500"]) as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        assert c.get("/health").text == "ok"
        assert c.get("/v1/models").json()["data"][0]["id"] == "m"
        assert c.get("/v1/echo", params={"k": "v"}).json()["query"] == {"k": "v"}
        assert c.post("/v1/echo", json={}).status_code == 500
        assert proxy.requests == 4
        assert proxy.planned == 1
        assert proxy.counts == {"500": 1}
        assert [(i, m, a) for i, m, _, a in proxy.log] == [
            (None, "GET", "pass"),
            (None, "GET", "pass"),
            (None, "GET", "pass"),
            (0, "POST", "500"),
        ]
    assert up.total_hits() == 3


def test_drop_gives_transport_error_not_hang(up):
    with FaultProxy(up.url, plan=["drop", "pass"]) as proxy, httpx.Client(base_url=proxy.url, timeout=3) as c:
        assert c.get("/health").status_code == 200  # warm a keep-alive connection first
        t0 = time.monotonic()
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # not ReadTimeout: it did not wait
            c.post("/v1/echo", json={"a": 1})
        # the same client recovers on a fresh connection
        r = c.post("/v1/echo", json={"a": 2})
        assert r.status_code == 200 and r.json()["body"] == {"a": 2}
        assert proxy.counts == {"drop": 1, "pass": 1}
    assert up.hits == {"GET /health": 1, "POST /v1/echo": 1}


def test_slow_times_out_short_client(up):
    with FaultProxy(up.url, plan=["slow"], delay_s=1.0) as proxy:
        with httpx.Client(base_url=proxy.url, timeout=0.3) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.post("/v1/echo", json={"a": 1})
        assert proxy.counts == {"slow": 1}
        # the proxy notices the client left and never bothers upstream
        time.sleep(1.5)  # past the delay: a forwarded request would have arrived by now
        assert up.total_hits() == 0


def test_slow_then_forwards_for_patient_client(up):
    with FaultProxy(up.url, plan=["slow"], delay_s=0.3) as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        t0 = time.monotonic()
        r = c.post("/v1/echo", json={"a": 1})
        assert time.monotonic() - t0 >= 0.3
        assert r.status_code == 200 and r.json()["body"] == {"a": 1}
        assert proxy.counts == {"slow": 1}
    assert up.hits == {"POST /v1/echo": 1}


def test_list_plan_cycles(up):
    with FaultProxy(up.url, plan=["pass", "500", "429"]) as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        codes = [c.post("/v1/echo", json={"i": i}).status_code for i in range(7)]
        assert codes == [200, 500, 429, 200, 500, 429, 200]
        assert proxy.counts == {"pass": 3, "500": 2, "429": 2}
        assert sum(proxy.counts.values()) == proxy.planned == proxy.requests == 7
        assert [i for i, *_ in proxy.log] == list(range(7))
    assert up.hits == {"POST /v1/echo": 3}


def test_callable_plan_gets_index_and_path(up):
    seen = []

    def plan(i: int, path: str) -> str:
        seen.append((i, path))
        return "503" if path == "/v1/other" else "pass"

    with FaultProxy(up.url, plan=plan) as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        assert c.post("/v1/echo", json={}).status_code == 200
        assert c.post("/v1/other", json={}).status_code == 503
        assert c.post("/v1/echo", json={}).status_code == 200
        assert proxy.counts == {"pass": 2, "503": 1}
    assert seen == [(0, "/v1/echo"), (1, "/v1/other"), (2, "/v1/echo")]


def test_bad_plans(up):
    with pytest.raises(ValueError):
        FaultProxy(up.url, plan=["pass", "boom"])
    with pytest.raises(ValueError):
        FaultProxy(up.url, plan=[])
    with pytest.raises(TypeError):
        FaultProxy(up.url, plan="500")
    with FaultProxy(up.url, plan=lambda i, p: "nope") as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        r = c.post("/v1/echo", json={})
        assert r.status_code == 500 and "plan error" in r.json()["error"]["message"]
        assert proxy.counts == {"plan-error": 1}
    assert up.total_hits() == 0


def test_streaming_is_forwarded_chunk_by_chunk(up):
    with FaultProxy(up.url) as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        events = []
        with c.stream("POST", "/v1/stream", json={"stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 1:
                        up.gate.set()  # only now may upstream send the rest
        assert events == ["first", "second", "[DONE]"]
        assert not up.gate_timed_out, "first SSE event was buffered by the proxy"
        assert proxy.counts == {"pass": 1}


def test_upstream_down_gives_502():
    with FaultProxy(f"http://127.0.0.1:{_free_port()}") as proxy, httpx.Client(base_url=proxy.url, timeout=5) as c:
        r = c.post("/v1/echo", json={})
        assert r.status_code == 502
        assert proxy.upstream_errors == 1 and proxy.counts == {"pass": 1}


def test_lifecycle(up):
    proxy = FaultProxy(up.url)
    assert proxy.url == ""
    proxy.start()
    port = proxy.port
    with pytest.raises(RuntimeError):
        proxy.start()
    assert httpx.get(proxy.url + "/health", timeout=5).status_code == 200
    proxy.stop()
    proxy.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
    # reset() zeroes counters and restarts the plan index
    with FaultProxy(up.url, plan=["500", "pass"]) as p2, httpx.Client(base_url=p2.url, timeout=5) as c:
        assert c.post("/v1/echo", json={}).status_code == 500
        p2.reset()
        assert p2.requests == 0 and not p2.counts
        assert c.post("/v1/echo", json={}).status_code == 500
        assert p2.snapshot()["counts"] == {"500": 1}


def test_openai_client_retries_through_faults(up):
    openai = pytest.importorskip("openai")
    # "drop" first: connection errors get the SDK's own backoff (~0.5 s for the first retry);
    # the HTTP errors carry retry-after-ms: 1 so their retries are immediate.
    plan = ["drop", "500", "503", "429", "pass"]
    with FaultProxy(up.url, plan=plan, retry_after_ms=1) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=5, timeout=5)
        try:
            out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert out.choices[0].message.content == "hello"
            assert proxy.counts == {"drop": 1, "500": 1, "503": 1, "429": 1, "pass": 1}
            # streaming, with one retry first (plan index 5 -> "drop", 6 -> "500", 7 -> "503", ...)
            proxy.reset()
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
            assert text == "hello"
            assert proxy.counts["pass"] == 1 and proxy.planned == 5
        finally:
            client.close()
    assert up.hits == {"POST /v1/chat/completions": 2}


def test_clean_shutdown_no_asyncio_errors(up, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    with FaultProxy(up.url, plan=["drop", "slow", "pass", "500"], delay_s=0.5) as proxy:
        with httpx.Client(base_url=proxy.url, timeout=0.2) as c:
            for _ in range(2):
                try:
                    c.post("/v1/echo", json={})
                except httpx.TransportError:
                    pass
            # stop while the "slow" handler is still sleeping
    gc.collect()
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or "destroyed" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]
    assert proxy.counts == {"drop": 1, "slow": 1}
