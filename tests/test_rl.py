"""distill rl: the rewards against hand-made completions, failures that cost a reward and never the run, a tiny model
that learns a task from the verifier's reward alone, resume, selection by pass rate, recipe chaining."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.backends.prompts import chat_messages
from pipeline.core.config import PromptConfig, load_recipe
from pipeline.core.stages import with_defaults
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.train import rewards, rl
from pipeline.verify import verify_answer

from test_kd import one_thread  # noqa: F401 - autouse: one torch thread for this module too
from test_sft import CrashAt


def chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def call(fn, texts: list[str], **columns):
    n = len(texts)
    return fn(prompts=[[{"role": "user", "content": "q"}]] * n, completions=[chat(t) for t in texts],
              completion_ids=[[1] * 5] * n, **columns)


# ------------------------------------------------------------------------------------------------ rewards

def test_correct_is_the_verifiers_verdict_on_the_final_answer():
    texts = ["<think>\n6 * 7 = 42\n</think>\n\nSo \\boxed{42}.",  # right
             "<think>\n6 * 7 = 48\n</think>\n\n\\boxed{48}",        # wrong
             "6 times 7 is 42, so the answer is 42.",               # unboxed: whatever the verifier reads
             "<think>\n\\boxed{42} is tempting\n</think>\n\n\\boxed{41}",  # the reasoning's box does not count
             "<think>\n6 * 7 = \\boxed{42}\n</think>\n\nI am not sure.",  # nor when the final text has none
             "no answer at all"]
    got = call(rewards.Correct(load_recipe(None, ["--rl.output", "x"]).rl.verify), texts, answer=["42"] * 6)
    assert got[:2] == [1.0, 0.0] and got[3:] == [0.0, 0.0, 0.0]
    assert got[2] == (1.0 if verify_answer("42", texts[2]).correct else 0.0)  # the same semantics as evaluate


def test_format_wants_a_reasoning_block_and_exactly_one_box():
    texts = ["<think>\nwork\n</think>\n\n\\boxed{3}", "\\boxed{3}", "<think>\n\n</think>\n\n\\boxed{3}",
             "<think>\nwork\n</think>\n\n\\boxed{3} or \\boxed{4}", "<think>\nwork</think> no box",
             "<think>\nwork\n</think>\n</think>\n\\boxed{3}"]
    assert call(rewards.format_reward, texts) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_length_is_trls_soft_overlong_punishment():
    cfg = load_recipe(None, ["--rl.output", "x", "--rl.rewards", "{length: 1.0}", "--rl.max_completion_length", "20",
                             "--rl.length_cache", "8"]).rl
    (fn,), weights = rewards.build_rewards(cfg)
    got = fn(prompts=[None] * 4, completions=[chat("")] * 4, completion_ids=[[1] * 10, [1] * 12, [1] * 16, [1] * 20])
    assert got == [0.0, 0.0, pytest.approx(-0.5), -1.0] and weights == [1.0] and fn.__name__ == "length"


def flaky(completions, answer, **kwargs):
    """Raises on any batch holding 'boom'; otherwise each completion's gold answer as its reward."""
    if any("boom" in rewards.completion_text(c) for c in completions):
        raise RuntimeError("boom")
    return [float(a) for a in answer]


def slow(completions, **kwargs):
    time.sleep(30)
    return [1.0] * len(completions)


def test_a_raising_or_hanging_reward_scores_zero_and_is_counted():
    metrics = {}
    guarded = rewards.Guarded("flaky", flaky, timeout_s=5.0)
    got = call(guarded, ["fine", "boom", "also fine"], answer=["2", "3", "4"],
               log_metric=lambda k, v: metrics.__setitem__(k, v))
    assert got == [2.0, 0.0, 4.0]  # retried one by one, each with its own columns: only the failing one loses
    assert guarded.failed == 1 and metrics == {"rewards/flaky/failed": 1.0}
    hung = rewards.Guarded("slow", slow, timeout_s=0.5)
    start = time.monotonic()
    assert call(hung, ["a", "b"]) == [0.0, 0.0]
    assert time.monotonic() - start < 5 and hung.timeouts == 2
    wrong_size = rewards.Guarded("short", lambda completions, **kw: [1.0], timeout_s=5.0)
    assert call(wrong_size, ["a", "b"]) == [1.0, 1.0]  # a whole-batch answer of the wrong size: asked one by one


def test_reward_values_numpy_bools_none_and_non_finite():
    import numpy as np

    def returns(values):
        return rewards.Guarded("r", lambda completions, **kw: values, timeout_s=5.0)

    assert call(returns(np.array([0.5, 1.0], dtype=np.float32)), ["a", "b"]) == [0.5, 1.0]
    assert call(returns([True, np.float64(2.0)]), ["a", "b"]) == [1.0, 2.0]
    assert call(returns([None, 1]), ["a", "b"]) == [None, 1.0]  # None: left to the other rewards, as TRL allows
    bad = returns([float("inf"), 1.0])  # TRL would turn it into NaN advantages
    assert call(bad, ["a", "b"]) == [0.0, 0.0] and bad.failed == 2

    async def later(completions, **kw):
        return [3.0] * len(completions)

    assert call(rewards.Guarded("async", later, timeout_s=5.0), ["a"]) == [3.0]


