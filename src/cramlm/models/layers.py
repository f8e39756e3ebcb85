"""Building blocks shared by the encoder and the decoder.

Every choice a `ModelConfig` offers (norm type and position, plain or gated feed-forward, position scheme, biases,
dropout) is resolved here, so the models only wire blocks together. Attention always goes through
`F.scaled_dot_product_attention`, which picks the flash / memory-efficient kernel on GPU and handles padding masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cramlm.config import ModelConfig
from cramlm.errors import CramlmError
from cramlm.models import mup

if TYPE_CHECKING:
    from cramlm.models.kv_cache import KVCache

# An attention layer's view of a KV cache: takes its new keys and values, returns all of them so far.
AppendKV = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class ModelOutput:
    """What every cramlm model returns; `aux_loss` is already weighted and included in `loss`."""

    loss: Tensor | None
    logits: Tensor
    aux_loss: Tensor | None = None
    metrics: dict[str, float | Tensor] = field(default_factory=dict)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class Rotary(nn.Module):
    """Rotary position embedding in the rotate-half layout (the one Llama and ModernBERT use)."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", torch.cat([angles, angles], dim=-1).cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)  # half width: both halves use the same

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """cos (L, 1, 1, Dh) and sin (L, 1, 1, Dh/2), to broadcast over the projection's (B, L, 2, H, Dh) layout."""
        return self.cos[:seq_len, None, None], self.sin[:seq_len, None, None]

    def at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin at per-row position ids (B, L): (B, L, 1, 1, Dh) and (B, L, 1, 1, Dh/2)."""
        return self.cos[positions][:, :, None, None], self.sin[positions][:, :, None, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) on the two halves of the last dim, written into one
    buffer (no concatenation: elementwise passes dominate rotary's cost on CPU)."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    out = x * cos
    out[..., :h] -= x2 * sin
    out[..., h:] += x1 * sin
    return out


class ScaledSinusoidal(nn.Module):
    """Fixed sinusoidal positions times one learned scale (Cramming's choice: cheap and length-agnostic)."""

    def __init__(self, d_model: int, max_seq_len: int):
        super().__init__()
        pos = torch.arange(max_seq_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_seq_len, d_model)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)
        self.register_buffer("table", table, persistent=False)
        self.scale = nn.Parameter(torch.tensor(d_model**-0.5))

    def forward(self, seq_len: int) -> Tensor:
        return self.table[:seq_len] * self.scale


class Embeddings(nn.Module):
    """Token embedding plus absolute positions (learned or scaled sinusoidal), then optional norm and dropout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos: nn.Module | None = None
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        elif cfg.positions == "sinusoidal":
            self.pos = ScaledSinusoidal(cfg.d_model, cfg.max_seq_len)
        self.norm = make_norm(cfg) if cfg.embedding_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)

    def position_table(self, seq_len: int) -> Tensor | None:
        if isinstance(self.pos, nn.Embedding):
            return self.pos.weight[:seq_len]
        return self.pos(seq_len) if self.pos is not None else None

    def forward(self, input_ids: Tensor, positions: Tensor | None = None) -> Tensor:
        """`positions` (B, L): per-row position ids (left-padded generation); default 0..L-1."""
        x = self.tok(input_ids)
        pos = self.position_table(input_ids.shape[1] if positions is None else int(positions.max()) + 1)
        if pos is not None and positions is not None:
            pos = pos[positions]
        if pos is not None:
            x = x + pos
        return self.drop(self.norm(x))


class Attention(nn.Module):
    """Multi-head self-attention with one fused QKV projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.out.is_residual_out = True
        self.dropout = cfg.dropout
        self.scale = mup.attention_scale(cfg)

    def forward(self, x: Tensor, mask: Tensor | None, causal: bool, rope: tuple[Tensor, Tensor] | None,
                kv: AppendKV | None = None) -> Tensor:
        B, L, _ = x.shape
        # widths come from the projection, not from x: under tensor parallelism a rank holds n_heads / tp heads
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, -1)
        qk, v = qkv[:, :, :2], qkv[:, :, 2].transpose(1, 2)
        if rope is not None:  # q and k in one call, before the transpose: 3x faster on CPU than per head
            qk = apply_rotary(qk, *rope)
        q, k = qk.permute(2, 0, 3, 1, 4)
        if kv is not None:
            k, v = kv(k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None, scale=self.scale,
        )
        return self.out(y.transpose(1, 2).reshape(B, L, -1))


def ffn_hidden(cfg: ModelConfig) -> int:
    """Width after the activation: `d_ff` for a plain MLP, half of it for a gated one (Cramming's convention:
    `d_ff` is always the width of the input projection, which a GLU splits into value and gate)."""
    return cfg.d_ff // 2 if cfg.ffn != "gelu" else cfg.d_ff


