"""The sft stage on a tiny local model: it learns, stops, checks templates, does LoRA, resumes, scales out."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from pipeline.cli import main as cli_main
from pipeline.core.config import ConfigError, load_recipe
from pipeline.train import sft
from pipeline.train.common import TrainError
from pipeline.train.templates import FALLBACK_TEMPLATE, IGNORE, TemplateError, encode, preflight

ROOT = Path(__file__).resolve().parents[1]


def make_examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        answer = f"<think>\n{a} + {b} = {a + b}\n</think>\n\nThe answer is \\boxed{{{a + b}}}."
        rows.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                  {"role": "assistant", "content": answer}], "id": str(i)})
    return rows


def make_dataset(path: Path, n: int = 8) -> Path:
    datasets.Dataset.from_list(make_examples(n)).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sft-data") / "data")


def sft_cfg(student, data, out, *extra: str):
    args = ["--sft.student", str(student), "--sft.data", str(data), "--sft.output", str(out),
            "--sft.max_steps", "150", "--sft.learning_rate", "3e-3", "--sft.batch_size", "4", "--sft.grad_accum", "1",
            "--sft.max_length", "128", "--sft.logging_steps", "10", "--sft.save_steps", "1000", "--sft.progress", "false",
            "--sft.precision", "fp32", *extra]  # fp32: the exact comparisons below (auto is bf16 on some CPUs)
    return load_recipe(None, args).sft


def greedy(model_dir: Path, messages: list[dict], max_new_tokens: int = 48) -> str:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)  # stops on generation_config's EOS
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)


@pytest.fixture(scope="module")
def trained(tiny_model, train_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft-full") / "out"
    summary = sft.run(sft_cfg(tiny_model, train_data, out))
    return out, summary


def test_loss_falls_and_the_student_answers_a_training_problem(trained, train_data):
    out, s = trained
    assert s["steps"] == 150 and s["method"] == "full"
    assert s["final_loss"] < 0.25 * s["first_loss"], (s["first_loss"], s["final_loss"])
    rows = datasets.load_from_disk(str(train_data))
    exact = 0
    for row in rows:
        text = greedy(out / "model", row["messages"][:-1])
        exact += text == row["messages"][-1]["content"] + "<|im_end|>"  # the whole answer, then it stops
    assert exact >= len(rows) // 2, f"only {exact} of {len(rows)} training answers reproduced"


def answer_loss(model_dir, rows: list[dict]) -> float:
    """Mean CE of a model on the answer tokens of chats (the prompt is context, not scored)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    for row in rows:
        prompt = tok.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(row["messages"], tokenize=False)
        p, ids = tok(prompt, add_special_tokens=False).input_ids, tok(full, add_special_tokens=False).input_ids
        assert ids[:len(p)] == p
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0, len(p) - 1:-1].log_softmax(-1)
        total -= logp.gather(1, torch.tensor(ids[len(p):])[:, None]).sum().item()
        count += len(ids) - len(p)
    return total / count


def test_the_student_learns_what_carries_over_to_unseen_problems(trained, tiny_model):
    """On problems it never saw, the trained student's answer loss is far below the base model's (the reasoning
    format, the end of turn and the shape of the sums carry over), and greedy answers take the trained form."""
    out, _ = trained
    held = make_examples(16, seed=99)
    before, after = answer_loss(tiny_model, held), answer_loss(out / "model", held)
    assert after < 0.4 * before, (before, after)
    shaped = 0
    for row in held[:6]:
        text = greedy(out / "model", row["messages"][:-1])
        shaped += text.startswith("<think>\n") and "</think>\n\nThe answer is \\boxed{" in text \
            and text.endswith("}.<|im_end|>")
    assert shaped >= 4, shaped


