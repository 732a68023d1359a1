"""What a GPU run needs that a CPU run never exercised, checked on CPU: sharded weights (FSDP2 DTensors, ZeRO-3
placeholders) in the rank checksum, the process group's timeout, the verifier pool per rank, the launched server's
wait, the rl sampler's eager mode, and the config-time preflight (context lengths, packages a recipe needs)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_script(code: str, env: dict | None = None) -> str:
    """Run `code` in a fresh interpreter (a process group of its own lives and dies there); its stdout."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


# ------------------------------------------------------------------------------------------ 1. checksums

def test_param_checksum_of_dtensor_parameters_equals_the_plain_model():
    """FSDP2 holds parameters as DTensors, whose .numpy() raises; the checksum reads them whole (full_tensor)."""
    out = _run_script("""
        import os, torch, torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor, Shard, distribute_tensor
        from pipeline.train.common import param_checksum

        dist.init_process_group("gloo", rank=0, world_size=1)
        torch.manual_seed(0)
        plain = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2))
        plain[1].bias.requires_grad_(False)
        want = param_checksum(plain)
        mesh = init_device_mesh("cpu", (1,))
        for mod in plain:
            for name, p in list(mod.named_parameters()):
                setattr(mod, name, torch.nn.Parameter(distribute_tensor(p.data, mesh, [Shard(0)]),
                                                      requires_grad=p.requires_grad))
        assert all(isinstance(p, DTensor) for p in plain.parameters())
        got = param_checksum(plain)
        dist.destroy_process_group()
        print(want, got)
    """, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    want, got = out.split()
    assert want == got


def test_param_checksum_gathers_zero3_placeholders(monkeypatch):
    """Under ZeRO-3 a parameter's own data is an empty placeholder; the checksum gathers it (GatheredParameters)."""
    import torch

    from pipeline.train.common import param_checksum

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 5)
    want = param_checksum(model)
    full = {n: p.data.clone() for n, p in model.named_parameters()}
    gathered = []
    for n, p in model.named_parameters():
        p.ds_id = len(gathered)
        p.full = full[n]
        p.data = torch.empty(0)
        gathered.append(n)

    @contextlib.contextmanager
    def gathered_parameters(params, modifier_rank=None):
        saved = [p.data for p in params]
        for p in params:
            p.data = p.full
        yield
        for p, d in zip(params, saved):
            p.data = d

    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=gathered_parameters)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    assert param_checksum(model) == want
    assert all(p.numel() == 0 for p in model.parameters())  # released again after the block


# -------------------------------------------------------------------------------------- 5. ddp_timeout

