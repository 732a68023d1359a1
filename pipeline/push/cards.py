"""The Hub cards of `distill push`: a model card and two dataset cards, written from what the run knows.

Everything here is text from facts gathered by `hub.py` (the recipe, the stages' summary.json / report.json /
results.json): no file access, no network. Local paths never reach a card (they would leak a machine's layout and
mean nothing to a reader): a local model or dataset is named by its folder, a Hub id is linked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_TAG = "distill-pipeline"  # marks a repo as written by this project (see hub.check_remote)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# bundled benchmark name -> (Hub dataset id, display name, config, split) for model-index; only ids we are sure of
KNOWN_BENCHMARKS = {
    "gsm8k": ("openai/gsm8k", "GSM8K", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", "MATH-500", None, "test"),
}


@dataclass
class Facts:
    """What the run knows about what is pushed (filled by hub.gather; every part may be missing)."""
    # the student
    model_dir: Path | None = None
    train_dir: Path | None = None  # the training output holding model/ (None for a bare model folder)
    train_summary: dict | None = None  # its summary.json
    train_cfg: Any = None  # the recipe's sft/kd section when it describes this training output
    sft_summary: dict | None = None  # kd on top of an sft output: that sft run's summary
    sft_cfg: Any = None
    method: str | None = None  # full | lora-merged | lora-adapter
    base_model: str | None = None  # the student before any training (Hub id or local path)
    teacher: str | None = None
    # the data
    traces_dir: Path | None = None
    traces_summary: dict | None = None  # generate's summary.json
    traces_rows: int | None = None
    traces_columns: list[str] = field(default_factory=list)
    traces_sampling: dict | None = None  # the `sampling` column of the first row
    generate_cfg: Any = None  # the recipe's generate section when it made these traces
    dataset_dir: Path | None = None
    filter_report: dict | None = None
    dataset_rows: int | None = None
    dataset_columns: list[str] = field(default_factory=list)
    # the evaluation
    eval_results: dict | None = None
    eval_model: str | None = None  # the pushed student's label in eval_results
    # where things go
    model_repo: str | None = None
    dataset_repo: str | None = None
    traces_repo: str | None = None
    images: dict[str, str] = field(default_factory=dict)  # role (loss, results, report) -> file name in the repo


# ---------------------------------------------------------------------------------------------- names

def is_hub_id(name: str | None) -> bool:
    return bool(name) and bool(_HUB_ID.match(name.split("@")[0])) and not Path(name.split("@")[0]).exists()


def display(name: str | None) -> str:
    """A model or dataset for a card: a Hub id as it is, a local path by its folder name."""
    if not name:
        return "unknown"
    if is_hub_id(name):
        return name
    path = Path(name.split("@")[0])
    label = path.parent.name if path.name == "model" and path.parent.name else path.name
    return f"{label or name} (local folder)"


def _label(name: str) -> str:
    """A model's label in the evaluation: kept, unless it is a local path (the default label is the model string)."""
    return display(name) if Path(name.split("@")[0]).exists() else name


def hub_link(name: str | None, kind: str = "model") -> str:
    if is_hub_id(name):
        base = "https://huggingface.co/" + ("datasets/" if kind == "dataset" else "")
        repo = name.split("@")[0]
        return f"[`{name}`]({base}{repo})"
    return f"`{display(name)}`"


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.1f}%"


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n").replace("|", "\\|")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "-"
    return str(v)


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> list[str]:
    out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows if v is not None]
    return out


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return label
    return "100M<n<1B"


# ---------------------------------------------------------------------------------------- method text

def method_text(f: Facts) -> str:
    """One line: how the student was trained (SFT / KD with its settings, full or LoRA)."""
    s = f.train_summary or {}
    stage = s.get("stage")
    lora = {"full": "full fine-tuning", "lora-merged": "LoRA, merged into the weights",
            "lora-adapter": "LoRA adapter"}.get(f.method or "", f.method or "")
    if stage == "kd":
        kd = (f"logit distillation ({s.get('mode', '?')} teacher"
              + {"offline": ": its stored top-k logprobs", "online": ": live", "on_policy": " scoring the student's own samples"}
              .get(s.get("mode"), "") + f"; {s.get('divergence', 'forward_kl')}, temperature {s.get('temperature')}, "
              f"alpha {s.get('alpha')})")
        before = "SFT on the teacher's traces, then " if f.sft_summary else ""
        return f"{before}{kd}, {lora}"
    if stage == "sft":
        return f"supervised fine-tuning on the teacher's verified traces (loss on the answer), {lora}"
    if stage == "rl":
        rewards = ", ".join(f"{k} x {v}" for k, v in (s.get("rewards") or {}).items())
        before = "SFT on the teacher's traces, then " if f.sft_summary else ""
        return (f"{before}reinforcement learning with GRPO (TRL) on problems with gold answers, rewarded by "
                f"{rewards or 'the verifier'}, {lora}")
    return lora or "unknown"


