import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import data
from pipeline.core.data import BENCHMARKS, load_problems


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    # Tests must not depend on the caller's environment.
    monkeypatch.delenv("DISTILL_DATA_DIR", raising=False)
    monkeypatch.delenv("DISTILL_BENCHMARKS_DIR", raising=False)


@pytest.fixture
def no_hub(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"unexpected Hub lookup: {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", fail)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"id": "a", "problem": "1+1?", "answer": "2"},
    {"id": "b", "problem": "2+2?", "answer": "4"},
    {"id": "c", "problem": "3+3?", "answer": "6"},
]


# --- bundled benchmarks ------------------------------------------------------------


@pytest.mark.parametrize(
    "name, rows",
    [("gsm8k", 1319), ("gsm8k_train", 7473), ("math500", 500), ("svamp", 1000), ("olympiadbench", 675)],
)
def test_bundled_benchmarks_load(name, rows, no_hub):
    ds = load_problems(name)
    assert len(ds) == rows
    assert ds.column_names[:4] == ["id", "problem", "answer", "source"]
    for col in ("id", "problem", "answer", "source"):
        assert ds.features[col] == datasets.Value("string")
    assert all(a.strip() for a in ds["answer"])
    assert len(set(ds["id"])) == rows
    assert set(ds["source"]) == {name}


def test_bundled_files_match_documented_list():
    bundled = {p.name for p in data.data_dir().glob("*.jsonl")}
    assert bundled == {f for n, f in BENCHMARKS.items() if n not in data.NOT_BUNDLED}


def test_bundled_answers_and_extras_keep_values():
    ds = load_problems("gsm8k")
    assert ds[0]["id"] == "gsm8k-test-0000"
    assert ds[0]["answer"] == "18"
    assert "solution" in ds.column_names  # extra columns are kept
    olympiad = load_problems("olympiadbench")
    assert isinstance(olympiad[0]["final_answer"], list)


def test_split_selects_train_file():
    train = load_problems("gsm8k", split="train")
    assert len(train) == 7473
    assert train["id"][:3] == load_problems("gsm8k_train", limit=3)["id"]
    assert len(load_problems("gsm8k", split="test")) == 1319


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="math500.*no split 'train'"):
        load_problems("math500", split="train")


def test_data_dir_env_override(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "svamp_test.jsonl", ROWS)
    monkeypatch.setenv("DISTILL_DATA_DIR", str(tmp_path))
    ds = load_problems("svamp")
    assert ds["id"] == ["a", "b", "c"]
    assert ds["source"] == ["svamp"] * 3


# --- benchmarks that are not bundled -------------------------------------------------


def test_aime24_not_bundled_error():
    with pytest.raises(ValueError) as err:
        load_problems("aime24")
    msg = str(err.value)
    assert "\n" not in msg
    assert "not bundled" in msg and "licence" in msg
    assert "DISTILL_BENCHMARKS_DIR" in msg and "aime24_test.jsonl" in msg


def test_aime24_from_benchmarks_dir(tmp_path, monkeypatch):
    rows = [{"id": f"aime24-I-{i}", "problem": f"P{i}", "answer": str(i)} for i in range(1, 4)]
    rows[1]["orig_answer"] = "002"  # present on one row only, as in the real file
    write_jsonl(tmp_path / "aime24_test.jsonl", rows)
    monkeypatch.setenv("DISTILL_BENCHMARKS_DIR", str(tmp_path))
    ds = load_problems("aime24")
    assert ds["id"] == ["aime24-I-1", "aime24-I-2", "aime24-I-3"]
    assert ds["source"] == ["aime24"] * 3
    assert ds["orig_answer"] == [None, "002", None]


# --- local files ----------------------------------------------------------------------


def test_local_jsonl_normalises_types(tmp_path, no_hub):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"id": 7, "problem": "a", "answer": 18, "tag": 1}) + "\n"
        + "\n"  # blank lines are skipped
        + json.dumps({"id": 8, "problem": "b", "answer": 2.0, "tag": "x"}) + "\n"
        + json.dumps({"id": 9, "problem": "c", "answer": 0.5, "note": "n"}) + "\n",
        encoding="utf-8",
    )
    ds = load_problems(str(path))
    assert ds["id"] == ["7", "8", "9"]
    assert ds["answer"] == ["18", "2", "0.5"]
    assert ds["source"] == ["mine"] * 3
    # "tag" mixes int and str, which Arrow cannot hold in one column: stored as JSON text.
    assert ds["tag"] == ["1", '"x"', None]
    assert ds["note"] == [None, None, "n"]


def test_existing_source_column_is_kept(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"problem": "p", "answer": "1", "source": "upstream"}])
    assert load_problems(str(path))["source"] == ["upstream"]


def test_ids_made_when_missing(tmp_path):
    path = write_jsonl(tmp_path / "noids.jsonl", [{"problem": f"p{i}", "answer": i} for i in range(3)])
    ds = load_problems(str(path))
    assert ds["id"] == ["noids-0", "noids-1", "noids-2"]
    assert ds["answer"] == ["0", "1", "2"]


