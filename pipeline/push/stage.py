"""Stage `push`: the trained student and the datasets to the Hugging Face Hub, each with a card that tells how it
was made (teacher, data, filter, method, hyper-parameters, evaluation).

    distill push recipes/demo.yaml --push.model_repo me/qwen-0.5b-r1-gsm8k --push.dataset_repo me/r1-gsm8k-verified
    distill push recipes/demo.yaml --dry-run      # writes the exact folders and cards, prints the plan, no network

Order of work, so that nothing is uploaded unless everything can be:
  1. local checks: every input exists and is complete (weights, tokenizer, config; finished dataset outputs);
  2. the token (the env var named by `token_env`, else the Hugging Face login); it is never printed or written;
  3. staging: each repo's exact upload folder (model files hard-linked, datasets as Parquet, README.md cards);
     a dry run stops here and keeps the folders in `dry_run_dir`;
  4. remote checks for every repo: a repo that exists and holds content not written by this project (no
     `distill-pipeline` tag in its card) is refused unless `overwrite: true`;
  5. one commit per repo (datasets first, so the model card's links resolve): the staged files, and the removal
     of files the repo's revision holds that the upload does not (stale shards of an earlier push).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import PushConfig, Recipe
from ..core.errors import DistillError
from ..core.log import get_logger
from ..core.stages import summary_path
from .cards import PROJECT_TAG, Facts, dataset_card, display, is_hub_id, model_card, traces_card

logger = get_logger("push")

SKIP_MODEL_FILES = {"README.md", "training_args.bin"}  # our card replaces peft's; the trainer's pickled arguments stay home
# pickle formats: the Hub flags a pickle in a model repo as unsafe to load, so none is pushed (weights go as safetensors)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SHARD_BYTES = 500 * 2**20  # Parquet shards of about this many bytes of Arrow data


class PushError(DistillError, ValueError):
    """Something that stops a push before (or instead of) an upload; a one-line message with the fix."""


@dataclass
class Upload:
    kind: str  # model | traces | dataset
    repo_id: str
    repo_type: str  # model | dataset
    folder: Path
    commit_message: str
    notes: list[str] = field(default_factory=list)

    def files(self) -> list[tuple[str, int]]:
        return sorted((p.relative_to(self.folder).as_posix(), p.stat().st_size)
                      for p in self.folder.rglob("*") if p.is_file())


def run(cfg: PushConfig, recipe: Recipe | None = None) -> dict:
    """Push what `cfg` names; returns the plan (and the commits when not a dry run)."""
    recipe = recipe or Recipe()
    eval_defaulted = fill_defaults(cfg, recipe)
    targets = [(k, r) for k, r in (("traces", cfg.traces_repo), ("dataset", cfg.dataset_repo), ("model", cfg.model_repo)) if r]
    if not targets:
        raise PushError("nothing to push: set push.model_repo, push.dataset_repo and/or push.traces_repo "
                        "(Hub repo ids such as your-name/qwen-0.5b-r1-gsm8k)")
    for kind, repo in targets:
        check_repo_id(repo, f"push.{kind}_repo")

    facts = gather(cfg, recipe, eval_defaulted)  # 1. local checks
    token, token_source = resolve_token(cfg)  # 2. the token (a dry run only reports whether there is one)
    if token is None and not cfg.dry_run:
        raise PushError(f"no Hugging Face token: set {cfg.token_env} or log in with `hf auth login` "
                        f"(or use --dry-run to see what would be uploaded)")

    root = staging_root(cfg, facts)
    stage_dir = root if cfg.dry_run else root.parent / f".{root.name}-staging"
    shutil.rmtree(stage_dir, ignore_errors=True)
    try:
        uploads = stage_all(cfg, facts, stage_dir)  # 3. the exact folders
        print_plan(cfg, uploads, stage_dir, token_source if token else None)
        if cfg.dry_run:
            return {"dry_run": True, "folder": str(stage_dir), "uploads": [_describe(u) for u in uploads]}
        commits = upload_all(cfg, uploads, token)  # 4. remote checks, 5. commits
    finally:
        if not cfg.dry_run:
            shutil.rmtree(stage_dir, ignore_errors=True)
    return {"dry_run": False, "uploads": [{**_describe(u), **c} for u, c in zip(uploads, commits)]}


def fill_defaults(cfg: PushConfig, recipe: Recipe) -> bool:
    """Inputs not given come from the recipe's own stages; returns whether `evaluation` was defaulted."""
    if cfg.model is None and cfg.model_repo:
        train = recipe.rl or recipe.kd or recipe.sft
        if train is not None:
            cfg.model = train.output
    if cfg.traces is None and recipe.generate is not None:
        cfg.traces = recipe.generate.output
    if cfg.dataset is None and recipe.filter is not None:
        cfg.dataset = recipe.filter.output
    if cfg.evaluation is None and recipe.evaluate is not None:
        cfg.evaluation = recipe.evaluate.output
        return True
    return False


