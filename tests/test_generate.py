"""The generate stage: backends, schema, reuse/resume, faults. Uses a tiny local model; no downloads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import pytest

from pipeline.generate import stage as generate
from pipeline.core.config import load_recipe
from pipeline.backends.base import split_reasoning
from pipeline.backends.server import free_port
from pipeline.generate.store import OutputConfigMismatch

from fault_proxy import FaultProxy
from openai_stub import OpenAIStub

EXPECTED_COLUMNS = {"id", "sample", "problem", "answer", "source", "teacher", "messages", "completion", "reasoning",
                    "final", "finish_reason", "prompt_tokens", "completion_tokens", "completion_token_ids",
                    "sampling", "error", "retries"}


@pytest.fixture()
def problems_file(tmp_path) -> str:
    rows = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def overrides(model: str, problems: str, output: Path, **kv) -> list[str]:
    base = {"problems.source": problems, "teacher.model": model, "teacher.dtype": "float32", "output": str(output),
            "sampling.n": 2, "sampling.max_tokens": 12, "teacher.backend": "transformers", "progress": False}
    base.update(kv)
    out = []
    for k, v in base.items():
        out += [f"--generate.{k}", json.dumps(v) if not isinstance(v, str) else v]
    return out


def config(*args, **kv):
    return load_recipe(None, overrides(*args, **kv)).generate


def load(output: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(output / "dataset"))


def assert_complete(ds: datasets.Dataset, problems: int, n: int) -> None:
    keys = list(zip(ds["id"], ds["sample"]))
    assert len(keys) == len(set(keys)) == problems * n
    assert set(ds["sample"]) == set(range(n))


# ----------------------------------------------------------------------------------------- unit

@pytest.mark.parametrize("text, field, reasoning, final", [
    ("<think>\nadd them\n</think>\n\nSo \\boxed{4}", None, "add them", "So \\boxed{4}"),
    ("<think>still thinking", None, "still thinking", ""),  # truncated inside the reasoning
    ("add them</think>\\boxed{4}", None, "add them", "\\boxed{4}"),  # template put <think> in the prompt
    ("The answer is \\boxed{4}", None, "", "The answer is \\boxed{4}"),  # non-reasoning teacher
    ("\\boxed{4}", "server-side reasoning", "server-side reasoning", "\\boxed{4}"),
])
def test_split_reasoning(text, field, reasoning, final):
    completion, r, f = split_reasoning(text, field)
    assert (r, f) == (reasoning, final)
    # the raw text keeps everything the teacher wrote: inline text unchanged, a separate field rebuilt around it
    assert completion == (f"<think>\n{field}\n</think>\n\n{text}" if field else text)


def test_prompt_uses_instruction_and_system(tiny_model, problems_file, tmp_path):
    cfg = config(tiny_model, problems_file, tmp_path / "o", **{"prompt.system": "Be brief."})
    msgs = generate.build_messages("What is 1 + 1?", cfg)
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[1]["content"] == "What is 1 + 1?\nPlease reason step by step, and put your final answer within \\boxed{}."


# ------------------------------------------------------------------------------ transformers backend

def test_transformers_backend_schema_and_topk(tiny_model, problems_file, tmp_path):
    out = tmp_path / "out"
    summary = generate.run(config(tiny_model, problems_file, out, **{"sampling.logprobs": 3}))
    ds = load(out)
    assert set(ds.column_names) == EXPECTED_COLUMNS | {"topk_ids", "topk_logprobs"}
    assert_complete(ds, 4, 2)
    assert summary["rows"] == 8 and summary["errors"] == 0
    assert summary["completion_tokens"] == sum(ds["completion_tokens"]) > 0
    for row in ds:
        assert row["messages"][-1]["role"] == "user" and row["problem"] in row["messages"][-1]["content"]
        assert len(row["completion_token_ids"]) == row["completion_tokens"] == len(row["topk_ids"])
        assert all(len(ids) == 3 for ids in row["topk_ids"])
        assert all(a >= b for lps in row["topk_logprobs"] for a, b in zip(lps, lps[1:]))  # best first
        assert row["finish_reason"] in ("stop", "length") and row["prompt_tokens"] > 0


def test_no_logprobs_means_no_topk_columns(tiny_model, problems_file, tmp_path):
    generate.run(config(tiny_model, problems_file, tmp_path / "out"))
    assert set(load(tmp_path / "out").column_names) == EXPECTED_COLUMNS


def test_finished_output_is_reused_and_config_change_is_refused(tiny_model, problems_file, tmp_path, capsys):
    out = tmp_path / "out"
    generate.run(config(tiny_model, problems_file, out))
    shards = sorted(p.name for p in (out / "shards").iterdir())
    again = generate.run(config(tiny_model, problems_file, out))
    assert "reusing it" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards and again["rows"] == 8

    with pytest.raises(OutputConfigMismatch, match=r"changed: sampling.temperature 0.6 -> 0.9.*overwrite"):
        generate.run(config(tiny_model, problems_file, out, **{"sampling.temperature": 0.9}))
    assert load(out).num_rows == 8  # the refused run touched nothing

    summary = generate.run(config(tiny_model, problems_file, out, **{"sampling.temperature": 0.9, "overwrite": True}))
    assert summary["generated_this_run"] == 8 and summary["reused_rows"] == 0


def test_more_samples_only_asks_for_the_new_ones(tiny_model, problems_file, tmp_path):
    out = tmp_path / "out"
    generate.run(config(tiny_model, problems_file, out))
    first = load(out).to_pandas().set_index(["id", "sample"])["completion"]
    summary = generate.run(config(tiny_model, problems_file, out, **{"sampling.n": 3}))
    assert summary["generated_this_run"] == 4 and summary["reused_rows"] == 8
    ds = load(out)
    assert_complete(ds, 4, 3)
    again = ds.to_pandas().set_index(["id", "sample"])["completion"]
    assert all(again[k] == v for k, v in first.items())  # old rows kept as they were


def test_changed_problem_text_is_refused_and_changed_gold_is_refreshed(tiny_model, problems_file, tmp_path):
    out = tmp_path / "out"
    generate.run(config(tiny_model, problems_file, out))
    rows = [json.loads(line) for line in Path(problems_file).read_text().splitlines()]
    edited = Path(problems_file)  # the same file, edited in place
    edited.write_text("".join(json.dumps({**r, "answer": "fixed-" + r["answer"]}) + "\n" for r in rows))
    summary = generate.run(config(tiny_model, problems_file, out))
    assert summary["generated_this_run"] == 0 and set(load(out)["answer"]) == {"fixed-" + r["answer"] for r in rows}
    edited.write_text("".join(json.dumps({**r, "problem": r["problem"] + " Explain."}) + "\n" for r in rows))
    with pytest.raises(OutputConfigMismatch, match="text of 4 problems"):
        generate.run(config(tiny_model, problems_file, out))


def test_extending_a_finished_output_unmarks_it_until_done(tiny_model, problems_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    generate.run(config(tiny_model, problems_file, out))
    from pipeline.backends.transformers_backend import TransformersTeacher

    def crash(self, requests, on_result):
        raise KeyboardInterrupt

    monkeypatch.setattr(TransformersTeacher, "generate", crash)
    with pytest.raises(KeyboardInterrupt):
        generate.run(config(tiny_model, problems_file, out, **{"sampling.n": 3}))
    assert not (out / "summary.json").exists() and not (out / "dataset").exists()


# --------------------------------------------------------------------------- openai backend, real vLLM

@pytest.mark.slow
def test_openai_backend_real_vllm_server_with_topk(vllm_server, tiny_model, problems_file, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    cfg = config(tiny_model, problems_file, out, **{"teacher.backend": "openai", "teacher.base_urls": [vllm_server],
                                                    "sampling.logprobs": 4, "teacher.concurrency": 4})
    summary = generate.run(cfg)
    ds = load(out)
    assert_complete(ds, 4, 2)
    assert summary["errors"] == 0 and summary["backend"] == "openai"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    for row in ds:
        ids = row["completion_token_ids"]
        assert len(ids) == row["completion_tokens"] == len(row["topk_ids"]) > 0
        assert all(len(k) == 4 for k in row["topk_ids"])
        assert all(a >= b for lps in row["topk_logprobs"] for a, b in zip(lps, lps[1:]))
        # the stored ids are the teacher's own tokens of this completion (vLLM holds back a trailing
        # incomplete UTF-8 character, which random tiny-model text often ends with)
        assert tok.decode(ids, skip_special_tokens=True).rstrip("\ufffd") == row["completion"].rstrip("\ufffd")
        prompt = tok.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        assert row["prompt_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"])
    # the stored top-k are the teacher's own k best at each position (float32 server vs a transformers pass)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for row in ds.select(range(2)):
        prompt = tok(tok.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        ids = row["completion_token_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1: len(prompt) - 1 + len(ids)]
        best = logits.log_softmax(-1).topk(4, dim=-1).values
        assert torch.allclose(torch.tensor(row["topk_logprobs"]), best, atol=1e-3)


@pytest.mark.slow
def test_openai_backend_survives_injected_faults(vllm_server, tiny_model, problems_file, tmp_path):
    upstream = vllm_server.removesuffix("/v1")
    plan = ["500", "pass", "drop", "429", "pass", "503", "slow", "pass"]
    with FaultProxy(upstream, plan=plan, delay_s=3.0, retry_after_ms=1) as proxy:
        cfg = config(tiny_model, problems_file, tmp_path / "out",
                     **{"teacher.backend": "openai", "teacher.base_urls": [proxy.url + "/v1"],
                        "teacher.request_timeout": 1.0, "teacher.max_retries": 8, "teacher.concurrency": 3})
        summary = generate.run(cfg)
    assert summary["errors"] == 0 and summary["rows"] == 8
    assert summary["retries_this_run"] >= sum(proxy.counts[a] for a in ("500", "drop", "429", "503", "slow")) > 0
    assert_complete(load(tmp_path / "out"), 4, 2)


@pytest.mark.slow
def test_rows_that_keep_failing_are_marked_then_retried(vllm_server, tiny_model, problems_file, tmp_path):
    out = tmp_path / "out"
    upstream = vllm_server.removesuffix("/v1")
    common = {"teacher.backend": "openai", "teacher.max_retries": 1}
    with FaultProxy(upstream, plan=lambda i, path: "500" if i % 3 else "pass", retry_after_ms=1) as proxy:
        summary = generate.run(config(tiny_model, problems_file, out, **common,
                                      **{"teacher.base_urls": [proxy.url + "/v1"], "teacher.concurrency": 1}))
    ds = load(out)
    assert_complete(ds, 4, 2)  # failed rows are kept, with their error
    failed = [e for e in ds["error"] if e]
    assert summary["errors"] == len(failed) > 0 and all("InternalServerError" in e for e in failed)
    assert all(c is None for c, e in zip(ds["completion"], ds["error"]) if e)

    # a plain rerun does not re-ask them; --retry_failed asks only for them
    assert generate.run(config(tiny_model, problems_file, out, **common,
                               **{"teacher.base_urls": [vllm_server]}))["generated_this_run"] == 0
    summary = generate.run(config(tiny_model, problems_file, out, **common,
                                  **{"teacher.base_urls": [vllm_server], "retry_failed": True}))
    assert summary["generated_this_run"] == len(failed) and summary["errors"] == 0
    assert_complete(load(out), 4, 2)


def test_dead_server_is_a_one_line_error_naming_the_url(tiny_model, problems_file, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate",
                        *overrides(tiny_model, problems_file, tmp_path / "o", **{"teacher.backend": "openai",
                                                                                 "teacher.base_urls": [url]})],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0 and url in p.stderr and "not reachable" in p.stderr


# ------------------------------------------------------------------------------------ resume after kill

def _default_sigint() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and children inherit that: then
    # the Ctrl-C these tests send would be ignored, as POSIX wants, and the test would wait for nothing.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "generate", *args], preexec_fn=_default_sigint,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for_shards(out: Path, count: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((out / "shards").glob("*.parquet"))) >= count if (out / "shards").exists() else False:
            return
        if proc.poll() is not None:
            raise AssertionError(f"generate ended early: {proc.stdout.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError("no shards appeared in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_resume_after_kill_has_every_row_exactly_once(sig, vllm_server, tiny_model, problems_file, tmp_path):
    out = tmp_path / "out"
    upstream = vllm_server.removesuffix("/v1")
    # requests after the third hang (until the client goes) while `hold` is set: the run cannot finish before
    # the signal, however slow the machine (a fixed per-request delay once let it win the race under load)
    hold = threading.Event()
    hold.set()
    plan = lambda i, path: "slow" if i >= 3 and hold.is_set() else "pass"  # noqa: E731
    with FaultProxy(upstream, plan=plan, delay_s=120) as proxy:
        args = overrides(tiny_model, problems_file, out, **{
            "teacher.backend": "openai", "teacher.base_urls": [proxy.url + "/v1"], "teacher.concurrency": 1,
            "shard_size": 1, "sampling.n": 3})
        proc = _cli(args)
        _wait_for_shards(out, 3, proc)
        proc.send_signal(sig)
        log = proc.communicate(timeout=60)[0]
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "rerun the same command to continue" in log
        assert not (out / "dataset").exists() and not (out / "summary.json").exists()  # nothing looks complete
        saved = len(datasets.load_dataset("parquet", data_files=str(out / "shards" / "*.parquet"))["train"])
        assert saved == 3

        hold.clear()
        proc = _cli(args)
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reused_rows"] == saved and summary["generated_this_run"] == 12 - saved
    assert_complete(load(out), 4, 3)


# --------------------------------------------- the same against a stand-in teacher server (fast suite)

def _stub_args(url: str, problems_file: str, out: Path, **kv) -> list[str]:
    return overrides("stub-teacher", problems_file, out, **{
        "teacher.backend": "openai", "teacher.base_urls": [url], "teacher.concurrency": 1, "shard_size": 1,
        "sampling.n": 3, **kv})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_kill_during_a_request_then_resume_fast(sig, problems_file, tmp_path):
    """Ctrl-C (exit 130, the one-line hint) or kill -9 while a request is in flight, then a rerun: every
    (id, sample) exactly once, the finished rows reused and not asked again."""
    out = tmp_path / "out"
    with OpenAIStub(hold_after=3) as stub:
        stub.hold.set()
        args = _stub_args(stub.url, problems_file, out)
        proc = _cli(args)
        stub.wait_until_held()
        _wait_for_shards(out, 3, proc)
        proc.send_signal(sig)
        log = proc.communicate(timeout=60)[0]
        if sig == signal.SIGINT:
            assert proc.returncode == 130, log
            assert log.strip().splitlines()[-1] == ("distill generate: interrupted; finished rows are saved, "
                                                    "rerun the same command to continue")
        else:
            assert proc.returncode == -signal.SIGKILL
        assert not (out / "dataset").exists() and not (out / "summary.json").exists()
        stub.hold.clear()
        asked = stub.arrived
        proc = _cli(args)
        log = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, log
        assert stub.arrived - asked == 9  # only the rows that were not saved
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reused_rows"] == 3 and summary["generated_this_run"] == 9
    ds = load(out)
    assert_complete(ds, 4, 3)
    assert all(f"\\boxed{{{i}}}" in c for c, i in zip(ds["completion"], [int(p[1]) for p in ds["id"]]))


def test_ctrl_c_during_retry_backoff_exits_130(problems_file, tmp_path):
    """Every request answered 503: the client is sleeping between retries when Ctrl-C comes."""
    out = tmp_path / "out"
    with OpenAIStub() as stub, FaultProxy(stub.url.removesuffix("/v1"), plan=["503"]) as proxy:
        proc = _cli(_stub_args(proxy.url + "/v1", problems_file, out, **{"teacher.max_retries": 50}))
        deadline = time.monotonic() + 120
        while proxy.counts["503"] < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and "rerun the same command to continue" in log, log
    assert not (out / "summary.json").exists()


def _stub_config(urls: list[str], problems_file: str, out: Path, **kv):
    return load_recipe(None, _stub_args(urls[0], problems_file, out, **{"teacher.base_urls": urls, **kv})).generate


def _right_answers(ds: datasets.Dataset) -> bool:
    return all(f"\\boxed{{{int(i[1:])}}}" in c for c, i in zip(ds["completion"], ds["id"]))


def test_retry_loop_survives_every_fault_fast(problems_file, tmp_path):
    """500, dropped connections, 429, 503 and a reply slower than the request timeout: each is retried and
    every row arrives, with the retries counted."""
    plan = ["500", "pass", "drop", "429", "pass", "503", "slow", "pass"]
    with OpenAIStub() as stub, FaultProxy(stub.url.removesuffix("/v1"), plan=plan, delay_s=3.0,
                                          retry_after_ms=1) as proxy:
        summary = generate.run(_stub_config([proxy.url + "/v1"], problems_file, tmp_path / "out", **{
            "teacher.request_timeout": 1.0, "teacher.max_retries": 8, "teacher.concurrency": 3}))
    faults = sum(proxy.counts[a] for a in ("500", "drop", "429", "503", "slow"))
    assert summary["errors"] == 0 and summary["rows"] == 12 and faults > 0
    assert summary["retries_this_run"] == faults  # one retry per fault, none lost or doubled
    ds = load(tmp_path / "out")
    assert_complete(ds, 4, 3)
    assert _right_answers(ds)


def test_retry_waits_as_long_as_retry_after_says(problems_file, tmp_path, monkeypatch):
    """A 429 whose Retry-After asks for 2 s is retried no sooner, even when the jittered backoff is ~0."""
    from pipeline.backends import openai_backend

    monkeypatch.setattr(openai_backend, "backoff_seconds", lambda attempt: 0.0)
    with OpenAIStub() as stub, FaultProxy(stub.url.removesuffix("/v1"), plan=lambda i, path: "429" if i == 0
                                          else "pass", retry_after_s=2) as proxy:
        t0 = time.monotonic()
        summary = generate.run(_stub_config([proxy.url + "/v1"], problems_file, tmp_path / "out",
                                            **{"sampling.n": 1}))
        took = time.monotonic() - t0
    assert proxy.counts["429"] == 1 and summary["retries_this_run"] == 1 and summary["errors"] == 0
    assert took >= 2.0, took  # (a lower bound: load can only make it longer)


def test_two_servers_share_the_work_and_a_retry_goes_to_the_other(problems_file, tmp_path):
    with OpenAIStub() as a, OpenAIStub() as b:
        generate.run(_stub_config([a.url, b.url], problems_file, tmp_path / "both", **{"teacher.concurrency": 2}))
        assert a.requests > 0 and b.requests > 0 and a.requests + b.requests == 12
        # one server answers 500 to everything: each failed request is retried on the next server and succeeds
        with FaultProxy(b.url.removesuffix("/v1"), plan=["500"], retry_after_ms=1) as broken:
            before = a.requests
            summary = generate.run(_stub_config([a.url, broken.url + "/v1"], problems_file, tmp_path / "one",
                                                **{"teacher.max_retries": 1}))
        assert summary["errors"] == 0 and summary["retries_this_run"] == broken.counts["500"] > 0
        assert a.requests - before == 12  # every row came from the healthy server, none twice
    ds = load(tmp_path / "one")
    assert_complete(ds, 4, 3)
    assert _right_answers(ds)


def test_failed_rows_are_kept_then_retry_failed_asks_only_for_them_fast(problems_file, tmp_path):
    out = tmp_path / "out"
    with OpenAIStub() as stub:
        with FaultProxy(stub.url.removesuffix("/v1"), plan=lambda i, path: "500" if i % 3 else "pass",
                        retry_after_ms=1) as proxy:
            summary = generate.run(_stub_config([proxy.url + "/v1"], problems_file, out,
                                                **{"teacher.max_retries": 1}))
        ds = load(out)
        assert_complete(ds, 4, 3)  # failed rows are kept, with their error and no completion
        failed = [(i, s) for i, s, e in zip(ds["id"], ds["sample"], ds["error"]) if e]
        assert summary["errors"] == len(failed) > 0
        assert all(c is None for c, e in zip(ds["completion"], ds["error"]) if e)
        asked = stub.arrived
        again = generate.run(_stub_config([stub.url], problems_file, out, **{"teacher.max_retries": 1}))
        assert again["generated_this_run"] == 0 and stub.arrived == asked  # a plain rerun asks nothing
        summary = generate.run(_stub_config([stub.url], problems_file, out,
                                            **{"teacher.max_retries": 1, "retry_failed": True}))
        assert summary["generated_this_run"] == len(failed) == stub.arrived - asked and summary["errors"] == 0
    ds = load(out)
    assert_complete(ds, 4, 3)
    assert not any(ds["error"]) and _right_answers(ds)


def test_resume_does_not_re_ask_failed_rows_unless_told(problems_file, tmp_path):
    """kill -9 after 6 rows, 2 of them failed (HTTP 500, no retries): the rerun asks only for the 6 rows never
    answered; the failed ones keep their error until --generate.retry_failed true."""
    out = tmp_path / "out"
    with OpenAIStub(hold_after=4) as stub, FaultProxy(stub.url.removesuffix("/v1"), retry_after_ms=1,
                                                      plan=lambda i, path: "500" if i in (1, 4) else "pass") as proxy:
        stub.hold.set()  # the 7th request (the stub's 5th) waits: the run cannot finish before the kill
        proc = _cli(_stub_args(proxy.url + "/v1", problems_file, out, **{"teacher.max_retries": 0}))
        stub.wait_until_held()
        _wait_for_shards(out, 6, proc)
        proc.kill()
        proc.communicate(timeout=60)
        stub.hold.clear()
        asked = stub.arrived
        rerun = _cli(_stub_args(stub.url, problems_file, out, **{"teacher.max_retries": 0}))
        log = rerun.communicate(timeout=120)[0]
        assert rerun.returncode == 0, log
        assert stub.arrived - asked == 6  # the unanswered rows only
    ds = load(out)
    assert_complete(ds, 4, 3)
    assert sum(bool(e) for e in ds["error"]) == 2 and proxy.counts["500"] == 2


# --------------------------------------------------------------------------------- in-process vLLM

@pytest.mark.slow
def test_vllm_backend_in_process(tiny_model, problems_file, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate",
                        *overrides(tiny_model, problems_file, out, **{"teacher.backend": "vllm",
                                                                      "teacher.enforce_eager": True,
                                                                      "teacher.max_model_len": 1024,
                                                                      "sampling.logprobs": 2})],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ds = load(out)
    assert_complete(ds, 4, 2)
    for row in ds:
        assert len(row["completion_token_ids"]) == row["completion_tokens"] == len(row["topk_logprobs"])
        assert all(len(k) == 2 and k[0] >= k[1] for k in row["topk_logprobs"])


def test_openai_response_with_separate_reasoning_field_and_token_id_logprobs():
    """A reasoning-parser server (vLLM --reasoning-parser, SGLang) returns reasoning apart from content."""
    from openai.types.chat import ChatCompletion

    from pipeline.backends.base import GenRequest
    from pipeline.backends.openai_backend import parse_response

    top = lambda *pairs: [{"token": f"token_id:{i}", "logprob": lp, "bytes": None} for i, lp in pairs]
    resp = ChatCompletion.model_validate({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "token_ids": [7, 9],
                     "message": {"role": "assistant", "content": "\\boxed{4}", "reasoning": "2+2 is 4"},
                     "logprobs": {"content": [
                         # the sampled token (id 7) ranks third: vLLM lists it first, beyond the top-2
                         {"token": "token_id:7", "logprob": -2.0, "bytes": None,
                          "top_logprobs": top((7, -2.0), (3, -0.5), (5, -1.0))},
                         {"token": "token_id:9", "logprob": -0.1, "bytes": None,
                          "top_logprobs": top((9, -0.1), (4, -3.0))}]}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})
    r = parse_response(GenRequest("p", 0, [], 0), resp, k=2)
    assert (r.completion, r.reasoning_field, r.finish_reason) == ("\\boxed{4}", "2+2 is 4", "stop")
    assert r.completion_token_ids == [7, 9] and (r.prompt_tokens, r.completion_tokens) == (11, 2)
    assert r.topk_ids == [[3, 5], [9, 4]] and r.topk_logprobs == [[-0.5, -1.0], [-0.1, -3.0]]
    completion, reasoning, final = split_reasoning(r.completion, r.reasoning_field)
    assert (reasoning, final) == ("2+2 is 4", "\\boxed{4}") and completion.startswith("<think>\n2+2 is 4")


@pytest.mark.slow
def test_launch_server_starts_and_stops_a_local_vllm(tiny_model, problems_file, tmp_path):
    import urllib.request

    out = tmp_path / "out"
    port = free_port()
    cfg = config(tiny_model, problems_file, out, **{
        "teacher.backend": "openai", "teacher.launch_server": True, "teacher.server_port": port,
        "teacher.enforce_eager": True, "teacher.max_model_len": 1024, "teacher.kv_cache_gb": 1})
    summary = generate.run(cfg)
    assert summary["rows"] == 8 and summary["errors"] == 0
    assert "Application startup complete" in (out / "server.log").read_text()
    with pytest.raises(OSError):  # stopped at the end: nothing listens on its port any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_bad_problems_file_is_a_one_line_error_before_any_work(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "problem": "1+1?", "answer": "2"}\n{"id": "b", "problem": "  ", "answer": "3"}\n')
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate",
                        *overrides(tiny_model, str(bad), tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0
    assert "line 2" in p.stderr and "problem" in p.stderr
    assert not (tmp_path / "o").exists()


def test_engine_dtype_auto_follows_the_cpu(monkeypatch):
    # bf16 without avx512_bf16/AMX is emulated by vLLM-CPU and many times slower than float32: auto must not pick it
    from pipeline.backends import vllm_backend

    monkeypatch.setattr(vllm_backend, "cpu_only", lambda: True)
    monkeypatch.setattr(vllm_backend, "cpu_has_bf16", lambda: False)
    assert vllm_backend.engine_dtype("auto") == "float32"
    assert vllm_backend.engine_dtype("bfloat16") == "bfloat16"  # a dtype the user names is kept
    monkeypatch.setattr(vllm_backend, "cpu_has_bf16", lambda: True)
    assert vllm_backend.engine_dtype("auto") == "bfloat16"
    monkeypatch.setattr(vllm_backend, "cpu_only", lambda: False)
    assert vllm_backend.engine_dtype("auto") == "auto"  # on a GPU vLLM's own choice


# ------------------------------------------------------------------------------ progress: tokens, rate, ETA

class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _bar_line(bar, elapsed: float) -> str:
    """The bar as tqdm draws it `elapsed` seconds after its start (tqdm's own formatter and fields)."""
    from tqdm import tqdm

    return tqdm.format_meter(**{**bar.format_dict, "elapsed": elapsed})


def test_progress_counts_engine_tokens_and_estimates_eta_from_them():
    import io

    from pipeline.backends.base import GenResult

    clock = FakeClock()
    stats = generate.RunStats(samples=10, max_tokens=100, clock=clock)
    bar = generate.progress_bar(stats, file=io.StringIO())

    # a minute in, no sample finished, the engine has generated 600 tokens: 10 tok/s; until a sample
    # finishes each is expected to take max_tokens, 1000 in all: 400 left, 40 s
    clock.t = 60.0
    stats.engine(600)
    assert (stats.generated(), stats.expected(), stats.rate(), stats.eta()) == (600, 1000, 10.0, 40.0)
    generate.draw(bar, stats)
    line = _bar_line(bar, 60.0)
    assert "600/1.00k tok [01:00<00:40, tok/s=10 (engine), samples=0/10, errors=0]" in line, line
    assert line.startswith("generate:  60%")

    # two samples of 200 tokens and one failed: the mean of the successful ones (200) prices the 7 left
    clock.t = 90.0
    for i, (tokens, error) in enumerate([(200, None), (200, None), (None, "HTTP 500")]):
        stats.add(GenResult(f"p{i}", 0, completion_tokens=tokens, error=error))
    stats.engine(900)
    assert (stats.generated(), stats.expected(), stats.rate(), stats.eta()) == (900, 400 + 7 * 200, 10.0, 90.0)
    generate.draw(bar, stats)
    assert "900/1.80k tok [01:30<01:30, tok/s=10 (engine), samples=3/10, errors=1]" in _bar_line(bar, 90.0)

    # the backend can no longer tell (a metrics read failed): the finished samples' tokens count
    stats.engine(None)
    assert (stats.generated(), stats.expected()) == (400, 1800) and stats.eta() == pytest.approx(1400 / (400 / 90))
    assert stats.postfix()["tok/s"] == "4 (finished)"

    # in-flight samples already longer than the mean: the estimate grows with them instead of hitting 0
    stats.engine(1850)
    assert stats.expected() == 1850 + 7 and stats.eta() > 0

    # every sample in: their own counts are exact, the bar is full, the summary's rate is the same
    clock.t = 180.0
    for i in range(7):
        stats.add(GenResult(f"q{i}", 0, completion_tokens=200))
    stats.end = clock.t
    assert (stats.generated(), stats.expected(), stats.eta()) == (1800, 1800, 0.0)
    assert stats.rate() == 10.0 == stats.tokens / stats.seconds()
    generate.draw(bar, stats)
    assert "1.80k/1.80k tok [03:00<00:00, tok/s=10 (engine), samples=10/10, errors=1]" in _bar_line(bar, 180.0)
    bar.close()


def test_openai_backend_reads_vllm_generation_token_counter():
    from pipeline.backends.openai_backend import generation_tokens

    metrics = ('# HELP vllm:generation_tokens_total Number of generation tokens processed.\n'
               '# TYPE vllm:generation_tokens_total counter\n'
               'vllm:generation_tokens_total{engine="0",model_name="m"} 1234.0\n'
               'vllm:generation_tokens_total{engine="1",model_name="m"} 66.0\n'
               'vllm:generation_tokens_created{engine="0",model_name="m"} 1.7e9\n'
               'vllm:prompt_tokens_total{engine="0",model_name="m"} 999.0\n')
    assert generation_tokens(metrics) == 1300.0
    assert generation_tokens("# a server that is not vLLM\nhttp_requests_total 5\n") is None


def test_openai_metrics_count_is_reported_and_a_failing_read_falls_back(problems_file, tmp_path):
    """A vLLM-like server's /metrics counter is reported as tokens since the run began; a server whose
    /metrics fails makes the backend say None once (fall back to the finished samples) and the run goes on."""
    import asyncio
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.backends.openai_backend import OpenAITeacher

    counter = {"value": 1000.0, "fail": False}

    class Metrics(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = f'vllm:generation_tokens_total{{engine="0"}} {counter["value"]}\n'.encode()
            self.send_response(500 if counter["fail"] else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    teacher = OpenAITeacher.__new__(OpenAITeacher)  # no preflight: only the counting task is exercised
    teacher.base_urls = [f"http://127.0.0.1:{server.server_address[1]}/v1"]
    teacher.metrics_every_s = 0.05
    seen: list = []

    def on_tokens(tokens):
        seen.append(tokens)
        counter["value"] += 50  # the server keeps generating
        counter["fail"] = len(seen) >= 3

    try:
        asyncio.run(asyncio.wait_for(teacher._count_tokens(on_tokens), timeout=10))
    finally:
        server.shutdown()
    assert seen == [0, 50, 100, None]


@pytest.mark.slow
def test_vllm_backend_reports_tokens_before_any_sample_finishes(tiny_model, tmp_path):
    """In-process vLLM: the token count comes from the engine while requests run, not when they end."""
    script = f"""
import json
from pipeline.backends.base import GenRequest
from pipeline.backends.vllm_backend import VLLMTeacher
from pipeline.core.config import SamplingConfig, TeacherConfig

teacher = VLLMTeacher(TeacherConfig(model={tiny_model!r}, backend="vllm", dtype="float32", enforce_eager=True,
                                    max_model_len=1024), SamplingConfig(n=1, max_tokens=32))
events = []
teacher.token_report_s = 0.0
teacher.on_tokens = lambda t: events.append(["tokens", t])
msgs = [{{"role": "user", "content": "What is 2 + 2?"}}]
teacher.generate([GenRequest("p", s, msgs, s) for s in range(4)],
                 lambda r: events.append(["result", r.completion_tokens]))
teacher.close()
print("EVENTS " + json.dumps(events))
"""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    events = json.loads(p.stdout.split("EVENTS ", 1)[1])
    first_result = next(i for i, (kind, _) in enumerate(events) if kind == "result")
    early = [t for kind, t in events[:first_result] if kind == "tokens"]
    assert early and early[-1] > 0, events  # tokens counted before any sample was finished
    counts = [t for kind, t in events if kind == "tokens"]
    assert counts == sorted(counts)  # a running total
    assert counts[-1] == sum(t for kind, t in events if kind == "result")  # that ends at the samples' own counts
