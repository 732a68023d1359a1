"""Bring your own inputs: what every stage says, in one line, when a source cannot be used.

A missing local path is told as missing (never sent to the Hub); a Hub id that cannot be had (offline, unreachable,
absent) fails in one line within seconds; a malformed line names file: line N; an empty file or folder names itself.
Each case goes through the stages' real loaders (generate, evaluate and rl read problems with load_problems; filter,
sft and kd read folders and Hub ids with core.io), and a few through the `distill` CLI. No test touches the network:
conftest sets HF_HUB_OFFLINE=1, and the "online" cases talk to a closed loopback port or a local Hub stand-in.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import constants

from pipeline.core import io
from pipeline.core.config import BenchmarkConfig, EvaluateConfig, ProblemsConfig
from pipeline.core.data import load_file, load_problems, looks_like_path
from pipeline.core.errors import DistillError
from pipeline.evaluate.stage import load_benchmarks
from pipeline.filter.stage import load_traces
from pipeline.train.common import load_training_set
from pipeline.train.rl import load_rl_problems

DISTILL = Path(sys.executable).with_name("distill")
ROW = {"problem": "What is 1+1?", "answer": "2"}
MSG = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}


def evaluate(source):
    return load_benchmarks(EvaluateConfig(models=["m"], benchmarks=[BenchmarkConfig(source=source)], output="o"))


# Every stage's loader of its input, as the stage calls it.
STAGES = {
    "generate": lambda s: load_problems(s),
    "evaluate": evaluate,
    "rl": lambda s: load_rl_problems(SimpleNamespace(problems=ProblemsConfig(source=s))),
    "filter": load_traces,
    "sft": lambda s: load_training_set(s, "sft"),
    "kd": lambda s: load_training_set(s, "kd"),
}
PROBLEM_STAGES = ("generate", "evaluate", "rl")


@pytest.fixture
def no_hub(monkeypatch):
    """Any Hub request fails the test."""
    def fail(*args, **kwargs):
        raise AssertionError(f"unexpected Hub lookup: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", fail)


def one_line_error(call, source) -> str:
    with pytest.raises(DistillError) as e:
        call(source)
    text = str(e.value)
    assert "\n" not in text
    return text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def online(monkeypatch):
    """The Hub clients out of offline mode, pointed at `endpoint` (set by the test)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    def point(endpoint: str):
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    return point


# ---------------------------------------------------------------------------------------- local-looking paths

@pytest.mark.parametrize("source", ["open-r1/OpenR1-Math-220k", "AI-MO/NuminaMath-CoT", "org/name.v2",
                                    "hf://datasets/data/set"])