class FeedForward(nn.Module):
    """Plain (GELU) or gated (GEGLU / SwiGLU) MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.ffn != "gelu"
        self.act = F.silu if cfg.ffn == "swiglu" else F.gelu
        self.inp = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.out = nn.Linear(ffn_hidden(cfg), cfg.d_model, bias=cfg.bias)
        self.out.is_residual_out = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        if self.gated:
            h, gate = h.chunk(2, dim=-1)
            h = self.act(h) * gate
        else:
            h = self.act(h)
        return self.out(self.drop(h))


class Block(nn.Module):
    """One transformer block, pre- or post-norm; the feed-forward may be a mixture of experts.

    Pre-norm blocks right after a normalised embedding skip their first norm (as ModernBERT does): a second norm
    in a row would only re-normalise an already normalised input.
    """

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        from cramlm.models.moe import MoE, uses_moe

        self.pre = cfg.norm_position == "pre"
        skip_first = self.pre and index == 0 and cfg.embedding_norm
        self.attn_norm = nn.Identity() if skip_first else make_norm(cfg)
        self.attn = Attention(cfg)
        self.ffn_norm = make_norm(cfg)
        self.ffn = MoE(cfg) if uses_moe(cfg, index) else FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def _ffn(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if isinstance(self.ffn, FeedForward):
            return self.ffn(x), None, None
        return self.ffn(x)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, causal: bool = False, rope: tuple[Tensor, Tensor] | None = None,
        kv: AppendKV | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Returns (hidden, MoE aux loss or None, MoE expert load or None)."""
        if self.pre:
            x = x + self.drop(self.attn(self.attn_norm(x), mask, causal, rope, kv))
            h, aux, load = self._ffn(self.ffn_norm(x))
            return x + self.drop(h), aux, load
        x = self.attn_norm(x + self.drop(self.attn(x, mask, causal, rope, kv)))
        h, aux, load = self._ffn(x)
        return self.ffn_norm(x + self.drop(h)), aux, load


class Trunk(nn.Module):
    """Embeddings, blocks and final norm: everything but the head; the encoder and decoder extend it."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.rotary = Rotary(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta) \
            if cfg.positions == "rotary" else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = make_norm(cfg) if cfg.final_norm else nn.Identity()

    def hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, causal: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """Returns (hidden states, summed MoE aux loss or None, metrics). With a `cache` (causal generation),
        `input_ids` are the tokens that follow the cached ones and `attention_mask` marks their left padding."""
        L = input_ids.shape[1]
        if L > self.cfg.max_seq_len:
            raise CramlmError(f"sequence length {L} exceeds model.max_seq_len={self.cfg.max_seq_len}")
        if cache is None:
            mask = attention_bias_mask(attention_mask, causal, L)
            rope = self.rotary(L) if self.rotary is not None else None
            x = self.embed(input_ids)
        else:
            positions, mask, causal = cache.step(attention_mask, L)
            rope = self.rotary.at(positions) if self.rotary is not None else None
            x = self.embed(input_ids, positions)
        aux_total: Tensor | None = None
        loads = []
        for i, block in enumerate(self.blocks):
            x, aux, load = block(x, mask, causal, rope, None if cache is None else cache.layer(i))
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
                loads.append(load)
        metrics: dict[str, Tensor] = {}
        if loads:
            load = torch.stack(loads).mean(0)
            metrics = {"moe_load_max": load.max().detach() * load.numel(), "moe_load": load.detach()}
        return self.final_norm(x), aux_total, metrics


def attention_bias_mask(attention_mask: Tensor | None, causal: bool, L: int) -> Tensor | None:
    """A boolean SDPA mask (True = attend) of shape (B, 1, L, L) or (B, 1, 1, L); None when nothing is masked."""
    if attention_mask is None:
        return None
    keep = attention_mask.bool()[:, None, None, :]
    if causal:
        keep = keep & torch.ones(L, L, dtype=torch.bool, device=keep.device).tril()
    return keep


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """The one place weights are initialised: normal(0, init_std), residual outputs scaled by 1/sqrt(2 n_layers),
    hidden matrices by 1/sqrt(width ratio) under muP."""
    from cramlm.models.moe import MoE

    hidden = mup.hidden_init_std(cfg)
    residual = hidden / math.sqrt(2 * cfg.n_layers)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            std = cfg.init_std if mup.is_readout(m) else residual if getattr(m, "is_residual_out", False) else hidden
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, cfg.init_std)
        elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, MoE):
            nn.init.normal_(m.w_in, 0.0, hidden)
            nn.init.normal_(m.w_out, 0.0, residual)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean token cross-entropy over labels != -100 (0 when there are none, rather than NaN)."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)
