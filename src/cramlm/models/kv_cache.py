"""A preallocated key/value cache for incremental decoding with the causal decoder.

Generation feeds the prompt once, then one token per step; each attention layer appends its new keys and values to
the cache instead of recomputing them for the whole prefix. Rows may be left-padded (many prompts of different
lengths in one batch): the cache remembers which slots hold real tokens, gives each row position ids that start at
0 on its first real token, and masks padding out of every later attention. The training path never sees a cache.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from cramlm.errors import CramlmError


class KVCache:
    """Keys and values of every layer, (B, H, capacity, Dh) each, filled left to right by `Decoder(..., cache=)`."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, n_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.real = torch.zeros(batch, capacity, dtype=torch.bool, device=device)  # slot holds a real token
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)  # per row: real tokens so far
        self.capacity = capacity
        self.start = 0  # first slot of the tokens being processed
        self.length = 0  # slots filled, those being processed included
        self.padded = False  # some slot so far is padding: attention needs an explicit mask

    @classmethod
    def for_model(cls, model: nn.Module, batch: int, capacity: int) -> KVCache:
        """An empty cache for `batch` rows of up to `capacity` tokens (prompt and new tokens) of `model`."""
        cfg = model.cfg
        if capacity > cfg.max_seq_len:
            raise CramlmError(f"{capacity} tokens (prompt + new tokens) exceed model.max_seq_len={cfg.max_seq_len}")
        weight = model.embed.tok.weight
        return cls(cfg.n_layers, batch, cfg.n_heads, cfg.d_model // cfg.n_heads, capacity, weight.dtype,
                   weight.device)

    def step(self, attention_mask: Tensor | None, n_new: int) -> tuple[Tensor, Tensor | None, bool]:
        """Register `n_new` tokens per row (mask: 1 = real, None = all real) before a forward pass; returns their
        position ids (B, n_new), the boolean SDPA mask (B, 1, n_new, length) or None, and whether SDPA should
        apply its own causal mask instead."""
        if self.length + n_new > self.capacity:
            raise CramlmError(f"the KV cache holds {self.capacity} tokens; {self.length + n_new} were fed")
        self.start, self.length = self.length, self.length + n_new
        real = (torch.ones(self.real.shape[0], n_new, dtype=torch.bool, device=self.real.device)
                if attention_mask is None else attention_mask.bool())
        self.real[:, self.start:self.length] = real
        positions = self.next_position[:, None] + real.long().cumsum(1) - 1
        self.next_position += real.sum(1)
        self.padded = self.padded or not bool(real.all())
        if not self.padded and n_new == 1:  # one query sees every key so far
            return positions, None, False
        if not self.padded and self.start == 0:  # a whole prompt: SDPA's own causal mask
            return positions, None, True
        slots = torch.arange(self.length, device=real.device)
        query_slots = slots[self.start:, None]
        # a query sees real keys at or before its slot, and always itself (a padding query would see nothing)
        keep = (self.real[:, None, :self.length] & (slots <= query_slots)) | (slots == query_slots)
        return positions.clamp(min=0), keep[:, None], False

    def layer(self, index: int) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """What attention layer `index` calls with its new keys and values."""
        return partial(self.append, index)

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store layer `layer`'s keys and values (B, H, n_new, Dh) of the registered tokens; returns all so far."""
        self.keys[layer][:, :, self.start:self.length] = k
        self.values[layer][:, :, self.start:self.length] = v
        return self.keys[layer][:, :, :self.length], self.values[layer][:, :, :self.length]
