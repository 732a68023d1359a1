"""Backend for any OpenAI-compatible chat server (vLLM, SGLang, TGI, hosted APIs) via the official async client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random

import httpx
import openai

from ..core.config import SamplingConfig, TeacherConfig
from ..core.errors import DistillError
from .base import GenRequest, GenResult, OnResult, OnTokens, teacher_name

# Worth another try: the server or the network may recover. Anything else (400, 401, 404) is final.
RETRYABLE = (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


class TeacherServerError(DistillError, RuntimeError):
    """The teacher server cannot be used at all (dead, wrong model); a one-line message."""


def backoff_seconds(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter (AWS style): spreads retries of many clients apart."""
    return random.uniform(0, min(cap, base * 2**attempt))


class OpenAITeacher:
    on_tokens: OnTokens | None = None
    metrics_every_s = 2.0  # how often a vLLM server's /metrics is read (also the timeout of one read)

    def __init__(self, cfg: TeacherConfig, sampling: SamplingConfig, *, base_urls: list[str]):
        if not base_urls:
            raise TeacherServerError("teacher.backend is 'openai' but teacher.base_urls is empty; "
                                     "give a server URL (http://host:8000/v1) or set teacher.launch_server: true")
        self.cfg, self.sampling = cfg, sampling
        self.name = teacher_name(cfg)
        self.base_urls = [u.rstrip("/") for u in base_urls]
        # The key comes from the environment only; servers such as vLLM accept any non-empty key.
        self.api_key = os.environ.get(cfg.api_key_env) or "EMPTY"
        self.is_vllm = self._preflight()

    def _preflight(self) -> bool:
        """Fail fast, in one line, when a server is dead or does not serve the model. Returns: all are vLLM."""
        owners = set()
        for url in self.base_urls:
            client = openai.OpenAI(base_url=url, api_key=self.api_key, timeout=15, max_retries=2)
            try:
                models = client.models.list().data
            except openai.APIConnectionError as e:
                raise TeacherServerError(f"teacher server {url} is not reachable ({type(e).__name__}); "
                                         f"start it or fix teacher.base_urls") from None
            except openai.APIStatusError as e:
                raise TeacherServerError(f"teacher server {url} answered HTTP {e.status_code} to /models; "
                                         f"check the URL (it should end in /v1) and {self.cfg.api_key_env}") from None
            finally:
                client.close()
            served = [m.id for m in models]
            if served and self.cfg.model not in served:
                raise TeacherServerError(f"teacher server {url} serves {served}, not {self.cfg.model!r}; "
                                         f"set teacher.model to the served name")
            owners.update(getattr(m, "owned_by", None) for m in models)
        return owners == {"vllm"}

    def _request_kwargs(self, req: GenRequest) -> dict:
        s = self.sampling
        kwargs = dict(model=self.cfg.model, messages=req.messages, n=1, temperature=s.temperature,
                      top_p=s.top_p, max_tokens=s.max_tokens)
        if self.cfg.request_seed:
            kwargs["seed"] = req.seed
        if s.logprobs:
            # vLLM lists the sampled token first and then cuts the list at top_logprobs, so when the sampled
            # token ranks below k the k-th best is lost: ask for one more and keep the best k
            kwargs.update(logprobs=True, top_logprobs=s.logprobs + 1)
        if self.is_vllm:  # vLLM extras: the teacher's own token ids, and logprob tokens as ids
            kwargs["extra_body"] = {"return_token_ids": True, "return_tokens_as_token_ids": True}
        return kwargs

    def generate(self, requests: list[GenRequest], on_result: OnResult) -> None:
        asyncio.run(self._run(requests, on_result))

    async def _run(self, requests: list[GenRequest], on_result: OnResult) -> None:
        clients = [openai.AsyncOpenAI(base_url=u, api_key=self.api_key, timeout=self.cfg.request_timeout,
                                      max_retries=0) for u in self.base_urls]
        turn = itertools.count()
        queue: asyncio.Queue[GenRequest] = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)

        async def worker() -> None:
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                on_result(await self._one(req, clients, turn))

        counting = None
        if self.on_tokens is not None and self.is_vllm:
            counting = asyncio.create_task(self._count_tokens(self.on_tokens))
        try:
            await asyncio.gather(*(worker() for _ in range(min(self.cfg.concurrency, len(requests)) or 1)))
        finally:
            if counting is not None:
                counting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await counting
            for c in clients:
                await c.close()

    async def _count_tokens(self, on_tokens: OnTokens) -> None:
        """Report the servers' own count of generated tokens (`vllm:generation_tokens_total` on /metrics,
        summed over the servers, counted from when the run began) every `metrics_every_s`. Runs beside the
        requests, never in their way; the first read that fails or lacks the counter reports None and ends
        it (the caller then counts finished results). Tokens other clients get from the same servers count too."""
        urls = [u.removesuffix("/v1") + "/metrics" for u in self.base_urls]
        start = None
        async with httpx.AsyncClient(timeout=self.metrics_every_s) as http:
            while True:
                try:
                    counts = [generation_tokens((await http.get(u)).raise_for_status().text) for u in urls]
                    if None in counts:
                        raise ValueError("no vllm:generation_tokens_total")
                except Exception:
                    on_tokens(None)
                    return
                total = sum(counts)
                start = total if start is None else start
                on_tokens(int(total - start))
                await asyncio.sleep(self.metrics_every_s)

    async def _one(self, req: GenRequest, clients, turn) -> GenResult:
        kwargs = self._request_kwargs(req)
        for attempt in range(self.cfg.max_retries + 1):
            client = clients[next(turn) % len(clients)]  # a retry goes to the next server
            try:
                resp = await client.chat.completions.create(**kwargs)
                result = parse_response(req, resp, self.sampling.logprobs)
                result.retries = attempt
                return result
            except RETRYABLE as e:
                error = f"{type(e).__name__}: {_short(e)}"
                if attempt < self.cfg.max_retries:
                    await asyncio.sleep(max(backoff_seconds(attempt), _retry_after(e)))
            except openai.APIStatusError as e:  # 4xx other than 429: the request itself is wrong
                return GenResult(req.id, req.sample, error=f"HTTP {e.status_code}: {_short(e)}", retries=attempt)
            except Exception as e:  # a response we cannot read: keep the row, with why
                return GenResult(req.id, req.sample, error=f"{type(e).__name__}: {_short(e)}", retries=attempt)
        return GenResult(req.id, req.sample, error=f"{error} (after {self.cfg.max_retries} retries)",
                         retries=self.cfg.max_retries)

    def close(self) -> None:
        pass