def test_parquet_file(tmp_path, no_hub):
    path = tmp_path / "probs.parquet"
    pq.write_table(pa.table({"question": ["q1", "q2"], "answer": [3, 4], "level": [1, 2]}), path)
    ds = load_problems(str(path), columns={"problem": "question"})
    assert ds["id"] == ["probs-0", "probs-1"]
    assert ds["problem"] == ["q1", "q2"]
    assert ds["answer"] == ["3", "4"]
    assert ds["level"] == [1, 2]
    assert "question" not in ds.column_names


def test_json_list_file(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert load_problems(str(path))["id"] == ["a", "b", "c"]


def test_save_to_disk_folder(tmp_path, no_hub):
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    ds = load_problems(str(folder))
    assert ds["id"] == ["a", "b", "c"]
    assert ds["source"] == ["saved"] * 3


def test_save_to_disk_dataset_dict_needs_split(tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(folder))
    assert len(load_problems(str(folder), split="test")) == 1
    with pytest.raises(ValueError, match="train, test|test, train"):
        load_problems(str(folder))


def test_missing_path_is_not_a_hub_lookup(tmp_path, no_hub):
    with pytest.raises(ValueError, match="no such file"):
        load_problems(str(tmp_path / "absent.jsonl"))
    with pytest.raises(ValueError, match="no such file"):
        load_problems("./relative/absent")


def test_hub_id_uses_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"question": "q", "final_answer": 5}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_problems("org/some-set", columns={"problem": "question", "answer": "final_answer"})
    assert calls == [("org/some-set", "train")]
    assert ds[0] == {"id": "some-set-0", "problem": "q", "answer": "5", "source": "some-set"}


# --- column mapping ---------------------------------------------------------------------


def test_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"q": "p1", "final_answer": "x", "extra": 1}])
    ds = load_problems(str(path), columns={"problem": "q", "answer": "final_answer"})
    assert ds.column_names == ["id", "problem", "answer", "source", "extra"]
    assert ds[0]["problem"] == "p1" and ds[0]["answer"] == "x"


def test_column_mapping_unknown_source_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"q": "p1", "answer": "x"}])
    with pytest.raises(ValueError) as err:
        load_problems(str(path), columns={"problem": "question"})
    assert "'question'" in str(err.value) and "available: q, answer" in str(err.value)


def test_column_mapping_onto_existing_column_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "a", "question": "b", "answer": "x"}])
    with pytest.raises(ValueError, match="already has a 'problem' column"):
        load_problems(str(path), columns={"problem": "question"})
    ds = load_problems(str(path), columns={"problem": "question", "orig_problem": "problem"})
    assert ds[0]["problem"] == "b" and ds[0]["orig_problem"] == "a"


# --- validation errors ------------------------------------------------------------------


def test_missing_problem_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "answer": "1"}])
    with pytest.raises(ValueError) as err:
        load_problems(str(path))
    msg = str(err.value)
    assert "'problem'" in msg and "available: question, answer" in msg
    assert "columns: {problem: question}" in msg


def test_missing_answer_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "q", "target": 1}])
    with pytest.raises(ValueError, match=r"no 'answer' column \(available: problem, target\)"):
        load_problems(str(path))


@pytest.mark.parametrize("bad", ["", "   \n", None, 5])
def test_bad_problem_names_line(tmp_path, bad):
    rows = [dict(r) for r in ROWS]
    rows[2]["problem"] = bad
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"m\.jsonl: line 3: .*'problem'"):
        load_problems(str(path))


@pytest.mark.parametrize("bad", ["", " ", None, ["1"]])
def test_bad_answer_names_line(tmp_path, bad):
    rows = [dict(r) for r in ROWS]
    rows[1]["answer"] = bad
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"line 2: .*'answer'"):
        load_problems(str(path))


def test_duplicate_id(tmp_path):
    rows = [dict(r) for r in ROWS] + [{"id": "b", "problem": "again", "answer": "1"}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"duplicate id 'b' at line 2 and line 4"):
        load_problems(str(path))


def test_duplicate_id_after_int_to_str(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": 1, "problem": "a", "answer": "1"},
                                              {"id": "1", "problem": "b", "answer": "2"}])
    with pytest.raises(ValueError, match=r"duplicate id '1' at line 1 and line 2"):
        load_problems(str(path))


def test_bad_json_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.jsonl: line 3: not valid JSON"):
        load_problems(str(path))


def test_errors_in_datasets_use_row_numbers(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"problem": ["a", "b"], "answer": ["1", None]}), path)
    with pytest.raises(ValueError, match=r"row 2: .*'answer'"):
        load_problems(str(path))


# --- limit / shuffle --------------------------------------------------------------------


def test_limit_with_seed_is_reproducible():
    a = load_problems("math500", limit=20, shuffle_seed=123)
    b = load_problems("math500", limit=20, shuffle_seed=123)
    c = load_problems("math500", limit=20, shuffle_seed=7)
    first = load_problems("math500", limit=20)
    assert len(a) == 20 and len(set(a["id"])) == 20
    assert a["id"] == b["id"]
    assert a["id"] != c["id"]
    assert a["id"] != first["id"]


def test_limit_without_seed_takes_first_rows():
    full = load_problems("svamp")
    assert load_problems("svamp", limit=5)["id"] == full["id"][:5]


def test_limit_larger_than_data(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", ROWS)
    assert len(load_problems(str(path), limit=100)) == 3
    assert sorted(load_problems(str(path), limit=100, shuffle_seed=0)["id"]) == ["a", "b", "c"]
