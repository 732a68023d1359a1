"""Build the chat prompt for a problem, and render chat messages into prompt token ids with the teacher's
own chat template."""

from __future__ import annotations

from ..core.config import PromptConfig

# ShareGPT-style role names (OpenThoughts' {from: human|gpt}, Gemini's model) -> ChatML's; read by filter and the
# training stages alike
CHAT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bot": "assistant",
              "model": "assistant", "assistant": "assistant", "system": "system"}


def chat_messages(problem: str, prompt: PromptConfig) -> list[dict]:
    """[system (optional), user: `prompt.template` filled with the problem and `prompt.instruction`]."""
    user = prompt.template.format(problem=problem, instruction=prompt.instruction).strip()
    return ([{"role": "system", "content": prompt.system}] if prompt.system else []) + [{"role": "user", "content": user}]


def render_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    # Render to text, then encode without special tokens: the template already wrote them (a second BOS
    # from the tokenizer would change what the teacher sees).
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()
