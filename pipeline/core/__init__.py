"""What every stage shares.

    config.py  the recipe: one dataclass per section, every key declared once with its meaning (`opt`)
    data.py    problem sets and benchmarks: bundled names, local files, Hub ids -> id, problem, answer
    errors.py  DistillError, the base of every one-line user error
    io.py      atomic writes, dataset fingerprints, config diffs
    stages.py  the stage table the CLI, `distill run` and `distill config` read
"""
