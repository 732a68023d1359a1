"""vLLM on CPU: which knobs make a small real teacher generate fastest on this machine.

Each configuration runs in its own process (vLLM reads its environment at start): the demo teacher answers
the same synthetic word problems (n samples each) and the script prints engine start time, generated tokens
per second and the ratio to the first configuration.

    .venv/bin/python bench/bench_vllm_cpu.py                          # the demo teacher, all configurations
    .venv/bin/python bench/bench_vllm_cpu.py --only baseline,reserved0 --problems 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (environment, engine keyword arguments); each adds one knob to the one before it
CONFIGS = {
    "baseline": ({"VLLM_CPU_NUM_OF_RESERVED_CPU": None}, {"dtype": "bfloat16", "enforce_eager": True}),
    "reserved0": ({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}, {"dtype": "bfloat16", "enforce_eager": True}),
    "reserved0+iomp": ({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "LD_PRELOAD": "iomp"},
                       {"dtype": "bfloat16", "enforce_eager": True}),
    "reserved0+iomp+compiled": ({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "LD_PRELOAD": "iomp"},
                                {"dtype": "bfloat16", "enforce_eager": False}),
    "fp32+reserved0+iomp": ({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "LD_PRELOAD": "iomp"},
                            {"dtype": "float32", "enforce_eager": True}),
}


def worker(args) -> None:
    from vllm import LLM, SamplingParams

    from pipeline.core.data import load_problems
    from pipeline.backends.prompts import chat_messages
    from pipeline.core.config import PromptConfig

    kwargs = json.loads(args.engine)
    problems = load_problems(str(ROOT / "data/demo/synth/train.jsonl"), limit=args.problems)
    t0 = time.monotonic()
    llm = LLM(model=args.model, seed=0, max_model_len=1024, **kwargs)
    started = time.monotonic() - t0
    prompts = [chat_messages(p, PromptConfig()) for p in problems["problem"]]
    params = SamplingParams(n=args.n, temperature=0.7, top_p=0.95, max_tokens=args.max_tokens)
    t0 = time.monotonic()
    outs = llm.chat(prompts, params, use_tqdm=False)
    seconds = time.monotonic() - t0
    tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
    print("RESULT " + json.dumps({"start_s": round(started, 1), "gen_s": round(seconds, 1), "tokens": tokens,
                                  "tok_s": round(tokens / seconds, 1)}))


def run_config(name: str, model: str, args) -> dict:
    env_over, engine = CONFIGS[name]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_CPU_KVCACHE_SPACE": "2"}
    for k, v in env_over.items():
        if v is None:
            env.pop(k, None)
        elif v == "iomp":
            env[k] = str(Path(sys.prefix) / "lib" / "libiomp5.so")
        else:
            env[k] = v
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--engine", json.dumps(engine),
           "--problems", str(args.problems), "--n", str(args.n), "--max-tokens", str(args.max_tokens)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(line[7:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--model", default="demo:qwen2.5-coder-0.5b-instruct")
    p.add_argument("--problems", type=int, default=32)
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from pipeline.demo.models import resolve_model

    model = resolve_model(args.model)
    print(f"teacher {args.model}: {args.problems} problems x n={args.n}, max {args.max_tokens} tokens, "
          f"{os.cpu_count()} CPUs")
    print(f"{'configuration':<28} {'start s':>8} {'tokens':>7} {'gen s':>7} {'tok/s':>7} {'ratio':>6}")
    base = None
    for name in args.only.split(","):
        r = run_config(name, model, args)
        if "error" in r:
            print(f"{name:<28} failed: {r['error']}")
            continue
        base = base or r["tok_s"]
        print(f"{name:<28} {r['start_s']:>8} {r['tokens']:>7} {r['gen_s']:>7} {r['tok_s']:>7} "
              f"{r['tok_s'] / base:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
