"""Fault-injecting HTTP reverse proxy for tests.

``FaultProxy`` listens on ``127.0.0.1:<free port>``, forwards every request to an
upstream OpenAI-compatible server (e.g. vLLM's) and, following a deterministic
*plan*, injects faults so tests can check that a client with retries still
completes.

Plan semantics
--------------
* The plan is consulted **only for POST requests** (the ones that do work:
  ``/v1/chat/completions``, ``/v1/completions`` ...).  Every other method
  (``GET /health``, ``GET /v1/models`` ...) is always forwarded untouched, so
  readiness checks through the proxy never consume plan entries.
* The index given to the plan is the 0-based index among POST requests, in
  arrival order.
* A list plan cycles: request ``i`` gets ``plan[i % len(plan)]``.
  ``None`` means always ``"pass"``.  A callable gets ``(index, path)``.

Actions
-------
``"pass"``  forward untouched.
``"500"``, ``"503"``, ``"429"``  answer that status with an OpenAI-style JSON
    error body without contacting upstream (429 carries ``Retry-After: <retry_after_s>``, default 0).
    Note the openai SDK ignores a zero Retry-After and falls back to its
    exponential backoff (0.5 s, 1 s, 2 s ...).  Pass ``retry_after_ms=1`` to add
    ``retry-after-ms: 1`` to every injected error so SDK retries are instant.
``"drop"``  read the request, then close the connection without any response
    (httpx raises ``RemoteProtocolError``/``ReadError``; openai raises
    ``APIConnectionError``).
``"slow"``  sleep ``delay_s`` then forward.  If the client already gave up
    (e.g. it timed out) the request is not forwarded at all.

Bookkeeping (readable from any thread)
--------------------------------------
``requests``  every request seen, any method.
``planned``   POST requests for which the plan was consulted.
``counts``    Counter of applied actions, for planned (POST) requests only, so
              ``sum(counts.values()) == planned``.
``log``       list of ``(index_or_None, method, path, action)`` tuples;
              non-POST requests appear with index ``None`` and action ``"pass"``.
``upstream_errors``  requests answered 502 because upstream was unreachable.

Usage::

    with FaultProxy("http://127.0.0.1:8000", plan=["500", "pass"]) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x")
        ...
        assert proxy.counts["500"] == 1
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import socket
import threading
from typing import Callable, Sequence

import aiohttp
from aiohttp import web
from yarl import URL

__all__ = ["FaultProxy", "ACTIONS"]

ACTIONS = frozenset({"pass", "500", "503", "429", "drop", "slow"})

# RFC 7230 hop-by-hop headers, plus ones aiohttp must recompute itself.
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
    )
)
_DROP_REQUEST_HEADERS = _HOP_BY_HOP | {"host", "content-length"}
_DROP_RESPONSE_HEADERS = _HOP_BY_HOP | {"content-length"}

_ERROR_TYPES = {
    500: "internal_server_error",
    503: "service_unavailable",
    429: "rate_limit_exceeded",
}

PlanT = Callable[[int, str], str] | Sequence[str] | None


class FaultProxy:
    """Reverse proxy on 127.0.0.1:<free port> that forwards to `upstream` (e.g. "http://127.0.0.1:8000")
    and injects faults according to a deterministic plan (see module docstring)."""

    def __init__(
        self,
        upstream: str,
        plan: PlanT = None,
        delay_s: float = 2.0,
        *,
        retry_after_ms: int | None = None,
        retry_after_s: int = 0,
        shutdown_timeout: float = 0.25,  # grace for in-flight handlers on stop(); aiohttp waits ~2x this
    ) -> None:
        self.upstream = URL(upstream.rstrip("/"))
        if isinstance(plan, str):
            raise TypeError("plan must be a callable, a list of actions or None, not a str")
        if plan is not None and not callable(plan):
            plan = list(plan)
            if not plan:
                raise ValueError("a list plan must not be empty")
            bad = [a for a in plan if a not in ACTIONS]
            if bad:
                raise ValueError(f"unknown plan actions {bad!r}; expected some of {sorted(ACTIONS)}")
        self.plan = plan
        self.delay_s = float(delay_s)
        self.retry_after_ms = retry_after_ms
        self.retry_after_s = retry_after_s
        self.shutdown_timeout = shutdown_timeout

        self.url: str = ""
        self.port: int = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self.requests: int = 0
        self.planned: int = 0
        self.upstream_errors: int = 0
        self.log: list[tuple[int | None, str, str, str]] = []

        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ plan
    def _action_for(self, index: int, path: str) -> str:
        plan = self.plan
        if plan is None:
            return "pass"
        if callable(plan):
            action = plan(index, path)
        else:
            action = plan[index % len(plan)]
        if action not in ACTIONS:
            raise ValueError(f"plan returned unknown action {action!r} for request {index} {path}")
        return action

    def _record(self, index: int | None, method: str, path: str, action: str) -> None:
        with self._lock:
            if index is not None:
                self.counts[action] += 1
            self.log.append((index, method, path, action))

    def snapshot(self) -> dict:
        """A consistent copy of the counters."""
        with self._lock:
            return {
                "requests": self.requests,
                "planned": self.planned,
                "counts": collections.Counter(self.counts),
                "upstream_errors": self.upstream_errors,
            }

    def reset(self) -> None:
        """Zero all counters (the plan index restarts at 0)."""
        with self._lock:
            self.counts.clear()
            self.requests = self.planned = self.upstream_errors = 0
            self.log.clear()

    # --------------------------------------------------------------- handler
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        with self._lock:
            self.requests += 1
            index = None
            if method == "POST":
                index = self.planned
                self.planned += 1
        if index is None:
            self._record(None, method, path, "pass")
            return await self._forward(request)

        try:
            action = self._action_for(index, path)
        except Exception as exc:  # a broken plan function: make it loud
            self._record(index, method, path, "plan-error")
            return _error_response(500, f"fault proxy plan error: {exc!r}")
        self._record(index, method, path, action)

        if action == "pass":
            return await self._forward(request)
        if action in ("500", "503", "429"):
            await request.read()  # consume the body so keep-alive stays sane
            status = int(action)
            headers = {"Retry-After": str(self.retry_after_s)} if status == 429 else {}
            if self.retry_after_ms is not None:
                headers["retry-after-ms"] = str(self.retry_after_ms)
            return _error_response(status, f"injected fault {status} (request {index})", headers)
        if action == "drop":
            await request.read()
            transport = request.transport
            if transport is not None:
                transport.close()
            # aiohttp's prepare() now raises ConnectionError, which it swallows
            # silently; nothing reaches the client.
            return web.Response(status=499)
        if action == "slow":
            body = await request.read()
            await asyncio.sleep(self.delay_s)
            transport = request.transport
            if transport is None or transport.is_closing():
                return web.Response(status=499)  # client gave up; don't bother upstream
            return await self._forward(request, body)
        raise AssertionError(action)  # pragma: no cover

    async def _forward(self, request: web.Request, body: bytes | None = None) -> web.StreamResponse:
        if body is None:
            body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST_HEADERS]
        # raw_path = path + query exactly as the client sent them (still percent-encoded)
        target = URL(str(self.upstream) + request.raw_path, encoded=True)
        assert self._session is not None
        try:
            upstream_resp = await self._session.request(
                request.method,
                target,
                headers=headers,
                # aiohttp warns (ResourceWarning) on raw bytes > 1 MiB; a BytesIO is fine
                data=(io.BytesIO(body) if len(body) > (1 << 20) else body) if body else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            with self._lock:
                self.upstream_errors += 1
            return _error_response(502, f"fault proxy: upstream unreachable: {exc!r}")

        async with upstream_resp:
            resp = web.StreamResponse(status=upstream_resp.status, reason=upstream_resp.reason)
            for k, v in upstream_resp.headers.items():
                if k.lower() not in _DROP_RESPONSE_HEADERS:
                    resp.headers.add(k, v)
            if upstream_resp.content_length is not None and "chunked" not in upstream_resp.headers.get(
                "Transfer-Encoding", ""
            ).lower():
                # auto_decompress=False, so the byte count is unchanged
                resp.content_length = upstream_resp.content_length
            try:
                await resp.prepare(request)
                # iter_any yields whatever has arrived: SSE events go out as they come
                async for chunk in upstream_resp.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except ConnectionError:
                pass  # downstream client went away mid-response
        return resp

    # ------------------------------------------------------------- lifecycle
    async def _setup(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # default limit of 100 would throttle big batches
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )
        app = web.Application(client_max_size=1 << 30)  # default 1 MiB would 413 long prompts
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.url = f"http://127.0.0.1:{self.port}"

    async def _teardown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        current = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not current]
        for t in rest:
            t.cancel()
        if rest:
            await asyncio.gather(*rest, return_exceptions=True)

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def start(self, timeout: float = 10.0) -> "FaultProxy":
        """Start listening (own asyncio loop in a daemon thread); returns once ready."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, args=(loop,), name="FaultProxy", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._setup(), loop).result(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and all connections, stop the loop, join the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if not loop.is_closed() and loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(self._teardown(), loop)
                try:
                    fut.result(timeout)
                except Exception:
                    pass
        finally:
            if not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._loop = self._thread = None
            self._runner = self._session = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultProxy({str(self.upstream)!r} via {self.url or '<not started>'}, counts={dict(self.counts)})"


def _error_response(status: int, message: str, headers: dict | None = None) -> web.Response:
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "proxy_error"),
            "param": None,
            "code": status,
        }
    }
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)