def test_output_folder_is_a_servable_model(trained, tiny_model):
    out, s = trained
    model = out / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (model / name).exists(), name
    gen = json.loads((model / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(model)
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert s["turn_end"] == "<|im_end|>"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r][:2] == [1, 10]
    assert (out / "loss.png").stat().st_size > 5000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fingerprint"] == s["fingerprint"] and summary["tokens_per_epoch"] > 0


def test_same_config_is_not_retrained_and_another_is_refused(trained, tiny_model, train_data, capsys):
    out, s = trained
    before = (out / "model" / "model.safetensors").stat().st_mtime_ns
    again = sft.run(sft_cfg(tiny_model, train_data, out))
    assert again["fingerprint"] == s["fingerprint"]
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(TrainError, match="another config or data.*overwrite"):
        sft.run(sft_cfg(tiny_model, train_data, out, "--sft.learning_rate", "1e-3"))


def test_overwrite_replaces_another_configs_output(tiny_model, train_data, tmp_path):
    out = tmp_path / "out"
    first = sft.run(sft_cfg(tiny_model, train_data, out, "--sft.max_steps", "2"))
    again = sft.run(sft_cfg(tiny_model, train_data, out, "--sft.max_steps", "2", "--sft.overwrite", "true"))
    assert again == first  # same config: done already, even with overwrite
    other = sft.run(sft_cfg(tiny_model, train_data, out, "--sft.max_steps", "3", "--sft.overwrite", "true"))
    assert other["steps"] == 3 and other["fingerprint"] != first["fingerprint"] and other["resumed_from"] is None


# ------------------------------------------------------------------------------------------ templates

MESSAGES = make_examples(1)[0]["messages"]


@pytest.fixture()
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_template_without_generation_markers_still_trains_on_the_answer_only(tok):
    tok.chat_template = FALLBACK_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    enc = encode(tok, MESSAGES)
    trained = tok.decode([t for t in enc.labels if t != IGNORE])
    assert trained == MESSAGES[-1]["content"] + "<|im_end|>\n"
    assert all(t == IGNORE for t in enc.labels[:enc.prompt_len]) and enc.prompt_len > 5
    assert tok.decode(enc.input_ids[:enc.prompt_len]).endswith("<|im_start|>assistant\n")


def test_preflight_catches_a_template_that_strips_reasoning(tok):
    # what DeepSeek-R1-Distill's template does to assistant turns: keep only the text after </think>
    tok.chat_template = FALLBACK_TEMPLATE.replace(
        "message['content'] + eos_token }}{% endgeneration %}",
        "message['content'].split('</think>')[-1].lstrip() + eos_token }}{% endgeneration %}")
    with pytest.raises(TemplateError, match="drops the reasoning.*fallback"):
        preflight(tok, MESSAGES)


def test_preflight_catches_a_template_without_eos(tok):
    tok.chat_template = FALLBACK_TEMPLATE.replace("message['content'] + eos_token }}{% endgeneration %}",
                                                  "message['content'] }}{% endgeneration %}")
    with pytest.raises(TemplateError, match="never stop.*fallback"):
        preflight(tok, MESSAGES)


def test_preflight_adds_the_turn_end_to_the_stop_tokens(tok):
    # a base model whose EOS is <|endoftext|> but whose template closes turns with <|im_end|> (Qwen2.5 base)
    tok.eos_token = "<|endoftext|>"
    tok.chat_template = FALLBACK_TEMPLATE.replace("eos_token", "'<|im_end|>'")
    pre = preflight(tok, MESSAGES)
    assert pre.turn_end == "<|im_end|>"
    assert pre.stop_ids == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]


def test_bad_template_stops_the_stage_before_training(tiny_model, train_data, tmp_path, capsys):
    jinja = tmp_path / "strip.jinja"
    jinja.write_text(FALLBACK_TEMPLATE.replace("message['content'] + eos_token }}{% endgeneration %}",
                                               "message['content'] }}{% endgeneration %}"))
    out = tmp_path / "out"
    code = cli_main(["sft", "--sft.student", str(tiny_model), "--sft.data", str(train_data), "--sft.output", str(out),
                     "--sft.chat_template", str(jinja)])
    err = capsys.readouterr().err
    assert code == 1 and "never stop" in err and len(err.strip().splitlines()) == 1
    assert not (out / "model").exists() and not (out / "checkpoints").exists()