def hyper_parameters(cfg: Any, summary: dict | None) -> list[tuple[str, Any]]:
    """Key training settings from the recipe section (TrainConfig / KDConfig) and what the run recorded."""
    s = summary or {}
    if cfg is None:
        return [("steps", s.get("steps")), ("epochs", s.get("epochs")), ("precision", s.get("precision"))]
    ranks = s.get("ranks") or 1
    rows = [("epochs" if cfg.max_steps <= 0 else "max steps", cfg.epochs if cfg.max_steps <= 0 else cfg.max_steps),
            ("learning rate", cfg.learning_rate), ("scheduler", cfg.lr_scheduler),
            ("warmup", cfg.warmup if cfg.warmup >= 1 else f"{cfg.warmup:g} of the steps"),
            ("weight decay", cfg.weight_decay), ("max grad norm", cfg.max_grad_norm),
            ("batch", f"{cfg.batch_size} per device x {cfg.grad_accum} accumulation x {ranks} rank(s) = "
                      f"{cfg.batch_size * cfg.grad_accum * ranks} rows per step"),
            ("precision", s.get("precision", cfg.precision)), ("seed", cfg.seed)]
    if hasattr(cfg, "max_length"):  # sft, kd: a training set of examples
        rows[-2:-2] = [("max length", f"{cfg.max_length} tokens ({'longer examples dropped' if cfg.long_examples == 'drop' else 'longer examples cut'})"),
                       ("packing", "padding-free best-fit packing" if s.get("packing", cfg.packing) else "off")]
    if hasattr(cfg, "num_generations"):  # rl
        rows += [("rewards", ", ".join(f"{k} x {v}" for k, v in cfg.rewards.items())),
                 ("completions per problem", cfg.num_generations),
                 ("max completion length", cfg.max_completion_length), ("sampling temperature", cfg.temperature),
                 ("GRPO loss", cfg.loss_type), ("KL coefficient (beta)", cfg.beta),
                 ("clip range", f"{cfg.epsilon}" + (f" / {cfg.epsilon_high}" if cfg.epsilon_high else ""))]
    if cfg.lora.enabled:
        rows.append(("LoRA", f"r {cfg.lora.r}, alpha {cfg.lora.alpha}, dropout {cfg.lora.dropout}, "
                             f"targets {', '.join(cfg.lora.target_modules)}, {'merged' if cfg.lora.merge else 'adapter only'}"))
    if s.get("stage") == "kd" or (hasattr(cfg, "alpha") and hasattr(cfg, "divergence")):
        rows += [("KD mode", getattr(cfg, "mode", None)), ("divergence", getattr(cfg, "divergence", None)),
                 ("KD temperature", getattr(cfg, "temperature", None)), ("alpha (KD weight)", getattr(cfg, "alpha", None))]
        if getattr(cfg, "divergence", None) == "jsd":
            rows.append(("JSD beta", cfg.beta))
        if getattr(cfg, "mode", None) == "offline":
            rows.append(("top-k tail", cfg.tail))
        if getattr(cfg, "mode", None) == "on_policy":
            rows += [("on-policy share (lambda)", cfg.lmbda), ("sampled tokens", cfg.max_new_tokens)]
    return rows


# ------------------------------------------------------------------------------------------ evaluation

