"""SWAT sparse training: exact top-K masks, the sparse backward, the schedule, FLOPs counting, resume, export."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cramlm.budget.flops import forward_flops_per_token
from cramlm.config import resolve_config
from cramlm.errors import CramlmError
from cramlm.models import build_model
from cramlm.models.sparse import SwatLinear, keep_count, mask_2_4, pack_bits, topk_mask, unpack_bits
from cramlm.report.html import report
from cramlm.train import checkpoint as ckpt
from cramlm.train import sparsity
from cramlm.train.trainer import train

TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "train.batch_size=8",
        "train.micro_batch_size=4", "budget.hardware=cpu", "train.log_every=1", "train.val_batches=2",
        "train.batch_ramp=none"]
SWAT = ["train.sparsity.method=swat", "train.sparsity.weights=0.75", "train.sparsity.activations=0.5"]


def tiny_cfg(*overrides, model="tiny"):
    return resolve_config(model=model, recipe="demo", overrides=TINY + list(overrides))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.999])
def test_topk_masks_keep_exactly_k_of_the_largest(sparsity):
    x = torch.randn(6, 7, 50, generator=torch.Generator().manual_seed(0))
    mask = topk_mask(x, sparsity, "tensor")
    k = keep_count(x.numel(), sparsity)
    assert mask.sum() == k == max(1, round((1 - sparsity) * x.numel()))
    if k < x.numel():
        assert x.abs()[mask].min() > x.abs()[~mask].max()
    rows = topk_mask(x, sparsity, "row")
    k_row = keep_count(50, sparsity)
    assert (rows.sum(-1) == k_row).all()
    for kept, row, m in zip(x.abs().reshape(-1, 50), x.reshape(-1, 50), rows.reshape(-1, 50)):
        if k_row < 50:
            assert kept[m].min() > kept[~m].max()


def test_2_4_mask_keeps_the_two_largest_of_every_four():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    mask = mask_2_4(w)
    groups, kept = w.abs().reshape(8, 4, 4), mask.reshape(8, 4, 4)
    assert (kept.sum(-1) == 2).all()
    assert (groups.masked_fill(~kept, float("inf")).amin(-1) >= groups.masked_fill(kept, -1).amax(-1)).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        mask_2_4(torch.randn(4, 6))


def test_bit_packing_round_trips():
    mask = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(2)) > 0.6
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.shape), mask)


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_sparse_backward_reaches_the_dense_weights(granularity):
    torch.manual_seed(0)
    dense = torch.nn.Linear(24, 12, bias=True)
    layer = SwatLinear.sparsify(torch.nn.Linear(24, 12, bias=True), 0.75, 0.5, granularity)
    layer.load_state_dict(dense.state_dict())
    x = torch.randn(3, 5, 24, requires_grad=True)
    g = torch.randn(3, 5, 12)

    layer(x).backward(g)  # inactive (the dense warm-up): exactly nn.Linear
    dense_x = x.detach().clone().requires_grad_()
    dense(dense_x).backward(g)
    assert torch.equal(layer.weight.grad, dense.weight.grad) and torch.equal(x.grad, dense_x.grad)

    layer.active = True
    layer.weight.grad = layer.bias.grad = x.grad = None
    y = layer(x)
    w_mask = topk_mask(layer.weight, 0.75, granularity)
    a_mask = topk_mask(x, 0.5, granularity)
    assert w_mask.sum() == (keep_count(24 * 12, 0.75) if granularity == "tensor" else 12 * keep_count(24, 0.75))
    torch.testing.assert_close(y, F.linear(x, layer.weight * w_mask, layer.bias))
    y.backward(g)
    g2 = g.reshape(-1, 12)
    torch.testing.assert_close(layer.weight.grad, g2.t() @ (x * a_mask).detach().reshape(-1, 24))
    torch.testing.assert_close(x.grad, g @ (layer.weight * w_mask).detach())
    torch.testing.assert_close(layer.bias.grad, g2.sum(0))
    # straight-through: weights outside the forward's mask still get a gradient
    assert (layer.weight.grad[~w_mask] != 0).sum() > 0.5 * (~w_mask).sum()
    with torch.no_grad():  # evaluation: the masked forward without the autograd function
        torch.testing.assert_close(layer(x), y.detach())
        layer.weight.data.copy_(torch.randn(12, 24))  # as a fused optimizer step: `_version` stays the same
        fresh = F.linear(x, layer.weight * topk_mask(layer.weight, 0.75, granularity), layer.bias)
        torch.testing.assert_close(layer(x), fresh)


def test_saved_activations_shrink():
    layer = SwatLinear.sparsify(torch.nn.Linear(256, 256, bias=False), 0.8, 0.8, "tensor")
    layer.active = True
    x = torch.randn(64, 256, requires_grad=True)
    saved = []

    def pack(t):
        if not isinstance(t, torch.nn.Parameter) and t.data_ptr() != layer._cache[0].data_ptr():
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    # 20% of the fp32 values plus one bit per element, against 4 bytes per element for a dense linear
    assert sum(saved) == keep_count(x.numel(), 0.8) * 4 + x.numel() // 8


def test_schedule_and_counted_flops():
    cfg = tiny_cfg(*SWAT, "train.sparsity.granularity=row", "train.sparsity.warmup=0.25",
                   "train.sparsity.layers=[attn.qkv, ffn.out]")
    model = build_model(cfg.model)
    swat = sparsity.attach(model, cfg, 128, 0.25, torch.device("cpu"), "fp32")
    assert [n for n, _ in swat.modules] == ["blocks.0.attn.qkv", "blocks.0.ffn.out", "blocks.1.attn.qkv",
                                            "blocks.1.ffn.out"]
    assert isinstance(model.blocks[0].attn.out, torch.nn.Linear) and not isinstance(model.blocks[0].attn.out,
                                                                                       SwatLinear)
    fwd = forward_flops_per_token(cfg.model, 128, 0.25)
    d, dff = 32, 64
    lin = 2 * (2 * d * 3 * d + 2 * (dff // 2) * d)  # qkv and ffn.out, two blocks
    kw = keep_count(32, 0.75) / 32  # per row: qkv and ffn.out both have 32 inputs
    ka = keep_count(32, 0.5) / 32
    assert swat.dense_per_token == (fwd, 2 * fwd)
    assert swat.sparse_per_token[0] == pytest.approx(fwd - lin + kw * lin)
    assert swat.sparse_per_token[1] == pytest.approx(2 * (fwd - lin) + (kw + ka) * lin)

    swat.update(0.0, 0)
    assert not swat.active and not any(m.active for _, m in swat.modules)
    swat.update(0.2, 1000)  # 1000 dense tokens
    assert not swat.active
    swat.update(0.25, 2000)  # 1000 more dense tokens, then sparse
    assert swat.active and all(m.active for _, m in swat.modules)
    out = swat.summary(5000)  # 3000 sparse tokens
    assert out["dense_flops"] == pytest.approx(5000 * 3 * fwd)
    assert out["sparse_forward_flops"] == pytest.approx(2000 * fwd + 3000 * swat.sparse_per_token[0])
    assert out["sparse_backward_flops"] == pytest.approx(2000 * 2 * fwd + 3000 * swat.sparse_per_token[1])
    assert out["flops_saved"] == pytest.approx(1 - out["sparse_flops"] / out["dense_flops"])
    assert 0 < out["flops_saved"] < 1


def test_none_leaves_the_model_untouched():
    cfg = tiny_cfg()
    model = build_model(cfg.model)
    assert sparsity.attach(model, cfg, 128, 0.25, torch.device("cpu"), "fp32") is None
    assert not any(isinstance(m, SwatLinear) for m in model.modules())


@pytest.mark.parametrize("override,message", [
    ("train.sparsity.layers=[embed.tok]", "embeddings and heads are never sparsified"),
    ("train.sparsity.layers=[decoder]", "embeddings and heads are never sparsified"),
    ("train.sparsity.layers=[attn.q]", "unknown layer 'attn.q'"),
    ("train.sparsity.weights=1.0", "train.sparsity.weights"),
    ("train.sparsity.semi_structured_2_4=true", "set train.sparsity.weights=0.5"),
    ("train.sparsity.method=rigl", "train.sparsity.method"),
])
def test_bad_config_is_one_line(override, message):
    with pytest.raises(CramlmError, match=message) as e:
        tiny_cfg(override)
    assert "\n" not in str(e.value)


def test_refusals_where_it_cannot_work():
    cfg = tiny_cfg(*SWAT[:1], "train.sparsity.weights=0.5", "train.sparsity.semi_structured_2_4=true")
    with pytest.raises(CramlmError, match="needs an Ampere-or-newer CUDA GPU"):
        sparsity.attach(build_model(cfg.model), cfg, 128, 0.25, torch.device("cpu"), "fp32")
    for strategy in ("fsdp", "tp", "fsdp+tp"):
        with pytest.raises(CramlmError, match=re.escape(f"train.strategy={strategy} shards")):
            sparsity.check_strategy(strategy, cfg.train)
    cfg.train.deepspeed.stage = 3
    with pytest.raises(CramlmError, match="deepspeed shards"):
        sparsity.check_strategy("deepspeed", cfg.train)
    for ok in ("single", "ddp", "zero1"):
        sparsity.check_strategy(ok, cfg.train)
    moe = tiny_cfg(*SWAT, "train.sparsity.layers=[ffn.inp]", "model.moe.every=1", model="bert-crammed-moe")
    with pytest.raises(CramlmError, match="names no linear layer"):
        sparsity.attach(build_model(moe.model), moe, 128, 0.25, torch.device("cpu"), "fp32")


@pytest.fixture(scope="module")
def data_dir(tiny_dataset):
    return tiny_dataset


def test_resume_is_bit_identical_across_the_phase_change(data_dir, tmp_path):
    cfg = tiny_cfg(*SWAT, "train.sparsity.warmup=0.5", "budget.limit=12steps", "train.checkpoint_every=4steps",
                   "train.keep_checkpoints=5")
    ref = train(cfg, data_dir, tmp_path / "ref", progress=False)
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "ref", run)
    for path in [run / "final", run / "results", run / "step-8", run / "step-12"]:
        shutil.rmtree(path, ignore_errors=True)
    for path in ckpt.checkpoint_dirs(run):
        if path.name != "step-4":
            shutil.rmtree(path)
    got = train(cfg, data_dir, run, resume=True, progress=False)
    assert got["steps"] == 12
    a = ckpt.load_weights(tmp_path / "ref" / "final" / "model.safetensors")
    b = ckpt.load_weights(run / "final" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for key in ("sparse_forward_flops", "sparse_backward_flops", "dense_flops"):
        assert got["sparsity"][key] == ref["sparsity"][key]
    assert got["val_loss"] == ref["val_loss"]


def test_run_counts_flops_and_exports_the_masked_model(data_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from cramlm.eval.heldout import heldout_loss
    from cramlm.data.store import Dataset
    from cramlm.export.hf import export_model

    cfg = tiny_cfg(*SWAT, "budget.limit=6steps", "train.sparsity.warmup=0.34", model="bert-crammed")
    res = train(cfg, data_dir, tmp_path / "run", progress=False)
    sp = res["sparsity"]
    saved = json.loads((tmp_path / "run" / "results" / "train.json").read_text())["sparsity"]
    assert saved == sp and sp["layers"] == 8
    assert sp["dense_flops"] == pytest.approx(res["tokens"] * res["flops_per_token"])
    # two dense steps of six, then 75% of the block weights and 50% of their activations skipped
    assert 0.2 < sp["flops_saved"] < 0.6 and res["mfu"] is not None
    model, run_cfg = ckpt.load_model(tmp_path / "run")
    for _, layer in sparsity.targets(model, run_cfg.train.sparsity.layers):
        assert (layer.weight != 0).sum() == keep_count(layer.weight.numel(), 0.75)
    # the masked final/ is the model the last sparse forward ran: its held-out loss is the run's
    t = run_cfg.train
    loss = heldout_loss(model, Dataset(data_dir), "mlm", t.mask_rate, t.val_batches, t.micro_batch_size,
                        seed=t.seed)
    assert loss == pytest.approx(res["val_loss"], abs=1e-5)
    table = report([tmp_path / "run"], "md")
    header, row = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
                   if line.startswith("| ")][:2]
    assert dict(zip(header, row))["sparse FLOPs"] == f"{sp['sparse_flops']:.3g} (-{100 * sp['flops_saved']:.0f}%)"
    export_model(model, run_cfg.model, tmp_path / "hf")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(5, run_cfg.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("model", ["tiny", "gpt-small"])
def test_export_dense_keeps_every_weight_for_either_objective(data_dir, tmp_path, model):
    cfg = tiny_cfg(*SWAT, "budget.limit=3steps", "train.sparsity.warmup=0", "train.sparsity.export=dense",
                   model=model)
    res = train(cfg, data_dir, tmp_path / "run", progress=False)
    assert res["sparsity"]["flops_saved"] > 0.2 and res["val_loss"] > 0
    weights = ckpt.load_weights(Path(tmp_path / "run" / "final" / "model.safetensors"))
    qkv = [w for name, w in weights.items() if name.endswith("qkv.weight")]
    assert len(qkv) == 2 and all((w != 0).all() for w in qkv)


def test_cli_refuses_a_sparse_head_in_one_line(cli, data_dir, tmp_path):
    code, _, err = cli("train", data_dir, "--model", "tiny", "--out", tmp_path / "run", *TINY, *SWAT,
                       "train.sparsity.layers=[head]")
    assert code == 2 and "embeddings and heads are never sparsified" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.dist
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_data_parallel_strategies_train_sparse_and_write_the_masked_model(data_dir, tmp_path, strategy):
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (optional extra)")
    run = tmp_path / "run"
    extra = ["train.strategy=deepspeed", "train.deepspeed.stage=2", "train.optimizer=adamw"] \
        if strategy == "deepspeed" else ["train.strategy=ddp"]
    proc = subprocess.run([sys.executable, "-m", "cramlm", "train", str(data_dir), "--model", "tiny", "--recipe",
                           "demo", "--budget", "4steps", "--nproc", "2", "--out", str(run), *TINY, *SWAT, *extra],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((run / "results" / "train.json").read_text())
    assert res["sparsity"]["flops_saved"] > 0.2
    model, _ = ckpt.load_model(run)
    qkv = model.blocks[0].attn.qkv.weight
    assert (qkv != 0).sum() == keep_count(qkv.numel(), 0.75)


def test_autocast_and_compile_keep_the_sparse_maths():
    torch.manual_seed(0)
    layer = SwatLinear.sparsify(torch.nn.Linear(64, 32), 0.5, 0.5, "tensor")
    layer.active = True
    x = torch.randn(4, 64, requires_grad=True)
    ref = layer(x)
    ref.sum().backward()
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == layer.weight.grad.dtype == torch.float32
    torch.testing.assert_close(layer.weight.grad, grad, rtol=0.05, atol=0.05)
    layer.weight.grad = None
    compiled = torch.compile(layer, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(layer.weight.grad, grad)
