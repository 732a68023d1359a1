"""Plain transformers `generate`, for machines without vLLM. Slower, but runs anywhere torch runs."""

from __future__ import annotations

import torch

from ..core.config import SamplingConfig, TeacherConfig
from .base import GenRequest, GenResult, OnResult, OnTokens, teacher_name
from .prompts import render_prompt_ids


class TransformersTeacher:
    on_tokens: OnTokens | None = None

    def __init__(self, cfg: TeacherConfig, sampling: SamplingConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg, self.sampling = cfg, sampling
        self.name = teacher_name(cfg)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, revision=cfg.revision,
                                                       trust_remote_code=cfg.trust_remote_code)
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model, revision=cfg.revision, dtype=dtype,
                                                          trust_remote_code=cfg.trust_remote_code)
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = set(eos) | ({self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set())
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)

    def generate(self, requests: list[GenRequest], on_result: OnResult) -> None:
        bs = max(1, self.cfg.batch_size)
        tokens = 0
        for start in range(0, len(requests), bs):
            batch = requests[start:start + bs]
            torch.manual_seed(batch[0].seed)  # reproducible for the same batch; resumed batches may differ
            for result in self._batch(batch):
                tokens += result.completion_tokens
                on_result(result)
            if self.on_tokens is not None:  # a batch is generated as a whole: its tokens count when it ends
                self.on_tokens(tokens)

    @torch.no_grad()
    def _batch(self, batch: list[GenRequest]) -> list[GenResult]:
        s = self.sampling
        prompts = [render_prompt_ids(self.tokenizer, r.messages) for r in batch]
        width = max(map(len, prompts))
        # left padding, so every prompt ends where generation starts
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        sample = s.temperature > 0
        out = self.model.generate(
            input_ids=input_ids.to(self.model.device), attention_mask=attention.to(self.model.device),
            do_sample=sample, temperature=s.temperature if sample else None, top_p=s.top_p if sample else None,
            top_k=0 if sample else None, max_new_tokens=s.max_tokens, eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id, return_dict_in_generate=True, output_logits=bool(s.logprobs),
        )
        new = out.sequences[:, width:].tolist()
        results = []
        for row, (req, prompt, ids) in enumerate(zip(batch, prompts, new)):
            stop = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
            ids = ids[: stop + 1] if stop is not None else ids
            topk_ids = topk_lps = None
            if s.logprobs:
                # raw model logprobs (before temperature/top_p), as vLLM reports by default
                steps = torch.stack([step[row] for step in out.logits[: len(ids)]]).float().log_softmax(-1)
                values, indices = steps.topk(s.logprobs, dim=-1)
                topk_ids, topk_lps = indices.tolist(), values.tolist()
            text_ids = ids[:-1] if stop is not None else ids  # the EOS is not part of the text
            results.append(GenResult(
                req.id, req.sample, completion=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                finish_reason="stop" if stop is not None else "length", prompt_tokens=len(prompt),
                completion_tokens=len(ids), completion_token_ids=ids, topk_ids=topk_ids, topk_logprobs=topk_lps))
        return results

    def close(self) -> None:
        pass
