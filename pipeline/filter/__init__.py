"""`distill filter`: keep verified-correct, well-formed, deduplicated traces; say why each other one went.

    stage.py   run(FilterConfig): the checks in order, the chat training set, the report
    checks.py  the per-trace checks (format, repetition, near duplicates, decontamination n-grams)
    report.py  report.md and its histograms
"""
