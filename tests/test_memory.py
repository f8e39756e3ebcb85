import pytest

from cramlm.budget.memory import activation_bytes, first_fit, memory_per_device, model_state_bytes
from cramlm.config import ModelConfig


def test_zero_paper_worked_example():
    # Rajbhandari et al. 2020, figure 1: 7.5B parameters, 64 devices, K = 12 (ZeRO-2/3 as FSDP trains them).
    gb = {s: model_state_bytes(7.5e9, s, 64) / 1e9 for s in ("ddp", "zero1", "zero2", "zero3")}
    # DDP/ZeRO-1 under autocast: fp32 weight 4 + fp32 gradient 4 + DDP bucket 4 + Adam 8 (/64)
    assert gb["ddp"] == pytest.approx(7.5 * 20)
    assert gb["zero1"] == pytest.approx(7.5 * (12 + 8 / 64))
    assert gb["zero2"] == pytest.approx(16.6, abs=0.05)
    assert gb["zero3"] == pytest.approx(1.9, abs=0.05)


def test_offload_and_fp32_accounting():
    # offload leaves the 16-bit weights and gradients, sharded: 4 bytes x 1e9 / 4 devices
    assert model_state_bytes(1e9, "zero3_offload", 4) == pytest.approx(1e9)
    # fp32 Adam: 4 + 4 + 8 bytes and DDP's 4-byte bucket; ZeRO-1 on 2 devices shards the 8 optimizer bytes
    assert model_state_bytes(1e6, "ddp", 2, mixed_precision=False) == pytest.approx(20e6)
    assert model_state_bytes(1e6, "zero1", 2, mixed_precision=False) == pytest.approx(16e6)
    # one process trains unwrapped: no bucket
    assert model_state_bytes(1e6, "ddp", 1, mixed_precision=False) == pytest.approx(16e6)
    with pytest.raises(ValueError):
        model_state_bytes(1e6, "zero4")


def test_activation_estimate_by_hand():
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_ff=256, vocab_size=1000, ffn="gelu", arch="decoder",
                      sparse_head=False)
    # per token: 2 layers x (9 x 64 + 2 x 256) = 2176 values x 2 bytes; head: 1000 fp32 logits + grads
    tokens = 4 * 32
    assert activation_bytes(cfg, 4, 32) == pytest.approx(tokens * 2176 * 2 + tokens * 1000 * 8)
    # a sparse MLM head only keeps the masked positions' logits: round(0.25 x 32) = 8 per sequence
    enc = cfg.model_copy(update={"arch": "encoder", "sparse_head": True})
    assert activation_bytes(enc, 4, 32, mask_rate=0.25, mixed_precision=False) == pytest.approx(
        tokens * 2176 * 4 + 4 * 8 * 1000 * 8)
    moe = ModelConfig(n_layers=2, d_model=64, n_heads=4, d_ff=256, ffn="gelu", moe={"n_experts": 4, "top_k": 2,
                                                                                   "every": 2})
    dense = moe.model_copy(update={"moe": moe.moe.model_copy(update={"n_experts": 0})})
    # one MoE block with top-2 routing keeps a second feed-forward's worth of values per token
    assert activation_bytes(moe, 1, 8) - activation_bytes(dense, 1, 8) == pytest.approx(8 * 2 * 256 * 2)


def test_strategy_that_fits():
    gb = memory_per_device(7.5e9, 64)
    assert first_fit(memory_per_device(5e9, 64), 141) == "ddp"  # 100 GB fits 90% of 141
    assert first_fit(gb, 141) == "zero1"  # DDP's 150 GB does not, ZeRO-1's 91 GB does
    assert first_fit(gb, 80) == "zero2"
    assert first_fit(gb, 40) == "zero2"  # 16.6 GB fits 90% of 40
    assert first_fit(gb, 16) == "zero3"  # 16.6 GB does not fit 14.4, 1.9 does
    assert first_fit(memory_per_device(7.5e9, 1), 24) is None
    # 2e9 parameters on one 24 GB device: 32 GB of states unless Adam's 24 GB go to the host
    assert first_fit(memory_per_device(2e9, 1), 24) == "zero3_offload"
