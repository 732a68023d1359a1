"""The evaluation's human-readable report: a side-by-side Markdown table, a bar chart of pass@1 with its 95%
interval, and the same table printed at the end of a run."""

from __future__ import annotations

from pathlib import Path


def write_report(out: Path, results: dict) -> None:
    (out / "results.md").write_text(markdown(results))
    plot(out / "results.png", results)


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (benchmark, metric), one column per model."""
    models = [m["name"] for m in results["models"]]
    rows = []
    for b in results["benchmarks"]:
        cells = [results["results"][m][b["name"]] for m in models]
        first = f"{b['name']} ({b['n_problems']})"
        ks = sorted({int(k) for c in cells for k in c["pass@k"]})
        lines = [("pass@1 (95% CI)", lambda c: f"{_pct(c['pass@1'])} ({_pct(c['ci95_low'])}-{_pct(c['ci95_high'])})")]
        lines += [(f"pass@{k}", lambda c, k=k: _pct(c["pass@k"].get(str(k)))) for k in ks if k > 1]
        lines += [(f"maj@{k}", lambda c, k=k: _pct(c["maj@k"].get(str(k)))) for k in ks if k > 1]
        lines += [("truncated", lambda c: _pct(c["truncated_rate"])),
                  ("no answer", lambda c: _pct(c["no_answer_rate"])),
                  ("mean output tokens", lambda c: _count(c["mean_output_tokens"]))]
        if any(c["failed_requests"] for c in cells):
            lines.append(("failed requests", lambda c: str(c["failed_requests"])))
        for i, (metric, fmt) in enumerate(lines):
            rows.append([first if i == 0 else "", metric, *(fmt(c) for c in cells)])
    return ["benchmark (problems)", "metric", *models], rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _count(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def markdown_table(r: dict) -> str:
    """The side-by-side table alone, in Markdown."""
    header, rows = table(r)
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(r: dict) -> str:
    s = r["sampling"]
    decoding = "greedy" if s["greedy"] else f"temperature {s['temperature']}, top_p {s['top_p']}"
    lines = ["# Evaluation results", "",
             f"{s['n']} sample(s) per problem, {decoding}, at most {s['max_tokens']} new tokens. Percentages; "
             f"pass@1 is the mean over samples and problems with a bootstrap 95% interval over problems; pass@k is "
             f"the unbiased estimator; maj@k votes over answers grouped by verified equivalence.", "",
             markdown_table(r)]
    lines += ["", "| model | served as | backend |", "|---|---|---|"]
    lines += [f"| {m['name']} | `{m['model']}` | {m['backend']} |" for m in r["models"]]
    lines += ["", "| benchmark | source | contamination check |", "|---|---|---|"]
    lines += [f"| {b['name']} | `{b['source']}`{' (' + b['split'] + ')' if b['split'] else ''} | {b['contamination']} |"
              for b in r["benchmarks"]]
    lines += ["", "![pass@1 per benchmark](results.png)", ""]
    return "\n".join(lines)


def plot(path: Path, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = [m["name"] for m in r["models"]]
    benches = [b["name"] for b in r["benchmarks"]]
    width = 0.8 / max(1, len(models))
    x = np.arange(len(benches))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(benches) * max(1, len(models)) ** 0.5 + 2), 4))
    for i, m in enumerate(models):
        cells = [r["results"][m][b] for b in benches]
        y = np.array([100 * (c["pass@1"] or 0) for c in cells])
        lo = np.array([100 * (c["ci95_low"] or 0) for c in cells])
        hi = np.array([100 * (c["ci95_high"] or 0) for c in cells])
        ax.bar(x + (i - (len(models) - 1) / 2) * width, y, width, label=m,
               yerr=[np.clip(y - lo, 0, None).tolist(), np.clip(hi - y, 0, None).tolist()], capsize=3)
    ax.set_xticks(x, benches)
    ax.set(ylabel="pass@1 (%)", ylim=(0, 100), title=f"pass@1 with 95% bootstrap interval (n={r['sampling']['n']})")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(r: dict, output: str) -> None:
    header, rows = table(r)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\nevaluate: done -> {output}/results.json, results.md, results.png, samples/")
    for row in [header, *rows]:
        cells = (c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths)))
        print("  " + "  ".join(cells))
