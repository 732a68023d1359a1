"""`distill evaluate`: teacher and students on math benchmarks, side by side.

    stage.py          run(EvaluateConfig): plan every (model, benchmark) pair, generate, score, report
    store.py          per-pair state: reusable samples and finished metrics, refused when the config changed
    scoring.py        verdicts (pipeline.verify) -> pass@k, maj@k, bootstrap intervals, failure breakdown
    metrics.py        the estimators: unbiased pass@k, maj@k with verified-equal voting, percentile bootstrap
    contamination.py  refuse benchmarks the filter's decontamination flagged
    report.py         results.md and the chart
"""
