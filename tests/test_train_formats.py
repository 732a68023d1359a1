"""Bring your own traces to sft/kd: TRL's dataset formats and ShareGPT read as they are, the loss on the assistant
turns only (which ones: train_turns), row-numbered errors, the project's traces through TRL's own SFTTrainer, and
the student saved as models are published (base dtype, no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from pipeline.core.config import load_recipe
from pipeline.train import common, kd, sft
from pipeline.train.common import TrainError
from pipeline.train.templates import IGNORE

Q, A = "What is 2 + 3?", "<think>\n2 + 3 = 5\n</think>\n\nThe answer is \\boxed{5}."
Q2, A2 = "And 4 + 4?", "<think>\n4 + 4 = 8\n</think>\n\nThe answer is \\boxed{8}."
SYSTEM = "Think step by step."

# One row per format, as each dataset card / docs page lays it out:
FIXTURES = {
    # TRL conversational language modeling: https://huggingface.co/docs/trl/dataset_formats#conversational
    "messages": {"messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]},
    # the same column holding ShareGPT turns (TRL's maybe_convert_to_chatml converts from/value)
    "messages_from_value": {"messages": [{"from": "user", "value": Q}, {"from": "assistant", "value": A}]},
    # ShareGPT with a system column: open-thoughts/OpenThoughts-114k, bespokelabs/Bespoke-Stratos-17k dataset cards
    # (system, conversations: [{from: user, value}, {from: assistant, value}])
    "openthoughts": {"system": SYSTEM,
                     "conversations": [{"from": "user", "value": Q}, {"from": "assistant", "value": A}]},
    # classic ShareGPT role names (human / gpt), as TRL's docs show them for from/value datasets
    "sharegpt_human_gpt": {"conversations": [{"from": "human", "value": Q}, {"from": "gpt", "value": A}]},
    # TRL prompt-completion, standard (plain strings): https://huggingface.co/docs/trl/dataset_formats#prompt-completion
    "prompt_completion_text": {"prompt": Q, "completion": A},
    # TRL prompt-completion, conversational
    "prompt_completion_chat": {"prompt": [{"role": "user", "content": Q}],
                               "completion": [{"role": "assistant", "content": A}]},
}


def cfg_for(stage: str, student, data, out, *extra: str):
    args = [f"--{stage}.student", str(student), f"--{stage}.data", str(data), f"--{stage}.output", str(out),
            f"--{stage}.max_steps", "2", f"--{stage}.batch_size", "2", f"--{stage}.grad_accum", "1",
            f"--{stage}.max_length", "256", f"--{stage}.save_steps", "1000", f"--{stage}.progress", "false",
            f"--{stage}.precision", "fp32", *extra]
    return getattr(load_recipe(None, args), stage)


def save(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    path = tmp_path / name
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def trained_texts(tok, ds, cfg) -> list[list[str]]:
    """Per example, the runs of consecutive tokens that carry loss, decoded."""
    enc, _ = common.encode_dataset(ds, tok, cfg)
    out = []
    for ids, labels in zip(enc["input_ids"], enc["labels"]):
        runs, cur = [], []
        for i, lab in zip(ids, labels):
            if lab != IGNORE:
                assert lab == i
                cur.append(i)
            elif cur:
                runs.append(tok.decode(cur))
                cur = []
        if cur:
            runs.append(tok.decode(cur))
        out.append(runs)
    return out


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_every_format_trains_the_assistant_turn_only(fmt, tok, tiny_model, tmp_path):
    data = save(tmp_path, fmt, [FIXTURES[fmt]] * 2)
    ds = common.load_training_set(str(data), "sft")
    msgs = ds[0]["messages"]
    assert msgs[-2:] == [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]
    assert msgs[0] == ({"role": "system", "content": SYSTEM} if fmt == "openthoughts" else msgs[-2])
    for turns in ("last", "all"):
        runs = trained_texts(tok, ds, cfg_for("sft", tiny_model, data, tmp_path / "o", "--sft.train_turns", turns))
        assert runs[0] == [A + "<|im_end|>\n"], (fmt, turns, runs[0])
        # what is not trained is the prompt, exactly as the served model sees it
        enc, _ = common.encode_dataset(ds, tok, cfg_for("sft", tiny_model, data, tmp_path / "o"))
        n = sum(1 for t in enc["labels"][0] if t == IGNORE)
        assert tok.decode(enc["input_ids"][0][:n]) == tok.apply_chat_template(msgs[:-1], tokenize=False,
                                                                             add_generation_prompt=True)


MULTI = [{"role": "user", "content": Q}, {"role": "assistant", "content": A},
         {"role": "user", "content": Q2}, {"role": "assistant", "content": A2}]


def test_multi_turn_trains_the_last_turn_or_every_assistant_turn(tok, tiny_model, tmp_path):
    data = save(tmp_path, "multi", [{"messages": MULTI}])
    ds = common.load_training_set(str(data), "sft")
    last = trained_texts(tok, ds, cfg_for("sft", tiny_model, data, tmp_path / "o"))  # the default
    assert last[0] == [A2 + "<|im_end|>\n"]
    every = trained_texts(tok, ds, cfg_for("sft", tiny_model, data, tmp_path / "o", "--sft.train_turns", "all"))
    assert every[0] == [A + "<|im_end|>\n", A2 + "<|im_end|>\n"]
    # the tokens are the conversation as rendered, in both modes
    for turns in ("last", "all"):
        enc, _ = common.encode_dataset(ds, tok, cfg_for("sft", tiny_model, data, tmp_path / "o", "--sft.train_turns",
                                                        turns))
        assert tok.decode(enc["input_ids"][0]) == tok.apply_chat_template(MULTI, tokenize=False)


def test_prompt_completion_never_trains_the_prompts_assistant_turns(tok, tiny_model, tmp_path):
    data = save(tmp_path, "pc", [{"prompt": MULTI[:3], "completion": MULTI[3:]}])
    ds = common.load_training_set(str(data), "sft")
    every = trained_texts(tok, ds, cfg_for("sft", tiny_model, data, tmp_path / "o", "--sft.train_turns", "all"))
    assert every[0] == [A2 + "<|im_end|>\n"]


def test_all_turns_refuses_a_template_that_rewrites_earlier_turns(tok, tiny_model, tmp_path):
    strip = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
             "{{ '<|im_start|>assistant\n' + m['content'].split('</think>')[-1] + '<|im_end|>\n' }}{% else %}"
             "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    jinja = tmp_path / "strip.jinja"
    jinja.write_text(strip)
    data = save(tmp_path, "multi", [{"messages": MULTI}] * 3)
    ds = common.load_training_set(str(data), "sft")
    t = AutoTokenizer.from_pretrained(tiny_model)
    t.chat_template = strip
    with pytest.raises(TrainError, match=r"row 0: .*assistant turn 1 differently.*train_turns: last"):
        common.encode_dataset(ds, t, cfg_for("sft", tiny_model, data, tmp_path / "o", "--sft.train_turns", "all"))
    assert trained_texts(t, ds, cfg_for("sft", tiny_model, data, tmp_path / "o"))[0] == [A2 + "<|im_end|>\n"]


def test_kd_train_turns_all_only_where_it_makes_sense(tiny_model, tmp_path):
    with pytest.raises(TrainError, match="kd.train_turns all works with kd.mode online"):
        kd.validate(cfg_for("kd", tiny_model, tmp_path, tmp_path / "o", "--kd.train_turns", "all"))
    kd.validate(cfg_for("kd", tiny_model, tmp_path, tmp_path / "o", "--kd.train_turns", "all", "--kd.mode", "online",
                        "--kd.teacher", tiny_model))


def test_kd_online_trains_every_assistant_turn_with_train_turns_all(tok, tiny_model, tmp_path):
    data = save(tmp_path, "multi", [{"messages": MULTI}] * 2)
    for turns, want in (("last", [A2]), ("all", [A, A2])):
        cfg = cfg_for("kd", tiny_model, data, tmp_path / turns, "--kd.mode", "online", "--kd.teacher", tiny_model,
                      "--kd.train_turns", turns, "--kd.packing", "false")
        p = kd.build(cfg, verbose=False)
        batch = next(iter(p.trainer.get_train_dataloader()))
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        trained = tok.decode(ids[labels != IGNORE])
        assert trained == "".join(t + "<|im_end|>\n" for t in want), (turns, trained)


# ------------------------------------------------------------------------------------------ one-line errors

def test_a_later_row_without_an_answer_is_named_by_its_row(tmp_path):
    good = FIXTURES["messages"]
    rows = [good, good, {"messages": [{"role": "user", "content": Q}]}, good]
    with pytest.raises(TrainError, match=r"sft.data .*rows.jsonl row 2 ends with a 'user' turn"):
        path = tmp_path / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        common.load_training_set(str(path), "sft")
    # ShareGPT turns under `messages` that do end with the assistant are read, not refused
    assert len(common.load_training_set(str(save(tmp_path, "fv", [FIXTURES["messages_from_value"]])), "sft")) == 1
    conv = [FIXTURES["openthoughts"], {"system": "", "conversations": [{"from": "user", "value": Q}]}]
    with pytest.raises(TrainError, match=r"row 1 ends with a 'user' turn"):
        common.load_training_set(str(save(tmp_path, "conv", conv)), "sft")
    with pytest.raises(TrainError, match=r"has no 'messages' column \(nor conversations, nor prompt \+ "
                                         r"completion\): use messages .*columns: text"):
        common.load_training_set(str(save(tmp_path, "text", [{"text": "a"}])), "sft")


@pytest.mark.parametrize("stage", ["sft", "kd"])
def test_empty_and_malformed_jsonl_are_one_line(stage, tiny_model, tmp_path, capsys):
    from pipeline.cli import main as cli_main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(FIXTURES["messages"]) + "\n" + '{"messages": [oops\n')
    for path, want in ((empty, f"{stage}.data {empty}: no rows"), (bad, f"{stage}.data {bad}: line 2: not valid JSON")):
        with pytest.raises(TrainError) as e:
            common.load_training_set(str(path), stage)
        assert str(e.value).startswith(want) and "\n" not in str(e.value)
        code = cli_main([stage, f"--{stage}.student", tiny_model, f"--{stage}.data", str(path),
                         f"--{stage}.output", str(tmp_path / "out"), f"--{stage}.max_length", "256"])
        err = capsys.readouterr().err
        assert code != 0 and want in err and "Traceback" not in err and "StopIteration" not in err \
            and "DatasetGenerationError" not in err, err


# ------------------------------------------------------------------------------- the project's traces in TRL

def trl_trained(trainer, tok) -> list[str]:
    """The text of the tokens that carry loss in the first batch TRL's trainer feeds the model."""
    batch = next(iter(trainer.get_train_dataloader()))
    out = []
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        out.append(tok.decode(ids[labels != IGNORE]))
    return out


