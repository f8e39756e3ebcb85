"""Held-out loss on fixed masked positions, and the unigram baseline on the same positions.

The masking of the validation batches depends only on the seed, so two runs (or two recipes) scored with the same
seed are scored on the very same tokens and their losses compare directly. The unigram baseline (each token
predicted by its training-set frequency) says how much a model learned beyond word counts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from cramlm.errors import CramlmError
from cramlm.eval.progress import LoopProgress, tracked


def _val_shape(dataset: Any, n_batches: int, batch_size: int) -> tuple[int, int]:
    """(batches, sequences per batch) that the validation split holds: fewer or smaller when it is small."""
    n_val = len(dataset.sequences("val"))
    if n_val == 0:
        raise CramlmError(f"{dataset.root} has no validation sequences (prepare with data.val_fraction > 0)")
    batch_size = min(batch_size, n_val)
    return max(1, min(n_batches, n_val // batch_size)), batch_size


def _val_batches(dataset: Any, objective: str, mask_rate: float, n_batches: int, batch_size: int, seed: int):
    """The first `n_batches` validation batches for `seed` (fewer when the split is small)."""
    from cramlm.data.loader import BatchLoader

    n_batches, batch_size = _val_shape(dataset, n_batches, batch_size)
    loader = BatchLoader(dataset, split="val", objective=objective, mask_rate=mask_rate, seed=seed)
    for _ in range(n_batches):
        yield loader.next_batch(batch_size)


@torch.no_grad()
def heldout_loss(
    model: nn.Module,
    dataset: Any,
    objective: str = "mlm",
    mask_rate: float = 0.15,
    n_batches: int = 16,
    batch_size: int = 32,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    progress: LoopProgress | None = None,
) -> float:
    """Mean cross-entropy (nats per predicted token) on the first `n_batches` validation batches for `seed`;
    `dtype` (bf16, fp16) runs the forward under autocast."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    advance = tracked(progress, _val_shape(dataset, n_batches, batch_size)[0], "batches")
    try:
        for batch in _val_batches(dataset, objective, mask_rate, n_batches, batch_size, seed):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = model(**batch)
            n = _n_predicted(batch, objective)
            total += float(out.loss.float()) * n
            count += n
            advance(1)
    finally:
        model.train(was_training)
    return total / count


def _n_predicted(batch: dict[str, torch.Tensor], objective: str) -> int:
    labels = batch["labels"]
    if objective == "causal":
        return labels[:, 1:].numel()
    return int((labels != -100).sum())


def unigram_counts(dataset: Any, rows_per_chunk: int = 1 << 14) -> np.ndarray:
    """Token counts over the training split, read in chunks so a large memory-mapped split stays out of RAM."""
    seqs = dataset.sequences("train")
    counts = np.zeros(dataset.vocab_size, dtype=np.int64)
    for start in range(0, len(seqs), rows_per_chunk):
        chunk = np.asarray(seqs[start:start + rows_per_chunk])
        counts += np.bincount(chunk.ravel(), minlength=dataset.vocab_size)[: dataset.vocab_size]
    return counts


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
    """log P(token) under the add-one-smoothed unigram model of `counts`: every token id gets some mass."""
    return np.log(counts + 1.0) - math.log(float(counts.sum()) + len(counts))


def unigram_loss(
    dataset: Any,
    mask_rate: float = 0.15,
    n_batches: int = 16,
    batch_size: int = 32,
    seed: int = 0,
    objective: str = "mlm",
    counts: np.ndarray | None = None,
) -> float:
    """Cross-entropy of an add-one-smoothed unigram model of the training tokens on the same held-out positions
    as `heldout_loss` with the same arguments."""
    log_p = unigram_log_probs(unigram_counts(dataset) if counts is None else counts)
    total, count = 0.0, 0
    for batch in _val_batches(dataset, objective, mask_rate, n_batches, batch_size, seed):
        labels = batch["labels"]
        targets = labels[:, 1:] if objective == "causal" else labels[labels != -100]
        ids = targets.reshape(-1).numpy()
        total -= float(log_p[ids].sum())
        count += ids.size
    return total / count