def eval_table(results: dict, student: str | None, student_label: str) -> list[str]:
    """The evaluate stage's table (rows benchmark x metric, a column per model), models named for a reader."""
    from ..evaluate.report import table

    header, rows = table(results)
    names = [student_label if m["name"] == student else _label(m["name"]) for m in results["models"]]
    header = [header[0], header[1], *names]
    s = results.get("sampling", {})
    decoding = "greedy" if s.get("greedy") else f"temperature {s.get('temperature')}, top_p {s.get('top_p')}"
    lines = [f"{s.get('n')} sample(s) per problem, {decoding}, at most {s.get('max_tokens')} new tokens; "
             "percentages. pass@1 is the mean over samples and problems with a bootstrap 95% interval; pass@k is the "
             "unbiased estimator; maj@k votes over answers grouped by verified equivalence.", "",
             "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "| benchmark | source | contamination check against the training problems |", "|---|---|---|"]
    for b in results["benchmarks"]:
        src = b["source"] if b["source"] in KNOWN_BENCHMARKS or is_hub_id(b["source"]) else display(b["source"])
        lines.append(f"| {b['name']} | `{src}`{' (' + b['split'] + ')' if b.get('split') else ''} | "
                     f"{b.get('contamination', 'not checked')} |")
    return lines


def eval_results(results: dict, student: str) -> list:
    """model-index entries (huggingface_hub EvalResult) for the pushed student: pass@1, and pass@k / maj@k at the
    largest k, in percent."""
    from huggingface_hub import EvalResult

    s = results.get("sampling", {})
    protocol = "greedy" if s.get("greedy") else f"n={s.get('n')}, T={s.get('temperature')}, top_p={s.get('top_p')}"
    out = []
    for b in results["benchmarks"]:
        m = results["results"].get(student, {}).get(b["name"])
        if not m or m.get("pass@1") is None:
            continue
        if b["source"] in KNOWN_BENCHMARKS:
            dtype, dname, dconfig, dsplit = KNOWN_BENCHMARKS[b["source"]]
        elif is_hub_id(b["source"]):
            dtype, dname, dconfig, dsplit = b["source"], b["name"], None, b.get("split")
        else:
            dtype, dname, dconfig, dsplit = b["name"], b["name"], None, b.get("split")
        metrics = [("pass@1", m["pass@1"])]
        ks = sorted(int(k) for k in m.get("pass@k", {}) if int(k) > 1)
        if ks:
            metrics += [(f"pass@{ks[-1]}", m["pass@k"][str(ks[-1])]), (f"maj@{ks[-1]}", m.get("maj@k", {}).get(str(ks[-1])))]
        for name, value in metrics:
            if value is None:
                continue
            out.append(EvalResult(task_type="text-generation", task_name="math reasoning", dataset_type=dtype,
                                  dataset_name=dname, dataset_config=dconfig, dataset_split=dsplit,
                                  metric_type=name, metric_value=round(100 * value, 2),
                                  metric_name=f"{name} (%, {protocol})"))
    return out


# ------------------------------------------------------------------------------------------ model card

def model_card(f: Facts, *, license: str | None = None) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    repo = f.model_repo
    adapter = f.method == "lora-adapter"
    student = f.eval_model
    evals = eval_results(f.eval_results, student) if f.eval_results and student else []
    train_data = f.dataset_repo or ((f.train_summary or {}).get("data") if is_hub_id((f.train_summary or {}).get("data")) else None)
    stage = (f.train_summary or {}).get("stage")
    tags = [PROJECT_TAG, "distillation", "reasoning", "math",
            {"sft": "sft", "rl": "grpo"}.get(stage, "knowledge-distillation")]
    if adapter or f.method == "lora-merged":
        tags.append("lora")
    data = ModelCardData(
        base_model=f.base_model if is_hub_id(f.base_model) else None, datasets=[train_data] if train_data else None,
        library_name="peft" if adapter else "transformers", pipeline_tag="text-generation", license=license,
        tags=tags, model_name=repo if evals else None, eval_results=evals or None)

    s = f.train_summary or {}
    rows = [("teacher", hub_link(f.teacher)), ("student base model", hub_link(f.base_model)),
            ("training data", _data_line(f, train_data)),
            ("teacher traces", _traces_line(f)), ("method", method_text(f))]
    run = []
    if s:
        run = [("optimizer steps", s.get("steps")), ("epochs", s.get("epochs")),
               ("examples trained", f"{s.get('examples_trained')} of {s.get('examples_in')}" if s.get("examples_in") else None),
               ("tokens per epoch", s.get("tokens_per_epoch")),
               ("loss (first -> last logged)", f"{_fmt(s.get('first_loss'))} -> {_fmt(s.get('final_loss'))}"),
               ("train time", f"{s.get('train_seconds')} s on {s.get('ranks', 1)} rank(s)" if s.get("train_seconds") is not None else None)]
        if stage == "kd":
            run += [("KD term (first -> last)", f"{_fmt(s.get('first_kd'))} -> {_fmt(s.get('final_kd'))}"),
                    ("CE term (first -> last)", f"{_fmt(s.get('first_ce'))} -> {_fmt(s.get('final_ce'))}")]
        if stage == "rl":
            run = [r for r in run if r[0] not in ("examples trained", "tokens per epoch", "loss (first -> last logged)")]
            run += [("problems trained", s.get("problems_trained")),
                    ("reward (first -> last quarter of the steps)",
                     f"{_fmt(s.get('reward_start'))} -> {_fmt(s.get('reward_end'))}"),
                    ("share correct (first -> last quarter)",
                     f"{_fmt(s.get('correct_start'))} -> {_fmt(s.get('correct_end'))}")]
    sft = f.sft_summary
    name = repo.split("/")[-1]
    if f.eval_results and student:
        eval_intro, table = "", eval_table(f.eval_results, student, f"**{name}** (this model)")
    elif f.eval_results:
        eval_intro = ("The evaluation results hold no entry for this model; the table below compares the models that "
                      "were evaluated.\n\n")
        table = eval_table(f.eval_results, None, "")
    else:
        eval_intro, table = "", []
    return _render(ModelCard, data, "model_card.md", name=name, teacher=hub_link(f.teacher), base=hub_link(f.base_model),
                   method=method_text(f), steps=f"sft -> {stage}" if sft else stage or "train", adapter=adapter,
                   made_table=_lines(_table(rows, ("", ""))),
                   hyper_table=_lines(_table(hyper_parameters(f.train_cfg, s), ("setting", "value"))),
                   sft_note=(f"The {stage.upper()} run started from an SFT run of {hub_link(sft.get('student'))} ({sft.get('method')}, "
                             f"{sft.get('steps')} steps, loss {_fmt(sft.get('first_loss'))} -> "
                             f"{_fmt(sft.get('final_loss'))}).") if sft else None,
                   sft_table=_lines(_table(hyper_parameters(f.sft_cfg, sft), ("setting", "value")))
                   if sft and f.sft_cfg is not None else None,
                   run_table=_lines(_table(run, ("run", ""))) if run else None, loss_image=f.images.get("loss"),
                   eval_intro=eval_intro, eval_table=_lines(table),
                   results_image=f.images.get("results") if f.eval_results and student else None,
                   usage=_lines(_usage(f, repo, adapter)))


TEMPLATES = Path(__file__).resolve().parent / "templates"


def _render(card_class, data, template: str, **context) -> str:
    """A card from its Jinja template (huggingface_hub's from_template: the metadata block, then the text)."""
    return str(card_class.from_template(data, template_path=str(TEMPLATES / template), **context))


def _lines(lines: list[str]) -> str:
    return "\n".join(lines)


def _data_line(f: Facts, train_data: str | None) -> str:
    r = f.filter_report or {}
    link = hub_link(train_data, "dataset") if train_data else (f"`{display(str(f.dataset_dir))}`" if f.dataset_dir else "-")
    if r:
        return (f"{link}: {r.get('rows_kept')} verified traces of {r.get('problems_kept')} problems, kept from "
                f"{r.get('rows_in')} teacher samples")
    s = f.train_summary or {}
    return f"{link}: {s['examples_trained']} examples" if s.get("examples_trained") else link


def _traces_line(f: Facts) -> str | None:
    if not (f.traces_repo or f.traces_summary):
        return None
    link = hub_link(f.traces_repo, "dataset") if f.traces_repo else "not published"
    t = f.traces_summary or {}
    extra = f": {t['rows']} samples ({t.get('problems')} problems x {t.get('n')})" if t.get("rows") else ""
    return link + extra


def _usage(f: Facts, repo: str, adapter: bool) -> list[str]:
    instruction = ((f.eval_results or {}).get("prompt") or {}).get("instruction") or \
        "Please reason step by step, and put your final answer within \\boxed{}."
    s = (f.eval_results or {}).get("sampling") or {}
    temp, top_p = s.get("temperature", 0.6), s.get("top_p", 0.95)
    if adapter:
        load = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")  # loads the base model, then the adapter',
                f'tok = AutoTokenizer.from_pretrained("{repo}")']
    else:
        load = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'model = AutoModelForCausalLM.from_pretrained("{repo}", dtype="auto", device_map="auto")',
                f'tok = AutoTokenizer.from_pretrained("{repo}")']
    user = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did she sell altogether?"
    lines = ["```python", *load,
             f'messages = [{{"role": "user", "content": "{user}\\n{instruction.replace(chr(92), chr(92) * 2)}"}}]',
             "inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, "
             "return_tensors=\"pt\").to(model.device)",
             f"out = model.generate(**inputs, max_new_tokens=4096, do_sample=True, temperature={temp}, top_p={top_p})",
             "print(tok.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))", "```", "",
             "The chat template and the generation config (which stops at the end of the assistant turn) are the ones "
             "the model was trained with. The model thinks inside `<think> ... </think>`, then answers; the evaluation "
             f"asked with the problem followed by \"{instruction}\"."]
    if not adapter:
        lines += ["", "Serving with vLLM:", "", "```bash", f"vllm serve {repo}", "```"]
    return lines