def test_user_reward_by_module_and_function(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def shorter(completions, **kw):\n"
                                            "    return [1.0 / (1 + len(c[0]['content'])) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(None, ["--rl.output", "x", "--rl.rewards", "{'my_rewards:shorter': 0.5, correct: 1}"]).rl
    funcs, weights = rewards.build_rewards(cfg)
    assert [f.__name__ for f in funcs] == ["my_rewards:shorter", "correct"] and weights == [0.5, 1.0]
    assert call(funcs[0], ["abc"]) == [0.25]
    for bad in ("nope", "my_rewards:missing", "no_such_module:f"):
        with pytest.raises(rewards.RewardError, match="rl.rewards"):
            rewards.build_rewards(load_recipe(None, ["--rl.output", "x", "--rl.rewards", f"{{'{bad}': 1}}"]).rl)


# --------------------------------------------------------------------------------------------- the stage

PROMPT = PromptConfig()


@pytest.fixture(scope="module")
def picker(tmp_path_factory):
    """A tiny model taught to answer 'Pick a number i.' (with R1's instruction, as rl prompts) with a random digit in a
    box, and problems whose gold answer is always 7: the verifier rewards about one answer in nine at first."""
    root = tmp_path_factory.mktemp("rl")
    path = build_tiny_model(root / "model")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rng = random.Random(0)
    texts = [tok.apply_chat_template([*chat_messages(f"Pick a number {i}.", PROMPT),
                                      {"role": "assistant", "content": f"the answer is \\boxed{{{rng.randint(1, 9)}}}"}],
                                     tokenize=False) for i in range(64)]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    problems = root / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"Pick a number {i}.", "answer": "7"}) + "\n"
                                for i in range(16)))
    return {"model": str(path), "problems": str(problems)}


def rl_cfg(picker, out: Path, *extra: str):
    args = ["--rl.output", str(out), "--rl.student", picker["model"], "--rl.problems.source", picker["problems"],
            "--rl.num_generations", "8", "--rl.batch_size", "16", "--rl.max_completion_length", "16",
            "--rl.max_steps", "30", "--rl.learning_rate", "1e-3", "--rl.beta", "0.04", "--rl.lr_scheduler", "constant",
            "--rl.progress", "false", "--rl.save_steps", "100", "--rl.precision", "fp32", *extra]
    return load_recipe(None, args).rl


def test_grpo_raises_the_correct_reward_of_a_learnable_task(picker, tmp_path):
    """Always answering 7 is learnable in 30 steps from the verifier's 1/0 alone, on both kinds of CPU.

    The settings are what makes it robust. At lr 3e-3 without a KL term it collapsed on 5 of 5 seeds on AVX-512
    kernels and 4 of 5 on AVX2 ones (ATEN_CPU_CAPABILITY=avx2): in a group with one right answer the seven wrong
    ones push down the "}" and end of turn they share with it, Adam turns that near-cancelling gradient into full
    steps, the student stops ending its answer, every completion runs to the length limit unboxed, and with all
    rewards 0 nothing is learned again (a real AVX2 EPYC collapsed to 1-token completions instead). lr 1e-3 alone
    still collapsed on 1 of 5 AVX2 seeds. lr 1e-3 with beta 0.04 (the KL term holds the tokens the reward does not
    tell apart near the start): 20 of 20 learned (5 seeds x both kernels x 1 and 2 torch threads): first step
    0.00-0.12, first quarter 0.02-0.38, last quarter 0.78-0.96, a rise of 0.48-0.79."""
    s = rl.run(rl_cfg(picker, tmp_path / "out"))
    rows = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    first = next(r["rewards/correct/mean"] for r in rows if "rewards/correct/mean" in r)
    assert first < 0.4 and s["correct_end"] > 0.6 and s["correct_end"] > s["correct_start"] + 0.3, (first, s)
    assert s["steps"] == 30 and s["problems_trained"] == 16 and s["generation"] == "transformers"
    assert 0 < s["generate_share"] < 1 and s["reward_failures"] == {"correct": 0}
    logged = rows[0]
    for key in ("reward", "rewards/correct/mean", "completions/mean_length", "completions/clipped_ratio",
                "clip_ratio/region_mean", "generate_time", "step_time"):
        assert key in logged, key
    assert (tmp_path / "out" / "reward.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["fingerprint"] == s["fingerprint"]
    assert rl.run(rl_cfg(picker, tmp_path / "out"))["train_seconds"] == s["train_seconds"]  # finished: reused


def test_resume_after_a_crash_matches_an_uninterrupted_run(picker, tmp_path):
    opts = ("--rl.max_steps", "8", "--rl.save_steps", "4", "--rl.beta", "0.04")
    straight = rl.run(rl_cfg(picker, tmp_path / "straight", *opts))
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated"):
        rl.run(rl_cfg(picker, out, *opts), callbacks=[CrashAt(6)])
    assert not (out / "summary.json").exists() and not (out / "model").exists()
    again = rl.run(rl_cfg(picker, out, *opts))
    assert again["resumed_from"].endswith("checkpoint-4") and again["steps"] == 8
    assert straight["kl_end"] is not None
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_lora_as_in_sft(picker, tmp_path):
    s = rl.run(rl_cfg(picker, tmp_path / "lora", "--rl.max_steps", "3", "--rl.lora.enabled", "true", "--rl.lora.r", "4"))
    assert s["method"] == "lora-merged" and s["steps"] == 3
    base = AutoModelForCausalLM.from_pretrained(picker["model"]).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "model").state_dict()
    assert set(base) == set(merged) and any(not torch.equal(base[k], merged[k]) for k in base)


