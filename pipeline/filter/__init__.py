"""`distill filter`: keep verified-correct, well-formed, deduplicated traces; say why each other one went.

    stage.py   run(FilterConfig): the checks in order, the chat training set, the report
    formats.py public trace sets and TRL's formats (OpenR1, OpenThoughts, NuminaMath, messages, prompt/completion)
               -> rows of the traces contract; the format told from the columns or named by filter.format
    errors.py  FilterError
    checks.py  the per-trace checks (format, repetition, near duplicates, decontamination n-grams)
    report.py  report.md and its histograms
"""