def test_student_without_template_gets_a_clear_error_and_fallback_works(tiny_model, train_data, tmp_path):
    plain = tmp_path / "plain"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    tok.save_pretrained(plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(plain)
    with pytest.raises(TemplateError, match="no chat template.*fallback"):
        sft.run(sft_cfg(plain, train_data, tmp_path / "a", "--sft.max_steps", "2"))
    s = sft.run(sft_cfg(plain, train_data, tmp_path / "b", "--sft.max_steps", "2", "--sft.chat_template", "fallback"))
    saved = (tmp_path / "b" / "model" / "chat_template.jinja").read_text()
    assert saved == FALLBACK_TEMPLATE and s["steps"] == 2


# ------------------------------------------------------------------------------------- options, data

def test_lora_trains_and_merges(tiny_model, train_data, tmp_path):
    from peft import PeftModel

    opts = ("--sft.lora.enabled", "true", "--sft.lora.r", "8", "--sft.learning_rate", "1e-2", "--sft.max_steps", "40")
    s = sft.run(sft_cfg(tiny_model, train_data, tmp_path / "out", *opts))
    assert s["method"] == "lora-merged" and s["final_loss"] < 0.9 * s["first_loss"]
    # the tiny random model's logits are near-uniform and its tied head is not a LoRA target, so the loss moves
    # slowly; the answers it picks are what LoRA learns
    last = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()][-2]
    assert last["mean_token_accuracy"] > 0.5
    model_dir = tmp_path / "out" / "model"
    assert not (model_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(model_dir)  # plain transformers, no peft needed
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    name = "model.layers.0.self_attn.q_proj.weight"
    changed = dict(merged.named_parameters())[name] - dict(base.named_parameters())[name]
    assert changed.abs().max() > 1e-3
    assert torch.equal(merged.model.norm.weight, base.model.norm.weight)  # LoRA leaves non-target weights alone
    # the merged model computes what base + adapter compute (the same seeded run, saved as an adapter)
    sft.run(sft_cfg(tiny_model, train_data, tmp_path / "adapter", *opts, "--sft.lora.merge", "false"))
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                             tmp_path / "adapter" / "model").eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(tiny_model)("What is 12 + 30? the answer is 42").input_ids])
    with torch.no_grad():
        want, got, plain = (m(ids).logits for m in (with_adapter, merged.eval(), base.eval()))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (want - plain).abs().max() > 100 * (got - want).abs().max() + 1e-3  # and the adapter matters


def test_lora_adapter_alone(tiny_model, train_data, tmp_path):
    from peft import PeftModel

    s = sft.run(sft_cfg(tiny_model, train_data, tmp_path / "out", "--sft.lora.enabled", "true",
                        "--sft.lora.merge", "false", "--sft.max_steps", "3"))
    model_dir = tmp_path / "out" / "model"
    assert s["method"] == "lora-adapter" and (model_dir / "adapter_config.json").exists()
    assert not (model_dir / "model.safetensors").exists()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), model_dir)


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kw):
        self.steps.append(state.global_step)


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_model, train_data, tmp_path):
    opts = ("--sft.max_steps", "12", "--sft.save_steps", "4", "--sft.learning_rate", "1e-3")
    sft.run(sft_cfg(tiny_model, train_data, tmp_path / "straight", *opts))
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated"):
        sft.run(sft_cfg(tiny_model, train_data, out, *opts), callbacks=[CrashAt(6)])
    assert not (out / "summary.json").exists() and not (out / "model").exists()  # nothing looks finished
    cut = out / "checkpoints" / "checkpoint-8"  # a later save cut short (a full disk): its weights never written
    cut.mkdir()
    (cut / "config.json").write_text("{}")
    counted = CountSteps()
    s = sft.run(sft_cfg(tiny_model, train_data, out, *opts), callbacks=[counted])
    assert s["resumed_from"].endswith("checkpoint-4") and s["steps"] == 12
    assert counted.steps == list(range(5, 13))  # the rerun executed steps 5..12 only: it resumed, not restarted
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # lines logged after the checkpoint and before the crash were dropped
    assert not list((out / "checkpoints").glob("checkpoint-*"))  # finished: the resume points are gone


