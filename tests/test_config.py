import dataclasses
import subprocess
import sys

import pytest

from pipeline.core.config import ConfigError, GenerateConfig, load_recipe, parse_overrides

BASE = ["--generate.problems.source", "gsm8k", "--generate.teacher.model", "m", "--generate.output", "out"]


def test_recipe_yaml_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("generate:\n  problems: {source: gsm8k, limit: 5}\n  teacher: {model: m, backend: openai}\n"
                      "  output: out\n  sampling: {n: 2, temperature: 0.7}\n")
    r = load_recipe(recipe, ["--generate.sampling.n", "8", "--generate.sampling.top_p=0.9",
                             "--generate.teacher.base_urls", "http://a/v1", "--generate.overwrite"])
    g = r.generate
    assert isinstance(g, GenerateConfig)
    assert (g.sampling.n, g.sampling.temperature, g.sampling.top_p) == (8, 0.7, 0.9)
    assert g.teacher.base_urls == ["http://a/v1"] and g.overwrite is True
    assert g.problems.limit == 5 and g.teacher.backend == "openai"
    assert g.prompt.instruction.endswith("\\boxed{}.")  # R1 default


@pytest.mark.parametrize("args, message", [
    (["--generate.sampling.tempreature", "1"], "unknown key 'generate.sampling.tempreature' (did you mean 'temperature'?)"),
    (["--generate.sampling.n", "many"], "generate.sampling.n: expected an integer, got 'many'"),
    (["--generate.teacher.backend", "tgi"], "generate.teacher.backend: 'tgi' is not one of vllm, openai, transformers"),
    (["--generate.overwrite", "maybe"], "generate.overwrite: expected true or false"),
    (["--generat.output", "x"], "unknown key 'generat' (did you mean 'generate'?)"),
])
def test_bad_keys_and_types_name_the_key(args, message):
    with pytest.raises(ConfigError) as e:
        load_recipe(None, BASE + args)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_lists_valid_choices():
    with pytest.raises(ConfigError, match="valid keys: n, temperature, top_p, max_tokens, seed, logprobs"):
        load_recipe(None, BASE + ["--generate.sampling.bogus", "1"])


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing required key 'generate.teacher.model'"):
        load_recipe(None, ["--generate.problems.source", "gsm8k", "--generate.output", "o"])


def test_override_values_are_typed_by_their_key():
    g = load_recipe(None, BASE + [
        "--generate.prompt.system", "Note: rule #1 {x}",  # YAML would read a mapping / drop the comment
        "--generate.teacher.revision", "0123456",  # YAML would read an octal number
        "--generate.teacher.server_args=[--max-num-seqs, 8]", "--generate.sampling.temperature", "1",
        "--generate.problems.limit", "null", "--generate.overwrite"]).generate
    assert g.prompt.system == "Note: rule #1 {x}" and g.teacher.revision == "0123456"
    assert g.teacher.server_args == ["--max-num-seqs", "8"] and g.sampling.temperature == 1.0
    assert g.problems.limit is None and g.overwrite is True
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["positional"])


@pytest.mark.parametrize("key, value", [("sampling.n", "0"), ("teacher.max_retries", "-1"), ("shard_size", "0")])
def test_out_of_range_numbers_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"generate.{key}: must be at least"):
        load_recipe(None, BASE + [f"--generate.{key}", value])


def test_cli_config_error_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate", *BASE, "--generate.sampling.nn", "2"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "unknown key 'generate.sampling.nn' (did you mean 'n'?)" in p.stderr


def test_every_shipped_recipe_loads():
    from pathlib import Path

    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        recipe = load_recipe(path)
        sections = [f.name for f in dataclasses.fields(recipe) if getattr(recipe, f.name) is not None]
        assert sections, f"{path} has no stage section"


# ------------------------------------------------------------------ keys: one source for help, README, hashes

def test_every_key_says_what_it_means():
    from pipeline.core.config import STAGE_SECTIONS, describe_keys

    for stage, cls in STAGE_SECTIONS.items():
        missing = [key for key, _, _, meaning in describe_keys(cls) if not meaning]
        assert missing == [], f"{stage}: keys without help: {missing}"