def _retry_after(e: Exception, cap: float = 60.0) -> float:
    """Seconds a 429/503 asked us to wait (Retry-After header), 0 when it did not say."""
    response = getattr(e, "response", None)
    try:
        return min(cap, float(response.headers.get("retry-after", 0))) if response is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:300] if str(e) else type(e).__name__


GENERATION_TOKENS = "vllm:generation_tokens_total"


def generation_tokens(metrics: str) -> float | None:
    """vLLM's generated-token counter in a Prometheus /metrics text, summed over its label sets (engines,
    models); None when the text has no such counter (not a vLLM server)."""
    values = [float(line.rsplit(None, 1)[1]) for line in metrics.splitlines()
              if line.startswith(GENERATION_TOKENS) and line[len(GENERATION_TOKENS):][:1] in ("{", " ")]
    return sum(values) if values else None


def _token_id(token: str) -> int | None:
    # vLLM's return_tokens_as_token_ids writes tokens as "token_id:123"
    return int(token.split(":", 1)[1]) if token.startswith("token_id:") else None


def parse_response(req: GenRequest, resp, k: int) -> GenResult:
    choice = resp.choices[0]
    msg = choice.message
    reasoning = getattr(msg, "reasoning", None) or getattr(msg, "reasoning_content", None)
    token_ids = getattr(choice, "token_ids", None)
    topk_ids = topk_logprobs = None
    content_lp = choice.logprobs.content if choice.logprobs and choice.logprobs.content else None
    if content_lp is not None:
        if token_ids is None:
            ids = [_token_id(t.token) for t in content_lp]
            token_ids = ids if None not in ids else None
        if k and content_lp and content_lp[0].top_logprobs:
            # keep the k most likely, best first (the list may hold the sampled token beyond the top k)
            tops = [sorted(pos.top_logprobs, key=lambda t: -t.logprob)[:k] for pos in content_lp]
            topk_ids = [[_token_id(t.token) for t in top] for top in tops]
            topk_logprobs = [[float(t.logprob) for t in top] for top in tops]
            if any(i is None for row in topk_ids for i in row):
                topk_ids = None  # a server that cannot name token ids: logprobs without ids are useless for KD
    usage = resp.usage
    return GenResult(
        req.id, req.sample,
        completion=msg.content or "",
        reasoning_field=reasoning,
        finish_reason=choice.finish_reason,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else (len(token_ids) if token_ids else None),
        completion_token_ids=list(token_ids) if token_ids is not None else None,
        topk_ids=topk_ids,
        topk_logprobs=topk_logprobs if topk_ids is not None else None,
    )
