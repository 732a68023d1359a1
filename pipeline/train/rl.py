"""`distill rl`: reinforcement learning after distillation (DeepSeek-R1's next step), with TRL's GRPOTrainer.

The student (by default the recipe's kd or sft output) answers problems with gold answers (`rl.problems`, loaded
and prompted exactly as generate and evaluate do, so training and test prompts match); each group of
`num_generations` completions is scored by the recipe's rewards (rewards.py: the verifier's `correct`, `format`,
`length`, or your own function) and GRPO moves the student towards the better ones.

Before training, problems can be kept to a pass-rate band of the current student (`selection_min/max`, from
`selection_samples` samples per problem through vLLM when installed, or from a `distill generate` run of the
student): a group whose completions are all right or all wrong has no advantage to learn from (open-r1 does the
same). The band and each problem's rate are written to OUTPUT/selection.json and reused on a rerun.

Generation: transformers' generate (CPU, and GPUs without vLLM), or vLLM on a GPU (`vllm_mode`: server, a
`trl vllm-serve` process; colocate, inside the trainer). Outputs as sft's: model/, checkpoints/ (resume),
train_log.jsonl (per step: reward, each reward's mean and failures, completion length, clipped share, clip
ratios, KL when beta > 0, step and generation time), reward.png, selection.json, summary.json written last.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import datasets

from ..backends.prompts import chat_messages
from ..core.config import PromptConfig, RLConfig, SamplingConfig, TeacherConfig
from ..core.data import load_problems
from ..core.errors import DistillError
from ..core.io import atomic_write_text, weights_id
from ..core.log import get_logger
from . import common
from .rewards import build_rewards
from .templates import preflight

logger = get_logger("rl")


class RLError(DistillError, ValueError):
    """An rl setting or input that cannot be used as it is."""


def run(cfg: RLConfig, callbacks: list | None = None) -> dict:
    from transformers import set_seed

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    state = common.distributed_state(cfg)
    validate(cfg, state.num_processes)
    out = Path(cfg.output)
    problems = load_rl_problems(cfg)
    # what decides the trained weights: the config, the problems, and the student's weights (retrained in place?)
    fp = common.fingerprint(cfg, problems.add_column("student_weights", [weights_id(cfg.student)] * len(problems)))
    done = common.finished_or_claimed(cfg, fp, "rl", state)
    if done is not None:
        return done
    from ..verify import start_default_pool

    if "correct" in cfg.rewards and cfg.verify.workers is None:
        start_default_pool()
    tokenizer = common.load_tokenizer(cfg, "rl")
    tokenizer.padding_side = "left"  # GRPO generates from left-padded prompts
    prompt_cfg = cfg.prompt or PromptConfig()
    pre = preflight(tokenizer, [*chat_messages(problems[0]["problem"], prompt_cfg),
                                {"role": "assistant", "content": "\\boxed{0}"}])
    selection = select_problems(cfg, problems, out, fp) if state.is_main_process else None
    state.wait_for_everyone()
    if selection is None:
        selection = json.loads((out / "selection.json").read_text())
    keep = set(selection["kept"])
    rows = [r for r in problems if r["id"] in keep]
    train = datasets.Dataset.from_list([{"prompt": chat_messages(r["problem"], prompt_cfg), "answer": r["answer"],
                                         "id": r["id"]} for r in rows])
    rewards, weights = build_rewards(cfg)
    if state.is_main_process:
        logger.info(f"rl: {len(train)} problems ({len(problems)} loaded, {len(problems) - len(train)} outside the "
                    f"pass-rate band or contaminated); rewards {dict(zip(cfg.rewards, weights))}; "
                    f"{cfg.num_generations} completions per problem, up to {cfg.max_completion_length} tokens, "
                    f"generation by {'vLLM (' + cfg.vllm_mode + ')' if cfg.vllm_mode else 'transformers'}")
    set_seed(cfg.seed)
    model = common.load_student(cfg, "rl")
    log_path = out / "train_log.jsonl"
    trainer = trainer_class()(model=model, reward_funcs=rewards, args=grpo_args(cfg, out, weights),
                              train_dataset=train, processing_class=tokenizer, peft_config=common.peft_config(cfg),
                              callbacks=[common.log_callback(log_path), *(callbacks or [])])
    data_stats = {"problems_loaded": len(problems), "problems_trained": len(train),
                  "problems_outside_band": selection["outside_band"], "problems_contaminated": selection["contaminated"]}
    summary = common.train_and_save(trainer, cfg, "rl", tokenizer=tokenizer, pre=pre, out=out, fp=fp,
                                    data_stats=data_stats, log_path=log_path, series=())
    if summary is None:
        return {}
    summary.update(log_figures(log_path, list(cfg.rewards)))
    summary.update({"rewards": dict(zip(cfg.rewards, weights)),
                    "reward_failures": {r.__name__: r.failed for r in rewards},
                    "reward_timeouts": {r.__name__: r.timeouts for r in rewards},
                    "num_generations": cfg.num_generations, "beta": cfg.beta, "loss_type": cfg.loss_type,
                    "generation": f"vllm-{cfg.vllm_mode}" if cfg.vllm_mode else "transformers"})
    plot_rewards(log_path, out / "reward.png", f"rl (GRPO): {Path(cfg.student).name}", list(cfg.rewards))
    common.finish(out, "rl", summary, cfg)  # last: the output is finished (then its checkpoints go)
    print_summary(summary, out)
    return summary


# ------------------------------------------------------------------------------------------------ checks

def validate(cfg: RLConfig, processes: int) -> None:
    import torch

    if not cfg.student:
        raise RLError("rl.student is not set and the recipe has no sft: or kd: section to take it from; give "
                      "--rl.student (a Hub id or local folder)")
    if cfg.problems is None:
        raise RLError("rl.problems is not set and the recipe has no generate.problems to take it from; give "
                      "--rl.problems.source (a benchmark name, a file or a Hub id with gold answers)")
    per_step = cfg.batch_size * cfg.grad_accum * processes
    if per_step % cfg.num_generations:
        raise RLError(f"rl: batch_size x grad_accum x processes = {per_step} completions per step is not a multiple "
                      f"of num_generations {cfg.num_generations}; make it one (e.g. batch_size "
                      f"{cfg.num_generations})")
    if cfg.vllm_mode and not torch.cuda.is_available():
        raise RLError("rl.vllm_mode needs a GPU (TRL's vLLM generation does not run on CPU); leave it null to "
                      "generate with transformers")
    low, high = cfg.selection_min, cfg.selection_max
    if (low is not None or high is not None) and not cfg.selection_from and processes > 1:
        raise RLError("rl: estimating pass rates by sampling runs in one process; with several processes give "
                      "rl.selection_from (a distill generate output of the student) or leave the band unset")
    for key, value in (("selection_min", low), ("selection_max", high)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise RLError(f"rl.{key} must be in [0, 1], got {value}")
    if low is not None and high is not None and low > high:
        raise RLError(f"rl.selection_min {low} is above rl.selection_max {high}")


def load_rl_problems(cfg: RLConfig) -> datasets.Dataset:
    p = cfg.problems
    return load_problems(p.source, split=p.split, columns=p.columns, limit=p.limit, shuffle_seed=p.shuffle_seed)


# -------------------------------------------------------------------------------------- problem selection

def select_problems(cfg: RLConfig, problems: datasets.Dataset, out: Path, fp: str) -> dict:
    """Decontaminate, then keep the problems whose pass rate under the student lies in the band; written to
    OUTPUT/selection.json (reused while the fingerprint holds)."""
    from ..filter.stage import decontamination_hits

    path = out / "selection.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("fingerprint") == fp:
            return old
    hits = decontamination_hits(list(problems["id"]), list(problems["problem"]), cfg)
    flagged = {h["id"] for h in hits}
    ids = [i for i in problems["id"] if i not in flagged]
    banded = cfg.selection_min is not None or cfg.selection_max is not None
    rates = pass_rates(cfg, problems.filter(lambda r: r["id"] not in flagged)) if banded and ids else {}
    low = 0.0 if cfg.selection_min is None else cfg.selection_min
    high = 1.0 if cfg.selection_max is None else cfg.selection_max
    kept = [i for i in ids if not banded or (i in rates and low <= rates[i] <= high)]
    if not kept:
        seen = sorted(rates.values())
        raise RLError(f"rl: no problem left to train on: {len(flagged)} contaminated, {len(ids)} with pass rates in "
                      f"[{min(seen, default=0):.2f}, {max(seen, default=0):.2f}] and none in [{low}, {high}]; widen "
                      f"rl.selection_min/max or give other rl.problems")
    selection = {"fingerprint": fp, "band": [low, high] if banded else None, "samples": cfg.selection_samples,
                 "source": cfg.selection_from or ("sampled" if banded else None), "kept": kept,
                 "outside_band": len(ids) - len(kept), "contaminated": len(flagged), "contamination": hits,
                 "pass_rates": rates}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(selection, indent=2))
    if banded:
        logger.info(f"rl: {len(kept)} of {len(ids)} problems have a pass rate in [{low}, {high}] "
                    f"(mean rate {sum(rates.values()) / max(len(rates), 1):.2f})")
    return selection


def pass_rates(cfg: RLConfig, problems: datasets.Dataset) -> dict[str, float]:
    """Share of verified-correct samples per problem id: read from a generate output, or sampled from the student."""
    from ..backends.base import split_reasoning
    from ..verify import verify_many

    golds = {r["id"]: str(r["answer"]) for r in problems}
    if cfg.selection_from:
        folder = Path(cfg.selection_from)
        path = folder / "dataset" if (folder / "dataset").is_dir() else folder
        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as e:
            raise RLError(f"rl.selection_from {cfg.selection_from}: not a distill generate output or save_to_disk "
                          f"folder ({str(e).splitlines()[0]})") from None
        samples = [(r["id"], r.get("final") or split_reasoning(r.get("completion") or "")[2]) for r in ds
                   if r["id"] in golds and not r.get("error")]
    else:
        samples = sample_student(cfg, problems)
    verdicts = verify_many([golds[i] for i, _ in samples], [text for _, text in samples],
                           timeout_s=cfg.verify.timeout_s, workers=cfg.verify.workers, progress=cfg.progress)
    totals: dict[str, list[int]] = {}
    for (i, _), v in zip(samples, verdicts):
        totals.setdefault(i, []).append(int(v.correct))
    return {i: sum(t) / len(t) for i, t in totals.items()}


def sample_student(cfg: RLConfig, problems: datasets.Dataset) -> list[tuple[str, str]]:
    """`selection_samples` completions per problem from the student as it is now (vLLM when installed)."""
    from ..backends.base import GenRequest, make_teacher, sample_seed, split_reasoning

    try:
        import vllm  # noqa: F401

        backend = "vllm"
    except ImportError:
        backend = "transformers"
    import torch

    # eager on CPU (compiling costs more than it saves for one pass); a GPU keeps CUDA graphs
    model = TeacherConfig(model=cfg.student, backend=backend, dtype="auto", enforce_eager=not torch.cuda.is_available(),
                          trust_remote_code=cfg.trust_remote_code)
    sampling = SamplingConfig(n=cfg.selection_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_completion_length, seed=cfg.seed)
    prompt_cfg = cfg.prompt or PromptConfig()
    requests = [GenRequest(r["id"], s, chat_messages(r["problem"], prompt_cfg), sample_seed(cfg.seed, r["id"], s))
                for r in problems for s in range(cfg.selection_samples)]
    logger.info(f"rl: sampling {len(requests)} completions of the student ({backend}) to estimate pass rates")
    got: list[tuple[str, str]] = []
    teacher = make_teacher(model, sampling)
    try:
        teacher.generate(requests, lambda res: got.append(
            (res.id, split_reasoning(res.completion or "", res.reasoning_field)[2] if res.error is None else "")))
    finally:
        teacher.close()
        del teacher
        import gc

        gc.collect()
    return got


# --------------------------------------------------------------------------------------------- trainer

def grpo_args(cfg: RLConfig, out: Path, weights: list[float]):
    from trl import GRPOConfig

    vllm = {"use_vllm": True, "vllm_mode": cfg.vllm_mode,
            **({"vllm_server_base_url": cfg.vllm_server_base_url} if cfg.vllm_server_base_url else {}),
            "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization} if cfg.vllm_mode else {"use_vllm": False}
    return GRPOConfig(
        **common.optimiser_args(cfg, out), num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
        beta=cfg.beta, loss_type=cfg.loss_type, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
        scale_rewards=cfg.scale_rewards, mask_truncated_completions=cfg.mask_truncated_completions,
        reward_weights=weights, log_completions=cfg.log_completions, remove_unused_columns=False, **vllm)


_TRAINER = None


def trainer_class():
    """GRPOTrainer that also logs how long each generation round took (`generate_time`), so the share of a step
    spent generating can be read off the log. Built on first use (importing this module does not import TRL)."""
    global _TRAINER
    if _TRAINER is None:
        from trl import GRPOTrainer

        class _RLTrainer(GRPOTrainer):
            def _generate(self, prompts):
                start = time.perf_counter()
                try:
                    return super()._generate(prompts)
                finally:
                    mode = "train" if self.model.training else "eval"
                    self._metrics[mode]["generate_time"].append(time.perf_counter() - start)

        _TRAINER = _RLTrainer
    return _TRAINER


# ---------------------------------------------------------------------------------------------- outputs

def _rows(log_path: Path) -> list[dict]:
    if not log_path.exists():
        return []
    return [r for r in (json.loads(ln) for ln in log_path.read_text().splitlines() if ln) if "reward" in r]


def log_figures(log_path: Path, rewards: list[str]) -> dict:
    """Start and end of the run from train_log.jsonl (means over the first and last quarter of the logged steps)."""
    rows = _rows(log_path)
    if not rows:
        return {}
    q = max(1, len(rows) // 4)

    def mean(key: str, part: list[dict]):
        vals = [r[key] for r in part if isinstance(r.get(key), (int, float))]
        return round(sum(vals) / len(vals), 4) if vals else None

    out = {}
    for key, name in [("reward", "reward"), *((f"rewards/{n}/mean", n) for n in rewards),
                      ("completions/mean_length", "completion_length"), ("completions/clipped_ratio", "clipped")]:
        out[f"{name}_start"], out[f"{name}_end"] = mean(key, rows[:q]), mean(key, rows[-q:])
    step, gen = mean("step_time", rows), mean("generate_time", rows)
    out.update({"step_seconds": step, "generate_seconds": gen,
                "generate_share": round(gen / step, 3) if step and gen is not None else None,
                "kl_end": mean("kl", rows[-q:]), "logged_steps": len(rows)})
    return out


def plot_rewards(log_path: Path, png: Path, title: str, rewards: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(log_path)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key, label in [("reward", "reward (weighted sum)"), *((f"rewards/{n}/mean", n) for n in rewards)]:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            top.plot(*zip(*pts), label=label, marker="." if len(pts) < 30 else None)
    top.set_ylabel("mean reward")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend()
    pts = [(r["step"], r["completions/mean_length"]) for r in rows
           if isinstance(r.get("completions/mean_length"), (int, float))]
    if pts:
        bottom.plot(*zip(*pts), color="gray", label="mean completion length")
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel("tokens")
    bottom.grid(alpha=0.3)
    bottom.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def print_summary(s: dict, out: Path) -> None:
    def num(x):
        return "?" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    print(f"\nrl (GRPO): trained {s['student']} ({s['method']}) for {s['steps']} steps on {s['problems_trained']} "
          f"problems, {s['train_seconds']} s ({num(s.get('step_seconds'))} s a step, "
          f"{num(s.get('generate_share'))} of it generating)")
    parts = [f"reward {num(s.get('reward_start'))} -> {num(s.get('reward_end'))}"]
    parts += [f"{n} {num(s.get(n + '_start'))} -> {num(s.get(n + '_end'))}" for n in s.get("rewards", {})]
    parts.append(f"length {num(s.get('completion_length_start'))} -> {num(s.get('completion_length_end'))} tokens")
    print("  " + "; ".join(parts) + " (first and last quarter of the steps)")
    failures = {k: v for k, v in s.get("reward_failures", {}).items() if v}
    if failures:
        print(f"  reward failures (scored 0): {failures}")
    print(f"  model: {s['model']}   log: {out}/train_log.jsonl   curve: {out}/reward.png")