def test_raw_traces_train_their_completion_in_trls_sft_trainer(tiny_model, tmp_path):
    """generate's OUTPUT/dataset -> generate.store.as_trl -> SFTTrainer(...) with TRL's defaults: the loss is on
    the teacher's completion (and the end of turn), never the prompt."""
    from trl import SFTConfig, SFTTrainer

    from pipeline.generate import stage as generate
    from pipeline.generate.store import as_trl

    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)})
                                + "\n" for i in range(2)))
    args = {"problems.source": str(problems), "teacher.model": tiny_model, "teacher.dtype": "float32",
            "output": str(tmp_path / "traces"), "sampling.n": 1, "sampling.max_tokens": 12,
            "teacher.backend": "transformers", "progress": "false"}
    generate.run(load_recipe(None, [x for k, v in args.items() for x in (f"--generate.{k}", str(v))]).generate)
    raw = datasets.load_from_disk(str(tmp_path / "traces" / "dataset"))
    assert raw[0]["messages"][-1]["role"] == "user"  # the prompt as sent: as it is, TRL would train on it alone
    ds = as_trl(raw)
    assert ds[0]["prompt"] == raw[0]["messages"]
    assert ds[0]["completion"] == [{"role": "assistant", "content": raw[0]["completion"]}]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    trainer = SFTTrainer(model=tiny_model, train_dataset=ds, processing_class=tok,
                         args=SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2,
                                        report_to="none", use_cpu=True, save_strategy="no"))
    wanted = {row["completion"] + "<|im_end|>\n" for row in raw}
    assert set(trl_trained(trainer, tok)) == wanted
    trainer.train()  # and it trains
    assert trainer.state.global_step == 1