def test_hub_ids_are_not_paths(source, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path(source)


@pytest.mark.parametrize("source", ["data/no_such_problems", "./x", "../x", "/abs/x", "~/x", "a/b/c", "x.jsonl",
                                    "org/x.parquet", "a\\b"])
def test_local_looking_paths(source, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()  # `data/...`: its first part is a local folder, as for huggingface's load_dataset
    monkeypatch.chdir(tmp_path)
    assert looks_like_path(source)


@pytest.mark.parametrize("stage", STAGES)
def test_missing_local_path_is_not_sent_to_the_hub(stage, tmp_path, monkeypatch, no_hub):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    text = one_line_error(STAGES[stage], "data/no_such_problems")
    assert time.monotonic() - start < 5
    assert "no such file or folder data/no_such_problems (data/ has nothing named no_such_problems; " \
           f"paths are relative to {tmp_path}; for the Hub dataset write hf://datasets/data/no_such_problems)" in text


def test_missing_path_suggests_a_close_name(tmp_path, monkeypatch, no_hub):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "problems.jsonl").write_text(json.dumps(ROW) + "\n")
    monkeypatch.chdir(tmp_path)
    assert one_line_error(load_problems, "data/problem.jsonl") == \
        "no such file or folder data/problem.jsonl (did you mean data/problems.jsonl?)"
    assert one_line_error(load_problems, "out/run1/traces") == \
        f"no such file or folder out/run1/traces (out does not exist either; paths are relative to {tmp_path})"


# ---------------------------------------------------------------------------------------------- Hub ids

@pytest.mark.parametrize("stage", STAGES)
def test_offline_hub_id_fails_fast_naming_the_setting(stage):
    assert io.hub_offline()  # conftest: HF_HUB_OFFLINE=1
    start = time.monotonic()
    text = one_line_error(STAGES[stage], "distill-tests/no-such-set")
    assert time.monotonic() - start < 5
    assert "Hub dataset distill-tests/no-such-set is not in the local cache, and HF_HUB_OFFLINE=1 keeps the Hub " \
           "from being asked: load it once where the Hub can be reached (unset HF_HUB_OFFLINE), or set a local " \
           "file or folder" in text


@pytest.mark.parametrize("stage", ["generate", "filter", "sft"])
def test_unreachable_hub_fails_fast_in_one_line(stage, online, monkeypatch):
    port = closed_port()
    online(f"http://127.0.0.1:{port}")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset would retry ~25 s"))
    start = time.monotonic()
    text = one_line_error(STAGES[stage], "AI-MO/NuminaMath-CoT")
    assert time.monotonic() - start < 5
    assert f"cannot reach the Hugging Face Hub (http://127.0.0.1:{port}) to load AI-MO/NuminaMath-CoT (ConnectError: " \
           in text
    assert text.endswith("prepare the data where the Hub can be reached and set a local file or folder, or set "
                         "HF_HUB_OFFLINE=1 to use a copy already in the local cache")


def test_hub_id_that_does_not_exist_and_one_that_does(online, monkeypatch):
    from hub_standin import HubStandIn

    monkeypatch.setattr(datasets, "load_dataset",
                        lambda repo, split: datasets.Dataset.from_list([ROW]) if repo == "me/set" else pytest.fail())
    with HubStandIn() as hub:
        hub.add_repo("dataset", "me/set", {})
        online(hub.url)
        text = one_line_error(load_problems, "me/absent")
        assert text.startswith(f"no dataset me/absent on the Hugging Face Hub ({hub.url}), or it is private or gated")
        assert load_problems("me/set")[0]["problem"] == ROW["problem"]
        assert load_problems("hf://datasets/me/set")[0]["answer"] == "2"  # explicit Hub, whatever folders exist


# ----------------------------------------------------------------------------------------- malformed lines

@pytest.mark.parametrize("stage", [*PROBLEM_STAGES, "filter"])
def test_malformed_jsonl_line_names_file_and_line(stage, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(ROW) + "\n\n" + json.dumps(ROW) + "\n" + '{"problem": "a",\n')
    assert f"{path}: line 4: not valid JSON (" in one_line_error(STAGES[stage], str(path))


@pytest.mark.parametrize("stage", [*PROBLEM_STAGES, "filter"])
def test_non_utf8_line_is_named(stage, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(json.dumps(ROW).encode() + b"\n" + b'{"problem": "caf\xe9", "answer": "1"}\n')
    assert f"{path}: line 2: not UTF-8 text (byte 0xe9); save the file as UTF-8" in \
        one_line_error(STAGES[stage], str(path))


def test_broken_json_list_names_its_own_line(tmp_path):
    path = tmp_path / "in.json"
    path.write_text("[\n" + json.dumps(ROW) + ",\n{oops}\n]\n")
    assert one_line_error(load_problems, str(path)).startswith(f"{path}: line 3 column 2: not valid JSON (")


def test_training_data_reader_names_file_and_line(tmp_path):
    """load_file: the reader sft/kd (or any stage) call for a .jsonl/.json/.parquet file."""
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(MSG) + "\n" + "[1, 2]\n")
    assert one_line_error(lambda p: load_file(p, label=f"sft.data {p}"), str(path)) == \
        f"sft.data {path}: line 2: expected a JSON object, got list"
    path.write_text(json.dumps(MSG) + "\n" + json.dumps(MSG)[:-3] + "\n")
    assert one_line_error(load_file, str(path)).startswith(f"{path}: line 2: not valid JSON (")
    path.write_text(json.dumps(MSG) + "\n" + json.dumps(MSG) + "\n")
    ds = load_file(path)
    assert len(ds) == 2 and ds[1]["messages"][-1] == {"role": "assistant", "content": "2"}
    pq.write_table(pa.table({"messages": [MSG["messages"]]}), tmp_path / "train.parquet")
    assert load_file(tmp_path / "train.parquet")[0] == MSG


def test_unreadable_parquet_is_one_line(tmp_path):
    path = tmp_path / "in.parquet"
    path.write_bytes(b"not parquet at all")
    assert one_line_error(load_problems, str(path)).startswith(f"{path}: not a readable Parquet file (")


# ------------------------------------------------------------------------------------------ empty inputs

def empty_files(tmp_path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    (tmp_path / "empty.json").write_text("[]")
    pq.write_table(pa.table({"problem": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    (tmp_path / "zero.parquet").write_bytes(b"")
    return {name: (tmp_path / name, why) for name, why in [
        ("empty.jsonl", "0 bytes"), ("blank.jsonl", "only blank lines"), ("empty.json", "an empty JSON list"),
        ("empty.parquet", "0 rows"), ("zero.parquet", "0 bytes")]}


@pytest.mark.parametrize("stage", [*PROBLEM_STAGES, "filter"])
def test_empty_files_are_named(stage, tmp_path):
    for path, why in empty_files(tmp_path).values():
        assert f"{path}: no rows (the file holds {why})" in one_line_error(STAGES[stage], str(path))


def test_empty_files_through_the_training_reader(tmp_path):
    for path, why in empty_files(tmp_path).values():
        assert one_line_error(lambda p: load_file(p, label=f"kd.data {p}"), str(path)) == \
            f"kd.data {path}: no rows (the file holds {why})"


@pytest.mark.parametrize("stage", STAGES)
def test_empty_folders_are_named(stage, tmp_path):
    (tmp_path / "nothing").mkdir()
    datasets.Dataset.from_list([ROW]).select([]).save_to_disk(str(tmp_path / "zero_rows"))
    text = one_line_error(STAGES[stage], str(tmp_path / "nothing"))
    assert f"{tmp_path / 'nothing'}: empty folder (expected " in text
    text = one_line_error(STAGES[stage], str(tmp_path / "zero_rows"))
    assert f"{tmp_path / 'zero_rows'}: no rows (the dataset in the folder is empty)" in text


def test_empty_split_of_a_saved_dataset_dict(tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([ROW]),
                          "test": datasets.Dataset.from_list([ROW]).select([])}).save_to_disk(str(folder))
    assert len(load_problems(str(folder), split="train")) == 1
    assert one_line_error(lambda s: load_problems(s, split="test"), str(folder)) == \
        f"{folder}: split 'test' holds no rows; choose another split (available: train, test)"


# ----------------------------------------------------------------------------------------------- the CLI

def distill(*args, cwd, env=None):
    return subprocess.run([str(DISTILL), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_cli_missing_path_and_bad_line_are_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "traces.jsonl").write_text(json.dumps(ROW) + "\n" + "{oops\n")
    r = distill("generate", "--generate.problems.source", "data/no_such_problems", "--generate.output", "out",
                "--generate.teacher.model", "tiny", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "distill generate: error: no such file or folder data/no_such_problems (data/ has nothing named "
        f"no_such_problems; paths are relative to {tmp_path}; for the Hub dataset write "
        "hf://datasets/data/no_such_problems)"]
    r = distill("filter", "--filter.input", "data/traces.jsonl", "--filter.output", "fout", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("distill filter: error: data/traces.jsonl: line 2: not valid JSON (")


def test_cli_offline_hub_id_is_one_line_within_seconds(tmp_path):
    start = time.monotonic()
    r = distill("sft", "--sft.data", "distill-tests/no-such-set", "--sft.output", "out", "--sft.student", "tiny",
                cwd=tmp_path)
    assert time.monotonic() - start < 60  # the process's imports; the Hub is never asked
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "distill sft: error: sft.data: Hub dataset distill-tests/no-such-set is not in the local cache, and "
        "HF_HUB_OFFLINE=1 keeps the Hub from being asked: load it once where the Hub can be reached (unset "
        "HF_HUB_OFFLINE), or set a local file or folder"]