# ---------------------------------------------------------------------------------------- dataset cards

def _dataset_data(rows: int, license: str | None, tags: list[str], pretty: str):
    from huggingface_hub import DatasetCardData

    return DatasetCardData(pretty_name=pretty, license=license, tags=[PROJECT_TAG, *tags],
                           task_categories=["text-generation"], size_categories=[size_category(rows)],
                           configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}])


def traces_card(f: Facts, *, license: str | None = None) -> str:
    """The raw teacher traces: teacher, problems, prompt, sampling, what came back."""
    from huggingface_hub import DatasetCard

    repo = f.traces_repo
    t = f.traces_summary or {}
    g = f.generate_cfg
    sampling = dict(f.traces_sampling or {})
    if g is not None:
        sampling = {"n": g.sampling.n, **sampling} if "n" not in sampling else sampling
    elif t.get("n"):
        sampling = {"n": t["n"], **sampling}
    rows = [("teacher", hub_link(f.teacher))]
    if g is not None:
        p = g.problems
        src = p.source if (p.source in _bundled() or is_hub_id(p.source)) else display(p.source)
        rows += [("problems", f"`{src}`" + (f" ({p.split})" if p.split else "")
                  + (f", {'a seeded random ' if p.shuffle_seed is not None else 'the first '}{p.limit}" if p.limit else "")),
                 ("system prompt", f"`{_one_line(g.prompt.system)}`" if g.prompt.system else "none"),
                 ("user turn", f"`{_one_line(g.prompt.template)}` with instruction \"{_one_line(g.prompt.instruction)}\""),
                 ("backend", g.teacher.backend), ("dtype", g.teacher.dtype)]
    rows += [("sampling", ", ".join(f"{k} {v}" for k, v in sampling.items()) if sampling else None)]
    came_back = _table([("rows", f"{t.get('rows')} ({t.get('problems')} problems x {t.get('n')} samples)"),
                        ("failed requests (kept with their error)", t.get("errors")),
                        ("truncated (finish_reason = length)", t.get("truncated")),
                        ("prompt / completion tokens", f"{t.get('prompt_tokens')} / {t.get('completion_tokens')}")],
                       ("", "")) if t else []
    name = repo.split("/")[-1]
    data = _dataset_data(f.traces_rows or 0, license, ["reasoning", "math", "synthetic", "chain-of-thought"],
                         f"{name} (teacher traces)")
    return _render(DatasetCard, data, "traces_card.md", name=name, repo=repo, teacher=hub_link(f.teacher),
                   dataset_link=hub_link(f.dataset_repo, "dataset") if f.dataset_repo else None,
                   model_link=hub_link(f.model_repo) if f.model_repo else None, made_table=_lines(_table(rows)),
                   came_back_table=_lines(came_back), columns=_lines(_columns(f.traces_columns, TRACE_COLUMNS)))


