"""The rewards of `distill rl`, as TRL reward functions, each guarded so that a failure costs a completion its reward and
never the run.

TRL calls every reward function with keyword lists for one generation batch: `prompts`, `completions` (chat
completions: [{"role": "assistant", "content": text}]), `completion_ids`, every other dataset column (`answer`,
`id`), and `trainer_state`, `log_metric`, `log_extra`; it wants one float (or None) per completion, and a function
that raises stops GRPOTrainer. So each function runs under `Guarded`: in a daemon thread with a time limit per
batch; a batch that raises is retried one completion at a time (within the same limit), and whatever still fails
or runs out of time scores 0. Failures are counted (`rewards/NAME/failed` in the log, totals in the summary).

    correct   1 when the project's verifier accepts the final answer (what follows the reasoning block, as filter
              and evaluate read it), else 0; the whole batch goes through the verification pool in one call.
    format    1 for a reasoning block (<think>...</think> with something inside) followed by a final text holding
              exactly one \\boxed{} answer, else 0: for students that think in tags.
    length    TRL's soft overlong punishment (DAPO): 0 up to max_completion_length - cache tokens, then a linear
              ramp down to -1 at the limit.
    module:function   any function of your own with TRL's reward signature.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import numbers
import os
import sys
import threading
import time
from typing import Any, Callable

from ..backends.base import split_reasoning
from ..core.config import RLConfig, VerifyConfig
from ..core.errors import DistillError
from ..core.log import get_logger

logger = get_logger("rl")

BUILTIN = ("correct", "format", "length")


class RewardError(DistillError, ValueError):
    """A reward named in the recipe that cannot be used."""


def completion_text(completion: Any) -> str:
    """The text of one completion as TRL passes it (chat: a list holding the assistant message, whose reasoning a
    parser may have moved to `reasoning_content`; else a string)."""
    if isinstance(completion, list):
        parts = []
        for m in completion:
            if isinstance(m, dict):
                reasoning = m.get("reasoning_content")
                parts.append((f"<think>\n{reasoning}\n</think>\n\n" if reasoning else "") + (m.get("content") or ""))
        return "".join(parts)
    return str(completion)


class Correct:
    """1.0 when the verifier accepts the completion's final answer against the gold `answer` column, else 0.0."""

    def __init__(self, verify: VerifyConfig):
        self.verify = verify

    def __call__(self, completions, answer, **kwargs) -> list[float]:
        from ..verify import verify_many

        finals = [split_reasoning(completion_text(c))[2] for c in completions]
        verdicts = verify_many([str(a) for a in answer], finals, timeout_s=self.verify.timeout_s,
                               workers=self.verify.workers)
        return [1.0 if v.correct else 0.0 for v in verdicts]


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 for `<think>reasoning</think>` then a final text with exactly one \\boxed{}, else 0.0."""
    out = []
    for c in completions:
        text = completion_text(c)
        _, reasoning, final = split_reasoning(text)
        closed = "</think>" in text and text.count("</think>") == 1
        out.append(1.0 if closed and reasoning.strip() and final.count("\\boxed{") == 1 else 0.0)
    return out


def user_reward(spec: str) -> Callable:
    """`module:function` (the module importable from the working directory or the Python path)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise RewardError(f"rl.rewards: {spec!r} is not a reward; use one of {', '.join(BUILTIN)} or module:function")
    sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RewardError(f"rl.rewards: cannot load {spec!r} ({e}); give module:function of a module on the Python "
                          f"path or in the working directory") from None
    finally:
        sys.path.remove(os.getcwd())
    if not callable(fn):
        raise RewardError(f"rl.rewards: {spec!r} is not callable")
    return fn


