"""Training throughput: cramlm's full step (loader + forward/backward + clip + optimizer, the trainer's own
`train_step`) vs. a plain loop over HF `BertForMaskedLM` of the same width/depth on the same batches.

Both get the same fused AdamW and gradient clipping, so the difference is the model: the crammed encoder (pre-norm,
no biases, GEGLU, sparse MLM head over the masked positions only, no dropout) vs. BERT as published. On a GPU both
run in bf16 autocast and compiled, and MFU is printed.

    .venv/bin/python benchmarks/train_throughput.py [--size small|base] [--steps 20] [--micro 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cramlm.config import DataConfig, resolve_config
from cramlm.data.loader import BatchLoader
from cramlm.data.prepare import prepare
from cramlm.data.store import Dataset
from cramlm.train.trainer import Trainer

SIZES = {"small": ["model.n_layers=4", "model.d_model=256", "model.n_heads=4", "model.d_ff=1024"],
         "base": ["model.n_layers=12", "model.d_model=768", "model.n_heads=12", "model.d_ff=3072"]}


def dataset(path: Path | None, vocab: int) -> Path:
    if path is not None:
        return path
    out = Path(tempfile.gettempdir()) / f"cramlm-throughput-{vocab}"
    if not (out / "manifest.json").is_file():
        prepare(["python-docs"], out, DataConfig(seq_len=128, vocab_size=vocab, val_fraction=0.01), progress=False)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_cramlm(trainer: Trainer, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        trainer.train_step()
    sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync(trainer.device)
    return time.perf_counter() - t0


def time_hf(cfg, ds: Dataset, device: torch.device, dtype, micro: int, steps: int, warmup: int) -> float:
    from transformers import BertConfig, BertForMaskedLM

    m = cfg.model
    model = BertForMaskedLM(BertConfig(
        vocab_size=ds.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
        intermediate_size=m.d_ff, max_position_embeddings=ds.seq_len)).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step = torch.compile(model) if device.type == "cuda" else model
    loader = BatchLoader(ds, "train", "mlm", cfg.train.mask_rate, cfg.train.seed)  # the trainer's batches

    def one() -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in loader.next_batch(micro).items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = step(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="small", help="small (4x256) or base (12x768)")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per model (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--micro", type=int, default=32, help="sequences per step (default 32)")
    ap.add_argument("--data", type=Path, default=None, help="a prepared dataset dir (default: python-docs)")
    args = ap.parse_args()

    data_dir = dataset(args.data, 8192 if args.size == "small" else 32768)
    overrides = SIZES[args.size] + [f"train.batch_size={args.micro}", f"train.micro_batch_size={args.micro}",
                                    "train.batch_ramp=none", "budget.limit=1000000steps", "train.mask_rate=0.15"]
    cfg = resolve_config(model="bert-crammed", recipe="crammed", overrides=overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, data_dir, Path(run_dir), progress=False)
        trainer.budget.start()
        ours = time_cramlm(trainer, args.steps, args.warmup)
    ds = trainer.dataset
    tokens = args.steps * args.micro * ds.seq_len
    hf = time_hf(trainer.cfg, ds, trainer.device, trainer.dtype, args.micro, args.steps, args.warmup)
    cuda = trainer.device.type == "cuda"
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.size} ({' '.join(SIZES[args.size])}), seq {ds.seq_len}, {args.micro} sequences/step, 15% masking, "
          f"{trainer.precision}, {device}")
    print(f"{'':18s} {'tokens/s':>10s} {'s/step':>8s}")
    mfu = trainer.fpt * tokens / ours / trainer.peak
    print(f"{'cramlm':18s} {tokens / ours:10.0f} {ours / args.steps:8.3f}   MFU {mfu:.1%}")
    print(f"{'HF BertForMaskedLM':18s} {tokens / hf:10.0f} {hf / args.steps:8.3f}")
    print(f"speed-up: {hf / ours:.2f}x")


if __name__ == "__main__":
    main()