def _training_prompt(filter_cfg: dict) -> str:
    prompt = filter_cfg.get("prompt")
    if prompt:  # filter.prompt: built from the problem, not the teacher's prompt
        template = str(prompt.get("template")).replace("\n", "\\n")  # one table line
        system = f" and system prompt `{prompt['system']}`" if prompt.get("system") else ""
        return f"built from the problem: `{template}` with instruction `{prompt.get('instruction')}`{system}"
    return "the prompt as sent to the teacher" if filter_cfg.get("user_turn") == "prompt" else "the bare problem"


def dataset_card(f: Facts, *, license: str | None = None) -> str:
    """The filtered training set: what was kept and why the rest was dropped, decontamination included."""
    from huggingface_hub import DatasetCard

    repo = f.dataset_repo
    r = f.filter_report or {}
    cfg = r.get("config") or {}
    summary = _table([("rows in / kept", f"{r.get('rows_in')} / {r.get('rows_kept')}"),
                      ("problems in / kept", f"{r.get('problems_in')} / {r.get('problems_kept')}"),
                      ("teacher pass@1 over the input", _pct(r.get("teacher_pass_at_1"))),
                      ("share of correct samples", _pct(r.get("teacher_sample_accuracy"))),
                      ("training prompt", _training_prompt(cfg))])
    s = f.traces_sampling or {}
    settings = [(k, cfg.get(k)) for k in ("require_correct", "require_complete", "require_reasoning", "check_format",
                                          "min_tokens", "max_tokens", "max_repeat_ratio", "dedup", "near_dup_threshold",
                                          "pass_rate_min", "pass_rate_max", "max_per_problem", "selection")
                if k in cfg]
    v = r.get("verify_reasons") or {}
    k = r.get("kept_tokens") or {}
    d = r.get("decontamination") or {}
    hits = d.get("hits") or []
    name = repo.split("/")[-1]
    data = _dataset_data(f.dataset_rows or 0, license, ["reasoning", "math", "synthetic", "chain-of-thought", "sft"],
                         f"{name} (verified reasoning traces)")
    return _render(
        DatasetCard, data, "dataset_card.md", name=name, repo=repo, teacher=hub_link(f.teacher),
        traces_link=hub_link(f.traces_repo, "dataset") if f.traces_repo else None,
        model_link=hub_link(f.model_repo) if f.model_repo else None, summary_table=_lines(summary),
        sampling=", ".join(f"{key} {val}" for key, val in s.items()) if (f.generate_cfg is not None or s) else None,
        checks=[(reason, (r.get("rejected") or {}).get(reason, 0), n) for reason, n in (r.get("failing_checks") or {}).items()],
        settings="; ".join(f"`{key}` {_fmt(val)}" for key, val in settings) if settings else None,
        verification=", ".join(f"{key} {n}" for key, n in sorted(v.items(), key=lambda kv: -kv[1])) if v else None,
        lengths=f"mean {k['mean']}, median {k['median']}, min {k['min']}, max {k['max']}" if k.get("count") else None,
        report_image=f.images.get("report"), decontam_benchmarks=", ".join(d.get("benchmarks") or []),
        decontam_ngram=d.get("ngram"), decontam_flagged=d.get("problems_flagged", 0), hits=hits[:50],
        more_hits=len(hits) - 50 if len(hits) > 50 else None,
        columns=_lines(_columns(f.dataset_columns, DATASET_COLUMNS)))


