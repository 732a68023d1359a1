"""The kd stage: vocabulary check, offline data alignment, the trainer's loss in every mode, and distillation that
works (a tiny student gets close to a tiny trained teacher). Tiny local models; no downloads.

The fast tests share one trained teacher and its sampled traces (module fixtures); the slow test goes through a real
vLLM engine: generate (float32, top-k logprobs) -> filter -> the columns kd consumes -> kd offline.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from pipeline.core.config import load_recipe
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.train import kd, kd_data
from pipeline.train.common import TrainError

K = 8  # stored top-k of the traces


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two OpenMP threads on a 2-core machine shared with other jobs can be 10x slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def problems(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        out.append((f"What is {a} + {b}?", f"<think>\n{a} + {b} = {a + b}\n</think>\n\nthe answer is \\boxed{{{a + b}}}"))
    return out


def train_teacher(path: Path, steps: int = 60) -> None:
    """A few full-batch Adam steps on fixed arithmetic chats: the teacher's next-token distributions become peaked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    texts = [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                     tokenize=False) for q, a in problems(64, 0)]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(steps):
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)


def prompt_ids(tok, question: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def sample_traces(teacher: str, n: int, seed: int, k: int | None = K, max_new_tokens: int = 32) -> datasets.Dataset:
    """Rows as distill filter writes them: messages (the text keeps <think>: real teachers mark it non-special), the
    teacher's own completion ids, its top-k per position
    (k None: the whole vocabulary)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    questions = [q for q, _ in problems(n, seed)]
    prompts = [prompt_ids(tok, q) for q in questions]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=max_new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    rows = []
    for i, (q, p) in enumerate(zip(questions, prompts)):
        c = out[i, width:].tolist()
        if tok.eos_token_id in c:
            c = c[:c.index(tok.eos_token_id) + 1]
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1: len(p) - 1 + len(c)]
        top = logits.log_softmax(-1).topk(k or logits.shape[-1], dim=-1)
        rows.append({"messages": [{"role": "user", "content": q},
                                  {"role": "assistant", "content": tok.decode([t for t in c if t != tok.eos_token_id])}],
                     "id": f"q{i}", "sample": 0, "completion_token_ids": c,
                     "topk_ids": top.indices.tolist(), "topk_logprobs": top.values.tolist()})
    return datasets.Dataset.from_list(rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random student, a trained teacher with the same tokenizer, training traces (top-8), held-out traces and a
    few traces with the whole vocabulary as 'top-k'."""
    root = tmp_path_factory.mktemp("kd")
    student = build_tiny_model(root / "student")
    teacher = build_tiny_model(root / "teacher")  # same seed: same tokenizer (and, before training, same weights)
    train_teacher(teacher)
    train = sample_traces(str(teacher), 48, seed=1)
    held = sample_traces(str(teacher), 16, seed=2)
    full = sample_traces(str(teacher), 6, seed=3, k=None, max_new_tokens=12)
    for name, ds in (("train", train), ("held", held), ("full", full)):
        ds.save_to_disk(str(root / name))
    return {"root": root, "student": str(student), "teacher": str(teacher), "train": str(root / "train"),
            "held": held, "full": str(root / "full")}


def kd_config(setup, out: Path, **kv):
    base = {"student": setup["student"], "data": setup["train"], "output": str(out), "teacher": setup["teacher"],
            "max_steps": 30, "learning_rate": 3e-3, "batch_size": 8, "grad_accum": 1, "logging_steps": 5,
            "warmup": 0, "lr_scheduler": "constant", "max_length": 256, "progress": False, "save_steps": 1000,
            "precision": "fp32"}  # exact comparisons (auto is bf16 on CPUs with avx512_bf16)
    base.update(kv)
    args = []
    for k, v in base.items():
        args += [f"--kd.{k}", v if isinstance(v, str) else json.dumps(v)]
    return load_recipe(None, args).kd


def heldout_kl(student, teacher, held: datasets.Dataset) -> float:
    """Mean KL(teacher || student) over the completion tokens of held-out traces, full vocabulary, T = 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    models = [AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32).eval() for m in (student, teacher)]
    total, count = 0.0, 0
    with torch.no_grad():
        for row in held:
            p, c = prompt_ids(tok, row["messages"][0]["content"]), row["completion_token_ids"]
            s_lp, t_lp = (m(torch.tensor([p + c])).logits[0, len(p) - 1: len(p) - 1 + len(c)].log_softmax(-1)
                          for m in models)
            total += (t_lp.exp() * (t_lp - s_lp)).sum().item()
            count += len(c)
    return total / count


# ------------------------------------------------------------------------------------------ vocabulary

def test_vocabulary_check(setup, tmp_path):
    from transformers import AutoTokenizer

    student = AutoTokenizer.from_pretrained(setup["student"])
    assert kd_data.check_vocab(AutoTokenizer.from_pretrained(setup["teacher"]), student, "T", "S") == len(student)
    other = build_tiny_model(tmp_path / "other", seed=1, vocab_size=400)
    with pytest.raises(TrainError) as e:
        kd_data.check_vocab(AutoTokenizer.from_pretrained(other), student, str(other), setup["student"])
    msg = str(e.value)
    assert "\n" not in msg and str(other) in msg and setup["student"] in msg and "distill sft" in msg
    # the stage refuses before any work: nothing is written
    with pytest.raises(TrainError, match="different vocabularies"):
        kd.run(kd_config(setup, tmp_path / "out", mode="online", teacher=str(other)))
    assert not (tmp_path / "out").exists()


def _edited_tokenizer(src: str, dst: Path, edit) -> "AutoTokenizer":
    """A copy of src's tokenizer with tokenizer.json edited by `edit(dict)` (same size: only the mapping changes)."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(src, dst)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        spec = json.loads((dst / name).read_text())
        edit(spec)
        (dst / name).write_text(json.dumps(spec))
    return AutoTokenizer.from_pretrained(dst)


def test_vocabulary_check_sees_the_mapping_not_the_size(setup, tmp_path):
    """Same-size tokenizers that differ in which id a token has, or in a special token, are different."""
    from transformers import AutoTokenizer

    student = AutoTokenizer.from_pretrained(setup["student"])

    def swap(spec):  # two ordinary tokens trade ids
        if "model" in spec:
            vocab = spec["model"]["vocab"]
            vocab["the"], vocab["answer"] = vocab["answer"], vocab["the"]

    def rename_special(spec):  # the reasoning-closing special token is another string at the same id
        for t in list(spec.get("added_tokens", [])) + list(spec.get("added_tokens_decoder", {}).values()):
            if t["content"] == "</think>":
                t["content"] = "</reason>"
        if "model" in spec:
            spec["model"]["vocab"]["</reason>"] = spec["model"]["vocab"].pop("</think>")

    for name, edit in (("swapped", swap), ("special", rename_special)):
        other = _edited_tokenizer(setup["teacher"], tmp_path / name, edit)
        assert len(other) == len(student)
        with pytest.raises(TrainError, match="different vocabularies") as e:
            kd_data.check_vocab(other, student, name, "S")
        assert "id " in str(e.value), name


def test_teacher_with_padding_rows_gives_the_same_loss(setup, tmp_path):
    """Sizes may differ by embedding padding rows (as Qwen2.5 0.5B vs 72B): those rows are cut off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    padded = tmp_path / "padded"
    model = AutoModelForCausalLM.from_pretrained(setup["teacher"], dtype=torch.float32)
    model.resize_token_embeddings(len(AutoTokenizer.from_pretrained(setup["teacher"])) + 64, mean_resizing=False)
    with torch.no_grad():
        model.get_output_embeddings().weight[-64:] = 5.0  # padding rows that would take real mass if not cut
    model.save_pretrained(padded)
    AutoTokenizer.from_pretrained(setup["teacher"]).save_pretrained(padded)
    losses = []
    for teacher in (setup["teacher"], str(padded)):
        p = kd.build(kd_config(setup, tmp_path / "o", mode="online", teacher=teacher, packing=False), verbose=False)
        batch = p.trainer.data_collator([p.trainer.train_dataset[i] for i in range(4)])
        losses.append(p.trainer.compute_loss(p.trainer.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


# ------------------------------------------------------------------------------------------ offline data

def test_offline_examples_line_up_with_the_teachers_tokens(setup):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(setup["student"])
    raw = datasets.load_from_disk(setup["train"])
    cfg = kd_config(setup, Path("unused"))
    enc, stats = kd_data.encode_offline(raw, tok, cfg, len(tok), strict_ids=False)
    assert stats["topk"] == K and stats["examples_trained"] == len(raw)
    for row, ex in zip(raw.select(range(5)), enc.select(range(5))):
        p = prompt_ids(tok, row["messages"][0]["content"])
        c = row["completion_token_ids"]
        assert ex["input_ids"] == p + c  # the teacher's own ids, not a re-tokenisation of the text
        assert ex["labels"] == [-100] * len(p) + c
        assert ex["topk_ids"][:len(p)] == [[]] * len(p) and ex["topk_ids"][len(p):] == row["topk_ids"]
        assert torch.allclose(torch.tensor(ex["topk_logprobs"][len(p):]), torch.tensor(row["topk_logprobs"]))

    longest = max(len(e) for e in enc["input_ids"])
    cut = dataclasses.replace(cfg, max_length=longest - 5, long_examples="truncate")
    enc_cut, stats = kd_data.encode_offline(raw, tok, cut, len(tok), strict_ids=False)
    assert stats["examples_truncated"] >= 1
    for ex in enc_cut:
        assert len(ex["input_ids"]) == len(ex["labels"]) == len(ex["topk_ids"]) == len(ex["topk_logprobs"]) <= longest - 5
    dropped, stats = kd_data.encode_offline(raw, tok, dataclasses.replace(cut, long_examples="drop"), len(tok),
                                            strict_ids=False)
    assert len(dropped) == len(raw) - stats["examples_dropped"] < len(raw)


def test_offline_data_errors(setup, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(setup["student"])
    raw = datasets.load_from_disk(setup["train"]).select(range(4))
    plain = tmp_path / "plain"
    raw.remove_columns(["topk_ids", "topk_logprobs"]).save_to_disk(str(plain))
    with pytest.raises(TrainError, match="--generate.sampling.logprobs"):
        kd.run(kd_config(setup, tmp_path / "o1", data=str(plain)))
    short = raw.map(lambda r: {"topk_ids": r["topk_ids"][:-1], "topk_logprobs": r["topk_logprobs"][:-1]})
    with pytest.raises(TrainError, match="top-k rows"):
        kd_data.encode_offline(short, tok, kd_config(setup, tmp_path / "o2"), len(tok), strict_ids=True)
    beyond = raw.map(lambda r: {"topk_ids": [[len(tok) + 3] + ids[1:] for ids in r["topk_ids"]]})
    with pytest.raises(TrainError, match="beyond the student"):  # a partial check: ids must lie in the vocabulary
        kd_data.encode_offline(beyond, tok, kd_config(setup, tmp_path / "o3"), len(tok), strict_ids=True)
    enc, stats = kd_data.encode_offline(beyond, tok, kd_config(setup, tmp_path / "o3"), len(tok), strict_ids=False)
    assert stats["topk_slots_outside_vocab"] == sum(len(r) for r in raw["completion_token_ids"])
    with pytest.raises(TrainError, match="needs a live teacher"):
        kd.run(kd_config(setup, tmp_path / "o4", mode="online", teacher=None))
    with pytest.raises(TrainError, match="alpha"):
        kd.run(kd_config(setup, tmp_path / "o5", alpha=1.5))


def test_cli_error_is_one_line(setup, tmp_path, capsys):
    from pipeline import cli

    plain = tmp_path / "plain"
    datasets.load_from_disk(setup["train"]).remove_columns(["topk_ids"]).save_to_disk(str(plain))
    capsys.readouterr()
    rc = cli.main(["kd", "--kd.student", setup["student"], "--kd.data", str(plain), "--kd.output", str(tmp_path / "o"),
                   "--kd.max_length", "1024"])  # within the tiny model's 2048 positions (the preflight checks)
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and err.startswith("distill kd: error:") and "sampling.logprobs" in err


# ---------------------------------------------------------------------------------------------- trainer

def test_offline_with_the_whole_vocabulary_equals_online(setup, tmp_path):
    """One batch through the trainer's compute_loss: stored top-V logprobs give the online loss, in both tail modes,
    for every divergence and T != 1; and a padding-free packed batch gives the padded batch's loss."""
    off = kd.build(kd_config(setup, tmp_path / "off", data=setup["full"], packing=False), verbose=False)
    on = kd.build(kd_config(setup, tmp_path / "on", data=setup["full"], mode="online", packing=False), verbose=False)
    assert off.data_stats["topk"] == off.vocab_size == 512
    examples = [off.trainer.train_dataset[i] for i in range(4)]
    padded = off.trainer.data_collator(examples)
    flat = kd_data.KDCollator(off.tokenizer.pad_token_id, padding_free=True, topk=512)(examples)
    assert flat["input_ids"].shape[0] == 1 and "position_ids" in flat
    for divergence, tail, temperature in [("forward_kl", "bucket", 1.0), ("forward_kl", "renormalize", 2.0),
                                          ("reverse_kl", "bucket", 1.5), ("jsd", "renormalize", 1.0)]:
        for p in (off, on):
            p.trainer.kd = dataclasses.replace(p.trainer.kd, divergence=divergence, tail=tail,
                                               temperature=temperature, alpha=0.7)
        (online, on_out), (offline, off_out), (packed, _) = (
            p.trainer.compute_loss(p.trainer.model, dict(batch), return_outputs=True)
            for p, batch in ((on, padded), (off, padded), (off, flat)))
        assert offline.item() == pytest.approx(online.item(), rel=1e-5, abs=1e-5), (divergence, tail)
        assert packed.item() == pytest.approx(offline.item(), rel=1e-5, abs=1e-5), (divergence, tail)
        # the trained loss is the documented mix, and its KD term is the teacher's: online and offline agree on it
        for loss, res in ((online, on_out), (offline, off_out)):
            assert res["kd"].item() > 1e-3
            want = 0.7 * temperature ** 2 * res["kd"] + 0.3 * res["ce"]
            assert loss.item() == pytest.approx(want.item(), rel=1e-5), (divergence, tail)
        assert off_out["kd"].item() == pytest.approx(on_out["kd"].item(), rel=1e-5, abs=1e-6)


def test_gradient_accumulation_weighs_every_token_alike(setup, tmp_path):
    """Two micro-batches of unequal token counts accumulate the gradient of the one batch that holds both."""
    tr = kd.build(kd_config(setup, tmp_path / "ga", packing=False), verbose=False).trainer
    assert tr.model_accepts_loss_kwargs  # so Trainer counts the step's tokens and passes them to compute_loss
    examples = [tr.train_dataset[i] for i in range(8)]

    def grads(batches):
        tr.model.zero_grad()
        tokens = torch.tensor(sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches))
        tr.current_gradient_accumulation_steps = len(batches)
        for b in batches:
            tr.training_step(tr.model, dict(b), tokens)
        return torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])

    one = grads([tr.data_collator(examples)])
    two = grads([tr.data_collator(examples[:2]), tr.data_collator(examples[2:])])
    assert torch.allclose(one, two, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_distillation_lowers_heldout_kl(setup, tmp_path, mode):
    """KD gets the student close to the teacher on held-out traces, and closer than CE on the same traces with the
    same steps (alpha = 0): the teacher's distributions are what helps. (Measured on this setup: offline 0.30 vs
    CE 0.43, online 0.27 vs 0.40 on one machine; offline 0.435 vs 0.524, online 0.386 on an AVX-512 EPYC, where the
    sampled traces differ. At 30 steps or alpha 0.5 the margin is too thin to pin; dropping the KD term gives 1.0.)"""
    out = tmp_path / mode
    steps = {"max_steps": 60, "mode": mode}
    before = heldout_kl(setup["student"], setup["teacher"], setup["held"])
    summary = kd.run(kd_config(setup, out, alpha=0.9, **steps))
    after = heldout_kl(str(out / "model"), setup["teacher"], setup["held"])
    kd.run(kd_config(setup, tmp_path / "ce", alpha=0.0, **steps))
    ce_only = heldout_kl(str(tmp_path / "ce" / "model"), setup["teacher"], setup["held"])
    assert after < 0.1 * before, (before, after)
    assert after < 0.9 * ce_only, (after, ce_only)
    assert summary["mode"] == mode and summary["vocab_check"] == "full" and summary["steps"] == 60
    assert summary["final_kd"] < summary["first_kd"] and summary["final_ce"] < summary["first_ce"]
    assert json.loads((out / "summary.json").read_text())["fingerprint"] == summary["fingerprint"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all("kd" in r and "ce" in r for r in log if "loss" in r)
    assert (out / "loss.png").stat().st_size > 0 and (out / "model" / "chat_template.jinja").exists()
    again = kd.run(kd_config(setup, out, alpha=0.9, **steps))  # finished: reused, not retrained
    assert again["fingerprint"] == summary["fingerprint"] and again["train_seconds"] == summary["train_seconds"]


def test_on_policy_alone_lowers_heldout_kl(setup, tmp_path):
    """lmbda = 1: every step trains on the student's own samples, scored by the teacher only (no CE, no traces):
    that alone brings the student towards the teacher on held-out traces (measured: 5.06 -> 1.58)."""
    out = tmp_path / "gkd"
    before = heldout_kl(setup["student"], setup["teacher"], setup["held"])
    summary = kd.run(kd_config(setup, out, mode="on_policy", lmbda=1.0, alpha=0.0, max_new_tokens=24, max_steps=60))
    after = heldout_kl(str(out / "model"), setup["teacher"], setup["held"])
    assert after < 0.5 * before, (before, after)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 60 and {r["on_policy"] for r in log if "loss" in r} == {1.0}


def test_on_policy_runs_and_writes_a_model(setup, tmp_path):
    out = tmp_path / "gkd"
    summary = kd.run(kd_config(setup, out, mode="on_policy", lmbda=1.0, max_new_tokens=8, max_steps=2,
                               logging_steps=1, batch_size=4, divergence="jsd", beta=0.5))
    assert summary["steps"] == 2 and summary["packing"] is False and summary["lmbda"] == 1.0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["on_policy"] for r in log if "loss" in r] == [1.0, 1.0]  # every step trained on the student's samples
    assert all("ce" not in r for r in log if "loss" in r)  # no CE on the student's own samples
    assert (out / "model" / "config.json").exists()


# ----------------------------------------------------------------------------------- real vLLM engine

@pytest.mark.slow
def test_vllm_topk_through_filter_lines_up_with_the_teacher(tiny_model, tmp_path):
    """generate (in-process vLLM, float32, top-4) -> filter -> what kd feeds the student: at every completion
    position the stored top-k are the teacher's k best under a transformers forward over the same ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]
    problems_file = tmp_path / "problems.jsonl"
    problems_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
generate:
  problems: {{source: {problems_file}}}
  teacher: {{model: {tiny_model}, backend: vllm, dtype: float32, enforce_eager: true, max_model_len: 1024}}
  sampling: {{n: 2, max_tokens: 24, logprobs: 4, temperature: 1.0, top_p: 1.0}}
  output: {tmp_path / 'traces'}
  progress: false
filter:
  output: {tmp_path / 'train'}
  user_turn: prompt       # the student's prompt is the teacher's prompt, token for token
  require_correct: false
  require_complete: false
  require_reasoning: false
  check_format: false
  max_repeat_ratio: null
  dedup: false
  near_dup_threshold: null
  progress: false
kd:
  student: {tiny_model}
  output: {tmp_path / 'kd'}
  max_steps: 2
  batch_size: 2
  grad_accum: 1
  progress: false
""")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    for stage in ("generate", "filter"):
        p = subprocess.run([sys.executable, "-m", "pipeline.cli", stage, str(recipe)], capture_output=True, text=True,
                           timeout=600, env=env)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    cfg = load_recipe(recipe).kd
    cfg.data = str(tmp_path / "train")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    raw = kd.load_data(cfg)
    assert len(raw) > 0
    enc, stats = kd_data.encode_offline(raw, tok, cfg, len(tok), strict_ids=True)
    assert stats["topk"] == 4
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for ex in enc:
        trained = [i for i, t in enumerate(ex["labels"]) if t != -100]
        with torch.no_grad():
            logits = model(torch.tensor([ex["input_ids"]])).logits[0]
        best = logits[[i - 1 for i in trained]].log_softmax(-1).topk(4, dim=-1)
        stored_ids = torch.tensor([ex["topk_ids"][i] for i in trained])
        stored_lps = torch.tensor([ex["topk_logprobs"][i] for i in trained])
        assert torch.allclose(stored_lps, best.values, atol=1e-3)
        # the ids agree wherever the ranking is not a near tie
        apart = (best.values[:, :-1] - best.values[:, 1:]).abs() > 1e-3
        clear = torch.ones_like(apart[:, :1]).repeat(1, 4)
        clear[:, :-1] &= apart
        clear[:, 1:] &= apart
        assert torch.equal(stored_ids[clear], best.indices[clear])

    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "kd", str(recipe)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((tmp_path / "kd" / "summary.json").read_text())
    assert summary["vocab_check"] == "full" and summary["teacher"] == tiny_model and summary["topk"] == 4
