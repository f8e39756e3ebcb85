"""Memory per device for data-parallel strategies: model states (ZeRO's accounting) plus an activation estimate.

Model states follow Rajbhandari et al. 2020 ("ZeRO", section 3.1 and figure 1): with mixed-precision Adam a
parameter costs 2 bytes (fp16/bf16 weight) + 2 (gradient) + K=12 (fp32 master weight, momentum, variance).
DDP replicates all of it; ZeRO-1 shards the optimizer states over the N devices, ZeRO-2 also the gradients,
ZeRO-3 also the weights; ZeRO-3 with offload keeps the optimizer states in host memory (ZeRO-Offload), leaving
the sharded 16-bit weights and gradients on the device. Plain fp32 training is 4 + 4 + 8 (no master copy).
"""

from __future__ import annotations

from cramlm.config import ModelConfig

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "zero3_offload")
GB = 1e9
# Left free for the CUDA context, allocator fragmentation and temporary buffers when deciding what fits.
HEADROOM = 0.9


def state_bytes_per_param(mixed_precision: bool = True) -> tuple[int, int, int]:
    """(weight, gradient, optimizer) bytes per parameter for Adam: (2, 2, 12) mixed, (4, 4, 8) fp32."""
    return (2, 2, 12) if mixed_precision else (4, 4, 8)


def model_state_bytes(params: float, strategy: str, n_devices: int = 1, mixed_precision: bool = True) -> float:
    """Bytes of weights, gradients and optimizer states on each device (ZeRO paper, figure 1)."""
    w, g, k = state_bytes_per_param(mixed_precision)
    n = max(1, n_devices)
    per_device = {
        "ddp": (w + g + k),
        "zero1": w + g + k / n,
        "zero2": w + (g + k) / n,
        "zero3": (w + g + k) / n,
        "zero3_offload": (w + g) / n,
    }
    if strategy not in per_device:
        raise ValueError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    return params * per_device[strategy]


def activation_bytes(cfg: ModelConfig, micro_batch: int, seq_len: int, mask_rate: float | None = None,
                     mixed_precision: bool = True) -> float:
    """Activations kept for the backward pass of one micro-batch, without recomputation (an estimate, +-30%).

    Per token and block we count the values autograd saves: the two norms' inputs and outputs (4d), q, k, v, the
    attention output and the projected output (5d; attention scores are not stored with fused SDPA kernels),
    and the feed-forward's 2 d_ff hidden values (GELU: pre- and post-activation; a gated unit, whose input
    projection of width d_ff splits into value and gate: that projection, then activated gate and product),
    times top_k in MoE blocks. The output head keeps fp32 logits and their gradient for the predicted tokens
    (the masked ones only with a sparse MLM head).
    """
    value_bytes = 2 if mixed_precision else 4
    tokens = micro_batch * seq_len
    moe_blocks = cfg.n_layers // cfg.moe.every if cfg.moe.n_experts else 0
    ffn_runs = cfg.n_layers - moe_blocks + moe_blocks * cfg.moe.top_k
    per_token = cfg.n_layers * 9 * cfg.d_model + ffn_runs * 2 * cfg.d_ff
    predicted = tokens
    if cfg.arch == "encoder" and cfg.sparse_head and mask_rate:
        predicted = micro_batch * round(mask_rate * seq_len)
    head = predicted * cfg.vocab_size * 4 * 2
    return tokens * per_token * value_bytes + head


def memory_per_device(params: float, n_devices: int = 1, activations: float = 0.0,
                      mixed_precision: bool = True) -> dict[str, float]:
    """GB per device for every strategy: model states plus `activations` bytes (which no ZeRO stage shards)."""
    return {s: (model_state_bytes(params, s, n_devices, mixed_precision) + activations) / GB for s in STRATEGIES}


def first_fit(per_device_gb: dict[str, float], device_gb: float,
              strategies: tuple[str, ...] = STRATEGIES) -> str | None:
    """The simplest strategy (DDP first, offload last) that fits the device with headroom; None if none does."""
    return next((s for s in strategies if per_device_gb[s] <= device_gb * HEADROOM), None)
