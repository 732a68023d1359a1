"""Chat templates for training: pick one, turn a conversation into (input_ids, labels), check it first.

Every example is encoded as prompt + completion: the prompt is the conversation up to the assistant turn
rendered with the generation prompt (exactly what the model sees when it is served), the completion is the
rest of the rendered text (the assistant turn and whatever closes it). Loss is on the completion only, so
any template trains on the assistant turn alone, with or without `{% generation %}` support.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DistillError

IGNORE = -100

# ChatML closed by the tokenizer's own EOS, so a model trained with it stops on a token it already knows.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(DistillError, ValueError):
    """The chat template would train the student wrongly (reasoning not trained, no end of turn)."""


def resolve_chat_template(tokenizer, choice: str | None, model: str) -> str:
    """The template to train with: the student's own (None), the project's fallback, or a .jinja file."""
    if choice is None:
        if not tokenizer.chat_template:
            raise TemplateError(f"{model} has no chat template; set chat_template: fallback (ChatML closed by EOS) "
                                f"or the path of a .jinja template")
        return tokenizer.chat_template
    if choice == "fallback":
        return FALLBACK_TEMPLATE
    path = Path(choice)
    if path.is_file():
        return path.read_text()
    raise TemplateError(f"chat_template {choice!r} is neither 'fallback' nor an existing .jinja file")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int
    completion_text: str


def render(tokenizer, messages: list[dict]) -> tuple[str, str]:
    """(prompt text with the generation prompt, completion text) for a conversation ending in the answer."""
    if not messages or messages[-1].get("role") != "assistant":
        raise TemplateError("a training conversation must end with an assistant turn")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise TemplateError("the chat template renders the conversation differently once the answer is added, so the "
                            "prompt the model is served differs from the one it is trained on; use "
                            "chat_template: fallback or a template whose generation prompt is a prefix")
    return prompt, full[len(prompt):]


def encode(tokenizer, messages: list[dict], turns: str = "last", prompt_turns: int = 0) -> Encoded:
    """Token ids and labels (-100 off the trained turns); prompt and completion are tokenised apart, as at serving
    time. turns `last`: the final assistant turn carries loss; `all`: every assistant turn after the first
    `prompt_turns` turns (a prompt/completion row's prompt is never trained)."""
    if turns == "all":
        return encode_all(tokenizer, messages, prompt_turns)
    prompt, completion = render(tokenizer, messages)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return Encoded(p_ids + c_ids, [IGNORE] * len(p_ids) + c_ids, len(p_ids), completion)


def encode_all(tokenizer, messages: list[dict], prompt_turns: int = 0) -> Encoded:
    """Loss on every assistant turn, as TRL's `assistant_only_loss` trains them, without needing `{% generation %}`
    markers: each assistant turn i is the text between the conversation up to it rendered with the generation
    prompt and the conversation up to and including it; the pieces must nest (a template that renders earlier
    assistant turns differently, e.g. stripping their reasoning, cannot train them as they are shown)."""
    if not messages or messages[-1].get("role") != "assistant":
        raise TemplateError("a training conversation must end with an assistant turn")
    cuts: list[tuple[int, int]] = []  # (start, end) character spans of the trained turns in the full text
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or i < prompt_turns:
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else \
            tokenizer.apply_chat_template([], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
        if not (upto.startswith(before) and full.startswith(upto)) or (cuts and len(before) < cuts[-1][1]):
            raise TemplateError(f"the chat template renders assistant turn {i} differently once later turns follow "
                                f"(as templates that strip past reasoning do), so it cannot be trained as shown; use "
                                f"train_turns: last, or chat_template: fallback")
        cuts.append((len(before), len(upto)))
    ids: list[int] = []
    labels: list[int] = []
    pos = 0
    for start, end in cuts:
        for text, trained in ((full[pos:start], False), (full[start:end], True)):
            if text:
                t = tokenizer(text, add_special_tokens=False)["input_ids"]
                ids += t
                labels += t if trained else [IGNORE] * len(t)
        pos = end
    if pos < len(full):
        t = tokenizer(full[pos:], add_special_tokens=False)["input_ids"]
        ids += t
        labels += [IGNORE] * len(t)
    first = next((j for j, t in enumerate(labels) if t != IGNORE), len(labels))
    return Encoded(ids, labels, first, full[cuts[-1][0]:cuts[-1][1]] if cuts else "")


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@dataclass
class Preflight:
    stop_ids: list[int]  # end-of-turn token(s) for the saved generation config, turn closer first
    turn_end: str  # the token that closes the assistant turn
    example_tokens: int


def preflight(tokenizer, messages: list[dict], turns: str = "last") -> Preflight:
    """Render one example and check that the whole answer (reasoning included) and an end-of-turn token are in
    the tokens that carry loss. Raises TemplateError with the fix otherwise."""
    enc = encode(tokenizer, messages, turns)
    trained_ids = [t for t in enc.labels if t != IGNORE]
    trained = tokenizer.decode(trained_ids, skip_special_tokens=False)
    answer = _squash(messages[-1]["content"])
    think = re.search(r"<think>(.*?)</think>", messages[-1]["content"], re.S)
    fix = "use chat_template: fallback (the project's ChatML) or a template that keeps it"
    if think and _squash(think.group(1)) and _squash(think.group(1)) not in _squash(trained):
        raise TemplateError(f"the chat template drops the reasoning inside <think>...</think> from the trained "
                            f"assistant turn (as templates that strip past reasoning do): the student would never "
                            f"learn to reason; {fix}")
    if answer not in _squash(trained):
        raise TemplateError(f"the chat template does not put the assistant's answer verbatim into the trained tokens; "
                            f"{fix}")
    # what follows the answer must hold a special token that ends the turn, or the trained model never stops;
    # the answer ends at the shortest token prefix that contains it (containment grows with the prefix)
    lo, hi = 0, len(trained_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if answer in _squash(tokenizer.decode(trained_ids[:mid], skip_special_tokens=False)):
            hi = mid
        else:
            lo = mid + 1
    tail_ids = trained_ids[lo:]
    specials = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    closers = [i for i in tail_ids if i in specials]
    if not closers:
        eos = tokenizer.eos_token
        raise TemplateError(f"the chat template puts no end-of-turn token (EOS {eos!r}) after the assistant turn, so "
                            f"the trained student would never stop; use chat_template: fallback (closes every turn "
                            f"with {eos!r}) or a template that ends the assistant turn with a special token")
    stop_ids = [closers[0]] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id not in (None, closers[0]) else [])
    return Preflight(stop_ids, tokenizer.convert_ids_to_tokens(closers[0]), len(enc.input_ids))
