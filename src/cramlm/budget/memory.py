"""Memory per device for data-parallel strategies: model states plus an activation estimate.

DDP and ZeRO-1 count what PyTorch allocates when cramlm trains them: the weights stay fp32 and autocast computes
in bf16/fp16, so a parameter costs 4 bytes (fp32 weight) + 4 (fp32 gradient) + 8 (Adam's momentum and
variance), and on more than one device DDP adds 4 (its gradient buckets, a second fp32 copy of the gradients
that the all-reduce works on): 20 bytes under DDP, 16 in one process, in mixed precision as in fp32. ZeRO-1
shards Adam's 8 bytes over the N devices. Autocast's cached 16-bit weight copies (2 bytes per parameter while
forward and backward run) are left to the HEADROOM below, with the CUDA context and the allocator's slack.

ZeRO-2/3 follow Rajbhandari et al. 2020 ("ZeRO", section 3.1 and figure 1), which matches FSDP's mixed
precision (16-bit compute copies of the sharded fp32 weights, gathered a block at a time): 2 bytes (16-bit
weight) + 2 (gradient) + K=12 (fp32 weight, momentum, variance); ZeRO-2 shards the gradients and optimizer
states, ZeRO-3 also the weights; ZeRO-3 with offload keeps the optimizer states in host memory (ZeRO-Offload),
leaving the sharded 16-bit weights and gradients on the device. docs/plan.md describes the model.
"""

from __future__ import annotations

from cramlm.config import ModelConfig

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "zero3_offload")
GB = 1e9
# Left free for the CUDA context, allocator fragmentation and temporary buffers when deciding what fits.
HEADROOM = 0.9


DDP_BUCKET_BYTES = 4  # DDP's gradient buckets: an fp32 copy of every gradient (gradient_as_bucket_view=False)


def state_bytes_per_param(mixed_precision: bool = True) -> tuple[int, int, int]:
    """(weight, gradient, optimizer) bytes per parameter for Adam under ZeRO's accounting (ZeRO-2/3):
    (2, 2, 12) mixed, (4, 4, 8) fp32."""
    return (2, 2, 12) if mixed_precision else (4, 4, 8)


def replicated_bytes_per_param(mixed_precision: bool = True) -> tuple[int, int, int]:
    """(weight, gradient, optimizer) bytes per parameter as one process trains (DDP, ZeRO-1): fp32 weight, fp32
    gradient, Adam's two fp32 moments, with or without autocast (which computes in 16 bits from fp32 weights)."""
    return (4, 4, 8)


def model_state_bytes(params: float, strategy: str, n_devices: int = 1, mixed_precision: bool = True) -> float:
    """Bytes of weights, gradients and optimizer states on each device (see the module docstring)."""
    w, g, k = state_bytes_per_param(mixed_precision)
    rw, rg, rk = replicated_bytes_per_param(mixed_precision)
    n = max(1, n_devices)
    bucket = DDP_BUCKET_BYTES if n > 1 else 0  # one process trains the model unwrapped
    per_device = {
        "ddp": rw + rg + bucket + rk,
        "zero1": rw + rg + bucket + rk / n,
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
