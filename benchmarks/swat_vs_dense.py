"""SWAT vs dense training at an equal token budget: the same model, data, batch and learning rate, dense and with
SWAT at several sparsities (weights and activations alike); held-out loss, counted training FLOPs saved, memory
saved for the backward pass, and tokens/s side by side.

    .venv/bin/python benchmarks/swat_vs_dense.py [--objectives mlm causal] [--tokens 600000]
        [--sparsities 0 0.5 0.8 0.9] [--granularity tensor] [--warmup 0.05] [--work DIR] [--speed] [--table]

Data: the first `--source-mb` MB of every shard of ../shared/data/pretrain, prepared once into WORK (vocab 8192,
sequences of 128). Each arm is `train(...)` in-process: a 4x256 encoder (MLM) or decoder (causal), batch 64 in
micro-batches of 32, AdamW at 1e-3 (one-cycle), `budget.limit=TOKENStokens`. Held-out loss: the same validation
sequences and masked positions for every arm (quality_at_budget.SCORE), of `final/` (the masked weights the
sparse forward ran) and of the dense weights in the last checkpoint. Backward memory: the bytes autograd keeps for
the backward of one micro-batch (saved-tensor hooks; parameters and the weight masks, which persist anyway, are
left out), dense vs SWAT active. Rows are appended to WORK/swat.jsonl and skipped when there; `--table` prints.
tokens/s of the runs depends on what else the machine runs meanwhile; `--speed` times one micro-batch forward and
backward per arm with the arms interleaved (median of 10 rounds), which that load slows alike.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from quality_at_budget import SCORE, subset

from cramlm.config import DataConfig, RunConfig, resolve_config
from cramlm.data.loader import BatchLoader
from cramlm.data.prepare import prepare
from cramlm.data.store import Dataset
from cramlm.eval.heldout import heldout_loss
from cramlm.models import build_model
from cramlm.train import checkpoint as ckpt
from cramlm.train import sparsity
from cramlm.train.trainer import train, with_dataset_shape

PRESET = {"mlm": "tiny", "causal": "gpt-small"}
SIZE = ["model.n_layers=4", "model.d_model=256", "model.n_heads=4", "model.d_ff=1024"]
FIXED = ["train.batch_size=64", "train.micro_batch_size=32", "train.lr=1e-3", "train.optimizer=adamw",
         "train.val_every=1000000steps", "train.checkpoint_every=1000000steps", "train.val_batches=4",
         "budget.hardware=cpu"]


def config(objective: str, s: float, args: argparse.Namespace) -> RunConfig:
    swat = [] if s == 0 else ["train.sparsity.method=swat", f"train.sparsity.weights={s}",
                              f"train.sparsity.activations={s}", f"train.sparsity.granularity={args.granularity}",
                              f"train.sparsity.warmup={args.warmup}"]
    return resolve_config(model=PRESET[objective], recipe="demo",
                          overrides=SIZE + FIXED + swat + [f"budget.limit={args.tokens}tokens"])


def saved_bytes(cfg: RunConfig, ds: Dataset, objective: str) -> int:
    """Bytes autograd saves for the backward of one micro-batch (each storage once; parameters and the persistent
    weight masks excluded), with SWAT active when the config asks for it."""
    cfg = with_dataset_shape(cfg, ds)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    swat = sparsity.attach(model, cfg, ds.seq_len, cfg.train.mask_rate if objective == "mlm" else None,
                           torch.device("cpu"), "fp32")
    if swat:
        swat.update(1.0, 0)
    batch = BatchLoader(ds, "train", objective, cfg.train.mask_rate, 0).next_batch(cfg.train.micro_batch_size)
    keep_out = {p.untyped_storage().data_ptr() for p in model.parameters()}
    if swat:  # the masks this forward will use (cached), persistent like the weights
        keep_out |= {m._masks(torch.float32)[0].untyped_storage().data_ptr() for _, m in swat.modules}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in keep_out and not isinstance(t, torch.nn.Parameter):
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    return sum(storages.values())


def step_times(objective: str, args: argparse.Namespace, ds: Dataset, rounds: int = 10) -> dict[float, float]:
    """Median seconds of one micro-batch forward+backward per arm, the arms interleaved round by round (so a
    machine whose load drifts slows every arm alike), SWAT active."""
    arms = {}
    for s in args.sparsities:
        cfg = with_dataset_shape(config(objective, s, args), ds)
        torch.manual_seed(0)
        model = build_model(cfg.model)
        swat = sparsity.attach(model, cfg, ds.seq_len, cfg.train.mask_rate if objective == "mlm" else None,
                               torch.device("cpu"), "fp32")
        if swat:
            swat.update(1.0, 0)
        arms[s] = model
    batch = BatchLoader(ds, "train", objective, 0.25, 0).next_batch(32)
    times: dict[float, list[float]] = {s: [] for s in arms}
    for i in range(rounds + 1):
        order = list(arms)[i % len(arms):] + list(arms)[:i % len(arms)]
        for s in order:
            start = time.perf_counter()
            arms[s](**batch).loss.backward()
            if i:  # the first round warms up
                times[s].append(time.perf_counter() - start)
            arms[s].zero_grad(set_to_none=True)
            if s and i:  # a new step: the weight masks are recomputed, as in training
                for m in arms[s].modules():
                    if hasattr(m, "_cache_key"):
                        m._cache_key = None
    return {s: sorted(t)[len(t) // 2] for s, t in times.items()}


def run_arm(objective: str, s: float, args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    cfg = config(objective, s, args)
    run_dir = args.work / "runs" / f"{objective}-s{s:g}-{time.strftime('%H%M%S')}"
    res = train(cfg, data_dir, run_dir, progress=False)
    ds = Dataset(data_dir)
    score = {**SCORE, "mask_rate": SCORE["mask_rate"] if objective == "mlm" else 0.0}
    final, _ = ckpt.load_model(run_dir)
    row = {"objective": objective, "sparsity": s, "granularity": args.granularity if s else "-",
           "warmup": args.warmup if s else 0.0, "tokens": res["tokens"], "steps": res["steps"],
           "heldout": heldout_loss(final, ds, objective, **score),
           "tokens_per_s": res["tokens_per_second"], "train_seconds": res["train_seconds"],
           "dense_flops": res["tokens"] * res["flops_per_token"],
           "saved_bytes": saved_bytes(cfg, ds, objective), "run": str(run_dir)}
    if s:
        dense_weights, _ = ckpt.load_model(ckpt.latest_checkpoint(run_dir))
        row["heldout_dense_weights"] = heldout_loss(dense_weights, ds, objective, **score)
        row["sparse_flops"] = res["sparsity"]["sparse_flops"]
        row["flops_saved"] = res["sparsity"]["flops_saved"]
    return row


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(rows: list[dict[str, Any]], speed: dict[str, dict[str, float]]) -> str:
    lines = ["| objective | arm | held-out loss | vs dense | dense weights, no mask | counted training FLOPs | "
             "FLOPs saved | backward memory / micro-batch | vs dense | tokens/s (run) | vs dense | "
             "fwd+bwd ms, interleaved | vs dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for objective in ("mlm", "causal"):
        arms = sorted((r for r in rows if r["objective"] == objective), key=lambda r: r["sparsity"])
        dense = next((r for r in arms if r["sparsity"] == 0), None)
        for r in arms:
            name = "dense" if r["sparsity"] == 0 else f"SWAT {100 * r['sparsity']:.0f}% ({r['granularity']})"
            flops = r.get("sparse_flops", r["dense_flops"])
            vs = (lambda k, fmt: format(r[k] - dense[k], fmt)) if dense else (lambda k, fmt: "-")
            ratio = (lambda k: f"{r[k] / dense[k]:.2f}x") if dense else (lambda k: "-")
            ms = speed.get(objective, {})
            step = ms.get(str(r["sparsity"]))
            step_text = f"{1000 * step:.0f} | {step / ms['0.0']:.2f}x" if step and ms.get("0.0") else "- | -"
            lines.append(
                f"| {objective} | {name} | {r['heldout']:.3f} | {vs('heldout', '+.3f')} | "
                f"{_num(r.get('heldout_dense_weights'))} | {flops:.3g} | "
                f"{100 * r.get('flops_saved', 0.0):.0f}% | {r['saved_bytes'] / 2**20:.1f} MiB | "
                f"{ratio('saved_bytes')} | {r['tokens_per_s']:.0f} | {ratio('tokens_per_s')} | {step_text} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objectives", nargs="*", default=["mlm", "causal"])
    ap.add_argument("--tokens", type=int, default=600_000, help="training tokens per arm (default 600k)")
    ap.add_argument("--sparsities", type=float, nargs="*", default=[0.0, 0.5, 0.8, 0.9], help="0 = dense")
    ap.add_argument("--granularity", choices=["tensor", "row"], default="tensor")
    ap.add_argument("--warmup", type=float, default=0.05, help="dense fraction of the budget (default 0.05)")
    ap.add_argument("--source-mb", type=float, default=2.0, help="MB read from each pretraining shard")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cramlm-swat"))
    ap.add_argument("--table", action="store_true", help="print the table of the rows so far and stop")
    ap.add_argument("--speed", action="store_true", help="only time one micro-batch per arm, interleaved")
    args = ap.parse_args()

    log, speed_file = args.work / "swat.jsonl", args.work / "speed.json"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else {}
    data_dir = args.work / f"pretrain-{args.source_mb:g}mb"
    if args.speed:
        for objective in args.objectives:
            speed[objective] = {str(s): t for s, t in step_times(objective, args, Dataset(data_dir)).items()}
            print(objective, {s: f"{1000 * t:.0f} ms" for s, t in speed[objective].items()}, flush=True)
        speed_file.write_text(json.dumps(speed, indent=1))
    elif not args.table:
        if not (data_dir / "manifest.json").is_file():
            text = subset(args.source_mb, args.work / f"pretrain-{args.source_mb:g}mb.txt")
            prepare([str(text)], data_dir, DataConfig(seq_len=128, vocab_size=8192, val_fraction=0.02),
                    progress=False)
        print(f"{Dataset(data_dir)}; torch threads {torch.get_num_threads()}", flush=True)
        for objective in args.objectives:
            for s in args.sparsities:
                key = (objective, s, args.granularity if s else "-", args.warmup if s else 0.0, args.tokens)
                if any((r["objective"], r["sparsity"], r["granularity"], r["warmup"], r["tokens_asked"]) == key
                       for r in rows):
                    continue
                row = {**run_arm(objective, s, args, data_dir), "tokens_asked": args.tokens}
                rows.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{objective} sparsity {s:g}: held-out {row['heldout']:.3f}, {row['tokens_per_s']:.0f} tok/s, "
                      f"saved for backward {row['saved_bytes'] / 2**20:.1f} MiB", flush=True)
    print(table(rows, speed))


if __name__ == "__main__":
    main()