def test_training_process_group_gets_the_recipes_ddp_timeout(tmp_path):
    """The stage's state is made first, with ddp_timeout; TrainingArguments made after it keeps that process group."""
    out = _run_script(f"""
        import torch, torch.distributed as dist
        from pathlib import Path
        from pipeline.core.config import load_recipe
        from pipeline.train import common

        cfg = load_recipe(None, ["--sft.output", "{tmp_path}/out", "--sft.student", "x",
                                 "--sft.ddp_timeout", "1234"]).sft
        state = common.distributed_state(cfg)
        args = common.trainer_args(cfg, Path(cfg.output))
        group = dist.distributed_c10d._get_default_group()
        print(args.ddp_timeout, int(group._get_backend(torch.device("cpu")).options._timeout.total_seconds()))
    """, {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
          "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    assert out.split() == ["1234", "1234"]


def test_training_stages_make_their_state_with_the_timeout():
    """sft, kd and rl all start with common.distributed_state (the bare PartialState() dropped the timeout)."""
    for name in ("sft", "kd", "rl"):
        text = (ROOT / "pipeline" / "train" / f"{name}.py").read_text()
        run_body = text.split("\ndef run(", 1)[1].split("\ndef ", 1)[0]
        assert "common.distributed_state(cfg)" in run_body, name
        assert "PartialState()" not in run_body, name


# --------------------------------------------------------------------------------------- 6. verifier pool

def test_default_verifier_workers_are_shared_among_local_ranks(monkeypatch):
    from pipeline.verify import pool

    monkeypatch.setattr(pool, "_cpu_count", lambda: 96)
    monkeypatch.setattr(pool.os, "cpu_count", lambda: 96)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert pool.default_workers() == 96
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert pool.default_workers() == 12
    assert pool.VerifyPool(warm=False).size == 12  # what the default pool starts (not started here)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "128")
    assert pool.default_workers() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setattr(pool, "_cpu_count", lambda: 12)  # the launcher pinned this rank to 12 cores already
    assert pool.default_workers() == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "junk")
    assert pool.default_workers() == 12


# ------------------------------------------------------------------------------ 4. server wait, rl sampler

def test_launched_server_waits_long_enough_for_a_first_download():
    import dataclasses

    from pipeline.core.config import TeacherConfig

    f = next(f for f in dataclasses.fields(TeacherConfig) if f.name == "server_timeout")
    assert f.default >= 1800 and "download" in f.metadata["help"] and f.metadata["operational"]


@pytest.mark.parametrize("cuda", [False, True])
def test_rl_pass_rate_sampler_is_eager_on_cpu_only(monkeypatch, cuda, tmp_path):
    import datasets
    import torch

    from pipeline.backends import base
    from pipeline.core.config import load_recipe
    from pipeline.train import rl

    seen = {}

    class FakeTeacher:
        def generate(self, requests, sink):
            pass

        def close(self):
            pass

    def make_teacher(model, sampling):
        seen["model"] = model
        return FakeTeacher()

    monkeypatch.setattr(base, "make_teacher", make_teacher)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))  # as if installed; not imported for real
    cfg = load_recipe(None, ["--rl.output", str(tmp_path), "--rl.student", "x", "--rl.selection_samples", "1"]).rl
    problems = datasets.Dataset.from_list([{"id": "p0", "problem": "1+1?", "answer": "2"}])
    rl.sample_student(cfg, problems)
    assert seen["model"].backend == "vllm"
    assert seen["model"].enforce_eager is (not cuda)


# -------------------------------------------------------------------------------------------- 3. preflight

QWEN_MATH_15B = {"architectures": ["Qwen2ForCausalLM"], "max_position_embeddings": 4096, "rope_theta": 10000.0}


