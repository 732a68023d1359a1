"""The filter's human-readable report: Markdown tables and a PNG of kept lengths and pass rates."""

from __future__ import annotations

from pathlib import Path


def write_report(out: Path, report: dict, kept_tokens: list[int]) -> None:
    (out / "report.md").write_text(markdown(report))
    plot(out / "report.png", kept_tokens, list(report["pass_rates"].values()))


def markdown(r: dict) -> str:
    lines = ["# Filter report", "",
             f"Input `{r['input']}`: {r['rows_in']} traces of {r['problems_in']} problems. "
             f"Kept **{r['rows_kept']}** traces of {r['problems_kept']} problems.", "",
             *([f"Read as `{r['format']}` ({r['format_name']}): {r['input_rows']} rows of the input became "
                f"{r['rows_in']} traces.", ""] if r.get("format", "distill") != "distill" else []),
             f"Teacher pass@1 over the input (mean over problems): {r['teacher_pass_at_1']}; "
             f"share of correct samples: {r['teacher_sample_accuracy']}.", "",
             "## Why rows were dropped", "",
             "| reason (first failing check) | rows | rows failing this check (any order) |", "|---|---:|---:|"]
    for reason in r["failing_checks"]:
        lines.append(f"| {reason} | {r['rejected'].get(reason, 0)} | {r['failing_checks'][reason]} |")
    lines += ["", "## Answer verification", "", "| result | rows |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(r["verify_reasons"].items(), key=lambda kv: -kv[1])]
    verdicts = {c: v for c, v in r.get("dataset_verdicts", {}).items() if "agree" in v}
    if verdicts:
        lines += ["", "## The dataset's verdicts and ours", "",
                  "| dataset column | rows | agree | both correct | dataset only | ours only | both incorrect |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {c} | {v['rows']} | {v['agree']} | {v['both correct']} | {v['dataset only']} | "
                  f"{v['ours only']} | {v['both incorrect']} |" for c, v in verdicts.items()]
    for check, why in r.get("checks_not_applied", {}).items():
        lines += ["", f"Not checked, {check}: {why}."]
    k = r["kept_tokens"]
    if k.get("count"):
        lines += ["", "## Kept trace lengths (teacher tokens)", "",
                  f"mean {k['mean']}, median {k['median']}, min {k['min']}, max {k['max']}"]
    d = r["decontamination"]
    lines += ["", "## Decontamination", ""]
    if not d["benchmarks"]:
        lines.append("Not checked (filter.decontaminate is empty).")
    else:
        lines.append(f"Against {', '.join(d['benchmarks'])} with shared word {d['ngram']}-grams: "
                     f"{d['problems_flagged']} problems flagged and dropped.")
        if d["hits"]:
            lines += ["", "| problem | benchmark | benchmark problem | shared n-gram |", "|---|---|---|---|"]
            lines += [f"| {h['id']} | {h['benchmark']} | {h['benchmark_id']} | {h['ngram']} |" for h in d["hits"][:200]]
            if len(d["hits"]) > 200:
                lines.append(f"\n({len(d['hits']) - 200} more in report.json)")
    lines += ["", "![kept lengths and pass rates](report.png)", ""]
    return "\n".join(lines)


def plot(path: Path, kept_tokens: list[int], pass_rates: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.hist(kept_tokens, bins=30, color="#4c72b0")
    a.set(title=f"Kept traces: length ({len(kept_tokens)} traces)", xlabel="completion tokens", ylabel="traces")
    b.hist(pass_rates, bins=[i / 10 for i in range(11)], color="#55a868", edgecolor="white")
    b.set(title=f"Teacher pass rate per problem ({len(pass_rates)} problems)", xlabel="share of samples correct",
          ylabel="problems")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
