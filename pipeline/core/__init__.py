"""What every stage shares.

    config.py  the recipe: one dataclass per section, every key declared once with its meaning (`opt`)
    data.py    problem sets and benchmarks: bundled names, local files, Hub ids -> id, problem, answer
    errors.py  DistillError, the base of every one-line user error
    hardware.py  what the CPU computes natively (bf16), for the `auto` dtypes and precisions
    io.py      atomic writes, dataset fingerprints, config diffs, the folder-or-Hub dataset loader, weights ids
    log.py     the stages' loggers (progress and diagnostics; summaries are printed)
    output.py  StageOutput: the output protocol (claim, refuse another config's output, complete last)
    stages.py  the stage table the CLI, `distill run` and `distill config` read
"""
