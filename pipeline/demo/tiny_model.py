"""Build a tiny, local, randomly initialised chat model for tests and benchmarks (no model hub needed).

A byte-level BPE tokenizer is trained on the fly on a small math-flavoured corpus, and a 2-layer Qwen2
(head_dim 32: vLLM's CPU attention rejects head_dim 16) is saved next to it with a ChatML template.
"""

from __future__ import annotations

import random
from pathlib import Path

# ChatML, as Qwen2 uses; `{% generation %}` marks assistant tokens for TRL's assistant-only loss.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def _corpus(rng: random.Random, lines: int = 2000) -> list[str]:
    words = "the answer is step first then add subtract multiply divide total each apples books".split()
    out = []
    for _ in range(lines):
        a, b = rng.randint(1, 999), rng.randint(1, 999)
        out.append(f"{rng.choice(words)} {a} + {b} = {a + b}. {' '.join(rng.choices(words, k=6))} \\boxed{{{a + b}}}")
    return out


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 512, layers: int = 2,
                     hidden: int = 64, split_digits: bool = False) -> Path:
    """Write a tokenizer + random Qwen2 model folder to `out_dir` and return its path. `split_digits`: one token
    per digit (as Qwen2.5 and SmolLM2 do); by default BPE merges digits, so two tiny models differ in tokenizer."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(rng), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32, head_dim=32,
        max_position_embeddings=2048, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    return out


if __name__ == "__main__":  # python -m pipeline.demo.tiny_model OUT_DIR
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-model"))