def test_filter_output_trains_the_answer_with_assistant_only_loss(tiny_model, tmp_path):
    """A filter output's OUTPUT/dataset (messages: user + assistant) in TRL: SFTTrainer with assistant_only_loss."""
    from trl import SFTConfig, SFTTrainer

    ds = datasets.Dataset.from_list([{**FIXTURES["messages"], "id": "p0", "sample": 0, "predicted": "5"}] * 2)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    trainer = SFTTrainer(model=tiny_model, train_dataset=ds, processing_class=tok,
                         args=SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2,
                                        report_to="none", use_cpu=True, save_strategy="no", assistant_only_loss=True))
    assert trl_trained(trainer, tok) == [A + "<|im_end|>"] * 2  # the template's {% generation %} span
    trainer.train()


# ----------------------------------------------------------------------------------------- the saved student

@pytest.fixture(scope="module")
def bf16_student(tiny_model, tmp_path_factory) -> Path:
    """The tiny model saved as a bf16 checkpoint (as SmolLM2 and Qwen2.5 are published)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("bf16") / "model"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    assert json.loads((out / "config.json").read_text()).get("dtype") == "bfloat16"
    return out


def weight_dtypes(model_dir: Path) -> set:
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.mark.parametrize("save_dtype,want", [("auto", torch.bfloat16), ("float32", torch.float32)])
def test_student_is_saved_in_the_base_dtype_without_pickles(save_dtype, want, bf16_student, tmp_path):
    data = save(tmp_path, "data", [FIXTURES["messages"]] * 4)
    out = tmp_path / "out"
    s = sft.run(cfg_for("sft", bf16_student, data, out, "--sft.save_dtype", save_dtype))
    model = out / "model"
    assert weight_dtypes(model) == {want}
    assert json.loads((model / "config.json").read_text())["dtype"] == str(want).removeprefix("torch.")
    assert not [p.name for p in model.rglob("*") if p.suffix in PICKLES], list(model.iterdir())
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(model).dtype == want
    assert s["steps"] == 2


def test_lora_adapter_and_merged_saves_follow_the_base_dtype(bf16_student, tmp_path):
    data = save(tmp_path, "data", [FIXTURES["messages"]] * 4)
    sft.run(cfg_for("sft", bf16_student, data, tmp_path / "merged", "--sft.lora.enabled", "true"))
    assert weight_dtypes(tmp_path / "merged" / "model") == {torch.bfloat16}
    sft.run(cfg_for("sft", bf16_student, data, tmp_path / "adapter", "--sft.lora.enabled", "true",
                    "--sft.lora.merge", "false"))
    adapter = tmp_path / "adapter" / "model"
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    for model in (tmp_path / "merged" / "model", adapter):
        assert not [p.name for p in model.rglob("*") if p.suffix in PICKLES]
