"""The evaluation's human-readable report: a side-by-side Markdown table, a bar chart of pass@1 with its 95%
interval, and the same table printed at the end of a run."""

from __future__ import annotations

from pathlib import Path

from .failures import CLASSES, OPERATIONS


def write_report(out: Path, results: dict) -> None:
    (out / "results.md").write_text(markdown(results))
    plot(out / "results.png", results)
    plot_failures(out / "failures.png", results)


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


def failure_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the failure breakdown: one row per (benchmark, class), one column per model, each cell
    the share of that model's samples in the class. Classes no model shows are left out."""
    models = [m["name"] for m in results["models"]]
    rows = []
    for b in results["benchmarks"]:
        counts = [results["results"][m][b["name"]].get("failures") or {} for m in models]
        shown = [c for c in CLASSES if any(f.get(c) for f in counts)]
        for i, c in enumerate(shown):
            rows.append([f"{b['name']} ({b['n_problems']})" if i == 0 else "", c,
                         *(_share(f.get(c), sum(f.values())) for f in counts)])
    return ["benchmark (problems)", "class", *models], rows


def step_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the written-arithmetic table: one row per (benchmark, operation), one column per model,
    each cell the share of that model's written steps of the operation that hold (right/written). Operations no
    model wrote are left out."""
    models = [m["name"] for m in results["models"]]
    rows = []
    for b in results["benchmarks"]:
        steps = [results["results"][m][b["name"]].get("steps") or {} for m in models]
        shown = [op for op in OPERATIONS if any((s.get(op) or [0, 0])[1] for s in steps)]
        for i, op in enumerate(shown):
            rows.append([f"{b['name']} ({b['n_problems']})" if i == 0 else "", f"a {op} b = c",
                         *(_ratio(*(s.get(op) or [0, 0])) for s in steps)])
    return ["benchmark (problems)", "written step", *models], rows


def _ratio(right: int, written: int) -> str:
    return "-" if not written else f"{100 * right / written:.1f} ({right}/{written})"


def _share(n: int | None, total: int) -> str:
    return "-" if n is None or not total else f"{100 * n / total:.1f} ({n})"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _count(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def markdown_table(r: dict, make=table) -> str:
    """The side-by-side table alone (or the failure breakdown: make=failure_table), in Markdown."""
    header, rows = make(r)
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
    lines += ["", "## How the models fail", "",
              "Share of samples (count) in each class, the first that applies: correct; failed (the request); loop "
              "(cut off at the token limit, repeating itself); truncated (cut off otherwise); no answer (ended "
              "without one); arithmetic (answered, and a written step such as `6 \\times 9 = 56` is false); method "
              "(answered, every written step holds, the answer is wrong). Each sample's class is in samples/ "
              "(`failure`).", "", markdown_table(r, failure_table), "", "![how the samples fail](failures.png)"]
    if step_table(r)[1]:
        lines += ["", "Written arithmetic: of the steps with one operation between two numbers (`45 - 29 = 16`), the "
                      "share that hold (right/written), over every sample.", "", markdown_table(r, step_table)]
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


def plot_failures(path: Path, r: dict) -> None:
    """One stacked bar per (benchmark, model): the share of its samples in each class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{b['name']}\n{m['name']}", r["results"][m["name"]][b["name"]].get("failures") or {})
            for b in r["benchmarks"] for m in r["models"]]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(bars) + 2.5), 4))
    bottom = [0.0] * len(bars)
    for c in CLASSES:
        share = [100 * f.get(c, 0) / max(1, sum(f.values())) for _, f in bars]
        if any(share):
            ax.bar(range(len(bars)), share, bottom=bottom, label=c)
            bottom = [b + s for b, s in zip(bottom, share)]
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize="small")
    ax.set(ylabel="share of samples (%)", ylim=(0, 100), title="how the samples fail")
    ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_summary(r: dict, output: str) -> None:
    print(f"\nevaluate: done -> {output}/results.json, results.md, results.png, failures.png, samples/")
    _print_table(*table(r))
    print("\n  how the samples fail (share of samples, count; results.md says what each class means):")
    _print_table(*failure_table(r))
    steps = step_table(r)
    if steps[1]:
        print("\n  written arithmetic steps that hold (right/written):")
        _print_table(*steps)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths)))
        print("  " + "  ".join(cells))
