"""Shared fixtures: a tiny local chat model (built once per run) and a real vLLM server serving it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers such as fault_proxy

# vLLM-CPU must not try to reserve most of the machine for KV cache; quiet logs.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from pipeline.demo.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def vllm_server(tiny_model, tmp_path_factory):
    """A real `vllm serve` (vllm-cpu) on loopback, float32, serving the tiny model. Yields the base URL."""
    from pipeline.core.config import TeacherConfig
    from pipeline.backends.server import LocalVLLMServer

    cfg = TeacherConfig(model=tiny_model, backend="openai", dtype="float32", enforce_eager=True, kv_cache_gb=1,
                        max_model_len=1024)
    server = LocalVLLMServer(cfg, tmp_path_factory.mktemp("server") / "server.log", seed=0)
    with server as url:
        yield url