def test_keep_checkpoints_keeps_the_resume_points(tiny_model, train_data, tmp_path):
    opts = ("--sft.max_steps", "4", "--sft.save_steps", "2")
    sft.run(sft_cfg(tiny_model, train_data, tmp_path / "kept", *opts, "--sft.keep_checkpoints", "true"))
    assert sorted(p.name for p in (tmp_path / "kept" / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2",
                                                                                                 "checkpoint-4"]


def test_resume_skips_checkpoints_whose_save_was_cut_short(tmp_path):
    from pipeline.train.common import last_checkpoint

    ckpt = tmp_path / "checkpoints"
    assert last_checkpoint(tmp_path) is None
    for step, state in ((4, '{"global_step": 4}'), (10, '{"global_step": 10}'), (12, '{"global_'), (16, None)):
        (ckpt / f"checkpoint-{step}").mkdir(parents=True)
        if state is not None:
            (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (ckpt / "checkpoint-20.tmp").mkdir()
    assert last_checkpoint(tmp_path) == str(ckpt / "checkpoint-10")  # 16 has no state, 12 a torn one; 10 beats 4


def test_long_examples_dropped_or_cut_and_counted(tiny_model, tmp_path):
    rows = make_examples(6)
    rows[0]["messages"][-1]["content"] = "<think>\n" + "1 + 1 = 2. " * 40 + "\n</think>\n\n\\boxed{2}"
    data = tmp_path / "data"
    datasets.Dataset.from_list(rows).save_to_disk(str(data))
    s = sft.run(sft_cfg(tiny_model, data, tmp_path / "drop", "--sft.max_steps", "2", "--sft.max_length", "64"))
    assert s["examples_over_max_length"] == 1 and s["examples_dropped"] == 1 and s["examples_trained"] == 5
    s = sft.run(sft_cfg(tiny_model, data, tmp_path / "cut", "--sft.max_steps", "2", "--sft.max_length", "64",
                        "--sft.long_examples", "truncate", "--sft.packing", "false"))
    assert s["examples_truncated"] == 1 and s["examples_trained"] == 6


def test_unpacked_padded_batches_train_too(tiny_model, train_data, tmp_path):
    s = sft.run(sft_cfg(tiny_model, train_data, tmp_path / "out", "--sft.packing", "false", "--sft.max_steps", "30"))
    assert s["final_loss"] < 0.6 * s["first_loss"]


def test_bad_data_gets_one_line_errors(tiny_model, tmp_path):
    no_messages = tmp_path / "no-messages"
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(no_messages))
    with pytest.raises(TrainError, match="no 'messages' column"):
        sft.run(sft_cfg(tiny_model, no_messages, tmp_path / "o1"))
    traces = tmp_path / "traces"
    (traces / "shards").mkdir(parents=True)
    datasets.Dataset.from_list(make_examples(2)).save_to_disk(str(traces / "dataset"))
    with pytest.raises(TrainError, match="generate output.*filter"):
        sft.run(sft_cfg(tiny_model, traces, tmp_path / "o2"))
    prompts_only = tmp_path / "prompts-only"
    datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}]}]).save_to_disk(str(prompts_only))
    with pytest.raises(TrainError, match="assistant turn"):
        sft.run(sft_cfg(tiny_model, prompts_only, tmp_path / "o3"))
    with pytest.raises(TrainError, match="cannot load the model|cannot load its tokenizer"):
        sft.run(sft_cfg(tmp_path / "no-such-model", make_dataset(tmp_path / "ok"), tmp_path / "o4"))


def test_recipe_errors_name_the_key():
    with pytest.raises(ConfigError, match="sft.lora.rank.*valid keys: enabled, r, "):
        load_recipe(None, ["--sft.student", "s", "--sft.output", "o", "--sft.lora.rank", "8"])
    with pytest.raises(ConfigError, match="sft.precision"):
        load_recipe(None, ["--sft.student", "s", "--sft.output", "o", "--sft.precision", "int8"])


def test_cli_trains_on_the_recipes_filter_output(tiny_model, train_data, tmp_path, capsys):
    # a filter output folder: dataset/ + report.json; sft.data defaults to filter.output
    filtered = tmp_path / "filtered"
    datasets.load_from_disk(str(train_data)).save_to_disk(str(filtered / "dataset"))
    (filtered / "report.json").write_text("{}")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"filter": {"output": str(filtered)},
                                      "sft": {"student": str(tiny_model), "output": str(tmp_path / "sft"),
                                              "max_steps": 3, "progress": False}}))
    assert cli_main(["sft", str(recipe), "--sft.batch_size", "2"]) == 0
    assert "sft: trained" in capsys.readouterr().out
    assert json.loads((tmp_path / "sft" / "summary.json").read_text())["examples_trained"] == 8


def test_accelerate_configs_are_valid():
    expected = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}
    for name, kind in expected.items():
        cfg = yaml.safe_load((ROOT / "recipes" / "accelerate" / f"{name}.yaml").read_text())
        assert cfg["distributed_type"] == kind
    assert yaml.safe_load((ROOT / "recipes/accelerate/zero3.yaml").read_text())["deepspeed_config"]["zero_stage"] == 3