def _fake_model(folder: Path, config: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _recipe(tmp_path, *overrides):
    from pipeline.core.config import load_recipe

    return load_recipe(None, list(overrides))


def test_preflight_refuses_max_length_over_a_local_models_context(tmp_path):
    from pipeline.core import preflight

    model = _fake_model(tmp_path / "m", QWEN_MATH_15B)
    ok = _recipe(tmp_path, "--sft.output", str(tmp_path / "o"), "--sft.student", model, "--sft.max_length", "4096")
    preflight.check(ok, ["sft"])
    bad = _recipe(tmp_path, "--sft.output", str(tmp_path / "o"), "--sft.student", model, "--sft.max_length", "16384")
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(bad, ["sft"])
    msg = str(e.value)
    assert "\n" not in msg and "sft.max_length 16384" in msg and "4096" in msg and "RoPE" in msg
    preflight.check(bad, ["generate"])  # only the stages about to run are checked
    # the default max_length (4096) is a bound, not a length asked for: a 2048-token model trains with it
    small = _fake_model(tmp_path / "small", {**QWEN_MATH_15B, "max_position_embeddings": 2048})
    preflight.check(_recipe(tmp_path, "--sft.output", str(tmp_path / "o"), "--sft.student", small), ["sft"])
    with pytest.raises(preflight.PreflightError):
        preflight.check(_recipe(tmp_path, "--sft.output", str(tmp_path / "o"), "--sft.student", small,
                                "--sft.max_length", "3000"), ["sft"])


def test_preflight_reads_rope_scaling_and_skips_models_it_cannot_read(tmp_path):
    from pipeline.core import preflight

    yarn = _fake_model(tmp_path / "yarn", {"max_position_embeddings": 4096,
                                           "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                            "original_max_position_embeddings": 4096}})
    assert preflight.model_context(yarn)[0] == 16384
    preflight.check(_recipe(tmp_path, "--sft.output", "o", "--sft.student", yarn, "--sft.max_length", "16384"), ["sft"])
    for unreadable in ("org/not-in-the-cache", str(tmp_path / "not-trained-yet"), "demo:smollm2-135m-instruct",
                       _fake_model(tmp_path / "noctx", {"architectures": ["X"]})):
        assert preflight.model_context(unreadable) is None
        preflight.check(_recipe(tmp_path, "--sft.output", "o", "--sft.student", unreadable,
                                "--sft.max_length", "100000"), ["sft"])


def test_preflight_reads_the_hub_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from pipeline.core import preflight

    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-Math-1.5B"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    _fake_model(repo / "snapshots" / "abc123", QWEN_MATH_15B)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert preflight.model_context("Qwen/Qwen2.5-Math-1.5B") == (4096, "max_position_embeddings 4096")


def test_preflight_checks_evaluate_and_generate_engine_lengths(tmp_path, monkeypatch):
    from pipeline.core import preflight

    model = _fake_model(tmp_path / "m", QWEN_MATH_15B)
    r = _recipe(tmp_path, "--evaluate.output", "e", "--evaluate.benchmarks", "[gsm8k]",
                "--evaluate.models", f"[{{name: s, model: {model}, max_model_len: 32768}}]")
    with pytest.raises(preflight.PreflightError, match=r"evaluate.models\[0\].max_model_len \(s\) 32768 .* 4096"):
        preflight.check(r, ["evaluate"])
    monkeypatch.setenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")  # vLLM's own escape hatch is honoured
    preflight.check(r, ["evaluate"])
    monkeypatch.delenv("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
    g = _recipe(tmp_path, "--generate.output", "g", "--generate.problems.source", "gsm8k",
                "--generate.teacher.model", model, "--generate.teacher.max_model_len", "8192")
    with pytest.raises(preflight.PreflightError, match="generate.teacher.max_model_len 8192"):
        preflight.check(g, ["generate"])


def test_gpu_recipes_fit_their_models_contexts(monkeypatch):
    """The shipped GPU recipes against the real models' config.json values (as read offline from the Hub cache)."""
    from pipeline.core import preflight
    from pipeline.core.config import load_recipe

    contexts = {"Qwen/Qwen2.5-Math-1.5B": QWEN_MATH_15B,
                "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": {"max_position_embeddings": 131072},
                "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": {"max_position_embeddings": 131072},
                "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": {"max_position_embeddings": 131072}}
    monkeypatch.setattr(preflight, "_local_config", lambda model, revision=None: contexts.get(model))
    monkeypatch.setattr(preflight, "_installed", lambda module: True)
    for name in ("sft-distill-qwen2.5-1.5b.yaml", "r1-gsm8k-qwen7b.yaml", "rl-r1-distill-qwen-1.5b.yaml"):
        recipe = load_recipe(ROOT / "recipes" / name)
        stages = [s for s in ("generate", "filter", "sft", "kd", "rl", "evaluate") if getattr(recipe, s) is not None]
        preflight.check(recipe, stages)
        if recipe.filter is not None and recipe.sft is not None:  # the kept traces fit what sft trains on
            assert recipe.filter.max_tokens < recipe.sft.max_length
        if recipe.evaluate is not None:
            for m in recipe.evaluate.models:
                assert recipe.evaluate.sampling.max_tokens < m.max_model_len


@pytest.mark.parametrize("setting, module, words", [
    (["--sft.report_to", "[tensorboard]"], "tensorboard", "pip install tensorboard"),
    (["--sft.attn_implementation", "flash_attention_2"], "flash", "pip install kernels"),
    ([], "deepspeed", "pip install deepspeed"),
])
def test_preflight_names_the_package_a_setting_needs(tmp_path, monkeypatch, capsys, setting, module, words):
    from pipeline import cli
    from pipeline.core import preflight

    missing = {"flash": ("flash_attn", "kernels")}.get(module, (module,))
    monkeypatch.setattr(preflight, "_installed", lambda m: m not in missing)
    if module == "deepspeed":
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    args = ["sft", "--sft.output", str(tmp_path / "o"), "--sft.student", "x", "--sft.data", str(tmp_path / "d"),
            *setting]
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill sft: error:") and words in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # refused before the stage started
    monkeypatch.setattr(preflight, "_installed", lambda m: True)
    preflight.check(cli.load_recipe(None, args[1:]), ["sft"])
