"""`distill push`: the dry-run folders and cards for a tiny trained model, the one-line errors, and the real
huggingface_hub client driven end to end against a local stand-in of the Hub's HTTP API (tests/hub_standin.py)."""

from __future__ import annotations

import json
import random
import shutil
import socket
from pathlib import Path

import datasets
import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard

from hub_standin import HubStandIn
from pipeline.push import stage as hub
from pipeline.cli import main as cli_main
from pipeline.core.config import load_recipe
from pipeline.evaluate.scoring import benchmark_metrics

TOKEN = "hf_FAKEpushTOKEN0123456789abcdefXYZ"  # recognisable: must never appear in any output
BASE = "Qwen/Qwen2.5-0.5B-Instruct"
TEACHER = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # content is irrelevant; it is carried, not read


# ----------------------------------------------------------------------------------------------- fixtures

def _metrics(seed: int, n_problems: int = 6, n: int = 4) -> dict:
    rng = random.Random(seed)
    records = [{"id": str(i), "sample": s, "correct": (ok := rng.random() < 0.5), "predicted": "1" if ok else "2",
                "finish_reason": "stop", "error": None, "completion_tokens": 50 + i}
               for i in range(n_problems) for s in range(n)]
    return benchmark_metrics(records, [1, 2, 4], n_boot=200, seed=0)


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    """A finished run: traces, a filter output, an sft output around the tiny model, evaluation results."""
    root = tmp_path_factory.mktemp("push-run")
    sampling = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 512, "seed": 0, "logprobs": 0}
    rows = [{"id": f"p{i}", "sample": s, "problem": f"What is {i} + {s}?", "answer": str(i + s), "source": "gsm8k_train",
             "teacher": TEACHER, "completion": f"<think>{i}+{s}</think> \\boxed{{{i + s}}}", "reasoning": f"{i}+{s}",
             "final": f"\\boxed{{{i + s}}}", "finish_reason": "stop", "completion_tokens": 9, "sampling": sampling,
             "error": None} for i in range(5) for s in range(2)]
    (root / "traces").mkdir()
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "traces" / "dataset"))
    (root / "traces" / "summary.json").write_text(json.dumps({
        "rows": 10, "problems": 5, "n": 2, "ok": 10, "errors": 0, "truncated": 0, "prompt_tokens": 200,
        "completion_tokens": 90, "teacher": TEACHER, "backend": "vllm"}))
    (root / "traces" / "run.json").write_text("{}")

    kept = [{"messages": [{"role": "user", "content": r["problem"]},
                          {"role": "assistant", "content": f"<think>\n{r['reasoning']}\n</think>\n\n{r['final']}"}],
             "id": r["id"], "sample": r["sample"], "predicted": r["answer"], "problem": r["problem"],
             "answer": r["answer"], "completion_tokens": 9} for r in rows if r["sample"] == 0]
    (root / "filter").mkdir()
    datasets.Dataset.from_list(kept).save_to_disk(str(root / "filter" / "dataset"))
    report = {
        "fingerprint": {"config": "x", "input": "y"}, "input": str(root / "traces"), "output": str(root / "filter"),
        "rows_in": 10, "rows_kept": 5, "problems_in": 5, "problems_kept": 5,
        "rejected": {"contaminated": 1, "over per-problem cap": 4}, "failing_checks": {"contaminated": 1, "over per-problem cap": 4},
        "verify_reasons": {"correct": 10}, "teacher_pass_at_1": 1.0, "teacher_sample_accuracy": 1.0,
        "pass_rates": {f"p{i}": 1.0 for i in range(5)},
        "kept_tokens": {"count": 5, "mean": 9.0, "median": 9, "min": 9, "max": 9},
        "decontamination": {"benchmarks": ["gsm8k", "math500"], "ngram": 8, "problems_flagged": 1,
                            "hits": [{"id": "p9", "benchmark": "gsm8k", "benchmark_id": "gsm8k-17",
                                      "ngram": "natalia sold clips to 48 of her friends"}]},
        "config": {"input": str(root / "traces"), "output": str(root / "filter"), "require_correct": True,
                   "max_per_problem": 1, "selection": "shortest", "decontaminate": ["gsm8k", "math500"],
                   "user_turn": "problem"}}
    (root / "filter" / "report.json").write_text(json.dumps(report))
    (root / "filter" / "report.png").write_bytes(PNG)

    sft = root / "sft"
    shutil.copytree(tiny_model, sft / "model")
    (sft / "model" / "training_args.bin").write_bytes(b"pickle")  # the trainer's pickle stays home
    (sft / "summary.json").write_text(json.dumps({
        "stage": "sft", "fingerprint": "f", "student": BASE, "data": str(root / "filter"), "model": str(sft / "model"),
        "method": "full", "examples_in": 5, "examples_trained": 5, "tokens_per_epoch": 300, "steps": 20, "epochs": 3.0,
        "first_loss": 6.2, "final_loss": 0.8, "train_loss": 2.1, "train_seconds": 12.5, "precision": "fp32", "ranks": 1}))
    (sft / "run.json").write_text(json.dumps({"stage": "sft", "fingerprint": "f"}))
    (sft / "loss.png").write_bytes(PNG)

    (root / "eval").mkdir()
    results = {
        "models": [{"name": "teacher", "model": TEACHER, "backend": "vllm"},
                   {"name": "base", "model": BASE, "backend": "vllm"},
                   {"name": str(sft / "model"), "model": str(sft / "model"), "backend": "vllm"}],
        "benchmarks": [{"name": "gsm8k", "source": "gsm8k", "split": None, "n_problems": 6, "contamination": "checked: none"},
                       {"name": "math500", "source": "math500", "split": None, "n_problems": 6, "contamination": "not checked"}],
        "sampling": {"n": 4, "temperature": 0.6, "top_p": 0.95, "max_tokens": 1024, "seed": 0, "greedy": False},
        "ks": [1, 2, 4], "prompt": {"instruction": "Please reason step by step, and put your final answer within \\boxed{}.",
                                    "system": None, "template": "{problem}\n{instruction}"},
        "verify": {"timeout_s": 5.0}, "wall_s": 1.0,
        "results": {},
    }
    for j, m in enumerate(results["models"]):
        results["results"][m["name"]] = {b["name"]: _metrics(10 * j + k) for k, b in enumerate(results["benchmarks"])}
    (root / "eval" / "results.json").write_text(json.dumps(results))
    (root / "eval" / "results.png").write_bytes(PNG)

    (root / "recipe.yaml").write_text(yaml.safe_dump({
        "generate": {"problems": {"source": "gsm8k_train", "limit": 5}, "teacher": {"model": TEACHER},
                     "sampling": {"n": 2, "max_tokens": 512}, "output": str(root / "traces")},
        "filter": {"output": str(root / "filter"), "decontaminate": ["gsm8k", "math500"], "max_per_problem": 1},
        "sft": {"student": BASE, "output": str(sft), "learning_rate": 2e-5, "epochs": 3, "grad_accum": 4},
        "evaluate": {"models": [TEACHER, BASE, str(sft / "model")], "benchmarks": ["gsm8k", "math500"],
                     "output": str(root / "eval")},
        "push": {"model_repo": "me/tiny-r1", "dataset_repo": "me/tiny-r1-data", "traces_repo": "me/tiny-r1-traces"},
    }))
    return root


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a dry run opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def online(monkeypatch):
    """conftest sets HF_HUB_OFFLINE for the whole suite; the stand-in is local, so let the client talk to it."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _all_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in folder.rglob("*") if p.is_file()]


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0][4:])


# --------------------------------------------------------------------------------------------- dry run

def test_dry_run_stages_the_exact_folders_and_cards(run_dir, tmp_path, token_env, no_network, capsys):
    preview = tmp_path / "preview"
    rc = cli_main(["push", str(run_dir / "recipe.yaml"), "--dry-run", "--push.dry_run_dir", str(preview),
                   "--push.license", "apache-2.0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert TOKEN not in out + err
    assert "dry run" in out and "me/tiny-r1" in out and "found in $HF_TOKEN" in out
    for _, data in _all_bytes(preview):
        assert TOKEN.encode() not in data

    # the model folder: the trained files (byte-identical), the card, the curves; not the trainer's pickle
    model = preview / "model"
    names = {p.name for p in model.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json", "README.md", "loss.png", "results.png"} <= names
    assert "training_args.bin" not in names
    src = run_dir / "sft" / "model"
    for name in ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json", "chat_template.jinja"):
        assert (model / name).read_bytes() == (src / name).read_bytes()

    # the model card: metadata the Hub reads (model-index with the student's pass@1), and the story
    card = ModelCard.load(model / "README.md")
    meta = _front_matter((model / "README.md").read_text())
    assert card.data.base_model == BASE and card.data.datasets == ["me/tiny-r1-data"]
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    assert {"distill-pipeline", "distillation", "reasoning", "math", "sft"} <= set(card.data.tags)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    student = results["results"][str(src)]
    got = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got[("openai/gsm8k", "pass@1")] == round(100 * student["gsm8k"]["pass@1"], 2)
    assert got[("HuggingFaceH4/MATH-500", "pass@1")] == round(100 * student["math500"]["pass@1"], 2)
    assert ("openai/gsm8k", "maj@4") in got and ("openai/gsm8k", "pass@4") in got
    assert meta["model-index"][0]["name"] == "me/tiny-r1"
    text = card.text
    assert TEACHER in text and "https://huggingface.co/datasets/me/tiny-r1-data" in text
    assert "https://huggingface.co/datasets/me/tiny-r1-traces" in text
    assert "supervised fine-tuning" in text and "2e-05" in text and "4 accumulation" in text
    assert "5 verified traces of 5 problems" in text and "6.2 -> 0.8" in text
    assert "**tiny-r1** (this model)" in text and "| teacher |" in text  # the side-by-side table
    assert "![training loss](loss.png)" in text and "results.png" in text
    assert str(run_dir) not in (model / "README.md").read_text()  # no local paths in a public card

    # the training set: Parquet the Hub reads, a card with the filter and decontamination report
    ds_dir = preview / "dataset"
    parquet = sorted(str(p) for p in (ds_dir / "data").glob("train-*.parquet"))
    assert [Path(p).name for p in parquet] == ["train-00000-of-00001.parquet"]
    loaded = datasets.load_dataset("parquet", data_files=parquet, split="train")
    original = datasets.load_from_disk(str(run_dir / "filter" / "dataset"))
    assert loaded.to_list() == original.to_list()
    dcard = DatasetCard.load(ds_dir / "README.md")
    assert dcard.data.configs[0]["data_files"][0]["path"] == "data/train-*"
    assert "distill-pipeline" in dcard.data.tags and dcard.data.size_categories == ["n<1K"]
    assert "## Decontamination" in dcard.text and "gsm8k, math500" in dcard.text
    assert "natalia sold clips to 48 of her friends" in dcard.text and "| contaminated | 1 | 1 |" in dcard.text
    assert "https://huggingface.co/me/tiny-r1" in dcard.text and TEACHER in dcard.text
    report = json.loads((ds_dir / "report.json").read_text())
    assert report["rows_kept"] == 5 and str(run_dir) not in (ds_dir / "report.json").read_text()
    assert (ds_dir / "report.png").exists()

    # the traces: every row, and a card with teacher and sampling
    tr = preview / "traces"
    loaded = datasets.load_dataset("parquet", data_files=str(tr / "data" / "*.parquet"), split="train")
    assert len(loaded) == 10
    tcard = DatasetCard.load(tr / "README.md")
    assert TEACHER in tcard.text and "temperature 0.6" in tcard.text and "n 2" in tcard.text
    assert "`gsm8k_train`, the first 5" in tcard.text and "https://huggingface.co/datasets/me/tiny-r1-data" in tcard.text


def test_kd_after_sft_card_tells_both_steps(run_dir, tmp_path, token_env, no_network, capsys):
    kd = tmp_path / "kd"
    shutil.copytree(run_dir / "sft" / "model", kd / "model")
    (kd / "model" / "training_args.bin").unlink()
    (kd / "summary.json").write_text(json.dumps({
        "stage": "kd", "student": str(run_dir / "sft" / "model"), "teacher": TEACHER, "mode": "offline",
        "temperature": 2.0, "alpha": 0.7, "divergence": "forward_kl", "tail": "bucket", "method": "full", "steps": 5,
        "first_loss": 1.0, "final_loss": 0.5, "first_kd": 0.9, "final_kd": 0.4, "first_ce": 1.1, "final_ce": 0.6}))
    recipe = load_recipe(run_dir / "recipe.yaml", [
        "--kd.student", str(run_dir / "sft" / "model"), "--kd.output", str(kd), "--kd.temperature", "2.0",
        "--kd.alpha", "0.7", "--push.dataset_repo", "null", "--push.traces_repo", "null", "--push.dry_run",
        "--push.dry_run_dir", str(tmp_path / "p")])
    result = hub.run(recipe.push, recipe)
    assert [u["kind"] for u in result["uploads"]] == ["model"]
    text = (tmp_path / "p" / "model" / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["base_model"] == BASE and "knowledge-distillation" in meta["tags"]
    assert "model-index" not in meta  # the evaluation scored the sft model, not this one
    assert "SFT on the teacher's traces, then logit distillation (offline teacher" in text
    assert "temperature 2.0, alpha 0.7" in text and "KD temperature" in text and "The KD run started from an SFT run" in text
    assert "holds no results for" in capsys.readouterr().out


def test_rl_after_sft_is_the_default_model_and_its_card_tells_both_steps(run_dir, tmp_path, token_env, no_network,
                                                                         capsys):
    rl = tmp_path / "rl"
    shutil.copytree(run_dir / "sft" / "model", rl / "model")
    (rl / "model" / "training_args.bin").unlink()
    (rl / "summary.json").write_text(json.dumps({
        "stage": "rl", "student": str(run_dir / "sft" / "model"), "method": "full", "steps": 12,
        "rewards": {"correct": 1.0, "format": 0.1}, "problems_trained": 40, "reward_start": 0.31, "reward_end": 0.52,
        "correct_start": 0.3, "correct_end": 0.5, "train_seconds": 900.0}))
    recipe = load_recipe(run_dir / "recipe.yaml", [
        "--rl.output", str(rl), "--rl.rewards", "{correct: 1.0, format: 0.1}", "--rl.num_generations", "8",
        "--push.dataset_repo", "null", "--push.traces_repo", "null", "--push.dry_run",
        "--push.dry_run_dir", str(tmp_path / "p")])
    result = hub.run(recipe.push, recipe)  # push.model unset: the rl output, the last training of the recipe
    assert [u["kind"] for u in result["uploads"]] == ["model"]
    text = (tmp_path / "p" / "model" / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["base_model"] == BASE and "grpo" in meta["tags"]
    assert "SFT on the teacher's traces, then reinforcement learning with GRPO (TRL)" in text
    assert "correct x 1.0, format x 0.1" in text and "completions per problem | 8" in text
    assert "The RL run started from an SFT run" in text and "0.3 -> 0.5" in text


def test_lora_adapter_is_pushed_alone_with_a_hub_base(run_dir, tmp_path, token_env, no_network):
    out = tmp_path / "lora"
    shutil.copytree(run_dir / "sft" / "model", out / "model")
    (out / "model" / "model.safetensors").unlink()
    (out / "model" / "config.json").unlink()
    (out / "model" / "adapter_model.safetensors").write_bytes(b"adapter")
    (out / "model" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "base"),
                                                                   "peft_type": "LORA", "r": 8}))
    (out / "model" / "README.md").write_text("peft's generic card")
    (out / "summary.json").write_text(json.dumps({"stage": "sft", "student": str(tmp_path / "base"),
                                                  "method": "lora-adapter", "steps": 2}))
    recipe = load_recipe(None, ["--push.model_repo", "me/tiny-lora", "--push.model", str(out / "model"),
                                "--push.base_model", BASE, "--push.dry_run", "--push.dry_run_dir", str(tmp_path / "p")])
    hub.run(recipe.push, recipe)
    staged = tmp_path / "p" / "model"
    assert json.loads((staged / "adapter_config.json").read_text())["base_model_name_or_path"] == BASE
    assert "base_model_name_or_path" in json.loads((out / "model" / "adapter_config.json").read_text())  # source untouched
    assert str(tmp_path) in (out / "model" / "adapter_config.json").read_text()
    card = ModelCard.load(staged / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == BASE and "lora" in card.data.tags
    assert "AutoPeftModelForCausalLM" in card.text and "peft's generic card" not in card.text


# ----------------------------------------------------------------------------------------------- errors

def _push(run_dir, *extra: str) -> list[str]:
    return ["push", str(run_dir / "recipe.yaml"), *extra]


def _one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert TOKEN not in out + err
    return lines[0]


def test_no_pickle_is_pushed_and_pickled_weights_are_refused(run_dir, tmp_path, token_env, no_network, capsys):
    out = tmp_path / "sft"
    shutil.copytree(run_dir / "sft", out)
    (out / "model" / "optimizer.pt").write_bytes(b"pickle")  # any pickle beside the weights stays home
    preview = tmp_path / "preview"
    assert cli_main(_push(run_dir, "--push.model", str(out), "--dry-run", "--push.dry_run_dir", str(preview))) == 0
    names = [p.name for p in (preview / "model").rglob("*")]
    assert "model.safetensors" in names and not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))]
    capsys.readouterr()
    (out / "model" / "model.safetensors").rename(out / "model" / "pytorch_model.bin")
    assert cli_main(_push(run_dir, "--push.model", str(out), "--dry-run", "--push.dry_run_dir", str(preview))) == 1
    line = _one_line_error(capsys)
    assert "holds its weights as a pickle (pytorch_model.bin)" in line and "safetensors" in line


def test_no_token_stops_before_any_request(run_dir, monkeypatch, capsys, online):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no `hf auth login` either
    with HubStandIn() as standin:
        rc = cli_main(_push(run_dir, "--push.endpoint", standin.url))
        assert standin.log == []
    assert rc == 1
    assert _one_line_error(capsys).startswith("distill push: error: no Hugging Face token: set HF_TOKEN or log in")


def test_token_from_another_env_var(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("MY_HUB_TOKEN", TOKEN)
    assert cli_main(_push(run_dir, "--dry-run", "--push.token_env", "MY_HUB_TOKEN",
                          "--push.dry_run_dir", str(tmp_path / "p"))) == 0
    out, err = capsys.readouterr()
    assert "found in $MY_HUB_TOKEN" in out and TOKEN not in out + err


@pytest.mark.parametrize("damage, message", [
    ("model.safetensors", "is incomplete: no weights"),
    ("tokenizer.json", "is incomplete: no tokenizer"),
    ("config.json", "is incomplete: no config.json"),
    ("summary.json", "is an unfinished sft run"),
])
def test_incomplete_model_is_one_line_before_any_request(run_dir, tmp_path, token_env, capsys, online, damage, message):
    out = tmp_path / "sft"
    shutil.copytree(run_dir / "sft", out)
    (out / damage if damage == "summary.json" else out / "model" / damage).unlink()
    with HubStandIn(token=TOKEN) as standin:
        rc = cli_main(_push(run_dir, "--push.model", str(out), "--push.endpoint", standin.url))
        assert standin.log == []
    assert rc == 1
    line = _one_line_error(capsys)
    assert line.startswith("distill push: error: push.model") and message in line


def test_missing_sharded_weights_and_bad_repo_id(run_dir, tmp_path, token_env, capsys):
    out = tmp_path / "sharded"
    shutil.copytree(run_dir / "sft", out)
    (out / "model" / "model.safetensors").rename(out / "model" / "model-00001-of-00002.safetensors")
    (out / "model" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    assert cli_main(_push(run_dir, "--push.model", str(out), "--dry-run")) == 1
    assert "1 weight shard(s) of model.safetensors.index.json are missing" in _one_line_error(capsys)
    assert cli_main(_push(run_dir, "--push.model_repo", "tiny-r1", "--dry-run")) == 1
    assert "give the full repo id, namespace/name" in _one_line_error(capsys)
    assert cli_main(["push", "--dry-run"]) == 1
    assert "nothing to push" in _one_line_error(capsys)


def test_repo_with_other_content_is_refused_before_anything_is_uploaded(run_dir, token_env, capsys, online):
    with HubStandIn(token=TOKEN) as standin:
        standin.add_repo("model", "me/tiny-r1", {".gitattributes": b"", "config.json": b"{}",
                                                 "README.md": b"---\nlicense: mit\n---\nsomeone else's model\n"})
        rc = cli_main(_push(run_dir, "--push.endpoint", standin.url))
        assert rc == 1
        line = _one_line_error(capsys)
        assert "model repo me/tiny-r1 already exists with other content" in line and "push.overwrite true" in line
        assert standin.commits == [] and set(standin.repos) == {("model", "me/tiny-r1")}  # the datasets were not created
        assert all(e["method"] == "GET" for e in standin.log)

        rc = cli_main(_push(run_dir, "--push.endpoint", standin.url, "--push.overwrite", "true"))
        assert rc == 0, capsys.readouterr().err
        files = standin.files("model", "me/tiny-r1")
        assert "config.json" in files and b"someone else's model" not in files["README.md"]


def test_a_refused_token_is_one_line_without_the_token(run_dir, token_env, capsys, online):
    with HubStandIn(token="hf_the_right_one") as standin:
        rc = cli_main(_push(run_dir, "--push.endpoint", standin.url))
    assert rc == 1
    line = _one_line_error(capsys)
    assert "HTTP 401 the Hub refused the token" in line


def test_unreachable_hub_is_one_line(run_dir, token_env, capsys, online):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = cli_main(_push(run_dir, "--push.endpoint", f"http://127.0.0.1:{port}"))
    assert rc == 1
    line = _one_line_error(capsys)
    assert f"endpoint http://127.0.0.1:{port}" in line and "reading dataset repo me/tiny-r1-traces: ConnectError" in line


# --------------------------------------------------------------------------- upload through the real client

def _files_holding(token: str, *roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*")
            if p.is_file() and not p.is_symlink() and token.encode() in p.read_bytes()]


def test_upload_through_the_real_client(run_dir, tmp_path, token_env, capsys, online, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # where a `login()` would save the token
    preview = tmp_path / "preview"
    assert cli_main(_push(run_dir, "--dry-run", "--push.dry_run_dir", str(preview))) == 0
    with HubStandIn(token=TOKEN) as standin:
        rc = cli_main(_push(run_dir, "--push.endpoint", standin.url))
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert TOKEN not in out + err

        # three private repos, each one commit holding exactly the dry run's files, byte for byte
        assert {k: r["private"] for k, r in standin.repos.items()} == {
            ("dataset", "me/tiny-r1-traces"): True, ("dataset", "me/tiny-r1-data"): True, ("model", "me/tiny-r1"): True}
        creates = [e["json"] for e in standin.log if e["path"] == "/api/repos/create"]
        assert all(c["visibility"] == "private" for c in creates) and len(creates) == 3
        for kind, repo, sub in (("model", "me/tiny-r1", "model"), ("dataset", "me/tiny-r1-data", "dataset"),
                                ("dataset", "me/tiny-r1-traces", "traces")):
            files = standin.files(kind, repo)
            expected = {p.relative_to(preview / sub).as_posix(): p.read_bytes() for p in (preview / sub).rglob("*") if p.is_file()}
            assert {k: v for k, v in files.items() if k != ".gitattributes"} == expected
        assert [(c["repo"], c["revision"]) for c in standin.commits] == [
            ("me/tiny-r1-traces", "main"), ("me/tiny-r1-data", "main"), ("me/tiny-r1", "main")]  # datasets first
        assert standin.commits[2]["header"]["summary"] == "distill push: sft student (full)"

        # the token travels in the Authorization header of every request, and nowhere else
        for e in standin.log:
            assert e["headers"].get("authorization") == f"Bearer {TOKEN}"
            rest = json.dumps({k: v for k, v in e["headers"].items() if k != "authorization"}) + json.dumps(e["query"])
            assert TOKEN not in rest and TOKEN.encode() not in e["body"]

        # a second push to a branch, with its own commit message: main is left alone
        main_before = dict(standin.files("model", "me/tiny-r1"))
        rc = cli_main(_push(run_dir, "--push.endpoint", standin.url, "--push.revision", "v2",
                            "--push.commit_message", "retrained", "--push.dataset_repo", "null",
                            "--push.traces_repo", "null"))
        assert rc == 0, capsys.readouterr().err
        assert standin.commits[-1]["revision"] == "v2" and standin.commits[-1]["header"]["summary"] == "retrained"
        assert any(e["path"] == "/api/models/me/tiny-r1/branch/v2" for e in standin.log)
        assert standin.files("model", "me/tiny-r1") == main_before and "v2" in standin.repos[("model", "me/tiny-r1")]["branches"]

        # our own repo is recognised by its card's tag; files an earlier push left that this one lacks are removed
        standin.files("model", "me/tiny-r1")["model-00002-of-00002.safetensors"] = b"stale shard"
        rc = cli_main(_push(run_dir, "--push.endpoint", standin.url, "--push.dataset_repo", "null",
                            "--push.traces_repo", "null"))
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert "removing 1 file(s)" in out and "model-00002-of-00002.safetensors" not in standin.files("model", "me/tiny-r1")
        assert {"key": "deletedFile", "value": {"path": "model-00002-of-00002.safetensors"}} in standin.commits[-1]["operations"]
    assert not list(run_dir.joinpath("sft").glob(".push-preview-staging"))  # the real run's staging is cleaned up
    assert _files_holding(TOKEN, run_dir, tmp_path) == []  # the token was never written to a file


def test_a_real_lora_training_output_dry_runs(tiny_model, tmp_path, token_env, no_network, capsys):
    """The layout `distill sft` really writes (adapter alone, peft's README, the trainer's pickle) stages cleanly."""
    from pipeline.train import sft

    data = tmp_path / "data"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                          {"role": "assistant", "content": f"<think>\n{i} + 1\n</think>\n\n\\boxed{{{i + 1}}}"}]}
            for i in range(4)]
    datasets.Dataset.from_list(rows).save_to_disk(str(data))
    recipe = load_recipe(None, [
        "--sft.student", tiny_model, "--sft.data", str(data), "--sft.output", str(tmp_path / "sft"),
        "--sft.max_steps", "2", "--sft.batch_size", "2", "--sft.grad_accum", "1", "--sft.max_length", "128",
        "--sft.lora.enabled", "true", "--sft.lora.merge", "false", "--sft.progress", "false",
        "--push.model_repo", "me/tiny-lora", "--push.dry_run"])
    sft.run(recipe.sft)
    capsys.readouterr()
    hub.run(recipe.push, recipe)
    out = capsys.readouterr().out
    staged = tmp_path / "sft" / "push-preview" / "model"
    names = {p.name for p in staged.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "generation_config.json", "README.md", "loss.png"} <= names
    assert "training_args.bin" not in names and "model.safetensors" not in names
    card = ModelCard.load(staged / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None  # the student was a local folder
    assert "r 16, alpha 32" in card.text and "LoRA adapter" in card.text
    assert "set push.base_model to its Hub id" in out
    assert str(tmp_path) not in (staged / "adapter_config.json").read_text() + (staged / "README.md").read_text()


def test_the_dataset_card_says_how_the_training_prompt_was_built():
    from pipeline.push.cards import _training_prompt

    assert _training_prompt({"user_turn": "problem"}) == "the bare problem"
    assert _training_prompt({"user_turn": "prompt", "prompt": None}) == "the prompt as sent to the teacher"
    built = _training_prompt({"user_turn": "problem", "prompt": {"template": "{problem}\n{instruction}",
                                                                  "instruction": "Go.", "system": None}})
    assert built == "built from the problem: `{problem}\\n{instruction}` with instruction `Go.`" and "\n" not in built
