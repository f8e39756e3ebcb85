"""GLUE fine-tuning throughput: padding every batch to 128 tokens vs dynamic padding vs dynamic padding with
length-sorted batches (what `cramlm eval glue` does). One run, same model, same examples, same steps.

    .venv/bin/python benchmarks/eval_padding.py [--glue-dir ../shared/data/glue] [--task sst2] [--steps 60]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from cramlm.config import resolve_config
from cramlm.data.tokenizer import train_tokenizer
from cramlm.eval.glue import PAD, TASKS, collate, encode, length_sorted_batches, read_split
from cramlm.models.encoder import EncoderForSequenceClassification


def run(model, ids, labels, batches, pad_to):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = real = 0
    start = time.perf_counter()
    for index in batches:
        x, mask = collate(ids, index, torch.device("cpu"))
        if pad_to:
            x = F.pad(x, (0, pad_to - x.shape[1]), value=PAD)
            mask = x != PAD
        loss = F.cross_entropy(model(x, mask).logits, torch.as_tensor(labels[index]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tokens += x.numel()
        real += int(mask.sum())
    return time.perf_counter() - start, tokens, real


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--glue-dir", default="../shared/data/glue")
    p.add_argument("--task", default="sst2")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    task = TASKS[args.task]
    split = read_split(args.glue_dir, task, "train").head(args.steps * args.batch_size)
    tok = train_tokenizer((" ".join(t) for t in split.texts), vocab_size=8192)
    ids = encode(tok, split, 128)
    cfg = resolve_config(model="tiny", overrides=[f"model.vocab_size={tok.get_vocab_size()}"])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ids))
    plans = {
        "pad to 128": ([order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)], 128),
        "dynamic padding": ([order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)], None),
        "dynamic + length-sorted": (length_sorted_batches(np.array([len(x) for x in ids]), args.batch_size,
                                                          np.random.default_rng(0)), None),
    }
    print(f"{args.task}: {len(ids)} examples, {args.steps} steps of {args.batch_size}, tiny encoder "
          f"({cfg.model.n_layers}x{cfg.model.d_model}), {torch.get_num_threads()} threads")
    print(f"{'batching':<26}{'seconds':>9}{'tokens':>9}{'padding':>9}{'speed-up':>10}")
    base = None
    for name, (batches, pad_to) in plans.items():
        torch.manual_seed(0)
        model = EncoderForSequenceClassification(cfg.model, task.num_labels)
        seconds, tokens, real = run(model, ids, split.labels, batches, pad_to)
        base = base or seconds
        print(f"{name:<26}{seconds:>9.1f}{tokens:>9}{1 - real / tokens:>9.0%}{base / seconds:>9.1f}x")


if __name__ == "__main__":
    main()
