"""`distill generate`: a teacher writes chain-of-thought traces for a problem set.

    stage.py   run(GenerateConfig): build prompts, ask the backend for what is not done yet, write the dataset
    store.py   the output folder: crash-safe parquet shards while running, `dataset/` + `summary.json` when done
"""