def _bundled() -> set[str]:
    from ..core.data import BENCHMARKS

    return set(BENCHMARKS)


TRACE_COLUMNS = {
    "id": "problem id", "sample": "sample number (0..n-1); (id, sample) is the key", "problem": "the problem text",
    "answer": "the gold answer", "source": "where the problem comes from", "teacher": "the teacher model (and revision)",
    "messages": "the prompt as sent", "completion": "the teacher's raw text", "reasoning": "the text inside `<think>`",
    "final": "the text after the reasoning", "finish_reason": "stop or length (truncated)",
    "prompt_tokens": "prompt length in teacher tokens", "completion_tokens": "completion length in teacher tokens",
    "completion_token_ids": "the teacher's own token ids of the completion",
    "topk_ids": "per completion token, the teacher's k most likely token ids (best first)",
    "topk_logprobs": "their log-probabilities", "sampling": "the sampling parameters",
    "error": "why the request failed (null when it did not)", "retries": "retries the request took",
}
DATASET_COLUMNS = {
    "messages": "chat turns: user (the problem) and assistant (`<think>` reasoning `</think>`, then the final answer)",
    "id": "problem id", "sample": "which teacher sample this was", "predicted": "the verified final answer",
    "problem": "the problem text", "answer": "the gold answer", "completion_tokens": "length in teacher tokens",
    "completion_token_ids": "the teacher's own token ids (for offline logit distillation)",
    "topk_ids": "per completion token, the teacher's k most likely token ids", "topk_logprobs": "their log-probabilities",
}


def _columns(columns: list[str], known: dict[str, str]) -> list[str]:
    return [f"- `{c}`: {known.get(c, '')}".rstrip(": ") for c in columns]
