import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from cramlm.budget.flops import flops_per_token, param_counts
from cramlm.config import resolve_config
from cramlm.models import build_model

aten = torch.ops.aten
# PyTorch's counter knows the GPU attention kernels but not the CPU flash kernel: give it the same formulas.
CPU_SDPA = {
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *_, **__: sdpa_backward_flop_count(g, q, k, v),
}


def small(preset, **kw):
    kv = {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "vocab_size": 101, "max_seq_len": 32, **kw}
    return resolve_config(model=preset, overrides=[f"model.{k}={v}" for k, v in kv.items()]).model


def measured_flops_per_token(cfg, B=4, L=32, k=8):
    model = build_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (B, L))
    pos = torch.stack([torch.randperm(L)[:k] for _ in range(B)]) if cfg.arch == "encoder" else None
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        model(ids, labels=ids, mask_positions=pos).loss.backward()
    return counter.get_total_flops() / (B * L)


@pytest.mark.parametrize("preset,kw,mask_rate", [
    ("bert-crammed", {}, 0.25),
    ("bert-original", {}, None),
    ("gpt-small", {}, None),
    ("bert-crammed-moe", {"moe.n_experts": 4, "moe.capacity_factor": 1.5}, 0.25),
    ("bert-crammed-moe", {"moe.n_experts": 8, "moe.top_k": 1, "moe.every": 1}, 0.25),
])
def test_flops_match_pytorch_counter(preset, kw, mask_rate):
    cfg = small(preset, **kw)
    ours = flops_per_token(cfg, 32, mask_rate)
    measured = measured_flops_per_token(cfg)
    assert ours == pytest.approx(measured, rel=0.02)


def test_sparse_head_and_sequence_length_change_the_count():
    cfg = small("bert-crammed")
    dense = flops_per_token(cfg, 32)
    sparse = flops_per_token(cfg, 32, 0.25)
    head = 3 * (2 * 64 * 101 + 2 * 64 * 64)
    assert dense - sparse == pytest.approx(0.75 * head)
    assert flops_per_token(cfg, 64) - dense == pytest.approx(3 * 2 * 4 * 32 * 64)  # attention grows with L


def test_param_counts_match_the_model():
    for preset in ("bert-crammed", "bert-original", "gpt-small"):
        cfg = small(preset)
        counts = param_counts(cfg)
        model = build_model(cfg)
        assert counts["total"] == sum(p.numel() for p in model.parameters())
        assert counts["total"] == counts["active"] == counts["embedding"] + counts["non_embedding"]
    assert param_counts(small("bert-original"))["embedding"] == (101 + 32) * 64  # tokens + learned positions
    untied = param_counts(small("gpt-small", tie_embeddings=False))
    assert untied["embedding"] == 2 * 101 * 64


def test_moe_active_params_count_top_k_experts():
    cfg = small("bert-crammed-moe", **{"moe.n_experts": 4, "moe.top_k": 1, "moe.every": 1})
    counts = param_counts(cfg)
    expert = 64 * 128 + 64 * 64  # GEGLU: input 128 wide, value half 64
    assert counts["total"] - counts["active"] == 2 * 3 * expert
    dense = param_counts(small("bert-crammed"))
    router = 64 * 4
    assert counts["active"] == dense["total"] + 2 * router


def test_full_size_presets_are_about_the_published_sizes():
    assert param_counts(resolve_config(model="bert-crammed").model)["total"] == pytest.approx(120e6, rel=0.02)
    assert param_counts(resolve_config(model="bert-original").model)["total"] == pytest.approx(110e6, rel=0.02)
