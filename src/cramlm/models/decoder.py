"""The causal decoder (GPT-style, Llama layout by default) and sampling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cramlm.config import ModelConfig
from cramlm.models import mup
from cramlm.models.kv_cache import KVCache
from cramlm.models.layers import ModelOutput, Trunk, cross_entropy, init_weights


class Decoder(Trunk):
    """Causal LM: pass `labels = input_ids`, the shift by one happens here."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.is_readout = True
        self.logit_mult = mup.logit_multiplier(cfg)
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.tok.weight

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        mask_positions: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> ModelOutput:
        """Logits (B, L, V); `mask_positions` is accepted for a uniform call signature and ignored. With a
        `cache` (see `cramlm.generation`), only the tokens after the cached ones are fed, left-padded rows marked
        by `attention_mask`."""
        h, aux, metrics = self.hidden_states(input_ids, attention_mask, causal=True, cache=cache)
        logits = self.readout(h)
        loss = None
        if labels is not None:
            loss = cross_entropy(logits[:, :-1], labels[:, 1:])
            if aux is not None:
                metrics["lm_loss"] = loss.detach()
                loss = loss + aux
        return ModelOutput(loss, logits, aux, metrics)

    def readout(self, h: Tensor) -> Tensor:
        """Hidden states -> logits (muP's logit multiplier included); generation reads out the last position only."""
        logits = self.head(h)
        return logits * self.logit_mult if self.logit_mult != 1.0 else logits

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Append up to `max_new_tokens` sampled tokens to (B, L) `input_ids`; temperature 0 is greedy.
        The context is cropped to `max_seq_len`; rows stop growing (padded with `eos_id`) after `eos_id`."""
        out = input_ids
        done = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
        for _ in range(max_new_tokens):
            logits = self(out[:, -self.cfg.max_seq_len:]).logits[:, -1].float()
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos_id is not None and bool(done.all()):
                break
        return out