def test_selection_keeps_the_pass_rate_band(picker, tmp_path):
    """Pass rates read from a generate-style output of the student: problems all right or all wrong are dropped."""
    import datasets

    rows = []
    for i in range(16):
        right = {0: 0, 1: 4}.get(i % 4, 2)  # p0, p4, ... never right; p1, p5, ... always; the rest half the time
        rows += [{"id": f"p{i}", "sample": s, "final": "\\boxed{7}" if s < right else "\\boxed{3}", "error": None}
                 for s in range(4)]
    samples = tmp_path / "samples"
    datasets.Dataset.from_list(rows).save_to_disk(str(samples))
    out = tmp_path / "out"
    s = rl.run(rl_cfg(picker, out, "--rl.selection_min", "0.1", "--rl.selection_max", "0.9", "--rl.selection_from",
                      str(samples), "--rl.max_steps", "1"))
    selection = json.loads((out / "selection.json").read_text())
    assert sorted(selection["kept"], key=lambda x: int(x[1:])) == [f"p{i}" for i in range(16) if i % 4 in (2, 3)]
    assert s["problems_trained"] == 8 and s["problems_outside_band"] == 8
    assert selection["pass_rates"]["p1"] == 1.0 and selection["pass_rates"]["p0"] == 0.0
    with pytest.raises(rl.RLError, match="no problem left to train on"):
        rl.run(rl_cfg(picker, tmp_path / "none", "--rl.selection_min", "0.6", "--rl.selection_max", "0.9",
                      "--rl.selection_from", str(samples)))


@pytest.mark.slow
def test_selection_by_sampling_the_student_with_vllm(picker, tmp_path):
    """Without selection_from the pass rates come from samples of the student itself (vLLM on CPU here)."""
    out = tmp_path / "out"
    s = rl.run(rl_cfg(picker, out, "--rl.selection_min", "0.01", "--rl.selection_max", "0.99", "--rl.selection_samples",
                      "8", "--rl.max_steps", "1"))
    selection = json.loads((out / "selection.json").read_text())
    rates = selection["pass_rates"]
    assert selection["source"] == "sampled" and sorted(rates) == sorted(f"p{i}" for i in range(16))
    assert all(r in {k / 8 for k in range(9)} for r in rates.values())  # 8 samples each
    assert 0 < sum(rates.values()) / 16 < 0.5  # about one answer in nine is a 7
    assert selection["kept"] == [i for i in rates if 0.01 <= rates[i] <= 0.99] and s["problems_trained"] == len(
        selection["kept"]) > 0


def test_bad_settings_are_one_line_errors(picker, tmp_path):
    with pytest.raises(rl.RLError, match="multiple of num_generations"):
        rl.run(rl_cfg(picker, tmp_path / "a", "--rl.batch_size", "12"))
    with pytest.raises(rl.RLError, match="needs a GPU"):
        rl.run(rl_cfg(picker, tmp_path / "b", "--rl.vllm_mode", "server"))
    with pytest.raises(rl.RLError, match="rl.student is not set"):
        rl.run(load_recipe(None, ["--rl.output", str(tmp_path / "c"), "--rl.problems.source", picker["problems"]]).rl)


def test_recipe_defaults_chain_rl_after_training(tmp_path):
    recipe = load_recipe(None, ["--generate.problems.source", "gsm8k", "--generate.teacher.model", "t",
                                "--generate.output", "g", "--generate.prompt.system", "be brief",
                                "--sft.student", "s", "--sft.output", str(tmp_path / "sft"),
                                "--rl.output", str(tmp_path / "rl")])
    with_defaults(recipe)
    assert recipe.rl.student == str(tmp_path / "sft" / "model")
    assert recipe.rl.problems.source == "gsm8k" and recipe.rl.prompt.system == "be brief"
    recipe = load_recipe(None, ["--sft.student", "s", "--sft.output", "a", "--kd.student", "s", "--kd.output", "b",
                                "--rl.output", "c"])
    assert with_defaults(recipe).rl.student == str(Path("b") / "model")  # kd's student when both train
