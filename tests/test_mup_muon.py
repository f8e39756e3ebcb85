"""muP (parameter groups, multipliers, coordinate check, export) and the Muon optimizer (state, FLOPs, resume)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from cramlm.budget.flops import optimizer_flops_per_step
from cramlm.config import resolve_config
from cramlm.errors import CramlmError
from cramlm.export.hf import export_model, import_model
from cramlm.models import build_model, mup
from cramlm.train.coord_check import coord_check, growth
from cramlm.train.optim import MuonWithAdamW, build_optimizer, set_lr

SMALL = {"n_layers": 2, "d_ff": 256, "vocab_size": 97, "max_seq_len": 16}


def cfg_of(preset, *overrides, **kw):
    kv = {**SMALL, **kw}
    return resolve_config(model=preset, overrides=[f"model.{k}={v}" for k, v in kv.items()] + list(overrides))


def test_mup_groups_scale_hidden_matrices_only():
    cfg = cfg_of("bert-crammed", d_model=128, n_heads=2, parametrization="mup", base_width=32)
    model = build_model(cfg.model)
    hidden = {id(p) for p in mup.hidden_matrices(model)}
    names = {n for n, p in model.named_parameters() if id(p) in hidden}
    assert names == {f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.out", "ffn.inp", "ffn.out")
                     } | {"transform.dense.weight"}
    optimizer = build_optimizer(model, cfg.train.model_copy(update={"lr": 1e-3}))
    set_lr(optimizer, 1e-3)
    for group in optimizer.param_groups:
        is_hidden = {id(p) for p in group["params"]} <= hidden
        assert group["lr"] == pytest.approx(1e-3 * (32 / 128 if is_hidden else 1.0))
        assert is_hidden or not ({id(p) for p in group["params"]} & hidden)  # no group mixes the two
    standard = build_model(cfg_of("bert-crammed", d_model=128, n_heads=2).model)
    assert {g["lr_mult"] for g in build_optimizer(standard, cfg.train.model_copy(update={"lr": 1e-3})).param_groups} \
        == {1.0}
    # init: hidden matrices narrower by sqrt(width ratio), embeddings as given; logits and attention rescaled
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02 / 2, rel=0.05)
    assert model.embed.tok.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.logit_mult == 0.25 and model.blocks[0].attn.scale == 1 / 64
    assert mup.width_ratio(cfg_of("bert-crammed", d_model=128, n_heads=2, parametrization="mup").model) == 1.0


def test_coordinate_check_is_flat_under_mup_and_grows_under_standard():
    ratios = growth(coord_check("encoder", widths=(32, 64, 128), steps=3))
    for layer in ("block 0", "block 1", "logits"):
        assert 0.8 < ratios["mup", layer] < 1.25, (layer, ratios)
    # 4x the width and 3 steps: the standard model's later activations have already grown 1.4x-4x
    assert ratios["standard", "block 1"] > 1.4 * ratios["mup", "block 1"]
    assert ratios["standard", "logits"] > 1.5 * ratios["mup", "logits"]


@pytest.mark.parametrize("preset,auto", [("bert-crammed", AutoModelForMaskedLM), ("gpt-small", AutoModelForCausalLM)])
def test_mup_export_folds_the_multipliers(tmp_path, preset, auto):
    cfg = cfg_of(preset, d_model=64, n_heads=2, parametrization="mup", base_width=16).model
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    export_model(model, cfg, tmp_path)
    hf = auto.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits
        torch.testing.assert_close(hf(input_ids=ids).logits, ours, rtol=0, atol=1e-4)
        back, back_cfg = import_model(tmp_path)
        assert back_cfg.parametrization == "standard"
        torch.testing.assert_close(back(ids).logits, ours, rtol=0, atol=1e-4)


def _steps(model, optimizer, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        ids = torch.randint(5, 97, (4, 16), generator=g)
        set_lr(optimizer, 3e-3)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_muon_updates_hidden_matrices_and_its_state_round_trips(tmp_path):
    from cramlm.train.checkpoint import read_state, write_state

    cfg = cfg_of("gpt-small", "train.optimizer=muon", d_model=64, n_heads=2)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.train.model_copy(update={"lr": 3e-3}))
    assert isinstance(optimizer, MuonWithAdamW)
    muon_params = {id(p) for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    assert muon_params == {id(p) for p in mup.hidden_matrices(model)}
    assert id(model.embed.tok.weight) not in muon_params
    _steps(model, optimizer, 3)
    assert all("momentum_buffer" in optimizer.state[p] for g in optimizer.param_groups if g["muon"] for p in g["params"])
    write_state(tmp_path / "ck", model, optimizer)
    torch.manual_seed(1)
    other = build_model(cfg.model)
    other_opt = build_optimizer(other, cfg.train.model_copy(update={"lr": 3e-3}))
    read_state(tmp_path / "ck", other, other_opt)
    _steps(model, optimizer, 2, seed=5)
    _steps(other, other_opt, 2, seed=5)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_muon_flops_are_counted_per_step():
    cfg = cfg_of("gpt-small", d_model=64, n_heads=2).model
    assert optimizer_flops_per_step(cfg, "adamw") == 0
    d, ff = 64, 256
    per_matrix = [(3 * d, d), (d, d), (ff, d), (ff // 2, d)]  # qkv, out, SwiGLU input (both halves), output
    expected = 2 * sum(5 * (4 * min(s) ** 2 * max(s) + 2 * min(s) ** 3) for s in per_matrix)
    assert optimizer_flops_per_step(cfg, "muon") == expected


@pytest.mark.parametrize("strategy", ["zero1", "fsdp", "tp", "fsdp+tp"])
def test_muon_is_refused_where_matrices_are_sharded(strategy):
    from cramlm.config import TrainConfig
    from cramlm.train.distributed import Distributed, DistributedStrategy

    with pytest.raises(CramlmError, match="train.optimizer=muon"):
        DistributedStrategy(Distributed(strategy=strategy), TrainConfig(optimizer="muon"))
    DistributedStrategy(Distributed(strategy="ddp"), TrainConfig(optimizer="muon"))  # whole matrices: fine