@pytest.mark.parametrize("stage", ["generate", "filter", "sft", "kd", "evaluate", "push"])
def test_help_lists_every_key_with_type_default_and_meaning(stage, capsys):
    from pipeline.cli import main as cli_main
    from pipeline.core.config import STAGE_SECTIONS, describe_keys

    with pytest.raises(SystemExit) as e:
        cli_main([stage, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key, tp, default, meaning in describe_keys(STAGE_SECTIONS[stage]):
        line = f"  --{stage}.{key} {tp}"
        assert line in out, line
        assert meaning in out.split(line, 1)[1].split("\n  --", 1)[0], key  # its meaning follows it
    if stage == "kd":
        assert "  --kd.alpha float (default: 0.5)\n      weight of the KD term" in out


def test_readme_key_tables_are_the_generated_ones():
    from pathlib import Path

    from pipeline.core.config import STAGE_SECTIONS, readme_with_key_tables

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert readme.count("<!-- keys: ") == len(STAGE_SECTIONS)  # one table per stage section
    assert readme_with_key_tables(readme) == readme, \
        "README key tables differ from pipeline/core/config.py: run `.venv/bin/python -m pipeline.core.config README.md`"


def test_operational_keys_do_not_decide_what_a_stage_makes():
    from pipeline.run import effective

    base = ["--sft.student", "s", "--sft.output", "o"]
    same = [["--sft.logging_steps", "3"], ["--sft.progress", "false"], ["--sft.resume", "false"],
            ["--sft.overwrite", "true"], ["--sft.report_to", "[tensorboard]"]]
    ref = effective(load_recipe(None, base).sft)
    for extra in same:
        assert effective(load_recipe(None, base + extra).sft) == ref, extra
    assert effective(load_recipe(None, base + ["--sft.learning_rate", "3e-4"]).sft) != ref
    gen = BASE + ["--generate.teacher.concurrency", "4", "--generate.teacher.base_urls", "http://a/v1"]
    assert effective(load_recipe(None, gen).generate) == effective(load_recipe(None, BASE).generate)


def test_distill_config_prints_what_will_run(tmp_path, capsys):
    import yaml

    from pipeline.cli import main as cli_main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("generate:\n  problems: {source: gsm8k}\n  teacher: {model: m}\n  output: runs/x/traces\n"
                      "filter:\n  output: runs/x/train\nsft:\n  student: s\n  output: runs/x/sft\n")
    assert cli_main(["config", str(recipe), "--sft.learning_rate", "3e-4"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert list(shown) == ["generate", "filter", "sft"]
    assert shown["sft"]["learning_rate"] == 3e-4 and shown["sft"]["grad_accum"] == 8  # overrides and defaults
    assert shown["filter"]["input"] == "runs/x/traces" and shown["sft"]["data"] == "runs/x/train"  # upstream
    assert shown["generate"]["sampling"]["n"] == 4


def test_a_bug_shows_its_traceback_and_a_user_error_is_one_line(tmp_path, monkeypatch, capsys):
    from pipeline.filter import stage as filter_stage
    from pipeline.cli import main as cli_main

    args = ["filter", "--filter.input", str(tmp_path / "nothing"), "--filter.output", str(tmp_path / "o")]
    assert cli_main(args) == 1  # bad input: one line, exit 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill filter: error: ") and "\n" not in err

    def bug(cfg):
        raise RuntimeError("verification lost 1 items (first: [3]); this is a bug")

    monkeypatch.setattr(filter_stage, "run", bug)
    with pytest.raises(RuntimeError, match="this is a bug"):  # not turned into a one-line "error"
        cli_main(args)


def test_a_recipe_extends_another(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "generate:\n  problems: {source: gsm8k, limit: 8}\n  teacher: {model: t}\n  output: g\n"
        "sft: {student: s, output: o, epochs: 2, learning_rate: 1.0e-4}\n"
        "evaluate: {models: [a, b], benchmarks: [gsm8k], output: e}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: ../base.yaml\nsft: {epochs: 3}\nevaluate: {models: [c]}\ngenerate: null\n")
    r = load_recipe(tmp_path / "sub" / "child.yaml", ["--sft.seed", "5"])
    assert (r.sft.epochs, r.sft.learning_rate, r.sft.student, r.sft.seed) == (3.0, 1e-4, "s", 5)  # merged key by key
    assert [m.model for m in r.evaluate.models] == ["c"] and r.evaluate.output == "e"  # lists replaced
    assert r.generate is None  # a section set to null is removed
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_recipe(tmp_path / "loop.yaml")
    (tmp_path / "missing.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist \\(extended by"):
        load_recipe(tmp_path / "missing.yaml")
