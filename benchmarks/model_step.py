"""Model step speed: forward + backward tokens/s of cramlm's `bert-crammed` vs. transformers' `BertForMaskedLM`
(attn_implementation="sdpa") of the same width, depth, vocabulary and sequence length, on the same MLM batches.

The models are timed in alternating rounds (median of rounds) so that machine noise hits both alike. Also printed:
FLOPs per token from `cramlm.budget.flops` for both (BERT = the bert-original layout at this size with its dense
head), which explains most of the gap: the sparse head and the 1536-wide GEGLU do less work per token.

    .venv/bin/python benchmarks/model_step.py [--layers 16] [--batch 16] [--rounds 5] [--device cpu|cuda]

On a GPU pass `--device cuda --bf16 --compile` (autocast bf16, torch.compile on both).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cramlm.budget.flops import flops_per_token
from cramlm.config import resolve_config
from cramlm.models import build_model


def hf_bert(cfg):
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len,
        attn_implementation="sdpa",
    ))


def mlm_batch(cfg, batch: int, seq_len: int, mask_rate: float, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (batch, seq_len), generator=g)
    k = round(mask_rate * seq_len)
    positions = torch.stack([torch.randperm(seq_len, generator=g)[:k] for _ in range(batch)])
    labels = torch.full_like(ids, -100).scatter(1, positions, ids.gather(1, positions))
    ids = ids.scatter(1, positions, 4)
    return ids.to(device), labels.to(device), positions.to(device)


def step_fn(model, ours: bool, ids, labels, positions, bf16: bool, device):
    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if ours:
                loss = model(ids, labels=labels, mask_positions=positions).loss
            else:
                loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def timed(step, device, iters: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bert-crammed")
    p.add_argument("--layers", type=int, default=None, help="override n_layers (default: the preset's 16)")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--mask-rate", type=float, default=0.25)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=2, help="steps per round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()

    overrides = [f"model.n_layers={args.layers}"] if args.layers else []
    cfg = resolve_config(model=args.preset, overrides=overrides).model
    device = torch.device(args.device)
    L = cfg.max_seq_len
    torch.manual_seed(0)
    models = {"cramlm " + args.preset: build_model(cfg).to(device).train(), "HF BertForMaskedLM": hf_bert(cfg).to(device).train()}
    ids, labels, positions = mlm_batch(cfg, args.batch, L, args.mask_rate, device)
    steps = {}
    for name, model in models.items():
        run = torch.compile(model) if args.compile else model
        steps[name] = step_fn(run, name.startswith("cramlm"), ids, labels, positions, args.bf16, device)
        steps[name]()  # warm-up (and compile)
        steps[name]()
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name in models:
            times[name].append(timed(steps[name], device, args.iters))

    bert_cfg = resolve_config(model="bert-original", overrides=[
        f"model.{k}={getattr(cfg, k)}" for k in ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size", "max_seq_len")
    ]).model
    flops = {"cramlm " + args.preset: flops_per_token(cfg, L, args.mask_rate),
             "HF BertForMaskedLM": flops_per_token(bert_cfg, L)}
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"{'bf16' if args.bf16 else 'fp32'}{', compiled' if args.compile else ''}; "
          f"{cfg.n_layers} layers, d_model {cfg.d_model}, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}, "
          f"batch {args.batch} x {L} tokens, mask rate {args.mask_rate}")
    print(f"{'model':<24}{'params':>10}{'GFLOP/token':>13}{'s/step':>9}{'tokens/s':>11}")
    rate = {}
    for name, model in models.items():
        sec = statistics.median(times[name])
        rate[name] = args.batch * L / sec
        n = sum(p.numel() for p in model.parameters())
        print(f"{name:<24}{n / 1e6:>9.1f}M{flops[name] / 1e9:>13.3f}{sec:>9.3f}{rate[name]:>11,.0f}")
    ours, theirs = rate.values()
    f_ours, f_theirs = flops.values()
    print(f"speed-up: {ours / theirs:.2f}x tokens/s (FLOPs per token ratio {f_theirs / f_ours:.2f}x)")


if __name__ == "__main__":
    main()