def _run_limited(fn: Callable, kwargs: dict, timeout_s: float):
    """fn(**kwargs) in a daemon thread; (result, None), or (None, 'timeout' | the exception). A function that never
    returns is left behind (a thread cannot be killed) but cannot hold up the run or its exit."""
    box: dict = {}

    def target():
        try:
            value = fn(**kwargs)
            box["value"] = asyncio.run(value) if inspect.isawaitable(value) else value  # async rewards too
        except BaseException as e:  # noqa: BLE001 - any failure of a user's reward is reported, not raised
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="reward")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return None, "timeout"
    return box.get("value"), box.get("error")


def _as_rewards(values, n: int) -> list[float | None] | None:
    """n finite numbers (None allowed: TRL leaves that completion to the other rewards), else None. Accepts lists,
    tuples and arrays of Python or NumPy numbers (bools count as 0/1)."""
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()  # numpy / torch
    if not isinstance(values, (list, tuple)) or len(values) != n:
        return None
    out = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        if hasattr(v, "item"):
            v = v.item()
        if not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            return None
        out.append(float(v))
    return out


class Guarded:
    """A reward function that cannot stop the run: see the module docstring. `failed` and `timeouts` count
    completions that scored 0 because of it."""

    def __init__(self, name: str, fn: Callable, timeout_s: float):
        self.__name__ = name  # TRL logs rewards/<__name__>/mean
        self.fn, self.timeout_s = fn, timeout_s
        self.failed = self.timeouts = 0
        self._warned = False

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float | None]:
        n = len(completions)
        call = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids, **kwargs}
        deadline = time.monotonic() + self.timeout_s
        values, error = _run_limited(self.fn, call, self.timeout_s)
        checked = _as_rewards(values, n) if error is None else None
        if checked is not None:
            out, failed, timeouts = checked, 0, 0
        elif error == "timeout":
            out, failed, timeouts = [0.0] * n, n, n
        else:  # raised or returned something unusable: one completion at a time, in what is left of the time
            out, failed, timeouts = [], 0, 0
            for i in range(n):
                left = deadline - time.monotonic()
                one = {k: (v[i:i + 1] if isinstance(v, list) and len(v) == n else v) for k, v in call.items()}
                value, err = _run_limited(self.fn, one, left) if left > 0 else (None, "timeout")
                single = _as_rewards(value, 1) if err is None else None
                if single is not None:
                    out.append(single[0])
                else:
                    out.append(0.0)
                    failed += 1
                    timeouts += err == "timeout"
                    error = err if err is not None else ValueError(f"returned {value!r}, not one finite number per "
                                                                   f"completion")
        self.failed += failed
        self.timeouts += timeouts
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"rewards/{self.__name__}/failed", float(failed))
        if failed and not self._warned:
            self._warned = True
            logger.warning(f"rl: reward {self.__name__}: {failed} of {n} completions scored 0 "
                           f"({'took longer than ' + str(self.timeout_s) + ' s' if error == 'timeout' else repr(error)}); "
                           f"counted as rewards/{self.__name__}/failed, training goes on")
        return out


def build_rewards(cfg: RLConfig) -> tuple[list[Guarded], list[float]]:
    """The recipe's rewards (name -> weight) as guarded TRL reward functions and their weights."""
    from trl.rewards import get_soft_overlong_punishment

    if not cfg.rewards:
        raise RewardError("rl.rewards is empty; give at least one, e.g. {correct: 1.0}")
    funcs, weights = [], []
    for name, weight in cfg.rewards.items():
        if name == "correct":
            fn = Correct(cfg.verify)
        elif name == "format":
            fn = format_reward
        elif name == "length":
            cache = cfg.length_cache or max(1, cfg.max_completion_length // 4)
            if cache > cfg.max_completion_length:
                raise RewardError(f"rl.length_cache {cache} is longer than rl.max_completion_length "
                                  f"{cfg.max_completion_length}")
            fn = get_soft_overlong_punishment(max_completion_len=cfg.max_completion_length, soft_punish_cache=cache)
        else:
            fn = user_reward(name)
        funcs.append(Guarded(name, fn, cfg.reward_timeout_s))
        weights.append(float(weight))
    return funcs, weights