def test_two_processes_train_the_same_model(tiny_model, train_data, tmp_path):
    # `accelerate launch --cpu` runs a single process in accelerate 1.15; the ddp config on a CPU-only machine
    # starts N CPU processes (gloo)
    out = tmp_path / "ddp"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(ROOT / "recipes/accelerate/ddp.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           "--main_process_port", str(29500 + os.getpid() % 1000), "-m", "pipeline.cli", "sft",
           "--sft.student", str(tiny_model), "--sft.data", str(train_data), "--sft.output", str(out),
           "--sft.max_steps", "6", "--sft.batch_size", "2", "--sft.grad_accum", "1", "--sft.max_length", "128",
           "--sft.learning_rate", "1e-3", "--sft.progress", "false", "--sft.precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["ranks"] == 2 and len(s["rank_checksums"]) == 2
    assert s["rank_checksums"][0] == s["rank_checksums"][1]
    assert s["epochs"] > 1  # 2 ranks x 2 rows per step over 6 steps: more than one pass over 8 examples
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert any(not torch.equal(base[k], trained[k]) for k in base)
    # and it is the model one process trains with the same effective batch (2 ranks x 2 rows = 4 rows a step):
    # the ranks split each step's rows and the loss is normalised over both ranks' tokens
    single = tmp_path / "single"
    sft.run(sft_cfg(tiny_model, train_data, single, "--sft.max_steps", "6", "--sft.batch_size", "4",
                    "--sft.learning_rate", "1e-3"))
    one = AutoModelForCausalLM.from_pretrained(single / "model").state_dict()
    moved = max((trained[k] - base[k]).abs().max().item() for k in base)
    for k in base:
        torch.testing.assert_close(trained[k], one[k], atol=max(1e-5, moved * 1e-2), rtol=1e-3, msg=k)


@pytest.mark.parametrize("packing", [True, False])
def test_the_loss_is_trls_own_from_the_trained_positions_only(tiny_model, train_data, tmp_path, packing):
    """sft's loss (CE from the logits of the trained positions) equals TRL SFTTrainer's fused-head loss on the same
    batch, gradients included, packed or padded, with the tokens of a whole accumulated step as the divisor."""
    from trl import SFTTrainer

    from pipeline.train import common

    cfg = sft_cfg(tiny_model, train_data, tmp_path / "out", "--sft.packing", json.dumps(packing))
    tok = common.load_tokenizer(cfg, "sft")
    train, _ = common.encode_dataset(common.load_training_set(cfg.data, "sft"), tok, cfg)
    trainer = sft.trainer_class()(model=common.load_student(cfg, "sft"), args=common.trainer_args(cfg, tmp_path),
                                  train_dataset=train, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    items = int((batch["labels"][:, 1:] != IGNORE).sum()) + 7  # as if another micro-batch held 7 more tokens
    for n in (None, items):
        model.zero_grad()
        ours = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
        ours.backward()
        g_ours = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad()
        trls = SFTTrainer.compute_loss(trainer, model, dict(batch), num_items_in_batch=n)
        trls.backward()
        g_trl = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert ours.item() == pytest.approx(trls.item(), rel=1e-5), (packing, n)
        assert torch.allclose(g_ours, g_trl, rtol=1e-4, atol=1e-7)
    assert trainer.loss_is_scaled_for_ga and trainer.model_accepts_loss_kwargs


def test_kernels_capped_at_avx2_mean_no_bf16(monkeypatch):
    """Run "as AVX2" (tests/README.md), the process must choose as an AVX2-only CPU does: fp32, not bf16."""
    from pipeline.core import hardware

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert hardware.cpu_has_bf16() is False
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    assert hardware.cpu_has_bf16() is False
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    flags = open("/proc/cpuinfo").read()
    assert hardware.cpu_has_bf16() is ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_precision_auto_follows_the_hardware(monkeypatch):
    from pipeline.core import hardware
    from pipeline.train import common

    cfg = load_recipe(None, ["--sft.student", "s", "--sft.output", "o"]).sft
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert common.mixed_precision(cfg) == "bf16"  # a CPU with avx512_bf16 / AMX
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert common.mixed_precision(cfg) == "fp32"  # emulated bf16 would be slower than fp32
    cfg.precision = "bf16"
    assert common.mixed_precision(cfg) == "bf16"  # what the user names is kept