def check_repo_id(repo: str, key: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo.count("/") != 1:
        raise PushError(f"{key} {repo!r}: give the full repo id, namespace/name (your user or organisation name first)")
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise PushError(f"{key} {repo!r} is not a valid repo id ({str(e).splitlines()[0]})") from None


# --------------------------------------------------------------------------------------- 1. local checks

def gather(cfg: PushConfig, recipe: Recipe, eval_defaulted: bool) -> Facts:
    f = Facts(model_repo=cfg.model_repo, dataset_repo=cfg.dataset_repo, traces_repo=cfg.traces_repo)
    if cfg.model_repo:
        if not cfg.model:
            raise PushError("push.model is not set (a sft/kd/rl output folder or its model/ folder) and the recipe has "
                            "no sft:, kd: or rl: section to take it from")
        read_model(cfg.model, f, recipe)
    read_traces(cfg.traces, f, recipe, required=bool(cfg.traces_repo))
    read_dataset(cfg.dataset, f, required=bool(cfg.dataset_repo))
    read_evaluation(cfg, f, eval_defaulted)
    if cfg.base_model:
        f.base_model = cfg.base_model
    if f.teacher is None and recipe.generate is not None:
        f.teacher = recipe.generate.teacher.model
    return f


def read_model(path: str, f: Facts, recipe: Recipe) -> None:
    p = Path(path)
    if not p.is_dir():
        raise PushError(f"push.model {path} does not exist (a sft/kd/rl output folder or its model/ folder)")
    if (p / "model").is_dir() or (p / "run.json").exists():
        train_dir, model_dir = p, p / "model"
    elif summary_path("sft", p.parent).exists() and p.name == "model":
        train_dir, model_dir = p.parent, p
    else:
        train_dir, model_dir = None, p
    if train_dir is not None:
        if not model_dir.is_dir() or not summary_path("sft", train_dir).exists():
            stage = _read_json(train_dir / "run.json").get("stage", "training") if (train_dir / "run.json").exists() else "training"
            raise PushError(f"push.model {path} is an unfinished {stage} run (no summary.json or model/); "
                            f"finish it with distill {stage if stage in ('sft', 'kd', 'rl') else 'sft'} first")
        f.train_summary = _read_json(summary_path("sft", train_dir))
    f.model_dir, f.train_dir = model_dir, train_dir
    f.method = check_model_folder(model_dir, path)
    s = f.train_summary or {}
    if s.get("method"):
        f.method = s["method"] if s["method"] in ("full", "lora-merged", "lora-adapter") else f.method
    stage = s.get("stage")
    section = {"sft": recipe.sft, "kd": recipe.kd, "rl": recipe.rl}.get(stage) if stage else None
    if section is not None and train_dir is not None and _same(section.output, train_dir):
        f.train_cfg = section  # the recipe describes this very run: its hyper-parameters are the run's
    f.base_model = s.get("student")
    if stage == "kd":
        f.teacher = s.get("teacher") or (f.train_cfg.teacher if f.train_cfg is not None else None)
    if stage in ("kd", "rl"):
        sft_dir = Path(s.get("student") or "")
        sft_dir = sft_dir.parent if sft_dir.name == "model" else sft_dir
        if s.get("student") and summary_path("sft", sft_dir).exists():  # kd on top of an sft output: tell both steps
            f.sft_summary = _read_json(summary_path("sft", sft_dir))
            f.base_model = f.sft_summary.get("student")
            if recipe.sft is not None and _same(recipe.sft.output, sft_dir):
                f.sft_cfg = recipe.sft
    if f.base_model and not is_hub_id(f.base_model):
        adapter = _read_json(model_dir / "adapter_config.json") if (model_dir / "adapter_config.json").exists() else {}
        if is_hub_id(adapter.get("base_model_name_or_path")):
            f.base_model = adapter["base_model_name_or_path"]


def check_model_folder(model_dir: Path, given: str) -> str:
    """The folder holds a loadable model: weights (full, sharded or a LoRA adapter), config, tokenizer. Returns
    the method the files show (full or lora-adapter)."""
    names = {p.name for p in model_dir.iterdir() if p.is_file()}
    adapter = "adapter_config.json" in names
    pickled = sorted(n for n in names if n.endswith(".bin") and n.startswith(("pytorch_model", "adapter_model")))
    if pickled and not any(n.endswith(".safetensors") for n in names):
        raise PushError(f"push.model {given} holds its weights as a pickle ({pickled[0]}), which the Hub flags as "
                        f"unsafe to load and push leaves out; save them as safetensors (save_pretrained writes "
                        f"*.safetensors by default) and push again")
    if adapter:
        if not names & {"adapter_model.safetensors", "adapter_model.bin"}:
            raise PushError(f"push.model {given} is incomplete: adapter_config.json without adapter_model.safetensors")
    else:
        index = next((n for n in names if n.endswith((".safetensors.index.json", ".bin.index.json"))), None)
        if index:
            shards = set(_read_json(model_dir / index).get("weight_map", {}).values())
            missing = sorted(shards - names)
            if missing:
                raise PushError(f"push.model {given} is incomplete: {len(missing)} weight shard(s) of {index} are "
                                f"missing ({missing[0]} ...)")
        elif not any(n.endswith(".safetensors") or (n.startswith("pytorch_model") and n.endswith(".bin")) for n in names):
            raise PushError(f"push.model {given} is incomplete: no weights (*.safetensors, or adapter_config.json with "
                            f"adapter_model.safetensors)")
        if "config.json" not in names:
            raise PushError(f"push.model {given} is incomplete: no config.json")
    if "tokenizer_config.json" not in names or not names & {"tokenizer.json", "tokenizer.model", "vocab.json"}:
        raise PushError(f"push.model {given} is incomplete: no tokenizer (tokenizer_config.json with tokenizer.json, "
                        f"tokenizer.model or vocab.json)")
    return "lora-adapter" if adapter else "full"


def read_traces(path: str | None, f: Facts, recipe: Recipe, *, required: bool) -> None:
    if not path:
        if required:
            raise PushError("push.traces is not set (a distill generate output) and the recipe has no generate: section")
        return
    p = Path(path)
    folder = p / "dataset" if (p / "dataset").is_dir() else p
    if not (folder / "dataset_info.json").exists() and not (folder / "state.json").exists():
        if required:
            what = "an unfinished generate output (no dataset/ yet)" if (p / "run.json").exists() else \
                "not a generate output or a save_to_disk folder"
            raise PushError(f"push.traces {path} is {what}; finish distill generate first")
        return
    import datasets

    ds = datasets.load_from_disk(str(folder))
    f.traces_dir, f.traces_rows, f.traces_columns = folder, len(ds), list(ds.column_names)
    if summary_path("generate", p).exists():
        f.traces_summary = _read_json(summary_path("generate", p))
    if "sampling" in ds.column_names and len(ds):
        f.traces_sampling = ds[0]["sampling"]
    if recipe.generate is not None and _same(recipe.generate.output, p):
        f.generate_cfg = recipe.generate
    if f.teacher is None:
        f.teacher = (f.traces_summary or {}).get("teacher") or (ds[0]["teacher"] if "teacher" in ds.column_names and len(ds) else None)


def read_dataset(path: str | None, f: Facts, *, required: bool) -> None:
    if not path:
        if required:
            raise PushError("push.dataset is not set (a distill filter output) and the recipe has no filter: section")
        return
    p = Path(path)
    if not summary_path("filter", p).exists() or not (p / "dataset").is_dir():
        if required:
            raise PushError(f"push.dataset {path} is not a finished distill filter output (needs dataset/ and "
                            f"report.json); run distill filter first")
        return
    import datasets

    ds = datasets.load_from_disk(str(p / "dataset"))
    f.dataset_dir, f.dataset_rows, f.dataset_columns = p / "dataset", len(ds), list(ds.column_names)
    f.filter_report = _read_json(summary_path("filter", p))


def read_evaluation(cfg: PushConfig, f: Facts, defaulted: bool) -> None:
    if not cfg.evaluation:
        return
    p = Path(cfg.evaluation)
    path = p if p.suffix == ".json" else summary_path("evaluate", p)
    if not path.exists():
        if defaulted:
            logger.warning(f"push: no evaluation results at {path} (run distill evaluate first); the model card has no results")
            return
        raise PushError(f"push.evaluation {cfg.evaluation}: no results.json (an unfinished distill evaluate output?)")
    f.eval_results = _read_json(path)
    if f.model_dir is None:
        return
    names = [m["name"] for m in f.eval_results.get("models", [])]
    if cfg.eval_model:
        if cfg.eval_model not in names:
            raise PushError(f"push.eval_model {cfg.eval_model!r} is not in {path} (models: {', '.join(names)})")
        f.eval_model = cfg.eval_model
        return
    mine = {f.model_dir.resolve(), *([f.train_dir.resolve()] if f.train_dir else [])}
    for m in f.eval_results.get("models", []):
        if Path(m["model"].split("@")[0]).resolve() in mine:
            f.eval_model = m["name"]
            return
    logger.warning(f"push: {path} holds no results for {f.model_dir} (models: {', '.join(names)}); the card shows them without "
          f"model-index metadata (set push.eval_model to the pushed model's label if it was evaluated under another path)")


# ------------------------------------------------------------------------------------------- 2. the token

def resolve_token(cfg: PushConfig) -> tuple[str | None, str]:
    """The token and where it came from (for the plan; the value itself is never shown)."""
    value = os.environ.get(cfg.token_env) if cfg.token_env else None
    if value and value.strip():
        return value.strip(), f"${cfg.token_env}"
    from huggingface_hub import get_token

    try:
        value = get_token()
    except Exception:  # an OIDC exchange that fails, an unreadable token file: no token
        value = None
    return (value, "the Hugging Face login") if value else (None, "")


# ---------------------------------------------------------------------------------------------- 3. staging

def staging_root(cfg: PushConfig, f: Facts) -> Path:
    if cfg.dry_run_dir:
        return Path(cfg.dry_run_dir)
    home = f.train_dir or (f.model_dir.parent if f.model_dir else None) or \
        (f.dataset_dir.parent if f.dataset_dir else None) or (f.traces_dir.parent if f.traces_dir else Path("."))
    return home / "push-preview"


def stage_all(cfg: PushConfig, f: Facts, root: Path) -> list[Upload]:
    uploads = []
    if cfg.traces_repo:
        u = Upload("traces", cfg.traces_repo, "dataset", root / "traces",
                   cfg.commit_message or "distill push: teacher traces")
        write_parquet(f.traces_dir, u.folder)
        (u.folder / "README.md").write_text(traces_card(f, license=cfg.dataset_license))
        uploads.append(u)
    if cfg.dataset_repo:
        u = Upload("dataset", cfg.dataset_repo, "dataset", root / "dataset",
                   cfg.commit_message or "distill push: filtered training set")
        write_parquet(f.dataset_dir, u.folder)
        report_dir = f.dataset_dir.parent
        (u.folder / "report.json").write_text(json.dumps(public_report(f.filter_report), indent=2))
        if (report_dir / "report.png").exists():
            link_or_copy(report_dir / "report.png", u.folder / "report.png")
            f.images["report"] = "report.png"
        (u.folder / "README.md").write_text(dataset_card(f, license=cfg.dataset_license))
        f.images.pop("report", None)
        uploads.append(u)
    if cfg.model_repo:
        stage = (f.train_summary or {}).get("stage", "trained")
        u = Upload("model", cfg.model_repo, "model", root / "model",
                   cfg.commit_message or f"distill push: {stage} student ({f.method})")
        u.notes += stage_model(f, u.folder, cfg)
        (u.folder / "README.md").write_text(model_card(f, license=cfg.license))
        uploads.append(u)
    return uploads


def stage_model(f: Facts, dest: Path, cfg: PushConfig) -> list[str]:
    """The model files, hard-linked (copied across file systems), plus the loss curve and evaluation chart."""
    notes = []
    for p in sorted(f.model_dir.rglob("*")):
        rel = p.relative_to(f.model_dir)
        if p.is_dir() or any(part.startswith(".") for part in rel.parts) or rel.as_posix() in SKIP_MODEL_FILES:
            continue
        if p.suffix in PICKLE_SUFFIXES:
            notes.append(f"{rel} left out: a pickle, which the Hub flags as unsafe to load")
            continue
        link_or_copy(p, dest / rel)
    names = {p.name for p in dest.iterdir()}
    if "generation_config.json" not in names:
        notes.append("no generation_config.json: generation will not stop at the end of the assistant turn by itself")
    tok_cfg = _read_json(dest / "tokenizer_config.json")
    if not ({"chat_template.jinja", "chat_template.json"} & names) and not tok_cfg.get("chat_template"):
        notes.append("no chat template: users must format prompts themselves")
    if (dest / "adapter_config.json").exists():
        adapter = _read_json(dest / "adapter_config.json")
        base = adapter.get("base_model_name_or_path")
        if is_hub_id(f.base_model) and base != f.base_model:
            adapter["base_model_name_or_path"] = f.base_model  # a local path means nothing on another machine
            (dest / "adapter_config.json").unlink()
            (dest / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
        elif not is_hub_id(base):
            notes.append(f"the adapter's base model is a local folder ({display(base)}): set push.base_model to its "
                         f"Hub id so that others can load the adapter")
            adapter["base_model_name_or_path"] = display(base).removesuffix(" (local folder)")
            (dest / "adapter_config.json").unlink()
            (dest / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
    if f.train_dir is not None and (f.train_dir / "loss.png").exists() and "loss.png" not in names:
        link_or_copy(f.train_dir / "loss.png", dest / "loss.png")
        f.images["loss"] = "loss.png"
    if f.eval_results is not None and cfg.evaluation:
        png = Path(cfg.evaluation)
        png = (png.parent if png.suffix == ".json" else png) / "results.png"
        if png.exists() and "results.png" not in names:
            link_or_copy(png, dest / "results.png")
            f.images["results"] = "results.png"
    return notes


def write_parquet(src: Path, dest: Path) -> None:
    """The dataset as data/train-0000i-of-0000n.parquet, the layout the Hub's viewer and load_dataset read."""
    import datasets

    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    ds = datasets.load_from_disk(str(src))
    shards = max(1, -(-ds.data.nbytes // SHARD_BYTES))
    (dest / "data").mkdir(parents=True, exist_ok=True)
    quiet = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        for i in range(shards):
            part = ds.shard(shards, i, contiguous=True) if shards > 1 else ds
            part.to_parquet(str(dest / "data" / f"train-{i:05d}-of-{shards:05d}.parquet"))
    finally:
        if not quiet:
            enable_progress_bars()


def public_report(report: dict | None) -> dict:
    """The filter report without the machine's paths."""
    r = json.loads(json.dumps(report or {}))
    for d in (r, r.get("config") or {}):
        for k in ("input", "output"):
            if d.get(k) and not is_hub_id(d[k]):
                d[k] = display(d[k])
    return r


def link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def print_plan(cfg: PushConfig, uploads: list[Upload], root: Path, token_source: str | None) -> None:
    head = "push: dry run, nothing is uploaded; the exact upload folders are in" if cfg.dry_run else "push: staged in"
    print(f"{head} {root}")
    for u in uploads:
        files = u.files()
        where = f"revision {cfg.revision}" if cfg.revision else "main"
        print(f"  {u.kind:<7} -> {u.repo_id} ({u.repo_type} repo, {'private' if cfg.private else 'public'} if created, "
              f"{where}): {len(files)} files, {_size(sum(s for _, s in files))}; commit \"{u.commit_message}\"")
        for name, size in files:
            print(f"      {name:<48} {_size(size):>10}")
        for note in u.notes:
            print(f"    note: {note}")
    if cfg.dry_run:
        print(f"  token: {'found in ' + token_source if token_source else 'none found (a real push would stop here)'}; "
              f"whether the repos exist is not checked in a dry run")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _describe(u: Upload) -> dict:
    return {"kind": u.kind, "repo_id": u.repo_id, "repo_type": u.repo_type, "folder": str(u.folder),
            "files": dict(u.files()), "notes": u.notes}


# ------------------------------------------------------------------------------------ 4.-5. remote, commits

@dataclass
class Remote:
    exists: bool
    private: bool | None = None
    files: list[str] = field(default_factory=list)


def upload_all(cfg: PushConfig, uploads: list[Upload], token: str) -> list[dict]:
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it to push (or use --dry-run)")
    api = HfApi(endpoint=cfg.endpoint, token=token, library_name="distill-pipeline")
    remotes = [check_remote(api, u, cfg, token) for u in uploads]  # every repo checked before any upload
    return [commit(api, u, r, cfg, token) for u, r in zip(uploads, remotes)]


def check_remote(api, u: Upload, cfg: PushConfig, token: str) -> Remote:
    """Whether the repo exists, and refuse one that holds content this project did not write."""
    try:
        with _hub(f"reading {u.repo_type} repo {u.repo_id}", token, cfg, not_found=True):
            info = api.repo_info(u.repo_id, repo_type=u.repo_type)
    except _NotFound:
        return Remote(exists=False)
    files = [s.rfilename for s in (info.siblings or [])]
    card = info.card_data.to_dict() if getattr(info, "card_data", None) is not None else {}
    tags = set(info.tags or []) | set(card.get("tags") or [])
    foreign = [name for name in files if name != ".gitattributes"]
    if foreign and PROJECT_TAG not in tags and not cfg.overwrite:
        raise PushError(f"{u.repo_type} repo {u.repo_id} already exists with other content ({len(foreign)} file(s), "
                        f"e.g. {', '.join(foreign[:3])}; its card has no '{PROJECT_TAG}' tag): nothing was uploaded; "
                        f"push to another repo, or set push.overwrite true to replace its content")
    if cfg.private and info.private is False:
        logger.warning(f"push: note: {u.repo_id} exists and is public; push.private only applies to repos it creates")
    return Remote(exists=True, private=info.private, files=files)


def commit(api, u: Upload, remote: Remote, cfg: PushConfig, token: str) -> dict:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    kind = u.repo_type
    if not remote.exists:
        with _hub(f"creating {kind} repo {u.repo_id}", token, cfg):
            api.create_repo(u.repo_id, repo_type=kind, private=cfg.private, exist_ok=True)
        logger.info(f"push: created {'private' if cfg.private else 'public'} {kind} repo {u.repo_id}")
    revision = cfg.revision if cfg.revision and cfg.revision != "main" else None
    if revision:
        with _hub(f"creating branch {revision} of {u.repo_id}", token, cfg):
            api.create_branch(u.repo_id, repo_type=kind, branch=revision, exist_ok=True)
    with _hub(f"reading {u.repo_id}", token, cfg):
        head = api.repo_info(u.repo_id, repo_type=kind, revision=revision)
    staged = dict(u.files())
    stale = sorted(s.rfilename for s in (head.siblings or []) if s.rfilename not in staged and s.rfilename != ".gitattributes")
    if stale:
        logger.info(f"push: {u.repo_id}: removing {len(stale)} file(s) this upload does not hold: {', '.join(stale[:5])}"
              + (" ..." if len(stale) > 5 else ""))
    ops = [CommitOperationDelete(path_in_repo=name) for name in stale]
    ops += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(u.folder / name)) for name in staged]
    with _hub(f"uploading to {u.repo_id}", token, cfg):
        info = api.create_commit(u.repo_id, repo_type=kind, operations=ops, commit_message=u.commit_message,
                                 revision=revision, parent_commit=head.sha if head.sha else None)
    url = f"{api.endpoint}/{'datasets/' if kind == 'dataset' else ''}{u.repo_id}" + (f"/tree/{revision}" if revision else "")
    print(f"push: {u.kind} -> {url} ({len(staged)} files, commit {info.oid[:10] if info.oid else '?'})")
    return {"url": url, "commit": info.oid, "removed": stale}


class _NotFound(Exception):
    pass


class _hub:
    """Turns a huggingface_hub or network error into a one-line PushError that never holds the token."""

    def __init__(self, what: str, token: str, cfg: PushConfig, not_found: bool = False):
        self.what, self.token, self.cfg, self.not_found = what, token, cfg, not_found  # not_found: raise _NotFound

    def __enter__(self):
        return self

    def __exit__(self, tp, e, tb):
        if e is None or isinstance(e, (PushError, KeyboardInterrupt)):
            return False
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

        if isinstance(e, RepositoryNotFoundError) and self.not_found:
            raise _NotFound() from None
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            status = e.response.status_code
            detail = (e.server_message or "").strip().splitlines()[0] if e.server_message else ""
            hint = {401: "the Hub refused the token (invalid or expired)",
                    403: "the token may not write to this namespace (a write token is needed)"}.get(status, "")
            msg = f"{self.what}: HTTP {status}" + (f" {hint}" if hint else "") + (f" ({detail})" if detail else "")
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            where = self.cfg.endpoint or "the Hub"
            msg = f"{self.what}: {type(e).__name__}" + (f": {first}" if first else "") + f" (endpoint {where})"
        raise PushError(_scrub(msg[:400], self.token)) from None


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


# ------------------------------------------------------------------------------------------------ helpers

def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PushError(f"cannot read {path}: {type(e).__name__}") from None


def _same(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
